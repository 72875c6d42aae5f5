"""Which modules get LoRA: the target choice of each model family, as regular expressions.

PEFT matches a string ``target_modules`` with ``re.fullmatch`` against every module's path, so a pattern names
the language model's projections and keeps the vision tower out. Taught in
``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters" (Idefics2), and used by notebook
06's model choices (:mod:`vlm_helpers.model_choices`) and the tiny twins (:mod:`vlm_helpers.tiny.families`).
LLaVA-Phi-3's pattern lives with its recipe, in :mod:`vlm_helpers.llava_phi3`.
"""

from __future__ import annotations

__all__ = ["FLORENCE2_LORA_TARGETS", "IDEFICS2_LORA_TARGETS", "LANGUAGE_MODEL_LORA_TARGETS"]

#: LoRA targets for Idefics2: every projection of the Mistral text model and of the connector
#: (``modality_projection`` MLP + ``perceiver_resampler``), none in the SigLIP vision encoder.
#: The article wrote ``.*(text_model|modality_projection|perceiver_resampler).*(k_proj|q_proj|v_proj|o_proj).*|lm_head$``:
#: attention projections only (no MLP, so ``modality_projection``'s gate/up/down never matched),
#: plus ``lm_head`` (its 7,589,912 trainable parameters are exactly 32 text + 3 perceiver layers of
#: q/k/v/o plus lm_head). We also adapt the MLPs, where most of a layer's weights are, and leave
#: ``lm_head`` frozen. The pattern is anchored on the module path of transformers 5.x
#: (``model.text_model...``, ``model.connector.{modality_projection,perceiver_resampler}...``);
#: PEFT matches a string with ``re.fullmatch``.
#: Idefics2-8b: 32 text layers x 7 + 3 + 3 perceiver layers x 7 = 248 adapted modules.
IDEFICS2_LORA_TARGETS = (
    r"model\.(text_model|connector)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)

#: Every projection of a language model called ``language_model`` (LLaVA-style, Qwen2-VL, Gemma 3).
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

#: Every projection of Florence-2's BART language model: encoder and decoder self-attention, the decoder's
#: cross-attention (``encoder_attn``) and both feed-forward layers; the DaViT tower (``vision_tower``) has
#: ``qkv``/``proj``/``fc1``/``fc2`` too, which ``language_model`` keeps out.
FLORENCE2_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
