"""A tiny random LLaVA-Phi-3 (notebooks 01, 04), shrunk from xtuner/llava-phi-3-mini-hf's real config.

``xtuner/llava-phi-3-mini-hf`` is a native transformers ``LlavaForConditionalGeneration``. This
module starts from its vendored ``config.json`` (``real_configs/xtuner--llava-phi-3-mini-hf/``) and
changes sizes only, so notebook 04 loads the tiny folder and the Hub id with the same code::

    processor = load_chat_processor(path)       # AutoProcessor + prepare_llava_processor
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=bnb_config)

Module tree (transformers 5.x), the same in both::

    model.vision_tower              CLIPVisionModel   (real: hidden 1024, 24 layers, 336 px, patch 14)
    model.multi_modal_projector     linear_1 -> GELU -> linear_2
    model.language_model            LlamaModel         (real: hidden 3072, 32 layers; xtuner
                                                        converted Phi-3 to the Llama layout:
                                                        separate q/k/v/o_proj and gate/up/down_proj)
    lm_head                                            (32,064 rows in both)

Like the Hub repository the folder has no ``processor_config.json``: loaded with ``AutoProcessor``
alone it inserts one ``<image>`` token too few, exactly as the real checkpoint does, until
:func:`vlm_helpers.llava_phi3.prepare_llava_processor` sets the fields from the model config.
The repository's generation, preprocessor and tokenizer configs could not be read offline; the
builder uses the reconstructions in ``real_configs/xtuner--llava-phi-3-mini-hf/reconstructed/``
(whose README says how each was made), and Mistral-7B's SentencePiece model stands in for Phi-3's
Llama-2 one (:func:`~vlm_helpers.tiny.chat_tokenizer.sentencepiece_tokenizer`): special tokens and
their ids are the real ones (``<|end|>`` 32007, ``<image>`` 32038, pad 32039).

Image tokens: 336/14 = 24x24 = 576 per image for the real model (the CLS token is dropped by
``vision_feature_select_strategy="default"``); 56/14 = 4x4 = 16 for the tiny one.

Every ``nn.Linear`` has ``in_features % 64 == 0`` and ``out_features % 32 == 0`` (bitsandbytes'
CPU 4-bit kernels need that; QLoRA quantizes vision tower and projector too, only ``lm_head`` is
skipped).

Weights are drawn with std 0.1 (``init_std``), not transformers' 0.02: at width 64 the default
gives logits that hardly depend on the question or the image, and a tiny model that learns
nothing in the few dozen steps of tiny mode (see :func:`vlm_helpers.tiny.common.reinit_weights`).
"""

from __future__ import annotations

from pathlib import Path

from .chat_tokenizer import sentencepiece_tokenizer
from .common import save_shrunk_checkpoint
from .real import REAL_CHECKPOINTS, real_json

__all__ = ["REAL_SHAPE_LLAVA_PHI3_SIZES", "TINY_LLAVA_PHI3_SIZES", "build_llava_phi3", "build_tiny_llava_phi3"]

MODEL_ID = REAL_CHECKPOINTS["llava-phi3"]

#: Sizes of the tiny model, applied to the real config.json and preprocessor_config.json. Patch 14
#: as in the real CLIP tower, so a 56 px image gives (56/14)^2 = 16 image tokens (real: 336 px, 576).
#: The vocabulary stays the real one (32,064 rows).
TINY_LLAVA_PHI3_SIZES = {
    "config": {
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 56, "projection_dim": 64},
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 4},
    },
    "preprocessor_config.json": {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}},
}

#: Real widths, image size and vocabulary with two vision and two text layers: the real-shape test
#: tier (random weights, CPU). ``vision_feature_layer=-2`` needs at least two CLIP layers.
REAL_SHAPE_LLAVA_PHI3_SIZES = {
    "config": {"vision_config": {"num_hidden_layers": 2}, "text_config": {"num_hidden_layers": 2}},
}


def build_tiny_llava_phi3(save_dir: str | Path, *, seed: int = 0, corpus=(), init_std: float = 0.1) -> Path:
    """Build the tiny random LLaVA-Phi-3 of tiny mode (notebooks 01, 04) and save it to ``save_dir``.

    Args:
        save_dir: output folder (created if needed).
        seed: torch seed for the random weights.
        corpus: unused (the tokenizer has a real vocabulary); kept for callers of the old builder.
        init_std: std of the random ``nn.Linear`` / ``nn.Embedding`` weights (see module docstring).

    Tiny mode loads it in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
    del corpus
    return build_llava_phi3(save_dir, TINY_LLAVA_PHI3_SIZES, seed=seed, init_std=init_std)


def build_llava_phi3(save_dir: str | Path, sizes: dict, *, seed: int = 0, init_std: float | None = None) -> Path:
    """Shrink xtuner/llava-phi-3-mini-hf's vendored configuration by ``sizes``; save a random model.

    ``sizes`` has the size fields to change in ``config.json`` (key ``"config"``) and in
    ``preprocessor_config.json``. ``init_std=None`` keeps transformers' initialisation. Returns
    ``save_dir``, laid out like the Hub repository (no ``processor_config.json``, no chat template
    file). Behind :func:`build_tiny_llava_phi3` (tiny mode of ``notebooks/04_phi3_aircraft_captioning.ipynb``,
    section "The model").
    """
    tokenizer = sentencepiece_tokenizer(real_json(MODEL_ID, "tokenizer_config.json", reconstructed=True))
    return save_shrunk_checkpoint(save_dir, MODEL_ID, sizes, tokenizer, seed=seed, init_std=init_std,
                                  reconstructed=True)
