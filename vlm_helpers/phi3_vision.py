"""Which Phi-3 vision model to load on today's stack, and how to refuse the ones that break.

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

DEFAULT_MODEL_ID = "xtuner/llava-phi-3-mini-hf"
MICROSOFT_CHECKPOINTS = ("microsoft/Phi-3-vision-128k-instruct", "microsoft/Phi-3.5-vision-instruct")
#: First transformers version whose cache API breaks the Microsoft remote code.
REMOTE_CODE_BREAKS_AT = (4, 49)

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


class RemoteCodeRefused(RuntimeError):
    """A Microsoft Phi-3 vision checkpoint was asked for in a way we will not load."""


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def check_model_choice(model_id: str, *, trust_remote_code: bool = False, revision: str | None = None,
                       transformers_version: str | None = None) -> None:
    """Raise :class:`RemoteCodeRefused` with what to do, unless ``model_id`` can be loaded here.

    Native checkpoints (anything not in :data:`MICROSOFT_CHECKPOINTS`) always pass.
    """
    if model_id not in MICROSOFT_CHECKPOINTS:
        return
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    advice = (f"Use the default native checkpoint instead: MODEL_ID = {DEFAULT_MODEL_ID!r} "
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


def prepare_llava_processor(processor, model) -> list[str]:
    """Fill in what a LLaVA-Phi-3 processor may lack; return the names of the fields set.

    xtuner's checkpoint ships no processor config, and a ``LlavaProcessor`` without
    ``patch_size`` fails when it expands ``<image>``. The values come from the model's
    config, so they always agree with the weights. The chat template is set to
    :data:`PHI3_LLAVA_CHAT_TEMPLATE`: the checkpoint's own (copied from Phi-3-mini) accepts
    only plain-string messages, so it cannot place an image.
    """
    fixed = []
    wanted = {"patch_size": model.config.vision_config.patch_size,
              "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
              "num_additional_image_tokens": 1}
    for name, value in wanted.items():
        if getattr(processor, name, None) is None:
            setattr(processor, name, value)
            fixed.append(name)
    if getattr(processor, "chat_template", None) != PHI3_LLAVA_CHAT_TEMPLATE:
        processor.chat_template = PHI3_LLAVA_CHAT_TEMPLATE
        fixed.append("chat_template")
    return fixed
