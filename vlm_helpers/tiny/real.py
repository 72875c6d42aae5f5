"""The real checkpoints' published configuration, vendored as data, and how tiny models shrink it.

Tiny mode (``VLM_TINY=1``) and the real-shape tests are only worth something if they take the
same path as full mode on the real checkpoint. So every tiny model starts from the files the real
Hub repository publishes (``real_configs/<owner>--<name>/``: ``config.json``,
``generation_config.json``, ``preprocessor_config.json``, ``processor_config.json`` where the
repository has one, tokenizer facts, and ``files.json``, which lists the files present and
absent; ``real_configs/README.md`` gives source and revision of each) and changes **sizes only**:
widths, layer counts, vocabulary, image size. Model classes, ``model_type`` of every sub-config,
module names, special tokens, processor fields, the generation config and which files exist stay
those of the real repository. :func:`shrink` refuses to change anything that is not a size.

Used by the tiny builders (:mod:`vlm_helpers.tiny.florence2`, :mod:`~vlm_helpers.tiny.idefics2`,
:mod:`~vlm_helpers.tiny.llava_phi3`) for tiny mode of notebooks 01-05, and by the real-shape tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

__all__ = ["REAL_CHECKPOINTS", "SIZE_FIELDS", "build_config", "keep_repository_layout", "meta_model",
           "real_dir", "real_json", "real_repo_files", "shrink", "write_repository_files"]

REAL_CONFIG_DIR = Path(__file__).with_name("real_configs")

#: Tiny model name -> the Hub checkpoint whose vendored configuration it shrinks.
REAL_CHECKPOINTS: dict[str, str] = {
    "florence2": "florence-community/Florence-2-base-ft",
    "idefics2": "HuggingFaceM4/idefics2-8b",
    "llava-phi3": "xtuner/llava-phi-3-mini-hf",
}

#: Configuration fields that are sizes: the only ones :func:`shrink` may change.
SIZE_FIELDS = frozenset({
    # transformer widths and depths
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "projection_dim", "vocab_size", "max_position_embeddings",
    # BART (Florence-2's language model)
    "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
    "encoder_ffn_dim", "decoder_ffn_dim",
    # DaViT (Florence-2's vision tower; ``dim_embed`` is microsoft's name for ``embed_dim``, kept in the published file)
    "embed_dim", "dim_embed", "depths", "num_heads", "num_groups", "window_size",
    # images
    "image_size",
    # Idefics2's perceiver resampler
    "resampler_n_latents", "resampler_depth", "resampler_n_heads", "resampler_head_dim",
    # families the chat helpers are tested on (vlm_helpers/tiny/families.py): Qwen2-VL's vision depth and
    # its rotary sections (they split head_dim), Gemma 3's image tokens, Mllama's vision stack and
    # which text layers cross-attend (indices below num_hidden_layers), LLaVA-NeXT's tiling grid
    "depth", "mrope_section", "out_hidden_size", "fullatt_block_indexes", "mm_tokens_per_image",
    "num_global_layers", "vision_output_dim",
    "intermediate_layers_indices", "cross_attention_layers", "max_num_tiles", "image_grid_pinpoints",
    "image_seq_len", "attention_heads",
    # PaliGemma: the image tokens its text and vision configs both record ((image_size / patch_size) ** 2)
    "num_image_tokens",
})


#: Files whose presence changes how a checkpoint loads (tokenizer file formats do not).
LAYOUT_FILES = frozenset({"config.json", "generation_config.json", "preprocessor_config.json",
                          "processor_config.json", "chat_template.json", "chat_template.jinja"})


def real_dir(model_id: str) -> Path:
    """The folder holding the vendored files of ``model_id`` (``owner/name`` -> ``owner--name``).

    The vendored configurations are described in the README, section "Using the helpers with other models".
    """
    path = REAL_CONFIG_DIR / model_id.replace("/", "--")
    if not path.is_dir():
        raise FileNotFoundError(f"no vendored configuration for {model_id!r} in {REAL_CONFIG_DIR}")
    return path


def real_json(model_id: str, filename: str, *, reconstructed: bool = False) -> dict | None:
    """A vendored JSON file of ``model_id``, or None when the real repository has no such file.

    A file the repository has but that could not be vendored raises ``FileNotFoundError``, unless
    ``reconstructed=True`` and ``reconstructed/<filename>`` holds a reconstruction (whose README says
    how it was made): builders that cannot do without the file opt in, and say so. The reconstructions are
    listed in the README, section "Using the helpers with other models".
    """
    path = real_dir(model_id) / filename
    if not path.exists():
        if filename in real_repo_files(model_id)["present"]:
            stand_in = path.parent / "reconstructed" / filename
            if reconstructed and stand_in.exists():
                return json.loads(stand_in.read_text())
            raise FileNotFoundError(f"{model_id} has {filename} but it is not vendored in {path.parent}")
        return None
    return json.loads(path.read_text())


def real_repo_files(model_id: str) -> dict[str, list[str]]:
    """``{"present": [...], "absent_checked": [...]}``: which files the real repository has.

    Part of the vendored configurations of the README, section "Using the helpers with other models".
    """
    return json.loads((real_dir(model_id) / "files.json").read_text())


def shrink(config: dict, sizes: dict) -> dict:
    """A copy of ``config`` with the fields in ``sizes`` replaced; every field must be a size.

    ``sizes`` nests like the config (``{"text_config": {"hidden_size": 64}}``). A size field
    the published file leaves at the class default may be added; anything else raises, so a
    tiny model can never drift from the real architecture by accident. How the tiny models derive from the
    real checkpoints: the README, section "Using the helpers with other models".
    """
    out = copy.deepcopy(config)
    for key, value in sizes.items():
        if isinstance(value, dict):
            sub = out.get(key)
            if not isinstance(sub, dict):
                raise ValueError(f"{key!r} is not a sub-configuration of this config")
            out[key] = shrink(sub, value)
        elif key in SIZE_FIELDS:
            out[key] = value
        else:
            raise ValueError(f"{key!r} is not a size: tiny models change sizes only, never structure")
    return out


def build_config(config: dict):
    """A transformers config object from a ``config.json`` dict (class chosen by ``model_type``).

    For the vendored configurations of the README, section "Using the helpers with other models".
    """
    from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k not in ("transformers_version", "_name_or_path", "torch_dtype")}
    return AutoConfig.for_model(**values)


def model_class(config: dict):
    """The model class the repository names in ``architectures`` (e.g. ``LlavaForConditionalGeneration``).

    For the vendored configurations of the README, section "Using the helpers with other models".
    """
    import transformers

    return getattr(transformers, config["architectures"][0])


def meta_model(model_id: str, sizes: dict | None = None):
    """The real architecture of ``model_id`` on the meta device: all modules, no memory, no weights.

    For questions about structure (module names LoRA would match, parameter counts) answered
    from the vendored configuration, e.g. the trainable parameters of LoRA on the real model. The
    vendored configurations: the README, section "Using the helpers with other models".
    """
    import torch

    config = real_json(model_id, "config.json")
    if sizes:
        config = shrink(config, sizes)
    with torch.device("meta"):
        return model_class(config)(build_config(config))


#: Fields of ``preprocessor_config.json`` / ``processor_config.json`` that are sizes.
PROCESSOR_SIZE_FIELDS = frozenset({"size", "crop_size", "image_seq_len", "image_seq_length"})


def write_repository_files(save_dir: str | Path, model_id: str, sizes: dict[str, dict] | None = None, *,
                           reconstructed: bool = False) -> list[str]:
    """Give a saved tiny checkpoint the real repository's configuration files; return the names written.

    After ``model.save_pretrained`` and ``tokenizer.save_pretrained``: the real
    ``generation_config.json`` is written as published, ``preprocessor_config.json`` and
    ``processor_config.json`` (where the repository has them) with only the size fields in
    ``sizes[filename]`` replaced, a chat template kept in ``tokenizer_config.json`` by the real
    repository is put there, and files the repository lacks are removed
    (:func:`keep_repository_layout`). Loading the folder then takes the same defaults as loading
    the real checkpoint. ``reconstructed``: passed to :func:`real_json`. See the README, section "Using the
    helpers with other models".
    """
    save_dir = Path(save_dir)
    sizes = sizes or {}
    written = []
    for name in ("generation_config.json", "preprocessor_config.json", "processor_config.json"):
        real = real_json(model_id, name, reconstructed=reconstructed)
        if real is None:
            continue
        for key, value in sizes.get(name, {}).items():
            if key not in PROCESSOR_SIZE_FIELDS:
                raise ValueError(f"{name}: {key!r} is not a size")
            real[key] = value
        (save_dir / name).write_text(json.dumps(real, indent=2) + "\n")
        written.append(name)
    try:
        real_tokenizer = real_json(model_id, "tokenizer_config.json", reconstructed=reconstructed) or {}
    except FileNotFoundError:  # not vendored (Florence-2): no chat template is known, none is written
        real_tokenizer = {}
    if "chat_template" in real_tokenizer:
        path = save_dir / "tokenizer_config.json"
        saved = json.loads(path.read_text())
        saved["chat_template"] = real_tokenizer["chat_template"]
        path.write_text(json.dumps(saved, indent=2) + "\n")
        written.append("tokenizer_config.json (chat_template)")
    keep_repository_layout(save_dir, model_id)
    return written


def keep_repository_layout(save_dir: str | Path, model_id: str) -> list[str]:
    """Delete from ``save_dir`` the configuration files the real repository does not have.

    ``save_pretrained`` writes e.g. ``processor_config.json`` and ``chat_template.jinja``; if the
    real repository lacks them, loading the real checkpoint takes other defaults (for
    ``xtuner/llava-phi-3-mini-hf``: ``num_additional_image_tokens=0``), and the tiny copy must
    behave the same. Returns the names removed. Why that matters for LLaVA-Phi-3:
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
    absent = set(real_repo_files(model_id).get("absent_checked", [])) & LAYOUT_FILES
    removed = []
    for name in sorted(absent):
        path = Path(save_dir) / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed
