"""Shared fixtures: tiny models are built once per test session into a temporary cache.

No machine that runs these tests reaches the Hugging Face Hub, so the Hub client is told so before anything imports
it (``HF_HUB_OFFLINE=1``): a lookup of a Hub id answers at once from the local cache instead of retrying the network
for 20 seconds (full mode's loaders are tested with the tiny twins standing in for the Hub's files).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Naming only slow-tier tests without ``-m slow`` selects nothing: say why, instead of a silent "deselected"."""
    stats = terminalreporter.stats
    ran = any(stats.get(outcome) for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"))
    if stats.get("deselected") and not ran and config.option.markexpr == "not slow":
        terminalreporter.write_line("every test named here is in the slow tiers: add -m slow "
                                    "(README, \"Run the tests\")")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tiers (real-shape, several processes, simulated GPU), "
                                       "deselected by default; `python -m pytest -m slow` runs them (README, \"Run the tests\")")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache folder for tiny checkpoints, shared by every test of the session."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def tiny_florence2_path(tiny_cache):
    from vlm_helpers.tiny import tiny_checkpoint

    return tiny_checkpoint("florence2", tiny_cache)


@pytest.fixture(scope="session")
def no_dropout_cache(tiny_florence2_path, tmp_path_factory):
    """A cache holding the tiny Florence-2 with dropout and drop-path set to 0. The real model trains
    with dropout 0.1, so runs that are compared step by step for their maths (gradient accumulation,
    2 processes x batch 2 against 1 x batch 4) would draw different dropout masks."""
    import json
    import shutil
    from pathlib import Path

    cache = tmp_path_factory.mktemp("cache-no-dropout")
    folder = cache / Path(tiny_florence2_path).name
    shutil.copytree(tiny_florence2_path, folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("dropout", "attention_dropout", "activation_dropout"):
        config["text_config"][key] = 0.0
    config["vision_config"]["drop_path_rate"] = 0.0
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return cache


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads per
    process were measured up to 100x slower; CI runs with one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
