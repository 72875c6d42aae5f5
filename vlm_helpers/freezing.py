"""Freezing parts of a model and counting what is left to train.

Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the vision
encoder": the blog's ``param.is_trainable = False`` froze nothing; ``requires_grad_(False)`` does,
and a frozen tower also belongs in eval mode (``notebooks/02_florence2_docvqa.ipynb``, section "Training").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

def freeze(*modules: nn.Module) -> int:
    """Stop gradients for every parameter of ``modules``; return how many parameters were frozen.

    The Florence-2 blog wrote ``param.is_trainable = False``: that sets a new Python
    attribute nobody reads, so nothing is frozen. ``requires_grad_(False)`` is what
    autograd and the optimizer respect. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    model, and freezing the vision encoder".
    """
    count = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)
            count += param.numel()
    return count


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model (what :func:`count_parameters` returns).

    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the vision encoder".
    """

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({self.percent:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count parameters, each shared tensor once (4-bit weights count their stored elements x2).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the vision encoder"
    (before and after freezing); used again in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The
    model in 4 bits", and ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
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


def forward_without_autograd(module: nn.Module) -> nn.Module:
    """Run every forward of the frozen ``module`` with autograd off, so its output requires no gradient.

    Frozen weights are not enough to spare the backward pass. With LoRA and gradient checkpointing, PEFT
    calls transformers' ``enable_input_require_grads()``, which hooks the input embeddings of *every*
    sub-model, the vision tower's patch embeddings included, and marks their output as requiring a
    gradient. Everything the tower computes from it then requires one too: autograd keeps the tower's
    activations for the backward pass and back-propagates through all of its layers, for weights that never
    change (on a real page that is most of the step's activation memory and a large part of its time). Only the
    text embeddings' output needs a gradient (for checkpointing). This adds two hooks to ``module``: grad mode
    is switched off when its forward starts and restored when it ends (also on an exception; per thread, so
    ``nn.DataParallel`` replicas do not share the state), so no graph is recorded inside it whatever marks its
    inputs. Raises if ``module`` has a trainable parameter, now or at any later forward (a layer unfrozen
    afterwards would otherwise get no gradient, silently): such a module needs its backward, and
    :func:`forward_with_autograd` removes the hooks. Returns ``module``. Applied to the vision encoder by
    :func:`vlm_helpers.lora.add_lora`; taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA
    adapters".
    """
    def trainable() -> list[str]:
        return [name for name, p in module.named_parameters() if p.requires_grad]

    if trainable():
        raise ValueError(f"{type(module).__name__} has trainable parameters ({trainable()[:3]}...): its forward "
                         "needs autograd")
    if getattr(module, "_vlm_autograd_hooks", None):
        return module
    state = threading.local()

    def switch_off(mod, args):
        if trainable():
            raise ValueError(f"{type(mod).__name__} runs without autograd (freezing.forward_without_autograd) but "
                             f"{trainable()[:3]} now train: call freezing.forward_with_autograd(module) first")
        state.__dict__.setdefault("previous", []).append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def restore(mod, args, output):
        previous = getattr(state, "previous", None)
        if previous:  # empty only if switch_off did not run (it raised, or an earlier hook did)
            torch.set_grad_enabled(previous.pop())

    module._vlm_autograd_hooks = (module.register_forward_pre_hook(switch_off),
                                  module.register_forward_hook(restore, always_call=True))
    return module


def forward_with_autograd(module: nn.Module) -> nn.Module:
    """Undo :func:`forward_without_autograd`: the module's forward records its graph again (to train it).

    Returns ``module``. See ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters".
    """
    for handle in getattr(module, "_vlm_autograd_hooks", None) or ():
        handle.remove()
    module._vlm_autograd_hooks = None
    return module


def frozen_to_eval(model: nn.Module) -> list[str]:
    """Put every fully frozen submodule in eval mode; return their names (top-most only).

    ``model.train()`` switches *all* submodules to training mode, frozen ones included, so
    dropout and stochastic depth (DaViT's ``drop_path_rate``) keep perturbing the features of
    a vision tower that cannot adapt to them. Call this after every ``model.train()``; the
    training loop of :mod:`vlm_helpers.loop` does. Taught in ``notebooks/02_florence2_docvqa.ipynb``,
    section "Training".
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
