"""Pieces every tiny builder shares: saving a shrunk random checkpoint, weight re-initialisation and
the image-processor class.

Used by :mod:`vlm_helpers.tiny.florence2`, :mod:`~vlm_helpers.tiny.idefics2` and
:mod:`~vlm_helpers.tiny.llava_phi3` (tiny mode of notebooks 01-04).
"""

from __future__ import annotations


def reinit_weights(model, std: float) -> None:
    """Redraw every Linear and Embedding weight from N(0, std); biases and padding rows to zero.

    Transformers initialise with std 0.02, tuned for widths in the thousands. At width 64
    that leaves logits and cross-attention so weak that a tiny model ignores its inputs for
    hundreds of steps; std ~0.1 (about 1/sqrt(width)) lets it learn in a few dozen. Part of building
    the tiny models of the README, section "Fine-tuning small vision-language models: a notebook series"
    (tiny mode).
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
    "falling back to Pil" warning on CPU installs, which never have torchvision. For the tiny
    models of the README, section "Fine-tuning small vision-language models: a notebook series".
    """
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        name += "Pil"
    return getattr(transformers, name)


def save_shrunk_checkpoint(save_dir, model_id: str, sizes: dict, tokenizer, *, seed: int = 0,
                           init_std: float | None = None, reinit=lambda model: model, token_ids: dict | None = None,
                           reconstructed: bool = False):
    """Shrink ``model_id``'s vendored configuration by ``sizes``; save a random model laid out like the Hub.

    ``sizes`` holds the size fields to change in ``config.json`` (key ``"config"``) and in the
    processor files (keys ``"preprocessor_config.json"``, ``"processor_config.json"``). The model
    is drawn with ``seed`` (the caller's RNG is untouched); with ``init_std`` the weights of
    ``reinit(model)`` are redrawn (:func:`reinit_weights`); the weights are saved in the ``dtype`` the real
    ``config.json`` names under transformers 5's key ``dtype`` (Florence-2-base-ft: float16), as the real checkpoint
    stores them; files written by older transformers name it ``torch_dtype`` (LLaVA-Phi-3, Qwen2-VL), which is
    not applied, so those twins are stored in fp32 (every loader of the package names its dtype anyway). ``token_ids`` sets config fields that
    are ids of ``tokenizer`` (a smaller tokenizer than the real one). Then ``tokenizer`` and the
    repository's other configuration files are written (:func:`~vlm_helpers.tiny.real.write_repository_files`);
    ``reconstructed`` lets them come from ``reconstructed/``. Returns ``save_dir`` as a ``Path``.
    The vendored configurations are described in the README, section "Using the helpers with other models".
    """
    from pathlib import Path

    import torch

    from .real import build_config, model_class, real_json, shrink, write_repository_files

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    config_dict = shrink(real_json(model_id, "config.json", reconstructed=reconstructed), sizes.get("config", {}))
    config_dict.update(token_ids or {})
    with torch.random.fork_rng():  # seed the build without touching the caller's RNG
        torch.manual_seed(seed)
        model = model_class(config_dict)(build_config(config_dict))
        if init_std is not None:
            reinit_weights(reinit(model), init_std)
    if config_dict.get("dtype"):  # stored in the dtype the real config.json names (Florence-2-base-ft: float16)
        model.to(getattr(torch, config_dict["dtype"]))
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    files = {name: dict(values) for name, values in sizes.items() if name != "config"}
    write_repository_files(save_dir, model_id, files, reconstructed=reconstructed)
    return save_dir
