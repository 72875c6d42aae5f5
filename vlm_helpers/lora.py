"""Loading chat vision-language models in 4-bit (QLoRA), adding LoRA, saving and merging adapters.

Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb`` (Idefics2) and reused by
``notebooks/04_phi3_aircraft_captioning.ipynb`` (LLaVA-Phi-3). Full mode passes a Hub id,
tiny mode the folder from :func:`vlm_helpers.tiny.tiny_checkpoint`; the code path is the same.

QLoRA in one paragraph: the base weights are stored in 4-bit NF4 ("normal float", with the
quantization constants quantized again: double quantization) and never change; each selected
``nn.Linear`` gets a small trainable update ``B @ A`` (rank ``r``) in 16/32-bit next to it. The
matmuls run in the *compute dtype*: bf16 on compute capability >= 8.0, fp16 below (a T4), fp32 on
CPU, i.e. the preset's dtype.

The loaders take plain values (``dtype``, ``attn_implementation``, ``device``), so they can be copied
into a project without the series' presets: a notebook passes ``preset.dtype`` and friends.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from vlm_helpers.freezing import count_parameters, forward_without_autograd
from vlm_helpers.revisions import revision_kwargs
from vlm_helpers.processors import IMAGE_BUDGET_KEYS, apply_image_budget, processor_from_pretrained
from vlm_helpers.runtime import attention_by_part, torch_dtype

__all__ = ["IDEFICS2_MODEL_ID", "add_lora", "bnb_4bit_config", "build_lora_config", "check_quantization_config",
           "default_image_splitting", "disable_bnb_cpu_repacking", "load_adapter", "load_chat_processor",
           "load_chat_vlm", "lora_module_names", "lora_report", "merge_for_export", "output_layer_name",
           "quantization_report", "untie_output_layer"]

IDEFICS2_MODEL_ID = "HuggingFaceM4/idefics2-8b"

#: Attribute names a vision encoder goes by, for models whose configuration has no ``vision_config``
#: (remote-code models such as Microsoft's Phi-3-vision: ``img_processor``); see :func:`vision_encoders`.
_VISION_ENCODER_NAMES = ("vision_model", "vision_tower", "visual", "img_processor", "vision_encoder")


def bnb_4bit_config(compute_dtype: str | torch.dtype):
    """4-bit NF4 with double quantization, computing in ``compute_dtype`` (QLoRA's recipe).

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits".
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
    )


def check_quantization_config(config, dtype: str | torch.dtype):
    """Return ``config`` (a ``BitsAndBytesConfig``) if it is QLoRA's kind: 4-bit weights computing in ``dtype``;
    ``ValueError`` naming what differs otherwise (8-bit storage, or a compute dtype that is not the preset's: fp16
    matmuls on a bf16 GPU, or bf16 on a T4, which has no bf16 units). The check of
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits"."""
    if not getattr(config, "load_in_4bit", False):
        raise ValueError(f"quantization_config must store the weights in 4 bits (load_in_4bit=True), got "
                         f"{type(config).__name__} with load_in_4bit={getattr(config, 'load_in_4bit', None)}")
    compute = getattr(config, "bnb_4bit_compute_dtype", None)
    if compute != torch_dtype(dtype):
        raise ValueError(f"quantization_config computes in {compute}, the preset in {torch_dtype(dtype)}: pass "
                         f"bnb_4bit_compute_dtype=preset.torch_dtype")
    return config


def default_image_splitting(preset_name: str) -> bool:
    """Idefics2's image splitting (4 crops + the whole image = 5x the image tokens, 320 instead of
    64): on for a big GPU (preset ``a100``), off elsewhere (a T4's 15 GB, CPU, tiny mode), as the article did.

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits".
    """
    return preset_name == "a100"


