"""Image budgets (issue 24, finding 3): each model choice bounds what a page costs in image tokens, per preset.

Qwen2-VL's published ``preprocessor_config.json`` allows 12,845,056 pixels per image, so a 1700x2200 scanned
page becomes 4,819 image tokens (19,276 vision patches) and one such page runs a T4 out of memory. Under the T4
preset notebook 06's loading cell (and ``vlm-train --recipe custom``) must cap it at about 1,600. The tiny
Qwen2-VL twin keeps the published preprocessor configuration unchanged (only the model's sizes shrink, checked
below), so its processor prices a page exactly as the real one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_helpers import adapters, lora, model_choices, runtime
from vlm_helpers.processors import PAGE_SIZE, image_tokens
from vlm_helpers.tiny.real import real_json

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_your_data_your_model.ipynb"
T4 = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
PRESETS = ("t4", "a100", "cpu", "tiny")


def qwen2_vl_twin(tiny_cache) -> Path:
    from vlm_helpers.tiny import tiny_checkpoint

    return Path(tiny_checkpoint("qwen2-vl", tiny_cache))


def budget_on(processor) -> dict:
    """The settings a budget can hold, as the loaded processor has them."""
    image_processor = processor.image_processor
    size = dict(image_processor.size)
    settings = {"do_image_splitting": getattr(image_processor, "do_image_splitting", None)}
    if hasattr(image_processor, "merge_size"):  # Qwen2-VL: pixel counts
        settings.update(max_pixels=size["longest_edge"], min_pixels=size["shortest_edge"])
    else:
        settings["longest_edge"] = size.get("longest_edge")
    return settings


def test_the_twin_prices_pages_with_the_published_qwen2_vl_processor_configuration(tiny_cache):
    twin = qwen2_vl_twin(tiny_cache)
    published = real_json("Qwen/Qwen2-VL-2B-Instruct", "preprocessor_config.json")
    assert json.loads((twin / "preprocessor_config.json").read_text()) == published
    assert published["max_pixels"] == 12_845_056


def test_under_the_t4_preset_a_page_costs_at_most_1600_qwen2_vl_image_tokens(tiny_cache):
    twin = qwen2_vl_twin(tiny_cache)
    choice = model_choices.get_model_choice("qwen2-vl")
    unbudgeted = image_tokens(lora.load_chat_processor(twin), PAGE_SIZE)
    assert 4_700 <= unbudgeted <= 4_900  # 4,819: 19,276 patches of 14 px, merged 2x2
    for preset in ("t4", "cpu"):
        budgeted = image_tokens(lora.load_chat_processor(twin, image_budget=choice.image_budget(preset)), PAGE_SIZE)
        assert budgeted <= 1_600, (preset, budgeted)
    assert choice.image_budget("t4") == {"max_pixels": 1280 * 28 * 28}  # Qwen's own suggestion
    assert choice.image_budget("a100")["max_pixels"] <= 12_845_056


@pytest.mark.parametrize("key", sorted(model_choices.MODEL_CHOICES))
def test_the_loaded_processor_of_each_choice_carries_its_budget_on_every_preset(key, tiny_cache):
    from vlm_helpers.tiny import tiny_checkpoint

    choice = model_choices.get_model_choice(key)
    twin = tiny_checkpoint(choice.tiny_name, tiny_cache)
    own = budget_on(lora.load_chat_processor(twin))
    for preset in PRESETS:
        budget = choice.image_budget(preset)
        loaded = budget_on(lora.load_chat_processor(twin, image_budget=budget))
        assert loaded == {**own, **budget}, (preset, budget, loaded)
    if key in FIXED_SIZE:  # every image is resized to one size: a page costs what a thumbnail does, nothing to bound
        processor = lora.load_chat_processor(twin)
        assert image_tokens(processor, (64, 48)) == image_tokens(processor, PAGE_SIZE)
        assert not any(choice.image_budget(preset) for preset in PRESETS)
    else:
        assert choice.image_budget("t4"), key


#: The choices whose processor resizes every image to one size (Florence-2 768 px, LLaVA-Phi-3 336 px, Gemma 3 896 px
#: without pan-and-scan, PaliGemma 2 448 px).
FIXED_SIZE = {"florence2", "llava-phi3", "gemma3-4b", "paligemma2-3b"}


def test_the_budget_survives_saving_and_reloading_the_adapter(tiny_cache, tmp_path):
    """The processor saved with the adapter keeps the budget, and load_adapter's processor (the saved one)
    prices a page as the trained model's did, even when the base is reloaded without the budget."""
    twin = qwen2_vl_twin(tiny_cache)
    choice = model_choices.get_model_choice("qwen2-vl")
    kwargs = dict(dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    model, processor = lora.load_chat_vlm(twin, image_budget=choice.image_budget("t4"), **kwargs)
    trained_cost = image_tokens(processor, PAGE_SIZE)
    assert trained_cost <= 1_600
    model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=False)
    adapter = adapters.save_adapter(model, processor, tmp_path / "adapter")
    _, reloaded = lora.load_adapter(twin, adapter, **kwargs)  # no budget passed: it comes with the adapter
    assert image_tokens(reloaded, PAGE_SIZE) == trained_cost
    assert budget_on(reloaded)["max_pixels"] == choice.image_budget("t4")["max_pixels"]


