"""Tiny twins of the chat families beyond the series' own three: Qwen2-VL, SmolVLM, Gemma 3, Mllama, LLaVA.

Notebook 06's ``qwen2-vl`` and ``smolvlm`` choices run in tiny mode on :func:`build_tiny_qwen2_vl` and
:func:`build_tiny_smolvlm` (reached through :func:`vlm_helpers.tiny.tiny_checkpoint`, as the series' own
twins are); ``tests/test_other_families.py`` checks the chat collator and LoRA helpers on every family here.
Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".

Each family is derived from its real checkpoint's vendored configuration
(``vlm_helpers/tiny/real_configs/<owner>--<name>/``, source and revision in its ``SOURCES.md``):
``config.json`` shrunk by sizes only (:func:`vlm_helpers.tiny.real.shrink`), the real
``generation_config.json``, ``preprocessor_config.json``, ``processor_config.json`` and chat template,
and a small tokenizer of the real *kind* (the family's own transformers tokenizer class, so the
real normalizer, pre-tokenizer and BOS/EOS handling) trained on a small corpus, with every added
token of the real tokenizer (``added_tokens_decoder``: special flags, strip rules) and the real
``tokenizer_config.json`` settings (BOS/EOS/pad roles, ``add_bos_token``...). Token ids change (a
few hundred pieces instead of 150,000), so every id in the configuration files is mapped from the
real token to the tiny one: nothing refers to an id the tiny tokenizer does not have.

:func:`build_family` saves a folder laid out like the Hub repository, which the series' own
loaders (:func:`vlm_helpers.lora.load_chat_vlm`) load exactly as they would the real one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS, LANGUAGE_MODEL_LORA_TARGETS
from vlm_helpers.tiny.chat_tokenizer import tiny_tokenizer
from vlm_helpers.tiny.real import build_config, keep_repository_layout, model_class, real_json, shrink

__all__ = ["FAMILIES", "Family", "build_family", "build_tiny_gemma3", "build_tiny_paligemma2", "build_tiny_qwen2_vl", "build_tiny_smolvlm", "tiny_tokenizer"]


@dataclass(frozen=True)
class Family:
    """One family: the real checkpoint it shrinks, its tokenizer facts and how to shrink it.

    ``tokens`` maps the real id of every token the template, processor or configuration use to
    ``(content, special)``, and ``roles`` gives bos/eos/pad/unk: both from the vendored
    ``tokenizer_facts.json`` (the real ``tokenizer_config.json`` files of these repositories are
    not in the stored pages; ``SOURCES.md`` says how each fact was established).
    ``config_source``: ``"config.json"`` (vendored) or ``"<model_type>:<architecture>"``, the
    transformers defaults of that model type, which describe the same checkpoint, when the
    published file is not vendored. A file the repository has but that could not be read comes
    from the checkpoint's ``reconstructed/`` folder, whose README says how it was made. The families
    notebook 06 offers are listed in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """

    name: str
    model_id: str
    tokenizer_kind: str          # "qwen2" | "gemma" | "llama3" | "gpt2" | "sentencepiece"
    tokens: dict
    roles: dict
    sizes: dict                  # shrink() sizes for config.json
    processor_sizes: dict = field(default_factory=dict)   # {"preprocessor_config.json": {...}, ...}
    tokenizer_settings: dict = field(default_factory=dict)  # other tokenizer settings
    lora_targets: str | list[str] = ""                     # what the README recommends for this family
    config_source: str = "config.json"
    chat_template: str | None = None                       # only when no vendored template file exists
    vision_tokens: frozenset = frozenset()                 # tokens vision_token_ids must find
    end_of_turn: str = ""                                  # the token that must end every answer
# --------------------------------------------------------------------------------------------------
# ids: real -> tiny
# --------------------------------------------------------------------------------------------------

def id_map(family: Family, tokenizer) -> dict[int, int]:
    """Real token id -> tiny token id, for every token of ``family.tokens``.

    Part of the tiny twins of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    mapping = {}
    for real_id, (content, _) in family.tokens.items():
        tiny = tokenizer.convert_tokens_to_ids(content)
        if tiny is None or tiny == tokenizer.unk_token_id and content != tokenizer.unk_token:
            raise KeyError(f"{content!r} is not a token of the tiny {family.name} tokenizer")
        mapping[real_id] = tiny
    return mapping


