"""The "choosing a model" table (issue 28): one row per notebook 06 choice, the same in the notebook and the README,
every T4 plan within a T4 (simulated), and the simulated figures it shows are what ``bench/gpu_memory.py`` gives
(the slow tier re-simulates the newest choices on both presets)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from vlm_helpers import model_choices, runtime
from vlm_helpers.choosing_a_model import EVIDENCE, choosing_table, plan_text

ROOT = Path(__file__).resolve().parent.parent


def test_every_choice_has_its_evidence_and_every_t4_plan_fits():
    assert set(EVIDENCE) == set(model_choices.MODEL_CHOICES)
    for key, evidence in EVIDENCE.items():
        assert set(evidence.simulated) == {"t4", "a100"}, key
        assert evidence.simulated["t4"][0] <= 14.5 and evidence.simulated["a100"][0] <= 39.0, key
        assert evidence.source.startswith("https://"), key


def test_the_plans_follow_the_presets():
    assert plan_text("gemma3-4b", "t4").startswith("QLoRA, 1 x 16, fp32")  # fp16 overflows (FP16_OVERFLOWS)
    assert plan_text("gemma3-4b", "a100").startswith("LoRA, 2 x 8, bf16")
    assert plan_text("idefics2", "t4").startswith("QLoRA, 1 x 16, fp16")
    assert "gemma3-4b-lora" in runtime.FP16_OVERFLOWS


def test_the_readme_and_notebook_06_show_the_table():
    table = choosing_table()
    assert table in (ROOT / "README.md").read_text(encoding="utf-8")
    cells = json.loads((ROOT / "notebooks" / "06_your_data_your_model.ipynb").read_text())["cells"]
    assert any("print(choosing_table())" in "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    assert table.count("\n| `") == len(model_choices.MODEL_CHOICES)


@pytest.fixture(scope="module")
def gpu_memory():
    spec = importlib.util.spec_from_file_location("gpu_memory", ROOT / "bench" / "gpu_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_memory"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_memory", None)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["smolvlm2-2.2b", "gemma3-4b", "paligemma2-3b"])
def test_the_simulated_figures_are_the_benchs(key, gpu_memory, tiny_cache):
    """The peak is the larger of the training step and the evaluation batch's generation, as in the README's GPU
    table; the time is the training estimate per 1,000 rows."""
    case = next(c for c in gpu_memory.build_cases() if c.notebook == "06" and c.name == key)
    for preset in ("t4", "a100"):
        train = gpu_memory.simulate(case, preset, cache_dir=tiny_cache)
        generate = gpu_memory.simulate(case, preset, cache_dir=tiny_cache, generate=True)
        peak = max(train.peak, generate.peak) / gpu_memory.GIB
        minutes = gpu_memory.estimate(case, preset, train, generate).train * 60
        shown_peak, shown_minutes = EVIDENCE[key].simulated[preset]
        assert shown_peak == pytest.approx(peak, abs=0.051), (preset, peak)
        assert shown_minutes == pytest.approx(minutes, rel=0.05, abs=0.5), (preset, minutes)
