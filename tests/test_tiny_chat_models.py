"""Tiny Idefics2 (notebook 03) and LLaVA-Phi-3 (notebook 04): build, load, train in 4-bit with LoRA.

The models are built once per session into a pytest tmp dir and loaded back through the Auto
classes, i.e. the same `from_pretrained` code the notebooks use for the real checkpoints.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from PIL import Image

from lora_checks import assert_two_steps_train_lora_only, lora_grads, nonzero

from vlm_helpers.tiny.chat_tokenizer import build_byte_fallback_tokenizer
from vlm_helpers.lora import load_chat_processor
from vlm_helpers.tiny.idefics2 import build_tiny_idefics2
from vlm_helpers.tiny.llava_phi3 import build_tiny_llava_phi3

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

# ----------------------------------------------------------------------------------------------
# What each model is tested with
# ----------------------------------------------------------------------------------------------

SPECS = {
    "idefics2": {
        "builder": build_tiny_idefics2,
        "question": "What is the total?",
        "answer": "12.50",
        "chat": "User:<image>What is the total?<end_of_utterance>\nAssistant: 12.50<end_of_utterance>\n",
        "prompt": "User:<image>What is the total?<end_of_utterance>\nAssistant:",
        "end_of_turn": "<end_of_utterance>",
        "image_tokens": 4,  # perceiver latents
        # LoRA on the text model's and the connector's projections, not on the vision encoder.
        "lora_target": r"model\.(text_model|connector)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        "n_lora_modules": 2 * 7 + 3 + 2 * 7,  # text layers + modality_projection + perceiver layers
        "text_linear": r"model\.text_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj",
    },
    "llava_phi3": {
        "builder": build_tiny_llava_phi3,
        "question": "Describe the image.",
        "answer": "A Boeing 737.",
        "chat": "<|user|>\n<image>\nDescribe the image.<|end|>\n<|assistant|>\nA Boeing 737.<|end|>\n",
        "prompt": "<|user|>\n<image>\nDescribe the image.<|end|>\n<|assistant|>\n",
        "end_of_turn": "<|end|>",
        "image_tokens": 16,  # (32 px / patch 8)^2, CLS dropped
        # Decoder projections only (no multi_modal_projector, no vision_tower); Llama layout.
        "lora_target": r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
        "n_lora_modules": 2 * 7,
        "text_linear": r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj",
    },
}


class _LazyBuilds(dict):
    """Build each tiny model the first time a test asks for it."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        self[name] = SPECS[name]["builder"](self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    return _LazyBuilds(tmp_path_factory.mktemp("tiny_chat_models"))


def _messages(spec, with_answer=True):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": spec["question"]}]}]
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": spec["answer"]}]})
    return messages


def _images(n):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    return [Image.new("RGB", (48 + 8 * i, 40), colours[i % 3]) for i in range(n)]


def _batch(processor, spec):
    """A 2-example training batch; labels are input_ids with padding set to -100."""
    text = processor.apply_chat_template(_messages(spec))
    texts = [text, text.replace(spec["answer"], spec["answer"] + " and more words")]
    batch = processor(text=texts, images=[[im] for im in _images(2)], return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def _bnb_config():
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def _disable_bnb_cpu_packing(model):
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel (see the trap test)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def _packed_modules(model):
    import bitsandbytes as bnb

    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit) and getattr(m.weight.quant_state, "packing_format_for_cpu", False)
    ]


def _lora_model(model, spec):
    peft = pytest.importorskip("peft")
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=spec["lora_target"])
    model = peft.get_peft_model(model, config)
    model.train()
    return model


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def test_tokenizer_is_deterministic_llama_style():
    kwargs = dict(special_tokens=["<image>", "<end_of_utterance>"], vocab_size=400)
    a = build_byte_fallback_tokenizer(["A Boeing 747 at the gate."], **kwargs)
    b = build_byte_fallback_tokenizer(["A Boeing 747 at the gate."], **kwargs)
    assert a.get_vocab() == b.get_vocab()
    assert (a.unk_token_id, a.bos_token_id, a.eos_token_id) == (0, 1, 2)
    assert a.pad_token == "<pad>" and a.padding_side == "right"
    ids = a("Total: 12 €<image>").input_ids
    assert ids[0] == a.bos_token_id
    assert a.convert_tokens_to_ids("<image>") in ids  # never split
    assert "<0xE2>" in a.convert_ids_to_tokens(ids)  # "€" is spelled with byte-fallback tokens
    assert a.decode(ids, skip_special_tokens=True) == "Total: 12 €"


