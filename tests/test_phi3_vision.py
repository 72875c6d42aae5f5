"""The Phi-3 VLM choice: Microsoft checkpoints refused on transformers 5, native default fixed up."""

from __future__ import annotations

import pytest
import transformers

from vlm_helpers import phi3_vision
from vlm_helpers.phi3_vision import RemoteCodeRefused, check_model_choice

MICROSOFT = "microsoft/Phi-3-vision-128k-instruct"
PINNED = "0123456789abcdef0123456789abcdef01234567"


def test_microsoft_checkpoint_is_refused_on_the_installed_transformers_with_advice():
    assert transformers.__version__.startswith("5.")
    with pytest.raises(RemoteCodeRefused) as error:
        check_model_choice(MICROSOFT, trust_remote_code=True, revision=PINNED)
    message = str(error.value)
    assert "4.49" in message and transformers.__version__ in message
    assert phi3_vision.DEFAULT_MODEL_ID in message and "transformers<4.49" in message


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
    check_model_choice(phi3_vision.DEFAULT_MODEL_ID)
    check_model_choice("/some/local/llava-folder")


def test_prepare_llava_processor_restores_what_a_bare_checkpoint_lacks(tiny_cache):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_helpers.tiny import tiny_checkpoint

    path = tiny_checkpoint("llava-phi3", tiny_cache)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    expected_tokens = processor(text="<image>hi", images=[_image()], return_tensors="pt")["input_ids"].shape[1]
    processor.patch_size = None
    processor.chat_template = "{{ messages[0]['content'] }}"  # string-only, like Phi-3-mini's
    fixed = phi3_vision.prepare_llava_processor(processor, model)
    assert set(fixed) == {"patch_size", "chat_template"}
    assert processor(text="<image>hi", images=[_image()], return_tensors="pt")["input_ids"].shape[1] == expected_tokens
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        add_generation_prompt=True)
    assert prompt == "<|user|>\n<image>\nDescribe.<|end|>\n<|assistant|>\n"
    assert phi3_vision.prepare_llava_processor(processor, model) == []


def _image():
    from PIL import Image

    return Image.new("RGB", (40, 30), (10, 120, 200))
