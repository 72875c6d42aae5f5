"""Pieces every tiny builder shares: weight re-initialisation and the image-processor class.

Used by :mod:`vlm_helpers.tiny.florence2`, :mod:`~vlm_helpers.tiny.idefics2` and
:mod:`~vlm_helpers.tiny.llava_phi3` (tiny mode of notebooks 01-04).
"""

from __future__ import annotations


def reinit_weights(model, std: float) -> None:
    """Redraw every Linear and Embedding weight from N(0, std); biases and padding rows to zero.

    Transformers initialise with std 0.02, tuned for widths in the thousands. At width 64
    that leaves logits and cross-attention so weak that a tiny model ignores its inputs for
    hundreds of steps; std ~0.1 (about 1/sqrt(width)) lets it learn in a few dozen.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def image_processor_class(name: str):
    """The transformers image processor ``name``, or its PIL twin when torchvision is absent.

    Both give the same outputs; asking for the PIL one directly avoids transformers'
    "falling back to Pil" warning on CPU installs, which never have torchvision.
    """
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        name += "Pil"
    return getattr(transformers, name)
