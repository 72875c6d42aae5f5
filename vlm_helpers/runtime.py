"""Hardware detection and training presets: which dtype, attention and batch size to use.

Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset" (every notebook
prints the one-line summary from :func:`describe`). The rules:

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

#: The file every tiny twin's folder holds (written by :func:`vlm_helpers.tiny.tiny_checkpoint`): what marks a
#: checkpoint as a tiny random model, so an adapter trained on it is tagged as no real result.
TINY_TWIN_FILE = "TINY_TWIN.json"

#: (per-device batch size, gradient accumulation steps) per recipe and GPU class.
#: Florence-2 follows the blog (batch 6 on a 40 GB A100; a T4 gets 2 x 3 = the same 6).
#: Idefics2 follows the QLoRA article (2 x 8); the T4 halves the batch and doubles accumulation.
BATCHING: dict[str, dict[str, tuple[int, int]]] = {
    "florence2-docvqa": {"a100": (6, 1), "t4": (2, 3), "cpu": (2, 1), "tiny": (4, 1)},
    "idefics2-qlora-docvqa": {"a100": (2, 8), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "phi3-aircraft": {"a100": (4, 2), "t4": (1, 8), "cpu": (1, 2), "tiny": (4, 1)},
    # notebook 06's other choices (vlm_helpers.model_choices): 16 rows per optimizer step, as Idefics2
    "qwen2-vl-lora": {"a100": (4, 4), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "qwen2.5-vl-3b-lora": {"a100": (2, 8), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "smolvlm-lora": {"a100": (16, 1), "t4": (4, 4), "cpu": (1, 2), "tiny": (4, 1)},
    "smolvlm2-2.2b-lora": {"a100": (4, 4), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "gemma3-4b-lora": {"a100": (2, 8), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
    "paligemma2-3b-lora": {"a100": (4, 4), "t4": (1, 16), "cpu": (1, 2), "tiny": (4, 1)},
}

#: Recipes whose model overflows fp16, so a GPU without bf16 (a T4) computes them in fp32 instead. Gemma 3's
#: embeddings are scaled by sqrt(hidden size) and its post-norm weights are large, so its residual stream and
#: norm outputs pass fp16's 65,504 (transformers PR #37226; issue #39972): the losses become inf/NaN. Unsloth
#: keeps the residual stream, norms, MLP products and attention in fp32 with fp16 matmuls
#: (https://unsloth.ai/blog/gemma3); vLLM refuses fp16 for Gemma 3. The series takes the plain, certain form:
#: fp32 compute on fp16-only GPUs (4-bit storage keeps the weights small), about 8x slower matmuls than fp16 on
#: a T4, estimated in the README's GPU table. bf16 (A100) has fp32's range and is kept.
FP16_OVERFLOWS: dict[str, str] = {
    "gemma3-4b-lora": "Gemma 3's activations overflow fp16 (65,504): computed in fp32 on this GPU",
}


@dataclass(frozen=True)
class HardwareProfile:
    """What the current machine offers.

    Printed by :func:`describe` in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset".
    """

    device: str  # "cuda" or "cpu"
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    gpu_memory_gb: float | None
    on_colab: bool
    flash_attn_installed: bool


@dataclass(frozen=True)
class Preset:
    """Training choices derived from a :class:`HardwareProfile` (and the recipe).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset"; the presets are
    tabled in the README, section "Measured here, and what is not".
    """

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
        return torch_dtype(self.dtype)


def torch_dtype(dtype):
    """``"bfloat16"`` or ``torch.bfloat16`` -> ``torch.bfloat16`` (the presets name dtypes as strings).

    The compute dtype is explained in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The machine and
    the preset".
    """
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def is_tiny(environ: dict | None = None) -> bool:
    """True when ``VLM_TINY`` is set to 1/true/yes (read from ``environ``, default ``os.environ``).

    Read in ``notebooks/02_florence2_docvqa.ipynb``, section "Parameters" (and in every notebook's).
    """
    value = (environ if environ is not None else os.environ).get(TINY_ENV_VAR, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def detect_hardware() -> HardwareProfile:
    """Inspect the machine: GPU name, compute capability, memory, Colab, flash-attn.

    Called by :func:`setup` in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset".
    """
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
    mode on a GPU still exercises fp16/bf16. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    machine and the preset" (through :func:`setup`); called directly in
    ``notebooks/01_baseline_inference.ipynb``, section "Idefics2-8b on DocVQA, zero-shot, in 4 bits".
    """
    if recipe not in BATCHING:
        raise ValueError(f"Unknown recipe {recipe!r}; expected one of {sorted(BATCHING)}")
    if profile.device == "cpu":
        gpu_class, dtype, attn = "cpu", "float32", "sdpa"
    else:
        ampere = profile.compute_capability is not None and profile.compute_capability >= (8, 0)
        dtype = "bfloat16" if ampere else "float32" if recipe in FP16_OVERFLOWS else "float16"
        attn = "flash_attention_2" if (ampere and profile.flash_attn_installed and allow_flash_attn) else "sdpa"
        gpu_class = "a100" if (profile.gpu_memory_gb or 0) >= 30 else "t4"
    name = "tiny" if tiny else gpu_class
    batch_size, grad_accum = BATCHING[recipe][name]
    checkpointing = needs_gradient_checkpointing(recipe, name, profile.device)
    return Preset(name=name, device=profile.device, dtype=dtype, attn_implementation=attn,
                  batch_size=batch_size, grad_accum=grad_accum, gradient_checkpointing=checkpointing, tiny=tiny)


#: What to try when a model class does not support an attention implementation: the next one down.
ATTENTION_FALLBACK = {"flash_attention_2": "sdpa", "sdpa": "eager"}


def _supports(model_class, implementation: str) -> bool:
    flag = {"flash_attention_2": "_supports_flash_attn", "sdpa": "_supports_sdpa"}.get(implementation)
    return model_class is None or flag is None or bool(getattr(model_class, flag, True))


def supported_attention(model_class, requested: str) -> str:
    """``requested`` if ``model_class`` supports it, else the next of :data:`ATTENTION_FALLBACK` it supports.

    Gemma 2 (PaliGemma 2's language model) has no ``sdpa`` path (its attention logits are soft-capped) and gets
    ``eager``; Gemma 3, PaliGemma and Mllama refuse FlashAttention-2 for the whole model (it would drop their
    bidirectional mask over image tokens) and get ``sdpa``. Taught in ``notebooks/02_florence2_docvqa.ipynb``,
    section "The machine and the preset".
    """
    implementation = requested
    while not _supports(model_class, implementation) and implementation in ATTENTION_FALLBACK:
        implementation = ATTENTION_FALLBACK[implementation]
    return implementation


def _model_class(config, *, top: bool):
    """The class ``from_pretrained`` builds for ``config`` (its ``architectures`` at the top), or None if unknown."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    names = list(getattr(config, "architectures", None) or []) if top else []
    names.append(MODEL_MAPPING_NAMES.get(getattr(config, "model_type", None), ""))
    for name in names:
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
    return None


def attention_by_part(config, attn_implementation: str) -> str | dict[str, str]:
    """The ``attn_implementation`` to pass to ``from_pretrained`` for a model with this ``config``:
    FlashAttention-2 for a decoder-only language model only, ``sdpa`` everywhere else, and in every part only
    what that part's class supports.

    transformers hands a single ``attn_implementation`` to every part of a vision-language model, and
    FlashAttention-2 does not suit every part:

    - vision towers: the kernel accepts a head dimension of at most 256, and Florence-2's DaViT *channel*
      attention passes the number of image positions as the head dimension (36,864 at 768 px), so the first
      forward on an A100 with flash-attn installed fails. Vision towers stay on ``sdpa``, which runs a fused
      kernel on their patches (and takes the patch mask of Idefics2 and SmolVLM);
    - encoder-decoder language models (Florence-2's BART): transformers' FlashAttention path unpads the
      decoder's cross-attention queries with the *encoder's* padding mask, so with padded questions answer
      tokens lose the page and the question, silently (huggingface/transformers#35032; reproduced by
      ``tests/gpu_sim/test_kernel_contracts.py``). Such models stay on ``sdpa`` altogether;
    - some classes refuse an implementation outright (:func:`supported_attention`): Gemma 3 and PaliGemma
      refuse FlashAttention-2 for the whole model (no part gets it), and Gemma 2, PaliGemma 2's language model,
      has no ``sdpa`` (it gets ``eager``, on a T4 and in tiny mode too).

    So for a decoder-only model a request for ``"flash_attention_2"`` becomes one value per sub-configuration
    (``{"text_config": "flash_attention_2", "vision_config": "sdpa"}``, per-part attention as
    ``from_pretrained`` accepts it in transformers 5); an encoder-decoder gets ``"sdpa"``; a request every part
    supports as it is comes back unchanged, a string. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section
    "The machine and the preset".
    """
    requested = attn_implementation
    if requested == "flash_attention_2" and getattr(config, "is_encoder_decoder", False):
        requested = "sdpa"
    top = supported_attention(_model_class(config, top=True), requested)
    parts = list(getattr(config, "sub_configs", None) or {})
    by_part = {}
    for part in parts:
        wanted = "sdpa" if ("vision" in part and top == "flash_attention_2") else top
        by_part[part] = supported_attention(_model_class(getattr(config, part, None), top=False), wanted)
    by_part[""] = top  # the top-level model (its own masks follow the language model's)
    if len(set(by_part.values())) == 1:
        return top
    return by_part


def needs_gradient_checkpointing(recipe: str, preset_name: str, device: str) -> bool:
    """Recompute activations in the backward pass (less memory, roughly 20-30% more time)? The one rule for
    every preset: on a GPU, for every recipe but Florence-2; never on a CPU or in tiny mode, where memory
    is not the limit. Florence-2 (0.23 B) needs it on no GPU: its vision tower is frozen, so autograd keeps
    none of its activations, and transformers could not checkpoint it anyway (its DaViT blocks are no
    checkpointing layers); at the T4 preset's batch of 2 pages (577 image tokens each) the training step's
    activations come to about 1.4 GiB, next to 2.5 GiB of fp32 weights, gradients and AdamW state, a peak of
    3.9 GiB (simulated: ``python bench/gpu_memory.py --notebook 02 --preset t4``): a quarter of a T4, so
    checkpointing would cost time for memory nobody needs. Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``,
    section "The machine and the preset", and ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and
    the preset"."""
    if device != "cuda" or preset_name in ("tiny", "cpu"):
        return False
    return recipe != "florence2-docvqa"


def override(preset: Preset, **changes) -> Preset:
    """Return a copy of ``preset`` with some fields changed (e.g. ``batch_size=1``).

    How ``vlm-train --batch-size``/``--grad-accum`` replace the GPU's choice (README, section "One GPU").
    """
    return replace(preset, **changes)


def describe(profile: HardwareProfile, preset: Preset) -> str:
    """One line a learner can read: the machine, then the choices made for it.

    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset".
    """
    if profile.device == "cpu":
        machine = "CPU only"
    else:
        cc = ".".join(map(str, profile.compute_capability or ()))
        machine = f"{profile.gpu_name} ({profile.gpu_memory_gb} GB, compute capability {cc})"
    where = "Colab" if profile.on_colab else "local"
    mode = "TINY mode (random tiny models; synthetic data unless you give your own)" if preset.tiny else "FULL mode"
    return (f"{machine}, {where} | preset {preset.name}: {preset.dtype}, attention={preset.attn_implementation}, "
            f"batch {preset.batch_size} x accumulation {preset.grad_accum}, "
            f"gradient checkpointing {'on' if preset.gradient_checkpointing else 'off'} | {mode}")


def mode_label(tiny: bool) -> str:
    """The tag every printed number carries, so tiny-mode numbers are never mistaken for results.

    Tiny mode is introduced in ``notebooks/02_florence2_docvqa.ipynb``, section "02 · Fine-tuning Florence-2 on
    DocVQA" (two modes); the label is first printed in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    data: questions about scanned documents".
    """
    return "[TINY mode: tiny random model — not a real result]" if tiny else "[FULL mode]"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs.

    Called by :func:`setup` with ``SEED`` in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and
    the preset".
    """
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
    two threads on a busy 2-core machine were measured 100x slower. Taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset".
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
    quiet_libraries(progress_bars=not tiny)
    seed_everything(seed)
    return profile, preset


class NeedsGPU(RuntimeError):
    """Full mode was asked for on a machine without a GPU. Raised at the end of the parameters cell:
    ``notebooks/02_florence2_docvqa.ipynb``, section "Parameters"."""


def require_gpu_unless_tiny(tiny: bool, *, notebook: str, cuda_available: bool | None = None) -> None:
    """Stop a full-mode run on a machine without a GPU, before anything is downloaded.

    Called at the end of every model notebook's parameters cell. Without it, a notebook opened on a
    laptop, or on a Colab CPU runtime, would go into full mode, retry the Hub, and (online) start a
    download of several GB only to train for days on the CPU. ``cuda_available`` is for tests.
    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Parameters" (and in 01, 03, 04).
    """
    if tiny:
        return
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise NeedsGPU(
            f"{notebook} is in FULL mode (real checkpoints and datasets), and this machine has no GPU. "
            f"Either run it in tiny mode: set the environment variable {TINY_ENV_VAR}=1 before starting "
            f"Jupyter (`{TINY_ENV_VAR}=1 jupyter lab`), or on Colab run `%env {TINY_ENV_VAR}=1` in a cell "
            "and restart from the top; or switch to a GPU runtime (Colab: Runtime > Change runtime type > "
            "T4 GPU) and run the notebook again.")


#: Messages a learner can do nothing about; each is filtered by its text, nothing broader.
_KNOWN_WARNINGS = (
    # tqdm, on a Jupyter kernel without ipywidgets: advice about widgets for bars we switch off anyway
    ("IProgress not found", Warning),
    # transformers 5.23 renamed gradient checkpointing; PEFT still reads the old attribute
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)
_KNOWN_LOG_MESSAGES = (
    # the published idefics2-8b keeps its chat template in processor_config.json (as its tiny copy does)
    ("transformers.processing_utils", "Chat templates should be in a 'chat_template.jinja' file"),
    # CPU-only: bitsandbytes looks for an optional faster CPU kernel and falls back to its own
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)


class _DropMessages:
    """A ``logging`` filter that drops records starting with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_libraries(*, progress_bars: bool) -> None:
    """Keep notebook outputs to what the lesson prints: the known library messages above are
    filtered (in both modes), and with ``progress_bars=False`` (tiny mode, where every step takes
    milliseconds) the progress bars of datasets (``Map``, ``Filter``), transformers (``Loading
    weights``, ``Writing model shards``) and the Hub are switched off. Full mode keeps its bars:
    there a download or a ``map`` over 39,000 pages takes minutes, and the bar is the news.

    :func:`setup` calls this; call it yourself in a script that does not use :func:`setup`.
    Calling it twice is harmless. Used in ``notebooks/02_florence2_docvqa.ipynb``, section
    "The machine and the preset" (through :func:`setup`).
    """
    import logging
    import warnings

    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger_name in sorted({name for name, _ in _KNOWN_LOG_MESSAGES}):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(tuple(p for n, p in _KNOWN_LOG_MESSAGES if n == logger_name)))
    if not progress_bars:
        import datasets
        import huggingface_hub.utils
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


#: The versions the series is tested with (README, section "Tested versions"): package -> (the tested minimum, the
#: newest tested major version). The minimums are Colab's GPU runtime (``constraints/colab.txt``, installed and tested
#: by the second environment of ``.ci/run``); the newest releases are tested by the main environment.
TESTED_VERSIONS: dict[str, tuple[str, int]] = {
    "transformers": ("5.15.0", 5),
    "peft": ("0.20.0", 0),
    "datasets": ("4.0.0", 5),
    "accelerate": ("1.14.0", 1),
    "tokenizers": ("0.22.2", 0),
    "huggingface_hub": ("1.27.0", 2),
}


def version_warnings(installed: dict[str, str] | None = None) -> list[str]:
    """One line per package installed below its tested minimum or above its newest tested major version
    (:data:`TESTED_VERSIONS`); ``installed`` maps names to versions (default: what is installed). Printed by
    :func:`versions` in ``notebooks/02_florence2_docvqa.ipynb``, section "Setup" (and in every notebook's)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    warnings_: list[str] = []
    for name, (minimum, newest_major) in TESTED_VERSIONS.items():
        if installed is not None:
            found = installed.get(name)
        else:
            try:
                found = version(name)
            except PackageNotFoundError:
                found = None
        if found is None:
            continue
        if Version(found) < Version(minimum):
            warnings_.append(f"{name} {found} is older than the series' tested minimum {minimum}")
        elif Version(found).major > newest_major:
            warnings_.append(f"{name} {found} is a newer major version than the series was tested with "
                             f"({newest_major}.x)")
    return warnings_


def versions() -> str:
    """Python and library versions, one line, for the first cell of every notebook; a second line warns when a
    package is outside the tested range (:func:`version_warnings`): upgrade it (or, for a newer major version,
    expect changes the series has not been tested with).

    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "Setup" (and in every notebook's).
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "vlm_helpers"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    line = ", ".join(parts)
    warnings_ = version_warnings()
    if warnings_:
        line += "\nwarning: " + "; ".join(warnings_) + " (README, section \"Tested versions\")"
    return line