def disable_bnb_cpu_repacking(model: nn.Module) -> int:
    """Stop bitsandbytes' CPU inference repacking on every ``Linear4bit``; return how many.

    The trap: on CPUs with AVX512-BF16, ``Linear4bit.forward`` in eval mode with an input that
    needs no grad (``generate``, or any evaluation before training) rewrites its 4-bit weight into
    a CPU-only layout, for good. Later forwards use a kernel with no autograd support, so no
    gradient flows *through* the frozen layer, and LoRA adapters before it silently stop learning
    (tests/test_tiny_chat_models.py shows 0 of 12 q/k/v/gate/up adapters getting a gradient).
    Switching ``support_avx512bf16_for_cpu`` off keeps the ordinary, differentiable path. GPUs are
    unaffected; the flag only matters for CPU inputs. The trap is described in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits".
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_chat_processor(checkpoint: str | Path, *, do_image_splitting: bool | None = None,
                        image_longest_edge: int | None = None, image_budget: dict | None = None,
                        revision: str | None = None):
    """The processor of a chat VLM, with its image settings applied (see :func:`load_chat_vlm`).

    ``do_image_splitting=None`` keeps the checkpoint's setting; both settings are Idefics2 only.
    ``image_budget`` holds the processor settings that bound how many image tokens a page costs, by name:
    ``{"max_pixels": 1280 * 28 * 28}`` for Qwen2-VL (an image is resized to at most that many pixels, one
    token per 28x28 block; the published configuration allows 12,845,056, so a 1700x2200 page costs 4,819
    tokens), ``{"longest_edge": 980, "do_image_splitting": False}`` for Idefics2 and Idefics3 (SmolVLM).
    Empty or ``None``: the checkpoint's own settings. A budget the processor has no such setting for
    (Florence-2 and LLaVA take fixed-size images) is refused. The settings are kept on the processor, so
    :func:`save_adapter` saves them and :func:`load_adapter` brings them back.
    LLaVA processors get :func:`vlm_helpers.llava_phi3.prepare_llava_processor` (fields from the
    model's config), so they insert as many image tokens as the vision tower yields features.
    ``revision``: as for :func:`load_chat_vlm`.
    The image settings are taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4
    bits"; the budget in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets";
    the LLaVA fields in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
    from transformers import AutoConfig

    hub = revision_kwargs(checkpoint, revision)  # {"revision": <pin>} for a Hub id, {} for a local folder
    config = AutoConfig.from_pretrained(checkpoint, **hub)
    model_type = config.model_type
    budget = dict(image_budget or {})
    known = {key for keys in IMAGE_BUDGET_KEYS.values() for key in keys}
    if set(budget) - known:
        raise ValueError(f"unknown image budget setting(s) {sorted(set(budget) - known)}; known: {sorted(known)}")
    if model_type == "idefics2":  # the budget's values, unless given as arguments
        do_image_splitting = budget.get("do_image_splitting") if do_image_splitting is None else do_image_splitting
        image_longest_edge = budget.get("longest_edge") if image_longest_edge is None else image_longest_edge
        budget = {key: value for key, value in budget.items() if key not in IMAGE_BUDGET_KEYS["edge"]}
    processor_kwargs: dict = {}
    if model_type == "idefics2":
        if do_image_splitting is not None:
            processor_kwargs["do_image_splitting"] = do_image_splitting
        if image_longest_edge is not None:
            from transformers import AutoImageProcessor

            size = dict(AutoImageProcessor.from_pretrained(checkpoint, **hub).size)
            processor_kwargs["size"] = {"longest_edge": image_longest_edge,
                                        "shortest_edge": min(size.get("shortest_edge", image_longest_edge),
                                                             image_longest_edge)}
    elif do_image_splitting or image_longest_edge is not None:
        raise ValueError(f"do_image_splitting / image_longest_edge apply to Idefics2, not {model_type!r}")
    processor = processor_from_pretrained(checkpoint, model_type, **hub, **processor_kwargs)
    if budget:
        apply_image_budget(processor, model_type, budget)
    if model_type == "llava":  # xtuner's LLaVA-Phi-3 has no processor_config.json: see prepare_llava_processor
        from vlm_helpers.llava_phi3 import prepare_llava_processor

        prepare_llava_processor(processor, config)
    return processor


def load_chat_vlm(checkpoint: str | Path, *, dtype: str | torch.dtype, attn_implementation: str, quantize_4bit: bool,
                  device: str = "cpu", device_map=None, do_image_splitting: bool | None = None,
                  image_longest_edge: int | None = None, image_budget: dict | None = None,
                  revision: str | None = None, quantization_config=None):
    """Load a chat VLM and its processor with the Auto classes; return ``(model, processor)``.

    Args:
        checkpoint: Hub id (``IDEFICS2_MODEL_ID``) or a local folder (tiny mode, saved adapters).
        dtype: the compute dtype (the preset's: bf16 from compute capability 8.0, fp16 below, fp32 on CPU).
        attn_implementation: ``"sdpa"``, ``"flash_attention_2"`` or ``"eager"`` (the preset's); FlashAttention-2 goes to
            the language model only, the vision tower keeps ``sdpa`` (:func:`vlm_helpers.runtime.attention_by_part`).
        quantize_4bit: load the weights in 4-bit NF4 (QLoRA); otherwise in ``dtype``.
        device: ``"cuda"`` puts the weights on GPU 0 (unless ``device_map`` says otherwise).
        device_map: where the weights go; default GPU 0 when ``device="cuda"``, CPU otherwise.
        do_image_splitting: Idefics2 only; ``None`` keeps the checkpoint's setting (the notebooks pass
            :func:`default_image_splitting` of their preset).
        image_longest_edge: Idefics2 only; resize images so the longest side is at most this
            (8B default 980 px; 490 cuts the vision encoder's work by 4 on a T4).
        image_budget: the processor settings that bound a page's image tokens (see
            :func:`load_chat_processor`), e.g. ``{"max_pixels": 1280 * 28 * 28}`` for Qwen2-VL; notebook 06
            passes its model choice's budget for the preset (``ModelChoice.image_budget``).
        revision: the commit of a Hub id to load (``"main"`` for the newest files, at your own risk); None loads
            a default id at its pinned commit, any other id unpinned (:func:`vlm_helpers.revisions.hub_revision`;
            README, section "Pinned revisions"). A local folder gets none.
        quantization_config: with ``quantize_4bit``, your own ``BitsAndBytesConfig`` (notebook 03 writes it out)
            instead of :func:`bnb_4bit_config`'s; it must store 4-bit weights and compute in ``dtype``
            (``ValueError`` otherwise).

    LLaVA checkpoints get :func:`vlm_helpers.llava_phi3.prepare_llava_processor`, so the processor
    inserts exactly as many image tokens as the vision tower yields features.

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits", and used again in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model", and
    ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets" (with a budget).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    quantization = check_quantization_config(quantization_config, dtype) if quantization_config is not None else None
    if quantization is not None and not quantize_4bit:
        raise ValueError("quantization_config is QLoRA's 4-bit storage: pass quantize_4bit=True with it")
    hub = revision_kwargs(checkpoint, revision)  # {"revision": <pin>} for a Hub id, {} for a local folder
    processor = load_chat_processor(checkpoint, do_image_splitting=do_image_splitting,
                                    image_longest_edge=image_longest_edge, image_budget=image_budget,
                                    revision=revision)

    if device_map is None:
        device_map = {"": 0} if device == "cuda" else None
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint,
        **hub,
        dtype=torch_dtype(dtype),
        # FlashAttention-2 for the language model only, sdpa for the vision tower (runtime.attention_by_part)
        attn_implementation=attention_by_part(AutoConfig.from_pretrained(checkpoint, **hub), attn_implementation),
        quantization_config=(quantization or bnb_4bit_config(dtype)) if quantize_4bit else None,
        device_map=device_map,
    )
    if quantize_4bit:
        disable_bnb_cpu_repacking(model)
    return model, processor


def vision_encoders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the outermost vision-encoder modules of ``model``; raises if there is none.

    Found by structure, not by a list of names: a vision-language model's configuration has a
    ``vision_config``, and its encoder is the sub-model built from it (a ``PreTrainedModel`` whose
    ``config`` is of that class): ``vision_model`` (Idefics2/3, Mllama), ``vision_tower`` (LLaVA,
    Gemma 3, PaliGemma), ``visual`` (Qwen2-VL, Qwen2.5-VL), whatever the attribute is called. Models
    without a ``vision_config`` (remote code) fall back to the usual attribute names. Finding
    nothing is an error, so :func:`add_lora`'s guard can never silently check nothing. The guard is
    taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters"; the families in the
    README, section "Using the helpers with other models".
    """
    from transformers import PreTrainedModel

    vision_config = getattr(getattr(model, "config", None), "vision_config", None)
    if vision_config is not None:
        def is_encoder(name, module):
            return isinstance(module, PreTrainedModel) and isinstance(getattr(module, "config", None),
                                                                       type(vision_config))
    else:
        def is_encoder(name, module):
            return name.rsplit(".", 1)[-1] in _VISION_ENCODER_NAMES
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name and is_encoder(name, module) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    if not found:
        raise ValueError(f"Found no vision encoder in {type(model).__name__} (no sub-model built from its "
                         f"vision_config, no module named {' / '.join(_VISION_ENCODER_NAMES)}): is it a "
                         "vision-language model? Without it, nothing guards the encoder against LoRA.")
    return found


def _configs(config) -> list:
    """``config`` and its sub-configurations (``text_config``, ``vision_config``, ...), at any depth."""
    found = [config]
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            found += _configs(sub)
    return found


def output_layer_name(model: nn.Module) -> str | None:
    """The attribute name of the model's output layer (``"lm_head"``), or None: what ``modules_to_save`` names to
    train it whole (``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint")."""
    output = model.get_output_embeddings()
    return next((name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is output), None)


def untie_output_layer(model: nn.Module) -> bool:
    """Give a tied output layer (``lm_head``) its own copy of the embedding weights; True if it was tied.

    Why: training ``lm_head`` (``modules_to_save``) of a model that ties it to the input embeddings
    trains a copy of a *shared* weight. PEFT warns that this breaks merging, and it does: a merged
    model saved with ``tie_word_embeddings`` still set is loaded back with the head re-tied to the
    untrained embeddings, and the trained head is silently gone. Untying (a copy, and the model's
    top-level ``tie_word_embeddings`` cleared) makes the head a weight of its own, so the adapter, the
    reloaded model and :func:`merge_for_export`'s merged model all keep it. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint".
    """
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or embeddings is None or output.weight is not embeddings.weight:
        return False
    output.weight = nn.Parameter(output.weight.detach().clone(), requires_grad=output.weight.requires_grad)
    # the top-level flag ties the head; a composite model's text config may use its own flag for other ties
    # (Florence-2's BART: encoder and decoder embeddings to ``shared``), which must stay as they are
    model.config.tie_word_embeddings = False
    return True


def build_lora_config(target_modules: str | list[str], *, r: int = 8, alpha: int = 8, dropout: float = 0.1,
                use_dora: bool = False, modules_to_save: list[str] | None = None, init_lora_weights: bool | str = True):
    """PEFT's ``LoraConfig`` for rank-``r`` adapters ``B @ A`` (scaled by ``alpha / r``) on the modules
    ``target_modules`` matches (``re.fullmatch`` for a string). What :func:`add_lora` builds from its arguments;
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters", writes the same config out."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, use_dora=use_dora,
                      modules_to_save=modules_to_save, init_lora_weights=init_lora_weights)


def add_lora(model: nn.Module, *, target_modules: str | list[str] | None = None, r: int | None = None,
             alpha: int | None = None, dropout: float | None = None, use_dora: bool | None = None, quantized: bool,
             gradient_checkpointing: bool = False, modules_to_save: list[str] | None = None,
             init_lora_weights: bool | str | None = None, lora_config=None):
    """Wrap ``model`` with LoRA adapters on ``target_modules``; everything else stays frozen.

    The adapters are described either by the arguments (defaults r=8, alpha=8, dropout=0.1, no DoRA,
    ``init_lora_weights=True``: :func:`build_lora_config`) or by your own PEFT ``LoraConfig`` as ``lora_config`` (notebook
    03 writes one out), not both (``ValueError``); a config without ``target_modules`` is refused too.

    ``quantized=True`` first runs PEFT's ``prepare_model_for_kbit_training`` (freezes the base,
    keeps norms and the non-quantized layers in fp32). ``gradient_checkpointing`` (from
    ``preset.gradient_checkpointing``) recomputes activations in the backward pass, with
    ``use_reentrant=False``: the reentrant variant needs the *inputs* to require grad and
    otherwise silently gives LoRA no gradient; the configuration's ``use_cache`` is switched off for
    training (a checkpointed forward cannot fill a cache; ``generate`` still uses one). ``modules_to_save`` trains whole modules
    (e.g. ``["lm_head"]``) next to the adapters and saves them with the adapter. A model whose output
    layer shares its weight with the input embeddings (Florence-2, Qwen2-VL-2B) is untied first
    (:func:`untie_output_layer`), so training the head leaves the embeddings as they were. Trainable
    weights left in 16 bits (a ``modules_to_save`` copy of a fp16/bf16 model) are made fp32, as PEFT makes
    its adapters: fp16 gradients cannot be unscaled on a T4, and bf16 rounds small updates away.
    Raises if an adapter or trainable weight would land in the vision encoder; the frozen encoder then runs
    without autograd (:func:`vlm_helpers.freezing.forward_without_autograd`), so no backward pass goes
    through it, with or without gradient checkpointing.

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters", and
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "LoRA on the language model only".
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    settings = {"target_modules": target_modules, "r": r, "alpha": alpha, "dropout": dropout, "use_dora": use_dora,
                "modules_to_save": modules_to_save, "init_lora_weights": init_lora_weights}
    if lora_config is None:
        if target_modules is None:
            raise ValueError("add_lora needs target_modules (which modules get adapters), or a LoraConfig as lora_config")
        lora_config = build_lora_config(**{k: v for k, v in settings.items() if v is not None})
    else:
        given = sorted(name for name, value in settings.items() if value is not None)
        if given:
            raise ValueError(f"pass the adapters' settings in lora_config or as arguments, not both: got {given} too")
        if not lora_config.target_modules:
            raise ValueError("lora_config names no target_modules: which modules get adapters?")
    modules_to_save = lora_config.modules_to_save
    encoders = vision_encoders(model)  # before wrapping: an error names the model's own class
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.requires_grad_(False)
    if gradient_checkpointing:
        # transformers 5.23 renamed gradient_checkpointing_enable (a deprecated alias until v6)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # a training forward cannot fill a cache it recomputes: say so in the configuration, or every model
        # prints "use_cache=True is incompatible with gradient checkpointing" on its first step (generation
        # keeps its cache: generate() takes use_cache from the generation config)
        for config in _configs(model.config):
            if getattr(config, "use_cache", None):
                config.use_cache = False
    if modules_to_save and output_layer_name(model) in modules_to_save:
        untie_output_layer(model)
    model = get_peft_model(model, lora_config)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()
    for name, encoder in encoders:  # the same module objects, now inside the PEFT wrapper
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(f"LoRA reached the vision encoder {name} ({trainable[:3]}...): narrow target_modules")
        # frozen, and now also outside autograd: PEFT marked its patch embeddings' output as requiring a
        # gradient (enable_input_require_grads), which would back-propagate through the whole tower
        forward_without_autograd(encoder)
    return model


