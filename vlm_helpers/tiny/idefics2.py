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

from .chat_tokenizer import sentencepiece_tokenizer
from .common import save_shrunk_checkpoint
from .real import REAL_CHECKPOINTS, real_json

__all__ = ["REAL_SHAPE_IDEFICS2_SIZES", "TINY_IDEFICS2_SIZES", "build_idefics2",
           "build_tiny_idefics2", "idefics2_chat_template"]

MODEL_ID = REAL_CHECKPOINTS["idefics2"]

def idefics2_chat_template() -> str:
    """The chat template HuggingFaceM4/idefics2-8b publishes (in its processor_config.json).

    E.g. ``"User:<image>What is the total?<end_of_utterance>\nAssistant: 12.50<end_of_utterance>\n"``:
    the role capitalised, ":" when the turn starts with an image and ": " otherwise, every turn
    closed by ``<end_of_utterance>\n``, and ``"Assistant:"`` as the generation prompt. Message
    content must be a list of ``{"type": "image"}`` / ``{"type": "text", ...}`` parts. The chat shown in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    return real_json(MODEL_ID, "processor_config.json")["chat_template"]

# Sizes of the tiny model, applied to the real config.json (all Linear shapes are multiples of
# 64 in / 32 out, see module docstring). The vocabulary stays the real one (32,003 tokens).
TINY_IDEFICS2_SIZES = {
    "config": {
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 64},
        # hidden_size as the text model's, as in the real config (where both are 4096): otherwise
        # transformers "repairs" the perceiver and gives it the text model's rms_norm_eps (1e-5, real 1e-6)
        "perceiver_config": {"hidden_size": 64, "resampler_n_latents": 4, "resampler_depth": 2, "resampler_n_heads": 2,
                             "resampler_head_dim": 32, "num_key_value_heads": 1},
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2},
    },
    # Images are resized so that 32 <= side <= 64 px; a 64x64 image gives (64/14)^2 -> 4x4 patches
    # (patch 14 as in the real model), which the perceiver compresses to 4 image tokens.
    "preprocessor_config.json": {"size": {"shortest_edge": 32, "longest_edge": 64}},
    "processor_config.json": {"image_seq_len": 4},
}

#: Real widths, image size, latents and vocabulary, with one vision, one perceiver and one text
#: layer: the real-shape test tier (random weights, CPU).
REAL_SHAPE_IDEFICS2_SIZES = {
    "config": {"vision_config": {"num_hidden_layers": 1}, "perceiver_config": {"resampler_depth": 1},
               "text_config": {"num_hidden_layers": 1}},
}


def build_tiny_idefics2(save_dir: str | Path, *, seed: int = 0, do_image_splitting: bool = False, corpus=(),
                        init_std: float = 0.1) -> Path:
    """Build the tiny random Idefics2 of tiny mode (notebook 03) and save it to ``save_dir``.

    Args:
        save_dir: output folder (created if needed).
        seed: torch seed for the random weights.
        do_image_splitting: stored in the image processor config. With True every image becomes
            4 crops + the full image, i.e. 5 x (latents + 2) image-related tokens.
        corpus: unused (the tokenizer is the real one); kept for callers of the old builder.
        init_std: std of the random ``nn.Linear`` / ``nn.Embedding`` weights (see module docstring).

    Tiny mode loads it in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits".
    """
    del corpus
    return build_idefics2(save_dir, TINY_IDEFICS2_SIZES, seed=seed, do_image_splitting=do_image_splitting,
                          init_std=init_std)


def build_idefics2(save_dir: str | Path, sizes: dict, *, seed: int = 0, do_image_splitting: bool | None = None,
                   init_std: float | None = None) -> Path:
    """Shrink HuggingFaceM4/idefics2-8b's vendored configuration by ``sizes`` and save a random model.

    ``sizes`` has the size fields to change in ``config.json`` (key ``"config"``) and in the
    processor files; everything else is the published configuration. ``do_image_splitting=None``
    keeps the published value (True). ``init_std=None`` keeps transformers' initialisation.
    Returns ``save_dir``, laid out like the Hub repository. Behind :func:`build_tiny_idefics2` (tiny mode of
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits").
    """
    tokenizer = sentencepiece_tokenizer(real_json(MODEL_ID, "tokenizer_config.json"))
    save_dir = save_shrunk_checkpoint(save_dir, MODEL_ID, sizes, tokenizer, seed=seed, init_std=init_std)
    if do_image_splitting is not None:
        _set_json_field(save_dir / "preprocessor_config.json", "do_image_splitting", do_image_splitting)
    return save_dir


def _set_json_field(path: Path, key: str, value) -> None:
    import json

    values = json.loads(path.read_text())
    values[key] = value
    path.write_text(json.dumps(values, indent=2) + "\n")
