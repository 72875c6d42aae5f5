"""Saving a LoRA adapter so it loads anywhere: it names its base model by a name, never a path of this machine.

Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the same
answers", and used by notebooks 04 and 06, the keep-best callback (:mod:`vlm_helpers.best_checkpoint`) and the
Trainer's checkpoints (:mod:`vlm_helpers.hf_trainer`). Loading it back onto its base and merging it for export
are :func:`vlm_helpers.lora.load_adapter` and :func:`vlm_helpers.lora.merge_for_export`.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_helpers.runtime import TINY_TWIN_FILE

__all__ = ["portable_adapter_files", "portable_base_name", "save_adapter"]

_TINY_TAG = "tiny-random-not-a-real-result"


def portable_base_name(loaded_from: str | None, base_model: str | None = None) -> str | None:
    """The base model's name as a saved adapter should record it: never a path of this machine.

    ``base_model`` (a Hub id such as ``"HuggingFaceM4/idefics2-8b"``) if given; else what the base was loaded
    from when that is a Hub id; a folder of the Hugging Face cache (``.../models--org--name/snapshots/<rev>``)
    becomes ``"org/name"``; any other folder (a tiny twin, your own copy) its name alone (``"tiny-idefics2"``).
    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the same
    answers".
    """
    if base_model:
        return str(base_model)
    if not loaded_from:
        return loaded_from
    text = str(loaded_from)
    path = Path(text)
    if not (path.is_absolute() or path.exists() or text.startswith(("./", "../", "~"))):
        return text  # "org/name": a Hub id
    for part in reversed(path.parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return path.name


def _tiny_twin(loaded_from: str | None) -> bool:
    """Whether the base was loaded from a tiny twin built by :func:`vlm_helpers.tiny.tiny_checkpoint`."""
    return bool(loaded_from) and (Path(str(loaded_from)) / TINY_TWIN_FILE).is_file()


def portable_adapter_files(folder: str | Path, base_model: str | None = None) -> str | None:
    """Make the files PEFT's ``save_pretrained`` wrote in ``folder`` name the base by
    :func:`portable_base_name`, not by the folder it was loaded from; returns that name.

    PEFT records the path the base was loaded from: a tiny twin's or a local copy's folder is a path of this
    machine, meaningless anywhere else. Rewritten: ``base_model_name_or_path`` of ``adapter_config.json``, and in
    ``README.md`` (PEFT's card, or a model card it updated) ``base_model`` and the ``base_model:adapter:...`` tag;
    an adapter trained on a tiny twin is also tagged ``tiny-random-not-a-real-result``. Done after saving, so
    PEFT's own checks while saving still see the local folder (and look nothing up on the Hub in tiny mode).
    Used by :func:`save_adapter` and for the HF Trainer's checkpoints; taught in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the same answers".
    """
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    loaded_from = config.get("base_model_name_or_path")
    name = portable_base_name(loaded_from, base_model)
    if name != loaded_from:
        config["base_model_name_or_path"] = name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    tiny = _tiny_twin(loaded_from)
    readme = folder / "README.md"
    if readme.is_file() and (name != loaded_from or tiny):
        from huggingface_hub import ModelCard

        card = ModelCard(readme.read_text(encoding="utf-8"))
        card.data.base_model = name
        tags = [tag for tag in (card.data.tags or []) if not str(tag).startswith("base_model:adapter:")]
        tags += [f"base_model:adapter:{name}"] if name else []
        tags += [_TINY_TAG] if tiny and _TINY_TAG not in tags else []
        card.data.tags = sorted(tags)
        readme.write_text(str(card), encoding="utf-8")
    return name


def save_adapter(model, processor, path: str | Path, *, base_model: str | None = None) -> Path:
    """Save only the adapter weights (a few MB, not the base model) and the processor to ``path``.

    ``base_model``: the Hub id the adapter belongs on (a model choice's ``model_id``). It is what
    ``adapter_config.json`` and PEFT's README name as the base, instead of the folder the base was loaded from
    (:func:`portable_adapter_files`): a tiny twin or a local copy is a path of this machine that means nothing
    elsewhere. Without ``base_model`` a Hub id stays as loaded and a local folder is named by its name alone.
    An adapter trained on a tiny twin is tagged ``tiny-random-not-a-real-result``. :func:`load_adapter` is given
    the base to load, so a tiny adapter still loads onto its tiny twin.

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the
    same answers", and ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Save the adapter, reload it,
    caption again".
    """
    path = Path(path)
    model.save_pretrained(path)
    portable_adapter_files(path, base_model)
    processor.save_pretrained(path)
    return path
