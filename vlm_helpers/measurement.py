"""Measuring a block's time and peak memory, and releasing a model before loading the next.

Taught in ``notebooks/01_baseline_inference.ipynb``, which loads three models one after the
other on a 16 GB T4: each is measured, used and released before the next is loaded.
"""

from __future__ import annotations

import gc
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

@dataclass
class Measurement:
    """Wall time and peak memory of a block (GPU allocated memory on CUDA, process RSS on CPU).

    Tabled in ``notebooks/01_baseline_inference.ipynb``, section "Cost of each model".
    """

    seconds: float = 0.0
    peak_mib: float = 0.0
    memory_kind: str = ""

    def per_sample(self, samples: int) -> float:
        return self.seconds / max(samples, 1)


@contextmanager
def measure(device: str):
    """``with measure(device) as m: ...`` then read ``m.seconds`` and ``m.peak_mib``.

    First used in ``notebooks/01_baseline_inference.ipynb``, section "Florence-2: the built-in tasks"; the
    results are in ``notebooks/01_baseline_inference.ipynb``, section "Cost of each model".
    """
    result = Measurement(memory_kind="GPU peak allocated" if device == "cuda" else "process peak RSS")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield result
    finally:
        if device == "cuda":
            torch.cuda.synchronize()
            result.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            result.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result.seconds = time.perf_counter() - start


def release(*objects) -> None:
    """Drop references held here and give cached GPU memory back, so the next model fits.

    Python frees a model only when *every* name pointing at it is gone: ``del`` the
    notebook's own variables too (the notebook shows how: ``notebooks/01_baseline_inference.ipynb``,
    section "Florence-2 on DocVQA questions, zero-shot", and ``notebooks/03_idefics2_qlora_docvqa.ipynb``,
    section "Save the adapter, reload it, get the same answers").
    """
    for obj in objects:
        del obj
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
