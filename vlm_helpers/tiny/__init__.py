"""Tiny random models built from configs, so every notebook runs offline on a CPU.

:func:`tiny_checkpoint` returns a local folder holding a tiny model and its processor,
building it on first use. Notebooks pass that folder to the same ``from_pretrained``
loaders that take a Hub id in full mode (see ``notebooks/02_florence2_docvqa.ipynb``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vlm_helpers.runtime import TINY_TWIN_FILE
from vlm_helpers.tiny.families import (build_tiny_gemma3, build_tiny_paligemma2, build_tiny_qwen2_5_vl,
                                       build_tiny_qwen2_vl, build_tiny_smolvlm, build_tiny_smolvlm2)
from vlm_helpers.tiny.florence2 import build_tiny_florence2
from vlm_helpers.tiny.idefics2 import build_tiny_idefics2
from vlm_helpers.tiny.llava_phi3 import build_tiny_llava_phi3

__all__ = ["BUILDERS", "default_cache_dir", "resolve_checkpoint", "tiny_checkpoint"]

#: tiny model name -> the function that builds it into a folder
BUILDERS = {
    "florence2": build_tiny_florence2,
    "gemma3": build_tiny_gemma3,
    "idefics2": build_tiny_idefics2,
    "llava-phi3": build_tiny_llava_phi3,
    "paligemma2": build_tiny_paligemma2,
    "qwen2-vl": build_tiny_qwen2_vl,
    "qwen2.5-vl": build_tiny_qwen2_5_vl,
    "smolvlm": build_tiny_smolvlm,
    "smolvlm2": build_tiny_smolvlm2,
}


@contextlib.contextmanager
def _quiet_progress_bars():
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def default_cache_dir() -> Path:
    """``$VLM_CACHE`` if set, else ``~/.cache/vlm_helpers``.

    Where tiny mode builds its models once, as the README, section "Quick start", says.
    """
    return Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm_helpers"))


def tiny_checkpoint(name: str, cache_dir: str | Path | None = None, *, rebuild: bool = False) -> Path:
    """Return ``cache_dir/tiny-<name>``, building the tiny model there if it is missing.

    The folder holds a ``TINY_TWIN.json`` (:data:`vlm_helpers.runtime.TINY_TWIN_FILE`) that says what it is; a
    folder without it (built by an older version of the series) is built again.

    The build goes to a temporary folder that is renamed into place, so two processes
    (e.g. two torchrun ranks) never see a half-written checkpoint. Reached through
    :func:`resolve_checkpoint` in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    model, and freezing the vision encoder" (tiny mode).
    """
    if name not in BUILDERS:
        raise ValueError(f"Unknown tiny model {name!r}; expected one of {sorted(BUILDERS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"tiny-{name}"
    if (target / TINY_TWIN_FILE).exists() and not rebuild:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    build = BUILDERS[name]
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-{name}-", dir=cache_dir))
    with _quiet_progress_bars():  # no "Writing model shards" bars in the notebooks' outputs
        build(staging)
    (staging / TINY_TWIN_FILE).write_text(json.dumps(
        {"tiny_twin": name, "note": "a tiny random model built by vlm_helpers.tiny: its outputs are no real result"},
        indent=2) + "\n")
    # an old build (no marker) goes, unless another process has put a new one there meanwhile (a torchrun rank)
    if target.exists() and (rebuild or not (target / TINY_TWIN_FILE).exists()):
        shutil.rmtree(target)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_checkpoint(model_id: str, *, tiny: bool, tiny_name: str, cache_dir: str | None = None) -> str:
    """Return ``model_id`` in full mode, or the path of the tiny ``tiny_name`` model in tiny mode.

    The one place where the two modes take different models; everything after it is the same code.
    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the vision encoder".
    """
    if not tiny:
        return model_id
    return str(tiny_checkpoint(tiny_name, cache_dir))
