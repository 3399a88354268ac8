"""Fixtures for the MD tests: toy exported potentials (real export format), one torch thread."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and the CI box is shared)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    from toy_models import export_toy

    return export_toy(tmp_path_factory.mktemp("models") / "toy.pt")


@pytest.fixture(scope="session")
def broken_model(tmp_path_factory) -> Path:
    from toy_models import export_toy

    return export_toy(tmp_path_factory.mktemp("models") / "broken.pt", attraction=20.0)
