"""Presets: dtype and attention by compute capability, batching by GPU memory, tiny switch."""

from __future__ import annotations

import pytest

from vlm_helpers import runtime

T4 = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 14.7, True, False)
A100 = runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.4, True, False)
A100_FLASH = runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.4, True, True)
L4 = runtime.HardwareProfile("cuda", "NVIDIA L4", (8, 9), 22.0, True, True)
CPU = runtime.HardwareProfile("cpu", None, None, None, False, False)


def test_t4_gets_fp16_with_scaler_sdpa_and_accumulation():
    preset = runtime.choose_preset(T4, "florence2-docvqa")
    assert (preset.name, preset.dtype, preset.attn_implementation) == ("t4", "float16", "sdpa")
    assert preset.use_grad_scaler
    assert not preset.gradient_checkpointing  # Florence-2's frozen tower keeps no activations: a T4 has room
    assert preset.batch_size * preset.grad_accum == 6  # the blog's effective batch


def test_a100_gets_bf16_and_the_blogs_batch_of_six():
    preset = runtime.choose_preset(A100, "florence2-docvqa")
    assert (preset.name, preset.dtype, preset.attn_implementation) == ("a100", "bfloat16", "sdpa")
    assert (preset.batch_size, preset.grad_accum) == (6, 1) and not preset.use_grad_scaler


def test_flash_attention_only_when_installed_and_ampere():
    assert runtime.choose_preset(A100_FLASH, "idefics2-qlora-docvqa").attn_implementation == "flash_attention_2"
    assert runtime.choose_preset(A100_FLASH, "idefics2-qlora-docvqa", allow_flash_attn=False).attn_implementation == "sdpa"
    t4_with_flash = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 14.7, True, True)
    assert runtime.choose_preset(t4_with_flash, "idefics2-qlora-docvqa").attn_implementation == "sdpa"


def test_small_ampere_card_uses_bf16_but_the_16gb_batching():
    preset = runtime.choose_preset(L4, "idefics2-qlora-docvqa")
    assert preset.dtype == "bfloat16" and preset.name == "t4"


def test_cpu_is_fp32_and_tiny_keeps_the_hardware_dtype():
    assert runtime.choose_preset(CPU, "phi3-aircraft").dtype == "float32"
    tiny_on_t4 = runtime.choose_preset(T4, "phi3-aircraft", tiny=True)
    assert tiny_on_t4.tiny and tiny_on_t4.dtype == "float16" and tiny_on_t4.name == "tiny"


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="Unknown recipe"):
        runtime.choose_preset(CPU, "llama-chat")


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_tiny_switch(value, expected):
    assert runtime.is_tiny({"VLM_TINY": value}) is expected
    assert runtime.is_tiny({}) is False


def test_describe_is_one_readable_line_that_names_the_mode():
    line = runtime.describe(T4, runtime.choose_preset(T4, "florence2-docvqa"))
    assert "\n" not in line and "Tesla T4" in line and "7.5" in line and "float16" in line and "FULL" in line
    tiny = runtime.describe(CPU, runtime.choose_preset(CPU, "florence2-docvqa", tiny=True))
    assert "TINY" in tiny and "CPU" in tiny
    assert "tiny random model" in runtime.mode_label(True)


@pytest.mark.parametrize("preset_name", ["t4", "a100", "cpu"])
@pytest.mark.parametrize("recipe", ["florence2-docvqa", "idefics2-qlora-docvqa", "phi3-aircraft"])
def test_a_forced_preset_gets_the_same_gradient_checkpointing_rule_as_a_detected_one(monkeypatch, preset_name, recipe):
    """setup(preset_name=...) and choose_preset() share one rule (they once disagreed for 'cpu')."""
    profiles = {"t4": T4, "a100": A100, "cpu": CPU}
    monkeypatch.setattr(runtime, "detect_hardware", lambda: profiles[preset_name])
    detected = runtime.choose_preset(profiles[preset_name], recipe)
    forced = runtime.setup(recipe, tiny=False, preset_name=preset_name)[1]
    assert forced.gradient_checkpointing == detected.gradient_checkpointing
    assert detected.gradient_checkpointing == (preset_name in ("t4", "a100") and recipe != "florence2-docvqa")


def test_full_mode_without_a_gpu_stops_with_advice_and_tiny_mode_goes_on():
    with pytest.raises(runtime.NeedsGPU) as stopped:
        runtime.require_gpu_unless_tiny(False, notebook="02_florence2_docvqa", cuda_available=False)
    message = str(stopped.value)
    assert "02_florence2_docvqa" in message and "VLM_TINY=1" in message and "GPU runtime" in message
    runtime.require_gpu_unless_tiny(True, notebook="02_florence2_docvqa", cuda_available=False)
    runtime.require_gpu_unless_tiny(False, notebook="02_florence2_docvqa", cuda_available=True)


