"""Models: ``build_model(config)``, the registry and the registered potentials.

========  ======  ==========================================================================
name      kind    summary
========  ======  ==========================================================================
egnn      energy  E(n)-equivariant GNN with invariant messages (Satorras et al. 2021)
gns       force   encode-process-decode GNS with symmetric pair weights (momentum-conserving)
painn     energy  PaiNN (Schütt et al. 2021), the recommended default
tensornet energy  TensorNet (Simeon & De Fabritiis 2023): ℓ ≤ 2 Cartesian tensor messages
========  ======  ==========================================================================

Every model: ``forward(batch: Dict[str, Tensor]) -> {"energy" [G] eV, "forces" [N, 3] eV/Å,
("vectors" [N, 3] with vector_head)}``; attributes ``kind``, ``cutoff``, ``species``,
``config`` (resolved dict), ``config_json``; ``set_normalization(E0s, energy_scale,
force_scale)``; the neighbour list is the submodule ``model.neighbors``.
"""

from maskpot.models.registry import (
    COMMON_DEFAULTS,
    MODEL_REGISTRY,
    ModelConfigError,
    build_model,
    default_config,
    model_defaults,
    register_model,
    resolve_config,
)
from maskpot.models import egnn as _egnn  # noqa: F401  (registers "egnn")
from maskpot.models import gns as _gns  # noqa: F401  (registers "gns")
from maskpot.models import painn as _painn  # noqa: F401  (registers "painn")
from maskpot.models import tensornet as _tensornet  # noqa: F401  (registers "tensornet")
from maskpot.models.egnn import EGNN
from maskpot.models.gns import GNS
from maskpot.models.painn import PaiNN
from maskpot.models.tensornet import TensorNet

__all__ = [
    "COMMON_DEFAULTS",
    "MODEL_REGISTRY",
    "ModelConfigError",
    "build_model",
    "default_config",
    "model_defaults",
    "register_model",
    "resolve_config",
    "EGNN",
    "GNS",
    "PaiNN",
    "TensorNet",
]
