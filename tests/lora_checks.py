"""A check shared by the LoRA tests: two optimizer steps train the adapters and nothing else."""

from __future__ import annotations

import math

import torch


def lora_grads(model) -> dict:
    """Each LoRA parameter's gradient (None where it got none)."""
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def nonzero(grad) -> bool:
    """True for a gradient that exists and is not all zeros."""
    return grad is not None and bool(grad.abs().sum() > 0)


def assert_two_steps_train_lora_only(model, batch: dict, lr: float = 1e-2) -> None:
    """Step 1: every lora_B gets a gradient (lora_A's is exactly 0, since B starts at 0 and
    multiplies it); step 2: every LoRA matrix does. Afterwards every LoRA tensor has moved and
    every other parameter (4-bit bytes included) is bit-identical."""
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in lora.items()}
    optimizer = torch.optim.AdamW(lora.values(), lr=lr, weight_decay=0.0)
    model.train()

    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    loss.backward()
    missing = [n for n, g in lora_grads(model).items() if "lora_B" in n and not nonzero(g)]
    assert not missing, missing
    optimizer.step()
    optimizer.zero_grad()

    model(**batch).loss.backward()
    missing = [n for n, g in lora_grads(model).items() if not nonzero(g)]
    assert not missing, missing
    optimizer.step()

    assert all(not torch.equal(lora_before[n], p) for n, p in lora.items())
    after = dict(model.named_parameters())
    assert all(torch.equal(before, after[n]) for n, before in frozen_before.items())


def trainer_values(preset) -> dict:
    """The preset's values as the plain arguments of ``make_training_arguments`` (as the notebooks pass them)."""
    return dict(batch_size=preset.batch_size, grad_accum=preset.grad_accum, dtype=preset.dtype,
                gradient_checkpointing=preset.gradient_checkpointing, device=preset.device)
