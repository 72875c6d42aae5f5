"""Tiny models are the real checkpoints shrunk: same structure, smaller sizes.

For each tiny checkpoint of tiny mode (Florence-2, Idefics2, LLaVA-Phi-3) this compares what was
saved with the vendored configuration of the real repository (``vlm_helpers/tiny/real_configs``;
reconstructed files where the published ones could not be read, see the READMEs there: for Florence-2
the generation and processor files, its config.json being the published one) and fails on
any difference that is not a size: model classes and the ``model_type`` of every sub-configuration,
every other configuration value (class defaults included), the module names the series' LoRA
targets match, the processor files' fields, the generation config's token fields, which
configuration files exist, and the special tokens with their ids.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from vlm_helpers.tiny import tiny_checkpoint
from vlm_helpers.tiny.real import (LAYOUT_FILES, PROCESSOR_SIZE_FIELDS, REAL_CHECKPOINTS, SIZE_FIELDS, build_config,
                                   model_class, real_json, real_repo_files)

#: Values that are bookkeeping, not structure.
BOOKKEEPING = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "output_hidden_states",
               "return_dict", "output_attentions"}
#: Token ids that follow the tokenizer: only Florence-2's tiny tokenizer is smaller than the real one,
#: and there the ids are checked through the tokens they stand for (test_florence2_tokens_...).
TOKEN_ID_FIELDS = {"florence2": {"image_token_id"}}
GENERATION_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                           "forced_bos_token_id", "forced_eos_token_id", "bad_words_ids")
NAMES = ("florence2", "idefics2", "llava-phi3")


def real(name: str, filename: str):
    return real_json(REAL_CHECKPOINTS[name], filename, reconstructed=True)


@pytest.fixture(scope="module")
def tiny_dirs(tiny_cache):
    return {name: tiny_checkpoint(name, tiny_cache) for name in NAMES}


def structural_differences(tiny: dict, real_values: dict, *, skip=frozenset(), path: str = "") -> list[str]:
    """Every key where the two configuration dicts differ in something that is not a size."""
    out = []
    for key in sorted(set(tiny) | set(real_values), key=str):
        where = f"{path}{key}"
        if key in SIZE_FIELDS or key in BOOKKEEPING or key in skip:
            continue
        a, b = tiny.get(key, "<missing>"), real_values.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += structural_differences(a, b, skip=skip, path=where + ".")
        elif a != b:
            out.append(f"{where}: tiny {a!r} != real {b!r}")
    return out


def loaded_config(folder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).to_dict()


@pytest.mark.parametrize("name", NAMES)
def test_configuration_differs_in_sizes_only(tiny_dirs, name):
    tiny = loaded_config(tiny_dirs[name])
    real_config = build_config(real(name, "config.json"))  # class defaults filled in as for the Hub checkpoint
    assert tiny["architectures"] == real(name, "config.json")["architectures"]
    assert structural_differences(tiny, real_config.to_dict(), skip=TOKEN_ID_FIELDS.get(name, set())) == []


def test_the_comparison_sees_a_structural_change(tiny_dirs):
    """The check above can fail: the old tiny LLaVA-Phi-3's Phi-3 decoder, or a changed feature
    strategy, is reported."""
    tiny = loaded_config(tiny_dirs["llava-phi3"])
    real_config = build_config(real("llava-phi3", "config.json")).to_dict()
    changed = json.loads(json.dumps(tiny))
    changed["text_config"]["model_type"] = "phi3"
    changed["vision_feature_select_strategy"] = "full"
    changed["text_config"]["hidden_size"] = 7  # a size: not reported
    found = structural_differences(changed, real_config)
    assert any(line.startswith("text_config.model_type") for line in found)
    assert any(line.startswith("vision_feature_select_strategy") for line in found)
    assert not any("hidden_size" in line for line in found)


def _target_module_kinds(model, pattern: str) -> set[str]:
    """The Linear modules a LoRA regex matches, layer numbers folded: ``...layers.*.self_attn.q_proj``."""
    return {re.sub(r"\.\d+\.", ".*.", n) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)}


@pytest.mark.parametrize("name", ["idefics2", "llava-phi3"])
def test_lora_targets_match_the_same_modules_in_tiny_and_real(tiny_dirs, name):
    from vlm_helpers import llava_phi3, lora_targets

    pattern = {"idefics2": lora_targets.IDEFICS2_LORA_TARGETS, "llava-phi3": llava_phi3.LLAVA_PHI3_LORA_TARGETS}[name]
    real_config = real(name, "config.json")
    with torch.device("meta"):
        real_model = model_class(real_config)(build_config(real_config))
        tiny_config = json.loads((tiny_dirs[name] / "config.json").read_text())
        tiny_model = model_class(tiny_config)(build_config(tiny_config))
    kinds = _target_module_kinds(real_model, pattern)
    assert kinds and kinds == _target_module_kinds(tiny_model, pattern)
    assert {k.rsplit(".", 1)[-1] for k in kinds} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"}


@pytest.mark.parametrize("name", NAMES)
def test_configuration_files_present_and_absent_as_in_the_repository(tiny_dirs, name):
    files = real_repo_files(REAL_CHECKPOINTS[name])
    saved = {p.name for p in tiny_dirs[name].iterdir()}
    assert set(files["present"]) & LAYOUT_FILES <= saved
    assert not set(files.get("absent_checked", [])) & LAYOUT_FILES & saved


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("filename", ["preprocessor_config.json", "processor_config.json"])
def test_processor_files_differ_in_sizes_only(tiny_dirs, name, filename):
    """One deliberate difference: the tiny Idefics2 stores do_image_splitting False (published: True),
    the value every tiny-mode preset passes anyway (lora.default_image_splitting: on for
    the a100 preset only); the real-shape tier checks both settings at the real size."""
    real_values = real(name, filename)
    path = tiny_dirs[name] / filename
    if real_values is None:  # the repository has no such file: neither has the tiny checkpoint
        assert not path.exists()
        return
    tiny = json.loads(path.read_text())
    skip = PROCESSOR_SIZE_FIELDS | ({"do_image_splitting"} if name == "idefics2" else set())
    assert structural_differences(tiny, real_values, skip=skip) == []


@pytest.mark.parametrize("name", NAMES)
def test_generation_config_token_fields_are_the_real_ones(tiny_dirs, name):
    tiny = json.loads((tiny_dirs[name] / "generation_config.json").read_text())
    real_values = real(name, "generation_config.json")
    for key in GENERATION_TOKEN_FIELDS:
        assert tiny.get(key) == real_values.get(key), key
    for key in ("num_beams", "no_repeat_ngram_size", "early_stopping"):  # decoding as published
        assert tiny.get(key) == real_values.get(key), key


@pytest.mark.parametrize("name", ["idefics2", "llava-phi3"])
def test_chat_tokenizers_have_the_real_special_tokens_at_the_real_ids(tiny_dirs, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[name])
    real_tokenizer = real(name, "tokenizer_config.json")
    for token_id, token in real_tokenizer["added_tokens_decoder"].items():
        assert tokenizer.convert_tokens_to_ids(token["content"]) == int(token_id), token["content"]
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if key in real_tokenizer:  # idefics2-8b's file leaves unk_token to the class default
            assert str(getattr(tokenizer, key)) == str(real_tokenizer[key]), key
    ids = tokenizer("hello")["input_ids"]  # what add_bos_token / add_eos_token do, not the attributes
    assert (ids[0] == tokenizer.bos_token_id) == real_tokenizer["add_bos_token"]
    assert (ids[-1] == tokenizer.eos_token_id) == real_tokenizer["add_eos_token"]
    config = json.loads((tiny_dirs[name] / "config.json").read_text())
    image_id = config.get("image_token_id", config.get("image_token_index"))
    assert tokenizer.convert_ids_to_tokens(image_id) == "<image>"


def test_florence2_tokens_are_bart_s_and_florence_s(tiny_dirs):
    from transformers import AutoProcessor

    from vlm_helpers.tiny.florence2 import FLORENCE2_ADDED_TOKENS

    tokenizer = AutoProcessor.from_pretrained(tiny_dirs["florence2"]).tokenizer
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    ids = tokenizer.convert_tokens_to_ids(list(FLORENCE2_ADDED_TOKENS) + ["<image>"])
    assert ids == list(range(ids[0], ids[0] + 1025))  # in the real order, <image> last (real: 50265..51289)
    assert tokenizer.convert_tokens_to_ids("<mask>") == ids[0] - 1  # BART's last base piece
    config = json.loads((tiny_dirs["florence2"] / "config.json").read_text())
    assert config["image_token_id"] == ids[-1]
    # all 1,025 are special: skip_special_tokens removes task and location tokens from answers
    assert tokenizer.decode(tokenizer("12 <loc_5><ocr>")["input_ids"], skip_special_tokens=True) == "12 "


def test_florence2_config_is_the_published_file_and_the_tiny_one_keeps_its_dtype(tiny_dirs):
    """Florence-2-base-ft's config.json is vendored (no reconstruction): the tiny checkpoint is saved in its
    ``"dtype": "float16"`` (BOOKKEEPING above skips dtype for the other families, whose older files say
    ``torch_dtype``), and the two fields the published file names twice are shrunk with their twins:
    ``num_hidden_layers`` (BART's alias of ``encoder_layers``: left at 6, the tiny encoder would get 6 layers)
    and ``dim_embed`` (microsoft's name of ``embed_dim``)."""
    model_id = REAL_CHECKPOINTS["florence2"]
    published = real_json(model_id, "config.json")  # no reconstructed=True needed
    assert "config.json" not in real_repo_files(model_id)["not_vendored"]
    assert (published["image_token_id"], published["text_config"]["vocab_size"]) == (51289, 51328)
    assert (published["dtype"], published["transformers_version"]) == ("float16", "4.56.1")
    saved = json.loads((tiny_dirs["florence2"] / "config.json").read_text())
    assert saved["dtype"] == published["dtype"]
    assert saved["vision_config"]["dim_embed"] == saved["vision_config"]["embed_dim"]
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["florence2"], dtype=torch.float32)
    text = model.config.text_config
    assert len(model.model.language_model.encoder.layers) == text.encoder_layers == text.num_hidden_layers == 1


def test_a_missing_published_file_is_never_silently_replaced():
    """Reconstructions are used only when asked for by name."""
    with pytest.raises(FileNotFoundError, match="not vendored"):
        real_json(REAL_CHECKPOINTS["llava-phi3"], "generation_config.json")
    assert real_json(REAL_CHECKPOINTS["llava-phi3"], "processor_config.json") is None  # absent on the Hub


def test_the_old_guessed_llava_checkpoint_would_fail(tiny_dirs, tmp_path):
    """A tiny LLaVA-Phi-3 saved with a processor_config.json (as the old builder once did) breaks the
    layout check: loading it would hide finding 1."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_dirs["llava-phi3"], folder)
    (folder / "processor_config.json").write_text(json.dumps({"num_additional_image_tokens": 1}))
    files = real_repo_files(REAL_CHECKPOINTS["llava-phi3"])
    assert set(files["absent_checked"]) & LAYOUT_FILES & {p.name for p in folder.iterdir()}


def test_shrink_changes_sizes_only():
    from vlm_helpers.tiny.real import shrink

    config = real("llava-phi3", "config.json")
    small = shrink(config, {"text_config": {"hidden_size": 64, "num_hidden_layers": 1}})
    assert small["text_config"]["hidden_size"] == 64 and config["text_config"]["hidden_size"] == 3072
    with pytest.raises(ValueError, match="not a size"):
        shrink(config, {"vision_feature_select_strategy": "full"})
    with pytest.raises(ValueError, match="not a size"):
        shrink(config, {"text_config": {"model_type": "phi3"}})
    with pytest.raises(ValueError, match="not a sub-configuration"):  # e.g. sizes nested one level too deep
        shrink(config, {"config": {"text_config": {"hidden_size": 64}}})


#: The tiny twins of notebook 06's other model choices, built by vlm_helpers/tiny/families.py from the vendored
#: configuration; their token ids follow the twin's small tokenizer (test_other_families.py checks every special
#: token by its text), so only the ids may differ besides the sizes.
FAMILY_TWINS = ("qwen2-vl", "qwen2.5-vl", "smolvlm", "smolvlm2", "gemma3", "paligemma2")
TOKEN_IDS = frozenset({"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                       "vision_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "image_token_index",
                       "boi_token_index", "eoi_token_index"})


@pytest.mark.parametrize("name", FAMILY_TWINS)
def test_family_twins_differ_from_the_published_configuration_in_sizes_and_token_ids_only(tiny_cache, tmp_path, name):
    from vlm_helpers.tiny.families import FAMILIES

    (tmp_path / "config.json").write_text(json.dumps(real_json(FAMILIES[name].model_id, "config.json",
                                                               reconstructed=True)))
    tiny, published = loaded_config(tiny_checkpoint(name, tiny_cache)), loaded_config(tmp_path)
    for config in (tiny, published):  # one attention kind per layer: the same kinds, fewer layers
        text = config.get("text_config", config)
        text["layer_types"] = sorted(set(text.get("layer_types") or ()))
    assert structural_differences(tiny, published, skip=TOKEN_IDS) == []


def test_an_old_tiny_build_without_its_marker_is_built_again_and_a_marked_one_is_kept(tmp_path):
    """A tiny twin's folder says what it is (``TINY_TWIN.json``, which tags its adapters as no real result); a
    folder built by an older version of the series has no such file and is built again, once."""
    from vlm_helpers.runtime import TINY_TWIN_FILE

    old = tmp_path / "tiny-florence2"
    old.mkdir()
    (old / "config.json").write_text("{}")
    built = tiny_checkpoint("florence2", tmp_path)
    assert json.loads((built / TINY_TWIN_FILE).read_text())["tiny_twin"] == "florence2"
    assert json.loads((built / "config.json").read_text())["model_type"] == "florence2"
    stamp = (built / "config.json").stat().st_mtime_ns
    assert tiny_checkpoint("florence2", tmp_path) == built and (built / "config.json").stat().st_mtime_ns == stamp
