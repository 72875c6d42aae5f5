"""Simulated-GPU tier, kernel contracts: each recipe's A100 preset with FlashAttention-2 (SIMULATED).

The A100 preset asks for ``attn_implementation="flash_attention_2"`` when flash-attn is installed. No GPU
and no flash-attn can be had here, so :mod:`flash_attention` (beside this file) stands in for the kernel:
transformers takes its FlashAttention-2 path (masks, casts, per-part attention), and the stand-in raises
where the real kernel refuses its input (head dimension > 256, fp32, a 4-D mask, padding outside the
varlen path). Every recipe then loads through the series' own loaders, takes a training step in bf16
autocast (the A100's precision, run by the CPU) and generates, on its tiny twin and, for Florence-2, at real
shape (768 px pages through the real-width DaViT). Before issue 24, Florence-2 failed its first forward
here, as it does on an A100: DaViT's channel attention passes 36,864 image tokens as the head dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image, ImageDraw

from flash_attention import (FlashAttentionRuleBroken, calls, padded_batch, simulated_flash_attention,
                             standin_flash_attention)
from vlm_helpers import evaluation, florence2, freezing, lora, model_choices, runtime
from vlm_helpers.loop import TrainConfig, train
from vlm_helpers.tiny import tiny_checkpoint

pytest.importorskip("peft")

#: An A100 with flash-attn installed (a Colab user who ran `pip install flash-attn`).
A100_FLASH = runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, on_colab=True,
                                     flash_attn_installed=True)


def a100_preset(recipe: str) -> runtime.Preset:
    """The A100 preset's dtype, attention and checkpointing, run by this CPU (device only changed)."""
    preset = runtime.override(runtime.choose_preset(A100_FLASH, recipe), device="cpu")
    assert preset.attn_implementation == "flash_attention_2" and preset.dtype == "bfloat16"
    return preset


