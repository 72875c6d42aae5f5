"""A stand-in for FlashAttention-2 that enforces the real kernel's input rules on a CPU (SIMULATED).

No GPU and no ``flash-attn`` package can be had here, yet the A100 preset asks for
``attn_implementation="flash_attention_2"`` whenever flash-attn is installed (Colab users often install
it). This module lets a CPU test take that path:

- :func:`simulated_flash_attention` (a context manager) makes ``from_pretrained(...,
  attn_implementation="flash_attention_2")`` accept the request without the package or a GPU (transformers'
  model-support check still runs: a model without FlashAttention-2 support is still refused), and registers
  :func:`standin_flash_attention` under the name ``"flash_attention_2"`` through transformers' attention
  interface (``AttentionInterface.register``), so every attention layer that transformers would hand to
  FlashAttention-2 calls the stand-in, with the masks transformers builds for FlashAttention-2 (a 2-D
  padding mask or none);
- :func:`standin_flash_attention` raises :class:`FlashAttentionRuleBroken` where the real kernel refuses
  its input, and otherwise computes the same attention with ``scaled_dot_product_attention``.

The rules enforced are those of flash-attn 2.x (``flash_attn_func`` / ``flash_attn_varlen_func``):

1. head dimension at most 256 ("FlashAttention forward only supports head dimension at most 256");
2. fp16 or bf16 only ("FlashAttention only support fp16 and bf16 data type"), after transformers' own
   cast: transformers' wrapper casts fp32 inputs to the autocast dtype, or else to the dtype of the
   layer's weights (``integrations.flash_attention.get_target_dtype``); fp32 weights outside autocast stay
   fp32 and are refused, as the real kernel refuses them;
3. query, key and value of one dtype, and query heads a multiple of key/value heads (grouped queries);
4. no additive or 4-D mask: FlashAttention-2 takes none. Padding must go through the varlen path (a 2-D
   padding mask, or ``cu_seq_lens_*``); a padded batch reaching the dense kernel with no mask is a silent
   error on a GPU (padding attended to), so here it raises: tests declare the batch's padding with
   :func:`padded_batch`.

What it cannot check: anything about CUDA itself (the device, memory, speed); numerics are sdpa's, not
FlashAttention's. Every result obtained with it is simulated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

FA2_MAX_HEAD_DIM = 256
FA2_DTYPES = (torch.float16, torch.bfloat16)

_state = threading.local()


class FlashAttentionRuleBroken(RuntimeError):
    """An input the real FlashAttention-2 kernel refuses (or, for padding, silently gets wrong)."""


def calls() -> list[dict]:
    """What the stand-in saw since :func:`simulated_flash_attention` started: one dict per call."""
    return getattr(_state, "calls", [])


@contextlib.contextmanager
def padded_batch(attention_mask: torch.Tensor | None) -> Iterator[None]:
    """Declare the 2-D padding mask of the batch about to run, so the stand-in can tell a padded batch that
    reaches the dense kernel without a mask (rule 4)."""
    previous = getattr(_state, "padding", None)
    _state.padding = attention_mask
    try:
        yield
    finally:
        _state.padding = previous


def _target_dtype(query: torch.Tensor, module) -> torch.dtype:
    """The dtype transformers' FlashAttention wrapper hands the kernel (``get_target_dtype``'s rule)."""
    if query.dtype != torch.float32:
        return query.dtype
    if torch.is_autocast_enabled(query.device.type):
        return torch.get_autocast_dtype(query.device.type)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "_is_quantized"):
        return config.dtype
    linear = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    return linear.weight.dtype if linear is not None else query.dtype


def _check(module, query, key, value, attention_mask) -> torch.dtype:
    where = type(module).__name__
    head_dim = query.shape[-1]
    if head_dim > FA2_MAX_HEAD_DIM:
        raise FlashAttentionRuleBroken(
            f"{where}: FlashAttention forward only supports head dimension at most {FA2_MAX_HEAD_DIM}, got "
            f"{head_dim} (query shape {tuple(query.shape)})")
    dtype = _target_dtype(query, module)
    if dtype not in FA2_DTYPES:
        raise FlashAttentionRuleBroken(f"{where}: FlashAttention only supports fp16 and bf16 data type, got {dtype}")
    if not (query.dtype == key.dtype == value.dtype):
        raise FlashAttentionRuleBroken(f"{where}: query, key and value must have one dtype, got "
                                       f"{query.dtype}, {key.dtype}, {value.dtype}")
    if query.shape[1] % key.shape[1]:
        raise FlashAttentionRuleBroken(f"{where}: {query.shape[1]} query heads are not a multiple of "
                                       f"{key.shape[1]} key/value heads")
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.dtype.is_floating_point):
        raise FlashAttentionRuleBroken(f"{where}: FlashAttention-2 takes no {attention_mask.dim()}-D "
                                       f"{attention_mask.dtype} mask, only a 2-D padding mask (varlen path)")
    return dtype


def _segments_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """Block-diagonal boolean mask of the packed sequences ``cu_seqlens`` describes."""
    segment = torch.zeros(length, dtype=torch.long)
    for index, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        segment[start:end] = index
    return segment[:, None] == segment[None, :]


def standin_flash_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0,
                            scaling: float | None = None, sliding_window: int | None = None,
                            softcap: float | None = None, is_causal: bool | None = None, **kwargs):
    """Transformers' attention-function signature (``query`` ``[batch, heads, q_len, head_dim]``); returns
    ``(output [batch, q_len, heads, head_dim], None)`` as transformers' FlashAttention wrapper does."""
    dtype = _check(module, query, key, value, attention_mask)
    if softcap is not None:
        raise NotImplementedError("the stand-in does not model FlashAttention's softcap")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    batch, _, q_len, _ = query.shape
    k_len = key.shape[2]
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    padding = getattr(_state, "padding", None)
    if (attention_mask is None and cu_seqlens is None and padding is not None and not bool(padding.all())
            and q_len == padding.shape[-1]):
        raise FlashAttentionRuleBroken(
            f"{type(module).__name__}: a padded batch reached FlashAttention-2's dense kernel without a padding "
            "mask or cu_seqlens: padding tokens would be attended to")
    calls().append({"module": type(module).__name__, "head_dim": query.shape[-1], "dtype": dtype,
                    "varlen": attention_mask is not None or cu_seqlens is not None, "q_len": q_len})
    q, k, v = (t.to(dtype) for t in (query, key, value))
    if k.shape[1] != q.shape[1]:  # grouped queries: FlashAttention-2 broadcasts key/value heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device)
    if is_causal and q_len > 1:  # bottom-right aligned, as flash-attn >= 2.1
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    if sliding_window is not None:
        positions = torch.arange(k_len, device=q.device)
        query_positions = positions[k_len - q_len:]
        allowed = allowed & (query_positions[:, None] - positions[None, :] < sliding_window)
    allowed = allowed.expand(batch, 1, q_len, k_len)
    if cu_seqlens is not None:  # packed sequences (varlen with cu_seqlens): no attention across them
        allowed = allowed & _segments_mask(cu_seqlens, k_len).to(q.device)
    if attention_mask is not None:  # varlen with a 2-D padding mask: padded keys are never attended to
        allowed = allowed & attention_mask[:, None, None, -k_len:].bool()
    # a padded query row that may attend to nothing: FlashAttention's varlen path leaves it out and pads
    # the output with zeros; give it one key so sdpa stays finite, then zero it below
    empty = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | empty
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout if module.training else 0.0,
                                         scale=scaling)
    if attention_mask is not None and q_len == k_len:
        out = out * attention_mask[:, None, -q_len:, None].to(out.dtype)
    out = out.masked_fill(empty, 0.0)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def simulated_flash_attention() -> Iterator[None]:
    """Within the block, ``attn_implementation="flash_attention_2"`` loads and runs on this CPU, every
    attention call that transformers hands to FlashAttention-2 going through :func:`standin_flash_attention`.
    Everything is put back afterwards."""
    import transformers.modeling_utils as modeling_utils
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX

    original_function = AttentionInterface._global_mapping["flash_attention_2"]
    original_dispatch = PreTrainedModel._flash_attn_can_dispatch
    original_import = modeling_utils.lazy_import_flash_attention
    fa2 = FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    original_available = fa2["general_availability_check"]

    def can_dispatch(self, flash_attn_version: int, is_init_check: bool = False) -> bool:
        if not self._supports_flash_attn:  # the model-support rule stays: only the package and GPU checks go
            raise ValueError(f"{type(self).__name__} does not support Flash Attention {flash_attn_version}")
        return True

    AttentionInterface.register("flash_attention_2", standin_flash_attention)
    PreTrainedModel._flash_attn_can_dispatch = can_dispatch
    modeling_utils.lazy_import_flash_attention = lambda *args, **kwargs: None
    # "the flash-attn package is installed": without it transformers would fetch a Hub kernel instead
    fa2["general_availability_check"] = lambda *args, **kwargs: True
    _state.calls = []
    try:
        yield
    finally:
        AttentionInterface.register("flash_attention_2", original_function)
        PreTrainedModel._flash_attn_can_dispatch = original_dispatch
        modeling_utils.lazy_import_flash_attention = original_import
        fa2["general_availability_check"] = original_available
        _state.calls = []
