"""Simulated-GPU tier, T4 numerics: one fp16 step with a gradient scaler per recipe's T4 preset (SIMULATED).

A T4 (compute capability 7.5) trains in fp16 autocast with a ``GradScaler``. Here the CPU runs fp16
autocast and a CPU ``GradScaler`` instead (the same scaling, unscaling and inf checks; the CPU's choice of
which ops run in fp16 differs a little from CUDA's). For each recipe, loaded through the series' own loaders
with the T4 preset's values (fp16 weights for LoRA, 4-bit with fp16 compute for QLoRA, fp32 master weights
for notebook 02's full fine-tune, gradient checkpointing as the preset says), one step must:

- give a finite loss, and leave the scaler at its initial scale (no overflow skipped the step), except where a first
  skipped step is documented (:data:`FIRST_STEP_OVERFLOWS`: PaliGemma 2), and Gemma 3, whose T4 plan computes in fp32
  (``runtime.FP16_OVERFLOWS``) and takes the step without autocast or scaler;
- unscale without error: a trainable fp16 weight (e.g. a ``modules_to_save`` copy of the fp16 head) makes
  ``GradScaler.unscale_`` raise "Attempting to unscale FP16 gradients", so every trainable weight is fp32;
- give gradients to exactly the trainable weights, while the frozen weights keep the preset's dtype;
- never run the frozen vision tower under autograd (its output requires no gradient).

The HF Trainer cannot run this on a CPU (accelerate has no CPU gradient scaler for fp16), so the chat
recipes take the step the Trainer takes on a T4, written out: autocast, ``scale(loss).backward()``,
``unscale_``, clipping, ``step``, ``update``.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from PIL import Image

from vlm_helpers import evaluation, florence2, freezing, lora, model_choices, runtime
from vlm_helpers.loop import TrainConfig, train
from vlm_helpers.tiny import tiny_checkpoint

pytestmark = pytest.mark.slow  # the simulated-GPU tier (README, "Run the tests"): run by `python -m pytest -m slow`

pytest.importorskip("peft")

T4 = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
INITIAL_SCALE = 2.0 ** 16  # torch.amp.GradScaler's default init_scale


def t4_preset(recipe: str) -> runtime.Preset:
    preset = runtime.override(runtime.choose_preset(T4, recipe), device="cpu")
    if recipe in runtime.FP16_OVERFLOWS:  # Gemma 3: fp32 on a T4 (tests/test_fp16_overflow.py), no scaler
        assert preset.dtype == "float32" and not preset.use_grad_scaler
    else:
        assert preset.dtype == "float16" and preset.use_grad_scaler
    assert preset.attn_implementation == "sdpa"
    return preset


#: Choices whose first fp16 step at GradScaler's initial scale (65,536) overflows in the backward pass, so the scaler
#: skips it and halves the scale, as it is built to: PaliGemma 2's Gemma 2 attention soft-caps its scores with tanh,
#: whose gradient is 0 where tanh saturates, and inf x 0 is NaN. Its next step, at 32,768, is finite, and so are the
#: ones after (measured on the twin: 1 skipped step, then the loss falls from 7.8 to 6.6 in 11 steps).
FIRST_STEP_OVERFLOWS = {"paligemma2-3b": 1}


def rows(n: int = 4) -> list[dict]:
    questions = ["What is the total?", "Which company sent this invoice?", "Page?", "When was it signed?"]
    answers = ["12.50", "Acme Corporation, Geneva", "7", "March 10, 1990"]
    return [{"id": f"row-{i}", "questionId": f"q-{i}", "question": questions[i % 4], "answers": [answers[i % 4]],
             "image": Image.new("RGB", (96 + 16 * i, 128), (40 * i, 200, 120))} for i in range(n)]


def tower_output_requires_grad(model) -> list[bool]:
    seen: list[bool] = []

    def record(module, args, output):
        tensor = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
        seen.append(bool(tensor.requires_grad))

    for _, encoder in lora.vision_encoders(model):
        encoder.register_forward_hook(record)
    return seen


@pytest.mark.parametrize("key", sorted(model_choices.MODEL_CHOICES))
def test_t4_fp16_step_with_grad_scaler(tiny_cache, key):
    """Notebooks 03, 04 and 06 (and Florence-2 with LoRA, as notebook 06 trains it) on the T4 preset."""
    choice = model_choices.get_model_choice(key)
    preset = t4_preset(choice.recipe)
    quantize = choice.method("t4") == "qlora"
    path = tiny_checkpoint(choice.tiny_name, tiny_cache)
    if choice.kind == "florence2":
        model, processor = florence2.load_florence2(path, dtype=preset.dtype,
                                                    attn_implementation=preset.attn_implementation)
    else:
        model, processor = lora.load_chat_vlm(path, dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                              quantize_4bit=quantize, device=preset.device)
    # the output layer trained whole, as notebook 06's tiny mode does: its fp16 copy must become fp32
    model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=quantize,
                          gradient_checkpointing=preset.gradient_checkpointing, modules_to_save=["lm_head"])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen_dtypes = {p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    # LoRA: the frozen weights stay in the preset's dtype; QLoRA: 4-bit bytes (PEFT's kbit preparation makes
    # the few weights left in 16 bits, norms and embeddings, fp32)
    assert (torch.uint8 if quantize else getattr(torch, preset.dtype)) in frozen_dtypes, frozen_dtypes
    tower = tower_output_requires_grad(model)

    batch = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)(rows())
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=preset.use_grad_scaler)
    autocast = torch.autocast("cpu", dtype=torch.float16, enabled=preset.dtype == "float16")
    model.train()
    skipped = 0
    for _ in range(FIRST_STEP_OVERFLOWS.get(key, 0) + 1):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # raises on a fp16 gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
        scale = scaler.get_scale() if preset.use_grad_scaler else None
        scaler.step(optimizer)
        scaler.update()
        if preset.use_grad_scaler and scaler.get_scale() < scale:
            skipped += 1
            continue
        break

    assert math.isfinite(float(loss.detach())) and math.isfinite(float(grad_norm))
    assert skipped == FIRST_STEP_OVERFLOWS.get(key, 0), f"{skipped} step(s) overflowed in fp16 and were skipped"
    if preset.use_grad_scaler:
        assert scaler.get_scale() == INITIAL_SCALE / 2 ** skipped
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable), sorted(with_grad ^ set(trainable))[:5]
    assert tower and not any(tower), "the frozen vision tower ran under autograd"


def test_t4_notebook_02_loop_fp16_full_fine_tune(tiny_florence2_path, tmp_path):
    """Notebook 02 on a T4: fp32 master weights, fp16 autocast and the loop's own gradient scaler; the
    frozen tower gets no gradient and does not change, everything else trains, no step is skipped."""
    preset = t4_preset("florence2-docvqa")
    model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32,
                                                attn_implementation=preset.attn_implementation)
    tower = florence2.florence2_vision_modules(model)[0]
    freezing.freeze(tower)
    tower_before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-3, max_steps=2, batch_size=2,
                         grad_accum=2, dtype=preset.dtype, device=preset.device, progress=False)
    state = train(model, rows(8), florence2.Florence2Collator(processor), config)

    assert [record["step"] for record in state.history] == [1, 2]
    assert all(math.isfinite(record["loss"]) and "skipped" not in record for record in state.history)
    assert all(p.grad is None and torch.equal(tower_before[n], p) for n, p in tower.named_parameters())
    after = dict(model.named_parameters())
    assert all(not torch.equal(before, after[n]) for n, before in trained_before.items() if n.endswith("weight"))
    assert all(p.dtype == torch.float32 for p in after.values())  # master weights stay fp32


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("key", ["idefics2", "smolvlm", "qwen2-vl", "qwen2.5-vl-3b"])
def test_checkpointed_training_is_quiet_and_generation_keeps_its_cache(tiny_cache, key):
    """A GPU preset trains with checkpointing, which tiny mode never switches on: on a T4 every model printed
    "`use_cache=True` is incompatible with gradient checkpointing" at its first step. ``add_lora`` turns the
    configuration's cache off for training; generation must still use a cache (one new token per forward)."""
    from transformers.utils import logging as hf_logging

    choice = model_choices.get_model_choice(key)
    preset = t4_preset(choice.recipe)
    model, processor = lora.load_chat_vlm(tiny_checkpoint(choice.tiny_name, tiny_cache), dtype="float32",
                                          attn_implementation=preset.attn_implementation,
                                          quantize_4bit=choice.method("t4") == "qlora")
    model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=choice.method("t4") == "qlora",
                          gradient_checkpointing=preset.gradient_checkpointing)
    collator = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)
    handler = _Messages()
    hf_logging.warning_once.cache_clear()  # a message already shown once would not be shown again
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        model.train()
        model(**collator(rows(2))).loss.backward()
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert not [m for m in handler.messages if "incompatible with gradient checkpointing" in m], handler.messages

    lengths: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    evaluation.generate_predictions(model, processor, collator, rows(1), max_new_tokens=3)
    assert len(lengths) >= 2 and set(lengths[1:]) == {1}, lengths  # after the prompt, one token at a time
