"""The float dtypes of maskpot models, by the name their configs, checkpoints and export files use.

A leaf module (torch only), so that models, training and deploy share one map without cycles.
"""

from __future__ import annotations

from typing import Dict

import torch

#: config / metadata ``dtype`` name -> torch dtype
DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