def remap_ids(values, mapping: dict[int, int], where: str):
    """Replace every token id in a config dict (keys ending in ``token_id``, ``token_index``...).

    Part of the tiny twins of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    if isinstance(values, dict):
        out = {}
        for key, value in values.items():
            if isinstance(value, dict):
                out[key] = remap_ids(value, mapping, f"{where}.{key}")
            elif _is_id_key(key) and value is not None:
                out[key] = _map(value, mapping, f"{where}.{key}")
            else:
                out[key] = value
        return out
    return values


def _is_id_key(key: str) -> bool:
    return isinstance(key, str) and key.endswith(("token_id", "token_ids", "token_index"))


def _map(value, mapping, where):
    if isinstance(value, list):
        return [_map(v, mapping, where) for v in value]
    if isinstance(value, int):
        if value not in mapping:
            raise KeyError(f"{where}: real token id {value} is not an added token of the vendored tokenizer_config")
        return mapping[value]
    return value


# --------------------------------------------------------------------------------------------------
# the checkpoint folder
# --------------------------------------------------------------------------------------------------

def build_family(family: Family, save_dir: str | Path, *, seed: int = 0, init_std: float = 0.1) -> Path:
    """Save a tiny random ``family`` model, its tokenizer and the real processor files to ``save_dir``.

    The tiny twins of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    import torch

    from vlm_helpers.tiny.common import reinit_weights

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(family)
    mapping = id_map(family, tokenizer)
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = shrink(_published_config(family), family.sizes)
    config = remap_ids(config, mapping, "config.json")
    text_key = "text_config" if "text_config" in config else None
    (config[text_key] if text_key else config)["vocab_size"] = vocab_size
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)(build_config(config))
        reinit_weights(model, init_std)
        open_zero_gates(model)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    _write_tokenizer_config(family, save_dir, tokenizer)
    for name in ("generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.json", "video_preprocessor_config.json"):
        try:
            real = real_json(family.model_id, name, reconstructed=True)  # README in reconstructed/ says how
        except FileNotFoundError:
            real = None
        if real is None:
            continue
        real = remap_ids(real, mapping, name)
        real.update(family.processor_sizes.get(name, {}))
        (save_dir / name).write_text(json.dumps(real, indent=2) + "\n")
    jinja = _vendored(family, "chat_template.jinja")
    if jinja is not None:
        (save_dir / "chat_template.jinja").write_text(jinja)
    keep_repository_layout(save_dir, family.model_id)
    return save_dir


