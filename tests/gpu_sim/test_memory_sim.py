"""The simulated GPU memory of ``bench/gpu_memory.py`` (fake tensors, no GPU): its tracker, its 4-bit stand-in,
and one real-size case that matters, Qwen2-VL-2B under the T4 preset with and without notebook 06's image budget.

The full table (every notebook under the T4 and A100 presets, about 6 minutes on 2 CPU cores) is the bench
script's; here one real-size model (28 + 32 layers at real widths, a 1700x2200 page) runs in about 30 s.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the simulated-GPU tier (README, "Run the tests"): run by `python -m pytest -m slow`

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_memory.py"


@pytest.fixture(scope="module")
def gpu_memory():
    spec = importlib.util.spec_from_file_location("gpu_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_memory"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_memory", None)


def test_the_tracker_reports_the_same_peak_on_real_and_on_fake_tensors(gpu_memory):
    """A training step of a small transformer (forward, backward, AdamW) tracked on real CPU tensors and on fake
    ones: the same peak, so what the simulation counts is what real tensors would hold."""
    real, fake = gpu_memory.tracker_check()
    assert real == fake and real > 0


def test_the_tracker_counts_live_storages_once_rounded_to_allocator_blocks(gpu_memory):
    tracker = gpu_memory.LiveMemory()
    with tracker:
        a = torch.empty(1000)  # 4,000 bytes -> 4,096
        view = a[:10]  # the same storage: not counted again
        b = torch.empty(10, dtype=torch.uint8)  # 10 bytes -> 512
        del b
        c = torch.empty(300)  # 1,200 -> 1,536 (b is gone)
    assert tracker.peak == 4096 + 1536 and view.untyped_storage().nbytes() == 4000
    del a, view, c
    assert sum(tracker.current.values()) == 0


def test_the_4bit_stand_in_holds_what_bitsandbytes_holds(gpu_memory):
    """Packed NF4 weight, 8-bit block constants and their fp32 constants: the sizes of a real bitsandbytes
    ``Linear4bit`` (quantized here on the CPU)."""
    import bitsandbytes as bnb

    linear = torch.nn.Linear(256, 384)
    real = bnb.nn.Linear4bit(256, 384, compute_dtype=torch.float16, compress_statistics=True, quant_type="nf4")
    real.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, compress_statistics=True,
                                    quant_type="nf4")
    real = real.to("cpu")
    state = real.weight.quant_state
    stand_in = gpu_memory.FourBitLinear(linear, torch.float16)
    assert stand_in.weight.shape == real.weight.shape and stand_in.weight.dtype == real.weight.dtype
    assert stand_in.absmax.numel() == state.absmax.numel() and stand_in.absmax.dtype == state.absmax.dtype
    assert stand_in.absmax2.numel() == state.state2.absmax.numel()
    x = torch.randn(3, 256, requires_grad=True)
    out = stand_in(x)
    assert out.shape == (3, 384) and out.dtype == torch.float32  # computed in fp16, returned in the input dtype
    out.sum().backward()
    assert x.grad.shape == x.shape and stand_in.weight.grad is None


@pytest.fixture(scope="module")
def qwen2_vl_t4(gpu_memory, tiny_cache):
    """Notebook 06's Qwen2-VL-2B under the T4 preset: one LoRA training step on a 1700x2200 page, with the
    choice's image budget and without it (the published max_pixels)."""
    case = next(c for c in gpu_memory.build_cases(image_budget=True) if c.notebook == "06" and c.name == "qwen2-vl")
    unbudgeted = next(c for c in gpu_memory.build_cases(image_budget=False)
                      if c.notebook == "06" and c.name == "qwen2-vl")
    return (gpu_memory.simulate(case, "t4", cache_dir=tiny_cache),
            gpu_memory.simulate(unbudgeted, "t4", cache_dir=tiny_cache))


def test_qwen2_vl_under_the_t4_preset_fits_and_the_budget_is_what_makes_a_page_cheap(gpu_memory, qwen2_vl_t4):
    budgeted, unbudgeted = qwen2_vl_t4
    assert budgeted.image_tokens <= 1_600 and unbudgeted.image_tokens > 4_700
    assert budgeted.peak / gpu_memory.GIB <= gpu_memory.T4_LIMIT_GIB, budgeted
    # the real width and depth: 2.2 B parameters in fp16 (tied embeddings counted once) plus fp32 adapters
    assert 4.0 < budgeted.weights / gpu_memory.GIB < 4.5
    assert budgeted.trainable_state > 0  # the adapters' gradients and 8-bit moments
    # a page of 4,819 image tokens costs far more memory and about six times the FLOPs
    assert unbudgeted.peak > 1.5 * budgeted.peak and unbudgeted.activations > 3 * budgeted.activations
    assert unbudgeted.flops > 4 * budgeted.flops
    assert "flash_attention_for_cpu" in budgeted.attention  # the memory-efficient kernel, no attention matrix
