"""Fixtures for the deploy tests: exported model files, cached per session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from deploy_models import make_model  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[[str, str], Tuple[Path, object]]:
    """``exported(name, dtype) -> (path, eager model)``: export once per session."""
    from maskpot.deploy.export import export_model

    root = tmp_path_factory.mktemp("exported")
    cache: Dict[Tuple[str, str], Tuple[Path, object]] = {}

    def get(name: str, dtype: str = "float64"):
        key = (name, dtype)
        if key not in cache:
            import torch

            model = make_model(name, dtype=getattr(torch, dtype))
            path = root / f"{name}-{dtype}.pt"
            export_model(model, path, dtype=dtype, metadata={"test": name})
            cache[key] = (path, model)
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The test systems are tiny: with 2+ intra-op threads on a shared, oversubscribed CPU a
    model call takes ~40x longer (measured 9 ms vs 440 ms). Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