def open_zero_gates(model, value: float = 1.0) -> list[str]:
    """Give branch gates that start at exactly zero the value a trained checkpoint would have.

    Mllama multiplies each cross-attention and its MLP by ``tanh(gate)``, gates initialised to 0 so
    that pre-training starts from the text model; the real 11B checkpoint has learned non-zero gates.
    Left at 0, no gradient reaches LoRA in those layers and the image is ignored, unlike full mode.
    Part of the tiny twins of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    import torch

    opened = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if re.search(r"(^|_)gate(_|$)", name.rsplit(".", 1)[-1]) and param.numel() <= 8 and not param.any():
                param.fill_(value)
                opened.append(name)
    return opened


def _published_config(family: Family) -> dict:
    """The vendored config.json, or the transformers defaults of the model type when it is not vendored."""
    if family.config_source == "config.json":
        return real_json(family.model_id, "config.json", reconstructed=True)
    from transformers import AutoConfig

    model_type, architecture = family.config_source.split(":")
    config = AutoConfig.for_model(model_type).to_dict()
    config["architectures"] = [architecture]
    return config


def _vendored(family: Family, name: str) -> str | None:
    from vlm_helpers.tiny.real import real_dir

    path = real_dir(family.model_id) / name
    return path.read_text() if path.exists() else None


def _write_tokenizer_config(family: Family, save_dir: Path, tokenizer) -> None:
    """The chat template, when the repository keeps none in a file of its own."""
    if family.chat_template is None:
        return
    path = save_dir / "tokenizer_config.json"
    saved = json.loads(path.read_text())
    saved["chat_template"] = family.chat_template
    path.write_text(json.dumps(saved, indent=2) + "\n")


_QWEN2_VL_TOKENS = {  # tokenizer_facts.json of Qwen/Qwen2-VL-2B-Instruct (ids from its config.json)
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True), 151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True),
}


FAMILIES: dict[str, Family] = {
    "qwen2-vl": Family(
        name="qwen2-vl", model_id="Qwen/Qwen2-VL-2B-Instruct", tokenizer_kind="qwen2", tokens=_QWEN2_VL_TOKENS,
        roles={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
        sizes={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "rope_scaling": {"mrope_section": [2, 3, 3]},
               "vision_config": {"depth": 1, "embed_dim": 64, "num_heads": 2, "hidden_size": 64}},
        lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="<|im_end|>",
        vision_tokens=frozenset({"<|vision_start|>", "<|image_pad|>", "<|vision_end|>"})),
}

#: Qwen2.5-VL uses Qwen2-VL's vocabulary and special tokens (config.json names the same ids).
FAMILIES["qwen2.5-vl"] = Family(
    name="qwen2.5-vl", model_id="Qwen/Qwen2.5-VL-3B-Instruct", tokenizer_kind="qwen2", tokens=_QWEN2_VL_TOKENS,
    roles={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
    # the vision tower: window attention in every block but the full-attention ones (fullatt_block_indexes), a
    # gated MLP, and a merger to out_hidden_size (= the language model's width)
    sizes={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "rope_scaling": {"mrope_section": [2, 3, 3]},
           "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                             "out_hidden_size": 64, "fullatt_block_indexes": [1]}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="<|im_end|>",
    vision_tokens=frozenset({"<|vision_start|>", "<|image_pad|>", "<|vision_end|>"}))

_GEMMA3_TOKENS = {  # tokenizer_facts.json of google/gemma-3-4b-it; 105 (<start_of_turn>) is inferred
    0: ("<pad>", True), 1: ("<eos>", True), 2: ("<bos>", True), 3: ("<unk>", True), 4: ("<mask>", True),
    105: ("<start_of_turn>", True), 106: ("<end_of_turn>", True), 255999: ("<start_of_image>", True),
    256000: ("<end_of_image>", True), 262144: ("<image_soft_token>", True),
}
FAMILIES["gemma3"] = Family(
    name="gemma3", model_id="google/gemma-3-4b-it", tokenizer_kind="gemma", tokens=_GEMMA3_TOKENS,
    roles={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    tokenizer_settings={"extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                 "image_token": "<image_soft_token>"}},
    # 6 text layers: Gemma 3 puts a full-attention layer after every 5 sliding-window ones, and the twin needs both
    sizes={"mm_tokens_per_image": 4,
           "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 56}},
    processor_sizes={"processor_config.json": {"image_seq_length": 4},
                     "preprocessor_config.json": {"image_seq_length": 4, "size": {"height": 56, "width": 56}}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="<end_of_turn>",
    vision_tokens=frozenset({"<start_of_image>", "<image_soft_token>", "<end_of_image>"}))

_MLLAMA_TOKENS = {  # tokenizer_facts.json of meta-llama/Llama-3.2-11B-Vision-Instruct; the pad string is inferred
    128000: ("<|begin_of_text|>", True), 128001: ("<|end_of_text|>", True), 128004: ("<|finetune_right_pad_id|>", True),
    128006: ("<|start_header_id|>", True), 128007: ("<|end_header_id|>", True), 128008: ("<|eom_id|>", True),
    128009: ("<|eot_id|>", True), 128010: ("<|python_tag|>", True), 128256: ("<|image|>", True),
}
FAMILIES["mllama"] = Family(
    name="mllama", model_id="meta-llama/Llama-3.2-11B-Vision-Instruct", tokenizer_kind="llama3", tokens=_MLLAMA_TOKENS,
    roles={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
    config_source="mllama:MllamaForConditionalGeneration",  # config.json not vendored: MllamaConfig's defaults (11B)
    sizes={"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2, "cross_attention_layers": [1]},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_global_layers": 1, "attention_heads": 2, "image_size": 56,
                             "intermediate_layers_indices": [0], "vision_output_dim": 128}},
    processor_sizes={"preprocessor_config.json": {"size": {"height": 56, "width": 56}}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="<|eot_id|>", vision_tokens=frozenset({"<|image|>"}))

_LLAVA15_TOKENS = {  # tokenizer_facts.json of llava-hf/llava-1.5-7b-hf (revision 6b71355)
    0: ("<unk>", True), 1: ("<s>", True), 2: ("</s>", True), 32000: ("<image>", True), 32001: ("<pad>", True),
}
FAMILIES["llava-1.5"] = Family(
    name="llava-1.5", model_id="llava-hf/llava-1.5-7b-hf", tokenizer_kind="sentencepiece", tokens=_LLAVA15_TOKENS,
    roles={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    tokenizer_settings={"add_bos_token": True, "add_eos_token": False, "legacy": False, "padding_side": "left"},
    config_source="llava:LlavaForConditionalGeneration",  # config.json not vendored: LlavaConfig's defaults (1.5-7b)
    sizes={"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "image_size": 56, "projection_dim": 64}},
    processor_sizes={"preprocessor_config.json": {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="</s>", vision_tokens=frozenset({"<image>"}))

_LLAVA_NEXT_TOKENS = {  # tokenizer_facts.json of llava-hf/llava-v1.6-mistral-7b-hf: Mistral's vocabulary + two
    0: ("<unk>", True), 1: ("<s>", True), 2: ("</s>", True),  # tokens the conversion script adds
    32000: ("<image>", True), 32001: ("<pad>", True),
}
_NEXT_GRID = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]  # the real 336-px grids, at 56 px
FAMILIES["llava-next"] = Family(
    name="llava-next", model_id="llava-hf/llava-v1.6-mistral-7b-hf", tokenizer_kind="sentencepiece",
    tokens=_LLAVA_NEXT_TOKENS, roles={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    # Mistral-7B-Instruct-v0.2's tokenizer_config.json settings, which the conversion script starts from
    tokenizer_settings={"add_bos_token": True, "add_eos_token": False, "legacy": True,
                        "spaces_between_special_tokens": False, "clean_up_tokenization_spaces": False},
    sizes={"image_grid_pinpoints": _NEXT_GRID,
           "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "image_size": 56, "projection_dim": 64}},
    processor_sizes={"preprocessor_config.json": {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56},
                                                  "image_grid_pinpoints": _NEXT_GRID}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="</s>", vision_tokens=frozenset({"<image>"}))

_SMOLVLM_TILES = {49153 + 6 * (r - 1) + (c - 1): (f"<row_{r}_col_{c}>", True) for r in range(1, 7) for c in range(1, 7)}
_SMOLVLM_TOKENS = {  # SmolLM2's first special tokens, then the added ones; the added ids are SmolVLM2-256M's
    0: ("<|endoftext|>", True), 1: ("<|im_start|>", True), 2: ("<|im_end|>", True),  # (same 4.74 kB added_tokens.json;
    49152: ("<global-img>", True), **_SMOLVLM_TILES, 49189: ("<fake_token_around_image>", True),  # see SOURCES.md)
    49190: ("<image>", True), 49279: ("<end_of_utterance>", True),
}
FAMILIES["smolvlm"] = Family(
    name="smolvlm", model_id="HuggingFaceTB/SmolVLM-256M-Instruct", tokenizer_kind="gpt2", tokens=_SMOLVLM_TOKENS,
    roles={"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"},
    # config.json and preprocessor_config.json: reconstructed/ (its README says from what)
    sizes={"text_config": {"hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 6,
                           "num_key_value_heads": 2, "head_dim": 16},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 128}},
    # image 128 px in 16-px patches, pixel shuffle 4: (128/16)^2 / 4^2 = 4 tokens per tile (real: 64);
    # the resize limit stays 4 tiles wide, as the real 2048 / 512
    processor_sizes={"processor_config.json": {"image_seq_len": 4},
                     "preprocessor_config.json": {"max_image_size": {"longest_edge": 128},
                                                  "size": {"longest_edge": 512}}},
    # Idefics3 names its language model ``text_model``, as Idefics2 does: the ``language_model`` pattern matches nothing
    lora_targets=IDEFICS2_LORA_TARGETS, end_of_turn="<end_of_utterance>",
    vision_tokens=frozenset({"<fake_token_around_image>", "<global-img>", "<image>", "<row_1_col_1>"}))


_PALIGEMMA2_TOKENS = {  # tokenizer_facts.json of google/paligemma2-3b-pt-448 (Gemma 2's tokenizer + <image>)
    0: ("<pad>", True), 1: ("<eos>", True), 2: ("<bos>", True), 3: ("<unk>", True),
    106: ("<start_of_turn>", True), 107: ("<end_of_turn>", True), 257152: ("<image>", True),
}
FAMILIES["paligemma2"] = Family(
    name="paligemma2", model_id="google/paligemma2-3b-pt-448", tokenizer_kind="gemma", tokens=_PALIGEMMA2_TOKENS,
    roles={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    # PaliGemmaProcessor writes <bos> itself, after the image tokens, and adds <locXXXX>/<segXXX> (PALIGEMMA_EXTRA_TOKENS)
    tokenizer_settings={"add_bos_token": False, "add_eos_token": False},
    # image 56 px in 14-px patches: 16 image tokens (real: 448 px, 1,024); no chat template: a prefix-LM
    sizes={"projection_dim": 64,
           "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_image_tokens": 16},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 56, "projection_dim": 64,
                             "num_image_tokens": 16}},
    processor_sizes={"preprocessor_config.json": {"image_seq_length": 16, "size": {"height": 56, "width": 56}}},
    lora_targets=LANGUAGE_MODEL_LORA_TARGETS, end_of_turn="<eos>", vision_tokens=frozenset({"<image>"}))

#: SmolVLM2-2.2B: SmolVLM-256M's tokens and template (its tokenizer facts say so), SmolVLM classes (model_type
#: smolvlm), SigLIP-SO400M in 384-px tiles, pixel shuffle 3 (81 tokens a tile).
FAMILIES["smolvlm2"] = Family(
    name="smolvlm2", model_id="HuggingFaceTB/SmolVLM2-2.2B-Instruct", tokenizer_kind="gpt2", tokens=_SMOLVLM_TOKENS,
    roles={"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"},
    sizes={"text_config": {"hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 6,
                           "num_key_value_heads": 6, "head_dim": 16},
           "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 84}},
    # tiles of 84 px in 14-px patches, pixel shuffle 3: (84/14)^2 / 3^2 = 4 tokens a tile (real: 81); the resize
    # limit stays 4 tiles wide, as the real 1536 / 384
    processor_sizes={"processor_config.json": {"image_seq_len": 4},
                     "preprocessor_config.json": {"max_image_size": {"longest_edge": 84},
                                                  "size": {"longest_edge": 336}}},
    lora_targets=IDEFICS2_LORA_TARGETS, end_of_turn="<end_of_utterance>",  # text_model, as SmolVLM's
    vision_tokens=frozenset({"<fake_token_around_image>", "<global-img>", "<image>", "<row_1_col_1>"}))


def build_tiny_qwen2_vl(save_dir: str | Path) -> Path:
    """Notebook 06's ``qwen2-vl`` in tiny mode: Qwen2-VL-2B-Instruct's configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["qwen2-vl"], save_dir)