def page(width: int = 1700, height: int = 2200, text: str = "TOTAL 12.50") -> Image.Image:
    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for y in range(60, height - 60, max(40, height // 12)):
        draw.text((40, y), f"{text} line {y}", fill=(20, 20, 20))
    return image


def rows(n: int = 4, size: tuple[int, int] = (320, 400)) -> list[dict]:
    questions = ["What is the total?", "Which company sent this invoice to the customer?", "Page?", "When?"]
    answers = ["12.50", "Acme Corporation, Geneva", "7", "March 10, 1990"]  # different lengths: padding
    return [{"id": f"row-{i}", "questionId": f"q-{i}", "question": questions[i % 4],
             "answers": [answers[i % 4]], "image": page(*size)} for i in range(n)]


# ----------------------------------------------------------------------------- the stand-in itself

def test_the_stand_in_refuses_what_flash_attention_2_refuses():
    module = torch.nn.Linear(8, 8).to(torch.bfloat16)
    module.is_causal = False
    q = torch.zeros(1, 2, 5, 300, dtype=torch.bfloat16)
    with pytest.raises(FlashAttentionRuleBroken, match="head dimension at most 256"):
        standin_flash_attention(module, q, q, q, None)
    q = torch.zeros(1, 2, 5, 64)
    with pytest.raises(FlashAttentionRuleBroken, match="fp16 and bf16"):
        standin_flash_attention(torch.nn.Linear(8, 8), q, q, q, None)  # fp32 weights, no autocast
    q = q.to(torch.bfloat16)
    with pytest.raises(FlashAttentionRuleBroken, match="4-D"):
        standin_flash_attention(module, q, q, q, torch.zeros(1, 1, 5, 5))
    with padded_batch(torch.tensor([[1, 1, 1, 0, 0]])), pytest.raises(FlashAttentionRuleBroken, match="padded"):
        standin_flash_attention(module, q, q, q, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 inputs under autocast are cast, as transformers does
        out, _ = standin_flash_attention(torch.nn.Linear(8, 8), q.float(), q.float(), q.float(), None)
    assert out.shape == (1, 5, 2, 64) and out.dtype == torch.bfloat16


def test_the_stand_in_computes_what_sdpa_computes_on_a_padded_causal_batch(tiny_cache):
    """The LLaVA-Phi-3 twin in bf16: logits of every real token agree under the stand-in and under sdpa."""
    path = tiny_checkpoint("llava-phi3", tiny_cache)
    choice = model_choices.get_model_choice("llava-phi3")
    model, processor = lora.load_chat_vlm(path, dtype="bfloat16", attn_implementation="sdpa", quantize_4bit=False)
    batch = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)(rows(3, (64, 64)))
    assert not bool(batch["attention_mask"].all())  # the batch is padded
    with torch.no_grad():
        reference = model(**batch).logits.float()
    with simulated_flash_attention():
        flash_model, _ = lora.load_chat_vlm(path, dtype="bfloat16", attn_implementation="flash_attention_2",
                                            quantize_4bit=False)
        with torch.no_grad(), padded_batch(batch["attention_mask"]):
            logits = flash_model(**batch).logits.float()
        assert any(call["varlen"] for call in calls())
    real = batch["attention_mask"].bool()
    assert torch.allclose(logits[real], reference[real], atol=0.1, rtol=0.05)


def test_simulation_is_put_back():
    from transformers import AttentionInterface

    before = AttentionInterface._global_mapping["flash_attention_2"]
    with simulated_flash_attention():
        assert AttentionInterface._global_mapping["flash_attention_2"] is standin_flash_attention
    assert AttentionInterface._global_mapping["flash_attention_2"] is before


# ------------------------------------------------------------------------------------ Florence-2

def florence2_a100_step(path, pages: list[dict], tmp_path) -> list[dict]:
    """Notebook 02's path under the A100 preset: load (fp32 master weights), freeze the tower, a loop step
    in bf16 autocast, then generation; returns the stand-in's calls."""
    preset = a100_preset("florence2-docvqa")
    model, processor = florence2.load_florence2(path, dtype=torch.float32, device=preset.device,
                                                attn_implementation=preset.attn_implementation)
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "flash_attention_2"
    freezing.freeze(*florence2.florence2_vision_modules(model))
    collator = florence2.Florence2Collator(processor)
    config = TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-4, max_steps=1, batch_size=len(pages),
                         dtype=preset.dtype, device=preset.device, progress=False)
    state = train(model, pages, collator, config)
    assert math.isfinite(state.history[-1]["loss"]) and not state.skipped_steps
    predictions = evaluation.generate_predictions(model, processor, collator, pages[:2], batch_size=2,
                                                  max_new_tokens=3, dtype=preset.dtype)
    assert len(predictions) == 2
    return list(calls())


def test_florence2_a100_preset_under_flash_attention_tiny(tiny_florence2_path, tmp_path):
    with simulated_flash_attention():
        seen = florence2_a100_step(tiny_florence2_path, rows(4), tmp_path)
    modules = {call["module"] for call in seen}
    assert modules == {"BartAttention"}, modules  # the language model only: DaViT stays on sdpa
    assert any(call["varlen"] for call in seen)  # padded questions go through the varlen path


def test_florence2_whole_model_under_flash_attention_fails_as_on_an_a100(tiny_florence2_path):
    """What the A100 preset did before issue 24: the whole model, DaViT included, on FlashAttention-2."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    with simulated_flash_attention():
        model = AutoModelForImageTextToText.from_pretrained(tiny_florence2_path, dtype=torch.bfloat16,
                                                            attn_implementation="flash_attention_2")
        batch = florence2.Florence2Collator(AutoProcessor.from_pretrained(tiny_florence2_path))(rows(1))
        with pytest.raises(FlashAttentionRuleBroken, match="Florence2VisionChannelAttention.*head dimension"):
            model(**batch)


@pytest.fixture(scope="module")
def florence2_real_shape(tmp_path_factory):
    from vlm_helpers.tiny.corpus import default_corpus
    from vlm_helpers.tiny.florence2 import REAL_SHAPE_FLORENCE2_SIZES, build_florence2, build_tiny_florence2_tokenizer

    folder = tmp_path_factory.mktemp("florence2-real-shape")
    return build_florence2(folder, REAL_SHAPE_FLORENCE2_SIZES, build_tiny_florence2_tokenizer(default_corpus()))


def test_florence2_a100_preset_under_flash_attention_real_shape(florence2_real_shape):
    """Real widths (DaViT 128-1024, BART 768) on a 1700 x 2200 page resized to 768 px: the forward pass the
    first training step would take, in the preset's bf16 autocast (the tiny test above takes the whole step
    and generates; at real shape a CPU needs ~10 s for the forward alone)."""
    preset = a100_preset("florence2-docvqa")
    torch.set_num_threads(2)
    try:
        with simulated_flash_attention():
            model, processor = florence2.load_florence2(florence2_real_shape, dtype=torch.float32,
                                                        attn_implementation=preset.attn_implementation)
            freezing.freeze(*florence2.florence2_vision_modules(model))
            batch = florence2.Florence2Collator(processor)(rows(1, (1700, 2200)))
            assert batch["pixel_values"].shape[-2:] == (768, 768)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            seen = list(calls())
    finally:
        torch.set_num_threads(1)
    assert math.isfinite(float(loss))
    assert {call["module"] for call in seen} == {"BartAttention"}
    assert max(call["head_dim"] for call in seen) == 64  # 768 / 12 heads


# ---------------------------------------------------------------------------------- chat models

@pytest.mark.parametrize("key", [k for k, c in sorted(model_choices.MODEL_CHOICES.items()) if c.kind == "chat"])
def test_chat_choice_a100_preset_under_flash_attention(tiny_cache, key):
    """Notebooks 03, 04 and 06: load as the A100 preset says (LoRA on bf16 weights, or 4-bit), add LoRA with
    checkpointing, one padded batch forward and backward in bf16 autocast, then batched generation."""
    choice = model_choices.get_model_choice(key)
    preset = a100_preset(choice.recipe)
    quantize = choice.method("a100") == "qlora"
    with simulated_flash_attention():
        model, processor = lora.load_chat_vlm(tiny_checkpoint(choice.tiny_name, tiny_cache), dtype=preset.dtype,
                                              attn_implementation=preset.attn_implementation, quantize_4bit=quantize,
                                              device=preset.device)
        assert model.config.text_config._attn_implementation == "flash_attention_2"
        assert all(encoder.config._attn_implementation == "sdpa" for _, encoder in lora.vision_encoders(model))
        model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=quantize,
                              gradient_checkpointing=preset.gradient_checkpointing)
        collator = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)
        batch = collator(rows(4, (96, 128)))
        assert not bool(batch["attention_mask"].all())
        model.train()
        with padded_batch(batch["attention_mask"]), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        assert math.isfinite(float(loss.detach()))
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)
        text_calls = [call for call in calls() if call["q_len"] == batch["input_ids"].shape[1]]
        assert text_calls and all(call["varlen"] for call in text_calls)
        predictions = evaluation.generate_predictions(model, processor, collator, rows(2, (96, 128)), batch_size=2,
                                                      max_new_tokens=3, dtype=preset.dtype)
        assert len(predictions) == 2
