"""Everything LLaVA-Phi-3: which Phi-3 vision model loads on today's stack, its LoRA targets, its processor.

Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``.

The seed article fine-tunes Microsoft's ``Phi-3-vision-128k-instruct``. That model is not part
of transformers: it runs Microsoft's own modelling code (``trust_remote_code=True``), and
that code calls ``DynamicCache.get_max_length``, which transformers removed in 4.49. On
transformers 5 it fails at the first ``generate``. ``xtuner/llava-phi-3-mini-hf`` is a native
LLaVA checkpoint with the architecture the article describes: a CLIP ViT-L/14 (336 px) vision
encoder, an MLP projector and Phi-3-mini as the language model. It is our default.

The Microsoft checkpoints stay reachable through an explicit opt-in: ``trust_remote_code=True``
*and* a pinned commit (40 hex characters, so the code you run cannot change under you),
accepted only when the installed transformers is older than 4.49.
"""

from __future__ import annotations

import re

#: The native transformers conversion of LLaVA-Phi-3-mini the series fine-tunes (notebook 04).
LLAVA_PHI3_MODEL_ID = "xtuner/llava-phi-3-mini-hf"
MICROSOFT_CHECKPOINTS = ("microsoft/Phi-3-vision-128k-instruct", "microsoft/Phi-3.5-vision-instruct")
#: First transformers version whose cache API breaks the Microsoft remote code.
REMOTE_CODE_BREAKS_AT = (4, 49)

#: LoRA targets for LLaVA-Phi-3: every projection of the language model's decoder layers, none in
#: the CLIP tower or the projector. xtuner converted Phi-3-mini to the **Llama layout** (its
#: ``text_config`` is ``model_type: "llama"``): the decoder has separate ``q_proj``, ``k_proj``,
#: ``v_proj``, ``o_proj`` and ``gate_proj``, ``up_proj``, ``down_proj``, not Phi-3's fused
#: ``qkv_proj`` / ``gate_up_proj`` (those names match nothing in this checkpoint, so a list written
#: for Microsoft's Phi-3 adapts only ``o_proj`` and ``down_proj``: 2 of 7 projection types). The
#: CLIP tower has ``q_proj``/``k_proj``/``v_proj`` too, hence the anchor on ``language_model``.
#: On the real model: 32 layers x 7 = 224 adapted modules (r=16: 29.9 M trainable parameters).
LLAVA_PHI3_LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)

#: Phi-3 chat format with LLaVA's ``<image>`` placeholder (the format of xtuner's model card).
PHI3_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def default_4bit(preset_name: str) -> bool:
    """Whether LLaVA-Phi-3 (notebook 04, ``vlm-train --recipe phi3-aircraft``) stores its frozen weights in
    4-bit: on a T4 only, where 8 GB of 16-bit weights plus activations do not fit 15 GB reliably.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The machine and the preset".
    """
    return preset_name == "t4"


class RemoteCodeRefused(RuntimeError):
    """A Microsoft Phi-3 vision checkpoint was asked for in a way we will not load.

    Shown in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Which Phi-3 vision model?".
    """


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def check_model_choice(model_id: str, *, trust_remote_code: bool = False, revision: str | None = None,
                       transformers_version: str | None = None) -> None:
    """Raise :class:`RemoteCodeRefused` with what to do, unless ``model_id`` can be loaded here.

    Native checkpoints (anything not in :data:`MICROSOFT_CHECKPOINTS`) always pass. Taught in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Which Phi-3 vision model?".
    """
    if model_id not in MICROSOFT_CHECKPOINTS:
        return
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    advice = (f"Use the default native checkpoint instead: MODEL_ID = {LLAVA_PHI3_MODEL_ID!r} "
              "(same architecture: CLIP ViT-L/14-336 + MLP projector + Phi-3-mini).")
    if not trust_remote_code:
        raise RemoteCodeRefused(
            f"{model_id} runs Microsoft's own modelling code, which needs trust_remote_code=True: "
            f"opt in explicitly only if you have read that code. {advice}")
    if revision is None or not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise RemoteCodeRefused(
            f"{model_id} with trust_remote_code=True needs revision=<a 40-character commit hash> "
            f"(got {revision!r}): a branch name like 'main' lets the code you execute change at any time.")
    if _version_tuple(transformers_version) >= REMOTE_CODE_BREAKS_AT:
        breaks = ".".join(map(str, REMOTE_CODE_BREAKS_AT))
        raise RemoteCodeRefused(
            f"{model_id}'s remote code calls DynamicCache.get_max_length, removed in transformers {breaks}; "
            f"you have transformers {transformers_version}. Either {advice[0].lower() + advice[1:]} "
            f"Or create a separate environment with pip install 'transformers<{breaks}' for this checkpoint "
            "(the rest of this series needs transformers 5).")


