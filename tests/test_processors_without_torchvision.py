"""Every family's processor loads without torchvision, with a PIL image processor (issue 26).

This project's CI has no torchvision (it would pull several GB of CUDA wheels), and neither has a user's CPU
machine; Colab has it. transformers 5.15's ``AutoProcessor`` could not load Idefics2's and Idefics3's (SmolVLM's)
image processors there ("None of these classes could be imported ... torchvision"), although their PIL classes
need no torchvision. ``processors.processor_from_pretrained`` chooses the class itself. ``.ci/run`` runs this file in
its second environment too, on transformers 5.15 (``constraints/colab.txt``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vlm_helpers import florence2, lora, model_choices, processors
from vlm_helpers.tiny import tiny_checkpoint
from vlm_helpers.tiny.families import FAMILIES, build_family

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                                reason="torchvision is installed: transformers chooses the image processor")


@pytest.mark.parametrize("key", sorted(model_choices.MODEL_CHOICES))
def test_each_model_choice_loads_a_pil_image_processor(tiny_cache, key):
    choice = model_choices.get_model_choice(key)
    path = tiny_checkpoint(choice.tiny_name, tiny_cache)
    processor = (florence2.load_florence2(path, dtype=torch.float32)[1] if choice.kind == "florence2"
                 else lora.load_chat_processor(path))
    assert type(processor.image_processor).__name__.endswith("Pil"), type(processor.image_processor)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_other_family_loads_a_pil_image_processor(tmp_path, name):
    processor = lora.load_chat_processor(build_family(FAMILIES[name], tmp_path))
    assert type(processor.image_processor).__name__.endswith("Pil"), type(processor.image_processor)


@pytest.mark.parametrize("image_processor_type", ["Idefics2ImageProcessor", "Idefics3ImageProcessor",
                                                  "CLIPImageProcessor", "Qwen2VLImageProcessorFast"])
def test_the_pil_class_is_the_real_one_and_transformers_finds_it(image_processor_type):
    import transformers

    found = processors.pil_image_processor_class(image_processor_type)
    assert found.__name__ == image_processor_type.removesuffix("Fast") + "Pil"
    assert not getattr(found, "is_dummy", False)
    assert getattr(transformers, found.__name__) is found
