"""Notebook 06's model choices: LoRA targets that are the tested ones, batches and method per preset,
exact match and the "qa" scorer."""

from __future__ import annotations

import math

import pytest

from family_models import FAMILIES

from vlm_helpers import evaluation, metrics, model_choices, runtime


def test_the_other_families_targets_are_the_ones_tests_other_families_checks():
    """qwen2-vl and smolvlm have no tiny twin in the package: their LoRA targets are the ones
    tests/test_other_families.py puts on tiny models shrunk from their real configurations."""
    for key in ("qwen2-vl", "smolvlm"):
        choice = model_choices.MODEL_CHOICES[key]
        assert choice.lora_targets == FAMILIES[key].lora_targets
        assert choice.model_id == FAMILIES[key].model_id


@pytest.mark.parametrize("key", ["idefics2", "llava-phi3"])
def test_the_tiny_twins_targets_reach_every_text_projection_and_no_vision_module(key, tiny_cache):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForImageTextToText

    from vlm_helpers.tiny import tiny_checkpoint

    choice = model_choices.get_model_choice(key, tiny=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint(choice.tiny_name, tiny_cache))
    config = LoraConfig(target_modules=choice.lora_targets)
    matched = [name for name, _ in model.named_modules() if name and check_target_module_exists(config, name)]
    layers = model.config.text_config.num_hidden_layers
    text = [name for name in matched if ".layers." in name and ("text_model" in name or "language_model" in name)]
    assert len(text) == 7 * layers
    assert not [name for name in matched if "vision" in name]


def test_method_and_batches_follow_the_preset_and_a_forced_method_wins():
    idefics2, phi3, smol = (model_choices.MODEL_CHOICES[k] for k in ("idefics2", "llava-phi3", "smolvlm"))
    assert [phi3.method(p) for p in ("t4", "a100", "tiny")] == ["qlora", "lora", "lora"]
    assert idefics2.method("a100") == "qlora" and smol.method("t4") == "lora"
    assert smol.method("t4", "qlora") == "qlora"
    with pytest.raises(ValueError, match="METHOD"):
        smol.method("t4", "full")
    for choice in model_choices.MODEL_CHOICES.values():
        (t4_batch, t4_accum), (a100_batch, a100_accum) = choice.batches("t4"), choice.batches("a100")
        assert t4_batch * t4_accum == a100_batch * a100_accum, choice.key  # same rows per step on either GPU
        assert t4_batch <= a100_batch, choice.key
        assert choice.recipe in runtime.BATCHING
    assert "QLORA" in phi3.describe("t4") and "batch 1 x accumulation 8" in phi3.describe("t4")


def test_unknown_choices_and_choices_without_a_tiny_twin_are_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="llava-phi3"):
        model_choices.get_model_choice("llava")
    with pytest.raises(ValueError, match=r"no tiny twin.*\['idefics2', 'llava-phi3'\]"):
        model_choices.get_model_choice("qwen2-vl", tiny=True)
    assert model_choices.get_model_choice("qwen2-vl").model_id == "Qwen/Qwen2-VL-2B-Instruct"


def test_exact_match_and_the_qa_scorer():
    predictions, references = ["$12.50", " ACME corp", "12.5", ""], [["$12.50"], ["Acme Corp"], ["12.50"], ["x"]]
    assert metrics.exact_match_per_sample(predictions, references) == [1.0, 1.0, 0.0, 0.0]
    records = [{"prediction": p, "references": r} for p, r in zip(predictions, references)]
    scores = evaluation.SCORERS["qa"](records)
    assert scores["exact_match"] == 0.5 and scores["samples"] == 4
    assert math.isclose(scores["anls"], (1 + 1 + (1 - 1 / 5) + 0) / 4)
    assert evaluation.sample_score("qa", "12.5", ["12.50"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="index 1|references\\[1\\]"):
        metrics.exact_match(["a", "b"], [["a"], []])
