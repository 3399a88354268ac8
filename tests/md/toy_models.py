"""Toy potentials for the MD tests, exported with maskpot's real export format.

``ToyWater``: atoms ordered O, H, H per molecule; harmonic O–H bonds and H–O–H angles (by atom
index, minimum image) plus a soft O–O repulsion, optionally a strong O–O Gaussian attraction
(``attraction`` eV) that makes the oxygens collapse: the "broken potential" of the guard tests.
Energy-centric (forces by autograd), scriptable, cutoff 3.5 Å.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor


class ToyWater(torch.nn.Module):
    def __init__(self, attraction: float = 0.0, repulsion: float = 0.05, cutoff: float = 3.5) -> None:
        super().__init__()
        self.kind: str = "energy"
        self.cutoff: float = float(cutoff)
        self.species = [1, 8]
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.k_bond: float = 25.0  # eV/Å²
        self.r0: float = 0.9572
        self.k_angle: float = 3.0  # eV/rad²
        self.theta0: float = math.radians(104.52)
        self.repulsion: float = float(repulsion)
        self.attraction: float = float(attraction)

    def _mic(self, d: Tensor, cell: Tensor, periodic: bool) -> Tensor:
        if periodic:
            frac = d @ torch.linalg.inv(cell)
            frac = frac - torch.round(frac)
            d = frac @ cell
        return d

    def forward(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        pos = batch["positions"]
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        cell = batch["cell"][0]
        periodic = bool(batch["pbc"][0].any())
        n = pos.shape[0]
        o = torch.arange(0, n, 3, device=pos.device)
        d1 = self._mic(pos[o + 1] - pos[o], cell, periodic)
        d2 = self._mic(pos[o + 2] - pos[o], cell, periodic)
        r1 = torch.linalg.norm(d1, dim=1)
        r2 = torch.linalg.norm(d2, dim=1)
        cos = (d1 * d2).sum(1) / (r1 * r2)
        theta = torch.acos(torch.clamp(cos, -0.999999, 0.999999))
        e = 0.5 * self.k_bond * ((r1 - self.r0) ** 2 + (r2 - self.r0) ** 2).sum()
        e = e + 0.5 * self.k_angle * ((theta - self.theta0) ** 2).sum()
        po = pos[o]
        if po.shape[0] > 1:
            dd = self._mic(po[:, None, :] - po[None, :, :], cell, periodic)
            m = po.shape[0]
            iu = torch.triu_indices(m, m, 1, device=pos.device)
            r = torch.linalg.norm(dd[iu[0], iu[1]], dim=1)
            mask = r < self.cutoff
            rr = r[mask]
            e = e + (self.repulsion * (2.8 / rr) ** 12).sum() * float(self.attraction == 0.0)
            e = e - (self.attraction * torch.exp(-(rr**2) / (2.0 * 1.5**2))).sum()
        e = e * self.scale
        grads = torch.autograd.grad([e], [pos])
        g = grads[0]
        assert g is not None
        return {"energy": e.reshape(1), "forces": -g}


def export_toy(path: Path, attraction: float = 0.0, dtype: str = "float64") -> Path:
    from maskpot.deploy.export import export_model

    export_model(ToyWater(attraction=attraction), path, dtype=dtype, metadata={"toy": True})
    return Path(path)
