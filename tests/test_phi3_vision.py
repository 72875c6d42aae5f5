"""The Phi-3 VLM choice: Microsoft checkpoints refused on transformers 5, native default fixed up."""

from __future__ import annotations

import pytest
import transformers

from vlm_helpers import llava_phi3
from vlm_helpers.llava_phi3 import check_model_choice, RemoteCodeRefused

MICROSOFT = "microsoft/Phi-3-vision-128k-instruct"
PINNED = "0123456789abcdef0123456789abcdef01234567"


def test_microsoft_checkpoint_is_refused_on_the_installed_transformers_with_advice():
    assert transformers.__version__.startswith("5.")
    with pytest.raises(RemoteCodeRefused) as error:
        check_model_choice(MICROSOFT, trust_remote_code=True, revision=PINNED)
    message = str(error.value)
    assert "4.49" in message and transformers.__version__ in message
    assert llava_phi3.LLAVA_PHI3_MODEL_ID in message and "transformers<4.49" in message


@pytest.mark.parametrize("kwargs,expected", [
    ({}, "trust_remote_code=True"),
    ({"trust_remote_code": True}, "40-character commit hash"),
    ({"trust_remote_code": True, "revision": "main"}, "'main'"),
])
def test_opt_in_needs_remote_code_and_a_pinned_commit(kwargs, expected):
    with pytest.raises(RemoteCodeRefused, match=expected):
        check_model_choice("microsoft/Phi-3.5-vision-instruct", transformers_version="4.45.2", **kwargs)


def test_opt_in_is_accepted_on_an_old_enough_transformers_and_native_ids_always_pass():
    check_model_choice(MICROSOFT, trust_remote_code=True, revision=PINNED, transformers_version="4.48.3")
    check_model_choice(llava_phi3.LLAVA_PHI3_MODEL_ID)
    check_model_choice("/some/local/llava-folder")


def test_the_checkpoint_alone_gives_one_image_token_too_few_and_load_chat_vlm_fixes_it(tiny_cache):
    """Like xtuner/llava-phi-3-mini-hf, the tiny checkpoint has no processor_config.json: LlavaProcessor
    then takes num_additional_image_tokens=0 (not None) and inserts (S/14)^2 - 1 image tokens for the
    (S/14)^2 features of the CLIP tower. Filling only None fields (the old prepare_llava_processor) kept
    that 0, and the first forward pass failed; the fields must be compared with the model's."""
    import pytest
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_helpers.lora import load_chat_vlm
    from vlm_helpers.runtime import HardwareProfile, choose_preset
    from vlm_helpers.tiny import tiny_checkpoint

    path = tiny_checkpoint("llava-phi3", tiny_cache)
    assert not (path / "processor_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(path)
    vision = model.config.vision_config
    features = (vision.image_size // vision.patch_size) ** 2  # CLS dropped by the "default" strategy

    raw = AutoProcessor.from_pretrained(path)
    raw.patch_size = raw.patch_size or vision.patch_size  # what "only fill None" did
    raw.vision_feature_select_strategy = raw.vision_feature_select_strategy or "default"
    assert raw.num_additional_image_tokens == 0
    assert llava_phi3.image_tokens_per_image(raw, vision.image_size) == features - 1
    inputs = raw(text=["<image>hi"], images=[_image()], return_tensors="pt")
    with pytest.raises(ValueError, match="do not match"), torch.no_grad():
        model(**inputs)

    preset = choose_preset(HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False),
                           "phi3-aircraft", tiny=True)
    model, processor = load_chat_vlm(path, dtype=preset.dtype, attn_implementation=preset.attn_implementation, quantize_4bit=False)
    assert processor.num_additional_image_tokens == 1
    assert llava_phi3.image_tokens_per_image(processor, vision.image_size) == features
    with torch.no_grad():
        model(**processor(text=["<image>hi"], images=[_image()], return_tensors="pt"))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        add_generation_prompt=True)
    assert prompt == "<|user|>\n<image>\nDescribe.<|end|>\n<|assistant|>\n"
    assert llava_phi3.prepare_llava_processor(processor, model) == []  # nothing left to change


def _image():
    from PIL import Image

    return Image.new("RGB", (40, 30), (10, 120, 200))
