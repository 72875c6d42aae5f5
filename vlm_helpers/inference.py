"""Zero-shot inference helpers: Florence-2's built-in tasks, timing, memory, releasing a model.

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

#: Florence-2 task tokens the notebook demonstrates (the processor expands them into prompts).
FLORENCE2_TASKS = ("<OCR>", "<CAPTION>", "<MORE_DETAILED_CAPTION>", "<REGION_TO_DESCRIPTION>")


def box_to_location_tokens(box: tuple[float, float, float, float], image_size: tuple[int, int]) -> str:
    """A pixel box ``(x0, y0, x1, y1)`` as Florence-2's ``<loc_*>`` tokens (1000 bins per axis)."""
    width, height = image_size
    bins = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    return "".join(f"<loc_{min(999, max(0, int(b * 1000)))}>" for b in bins)


@torch.no_grad()
def florence2_task(model, processor, image, task: str, text_input: str = "", *, device: str = "cpu",
                   max_new_tokens: int = 64, num_beams: int = 1):
    """Run one Florence-2 task on one image and return the processor's post-processed result.

    ``task`` is a task token such as ``"<CAPTION>"``; tasks that take an input (a region for
    ``<REGION_TO_DESCRIPTION>``, a phrase for grounding) get it in ``text_input``.
    """
    from vlm_helpers.data.images import to_rgb

    image = to_rgb(image)
    inputs = processor(text=task + text_input, images=image, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
    text = processor.batch_decode(generated, skip_special_tokens=False)[0]
    return processor.post_process_generation(text, task=task, image_size=image.size)[task]


@dataclass
class Measurement:
    """Wall time and peak memory of a block (GPU allocated memory on CUDA, process RSS on CPU)."""

    seconds: float = 0.0
    peak_mib: float = 0.0
    memory_kind: str = ""

    def per_sample(self, samples: int) -> float:
        return self.seconds / max(samples, 1)


@contextmanager
def measure(device: str):
    """``with measure(device) as m: ...`` then read ``m.seconds`` and ``m.peak_mib``."""
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
    notebook's own variables too (the notebook shows how).
    """
    for obj in objects:
        del obj
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
