"""Shared fixtures: tiny models are built once per test session into a temporary cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache folder for tiny checkpoints, shared by every test of the session."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_florence2_path(tiny_cache):
    from vlm_helpers.tiny import tiny_checkpoint

    return tiny_checkpoint("florence2", tiny_cache)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads per
    process were measured up to 100x slower; CI runs with one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
