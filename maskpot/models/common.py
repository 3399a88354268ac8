"""Pieces shared by every model: species lookup, embeddings, radial basis, cutoff envelopes,
``scatter_sum``, MLPs, per-species energy normalisation and the :class:`PotentialBase` class.

Conventions (see ``maskpot.data.neighbors``): ``edge_index[0] = i`` is the centre (receiving)
atom, ``edge_index[1] = j`` the neighbour, ``edge_vec = r_j - r_i (+ S @ cell)`` in Å. Messages
flow j -> i and are summed on i with :func:`scatter_sum`.

Everything here is TorchScript-compatible and vectorised (no Python loop over atoms or edges).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from maskpot.data.neighbors import edge_vectors, make_neighbor_list
from maskpot.data.validate import MAX_Z  # the species table covers 0..MAX_Z (registry imports it from here)

#: Default cutoff of egnn, gns and painn, Å: the masked-pretraining paper's water cutoff (the first
#: O-O shell), also the README's fast PaiNN. TensorNet (the molecule / rMD17 model) uses 5 Å.
WATER_CUTOFF = 3.5


# --------------------------------------------------------------------------------------------
# small functions
# --------------------------------------------------------------------------------------------


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` [E, ...] into ``dim_size`` rows by ``index`` [E] (``index_add_``)."""
    shape = [dim_size] + list(src.shape[1:])
    out = torch.zeros(shape, dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


class ShiftedSoftplus(nn.Module):
    """softplus(x) - log(2) (SchNet's activation, zero at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = math.log(2.0)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - self.shift


ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "ssp": ShiftedSoftplus,
}


def activation(name: str) -> nn.Module:
    """Activation module by name (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None


def mlp(sizes: Sequence[int], act: str, final_activation: bool = False, layer_norm: bool = False) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (input, hidden..., output).

    ``final_activation`` appends the activation after the last layer; ``layer_norm`` appends a
    LayerNorm (GNS style).
    """
    if len(sizes) < 2:
        raise ValueError("mlp: need at least input and output sizes")
    layers: List[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(int(sizes[k]), int(sizes[k + 1])))
        if k < len(sizes) - 2 or final_activation:
            layers.append(activation(act))
    if layer_norm:
        layers.append(nn.LayerNorm(int(sizes[-1])))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# radial pieces
# --------------------------------------------------------------------------------------------


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r/r_c.

    f(0) = 1; f, f' and f'' vanish at r_c (f'(x) = -p(p+1)(p+2)/2 x^(p-1) (1-x)^2); f = 0 beyond.
    """

    def __init__(self, cutoff: float, exponent: int = 6) -> None:
        super().__init__()
        if exponent < 2:
            raise ValueError("envelope_exponent must be >= 2")
        self.cutoff = float(cutoff)
        p = float(exponent)
        self.p = p
        self.a = -(p + 1.0) * (p + 2.0) / 2.0
        self.b = p * (p + 2.0)
        self.c = -p * (p + 1.0) / 2.0

    def forward(self, r: Tensor) -> Tensor:
        x = r / self.cutoff
        xp = torch.pow(x, self.p)
        f = 1.0 + xp * (self.a + x * (self.b + self.c * x))
        return torch.where(x < 1.0, f, torch.zeros_like(f))


class CosineEnvelope(nn.Module):
    """f(r) = (cos(pi r / r_c) + 1) / 2 for r < r_c, else 0 (value and slope vanish at r_c)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        f = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return torch.where(r < self.cutoff, f, torch.zeros_like(f))


class BesselBasis(nn.Module):
    """DimeNet radial basis sqrt(2/r_c) sin(n pi r / r_c) / r, n = 1..K."""

    def __init__(self, cutoff: float, num_rbf: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.prefactor = math.sqrt(2.0 / self.cutoff)
        self.register_buffer("freq", torch.arange(1, num_rbf + 1, dtype=torch.get_default_dtype()) * (math.pi / self.cutoff))

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freq * r) / r


class GaussianBasis(nn.Module):
    """Gaussians exp(-(r - mu_k)^2 / (2 sigma^2)), mu_k evenly spaced on [0, r_c], sigma = spacing."""

    def __init__(self, cutoff: float, num_rbf: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, float(cutoff), num_rbf))
        width = float(cutoff) / max(num_rbf - 1, 1)
        self.coeff = -0.5 / (width * width)

    def forward(self, r: Tensor) -> Tensor:
        d = r.unsqueeze(-1) - self.centers
        return torch.exp(self.coeff * d * d)


class RadialEmbedding(nn.Module):
    """Edge geometry: distance, unit vector, radial basis [E, K] and envelope [E]."""

    def __init__(self, cutoff: float, num_rbf: int, radial_basis: str = "bessel", envelope: str = "polynomial",
                 envelope_exponent: int = 6) -> None:
        super().__init__()
        if radial_basis == "bessel":
            self.basis = BesselBasis(cutoff, num_rbf)
        elif radial_basis == "gaussian":
            self.basis = GaussianBasis(cutoff, num_rbf)
        else:
            raise ValueError(f"unknown radial_basis {radial_basis!r}; allowed: ['bessel', 'gaussian']")
        if envelope == "polynomial":
            self.envelope = PolynomialEnvelope(cutoff, envelope_exponent)
        elif envelope == "cosine":
            self.envelope = CosineEnvelope(cutoff)
        else:
            raise ValueError(f"unknown envelope {envelope!r}; allowed: ['cosine', 'polynomial']")

    def forward(self, edge_vec: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (r [E], unit vectors [E, 3], rbf [E, K], envelope [E])."""
        r = torch.linalg.vector_norm(edge_vec, dim=-1)
        unit = edge_vec / r.unsqueeze(-1)
        return r, unit, self.basis(r), self.envelope(r)


# --------------------------------------------------------------------------------------------
# species and normalisation
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def species_checks_disabled(model: nn.Module) -> Iterator[None]:
    """Turn off the data-dependent unknown-species check of every embedding in ``model`` while
    it is traced (torch.export / make_fx cannot branch on data); the caller validates species
    itself (``Pt2Potential``) or traces frames already checked when loaded (training)."""
    embeddings = [m for m in model.modules() if isinstance(m, SpeciesEmbedding)]
    saved = [m.check_species for m in embeddings]
    for m in embeddings:
        m.check_species = False
    try:
        yield
    finally:
        for m, s in zip(embeddings, saved):
            m.check_species = s


class SpeciesEmbedding(nn.Module):
    """Atomic number -> species index (buffer lookup) -> learned embedding, plus a learned
    mask embedding added times the per-atom mask flag (masked pretraining)."""

    def __init__(self, species: Sequence[int], hidden_channels: int) -> None:
        super().__init__()
        self.species: List[int] = [int(z) for z in species]
        table = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            table[z] = k
        self.register_buffer("z_to_index", table)
        self.embedding = nn.Embedding(len(self.species), hidden_channels)
        self.mask_embedding = nn.Parameter(torch.randn(hidden_channels))
        # False only while tracing for torch.export / torch.compile: the check branches on data;
        # the callers (pt2 loader, dataset) have validated the species before.
        self.check_species: bool = True

    def species_index(self, numbers: Tensor) -> Tensor:
        """Species index [N] of atomic numbers [N]; ValueError for numbers not in ``species``."""
        max_z = self.z_to_index.shape[0] - 1
        outside = (numbers < 0) | (numbers > max_z)
        idx = self.z_to_index[numbers.clamp(0, max_z)]
        bad = outside | (idx < 0)
        if self.check_species and bool(bad.any()):
            unknown: List[int] = torch.unique(numbers[bad]).tolist()
            raise ValueError(
                "unknown atomic numbers " + str(unknown) + ": this model knows species " + str(self.species)
            )
        return idx

    def forward(self, species_idx: Tensor, mask: Optional[Tensor], mask_numbers: Optional[Tensor] = None) -> Tensor:
        """Embeddings [N, hidden]; ``mask`` [N] flags, ``mask_numbers`` [N] atomic numbers of the
        removed atom each flagged atom points at (position masking; 0 = none)."""
        h = self.embedding(species_idx)
        if mask is not None:
            token = self.mask_embedding.unsqueeze(0)
            if mask_numbers is not None:
                # the removed atom's element as a token: its own species embedding, so no new
                # parameters (checkpoints and exports keep their layout; fine-tuning sees no mask)
                flagged = mask_numbers > 0
                idx = self.species_index(torch.where(flagged, mask_numbers, self.first_species()))
                token = token + self.embedding(idx) * flagged.to(h.dtype).unsqueeze(-1)
            h = h + mask.to(h.dtype).unsqueeze(-1) * token
        return h

    def first_species(self) -> Tensor:
        """Atomic number of species 0 (a valid placeholder for lookups that are masked out)."""
        return torch.nonzero(self.z_to_index == 0)[0, 0]


class EnergyNormalization(nn.Module):
    """Per-species reference energies and scales (buffers, saved in the state dict).

    E_frame = sum_i (energy_scale * e_i + E0[Z_i]); force models output force_scale * f.
    """

    def __init__(self, n_species: int) -> None:
        super().__init__()
        self.register_buffer("energy_shift", torch.zeros(n_species))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("force_scale", torch.ones(()))

    def forward(self, atomic_energy: Tensor, species_idx: Tensor, batch: Tensor, n_graphs: int) -> Tensor:
        e = atomic_energy * self.energy_scale + self.energy_shift[species_idx]
        return scatter_sum(e, batch, n_graphs)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class PotentialBase(nn.Module):
    """Everything the three models share: config attributes, neighbour list, species embedding,
    radial embedding, normalisation, input preparation and conservative forces.

    Subclasses set ``kind`` and implement ``forward(data) -> Dict[str, Tensor]``.
    """

    __constants__ = ["vector_head"]

    def __init__(
        self,
        species: Sequence[int],
        cutoff: float,
        hidden_channels: int,
        num_rbf: int,
        radial_basis: str,
        envelope: str,
        envelope_exponent: int,
        neighbor_backend: str,
        vector_head: bool,
        kind: str,
    ) -> None:
        super().__init__()
        self.kind: str = kind
        self.species: List[int] = [int(z) for z in species]
        self.cutoff: float = float(cutoff)
        self.hidden_channels: int = int(hidden_channels)
        self.vector_head: bool = bool(vector_head)
        self.neighbors = make_neighbor_list(self.cutoff, neighbor_backend)
        self.embedding = SpeciesEmbedding(self.species, hidden_channels)
        self.radial = RadialEmbedding(self.cutoff, num_rbf, radial_basis, envelope, envelope_exponent)
        self.normalization = EnergyNormalization(len(self.species))
        # Set by build_model: resolved config (dict) and its JSON text (survives scripting).
        self.config_json: str = "{}"

    # ---- normalisation ---------------------------------------------------------------------

    @torch.jit.unused
    def set_normalization(
        self,
        energy_shift_per_species: Optional[Mapping[Union[int, str], float]] = None,
        energy_scale: float = 1.0,
        force_scale: float = 1.0,
    ) -> None:
        """Set E0 per atomic number (eV; missing species get 0) and the energy / force scales.

        E = sum_i (energy_scale * e_i + E0[Z_i]). Energy models get forces from that energy,
        so ``force_scale`` only acts on force-centric models (forces = force_scale * f).
        """
        shifts = torch.zeros(len(self.species), dtype=torch.float64)
        for key, value in (energy_shift_per_species or {}).items():
            z = int(key)
            if z not in self.species:
                raise ValueError(f"set_normalization: atomic number {z} is not in the model species {self.species}")
            shifts[self.species.index(z)] = float(value)
        if not (math.isfinite(energy_scale) and energy_scale > 0):
            raise ValueError(f"set_normalization: energy_scale must be finite and > 0, got {energy_scale}")
        if not (math.isfinite(force_scale) and force_scale > 0):
            raise ValueError(f"set_normalization: force_scale must be finite and > 0, got {force_scale}")
        norm = self.normalization
        with torch.no_grad():
            norm.energy_shift.copy_(shifts.to(norm.energy_shift.dtype))
            norm.energy_scale.fill_(float(energy_scale))
            norm.force_scale.fill_(float(force_scale))

    @torch.jit.unused
    def get_normalization(self) -> Dict[str, object]:
        """The current normalisation as plain Python values (JSON-friendly)."""
        norm = self.normalization
        return {
            "energy_shift_per_species": {z: float(v) for z, v in zip(self.species, norm.energy_shift.tolist())},
            "energy_scale": float(norm.energy_scale),
            "force_scale": float(norm.force_scale),
        }

    # ---- forward helpers -------------------------------------------------------------------

    def _prepare(self, data: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, int, Tensor, Tensor]:
        """Species index, initial features, neighbour list.

        Returns (positions, species_idx [N], h0 [N, F], batch [N], n_graphs, edge_index [2, E],
        edge_vec [E, 3]). ``positions`` is the input tensor itself (so autograd reaches it).
        """
        positions = data["positions"]
        numbers = data["numbers"]
        cell = data["cell"]
        pbc = data["pbc"]
        if "batch" in data:
            batch = data["batch"]
        else:
            batch = torch.zeros(numbers.shape[0], dtype=torch.long, device=numbers.device)
        if cell.dim() == 2:
            cell = cell.unsqueeze(0)
        if pbc.dim() == 1:
            pbc = pbc.unsqueeze(0)
        n_graphs = cell.shape[0]
        species_idx = self.embedding.species_index(numbers)
        mask: Optional[Tensor] = None
        if "mask" in data:
            mask = data["mask"]
        mask_numbers: Optional[Tensor] = None
        if "mask_numbers" in data:
            mask_numbers = data["mask_numbers"]
        h0 = self.embedding(species_idx, mask, mask_numbers)
        if "edge_index" in data:
            # precomputed neighbours (the pt2 export runs its search outside the compiled graph)
            edge_index = data["edge_index"]
            edge_vec = edge_vectors(positions, cell, batch, edge_index, data["shifts"])
        else:
            edge_index, edge_vec, _ = self.neighbors(positions, cell, pbc, batch)
        return positions, species_idx, h0, batch, n_graphs, edge_index, edge_vec

    def _conservative_forces(self, energy: Tensor, positions: Tensor) -> Tensor:
        """forces = -dE/dr, keeping the graph (stress by strain outside) and creating a graph
        for the gradient in training mode (force loss)."""
        if not energy.requires_grad:
            return torch.zeros_like(positions)
        grads = torch.autograd.grad(
            [energy.sum()], [positions], create_graph=self.training, retain_graph=True, allow_unused=True
        )
        g = grads[0]
        if g is None:
            return torch.zeros_like(positions)
        return -g


class EnergyModel(PotentialBase):
    """Energy-centric base: per-atom energies -> frame energies; forces = -dE/dr by autograd.

    Subclasses implement ``atomic_energies(h0, edge_index, edge_vec) -> (e [N], vectors)``
    where ``vectors`` is [N, 3] when ``vector_head`` is on (else an empty tensor).
    """

    def atomic_energies(self, h0: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        # Forces need autograd even when the caller runs under torch.no_grad().
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        positions = data["positions"]
        if not positions.requires_grad:
            positions.requires_grad_()
        positions, species_idx, h0, batch, n_graphs, edge_index, edge_vec = self._prepare(data)
        atomic, vectors = self.atomic_energies(h0, edge_index, edge_vec)
        energy = self.normalization(atomic, species_idx, batch, n_graphs)
        forces = self._conservative_forces(energy, positions)
        torch.set_grad_enabled(grad_was_enabled)
        out: Dict[str, Tensor] = {"energy": energy, "forces": forces}
        if self.vector_head:
            out["vectors"] = vectors
        return out
