"""Simulated-GPU tier, kernel contracts: each recipe's A100 preset with FlashAttention-2 (SIMULATED).

The A100 preset asks for ``attn_implementation="flash_attention_2"`` when flash-attn is installed. No GPU
and no flash-attn can be had here, so :mod:`flash_attention` (beside this file) stands in for the two
flash-attn kernels only: transformers' own FlashAttention path runs (masks, casts, unpadding into the varlen
kernel), and the kernels raise where the real ones refuse their input (head dimension > 256, fp32, a padded
batch in the dense kernel). Every recipe then loads through the series' own loaders, takes a training step in
bf16 autocast (the A100's precision, run by the CPU) and generates.

What this found (issue 24): Florence-2 on FlashAttention-2 fails its first forward on an A100 (DaViT's channel
attention passes 36,864 image positions as the head dimension), and with FlashAttention-2 on its BART language
model alone, transformers unpads the decoder's cross-attention queries with the encoder's padding mask, so
answers on padded questions are trained without the page (huggingface/transformers#35032). Florence-2 therefore
stays on sdpa (``runtime.attention_by_part``); chat models get FlashAttention-2 in their language model only.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image, ImageDraw

from flash_attention import (FlashAttentionRuleBroken, calls, flash_attn_func, flash_attn_varlen_func, padded_batch,
                             simulated_flash_attention)
from vlm_helpers import evaluation, florence2, freezing, lora, model_choices, runtime
from vlm_helpers.loop import TrainConfig, train
from vlm_helpers.tiny import tiny_checkpoint

pytestmark = pytest.mark.slow  # the simulated-GPU tier (README, "Run the tests"): run by `python -m pytest -m slow`

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

def test_the_kernels_refuse_what_flash_attention_2_refuses():
    q = torch.zeros(1, 5, 2, 300, dtype=torch.bfloat16)  # [batch, length, heads, head dim]
    with pytest.raises(FlashAttentionRuleBroken, match="head dimension at most 256"):
        flash_attn_func(q, q, q)
    q = torch.zeros(1, 5, 2, 64)
    with pytest.raises(FlashAttentionRuleBroken, match="fp16 and bf16"):
        flash_attn_func(q, q, q)
    q = q.to(torch.bfloat16)
    with pytest.raises(FlashAttentionRuleBroken, match="multiple"):
        flash_attn_func(q, q[:, :, :1].expand(1, 5, 3, 64), q)
    with padded_batch(torch.tensor([[1, 1, 1, 0, 0]])), pytest.raises(FlashAttentionRuleBroken, match="padded"):
        flash_attn_func(q, q, q)


def test_the_kernels_compute_exact_attention():
    """Dense and varlen kernels against a hand-written softmax attention: causal aligned bottom-right (a query
    block shorter than its keys), grouped queries, two packed sequences."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 5, 2, 8), torch.randn(2, 5, 2, 8)

    def reference(q, k, v, causal):  # one sequence: [len, heads, dim]
        k, v = k.repeat_interleave(q.shape[1] // k.shape[1], 1), v.repeat_interleave(q.shape[1] // v.shape[1], 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
        if causal:
            offset = k.shape[0] - q.shape[0]
            scores = scores.masked_fill(torch.ones(q.shape[0], k.shape[0]).tril(offset) == 0, float("-inf"))
        return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)

    for causal in (False, True):
        dense = flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal).float()
        expected = torch.stack([reference(q[b], k[b], v[b], causal) for b in range(2)])
        assert torch.allclose(dense, expected, atol=0.05)
        packed = flash_attn_varlen_func(q.reshape(6, 4, 8).bfloat16(), k.reshape(10, 2, 8).bfloat16(),
                                        v.reshape(10, 2, 8).bfloat16(), torch.tensor([0, 3, 6]),
                                        torch.tensor([0, 5, 10]), 3, 5, causal=causal).float()
        assert torch.allclose(packed, expected.reshape(6, 4, 8), atol=0.05)


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
        assert any(call.get("kernel") == "varlen" for call in calls())  # the padded rows are unpadded
    real = batch["attention_mask"].bool()
    assert torch.allclose(logits[real], reference[real], atol=0.1, rtol=0.05)


def test_simulation_is_put_back():
    from transformers import AttentionInterface

    before = AttentionInterface._global_mapping["flash_attention_2"]
    with simulated_flash_attention():
        assert AttentionInterface._global_mapping["flash_attention_2"] is not before  # the recording wrapper
    assert AttentionInterface._global_mapping["flash_attention_2"] is before


# ------------------------------------------------------------------------------------ Florence-2

def test_florence2_a100_preset_keeps_sdpa_trains_and_generates(tiny_florence2_path, tmp_path):
    """Notebook 02's path under the A100 preset with flash-attn installed: load (fp32 master weights), freeze the
    tower, a loop step in bf16 autocast, then generation. Nothing reaches FlashAttention-2."""
    preset = a100_preset("florence2-docvqa")
    pages = rows(4)
    with simulated_flash_attention():
        model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32, device=preset.device,
                                                    attn_implementation=preset.attn_implementation)
        assert model.config.text_config._attn_implementation == "sdpa"
        assert model.config.vision_config._attn_implementation == "sdpa"
        freezing.freeze(*florence2.florence2_vision_modules(model))
        collator = florence2.Florence2Collator(processor)
        config = TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-4, max_steps=1,
                             batch_size=len(pages), dtype=preset.dtype, device=preset.device, progress=False)
        with padded_batch(collator(pages)["attention_mask"]):
            state = train(model, pages, collator, config)
        predictions = evaluation.generate_predictions(model, processor, collator, pages[:2], batch_size=2,
                                                      max_new_tokens=3, dtype=preset.dtype)
        assert calls() == []
    assert math.isfinite(state.history[-1]["loss"]) and not state.skipped_steps
    assert len(predictions) == 2