#: Tokens a LLaVA vision tower puts before its patch features, by vision ``model_type``: CLIP has a
#: CLS token (which ``vision_feature_select_strategy="default"`` drops again), SigLIP has none.
ADDITIONAL_IMAGE_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}


def llava_processor_fields(model_config) -> dict:
    """What a ``LlavaProcessor`` must be told so that it inserts as many ``<image>`` tokens as the
    vision tower gives features: patch size, feature strategy and the CLS-like extra tokens. What
    :func:`prepare_llava_processor` sets, taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section
    "The model"."""
    vision = model_config.vision_config
    if vision.model_type not in ADDITIONAL_IMAGE_TOKENS:
        raise ValueError(f"unknown LLaVA vision tower {vision.model_type!r}: add it to ADDITIONAL_IMAGE_TOKENS")
    return {"patch_size": vision.patch_size,
            "vision_feature_select_strategy": model_config.vision_feature_select_strategy,
            "num_additional_image_tokens": ADDITIONAL_IMAGE_TOKENS[vision.model_type]}


def prepare_llava_processor(processor, model_or_config) -> list[str]:
    """Make a LLaVA-Phi-3 processor agree with its model; return what was changed (``"name: old -> new"``).

    ``xtuner/llava-phi-3-mini-hf`` ships no ``processor_config.json``. ``LlavaProcessor`` then
    falls back to ``patch_size=None`` (it cannot expand ``<image>`` at all) and
    ``num_additional_image_tokens=0``: 336/14 = 24x24 patches + 0 - 1 (the CLS token the
    "default" strategy drops) = 575 ``<image>`` tokens, while the CLIP tower yields 576 features,
    and the first forward pass fails with "Image features and image tokens do not match". So every
    field is compared with the value the model's config implies and set when it differs, not only
    when it is missing. A missing or text-only chat template is set to :data:`PHI3_LLAVA_CHAT_TEMPLATE`:
    the xtuner repository has no processor-level template, and a tokenizer template copied from the
    text-only Phi-3-mini (if its tokenizer_config.json carries one) cannot place an image. A template
    that places images (llava-hf's own LLaVA checkpoints) is kept.
    :func:`vlm_helpers.lora.load_chat_processor` (and so ``load_chat_vlm``) calls this for
    every LLaVA checkpoint. ``model_or_config``: the model or its config. Taught in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
    config = getattr(model_or_config, "config", model_or_config)
    changed = []
    for name, value in llava_processor_fields(config).items():
        old = getattr(processor, name, None)
        if old != value:
            setattr(processor, name, value)
            changed.append(f"{name}: {old!r} -> {value!r}")
    if not _template_places_images(processor):
        old = "none" if getattr(processor, "chat_template", None) is None else "a template without images"
        processor.chat_template = PHI3_LLAVA_CHAT_TEMPLATE
        changed.append(f"chat_template: {old} -> PHI3_LLAVA_CHAT_TEMPLATE")
    return changed


def _template_places_images(processor) -> bool:
    """Whether the processor's chat template writes the image token for an image part.

    Checkpoints with a real LLaVA template (llava-hf/llava-1.5-7b-hf's ``USER: <image>\\n...``) keep it;
    only a missing or text-only template is replaced by :data:`PHI3_LLAVA_CHAT_TEMPLATE`.
    """
    if not getattr(processor, "chat_template", None):
        return False
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    from jinja2 import TemplateError

    try:
        return processor.image_token in processor.apply_chat_template(messages, add_generation_prompt=True)
    except (TemplateError, TypeError, KeyError, ValueError):  # a template that cannot render an image part
        return False


def image_tokens_per_image(processor, image_size: int) -> int:
    """How many image tokens ``processor`` inserts for one ``image_size`` x ``image_size`` image.

    The 576 per photo of ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Batches, and what the loss
    may see".
    """
    from PIL import Image

    token = processor.image_token
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    ids = processor(text=[token], images=[Image.new("RGB", (image_size, image_size))])["input_ids"][0]
    return sum(1 for i in ids if i == token_id)