# ----------------------------------------------------------------------------------------------
# Full-precision model through the Auto classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_auto_classes_chat_template_and_loss(tiny_dirs, name):
    spec, path = SPECS[name], tiny_dirs[name]
    # the real 32k-token vocabulary (embeddings + lm_head: 2 x 32k x 64 fp32 = 16 MB) dominates the size
    assert 0.5e6 < (path / "model.safetensors").stat().st_size < 25e6
    processor = load_chat_processor(path)  # as full mode: LLaVA fields from the config
    model = AutoModelForImageTextToText.from_pretrained(path)

    assert processor.image_token_id == model.config.image_token_id
    assert processor.apply_chat_template(_messages(spec)) == spec["chat"]
    prompt = processor.apply_chat_template(_messages(spec, with_answer=False), add_generation_prompt=True)
    assert prompt == spec["prompt"]

    # One <image> becomes the right number of image tokens, and the prompt's ids are a prefix of
    # the full conversation's ids (so masking the prompt by its length is exact).
    image = _images(1)
    full_ids = processor(text=spec["chat"], images=image)["input_ids"][0]
    prompt_ids = processor(text=prompt, images=image)["input_ids"][0]
    assert full_ids.count(processor.image_token_id) == spec["image_tokens"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    end_id = processor.tokenizer.convert_tokens_to_ids(spec["end_of_turn"])
    assert end_id in full_ids[len(prompt_ids):]

    batch = _batch(processor, spec)
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    # Random weights: the loss is about ln(vocab size).
    assert abs(loss.item() - math.log(model.config.text_config.vocab_size)) < 1.5

    inputs = processor(text=[prompt], images=image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 4


def test_idefics2_image_splitting(tiny_dirs):
    spec = SPECS["idefics2"]
    processor = AutoProcessor.from_pretrained(tiny_dirs["idefics2"], do_image_splitting=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["idefics2"])
    batch = _batch(processor, spec)
    assert batch["pixel_values"].shape[1] == 5  # 4 crops + the whole image
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == 5 * spec["image_tokens"]
    assert math.isfinite(model(**batch).loss.item())


# ----------------------------------------------------------------------------------------------
# 4-bit NF4 (QLoRA) on CPU
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_4bit_lora_training_step(tiny_dirs, name):
    bnb = pytest.importorskip("bitsandbytes")
    spec, path = SPECS[name], tiny_dirs[name]
    processor = load_chat_processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=_bnb_config())

    text_linears = {n: m for n, m in model.named_modules() if re.fullmatch(spec["text_linear"], n)}
    assert text_linears and all(isinstance(m, bnb.nn.Linear4bit) for m in text_linears.values())
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # transformers keeps lm_head in full precision

    model = _lora_model(model, spec)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * spec["n_lora_modules"]
    assert all(re.search(r"\.(text_model|connector|language_model)\.", n) for n in lora)
    assert_two_steps_train_lora_only(model, _batch(processor, spec))

    # Inference with the adapter (generate always runs under no_grad).
    model.eval()
    prompt = processor.apply_chat_template(_messages(spec, with_answer=False), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=_images(1), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_4bit_cpu_eval_before_training_trap(tiny_dirs):
    """On CPUs with AVX512-BF16, an eval-mode no-grad forward repacks 4-bit weights for good.

    `bnb.nn.Linear4bit.forward` converts its weight to a CPU inference layout when
    `not self.training and not x.requires_grad` (e.g. `generate` on a freshly loaded model). Later
    forwards use `bitsandbytes::gemv_4bit`, which has no autograd kernel: no gradient flows through
    the frozen base weight into the layer's input, so LoRA adapters upstream of it get none.
    """
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    spec, path = SPECS["idefics2"], tiny_dirs["idefics2"]
    processor = load_chat_processor(path)
    batch = _batch(processor, spec)

    def first_step_lora_b_grads(model):
        model = _lora_model(model, spec)
        model(**batch).loss.backward()
        return {n: nonzero(g) for n, g in lora_grads(model).items() if "lora_B" in n}

    # Workaround: switch the repacking off right after loading; eval first, then train.
    model = _disable_bnb_cpu_packing(
        AutoModelForImageTextToText.from_pretrained(path, quantization_config=_bnb_config())
    )
    assert not model.training  # from_pretrained returns a model in eval mode
    with torch.no_grad():
        model(**batch)
    assert _packed_modules(model) == []
    assert all(first_step_lora_b_grads(model).values())

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks, no trap to show")
    # The trap itself: only o_proj/down_proj (whose outputs go straight into the residual stream)
    # still get a gradient; q/k/v/gate/up get none.
    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=_bnb_config())
    with torch.no_grad():
        model(**batch)
    assert _packed_modules(model)
    got = first_step_lora_b_grads(model)
    assert not all(got.values())
    assert all(re.search(r"(o_proj|down_proj)\.lora_B", n) for n, ok in got.items() if ok)
