"""Fixtures shared by the robustness tests."""

import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_fresh_log_handler():
    """One torch thread, and no log handler left over from an earlier CLI call: the CLIs add a
    handler on the (captured) stderr of the test that calls them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = logging.getLogger("maskpot")
    saved = root.handlers[:]
    root.handlers.clear()
    yield
    root.handlers[:] = saved
    torch.set_num_threads(n)