def test_bart_on_flash_attention_loses_the_encoder_on_padded_questions(tiny_florence2_path):
    """Why Florence-2's language model is not given FlashAttention-2 either: through transformers' FlashAttention
    path, the decoder's cross-attention queries are unpadded with the encoder's padding mask (its last columns),
    so the answer tokens of a padded question come back as zeros (huggingface/transformers#35032). The same
    batch under sdpa and under FlashAttention-2 on BART: the unpadded row agrees, a padded row does not. If this
    test fails on a newer transformers, the bug is fixed and runtime.attention_by_part may give BART FA2 again."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    batch = florence2.Florence2Collator(AutoProcessor.from_pretrained(tiny_florence2_path))(rows(4))
    padded = (~batch["attention_mask"].bool()).any(dim=1)
    assert padded.any() and not padded.all()
    logits = {}
    with simulated_flash_attention():
        for name, attention in [("sdpa", "sdpa"), ("fa2", {"text_config": "flash_attention_2", "vision_config": "sdpa"})]:
            model = AutoModelForImageTextToText.from_pretrained(tiny_florence2_path, dtype=torch.bfloat16,
                                                                attn_implementation=attention).eval()
            with torch.no_grad(), padded_batch(batch["attention_mask"]):
                logits[name] = model(**batch).logits.float()
    difference = (logits["fa2"] - logits["sdpa"]).abs().amax(dim=(1, 2))
    assert (difference[~padded] < 0.1).all(), difference  # the stand-in kernels compute what sdpa does ...
    assert (difference[padded] > 0.5).all(), difference  # ... and transformers' unpadding breaks padded rows


def test_florence2_whole_model_under_flash_attention_fails_as_on_an_a100(tiny_florence2_path):
    """What the A100 preset did before issue 24: the whole model, DaViT included, on FlashAttention-2."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    with simulated_flash_attention():
        model = AutoModelForImageTextToText.from_pretrained(tiny_florence2_path, dtype=torch.bfloat16,
                                                            attn_implementation="flash_attention_2")
        batch = florence2.Florence2Collator(AutoProcessor.from_pretrained(tiny_florence2_path))(rows(1))
        with pytest.raises(FlashAttentionRuleBroken, match="head dimension at most 256, got 1024"):
            model(**batch)
        assert calls()[-1]["module"] == "Florence2VisionChannelAttention"


@pytest.fixture(scope="module")
def florence2_real_shape(tmp_path_factory):
    from vlm_helpers.tiny.corpus import default_corpus
    from vlm_helpers.tiny.florence2 import REAL_SHAPE_FLORENCE2_SIZES, build_florence2, build_tiny_florence2_tokenizer

    folder = tmp_path_factory.mktemp("florence2-real-shape")
    return build_florence2(folder, REAL_SHAPE_FLORENCE2_SIZES, build_tiny_florence2_tokenizer(default_corpus()))


def test_florence2_real_shape_fails_on_flash_attention_and_the_preset_avoids_it(florence2_real_shape):
    """Real widths (DaViT 128-1024, BART 768) and a 1700 x 2200 page resized to 768 px: whole-model
    FlashAttention-2 fails at the first channel attention with 36,864 as head dimension, the number the
    issue names; the series' loader under the same preset asks for sdpa (no forward needed to show it)."""
    from transformers import AutoModelForImageTextToText

    preset = a100_preset("florence2-docvqa")
    with simulated_flash_attention():
        model, processor = florence2.load_florence2(florence2_real_shape, dtype=torch.float32,
                                                    attn_implementation=preset.attn_implementation)
        assert model.config.text_config._attn_implementation == "sdpa"
        assert model.config.vision_config._attn_implementation == "sdpa"
        batch = florence2.Florence2Collator(processor)(rows(1, (1700, 2200)))
        assert batch["pixel_values"].shape[-2:] == (768, 768)
        whole = AutoModelForImageTextToText.from_pretrained(florence2_real_shape, dtype=torch.bfloat16,
                                                            attn_implementation="flash_attention_2")
        with torch.no_grad(), pytest.raises(FlashAttentionRuleBroken, match="at most 256, got 36864"):
            whole(**{k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch.items()})


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
        # Gemma 3 refuses FlashAttention-2 for the whole model (it would drop its bidirectional image mask): sdpa
        flash = getattr(type(model), "_supports_flash_attn", True)
        assert model.config.text_config._attn_implementation == ("flash_attention_2" if flash else "sdpa")
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
        if flash:
            assert any(call.get("kernel") == "varlen" for call in calls())  # the padded batch went through varlen
        else:
            assert not calls()  # no FlashAttention-2 call at all
        assert not [call for call in calls() if "Vision" in call["module"]]  # vision towers stay on sdpa
        predictions = evaluation.generate_predictions(model, processor, collator, rows(2, (96, 128)), batch_size=2,
                                                      max_new_tokens=3, dtype=preset.dtype)
        assert len(predictions) == 2
