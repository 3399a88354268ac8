"""Fixtures of the reusable model test-suite: every registered model, a water box, a molecule."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from model_helpers import ENERGY_MODELS, FORCE_MODELS, MODEL_NAMES, ethanol, water_box  # noqa: E402
from maskpot.data.sample import Sample  # noqa: E402


@pytest.fixture(params=MODEL_NAMES)
def model_name(request) -> str:
    return request.param


@pytest.fixture(params=ENERGY_MODELS)
def energy_model_name(request) -> str:
    """Every energy-centric model (forces = -dE/dr)."""
    return request.param


@pytest.fixture(params=FORCE_MODELS)
def force_model_name(request) -> str:
    """Every force-centric model (forces predicted directly)."""
    return request.param


@pytest.fixture
def box_sample() -> Sample:
    return water_box()


@pytest.fixture
def mol_sample() -> Sample:
    return ethanol()


@pytest.fixture(params=["molecule", "water_box"])
def any_sample(request) -> Sample:
    return ethanol() if request.param == "molecule" else water_box()


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny graphs: one intra-op thread is fastest (and avoids OpenMP spin contention on busy
    CI machines); the previous setting is restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