def quantization_report(model: nn.Module) -> str:
    """How many linear layers are stored in 4-bit (bitsandbytes ``Linear4bit``), and which are not.

    The line notebooks 03 and 04 print after loading, so the 4-bit path is visibly taken:
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits", and
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model".
    """
    four_bit, plain = 0, []
    for name, module in model.named_modules():
        if type(module).__name__ == "Linear4bit":
            four_bit += 1
        elif isinstance(module, nn.Linear):
            plain.append(name)
    shown = ", ".join(plain[:4]) + (f" and {len(plain) - 4} more" if len(plain) > 4 else "")
    return f"{four_bit} linear layers stored in 4-bit NF4; not quantized: {shown or 'none'}"


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA adapter, PEFT's wrapper prefix removed.

    What :func:`lora_report` summarises in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA
    adapters".
    """
    names = [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]
    return [re.sub(r"^base_model\.model\.", "", name) for name in names]


def lora_report(model: nn.Module) -> str:
    """Which modules got LoRA (layer numbers folded into ``*``) and how many parameters train.

    Printed in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "LoRA adapters", and
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "LoRA on the language model only".
    """
    patterns = Counter(re.sub(r"\.\d+\.", ".*.", name) for name in lora_module_names(model))
    lines = [f"LoRA on {sum(patterns.values())} modules:"]
    lines += [f"  {count:3d} x {pattern}" for pattern, count in sorted(patterns.items())]
    lines.append(f"parameters: {count_parameters(model)}")
    return "\n".join(lines)


#: The tag an adapter trained on a tiny random twin carries (the model card's tiny-mode tag too).


def _untie_if_trained(model: nn.Module, adapter_path: str | Path) -> None:
    """Untie the output layer when the saved adapter trained it (as :func:`add_lora` did for training)."""
    from peft import PeftConfig

    if output_layer_name(model) in (PeftConfig.from_pretrained(str(adapter_path)).modules_to_save or ()):
        untie_output_layer(model)


def _has_processor(path: str | Path) -> bool:
    """Whether :func:`save_adapter` stored a processor (tokenizer included) in ``path``."""
    return (Path(path) / "tokenizer_config.json").exists()


def load_adapter(base_checkpoint: str | Path, adapter_path: str | Path, *, dtype: str | torch.dtype,
                 attn_implementation: str, quantize_4bit: bool, revision: str | None = None, **load_kwargs):
    """Load the base model as :func:`load_chat_vlm` does, put the saved adapter on it (frozen, for
    inference) and return ``(model, processor)``; the processor saved with the adapter wins.

    Load the base exactly as during training (same ``quantize_4bit``): the adapter learned
    corrections to the 4-bit-rounded weights. A 4-bit base also gets the dtype treatment
    :func:`add_lora` gave it for training (norms and embeddings upcast to fp32), so on a GPU
    the reloaded model computes what the trained one did, not a fp16 variant of it. ``revision``: the base's
    commit, as for :func:`load_chat_vlm` (load the base the adapter was trained on).

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the
    same answers", and ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Save the adapter, reload it,
    caption again".
    """
    from peft import PeftModel, prepare_model_for_kbit_training

    model, processor = load_chat_vlm(base_checkpoint, dtype=dtype, attn_implementation=attn_implementation,
                                     quantize_4bit=quantize_4bit, revision=revision, **load_kwargs)
    if quantize_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    _untie_if_trained(model, adapter_path)
    model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    model.eval()
    if _has_processor(adapter_path):
        processor = processor_from_pretrained(adapter_path, model.config.model_type)
    return model, processor


def merge_for_export(base_checkpoint: str | Path, adapter_path: str | Path, out_dir: str | Path, *,
                     dtype: str | torch.dtype = "float16", revision: str | None = None) -> Path:
    """Fold the adapter into a NON-quantized copy of the base and save a plain model to ``out_dir``.

    Why not merge into the 4-bit model we trained? Merging adds ``B @ A`` to each weight. In 4-bit
    the sum must be re-quantized to 16 NF4 levels per block, and a LoRA update is far smaller than
    one quantization step, so most of it rounds away (PEFT warns about exactly this). So the base is
    loaded again in 16-bit (``dtype``; fp32 is fine for tiny models on CPU), the adapter is added
    exactly, and the result loads anywhere without PEFT or bitsandbytes. It differs slightly from the
    trained 4-bit model (the adapter now sits on the unrounded weights): evaluate the merged model.
    ``revision``: the base's commit, as for :func:`load_chat_vlm`. Taught in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Merging for export: not into the 4-bit model".
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    hub = revision_kwargs(base_checkpoint, revision)  # {"revision": <pin>} for a Hub id, {} for a local folder
    base = AutoModelForImageTextToText.from_pretrained(base_checkpoint, dtype=torch_dtype(dtype), **hub)
    _untie_if_trained(base, adapter_path)  # a trained head must survive the save (see untie_output_layer)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    if _has_processor(adapter_path):  # the processor saved with the adapter (its image settings) wins
        processor = processor_from_pretrained(adapter_path, base.config.model_type)
    else:
        processor = processor_from_pretrained(base_checkpoint, base.config.model_type, **hub)
    processor.save_pretrained(out_dir)
    return out_dir
