"""Run logs: ``metrics.csv`` (one row per epoch), optional TensorBoard, learning-curve PNG.

The CSV is rewritten atomically each epoch from the rows kept in memory (and read back on
resume), so an interrupted run never leaves a truncated file and a resumed one continues it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from maskpot.utils import PathLike, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FIRST_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "time_s"]


class MetricsLogger:
    """Collects per-epoch rows; writes CSV, TensorBoard scalars and a plot."""

    def __init__(self, out_dir: PathLike, tensorboard: bool = False, resume: bool = False) -> None:
        self.dir = Path(out_dir)
        self.csv_path = self.dir / "metrics.csv"
        self.rows: List[Dict[str, Any]] = []
        if resume and self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                self.rows = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
            except Exception as exc:  # tensorboard not installed
                log.warning("TensorBoard logging disabled: %s", exc)

    def truncate(self, epoch: int) -> None:
        """Drop rows after ``epoch`` (a resumed run continues from its checkpoint's epoch)."""
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]

    def log(self, row: Dict[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write_csv()
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def _write_csv(self) -> None:
        columns = list(FIRST_COLUMNS)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.csv_path, buf.getvalue())

    def plot(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Learning curves (train/val loss, lr, and force/energy MAE if logged) as a PNG."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path) if path is not None else self.dir / "learning_curve.png"
        epochs = [r["epoch"] for r in self.rows]
        metric_keys = [k for k in ("val_force_mae_meV_per_A", "val_energy_mae_meV_per_atom", "val_mean_cosine", "val_vector_rmse") if k in self.rows[-1]]
        n = 2 + bool(metric_keys)
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4))
        ax = axes[0]
        for key in ("train_loss", "val_loss"):
            ys = [r.get(key) for r in self.rows]
            if any(isinstance(y, (int, float)) for y in ys):
                ax.plot(epochs, ys, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if all(isinstance(r.get("train_loss"), (int, float)) and r["train_loss"] > 0 for r in self.rows):
            ax.set_yscale("log")
        ax.legend()
        axes[1].plot(epochs, [r["lr"] for r in self.rows])
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("learning rate")
        if metric_keys:
            for k in metric_keys:
                axes[2].plot(epochs, [r.get(k) for r in self.rows], label=k)
            axes[2].set_xlabel("epoch")
            axes[2].legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _fmt(v: Any) -> Any:
    return f"{v:.8g}" if isinstance(v, float) else v


def _num(v: str) -> Any:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v