_QUIET_PROBE = r"""
import logging, sys, warnings
from vlm_helpers import runtime
warnings.simplefilter("default")  # what a notebook shows: every warning once
runtime.quiet_libraries(progress_bars=sys.argv[1] == "bars")
runtime.quiet_libraries(progress_bars=sys.argv[1] == "bars")  # twice is harmless
import datasets
from transformers.utils import logging as hf_logging
datasets.Dataset.from_dict({"a": list(range(300))}).map(lambda row: row)
hf_logging.get_logger("transformers.processing_utils").warning(
    "Chat templates should be in a 'chat_template.jinja' file but found key='chat_template'")
hf_logging.get_logger("transformers.processing_utils").warning("another processor message")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from x")
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
warnings.warn("some other future change", FutureWarning)
"""


@pytest.mark.parametrize("mode", ["tiny", "bars"])
def test_quiet_libraries_drops_known_messages_and_in_tiny_mode_the_bars(mode, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _QUIET_PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={"HF_DATASETS_CACHE": str(tmp_path), "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "Chat templates should be" not in err and "gemm_4bit_forward" not in err
    assert "is_gradient_checkpointing" not in err
    assert "another processor message" in err and "some other future change" in err  # only the known ones go
    assert ("Map:" in err) == (mode == "bars"), err


@pytest.mark.parametrize("model_id", ["HuggingFaceM4/idefics2-8b", "Qwen/Qwen2-VL-2B-Instruct",
                                      "xtuner/llava-phi-3-mini-hf", "llava-hf/llava-v1.6-mistral-7b-hf"])
def test_flash_attention_goes_to_the_language_model_only(model_id):
    """Issue 24: one ``flash_attention_2`` for the whole model crashed Florence-2's DaViT on an A100. The language
    models that get it have a head dimension the kernel takes (at most 256), at their real sizes."""
    from vlm_helpers.tiny.real import build_config, real_json

    config = build_config(real_json(model_id, "config.json"))
    parts = runtime.attention_by_part(config, "flash_attention_2")
    assert parts["vision_config"] == "sdpa" and parts["text_config"] == "flash_attention_2"
    assert set(parts) == set(config.sub_configs) | {""}
    for key, value in parts.items():
        if value == "flash_attention_2" and key:
            part = getattr(config, key)
            head_dim = (getattr(part, "head_dim", None) or getattr(part, "resampler_head_dim", None)
                        or part.hidden_size // part.num_attention_heads)  # Idefics2's perceiver: resampler_*
            assert head_dim <= 256, (key, head_dim)
    assert runtime.attention_by_part(config, "sdpa") == "sdpa"
    assert runtime.attention_by_part(config, "eager") == "eager"


def test_each_part_gets_only_what_its_class_supports():
    """Issue 28: Gemma 3 and PaliGemma refuse FlashAttention-2 for the whole model (it drops their bidirectional
    mask over image tokens), and PaliGemma 2's Gemma 2 language model has no sdpa path at all: asked for sdpa (a
    T4, a CPU, tiny mode) it must get eager, or loading fails with "Gemma2Model does not support ... sdpa"."""
    import transformers

    from vlm_helpers.tiny.real import build_config, real_json

    gemma3 = build_config(real_json("google/gemma-3-4b-it", "config.json"))
    assert runtime.attention_by_part(gemma3, "flash_attention_2") == "sdpa"
    assert runtime.attention_by_part(gemma3, "sdpa") == "sdpa"
    paligemma2 = build_config(real_json("google/paligemma2-3b-pt-448", "config.json", reconstructed=True))
    expected = {"text_config": "eager", "vision_config": "sdpa", "": "sdpa"}
    assert runtime.attention_by_part(paligemma2, "sdpa") == expected
    assert runtime.attention_by_part(paligemma2, "flash_attention_2") == expected
    assert runtime.attention_by_part(paligemma2, "eager") == "eager"
    # the rule reads the classes' own flags, so it follows transformers when they change
    assert not transformers.Gemma2Model._supports_sdpa and not transformers.Gemma3ForConditionalGeneration._supports_flash_attn
    assert runtime.supported_attention(transformers.Gemma2Model, "flash_attention_2") == "flash_attention_2"
    assert runtime.supported_attention(transformers.PaliGemmaForConditionalGeneration, "flash_attention_2") == "sdpa"


def test_paligemma2_twin_loads_on_the_cpu_preset(tiny_cache):
    """What notebook 06 does on a CPU, a T4 or in tiny mode (sdpa asked for): the Gemma 2 part runs eager."""
    from vlm_helpers import lora
    from vlm_helpers.tiny import tiny_checkpoint

    model, _ = lora.load_chat_vlm(str(tiny_checkpoint("paligemma2", tiny_cache)), dtype="float32",
                                  attn_implementation="sdpa", quantize_4bit=False)
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("model_id", ["florence-community/Florence-2-base-ft", "florence-community/Florence-2-large-ft"])
def test_florence2_never_gets_flash_attention(model_id):
    """Its vision tower breaks the kernel's head-dimension rule and its BART decoder's cross-attention is unpadded
    with the encoder's mask by transformers' FlashAttention path (tests/gpu_sim/test_kernel_contracts.py)."""
    from vlm_helpers.tiny.real import build_config, real_json

    config = build_config(real_json(model_id, "config.json"))
    assert runtime.attention_by_part(config, "flash_attention_2") == "sdpa"
