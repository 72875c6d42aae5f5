"""A tiny random LLaVA-Phi-3 (notebook 04), built from configs and saved like a Hub checkpoint.

``xtuner/llava-phi-3-mini-hf`` is a native transformers ``LlavaForConditionalGeneration``:
CLIP ViT-L/14-336 vision tower -> 2-layer MLP projector -> Phi-3-mini decoder. This module builds
the same module tree at toy size, so notebook 04 loads either one with the same code::

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=bnb_config)

Module tree (transformers 5.x)::

    model.vision_tower              CLIPVisionModel   (real: hidden 1024, 24 layers, 336 px, patch 14)
    model.multi_modal_projector     linear_1 -> GELU -> linear_2
    model.language_model            LlamaModel         (real: hidden 3072, 32 layers; xtuner
                                                        converted Phi-3 to the Llama layout:
                                                        separate q/k/v_proj and gate/up_proj)
    lm_head

Like the Hub repository, the saved folder has no ``processor_config.json``: loaded with
``AutoProcessor`` alone it inserts one ``<image>`` token too few, exactly as the real checkpoint
does, until :func:`vlm_helpers.phi3_vision.prepare_llava_processor` (called by
:func:`vlm_helpers.chat_models.load_chat_vlm`) sets the fields from the model config.

Not yet derived from a vendored copy of the real ``config.json`` (as the Idefics2 builder is):
the decoder layout and the missing processor file follow the real repository as described in
``shared/GUIDE.md``; the tokenizer is still a small trained one with Phi-3's special tokens.

Image tokens: the processor expands one ``<image>`` into (crop/patch)^2 tokens (the CLS token is
dropped by ``vision_feature_select_strategy="default"``): 336/14 -> 576 for the real model,
32/8 -> 16 here.

Every ``nn.Linear`` has ``in_features % 64 == 0`` and ``out_features % 32 == 0`` (bitsandbytes'
CPU 4-bit kernels need that; QLoRA quantizes vision tower and projector too, only ``lm_head`` is
skipped).

Weights are drawn with std 0.1 (``init_std``), not transformers' 0.02. At width 64 the default
gives next-token logits with a std of 0.16 that another question moves by 14% (RMS change / std)
and another image by 8%; 150 QLoRA steps on 400 synthetic DocVQA rows (lr 1e-2, trainable
``lm_head``) reach ANLS 0.075, always answering "letter" to "What type of document is this?".
With std 0.1: logit std 0.8, question 39%, image 15%, ANLS 0.2, and the document type is read
from the page (5 of 7 right).
"""

from __future__ import annotations

from pathlib import Path

# The chat format (Phi-3 turns with LLaVA's <image> placeholder) lives with the real loader,
# so the tiny model and xtuner/llava-phi-3-mini-hf use the very same template.
from vlm_helpers.phi3_vision import PHI3_LLAVA_CHAT_TEMPLATE

from .chat_tokenizer import build_byte_fallback_tokenizer
from .common import image_processor_class, reinit_weights

__all__ = ["PHI3_LLAVA_CHAT_TEMPLATE", "TINY_LLAVA_PHI3_SIZES", "build_tiny_llava_phi3"]

SPECIAL_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<image>"]

TINY_LLAVA_PHI3_SIZES = {
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 64},
    # Llama layout (as xtuner's conversion): q/k/v/o_proj 64 -> 64, gate/up_proj 64 -> 128.
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_tiny_llava_phi3(save_dir: str | Path, *, seed: int = 0, corpus=(), init_std: float = 0.1) -> Path:
    """Build a tiny random LLaVA-Phi-3 + processor and save both to ``save_dir``; return the path.

    Args:
        save_dir: output folder (created if needed).
        seed: torch seed for the random weights (the tokenizer does not depend on it).
        corpus: extra texts for the tokenizer (e.g. the synthetic dataset's captions).
        init_std: std of the random ``nn.Linear`` / ``nn.Embedding`` weights (see module docstring).
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlamaConfig,
    )

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    sizes = TINY_LLAVA_PHI3_SIZES

    # Phi-3 uses "<|endoftext|>" as eos and ends every turn with "<|end|>".
    tokenizer = build_byte_fallback_tokenizer(
        corpus, special_tokens=SPECIAL_TOKENS, eos_token="<|endoftext|>", pad_token="<pad>"
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")

    vision_config = CLIPVisionConfig(**sizes["vision"])
    text_config = LlamaConfig(
        vocab_size=_round_up(len(tokenizer), 64),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **sizes["text"],
    )
    patches_per_side = vision_config.image_size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=patches_per_side**2,
        vision_feature_layer=-2,  # as in LLaVA-1.5 / xtuner: the penultimate CLIP layer
        vision_feature_select_strategy="default",  # drop CLS
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )

    with torch.random.fork_rng():  # seed the build without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        reinit_weights(model, init_std)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[end_id, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(save_dir)

    # Saved as the Hub repository is laid out: tokenizer files and preprocessor_config.json, but no
    # processor_config.json (patch size, feature strategy and the CLS token are then unknown to
    # LlavaProcessor) and no processor chat template.
    tokenizer.save_pretrained(save_dir)
    _clip_image_processor(vision_config.image_size).save_pretrained(save_dir)
    for name in ("processor_config.json", "chat_template.jinja", "chat_template.json"):
        if (save_dir / name).exists():
            (save_dir / name).unlink()
    return save_dir


def _clip_image_processor(image_size: int):
    """CLIPImageProcessor, or its PIL twin when torchvision is absent (same outputs)."""
    cls = image_processor_class("CLIPImageProcessor")
    return cls(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        # CLIP's normalisation constants, as in the real preprocessor_config.json.
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
