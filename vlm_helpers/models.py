"""Loading models and processors, freezing parts of them, and counting parameters.

Taught in ``notebooks/02_florence2_docvqa.ipynb``. One loader serves both modes: in
full mode it gets a Hub id (``florence-community/Florence-2-base-ft``), in tiny mode
the local folder from :func:`vlm_helpers.tiny.tiny_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FLORENCE2_MODEL_ID = "florence-community/Florence-2-base-ft"


def resolve_checkpoint(model_id: str, *, tiny: bool, tiny_name: str, cache_dir: str | Path | None = None) -> str:
    """Return ``model_id`` in full mode, or the path of the tiny ``tiny_name`` model in tiny mode."""
    if not tiny:
        return model_id
    from vlm_helpers.tiny import tiny_checkpoint

    return str(tiny_checkpoint(tiny_name, cache_dir))


def load_florence2(checkpoint: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   attn_implementation: str = "sdpa"):
    """Load a Florence-2 model and processor with the native transformers classes.

    For training keep ``dtype=torch.float32`` and let autocast run the maths in fp16/bf16:
    the blog's learning rate of 1e-6 is below bf16's resolution for weights near 1, so
    bf16 weights would silently not move. For inference only, load in the preset dtype.
    Returns ``(model, processor)``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint, dtype=dtype, attn_implementation=attn_implementation
    ).to(device)
    return model, processor


def florence2_vision_modules(model: nn.Module) -> list[nn.Module]:
    """The parts of Florence-2 that see pixels: the DaViT tower (and, if present, its projector)."""
    return [model.model.vision_tower]


def freeze(*modules: nn.Module) -> int:
    """Stop gradients for every parameter of ``modules``; return how many parameters were frozen.

    The Florence-2 blog wrote ``param.is_trainable = False``: that sets a new Python
    attribute nobody reads, so nothing is frozen. ``requires_grad_(False)`` is what
    autograd and the optimizer respect.
    """
    count = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)
            count += param.numel()
    return count


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({self.percent:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count parameters, each shared tensor once (4-bit weights count their stored elements x2)."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        numel = param.numel()
        # bitsandbytes packs two 4-bit values per uint8 element
        if param.dtype == torch.uint8 and type(param).__name__ == "Params4bit":
            numel *= 2
        total += numel
        if param.requires_grad:
            trainable += numel
    return ParameterCount(trainable, total)


def frozen_to_eval(model: nn.Module) -> list[str]:
    """Put every fully frozen submodule in eval mode; return their names (top-most only).

    ``model.train()`` switches *all* submodules to training mode, frozen ones included, so
    dropout and stochastic depth (DaViT's ``drop_path_rate``) keep perturbing the features of
    a vision tower that cannot adapt to them. Call this after every ``model.train()``; the
    training loop of :mod:`vlm_helpers.training` does.
    """
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            names.append(prefix)
            return
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    for child_name, child in model.named_children():
        visit(child, child_name)
    return names
