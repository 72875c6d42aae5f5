"""The chat helpers on vision-language families the series does not build itself (issue 12, in progress).

So far: :func:`vlm_helpers.chat_models.add_lora`'s vision-encoder guard finds the encoder by
structure, so Qwen2-VL's ``model.visual`` is guarded like ``vision_tower`` / ``vision_model``.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from vlm_helpers.chat_models import add_lora, vision_encoders


def _tiny_qwen2_vl():
    """A tiny random Qwen2-VL (1 text layer, 1 vision block); sizes shrunk, structure kept."""
    config = transformers.Qwen2VLConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=256, bos_token_id=1, eos_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=32, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2))
    torch.manual_seed(0)
    return transformers.Qwen2VLForConditionalGeneration(config)


def test_vision_encoder_is_found_by_structure_in_qwen2_vl():
    assert [name for name, _ in vision_encoders(_tiny_qwen2_vl())] == ["model.visual"]


def test_lora_on_every_linear_layer_of_qwen2_vl_is_refused():
    # "all-linear" reaches the vision blocks' qkv/proj/fc1/fc2: the guard must see model.visual
    with pytest.raises(ValueError, match=r"LoRA reached the vision encoder .*visual"):
        add_lora(_tiny_qwen2_vl(), target_modules="all-linear", quantized=False)


def test_lora_on_the_language_model_of_qwen2_vl_is_accepted():
    model = add_lora(_tiny_qwen2_vl(), target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
                     quantized=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(".visual." in name for name in trainable)


def test_a_model_without_a_vision_encoder_is_an_error_not_a_silent_pass():
    config = transformers.Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, vocab_size=256)
    with pytest.raises(ValueError, match="Found no vision encoder in Qwen2ForCausalLM"):
        add_lora(transformers.Qwen2ForCausalLM(config), target_modules=["q_proj"], quantized=False)
