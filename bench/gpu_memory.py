"""Simulated peak GPU memory of every notebook under the T4 and A100 presets, and run times estimated from
counted FLOPs. No GPU is used: every figure this prints is a simulation or an estimate, and says so.

    python bench/gpu_memory.py                          # every notebook, presets t4 and a100 (markdown table)
    python bench/gpu_memory.py --notebook 06 --preset t4 --case qwen2-vl
    python bench/gpu_memory.py --notebook 06 --case qwen2-vl --no-image-budget  # what a page cost before the budget
    python bench/gpu_memory.py --notebook 06 --preset a100 --case qwen2-vl --max-pixels 3010560  # another budget
    python bench/gpu_memory.py --check-tracker          # the tracker on real tensors vs fake tensors, same peak

What is simulated, and how:

- **The models** are the real checkpoints' architectures at real widths and real layer counts, built from the
  vendored ``config.json`` files (``vlm_helpers/tiny/real_configs/``; where a published file could not be found,
  the reconstruction there, as the tiny twins use it: SmolVLM's configuration, some processor files) on the
  meta device, then given fake tensors (``torch._subclasses.FakeTensorMode``): shapes and dtypes, no memory, no
  values, no random initialisation.
  Integer inputs (token ids, masks, image grids) and pixel values stay real, so the models' data-dependent
  steps (where the image tokens are, Qwen2-VL's rotary positions) run as they do on a GPU.
- **CUDA is stood in for by the CPU device.** Autograd on fake CUDA tensors aborts in a CPU build of PyTorch,
  so the tensors are fake *CPU* tensors run with the preset's CUDA settings: ``torch.autocast("cpu", float16
  or bfloat16)`` stands for CUDA autocast (CPU's autocast lists differ in places: CUDA also runs layer norm and
  softmax in fp32), and SDPA takes PyTorch's CPU flash kernel, which keeps what CUDA's flash and
  memory-efficient kernels keep (output and log-sum-exp, no attention matrix); the A100 preset's
  FlashAttention-2 is simulated by the same kernel (same memory order). Every tensor's size is rounded up to
  512 bytes, the CUDA caching allocator's block. The peak is the *allocated* peak
  (``torch.cuda.max_memory_allocated``): the CUDA context (about 0.3-0.5 GB), the allocator's reserve and
  fragmentation, and library workspaces come on top; that is why a T4 (15.0 GiB usable) must fit 14.5 GiB here.
- **4-bit weights** (QLoRA, and inference in 4 bits): bitsandbytes cannot run on fake tensors, so each
  ``nn.Linear`` that transformers' bitsandbytes integration would quantize (all but the output layer and the
  model's ``_keep_in_fp32_modules``) is replaced by a stand-in counted by size: NF4 weights at 0.5 byte per
  parameter plus the double-quantized constants (one byte per 64 weights, fp32 per 256 blocks). Its forward
  and backward allocate what bitsandbytes' ``matmul_4bit`` allocates: a dequantized weight in the compute
  dtype, freed after each matmul (the input-gradient matmul of the backward dequantizes again), and nothing
  saved but the quantized weight. PEFT adapts the stand-ins as ordinary ``nn.Linear`` layers.
- **The inputs** come from the real processors (the vendored ``preprocessor_config.json`` and
  ``processor_config.json``, with the image budget of the model choice where notebook 06 applies one) on
  real-sized images: 1700x2200 scanned pages for the DocVQA notebooks (02, 03, 06's qa) and 1600x1067 photos
  for notebook 04's aircraft, batched by the package's own collators. The text goes through the tiny twins'
  tokenizers (the real ones are not vendored), with the special tokens mapped to the ids the real
  configuration names: questions and answers are a few dozen tokens next to hundreds or thousands of image
  tokens.
- **The training step** uses the package's own calls: :func:`vlm_helpers.lora.add_lora` (PEFT LoRA, 4-bit
  preparation, gradient checkpointing, the frozen vision tower outside autograd), ``freezing.freeze`` and
  ``loop.token_loss_sum`` for notebook 02. One forward and backward of one real-sized micro-batch at the
  preset's batch size and autocast dtype, gradient clipping, and the optimizer step: torch's AdamW
  (``foreach``, as on CUDA; fp32 moments) for notebook 02's loop; for the Hugging Face Trainer's
  ``paged_adamw_8bit`` the 8-bit moments are allocated by size (bitsandbytes' optimizer does not run on fake
  tensors; its in-place update is not simulated). The optimizer state exists before the step (a run's steady
  state), and so do the gradients when the preset accumulates over several micro-batches.
- **Generation** (notebook 01, and each training notebook's evaluation): the prefill of one evaluation batch
  (the notebook's batch, repeated ``num_beams`` times: an upper bound for Florence-2, whose encoder runs once
  per row) with its key/value cache, under ``torch.no_grad``; the decoding steps add only to the cache.
- **Time** is estimated, not measured: FLOPs are counted with ``torch.utils.flop_counter``'s formulas (matmuls,
  convolutions, attention; applied by the memory tracker itself, because ``FlopCounterMode``'s module hooks keep
  the activations that gradient checkpointing frees) for one micro-batch, and multiplied out by the notebook's
  parameters cell (training rows, epochs or steps, evaluation rows, beams, new tokens), at :data:`UTILISATION`
  of the GPU's peak (T4: 65 TFLOPS fp16 tensor cores; A100: 312 TFLOPS bf16). A decoding step takes the longer
  of one read of the weights at :data:`BANDWIDTH_UTILISATION` of the memory bandwidth (T4 320 GB/s, A100
  1,555 GB/s) and its kernels at :data:`KERNEL_SECONDS` each plus :data:`STEP_SECONDS` (small models decode
  launch-bound). 4-bit dequantization, data loading, checkpoint writing, downloads and model loading are not
  counted.
- **One yes/no question** about fake values is answered without looking: BART's fp16 overflow guard
  (``torch.isfinite(hidden_states).all()``, Florence-2 in 16 bits) is told "all finite", as in a healthy run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import re
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

ROOT = Path(__file__).resolve().parent.parent
GIB = 2 ** 30
T4_LIMIT_GIB = 14.5  # a T4 shows 15.0 GiB; the CUDA context and the allocator's reserve need the rest
A100_LIMIT_GIB = 39.0  # an A100 40 GB
UTILISATION = 0.30  # of the GPU's peak FLOPS, for training and prefill (stated in every time figure)
BANDWIDTH_UTILISATION = 0.6  # of the memory bandwidth, for decoding (one read of the weights per token)
KERNEL_SECONDS = 30e-6  # per kernel of a decoding step (launch and Python dispatch): small models decode launch-bound
STEP_SECONDS = 5e-3  # per decoding step of generate(): logits processors, stopping criteria, a host sync
ALLOCATOR_BLOCK = 512  # bytes: the CUDA caching allocator rounds every allocation up to this


@dataclass(frozen=True)
class GPU:
    """The card a preset stands for: its peak tensor-core FLOPS in 16-bit and in fp32, and its bandwidth."""

    name: str
    peak_flops: float
    bandwidth: float  # bytes/s
    limit_gib: float
    fp32_flops: float = 0.0  # no tensor cores for fp32 on a T4; TF32 off (PyTorch's default for matmuls)

    def flops(self, dtype: str) -> float:
        """Peak FLOPS when computing in ``dtype`` (a preset's: "float16", "bfloat16" or "float32")."""
        return self.fp32_flops if dtype == "float32" else self.peak_flops


GPUS = {"t4": GPU("T4 16 GB", 65e12, 320e9, T4_LIMIT_GIB, fp32_flops=8.1e12),
        "a100": GPU("A100 40 GB", 312e12, 1555e9, A100_LIMIT_GIB, fp32_flops=19.5e12)}
PROFILES = {  # the hardware runtime.choose_preset sees on each card
    "t4": dict(device="cuda", gpu_name="Tesla T4", compute_capability=(7, 5), gpu_memory_gb=15.0),
    "a100": dict(device="cuda", gpu_name="NVIDIA A100-SXM4-40GB", compute_capability=(8, 0), gpu_memory_gb=39.4),
}


# ------------------------------------------------------------------------------------------ the tracker

class LiveMemory(TorchDispatchMode):
    """Counts the bytes of every live tensor storage created by an op (real or fake), and the peak.

    Each storage is counted once (views share it), rounded up to :data:`ALLOCATOR_BLOCK` bytes, from the op
    that creates it until it is freed (a weak-reference finalizer on the storage). Storages belong to one of
    three kinds: ``weights`` (parameters and buffers), ``trainable state`` (gradients and optimizer moments) and
    ``activations`` (everything else: inputs, saved activations, temporaries, autocast copies, the KV cache).
    ``peak_split`` is the split at the moment of the peak.
    """

    KINDS = ("weights", "trainable state", "activations")

    def __init__(self, granularity: int = ALLOCATOR_BLOCK):
        super().__init__()
        self.granularity = granularity
        self.entries = WeakIdKeyDictionary()
        self.current = Counter()
        self.peak = 0
        self.peak_split: dict[str, int] = {}
        self.ops = Counter()
        self.flops = 0  # FLOPs of the ops counted while ``count_flops`` is on (FlopCounterMode's formulas)
        self.count_flops = False
        self.assumed = 0  # data-dependent yes/no questions about fake tensors, answered "yes"
        self.allocations = 0  # ops that created a new storage: about one GPU kernel each

    def _size(self, storage) -> int:
        nbytes = storage.nbytes()
        return -(-nbytes // self.granularity) * self.granularity

    def track(self, tensor, kind: str | None = None) -> None:
        """Count ``tensor``'s storage (as ``kind``, default activations); a known storage may change kind."""
        if not isinstance(tensor, torch.Tensor):
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a sparse one)
            return
        entry = self.entries.get(storage)
        if entry is None:
            entry = [self._size(storage), kind or "activations"]
            self.entries[storage] = entry
            self.allocations += 1
            weakref.finalize(storage, self._free, entry)
            self.current[entry[1]] += entry[0]
            total = sum(self.current.values())
            if total > self.peak:
                self.peak, self.peak_split = total, dict(self.current)
        elif kind is not None and entry[1] != kind:
            self.current[entry[1]] -= entry[0]
            entry[1] = kind
            self.current[kind] += entry[0]

    def _free(self, entry) -> None:
        self.current[entry[1]] -= entry[0]

    def reset_peak(self) -> None:
        """Start a new peak from what is live now."""
        self.peak, self.peak_split = sum(self.current.values()), dict(self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and _is_fake(args[0]) and args[0].dtype == torch.bool:
            # a yes/no question about fake values: only BART's fp16 overflow guard asks one
            # (``not torch.isfinite(hidden_states).all()``); the answer is "all finite", as in a healthy run
            self.assumed += 1
            return True
        out = func(*args, **kwargs)
        self.ops[func.__name__] += 1
        tree_map_only(torch.Tensor, self.track, out)
        if self.count_flops:
            # FlopCounterMode's formulas, applied here: FlopCounterMode itself tracks modules with hooks that keep
            # the activations gradient checkpointing would free, so it cannot run while memory is measured
            from torch.utils.flop_counter import flop_registry

            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
        return out


# ------------------------------------------------------------------------------------ fake models

class FourBitLinear(nn.Linear):
    """Simulated: a bitsandbytes ``Linear4bit`` (NF4, double quantization) counted by size.

    Holds the packed weight (uint8, two NF4 values per byte, shaped as bitsandbytes' ``Params4bit``), the
    double-quantized block constants and the bias; computes in ``compute_dtype`` through
    :class:`_MatMul4bit`, which allocates what ``bnb.matmul_4bit`` allocates.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        count = self.in_features * self.out_features
        self.weight = nn.Parameter(torch.empty((count + 1) // 2, 1, dtype=torch.uint8, device=linear.weight.device),
                                   requires_grad=False)
        blocks = math.ceil(count / 64)  # NF4 block size 64: one absmax per block, quantized to 8 bits ...
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=linear.weight.device))
        # ... with fp32 constants per 256 blocks (double quantization)
        self.register_buffer("absmax2", torch.empty(math.ceil(blocks / 256), dtype=torch.float32,
                                                    device=linear.weight.device))
        self.bias = linear.bias
        self.compute_dtype = compute_dtype

    def forward(self, x):
        input_dtype = x.dtype
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = _MatMul4bit.apply(x.to(self.compute_dtype), self.weight, bias, self.out_features, self.in_features)
        return out.to(input_dtype)


class _MatMul4bit(torch.autograd.Function):
    """Simulated ``bnb.matmul_4bit``: dequantize (a compute-dtype weight), matmul, free; the backward
    dequantizes again for the input gradient; only the quantized weight is saved."""

    @staticmethod
    def forward(ctx, x, packed, bias, out_features, in_features):
        weight = x.new_empty(out_features, in_features)  # dequantize_4bit -> compute dtype
        out = nn.functional.linear(x, weight, bias)
        del weight
        ctx.save_for_backward(packed)
        ctx.shape = (out_features, in_features)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = grad_out.new_empty(*ctx.shape)
            grad_x = grad_out @ weight
            del weight
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, grad_bias, None, None


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _is_fake(tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def fake_parameters(model: nn.Module, mode) -> nn.Module:
    """Replace every parameter and buffer that is not fake by a fake one of the same shape and dtype
    (tied parameters stay tied); no memory is allocated and nothing is initialised."""
    memo: dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for table, parameter in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in list(table.items()):
                    if tensor is None or _is_fake(tensor):
                        continue
                    if id(tensor) not in memo:
                        empty = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                        memo[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if parameter else empty
                    table[name] = memo[id(tensor)]
    return model


def quantize_linears(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace the ``nn.Linear`` layers transformers' bitsandbytes integration quantizes by
    :class:`FourBitLinear` stand-ins; return how many."""
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep = list(get_keys_to_not_convert(model)) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and should_convert_module(name, keep):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child,
                    FourBitLinear(module, compute_dtype))
            replaced += 1
    model.is_loaded_in_4bit = True
    return replaced


def fake_model(model_id: str, *, dtype: torch.dtype, quantize_4bit: bool, mode) -> nn.Module:
    """The real architecture of ``model_id`` with fake weights: meta device, then fake tensors.

    16-bit or fp32 weights in ``dtype`` (as ``from_pretrained(dtype=...)`` loads them); with ``quantize_4bit``
    the linear layers become :class:`FourBitLinear` stand-ins and the rest stays in ``dtype`` (the compute
    dtype), as bitsandbytes loads a model. Attention: ``sdpa`` wherever the class supports it (see the module
    docstring), else what ``runtime.attention_by_part`` gives it (Gemma 2, PaliGemma 2's language model: ``eager``,
    its attention matrices counted).
    """
    from vlm_helpers.runtime import attention_by_part
    from vlm_helpers.tiny.real import build_config, model_class, real_json

    config_dict = real_json(model_id, "config.json", reconstructed=True)
    config = build_config(config_dict)
    with torch.device("meta"):
        model = model_class(config_dict)._from_config(config, attn_implementation=attention_by_part(config, "sdpa"),
                                                      dtype=dtype)
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if keep_fp32:  # from_pretrained keeps these in fp32 whatever the dtype
        for name, module in model.named_modules():
            if any(re.search(rf"(^|\.){re.escape(k)}(\.|$)", name) for k in keep_fp32):
                module.to(torch.float32)
    if quantize_4bit:
        with torch.device("meta"):
            quantize_linears(model, dtype)
    return fake_parameters(model, mode)


# --------------------------------------------------------------------------- real processors, real images

def docvqa_rows(count: int) -> list[dict]:
    """DocVQA-like rows on a 1700x2200 scanned page (a letter page at 200 dpi)."""
    from PIL import Image

    from vlm_helpers.processors import PAGE_SIZE

    page = Image.new("RGB", PAGE_SIZE, "white")
    return [{"id": f"page-{i}", "questionId": i, "question": "What is the total amount due on this invoice?",
             "answers": ["$1,234.56"], "image": page} for i in range(count)]


def aircraft_rows(count: int) -> list[dict]:
    """Notebook 04's rows (its prompt, a caption of tags) on a 1600x1067 photo, FGVC-Aircraft's size."""
    from PIL import Image

    from vlm_helpers.data.aircraft import with_captions
    from vlm_helpers.tiny.synthetic_aircraft import make_synthetic_fgvc

    rows = with_captions(make_synthetic_fgvc(count, seed=0))
    photo = Image.new("RGB", (1600, 1067), (120, 160, 220))
    return [{"id": f"plane-{i}", "prompt": row["prompt"], "caption": row["caption"], "image": photo}
            for i, row in enumerate(rows.remove_columns("image"))]


def _token_ids(config: dict, found: dict | None = None, prefix: str = "") -> dict[str, int]:
    found = {} if found is None else found
    for key, value in config.items():
        if isinstance(value, dict):
            _token_ids(value, found, f"{prefix}{key}.")
        elif key.endswith(("token_id", "token_index")) and isinstance(value, int):
            found[prefix + key] = value
    return found


@dataclass
class RealProcessor:
    """A processor with the real image settings and a tiny twin's tokenizer, and the id map to the real ids."""

    processor: Any
    id_map: dict[int, int]
    folder: Path

    def real_ids(self, batch: dict) -> dict:
        """``batch`` with every special token id the configuration names mapped to the real checkpoint's."""
        out = dict(batch)
        for key in ("input_ids", "labels"):
            if key in out:
                ids = out[key].clone()
                for tiny, real in self.id_map.items():
                    ids[out[key] == tiny] = real
                out[key] = ids
        return out


def real_processor(model_id: str, tiny_name: str, *, cache_dir: Path | None, **load_kwargs) -> RealProcessor:
    """The processor of ``model_id`` with its published image settings, through ``lora.load_chat_processor``
    (the notebooks' loader) and ``load_kwargs`` (image budget, splitting): the tiny twin's tokenizer files
    next to the real ``config.json``, ``preprocessor_config.json`` and ``processor_config.json``."""
    from vlm_helpers import lora
    from vlm_helpers.tiny import tiny_checkpoint
    from vlm_helpers.tiny.real import real_json

    twin = Path(tiny_checkpoint(tiny_name, cache_dir))
    folder = Path(tempfile.mkdtemp(prefix=f"gpu-memory-{tiny_name}-"))
    for path in twin.iterdir():
        if path.is_file() and not path.name.endswith((".safetensors", ".bin")):
            shutil.copy(path, folder / path.name)
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        real = real_json(model_id, name, reconstructed=True)
        if real is None:
            (folder / name).unlink(missing_ok=True)
        else:
            (folder / name).write_text(json.dumps(real, indent=2))
    tiny_ids = _token_ids(json.loads((twin / "config.json").read_text()))
    real_ids = _token_ids(real_json(model_id, "config.json", reconstructed=True))
    id_map: dict[int, int] = {}
    for key, tiny in tiny_ids.items():
        if key in real_ids:
            id_map.setdefault(tiny, real_ids[key])
    processor = lora.load_chat_processor(folder, **load_kwargs)
    return RealProcessor(processor, id_map, folder)


# --------------------------------------------------------------------------------------- the cases

@dataclass
class Case:
    """One model of one notebook, trained or only generating, with the settings a preset gives it."""

    notebook: str
    name: str
    model_id: str
    tiny_name: str
    recipe: str  # runtime.BATCHING entry
    rows: Callable[[int], list[dict]]
    train: bool
    # preset name -> settings: method ("full", "lora", "qlora", "16-bit", "4-bit"), batch, accumulation,
    # eval batch, beams, processor kwargs, LoRA settings ...
    settings: Callable[[str], dict]
    collator: Callable[[Any, dict], Any]
    loop: str = "trainer"  # "explicit" (notebook 02's loop) or "trainer" (the HF Trainer)


def notebook_parameters(number: str) -> dict[str, Any]:
    """The literal values of a notebook's parameters cell (full mode: the ``if TINY:`` block is skipped)."""
    path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    cells = json.loads(path.read_text())["cells"]
    source = next("".join(cell["source"]) for cell in cells
                  if cell["cell_type"] == "code" and "TINY = runtime.is_tiny()" in "".join(cell["source"]))
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                values[target.id] = value
            elif isinstance(target, ast.Tuple):
                values.update({t.id: v for t, v in zip(target.elts, value) if isinstance(t, ast.Name)})
    return values


def preset_for(recipe: str, preset_name: str):
    """The preset ``runtime.choose_preset`` picks for ``recipe`` on the card ``preset_name`` stands for."""
    from vlm_helpers import runtime

    profile = runtime.HardwareProfile(**PROFILES[preset_name], on_colab=True, flash_attn_installed=True)
    return runtime.choose_preset(profile, recipe)


def _chat_collator(question_key="question", answer_key="answers", instruction="Answer briefly."):
    from vlm_helpers.chat_collator import ChatVLMCollator

    return lambda processor, settings: ChatVLMCollator(processor, instruction=instruction, question_key=question_key,
                                                       answer_key=answer_key, id_key="id")


def _florence2_collator(processor, settings):
    from vlm_helpers.florence2 import Florence2Collator

    return Florence2Collator(processor)


def build_cases(image_budget: bool = True, max_pixels: int | None = None) -> list[Case]:
    """Every notebook's models with the settings its cells give them (read from the package and the
    notebooks' parameters cells, not copied)."""
    from vlm_helpers import llava_phi3, lora, lora_targets, model_choices
    from vlm_helpers.data.docvqa import CHAT_INSTRUCTION
    from vlm_helpers.florence2 import FLORENCE2_MODEL_ID

    cases: list[Case] = []
    # 01: zero-shot, each model in its recipe's preset: Florence-2 in the preset dtype, batch 8 (cell
    # "Florence-2 on DocVQA"), Idefics2 in 4 bits, batch 4, LLaVA-Phi-3 4-bit on a T4, batch 4
    p01 = notebook_parameters("01")
    cases.append(Case("01", "florence2", FLORENCE2_MODEL_ID, "florence2", "florence2-docvqa", docvqa_rows, False,
                      lambda preset: dict(method="16-bit", eval_batch=8, beams=1, new_tokens=p01["MAX_NEW_TOKENS"],
                                          eval_rows=3 * p01["DOCVQA_SAMPLES"]), _florence2_collator))
    cases.append(Case("01", "idefics2", lora.IDEFICS2_MODEL_ID, "idefics2", "idefics2-qlora-docvqa", docvqa_rows,
                      False, lambda preset: dict(method="4-bit", eval_batch=4, beams=1, new_tokens=p01["MAX_NEW_TOKENS"],
                                                 eval_rows=p01["DOCVQA_SAMPLES"],
                                                 processor=dict(do_image_splitting=lora.default_image_splitting(preset))),
                      _chat_collator(instruction=CHAT_INSTRUCTION)))
    cases.append(Case("01", "llava-phi3", llava_phi3.LLAVA_PHI3_MODEL_ID, "llava-phi3", "phi3-aircraft", aircraft_rows,
                      False, lambda preset: dict(method="4-bit" if llava_phi3.default_4bit(preset) else "16-bit",
                                                 eval_batch=4, beams=1, new_tokens=p01["MAX_NEW_TOKENS"],
                                                 eval_rows=p01["AIRCRAFT_SAMPLES"]),
                      _chat_collator("prompt", "caption", "")))
    # 02: Florence-2-base-ft, full fine-tuning, vision tower frozen, fp32 weights + autocast, the explicit loop
    p02 = notebook_parameters("02")
    cases.append(Case("02", "florence2", FLORENCE2_MODEL_ID, "florence2", "florence2-docvqa", docvqa_rows, True,
                      lambda preset: dict(method="full", beams=p02["NUM_BEAMS"], new_tokens=p02["MAX_NEW_TOKENS"],
                                          train_rows=p02["TRAIN_SAMPLES"] * p02["EPOCHS"],
                                          eval_rows=2 * p02["EVAL_SAMPLES"]),
                      _florence2_collator, loop="explicit"))
    # 03: Idefics2-8b QLoRA (the notebook's image settings per preset)
    p03 = notebook_parameters("03")
    cases.append(Case("03", "idefics2", lora.IDEFICS2_MODEL_ID, "idefics2", "idefics2-qlora-docvqa", docvqa_rows, True,
                      lambda preset: dict(
                          method="qlora", lora=dict(target_modules=lora_targets.IDEFICS2_LORA_TARGETS, r=p03["LORA_R"],
                                                    alpha=p03["LORA_ALPHA"], dropout=p03["LORA_DROPOUT"],
                                                    init_lora_weights="gaussian"),
                          processor=dict(do_image_splitting=lora.default_image_splitting(preset),
                                         image_longest_edge=p03["IMAGE_LONGEST_EDGE"].get(preset)),
                          beams=p03["NUM_BEAMS"], new_tokens=p03["MAX_NEW_TOKENS"], optimizer_steps=p03["MAX_STEPS"],
                          # before, after, and on blank pages: the article's 200 questions each (EVAL_SAMPLES None)
                          eval_rows=3 * (p03["EVAL_SAMPLES"] or 200)),
                      _chat_collator(instruction=CHAT_INSTRUCTION)))
    # 04: LLaVA-Phi-3, LoRA (4-bit on a T4), aircraft photos
    p04 = notebook_parameters("04")
    from vlm_helpers.data.aircraft import ARTICLE_SPLIT_SIZES as photos  # the article's 108/28/16 photos
    cases.append(Case("04", "llava-phi3", llava_phi3.LLAVA_PHI3_MODEL_ID, "llava-phi3", "phi3-aircraft", aircraft_rows,
                      True, lambda preset: dict(
                          method="qlora" if llava_phi3.default_4bit(preset) else "lora",
                          lora=dict(target_modules=llava_phi3.LLAVA_PHI3_LORA_TARGETS, r=p04["LORA_R"],
                                    alpha=p04["LORA_ALPHA"], dropout=p04["LORA_DROPOUT"]),
                          beams=p04["NUM_BEAMS"], new_tokens=p04["MAX_NEW_TOKENS"],
                          train_rows=photos["train"] * p04["EPOCHS"],  # validation every EVAL_EVERY steps, test twice
                          eval_rows=None, eval_every=p04["EVAL_EVERY"], validation_rows=photos["validation"],
                          test_rows=2 * photos["test"]),
                      _chat_collator("prompt", "caption", "")))
    # 06: every model choice, with its method, batches and image budget per preset
    p06 = notebook_parameters("06")
    for key, choice in model_choices.MODEL_CHOICES.items():
        def settings(preset, choice=choice):
            budget = choice.image_budget(preset) if image_budget else {}
            if max_pixels is not None and "max_pixels" in budget:  # --max-pixels: try another pixel budget
                budget = {**budget, "max_pixels": max_pixels}
            return dict(method=choice.method(preset), batch_from_choice=True,
                        lora=dict(target_modules=choice.lora_targets, r=p06["LORA_R"], alpha=p06["LORA_ALPHA"],
                                  dropout=p06["LORA_DROPOUT"]),
                        processor=dict(image_budget=budget), budget=budget, beams=p06["NUM_BEAMS"],
                        new_tokens=p06["MAX_NEW_TOKENS"], train_rows=1000, eval_rows=None)

        def collator(processor, settings, choice=choice):
            return choice.collator(processor, task="qa", instruction=p06["INSTRUCTION"], seed=0)

        cases.append(Case("06", key, choice.model_id, choice.tiny_name, choice.recipe, docvqa_rows, True, settings,
                          collator))
    return cases


# --------------------------------------------------------------------------------------- simulation

@dataclass
class Result:
    """What one simulation measured (memory: simulated; FLOPs: counted; time: estimated)."""

    notebook: str
    case: str
    preset: str
    work: str  # "train" or "generate"
    settings: str
    weights: int = 0
    trainable_state: int = 0
    activations: int = 0
    peak: int = 0
    flops: float = 0.0  # per micro-batch (train: forward + backward; generate: the prefill)
    weight_bytes: int = 0
    image_tokens: int = 0  # per image
    sequence: int = 0  # tokens per row (the longest in the batch)
    attention: str = ""
    decode_ops: int = 0  # operations dispatched by one decoding step (generate)
    assumed: int = 0  # data-dependent yes/no checks answered "yes" (see LiveMemory)
    seconds: float = 0.0  # wall time of the simulation itself


def _register_cpu_flash_flops() -> None:
    """FlopCounterMode counts CUDA's attention kernels; give it CPU flash attention's (same formulas)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    forward, backward = aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward not in flop_counter.flop_registry and forward.default not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(forward, get_raw=True)
        def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)

        @flop_counter.register_flop_formula(backward, get_raw=True)
        def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


@contextlib.contextmanager
def _counting_flops(tracker: LiveMemory):
    tracker.count_flops = True
    try:
        yield tracker
    finally:
        tracker.count_flops = False


@contextlib.contextmanager
def _quiet():
    """Without the library warnings a simulation provokes (deprecations, checkpointing notes); restored after."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        transformers.utils.logging.set_verbosity_error()
        try:
            yield
        finally:
            transformers.utils.logging.set_verbosity(verbosity)


def _enable_checkpointing(model) -> None:
    """Gradient checkpointing as :func:`vlm_helpers.lora.add_lora` turns it on (non-reentrant)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _adamw_8bit_state(parameter: torch.Tensor) -> list[torch.Tensor]:
    """Simulated: bitsandbytes' 8-bit AdamW state of one parameter (two uint8 moments with fp32 block
    constants per 256 values; fp32 moments for tensors under 4,096 values, as bitsandbytes does)."""
    if parameter.numel() < 4096:
        return [torch.zeros_like(parameter, dtype=torch.float32) for _ in range(2)]
    blocks = math.ceil(parameter.numel() / 256)
    return ([torch.zeros_like(parameter, dtype=torch.uint8) for _ in range(2)]
            + [parameter.new_zeros(blocks, dtype=torch.float32) for _ in range(2)])


def simulate(case: Case, preset_name: str, *, cache_dir: Path | None = None, generate: bool = False) -> Result:
    """Simulate one training step of ``case`` under the preset, or (``generate``, or an inference-only case)
    the prefill and one decoding step of an evaluation batch."""
    with _quiet():
        return _simulate(case, preset_name, cache_dir=cache_dir, generate=generate)


def _simulate(case: Case, preset_name: str, *, cache_dir: Path | None, generate: bool) -> Result:
    from vlm_helpers import freezing, lora, loop
    from vlm_helpers.processors import image_tokens

    _register_cpu_flash_flops()
    started = time.perf_counter()
    preset = preset_for(case.recipe, preset_name)
    settings = case.settings(preset_name)
    method = settings["method"]
    work = "train" if case.train and not generate else "generate"
    dtype = getattr(torch, preset.dtype)
    batch_size, accumulation = preset.batch_size, preset.grad_accum
    eval_batch = settings.get("eval_batch", 2 * preset.batch_size)  # the notebooks evaluate at twice the batch
    beams = settings.get("beams", 1)
    rows_in_batch = batch_size if work == "train" else eval_batch * beams

    real = real_processor(case.model_id, case.tiny_name, cache_dir=cache_dir, **settings.get("processor", {}))
    processor = real.processor
    per_image = image_tokens(processor)  # on a 1700x2200 page (the DocVQA notebooks) ...
    if case.rows is aircraft_rows:  # ... or on the aircraft photo
        per_image = image_tokens(processor, (1600, 1067))
    collator = case.collator(processor, settings)
    rows = case.rows(rows_in_batch)
    batch = real.real_ids(collator(rows) if work == "train" else collator.generation_inputs(rows))
    shutil.rmtree(real.folder, ignore_errors=True)

    mode = _fake_mode()
    quantized = method in ("qlora", "4-bit")
    weight_dtype = torch.float32 if method == "full" else dtype  # notebook 02 trains fp32 weights under autocast
    model = fake_model(case.model_id, dtype=weight_dtype, quantize_4bit=quantized, mode=mode)
    if "pixel_values" in batch and batch["pixel_values"].is_floating_point() and work == "generate":
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)  # as evaluation.generate_predictions does
    checkpointing = preset.gradient_checkpointing
    if work == "train" and method == "full":  # notebook 02: freeze the tower, train the rest in fp32
        from vlm_helpers.florence2 import florence2_vision_modules

        freezing.freeze(*florence2_vision_modules(model))
        if checkpointing:
            _enable_checkpointing(model)
        model.train()
        freezing.frozen_to_eval(model)
    elif work == "train":
        spec = settings["lora"]
        model = lora.add_lora(model, target_modules=spec["target_modules"], r=spec["r"], alpha=spec["alpha"],
                              dropout=spec["dropout"], quantized=quantized, gradient_checkpointing=checkpointing,
                              init_lora_weights=spec.get("init_lora_weights", True))
        model.train()
    else:
        model.eval()
    fake_parameters(model, mode)  # adapters PEFT created (and fp32 copies) become fake too
    trainable = [p for p in model.parameters() if p.requires_grad]

    decode_ops = 0
    tracker = LiveMemory()
    flops = _counting_flops(tracker)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with tracker:
        for parameter in model.parameters():
            tracker.track(parameter, "weights")
        for buffer in model.buffers():
            tracker.track(buffer, "weights")
        weight_bytes = tracker.current["weights"]
        for value in batch.values():
            tracker.track(value, "activations")
        if work == "train":
            optimizer = None
            if case.loop == "explicit":  # notebook 02: torch AdamW, foreach as on CUDA; its state exists already
                optimizer = torch.optim.AdamW(trainable, lr=1e-6, foreach=True)
                for parameter in trainable:
                    parameter.grad = torch.zeros_like(parameter)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for state in optimizer.state.values():
                    for value in state.values():
                        tracker.track(value, "trainable state")
            else:  # the HF Trainer's paged_adamw_8bit, by size
                states = [state for parameter in trainable for state in _adamw_8bit_state(parameter)]
                for state in states:
                    tracker.track(state, "trainable state")
            if accumulation > 1:  # the gradients of the window's earlier micro-batches are there already
                for parameter in trainable:
                    parameter.grad = torch.zeros_like(parameter)
                    tracker.track(parameter.grad, "trainable state")
            for parameter in trainable:  # a gradient that lands is trainable state
                parameter.register_post_accumulate_grad_hook(lambda p: tracker.track(p.grad, "trainable state"))
            tracker.reset_peak()
            with flops:
                labels = batch.pop("labels")
                with autocast:
                    if case.loop == "explicit":  # loop.train: the model's logits, the token-summed loss
                        logits = model(**batch, labels=labels).logits
                        loss = loop.token_loss_sum(logits, labels) / max(1, loop.supervised_tokens(labels))
                    else:
                        loss = model(**batch, labels=labels).loss
                loss.backward()
                del loss
            torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
            if optimizer is not None:
                optimizer.step()
            optimizer = None
            model.zero_grad(set_to_none=True)
        else:
            tracker.reset_peak()
            rows_now = batch["input_ids"].shape[0]
            with torch.no_grad(), autocast:
                with flops:  # the prefill: the whole prompt, image included, into the key/value cache
                    if getattr(model.config, "is_encoder_decoder", False):  # Florence-2: encoder, first decoder step
                        from transformers.modeling_outputs import BaseModelOutput

                        from vlm_helpers.tiny.real import real_json

                        generation = real_json(case.model_id, "generation_config.json", reconstructed=True) or {}
                        token = torch.full((rows_now, 1), generation.get("decoder_start_token_id", 0))
                        out = model(**batch, decoder_input_ids=token, use_cache=True)
                        step = dict(encoder_outputs=BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state),
                                    decoder_input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                    else:
                        out = model(**batch, use_cache=True, logits_to_keep=1)
                        # the next step's inputs, made as generate() makes them
                        ids = torch.cat([batch["input_ids"], batch["input_ids"][:, -1:]], 1)
                        mask = torch.cat([batch["attention_mask"], torch.ones_like(batch["attention_mask"][:, :1])], 1)
                        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
                        step = model.prepare_inputs_for_generation(
                            ids, past_key_values=out.past_key_values, attention_mask=mask, use_cache=True,
                            cache_position=torch.tensor([ids.shape[1] - 1]), logits_to_keep=1,
                            is_first_iteration=False, **extra)
                    del out
                before = tracker.allocations
                out = model(**step)  # one decoding step: what each new token costs (kernels, cache)
                decode_ops = tracker.allocations - before
                del out, step
    attention = sorted(name.replace("_scaled_dot_product_", "sdpa:").replace(".default", "")
                       for name in tracker.ops if "scaled_dot_product" in name and "backward" not in name)
    sequence = int(batch["input_ids"].shape[1])
    describe = [method, f"batch {batch_size}x{accumulation}" if work == "train" else f"batch {eval_batch}"
                + (f"x{beams} beams" if beams > 1 else ""), f"{per_image:,} image tokens/image",
                f"{sequence:,} tokens/row"]
    if work == "train":
        describe.append("checkpointing " + ("on" if checkpointing else "off"))
    if settings.get("budget"):
        from vlm_helpers.processors import budget_text

        describe.append("budget " + budget_text(settings["budget"]))
    return Result(case.notebook, case.name, preset_name, work, ", ".join(describe),
                  weights=tracker.peak_split.get("weights", 0),
                  trainable_state=tracker.peak_split.get("trainable state", 0),
                  activations=tracker.peak_split.get("activations", 0), peak=tracker.peak,
                  flops=float(tracker.flops), weight_bytes=weight_bytes, image_tokens=per_image,
                  sequence=sequence, attention=", ".join(attention), decode_ops=decode_ops, assumed=tracker.assumed,
                  seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------------------- time estimates

@dataclass
class Estimate:
    """Estimated hours of one model's part of a notebook's full-mode run (from counted FLOPs)."""

    train: float | None  # training (notebook 06: per 1,000 training rows, one epoch)
    evaluate: float | None  # generation for scoring (None: the notebook's evaluation depends on your data)

    @property
    def total(self) -> float:
        return (self.train or 0.0) + (self.evaluate or 0.0)


def estimate(case: Case, preset_name: str, train: Result | None, generate: Result) -> Estimate:
    """The hours of ``case``'s share of the notebook's full-mode run: its training rows (or optimizer steps)
    and evaluation rows from the notebook's parameters cell, at the preset's batches."""
    preset = preset_for(case.recipe, preset_name)
    settings = case.settings(preset_name)
    gpu = GPUS[preset_name]
    train_hours = None
    if train is not None:
        rows = settings.get("train_rows")
        if settings.get("optimizer_steps"):
            rows = settings["optimizer_steps"] * preset.batch_size * preset.grad_accum
        train_hours = train.flops / preset.batch_size * rows / (gpu.flops(preset.dtype) * UTILISATION) / 3600
    eval_rows = settings.get("eval_rows")
    if eval_rows is None and settings.get("eval_every"):  # notebook 04: validation during training, test twice
        steps = settings["train_rows"] // (preset.batch_size * preset.grad_accum)
        eval_rows = steps // settings["eval_every"] * settings["validation_rows"] + settings["test_rows"]
    if eval_rows is None:
        return Estimate(train_hours, None)
    eval_batch = settings.get("eval_batch", 2 * preset.batch_size)
    batches = math.ceil(eval_rows / eval_batch)
    token = max(generate.weight_bytes / (gpu.bandwidth * BANDWIDTH_UTILISATION),
                generate.decode_ops * KERNEL_SECONDS + STEP_SECONDS)
    seconds = batches * (generate.flops / (gpu.flops(preset.dtype) * UTILISATION) + settings["new_tokens"] * token)
    return Estimate(train_hours, seconds / 3600)


# --------------------------------------------------------------------------------------- the report

def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def _hours(hours: float) -> str:
    minutes = hours * 60
    if hours >= 1:
        return f"{hours:.1f} h"
    if minutes >= 1.5:
        return f"{minutes:.0f} min"
    return "1 min" if minutes >= 0.5 else "< 1 min"


def fits(result: Result) -> bool:
    """Whether the simulated peak fits the preset's card (T4: 14.5 GiB; A100: 39 GiB)."""
    return result.peak / GIB <= GPUS[result.preset].limit_gib