def build_tiny_qwen2_5_vl(save_dir: str | Path) -> Path:
    """Notebook 06's ``qwen2.5-vl-3b`` in tiny mode: Qwen2.5-VL-3B-Instruct's configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["qwen2.5-vl"], save_dir)


def build_tiny_gemma3(save_dir: str | Path) -> Path:
    """Notebook 06's ``gemma3-4b`` in tiny mode: Gemma 3 4B-it's configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["gemma3"], save_dir)


def build_tiny_paligemma2(save_dir: str | Path) -> Path:
    """Notebook 06's ``paligemma2-3b`` in tiny mode: PaliGemma 2 3B (448 px)'s configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["paligemma2"], save_dir)


def build_tiny_smolvlm2(save_dir: str | Path) -> Path:
    """Notebook 06's ``smolvlm2-2.2b`` in tiny mode: SmolVLM2-2.2B-Instruct's configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["smolvlm2"], save_dir)


def build_tiny_smolvlm(save_dir: str | Path) -> Path:
    """Notebook 06's ``smolvlm`` in tiny mode: SmolVLM-256M-Instruct's configuration shrunk by sizes only.

    Built by :func:`vlm_helpers.tiny.tiny_checkpoint` for ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    return build_family(FAMILIES["smolvlm"], save_dir)
