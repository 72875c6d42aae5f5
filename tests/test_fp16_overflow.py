"""Gemma 3 on a T4 (issue 28): its activations pass fp16's range, so the T4 plan computes it in fp32.

The published reports (transformers PR #37226, issue #39972; Unsloth's Gemma 3 notes): Gemma 3 scales its embeddings
by sqrt(hidden size) and its trained post-norm weights are large, so the residual stream exceeds 65,504 and fp16
losses become inf/NaN. Simulated here on the tiny twin (no GPU; CPU fp16 arithmetic has the same range): one
post-feed-forward norm weight set to the scale that pushes the residual past 65,504 makes the fp16 loss NaN, while the
plan's dtype (what ``runtime.choose_preset`` gives a T4 for this recipe) keeps it finite. That the
notebook loads the model in that dtype is checked in ``tests/test_memory_claims.py``.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from vlm_helpers import lora, model_choices, runtime
from vlm_helpers.tiny import tiny_checkpoint

T4 = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
A100 = runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, on_colab=True, flash_attn_installed=True)
GEMMA3 = model_choices.get_model_choice("gemma3-4b")


def test_the_t4_plan_computes_gemma3_in_fp32_and_leaves_every_other_recipe_in_fp16():
    t4 = runtime.choose_preset(T4, GEMMA3.recipe)
    assert t4.dtype == "float32" and not t4.use_grad_scaler
    assert runtime.choose_preset(A100, GEMMA3.recipe).dtype == "bfloat16"
    for key, choice in model_choices.MODEL_CHOICES.items():
        if choice.recipe not in runtime.FP16_OVERFLOWS:
            assert runtime.choose_preset(T4, choice.recipe).dtype == "float16", key
    assert set(runtime.FP16_OVERFLOWS) <= set(runtime.BATCHING)


def loss_with_residual_scale(dtype: str, scale: float | None, tiny_cache) -> tuple[float, float]:
    """(loss, the residual stream's largest value after layer 0) of the Gemma 3 twin in ``dtype``, with layer 0's
    post-feed-forward norm weight set to ``scale`` (Gemma's norms multiply by 1 + weight; None: as built)."""
    model, processor = lora.load_chat_vlm(str(tiny_checkpoint("gemma3", tiny_cache)), dtype=dtype,
                                          attn_implementation="sdpa", quantize_4bit=False)
    collator = GEMMA3.collator(processor, task="qa", instruction="Answer briefly.", seed=0)
    batch = collator([{"id": "r", "image": Image.new("RGB", (300, 200), "white"), "question": "What is the total?",
                       "answers": ["12.50"]}])
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    with torch.no_grad():
        if scale is not None:
            model.model.language_model.layers[0].post_feedforward_layernorm.weight.fill_(scale)
        out = model(**batch, output_hidden_states=True)
    return float(out.loss), float(out.hidden_states[1].float().abs().max())


def test_a_residual_past_fp16s_range_breaks_fp16_and_not_the_plan(tiny_cache):
    plan = runtime.choose_preset(T4, GEMMA3.recipe).dtype
    fp16_loss, fp16_peak = loss_with_residual_scale("float16", 6e4, tiny_cache)
    plan_loss, plan_peak = loss_with_residual_scale(plan, 6e4, tiny_cache)
    assert math.isnan(fp16_loss) and math.isinf(fp16_peak)
    assert math.isfinite(plan_loss) and plan_peak > torch.finfo(torch.float16).max
    fp16_as_built, _ = loss_with_residual_scale("float16", None, tiny_cache)
    assert math.isfinite(fp16_as_built)  # the twin itself is fine in fp16: the scale alone breaks it
