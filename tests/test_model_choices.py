"""Notebook 06's model choices: LoRA targets that are the tested ones, batches and method per preset, the
collator of each kind (chat, Florence-2), a trained head of a tied model kept through reload and merge,
exact match and the "qa" scorer."""

from __future__ import annotations

import math

import pytest

from vlm_helpers.tiny.families import FAMILIES

from vlm_helpers import adapters, evaluation, lora_targets, metrics, model_choices, runtime


def test_the_other_families_targets_and_twins_are_the_ones_tests_other_families_checks():
    """qwen2-vl and smolvlm: their LoRA targets and their tiny twins are those tests/test_other_families.py
    puts the chat helpers through (vlm_helpers.tiny.families, shrunk from the real configurations)."""
    from vlm_helpers.tiny import BUILDERS, families

    for key in ("qwen2-vl", "qwen2.5-vl-3b", "smolvlm"):
        choice = model_choices.MODEL_CHOICES[key]
        family = FAMILIES[choice.tiny_name]
        assert choice.lora_targets == family.lora_targets
        assert choice.model_id == family.model_id
        build = BUILDERS[choice.tiny_name]
        assert build.__module__ == families.__name__
        assert build.__name__ == "build_tiny_" + choice.tiny_name.replace("-", "_").replace(".", "_")


@pytest.mark.parametrize("key", ["idefics2", "llava-phi3", "qwen2-vl", "qwen2.5-vl-3b", "smolvlm", "smolvlm2-2.2b",
                                 "gemma3-4b", "paligemma2-3b"])
def test_the_tiny_chat_twins_targets_reach_every_text_projection_and_no_vision_module(key, tiny_cache):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForImageTextToText

    from vlm_helpers.lora import vision_encoders
    from vlm_helpers.tiny import tiny_checkpoint

    choice = model_choices.get_model_choice(key)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint(choice.tiny_name, tiny_cache))
    config = LoraConfig(target_modules=choice.lora_targets)
    matched = [name for name, _ in model.named_modules() if name and check_target_module_exists(config, name)]
    layers = model.config.text_config.num_hidden_layers
    text = [name for name in matched if ".layers." in name and ("text_model" in name or "language_model" in name)]
    assert len(text) == 7 * layers  # (Idefics2 also adapts its connector, as notebook 03 does)
    vision = [name for name, _ in vision_encoders(model)]
    assert vision and not [name for name in matched if any(name.startswith(v + ".") for v in vision)]


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


def test_unknown_choices_are_refused_with_the_alternatives_and_every_choice_has_a_tiny_twin():
    with pytest.raises(ValueError, match="llava-phi3"):
        model_choices.get_model_choice("llava")
    from vlm_helpers.tiny import BUILDERS

    assert model_choices.get_model_choice("qwen2-vl").model_id == "Qwen/Qwen2-VL-2B-Instruct"
    for key, choice in model_choices.MODEL_CHOICES.items():  # every choice runs in tiny mode
        assert model_choices.get_model_choice(key).tiny_name in BUILDERS


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


def test_each_kind_gets_its_collator_and_florence2_reads_its_task_prompt(tiny_florence2_path, tiny_cache):
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.florence2 import Florence2Collator
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.tiny import tiny_checkpoint
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    florence = model_choices.get_model_choice("florence2")
    processor = load_chat_processor(tiny_florence2_path)
    row = dict(make_synthetic_docvqa(1, seed=0)[0], id="data.jsonl:7")
    qa = florence.collator(processor, task="qa", instruction="Answer briefly.", seed=0)
    captions = florence.collator(processor, task="captioning", instruction="", seed=0)
    assert isinstance(qa, Florence2Collator) and isinstance(captions, Florence2Collator)
    assert qa.prompts([row]) == ["<DocVQA>" + row["question"]] and captions.prompts([row]) == [row["question"]]
    assert florence.prompt_settings("qa", "Answer briefly.") == {"task_prompt": "<DocVQA>"}
    with pytest.raises(ValueError, match="data.jsonl:7"):  # errors name the canonical id (file and line)
        qa([dict(row, answers=["<OCR>"])])
    with pytest.raises(ValueError, match="TASK"):
        florence.collator(processor, task="vqa", instruction="", seed=0)

    idefics2 = model_choices.get_model_choice("idefics2")
    chat = idefics2.collator(load_chat_processor(tiny_checkpoint("idefics2", tiny_cache)), task="qa",
                             instruction="Answer briefly.", seed=0)
    assert isinstance(chat, ChatVLMCollator) and chat.instruction == "Answer briefly." and chat.id_key == "id"
    assert idefics2.prompt_settings("qa", "Answer briefly.") == {"instruction": "Answer briefly."}


@pytest.mark.parametrize("key", ["florence2", "qwen2-vl", "qwen2.5-vl-3b"])
def test_a_trained_head_of_a_tied_model_survives_reload_and_merge(key, tiny_cache, tmp_path):
    """Florence-2 and Qwen2-VL-2B tie lm_head to their embeddings. Training the head (modules_to_save, tiny mode)
    unties it first: no PEFT tie warning, the embeddings stay as they were, and the reloaded adapter and the
    merged export compute the same logits with the trained head (a tied merged model would reload with the
    untrained one; Florence-2's other tie, encoder and decoder embeddings to ``shared``, must survive)."""
    import warnings

    import torch
    from transformers import AutoModelForImageTextToText

    from vlm_helpers import lora
    from vlm_helpers.tiny import tiny_checkpoint
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    choice = model_choices.MODEL_CHOICES[key]
    base = tiny_checkpoint(choice.tiny_name, tiny_cache)
    kwargs = dict(dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    model, processor = lora.load_chat_vlm(base, **kwargs)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as the real one
    assert not lora.untie_output_layer(AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint("llava-phi3", tiny_cache)))  # an untied model is left alone
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT's "tie_word_embeddings=True ..." warning fails here
        model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=False, modules_to_save=["lm_head"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # stands in for training: every trained tensor moves
                parameter.add_(0.05 * torch.randn_like(parameter))
    trained_head = model.get_output_embeddings().weight.detach().clone()
    assert not torch.equal(trained_head, embeddings)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    adapter = adapters.save_adapter(model, processor, tmp_path / "adapter")

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        reloaded, _ = lora.load_adapter(base, adapter, **kwargs)
    assert torch.equal(reloaded.get_output_embeddings().weight, trained_head)
    assert torch.equal(reloaded.get_input_embeddings().weight, embeddings)

    merged = AutoModelForImageTextToText.from_pretrained(
        lora.merge_for_export(base, adapter, tmp_path / "merged", dtype="float32"))
    assert torch.equal(merged.get_output_embeddings().weight, trained_head)
    assert torch.equal(merged.get_input_embeddings().weight, embeddings)
    row = dict(make_synthetic_docvqa(1, seed=0)[0], id="r0")
    batch = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)([row])
    with torch.no_grad():
        expected, got = reloaded(**batch).logits, merged.eval()(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_trained_head_of_a_16_bit_model_trains_in_fp32(tiny_florence2_path):
    """modules_to_save copies keep the load dtype; on a T4 a fp16 trainable weight stops the grad scaler
    ("Attempting to unscale FP16 gradients"), so add_lora makes every trainable weight fp32."""
    import torch

    from vlm_helpers import lora

    model, _ = lora.load_chat_vlm(tiny_florence2_path, dtype="float16", attn_implementation="sdpa", quantize_4bit=False)
    model = lora.add_lora(model, target_modules=lora_targets.FLORENCE2_LORA_TARGETS, quantized=False,
                          modules_to_save=["lm_head"])
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}