def test_a_budget_is_refused_where_the_processor_has_no_such_setting(tiny_cache):
    from vlm_helpers.tiny import tiny_checkpoint

    with pytest.raises(ValueError, match="does not apply to 'florence2'"):
        lora.load_chat_processor(tiny_checkpoint("florence2", tiny_cache), image_budget={"max_pixels": 10_000})
    with pytest.raises(ValueError, match="does not apply to 'qwen2_vl'"):
        lora.load_chat_processor(qwen2_vl_twin(tiny_cache), image_budget={"longest_edge": 512})
    with pytest.raises(ValueError, match="unknown image budget"):
        lora.load_chat_processor(qwen2_vl_twin(tiny_cache), image_budget={"max_tokens": 100})


def loading_cell() -> str:
    """Notebook 06's model-loading cell (section "The model and its LoRA targets")."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return next("".join(cell["source"]) for cell in cells
                if cell["cell_type"] == "code" and "lora.load_chat_vlm(" in "".join(cell["source"]))


def test_notebook_06_loading_cell_applies_the_t4_budget_and_says_what_a_page_costs(tiny_cache, monkeypatch, capsys):
    """The cell as committed, run with the T4 preset (on this CPU, fp32) and MODEL = "qwen2-vl": the tiny twin
    has the published processor configuration, so the printed costs are the real checkpoint's."""
    monkeypatch.setenv("VLM_CACHE", str(tiny_cache))
    choice = model_choices.get_model_choice("qwen2-vl")
    preset = runtime.override(runtime.choose_preset(T4, choice.recipe), device="cpu", dtype="float32")
    assert preset.name == "t4"
    namespace = {"runtime": runtime, "model_choices": model_choices, "choice": choice, "preset": preset,
                 "TINY": True, "METHOD": None, "REVISION": None}  # the parameters cell's default
    exec(compile(loading_cell(), "06_your_data_your_model.ipynb#loading", "exec"), namespace)
    printed = capsys.readouterr().out
    expected = image_tokens(namespace["processor"], PAGE_SIZE)
    assert expected <= 1_600
    assert (f"image budget on preset t4: max_pixels=1,003,520; a 1700x2200 page costs {expected:,} image tokens "
            f"(without it: 4,819)") in printed
    assert namespace["LOAD_KWARGS"]["image_budget"] == choice.image_budget("t4")  # reloading uses it too


def test_vlm_train_custom_loads_the_chat_model_with_the_choices_budget(tiny_cache, tmp_path, monkeypatch):
    """``vlm-train --recipe custom --model qwen2-vl`` on a T4 preset passes the same budget to the loader."""
    from dataclasses import replace

    from vlm_helpers import launch
    from vlm_helpers.recipes import custom
    from vlm_helpers.cli import build_parser, resolve_settings
    from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

    monkeypatch.setenv("VLM_CACHE", str(tiny_cache))
    data = write_synthetic_image_folder(tmp_path / "data", rows=20, task="qa")
    parser = build_parser()
    settings = resolve_settings(parser.parse_args(
        ["--recipe", "custom", "--tiny", "--data", str(data.jsonl), "--model", "qwen2-vl", "--question-column",
         "question", "--answer-column", "answers", "--image-column", "file_name",
         "--output-dir", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results")]), parser)
    settings = replace(settings, preset=runtime.override(settings.preset, name="t4"))
    seen = {}

    class Loaded(Exception):
        pass

    def load_chat_vlm(checkpoint, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr(lora, "load_chat_vlm", load_chat_vlm)
    with pytest.raises(Loaded):
        custom.run_custom(settings, launch.Distributed())
    assert seen.get("image_budget") == model_choices.get_model_choice("qwen2-vl").image_budget("t4")
