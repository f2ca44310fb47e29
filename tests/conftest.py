"""Shared pytest setup: one torch thread per test module that uses torch.

The tests bound small tensors, where torch's thread pool only costs time (and a
lot on a loaded 2-core machine).  Modules that never import torch (the
torch-free quick stage, the CLI through subprocesses) are left alone, so this
file does not import torch itself.
"""
from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
