"""The processor of a chat VLM: which image processor class loads, and what an image costs in tokens.

:func:`processor_from_pretrained` picks the image processor class (torchvision's or the PIL one) so a
processor loads with and without torchvision; :func:`apply_image_budget` sets the settings that bound how
many image tokens a page becomes (an *image budget*), and :func:`image_tokens` counts them with the real
processor. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets";
used by the loaders of :mod:`vlm_helpers.lora` and :mod:`vlm_helpers.florence2`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vlm_helpers.supervision import is_prefix_lm_processor

__all__ = ["IMAGE_BUDGET_KEYS", "PAGE_SIZE", "apply_image_budget", "budget_text", "image_only_processor_class", "image_tokens",
           "pil_image_processor_class", "processor_from_pretrained"]

#: A scanned page at 200 dpi (US letter), the size notebook 06 prices in image tokens.
PAGE_SIZE = (1700, 2200)


#: What an image-only processor has in place of a video processor: no frames to sample (SmolVLM's
#: ``apply_chat_template`` reads these two settings even for a conversation without video).
NO_VIDEOS = SimpleNamespace(num_frames=None, fps=None)


def image_only_processor_class(processor_class):
    """``processor_class`` without its video processor, for images only; no torchvision needed.

    Qwen2-VL's and LLaVA-OneVision's processors also hold a video processor, which transformers
    builds with torchvision; on an install without it (CPU machines, this project's CI) loading
    the processor fails even when no video is ever passed. This subclass (same name, so a saved
    processor still names the real class) loads and saves only the image processor and the
    tokenizer; passing ``videos=`` to it fails. See the README, section "Using the helpers with other
    models" (Qwen2-VL).
    """
    import inspect

    attributes = [a for a in processor_class.get_attributes() if a != "video_processor"]
    video = inspect.signature(processor_class.__init__).parameters.get("video_processor")
    required = video is not None and video.default is inspect.Parameter.empty  # SmolVLM's: no default

    class ImageOnly(processor_class):
        @classmethod
        def get_attributes(cls):
            return list(attributes)

        if required:  # SmolVLM's: from_pretrained passes it None (see below); its chat template reads these settings
            video_processor = property(lambda self: NO_VIDEOS)  # a class property: never saved with the processor

    ImageOnly.video_processor_required = required  # SmolVLM's __init__ has no default for it
    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    ImageOnly.__doc__ = f"{processor_class.__name__} for images only (no video processor, no torchvision)."
    return ImageOnly


def processor_from_pretrained(path: str | Path, model_type: str, **kwargs):
    """``AutoProcessor.from_pretrained(path)``, with the image processor class chosen by the package.

    With torchvision installed (Colab) transformers picks the image processor itself: the torchvision
    ("fast") one, or the PIL one where the fast one would change results (Idefics3's Lanczos resize on an
    older torchvision). Without torchvision (CPU machines, this project's CI) it must be the PIL one, and
    :func:`pil_image_processor_class` makes sure transformers can find it: transformers 5.15 lists Idefics2's and
    Idefics3's (SmolVLM's) PIL classes as needing torchvision, so ``AutoProcessor`` failed with "None of these
    classes could be imported" although the PIL class imports fine. Families whose processor also handles videos
    get the image-only processor (:func:`image_only_processor_class`), whose video processor needs torchvision.
    ``kwargs`` (``revision``, image settings) go to ``from_pretrained``. See the README, section "Using the
    helpers with other models"."""
    import importlib.util

    import transformers
    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    processor_class = getattr(transformers, name, None) if isinstance(name, str) else None
    if importlib.util.find_spec("torchvision") is None:
        image_processor_type = _image_processor_type(path, kwargs.get("revision"))
        if image_processor_type is not None:
            pil_image_processor_class(image_processor_type)
        if processor_class is not None and "video_processor" in processor_class.get_attributes():
            image_only = image_only_processor_class(processor_class)
            if image_only.video_processor_required:  # given as None, which ProcessorMixin then drops
                kwargs = {**kwargs, "video_processor": None}
            return image_only.from_pretrained(path, **kwargs)
    return AutoProcessor.from_pretrained(path, **kwargs)


def _image_processor_type(path: str | Path, revision: str | None) -> str | None:
    """The ``image_processor_type`` a checkpoint's ``preprocessor_config.json`` names (None without one)."""
    import json

    from transformers.utils import cached_file

    found = cached_file(str(path), "preprocessor_config.json", revision=revision,
                        _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(found).read_text()).get("image_processor_type") if found else None


def pil_image_processor_class(image_processor_type: str):
    """The PIL image processor class for ``image_processor_type`` (e.g. ``"Idefics3ImageProcessor"`` ->
    ``Idefics3ImageProcessorPil``), imported from its own module and put where transformers looks it up when that
    place holds a placeholder (transformers 5.15 without torchvision). Returns the class, or None when transformers
    has no PIL variant. Used by :func:`processor_from_pretrained`; see the README, section "Using the helpers with
    other models"."""
    import importlib

    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    wanted = image_processor_type.removesuffix("Fast").removesuffix("Pil") + "Pil"
    for model_type, names in IMAGE_PROCESSOR_MAPPING_NAMES.items():
        if wanted not in (names.values() if isinstance(names, dict) else names):
            continue
        module_name = model_type_to_module_name(model_type)
        try:
            real = getattr(importlib.import_module(f"transformers.models.{module_name}.image_processing_pil_{module_name}"),
                           wanted)
        except (ImportError, AttributeError):
            continue
        for namespace in (importlib.import_module(f"transformers.models.{module_name}"), transformers):
            try:
                current = getattr(namespace, wanted)
            except AttributeError:
                current = None
            if current is None or getattr(current, "is_dummy", False):
                setattr(namespace, wanted, real)  # the placeholder names a missing torchvision this class never needs
        return real
    return None


#: The keys an image budget (:func:`load_chat_processor`'s ``image_budget``) may hold, by processor kind:
#: a pixel count per image (Qwen2-VL: ``max_pixels``/``min_pixels``, each 28x28 block one image token), or
#: the longest side the page is resized to and whether it is split into tiles (Idefics2, Idefics3/SmolVLM).
IMAGE_BUDGET_KEYS = {"pixels": ("max_pixels", "min_pixels"), "edge": ("longest_edge", "do_image_splitting")}


def apply_image_budget(processor, model_type: str, budget: dict) -> None:
    """Set the image processor's settings that bound image tokens (see :func:`vlm_helpers.lora.load_chat_processor`):
    the image budget of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets"."""
    image_processor = processor.image_processor
    if set(budget) <= set(IMAGE_BUDGET_KEYS["pixels"]) and hasattr(image_processor, "merge_size"):
        size = dict(image_processor.size)  # Qwen2-VL: shortest_edge/longest_edge are pixel counts per image
        size = {"shortest_edge": budget.get("min_pixels", size["shortest_edge"]),
                "longest_edge": budget.get("max_pixels", size["longest_edge"])}
        image_processor.size = size
    elif set(budget) <= set(IMAGE_BUDGET_KEYS["edge"]) and hasattr(image_processor, "max_image_size"):
        if "longest_edge" in budget:  # Idefics3 (SmolVLM): the page is resized to this, then cut in tiles
            image_processor.size = {"longest_edge": budget["longest_edge"]}
        if "do_image_splitting" in budget:
            image_processor.do_image_splitting = budget["do_image_splitting"]
    else:
        raise ValueError(f"image budget {budget} does not apply to {model_type!r} "
                         f"({type(image_processor).__name__}); fixed-size models (Florence-2, LLaVA) take none")


def budget_text(budget: dict[str, Any]) -> str:
    """A budget as one readable phrase, e.g. ``max_pixels=1,003,520``; ``none`` when it is empty.

    Printed in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    if not budget:
        return "none (the processor's own settings)"
    return ", ".join(f"{key}={value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{key}={value}"
                     for key, value in sorted(budget.items()))


def image_tokens(processor, size: tuple[int, int] = PAGE_SIZE) -> int:
    """How many image tokens the processor inserts for one image of ``size`` (width, height) pixels.

    Runs the real processor on a blank image of that size, with the model's own prompt (its chat template, or
    Florence-2's bare prompt, before which the processor puts the image), and counts the positions of its image
    token: what the language model reads for the image, whatever the processor's resizing, tiling and merging
    rules. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    from PIL import Image

    image = Image.new("RGB", size, "white")
    if is_prefix_lm_processor(processor):  # PaliGemma: its image token, then the text prefix
        prompt = processor.image_token
    elif getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:  # Florence-2: no chat template; the processor puts the image tokens before the prompt itself
        prompt = ""
    ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
    # the token the processor expands into the image's tokens: its own image_token_id, except where that is the
    # placeholder written in the text and the tokenizer names the expanded one (Gemma 3: <start_of_image>, then
    # 256 x <image_soft_token>)
    candidates = {processor.image_token_id, getattr(getattr(processor, "tokenizer", None), "image_token_id", None)}
    return max(int((ids == token).sum()) for token in candidates if token is not None)
