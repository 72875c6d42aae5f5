"""A stand-in for the FlashAttention-2 kernels that enforces their input rules on a CPU (SIMULATED).

No GPU and no ``flash-attn`` package can be had here, yet the A100 preset asks for
``attn_implementation="flash_attention_2"`` whenever flash-attn is installed (Colab users often install
it). :func:`simulated_flash_attention` (a context manager) lets a CPU test take that path as far down as
possible:

- ``from_pretrained(..., attn_implementation="flash_attention_2")`` accepts the request without the package
  or a GPU (transformers' model-support check still runs: a model without FlashAttention-2 support is still
  refused);
- the attention function registered under ``"flash_attention_2"`` in transformers' attention interface
  (``AttentionInterface.register``) is transformers' own FlashAttention wrapper, wrapped only to record which
  module called it (:func:`calls`), so everything transformers does on that path runs as on a GPU: the 2-D
  padding masks, the fp32-to-16-bit cast, unpadding into the varlen call (``_upad_input``), packed sequences,
  padding the output back;
- only the two kernels of the ``flash-attn`` package are stood in for, :func:`flash_attn_func` and
  :func:`flash_attn_varlen_func` (same names and keyword arguments, which transformers inspects), handed to
  transformers where it would import them. They raise :class:`FlashAttentionRuleBroken` where the real
  kernels refuse their input, and otherwise compute exact attention with ``scaled_dot_product_attention``.

The rules enforced are those of flash-attn 2.x:

1. head dimension at most 256 ("FlashAttention forward only supports head dimension at most 256");
2. fp16 or bf16 only ("FlashAttention only support fp16 and bf16 data type"), one dtype for query, key and
   value (transformers casts fp32 inputs to the autocast dtype, or else to the layer's weight dtype: fp32
   weights outside autocast reach the kernel as fp32 and are refused, as on a GPU);
3. query heads a multiple of key/value heads (grouped queries);
4. the dense kernel takes no mask: a padded batch must go through the varlen kernel. A padded batch that
   reaches the dense kernel is a silent error on a GPU (padding attended to), so here it raises: tests
   declare the batch's padding with :func:`padded_batch`.

Causal attention is aligned to the bottom right (flash-attn >= 2.1); ``window_size`` is honoured.
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
    """What reached FlashAttention-2 since :func:`simulated_flash_attention` started: one dict per attention call
    (``module``: the calling layer's class; ``kernel``: ``"dense"`` or ``"varlen"``; ``head_dim``; ``dtype``)."""
    if not hasattr(_state, "calls"):
        _state.calls = []
    return _state.calls


@contextlib.contextmanager
def padded_batch(attention_mask: torch.Tensor | None) -> Iterator[None]:
    """Declare the 2-D padding mask of the batch about to run, so the dense kernel can tell a padded batch
    (rule 4)."""
    previous = getattr(_state, "padding", None)
    _state.padding = attention_mask
    try:
        yield
    finally:
        _state.padding = previous


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    head_dim = q.shape[-1]
    if head_dim > FA2_MAX_HEAD_DIM:
        raise FlashAttentionRuleBroken(f"FlashAttention forward only supports head dimension at most "
                                       f"{FA2_MAX_HEAD_DIM}, got {head_dim} (query shape {tuple(q.shape)})")
    if q.dtype not in FA2_DTYPES:
        raise FlashAttentionRuleBroken(f"FlashAttention only supports fp16 and bf16 data type, got {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise FlashAttentionRuleBroken(f"query, key and value must have one dtype, got {q.dtype}, {k.dtype}, "
                                       f"{v.dtype}")
    if q.shape[-2] % k.shape[-2]:
        raise FlashAttentionRuleBroken(f"{q.shape[-2]} query heads are not a multiple of {k.shape[-2]} key/value "
                                       "heads")


def _record(kernel: str, q: torch.Tensor) -> None:
    if calls() and "kernel" not in calls()[-1]:
        calls()[-1].update(kernel=kernel, head_dim=q.shape[-1], dtype=q.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, window_size, softmax_scale,
            dropout_p: float) -> torch.Tensor:
    """One sequence: ``q`` [q_len, heads, dim], ``k``/``v`` [k_len, kv_heads, dim] -> [q_len, heads, dim]."""
    q_len, k_len = q.shape[0], k.shape[0]
    if k.shape[1] != q.shape[1]:  # grouped queries: each key/value head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    # query i sits at key position i + k_len - q_len (bottom-right alignment, flash-attn >= 2.1)
    rows = torch.arange(q_len, device=q.device)[:, None] + (k_len - q_len)
    cols = torch.arange(k_len, device=q.device)[None, :]
    left, right = window_size if window_size is not None else (-1, -1)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if right >= 0:
        allowed &= cols <= rows + right
    if left >= 0:
        allowed &= cols >= rows - left
    empty = ~allowed.any(dim=-1, keepdim=True)  # a query with no key: flash-attn returns zeros
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=allowed | empty, dropout_p=dropout_p, scale=softmax_scale)
    return out.transpose(0, 1).masked_fill(empty[:, :, None], 0.0)  # [q_len, heads, dim]


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's dense kernel: ``q`` [batch, q_len, heads, dim], no mask."""
    _check(q, k, v)
    if softcap or alibi_slopes is not None:
        raise NotImplementedError("the stand-in does not model softcap or ALiBi")
    padding = getattr(_state, "padding", None)
    if padding is not None and not bool(padding.all()) and q.shape[1] == padding.shape[-1]:
        raise FlashAttentionRuleBroken("a padded batch reached FlashAttention-2's dense kernel, which takes no mask: "
                                       "padding tokens would be attended to")
    _record("dense", q)
    return torch.stack([_attend(q[b], k[b], v[b], causal=causal, window_size=window_size,
                                softmax_scale=softmax_scale, dropout_p=dropout_p) for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn's variable-length kernel: sequences packed into ``q`` [total_q, heads, dim], cut by
    ``cu_seqlens_q`` / ``cu_seqlens_k``."""
    _check(q, k, v)
    if softcap or alibi_slopes is not None or block_table is not None:
        raise NotImplementedError("the stand-in does not model softcap, ALiBi or paged caches")
    _record("varlen", q)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    if len(bounds_q) != len(bounds_k):
        raise FlashAttentionRuleBroken("cu_seqlens_q and cu_seqlens_k describe different numbers of sequences")
    if max(b - a for a, b in zip(bounds_q, bounds_q[1:])) > max_seqlen_q:
        raise FlashAttentionRuleBroken("a query sequence is longer than max_seqlen_q")
    pieces = [_attend(q[a:b], k[c:d], v[c:d], causal=causal, window_size=window_size, softmax_scale=softmax_scale,
                      dropout_p=dropout_p)
              for (a, b), (c, d) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:]))]
    return torch.cat(pieces)


@contextlib.contextmanager
def simulated_flash_attention() -> Iterator[None]:
    """Within the block, ``attn_implementation="flash_attention_2"`` loads and runs on this CPU through
    transformers' own FlashAttention path, with the kernels above. Everything is put back afterwards."""
    import transformers.modeling_flash_attention_utils as fa_utils
    from transformers import AttentionInterface, PreTrainedModel

    wrapper = AttentionInterface._global_mapping["flash_attention_2"]  # transformers' flash_attention_forward
    original_dispatch = PreTrainedModel._flash_attn_can_dispatch
    original_imports = fa_utils._lazy_imports
    fa2 = fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    original_available = fa2["general_availability_check"]

    def recording(module, *args, **kwargs):
        calls().append({"module": type(module).__name__})
        return wrapper(module, *args, **kwargs)

    def can_dispatch(self, flash_attn_version: int, is_init_check: bool = False) -> bool:
        if not self._supports_flash_attn:  # the model-support rule stays: only the package and GPU checks go
            raise ValueError(f"{type(self).__name__} does not support Flash Attention {flash_attn_version}")
        return True

    def kernels(implementation=None, attention_wrapper=None, allow_all_kernels=False):
        return flash_attn_func, flash_attn_varlen_func, None, fa_utils._pad_input, fa_utils._unpad_input

    AttentionInterface.register("flash_attention_2", recording)
    PreTrainedModel._flash_attn_can_dispatch = can_dispatch
    fa_utils._lazy_imports = kernels
    fa_utils._loaded_implementation = None  # load the kernels above, not a cached set
    # "the flash-attn package is installed": without it transformers would fetch a Hub kernel instead
    fa2["general_availability_check"] = lambda *args, **kwargs: True
    _state.calls = []
    try:
        yield
    finally:
        AttentionInterface.register("flash_attention_2", wrapper)
        PreTrainedModel._flash_attn_can_dispatch = original_dispatch
        fa_utils._lazy_imports = original_imports
        fa_utils._loaded_implementation = None
        fa2["general_availability_check"] = original_available
        _state.calls = []
