"""Hardware detection and training presets: which dtype, attention and batch size to use.

Taught in ``notebooks/02_florence2_docvqa.ipynb`` (every notebook prints the one-line
summary from :func:`describe`). The rules:

- compute capability >= 8.0 (A100, L4, H100): bf16 autocast, flash-attn only if installed;
- below 8.0 (T4, V100): fp16 autocast with a gradient scaler, and ``sdpa`` attention.
  ``torch.cuda.is_bf16_supported()`` says True on a T4, but there bf16 is emulated and slow,
  so we never ask it;
- CPU: fp32.

``VLM_TINY=1`` switches every notebook to tiny random models and synthetic data
(:func:`is_tiny`). Tiny mode changes the *values* in a notebook's parameters cell,
never the code path below it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, replace

TINY_ENV_VAR = "VLM_TINY"

#: (per-device batch size, gradient accumulation steps) per recipe and GPU class.
#: Florence-2 follows the blog (batch 6 on a 40 GB A100; a T4 gets 2 x 3 = the same 6).
#: Idefics2 follows the QLoRA article (2 x 8); the T4 halves the batch and doubles accumulation.
BATCHING: dict[str, dict[str, tuple[int, int]]] = {
    "florence2-docvqa": {"a100": (6, 1), "t4": (2, 3), "cpu": (2, 1), "tiny": (4, 1)},
    "idefics2-qlora-docvqa": {"a100": (2, 8), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "phi3-aircraft": {"a100": (4, 2), "t4": (1, 8), "cpu": (1, 2), "tiny": (4, 1)},
}


@dataclass(frozen=True)
class HardwareProfile:
    """What the current machine offers."""

    device: str  # "cuda" or "cpu"
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    gpu_memory_gb: float | None
    on_colab: bool
    flash_attn_installed: bool


@dataclass(frozen=True)
class Preset:
    """Training choices derived from a :class:`HardwareProfile` (and the recipe)."""

    name: str  # "tiny", "cpu", "t4" or "a100"
    device: str
    dtype: str  # "float32", "float16" or "bfloat16": the autocast / compute dtype
    attn_implementation: str  # "sdpa", "eager" or "flash_attention_2"
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    tiny: bool

    @property
    def use_grad_scaler(self) -> bool:
        """fp16 needs loss scaling so small gradients do not underflow; bf16 and fp32 do not."""
        return self.dtype == "float16"

    @property
    def torch_dtype(self):
        """The preset's dtype as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.dtype)


