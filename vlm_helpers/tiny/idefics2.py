"""A tiny random Idefics2 (notebook 03), built from configs and saved like a Hub checkpoint.

``build_tiny_idefics2(dir)`` writes a model + processor that load through exactly the code used for
``HuggingFaceM4/idefics2-8b``::

    processor = AutoProcessor.from_pretrained(path, do_image_splitting=False)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=bnb_config)

Architecture (same module tree as the 8B model, only smaller)::

    model.vision_model      SigLIP-style ViT      (8B: hidden 1152, 27 layers, patch 14)
    model.connector         modality_projection (SwiGLU MLP) + perceiver_resampler (64 latents)
    model.text_model        Mistral decoder       (8B: hidden 4096, 32 layers)
    lm_head

Every ``nn.Linear`` has ``in_features % 64 == 0`` and ``out_features % 32 == 0``: bitsandbytes'
CPU 4-bit kernels crash on other shapes, and QLoRA quantizes the vision tower and connector too
(only ``lm_head`` is kept in full precision by transformers).

Weights are drawn with std 0.1 (``init_std``), not transformers' 0.02. At width 64 the default
gives a model that hardly fine-tunes: next-token logits with a std of 0.16 that another question
moves by 18% (RMS change / std) and another image by 0.04% (the perceiver's latents, initialised
to ones, drown the image); 150 QLoRA steps on 400 synthetic DocVQA rows (lr 1e-2, trainable
``lm_head``) reach ANLS 0.0-0.03. With std 0.1: logit std 0.8, question 59%, image 7%, and the same
run reaches ANLS 0.17-0.23 (3 seeds) from 0.0 zero-shot. It still answers from the question alone
(the most common answer per question scores 0.24): even 500 steps did not teach it to read the page.
"""

from __future__ import annotations

from pathlib import Path

from .chat_tokenizer import build_byte_fallback_tokenizer
from .common import image_processor_class, reinit_weights

__all__ = ["IDEFICS2_CHAT_TEMPLATE", "TINY_IDEFICS2_SIZES", "build_tiny_idefics2"]

# The Idefics2 chat format, e.g. for a user turn [image, text] and an assistant turn [text]:
#   "User:<image>What is the total?<end_of_utterance>\nAssistant: 12.50<end_of_utterance>\n"
# The role is capitalised; it is followed by ":" when the turn starts with an image and by ": "
# otherwise; every turn ends with "<end_of_utterance>\n"; the generation prompt is "Assistant:".
# (Same output as the template shipped with HuggingFaceM4/idefics2-8b, which only accepts
# list-of-parts content; this one also accepts a plain string.)
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}"
    "{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]

# Sizes of the tiny model (all Linear shapes are multiples of 64 in / 32 out, see module docstring).
TINY_IDEFICS2_SIZES = {
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 64, "patch_size": 8},
    "perceiver": {"resampler_n_latents": 4, "resampler_depth": 2, "resampler_n_heads": 2,
                  "resampler_head_dim": 32, "num_key_value_heads": 1},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    # Images are resized so that 32 <= side <= 64 px; a 64x64 image gives 8x8 = 64 patches,
    # which the perceiver compresses to 4 image tokens.
    "image_processor": {"shortest_edge": 32, "longest_edge": 64},
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_tiny_idefics2(
    save_dir: str | Path,
    *,
    seed: int = 0,
    do_image_splitting: bool = False,
    corpus=(),
    init_std: float = 0.1,
) -> Path:
    """Build a tiny random Idefics2 + processor and save both to ``save_dir``; return the path.

    Args:
        save_dir: output folder (created if needed).
        seed: torch seed for the random weights (the tokenizer does not depend on it).
        do_image_splitting: stored in the image processor config. With True every image becomes
            4 crops + the full image, i.e. 5 x (latents + 2) image-related tokens.
        corpus: extra texts for the tokenizer (e.g. the synthetic dataset's questions).
        init_std: std of the random ``nn.Linear`` / ``nn.Embedding`` weights (see module docstring).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2Processor,
        MistralConfig,
    )

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    sizes = TINY_IDEFICS2_SIZES

    tokenizer = build_byte_fallback_tokenizer(
        corpus, special_tokens=SPECIAL_TOKENS, pad_token="<pad>"
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    end_of_utterance_id = tokenizer.convert_tokens_to_ids("<end_of_utterance>")

    text_config = MistralConfig(
        vocab_size=_round_up(len(tokenizer), 64),
        max_position_embeddings=2048,
        sliding_window=None,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **sizes["text"],
    )
    config = Idefics2Config(
        vision_config=dict(sizes["vision"]),
        # The perceiver works in the text model's width.
        perceiver_config=dict(sizes["perceiver"], hidden_size=text_config.hidden_size,
                              rms_norm_eps=text_config.rms_norm_eps),
        text_config=text_config,
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )

    with torch.random.fork_rng():  # seed the build without touching the caller's RNG
        torch.manual_seed(seed)
        model = Idefics2ForConditionalGeneration(config)
        reinit_weights(model, init_std)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_utterance_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(save_dir)

    processor = Idefics2Processor(
        image_processor=_idefics2_image_processor(do_image_splitting),
        tokenizer=tokenizer,
        image_seq_len=config.perceiver_config.resampler_n_latents,
        chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    processor.save_pretrained(save_dir)
    return save_dir


def _idefics2_image_processor(do_image_splitting: bool):
    """Idefics2ImageProcessor, or its PIL twin when torchvision is absent (same outputs)."""
    cls = image_processor_class("Idefics2ImageProcessor")
    return cls(
        size=dict(TINY_IDEFICS2_SIZES["image_processor"]),
        do_image_splitting=do_image_splitting,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
