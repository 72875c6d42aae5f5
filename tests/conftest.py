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