def is_tiny(environ: dict | None = None) -> bool:
    """True when ``VLM_TINY`` is set to 1/true/yes (read from ``environ``, default ``os.environ``)."""
    value = (environ if environ is not None else os.environ).get(TINY_ENV_VAR, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def detect_hardware() -> HardwareProfile:
    """Inspect the machine: GPU name, compute capability, memory, Colab, flash-attn."""
    import torch

    on_colab = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
    flash = importlib.util.find_spec("flash_attn") is not None
    if not torch.cuda.is_available():
        return HardwareProfile("cpu", None, None, None, on_colab, flash)
    props = torch.cuda.get_device_properties(0)
    return HardwareProfile(
        device="cuda",
        gpu_name=props.name,
        compute_capability=(props.major, props.minor),
        gpu_memory_gb=round(props.total_memory / 1024**3, 1),
        on_colab=on_colab,
        flash_attn_installed=flash,
    )


def choose_preset(profile: HardwareProfile, recipe: str, *, tiny: bool = False,
                  allow_flash_attn: bool = True) -> Preset:
    """Derive dtype, attention, batching and checkpointing for ``recipe`` on ``profile``.

    ``tiny=True`` keeps the hardware's dtype choice but uses the tiny batching, so tiny
    mode on a GPU still exercises fp16/bf16.
    """
    if recipe not in BATCHING:
        raise ValueError(f"Unknown recipe {recipe!r}; expected one of {sorted(BATCHING)}")
    if profile.device == "cpu":
        gpu_class, dtype, attn = "cpu", "float32", "sdpa"
    else:
        ampere = profile.compute_capability is not None and profile.compute_capability >= (8, 0)
        dtype = "bfloat16" if ampere else "float16"
        attn = "flash_attention_2" if (ampere and profile.flash_attn_installed and allow_flash_attn) else "sdpa"
        gpu_class = "a100" if (profile.gpu_memory_gb or 0) >= 30 else "t4"
    name = "tiny" if tiny else gpu_class
    batch_size, grad_accum = BATCHING[recipe][name]
    checkpointing = needs_gradient_checkpointing(recipe, name, profile.device)
    return Preset(name=name, device=profile.device, dtype=dtype, attn_implementation=attn,
                  batch_size=batch_size, grad_accum=grad_accum, gradient_checkpointing=checkpointing, tiny=tiny)


def needs_gradient_checkpointing(recipe: str, preset_name: str, device: str) -> bool:
    """Recompute activations in the backward pass (less memory, ~30% more time)? The one rule for
    every preset: on a GPU, always on a T4 and on an A100 for every recipe but Florence-2 (a 0.23B
    model, whose activations fit); never on a CPU or in tiny mode, where memory is not the limit."""
    if device != "cuda" or preset_name in ("tiny", "cpu"):
        return False
    return preset_name == "t4" or recipe != "florence2-docvqa"


def override(preset: Preset, **changes) -> Preset:
    """Return a copy of ``preset`` with some fields changed (e.g. ``batch_size=1``)."""
    return replace(preset, **changes)


def describe(profile: HardwareProfile, preset: Preset) -> str:
    """One line a learner can read: the machine, then the choices made for it."""
    if profile.device == "cpu":
        machine = "CPU only"
    else:
        cc = ".".join(map(str, profile.compute_capability or ()))
        machine = f"{profile.gpu_name} ({profile.gpu_memory_gb} GB, compute capability {cc})"
    where = "Colab" if profile.on_colab else "local"
    mode = "TINY mode (random tiny models, synthetic data)" if preset.tiny else "FULL mode"
    return (f"{machine}, {where} | preset {preset.name}: {preset.dtype}, attention={preset.attn_implementation}, "
            f"batch {preset.batch_size} x accumulation {preset.grad_accum}, "
            f"gradient checkpointing {'on' if preset.gradient_checkpointing else 'off'} | {mode}")


def mode_label(tiny: bool) -> str:
    """The tag every printed number carries, so tiny-mode numbers are never mistaken for results."""
    return "[TINY mode: tiny random model, synthetic data — not a real result]" if tiny else "[FULL mode]"


def resolve_checkpoint(model_id: str, *, tiny: bool, tiny_name: str, cache_dir: str | None = None) -> str:
    """Return ``model_id`` in full mode, or the path of the tiny ``tiny_name`` model in tiny mode.

    The one place where the two modes take different models; everything after it is the same code.
    """
    if not tiny:
        return model_id
    from vlm_helpers.tiny import tiny_checkpoint

    return str(tiny_checkpoint(tiny_name, cache_dir))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(recipe: str, *, tiny: bool, seed: int = 0, preset_name: str | None = None) -> tuple[HardwareProfile, Preset]:
    """What every notebook's first code cell does: detect, choose a preset, seed, set threads.

    ``preset_name`` ("t4" or "a100") forces a GPU class, e.g. to try T4 settings on an A100.
    In tiny mode on a CPU torch uses one thread: tiny matrices gain nothing from more, and
    two threads on a busy 2-core machine were measured 100x slower.
    """
    import torch

    profile = detect_hardware()
    preset = choose_preset(profile, recipe, tiny=tiny)
    if preset_name is not None and not tiny:
        if preset_name not in ("t4", "a100", "cpu"):
            raise ValueError(f"preset_name must be 't4', 'a100' or 'cpu', got {preset_name!r}")
        batch_size, grad_accum = BATCHING[recipe][preset_name]
        preset = replace(preset, name=preset_name, batch_size=batch_size, grad_accum=grad_accum,
                         gradient_checkpointing=needs_gradient_checkpointing(recipe, preset_name, profile.device))
    if tiny and profile.device == "cpu":
        torch.set_num_threads(1)
    seed_everything(seed)
    return profile, preset


def versions() -> str:
    """Python and library versions, one line, for the first cell of every notebook."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "vlm_helpers"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)