def case_table(results: list[Result]) -> str:
    """Markdown: every model, preset and kind of work, with its simulated memory split."""
    lines = ["| notebook | model | preset | work | settings | weights | trainable state | activations | "
             "peak GiB (simulated) | fits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        fit = "yes" if fits(r) else f"**no** (> {GPUS[r.preset].limit_gib:g})"
        lines.append(f"| {r.notebook} | {r.case} | {r.preset} | {r.work} | {r.settings} | {_gib(r.weights)} | "
                     f"{_gib(r.trainable_state)} | {_gib(r.activations)} | {_gib(r.peak)} | {fit} |")
    return "\n".join(lines)


def notebook_summary(results: list[Result], estimates: dict[tuple[str, str, str], Estimate]) -> dict:
    """Per notebook and preset: the largest simulated peak and the estimated full-mode time."""
    summary: dict[tuple[str, str], dict] = {}
    for r in results:
        entry = summary.setdefault((r.notebook, r.preset), {"peak": 0, "fits": True, "hours": 0.0, "per_model": {}})
        entry["peak"] = max(entry["peak"], r.peak)
        entry["fits"] = entry["fits"] and fits(r)
    for (notebook, name, preset), value in estimates.items():
        entry = summary[(notebook, preset)]
        entry["hours"] += value.total
        entry["per_model"][name] = value
    return summary


def summary_table(summary: dict) -> str:
    """Markdown: per notebook and preset, the largest simulated peak and the estimated run time."""
    lines = ["| notebook | preset | peak GiB (simulated, largest step) | fits | full-mode run time "
             f"(estimated from counted FLOPs at {UTILISATION:.0%}) |", "|---|---|---|---|---|"]
    for (notebook, preset), entry in sorted(summary.items()):
        if notebook == "06":  # your data: training time per 1,000 rows, per model
            when = "; ".join(f"{name} {_hours(value.train)}" for name, value in entry["per_model"].items()) \
                + " per 1,000 training rows and epoch (evaluation not included)"
        else:
            when = _hours(entry["hours"]) + "".join(
                f" (training {_hours(v.train)}, evaluation {_hours(v.evaluate)})"
                for v in entry["per_model"].values() if v.train is not None)
        lines.append(f"| {notebook} | {preset} | {_gib(entry['peak'])} | {'yes' if entry['fits'] else '**no**'} | "
                     f"{when} |")
    return "\n".join(lines)


def run(notebooks: list[str] | None, presets: list[str], cases: list[str] | None, *, image_budget: bool = True,
        max_pixels: int | None = None, cache_dir: Path | None = None, log=print) -> tuple[list[Result], dict]:
    """Simulate the chosen cases under each preset; return the results and the time estimates."""
    results, estimates = [], {}
    for case in build_cases(image_budget, max_pixels):
        if (notebooks and case.notebook not in notebooks) or (cases and case.name not in cases):
            continue
        for preset_name in presets:
            train = simulate(case, preset_name, cache_dir=cache_dir) if case.train else None
            generate = simulate(case, preset_name, cache_dir=cache_dir, generate=True)
            for result in (train, generate):
                if result is not None:
                    results.append(result)
                    log(f"[simulated] {result.notebook} {result.case:10} {result.preset:4} {result.work:8} "
                        f"peak {result.peak / GIB:5.1f} GiB ({result.settings}; {result.seconds:.0f} s)")
            estimates[(case.notebook, case.name, preset_name)] = estimate(case, preset_name, train, generate)
    return results, estimates


# --------------------------------------------------------------------------------------- tracker check

def tracker_check(seed: int = 0) -> tuple[int, int]:
    """The same training step of a small transformer on real CPU tensors and on fake tensors: the two peaks
    :class:`LiveMemory` reports (they must be equal)."""
    def step(make_fake: bool) -> int:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Embedding(100, 64), nn.TransformerEncoderLayer(64, 4, 128, batch_first=True),
                              nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), nn.Linear(64, 100))
        model[0].requires_grad_(False)
        ids = torch.randint(0, 100, (4, 33))
        if make_fake:
            fake_parameters(model, _fake_mode())
        tracker = LiveMemory()
        with tracker:
            for parameter in model.parameters():
                tracker.track(parameter, "weights")
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=True)
            logits = model(ids)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 100), ids.reshape(-1))
            loss.backward()
            del loss, logits
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return tracker.peak

    return step(False), step(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="append", help="01, 02, 03, 04 or 06 (repeatable; default: all)")
    parser.add_argument("--preset", action="append", choices=sorted(GPUS), help="default: t4 and a100")
    parser.add_argument("--case", action="append", help="a model name within the notebook(s), e.g. qwen2-vl")
    parser.add_argument("--no-image-budget", action="store_true", help="notebook 06 without its image budgets")
    parser.add_argument("--max-pixels", type=int, help="notebook 06: this max_pixels instead of a budget's own "
                                                       "(choices whose budget has one: Qwen2-VL)")
    parser.add_argument("--check-tracker", action="store_true", help="only compare the tracker on real and fake tensors")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    from vlm_helpers import runtime

    runtime.quiet_libraries(progress_bars=False)
    if args.check_tracker:
        real, fake = tracker_check()
        print(f"tracker check: peak {real:,} bytes on real tensors, {fake:,} on fake tensors "
              f"({'equal' if real == fake else 'DIFFERENT'})")
        return 0 if real == fake else 1
    started = time.perf_counter()
    results, estimates = run(args.notebook, args.preset or ["t4", "a100"], args.case,
                             image_budget=not args.no_image_budget, max_pixels=args.max_pixels, log=lambda line: print(line, file=sys.stderr))
    print(f"GPU memory and run time per notebook and preset: peaks simulated by bench/gpu_memory.py (fake tensors, "
          f"no GPU; allocated memory, CUDA context not included; A100 = the 40 GB card); run times estimated from "
          f"counted FLOPs at {UTILISATION:.0%} of the GPU's peak (decoding: the larger of one read of the weights "
          f"at {BANDWIDTH_UTILISATION:.0%} of the memory bandwidth and {KERNEL_SECONDS * 1e6:.0f} us per kernel "
          f"+ {STEP_SECONDS * 1e3:.0f} ms per step; 4-bit dequantization, data loading, downloads and model "
          "loading not counted).\n")
    print(summary_table(notebook_summary(results, estimates)))
    print()
    print(case_table(results))
    over = [r for r in results if r.preset == "t4" and not fits(r)]
    print(f"\nT4 preset: {'every notebook fits' if not over else 'DOES NOT FIT: ' + ', '.join(f'{r.notebook} {r.case} {r.work}' for r in over)} "
          f"{T4_LIMIT_GIB} GiB (simulated). Whole run: {time.perf_counter() - started:.0f} s on this machine.")
    if args.json:
        args.json.write_text(json.dumps({"results": [r.__dict__ for r in results],
                                         "estimates": {" ".join(k): v.__dict__ for k, v in estimates.items()}},
                                        indent=1))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
