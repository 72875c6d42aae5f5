"""Real-shape tier: the series' own loaders, collators, a training step and generation at the real
checkpoints' widths and image sizes (random weights, 1-2 layers, CPU).

Each checkpoint is built from the vendored real configuration (``vlm_helpers/tiny/real_configs``)
with only layer counts reduced, saved in the Hub repository's layout (same configuration files
present and absent) and loaded back through ``vlm_helpers``' loaders, as full mode does on Colab.
These tests fail on the three full-mode bugs that once hid behind green tiny tests: 575 image tokens
for 576 LLaVA features, LoRA reaching 2 of 7 projection types of the Llama-layout decoder, and
Florence-2 trained on a decoder prefix that generation never produces.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from PIL import Image, ImageDraw

from vlm_helpers import evaluation, florence2, freezing, llava_phi3, lora, lora_targets, runtime
from vlm_helpers.chat_collator import ChatVLMCollator
from vlm_helpers.florence2 import Florence2Collator
from vlm_helpers.supervision import supervised_text
from vlm_helpers.tiny.real import LAYOUT_FILES, REAL_CHECKPOINTS, real_json, real_repo_files

pytestmark = pytest.mark.slow  # the real-shape tier (README, "Run the tests"): run by `python -m pytest -m slow`

T4 = runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
A100 = runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, on_colab=True,
                               flash_attn_installed=False)


def on_cpu(profile, recipe: str) -> runtime.Preset:
    """The preset a GPU would get (batches, image settings, checkpointing), computed on this CPU in fp32."""
    return runtime.override(runtime.choose_preset(profile, recipe), device="cpu", dtype="float32")


@pytest.fixture(scope="module", autouse=True)
def all_torch_threads():
    """Real widths: here intra-op threads pay (the tiny-model tests pin one thread)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(2, previous))
    yield
    torch.set_num_threads(previous)


def page(width: int, height: int, text: str = "TOTAL 12.50") -> Image.Image:
    """A real-sized scanned page (white, some dark text)."""
    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for y in range(100, height - 100, 160):
        draw.text((120, y), f"{text} line {y}", fill=(20, 20, 20))
    return image


def docvqa_rows(n: int = 2) -> list[dict]:
    answers = [["12.50"], ["Acme Corporation, Geneva"]]
    return [{"questionId": 10 + i, "question": "What is the total?", "answers": answers[i % 2],
             "image": page(1700, 2200)} for i in range(n)]


def assert_layout_like_the_hub(folder, model_id: str) -> None:
    """The configuration files present and absent are the real repository's."""
    saved = {path.name for path in folder.iterdir()} & LAYOUT_FILES
    real = set(real_repo_files(model_id)["present"]) & LAYOUT_FILES
    assert saved == real, (saved, real)


def lora_types(model) -> Counter:
    """How many adapted modules per projection type (leaf name)."""
    return Counter(name.rsplit(".", 1)[-1] for name in lora.lora_module_names(model))


def assert_supervises_answer_and_end_of_turn(batch, collator, rows) -> None:
    tokenizer = collator.tokenizer
    for i, row in enumerate(rows):
        text = supervised_text(batch["labels"][i], tokenizer)
        assert text == row["answers"][0] + collator.end_of_turn, text
        assert not set(batch["labels"][i].tolist()) & collator.vision_ids


def one_lora_step(model, batch) -> float:
    """One forward/backward pass; every LoRA B matrix that exists gets a gradient."""
    model.train()
    loss = model(**batch).loss
    loss.backward()
    loss = loss.detach()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and all(g is not None for g in grads), "a LoRA weight got no gradient"
    assert sum(float(g.abs().sum()) for g in grads) > 0
    model.zero_grad(set_to_none=True)
    return float(loss)


# ------------------------------------------------------------------------------------- Idefics2

@pytest.fixture(scope="module")
def idefics2_dir(tmp_path_factory):
    from vlm_helpers.tiny.idefics2 import REAL_SHAPE_IDEFICS2_SIZES, build_idefics2

    return build_idefics2(tmp_path_factory.mktemp("idefics2-real-shape"), REAL_SHAPE_IDEFICS2_SIZES)


@pytest.fixture(scope="module")
def idefics2_qlora(idefics2_dir):
    """Loaded as notebook 03 does on a T4 (4-bit NF4, 490 px, no splitting), LoRA added."""
    preset = on_cpu(T4, "idefics2-qlora-docvqa")
    model, processor = lora.load_chat_vlm(idefics2_dir, dtype=preset.dtype, attn_implementation=preset.attn_implementation, quantize_4bit=True,
                                                 image_longest_edge=490)
    model = lora.add_lora(model, target_modules=lora_targets.IDEFICS2_LORA_TARGETS, r=8, alpha=8,
                                 dropout=0.0, quantized=True, gradient_checkpointing=preset.gradient_checkpointing)
    return model, processor, preset


def test_idefics2_checkpoint_is_the_real_configuration_with_fewer_layers(idefics2_dir):
    model_id = REAL_CHECKPOINTS["idefics2"]
    assert_layout_like_the_hub(idefics2_dir, model_id)
    from transformers import AutoConfig

    config, real = AutoConfig.from_pretrained(idefics2_dir), real_json(model_id, "config.json")
    assert config.vision_config.hidden_size == real["vision_config"]["hidden_size"] == 1152
    assert config.vision_config.image_size == 980 and config.vision_config.patch_size == 14
    assert config.text_config.hidden_size == 4096 and config.text_config.vocab_size == 32003
    assert config.perceiver_config.resampler_n_latents == 64
    assert config.image_token_id == real["image_token_id"]


@pytest.mark.parametrize("profile", [T4, A100], ids=["t4", "a100"])
def test_idefics2_collates_real_pages_at_the_preset(idefics2_dir, idefics2_qlora, profile):
    """T4: 490 px, no splitting -> 64 image tokens a page; A100: 980 px, 4 crops + page -> 320."""
    model, _, _ = idefics2_qlora
    preset = on_cpu(profile, "idefics2-qlora-docvqa")
    splitting = lora.default_image_splitting(preset.name)
    longest = {"t4": 490}.get(preset.name)  # notebook 03's IMAGE_LONGEST_EDGE
    processor = lora.load_chat_processor(idefics2_dir, do_image_splitting=splitting,
                                                image_longest_edge=longest)
    collator = ChatVLMCollator(processor, instruction="Answer briefly.")
    rows = docvqa_rows(1 if splitting else 2)  # one page at 980 px with crops is 5 images already
    batch = collator(rows)
    image_tokens = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [64 * (5 if splitting else 1)] * len(rows)
    assert batch["pixel_values"].shape[1] == (5 if splitting else 1)  # images per page
    assert max(batch["pixel_values"].shape[-2:]) <= (longest or 980)
    if not splitting:
        assert max(batch["pixel_values"].shape[-2:]) == longest
    assert_supervises_answer_and_end_of_turn(batch, collator, rows)
    if splitting:  # 5 images of up to 980 px through the vision tower: a forward pass only (~20 s on CPU)
        with torch.no_grad():
            loss = float(model(**batch).loss)
    else:
        loss = one_lora_step(model, batch)
    assert 5 < loss < 15  # random weights over a 32,003-token vocabulary: about ln(32003) = 10.4


def test_idefics2_lora_reaches_every_projection_of_text_and_connector(idefics2_qlora):
    model, _, _ = idefics2_qlora
    types = lora_types(model)
    text_layers, perceiver_layers = 1, 1  # REAL_SHAPE_IDEFICS2_SIZES
    assert types == Counter({"q_proj": text_layers + perceiver_layers, "k_proj": text_layers + perceiver_layers,
                             "v_proj": text_layers + perceiver_layers, "o_proj": text_layers + perceiver_layers,
                             "gate_proj": text_layers + perceiver_layers + 1,
                             "up_proj": text_layers + perceiver_layers + 1,
                             "down_proj": text_layers + perceiver_layers + 1})
    assert not any(".vision_model." in name for name in lora.lora_module_names(model))
    assert type(model.base_model.model.lm_head).__name__ == "Linear"  # QLoRA keeps lm_head out of 4-bit
    assert type(model.base_model.model.model.text_model.layers[0].mlp.down_proj.base_layer).__name__ == "Linear4bit"


def test_idefics2_generates_and_stops(idefics2_qlora):
    model, processor, preset = idefics2_qlora
    collator = ChatVLMCollator(processor, instruction="Answer briefly.")
    predictions = evaluation.generate_predictions(model, processor, collator, docvqa_rows(2), batch_size=2,
                                                  max_new_tokens=3, device="cpu", dtype=preset.dtype)
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)


# ---------------------------------------------------------------------------------- LLaVA-Phi-3

def aircraft_rows(n: int = 2) -> list[dict]:
    """Photos at a real FGVC-Aircraft size (about 1600 x 1067, banner included)."""
    captions = ["Boeing 737-800 of Ryanair", "Airbus A320 landing"]
    rows = []
    for i in range(n):
        image = Image.new("RGB", (1600, 1067), (120, 160, 220))
        ImageDraw.Draw(image).rectangle((300, 400, 1300, 650), fill=(230, 230, 230))
        rows.append({"id": f"plane-{i}", "question": "Describe this aircraft.", "caption": captions[i % 2],
                     "image": image})
    return rows


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from vlm_helpers.tiny.llava_phi3 import REAL_SHAPE_LLAVA_PHI3_SIZES, build_llava_phi3

    return build_llava_phi3(tmp_path_factory.mktemp("llava-phi3-real-shape"), REAL_SHAPE_LLAVA_PHI3_SIZES)


@pytest.fixture(scope="module")
def llava_lora(llava_dir):
    """Loaded as notebook 04 does on a T4 (4-bit, as llava_phi3.default_4bit says), its LoRA added."""
    from vlm_helpers.recipes.phi3_aircraft import phi3_aircraft_spec

    spec, preset = phi3_aircraft_spec(), on_cpu(T4, "phi3-aircraft")
    model, processor = lora.load_chat_vlm(llava_dir, dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                                 quantize_4bit=llava_phi3.default_4bit(preset.name))
    model = lora.add_lora(model, target_modules=spec.lora_targets, r=spec.lora_r, alpha=spec.lora_alpha,
                                 dropout=0.0, quantized=llava_phi3.default_4bit(preset.name),
                                 gradient_checkpointing=preset.gradient_checkpointing)
    return model, processor, preset


def test_llava_phi3_checkpoint_is_the_real_configuration_with_fewer_layers(llava_dir):
    model_id = REAL_CHECKPOINTS["llava-phi3"]
    assert_layout_like_the_hub(llava_dir, model_id)  # no processor_config.json, as on the Hub
    from transformers import AutoConfig

    config, real = AutoConfig.from_pretrained(llava_dir), real_json(model_id, "config.json")
    assert config.text_config.model_type == real["text_config"]["model_type"] == "llama"
    assert config.text_config.hidden_size == 3072 and config.text_config.intermediate_size == 8192
    assert config.text_config.vocab_size == 32064 and config.image_token_id == real["image_token_index"] == 32038
    assert config.vision_config.hidden_size == 1024 and config.vision_config.image_size == 336
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"


def test_llava_phi3_raw_processor_is_one_image_token_short_at_336_px(llava_dir):
    """Finding 1 at the real size: the Hub repository's files leave num_additional_image_tokens at 0;
    filling only the missing fields (the old loader) gives 24*24 + 0 - 1 = 575 tokens for the 576 CLIP
    features; the project's loader compares every field with the model config and makes it 576."""
    from transformers import AutoProcessor

    from vlm_helpers.llava_phi3 import image_tokens_per_image

    raw = AutoProcessor.from_pretrained(llava_dir)
    assert raw.num_additional_image_tokens == 0 and raw.patch_size is None
    raw.patch_size, raw.vision_feature_select_strategy = 14, "default"  # what the old loader filled in
    assert image_tokens_per_image(raw, 336) == 575
    assert image_tokens_per_image(lora.load_chat_processor(llava_dir), 336) == 576


def test_llava_phi3_collates_trains_and_generates_at_336_px(llava_lora):
    model, processor, preset = llava_lora
    from vlm_helpers.recipes.phi3_aircraft import phi3_aircraft_spec

    spec = phi3_aircraft_spec()
    collator = ChatVLMCollator(processor, instruction=spec.instruction, question_key=spec.question_key,
                               answer_key=spec.answer_key, id_key=spec.id_key)
    rows = aircraft_rows(2)
    batch = collator(rows)
    assert batch["pixel_values"].shape[-2:] == (336, 336)
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [576, 576]
    for i, row in enumerate(rows):
        assert supervised_text(batch["labels"][i], collator.tokenizer) == row["caption"] + "<|end|>"
    loss = one_lora_step(model, batch)
    assert 5 < loss < 15  # random weights over 32,064 rows: about ln(32064) = 10.4
    predictions = evaluation.generate_predictions(model, processor, collator, rows, batch_size=2,
                                                  max_new_tokens=3, device="cpu", dtype=preset.dtype)
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)


def test_llava_phi3_lora_reaches_all_seven_projections_of_the_llama_decoder(llava_lora):
    model, _, _ = llava_lora
    text_layers = 2  # REAL_SHAPE_LLAVA_PHI3_SIZES
    assert lora_types(model) == Counter({name: text_layers for name in
                                         ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")})
    names = lora.lora_module_names(model)
    assert not any(".vision_tower." in n or ".multi_modal_projector." in n for n in names)


# ----------------------------------------------------------------------------------- Florence-2

@pytest.fixture(scope="module")
def florence2_dir(tmp_path_factory):
    from vlm_helpers.tiny.corpus import default_corpus
    from vlm_helpers.tiny.florence2 import REAL_SHAPE_FLORENCE2_SIZES, build_florence2, build_tiny_florence2_tokenizer

    tokenizer = build_tiny_florence2_tokenizer(default_corpus())
    return build_florence2(tmp_path_factory.mktemp("florence2-real-shape"), REAL_SHAPE_FLORENCE2_SIZES, tokenizer)


def test_florence2_base_at_full_size_collates_768_px_trains_and_generates(florence2_dir):
    # stored in fp16 like the published checkpoint ("dtype": "float16"); trained in fp32, as notebook 02 loads it
    assert json.loads((florence2_dir / "config.json").read_text())["dtype"] == "float16"
    model, processor = florence2.load_florence2(florence2_dir, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.text_config.d_model == 768 and model.config.text_config.encoder_layers == 6
    assert list(model.config.vision_config.depths) == [1, 1, 9, 1]
    assert 0.22e9 < sum(p.numel() for p in model.parameters()) < 0.24e9  # Florence-2-base: 0.23 B
    # the real generation config: <s> forced after </s>, beams and no-repeat as published
    generation = model.generation_config
    assert (generation.forced_bos_token_id, generation.decoder_start_token_id) == (0, 2)
    assert (generation.num_beams, generation.no_repeat_ngram_size) == (3, 3)

    collator = Florence2Collator(processor)
    rows = docvqa_rows(2)
    batch = collator(rows)
    assert batch["pixel_values"].shape[-2:] == (768, 768)
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [577, 577]  # (768 / 32)^2 + 1
    for i, row in enumerate(rows):
        assert supervised_text(batch["labels"][i], processor.tokenizer) == "<s>" + row["answers"][0] + "</s>"

    vision = florence2.florence2_vision_modules(model)
    freezing.freeze(*vision)
    model.train()
    for module in vision:
        module.eval()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for m in vision for p in m.parameters())
    assert model.model.language_model.decoder.layers[0].fc1.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    predictions = evaluation.generate_predictions(model, processor, collator, rows[:1], batch_size=1,
                                                  num_beams=3, max_new_tokens=3)
    assert len(predictions) == 1 and isinstance(predictions[0], str)


def test_florence2_lora_of_notebook_06_reaches_every_projection_of_encoder_and_decoder(florence2_dir):
    """Notebook 06's Florence-2 choice at the real widths: LoRA on every projection of the BART encoder
    (self-attention, fc1/fc2: 6 a layer) and decoder (self- and cross-attention, fc1/fc2: 10 a layer), none in DaViT."""
    from vlm_helpers.model_choices import MODEL_CHOICES

    model, _ = florence2.load_florence2(florence2_dir, dtype=torch.float32)
    choice = MODEL_CHOICES["florence2"]
    model = lora.add_lora(model, target_modules=choice.lora_targets, r=8, alpha=8, dropout=0.0, quantized=False)
    names = lora.lora_module_names(model)
    kinds = {re.sub(r".*layers\.\d+\.", "", name) for name in names}
    assert kinds == {f"{part}.{p}" for part in ("self_attn", "encoder_attn") for p in ("q_proj", "k_proj", "v_proj",
                                                                                        "out_proj")} | {"fc1", "fc2"}
    text = model.base_model.model.config.text_config
    assert len(names) == text.encoder_layers * 6 + text.decoder_layers * 10
    assert not [name for name in names if "vision_tower" in name or "projector" in name]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)  # training it: notebook 06 in tiny mode (test_notebook_06)


# ------------------------------------------------------------------------------------ Qwen2.5-VL

@pytest.fixture(scope="module")
def qwen2_5_vl_dir(tmp_path_factory):
    """Qwen2.5-VL-3B-Instruct's published configuration at its real widths, one text layer and two vision blocks
    (one window-attention, one full-attention), saved like the Hub repository (the tiny twin's tokenizer)."""
    from dataclasses import replace

    from vlm_helpers.tiny.families import FAMILIES, build_family

    family = replace(FAMILIES["qwen2.5-vl"],
                     sizes={"num_hidden_layers": 1, "vision_config": {"depth": 2, "fullatt_block_indexes": [1]}})
    return build_family(family, tmp_path_factory.mktemp("qwen2.5-vl-real-shape"), init_std=0.02)


def test_qwen2_5_vl_at_real_widths_prices_a_page_collates_trains_and_generates(qwen2_5_vl_dir):
    """Notebook 06's ``qwen2.5-vl-3b`` under the T4 preset's image budget: a 1700x2200 page becomes 1,240 image
    tokens (4,960 vision patches through window attention), the answer and <|im_end|> alone are supervised, LoRA
    adapts the 7 projections of the language model and nothing of ``model.visual``, one step trains, generation runs."""
    from vlm_helpers import model_choices, processors

    published = real_json("Qwen/Qwen2.5-VL-3B-Instruct", "config.json")
    saved = json.loads((qwen2_5_vl_dir / "config.json").read_text())
    text = saved.get("text_config", saved)
    assert text["hidden_size"] == published["hidden_size"] == 2048 and text["num_hidden_layers"] == 1
    vision = saved["vision_config"]
    for key in ("hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "window_size", "patch_size"):
        assert vision[key] == published["vision_config"][key], key
    choice = model_choices.get_model_choice("qwen2.5-vl-3b")
    preset = on_cpu(T4, choice.recipe)
    model, processor = lora.load_chat_vlm(qwen2_5_vl_dir, dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                          quantize_4bit=choice.method("t4") == "qlora",
                                          image_budget=choice.image_budget("t4"))
    assert processors.image_tokens(processor, (1700, 2200)) == 1240
    collator = ChatVLMCollator(processor, instruction="Answer briefly.", answer_choice="first")
    rows = docvqa_rows(1)
    batch = collator(rows)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 1240
    assert_supervises_answer_and_end_of_turn(batch, collator, rows)
    model = lora.add_lora(model, target_modules=choice.lora_targets, r=8, alpha=8, dropout=0.0, quantized=False,
                          gradient_checkpointing=False)
    assert lora_types(model) == Counter({name: 1 for name in
                                         ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")})
    assert not any(".visual." in name for name in lora.lora_module_names(model))
    loss = one_lora_step(model, batch)
    assert 2 < loss < 15
    predictions = evaluation.generate_predictions(model, processor, collator, rows, batch_size=1, max_new_tokens=3,
                                                  device="cpu", dtype=preset.dtype)
    assert len(predictions) == 1 and isinstance(predictions[0], str)


# ------------------------------------------------------------------- issue 28: SmolVLM2, Gemma 3, PaliGemma 2

#: choice -> (tiny family, layer counts of the real-shape build, image tokens of a 1700x2200 page under the T4 plan)
NEWER_CHOICES = {
    "smolvlm2-2.2b": ("smolvlm2", {"text_config": {"num_hidden_layers": 1}, "vision_config": {"num_hidden_layers": 1}},
                      1377),
    "gemma3-4b": ("gemma3", {"text_config": {"num_hidden_layers": 1}, "vision_config": {"num_hidden_layers": 1}}, 256),
    "paligemma2-3b": ("paligemma2", {"text_config": {"num_hidden_layers": 2}, "vision_config": {"num_hidden_layers": 1}},
                      1024),
}


@pytest.mark.parametrize("key", sorted(NEWER_CHOICES))
def test_newer_choices_at_real_widths_price_a_page_collate_train_and_generate(key, tmp_path):
    """Notebook 06's newer choices at their published widths and image sizes (1-2 layers): a 1700x2200 page costs
    what the choosing table says, only the answer and its end token are supervised (PaliGemma: the suffix), LoRA
    reaches the 7 projections of the language model and nothing of the vision tower, one step trains under the T4
    plan's dtype rule (computed here in fp32), generation runs."""
    from dataclasses import replace

    from vlm_helpers import model_choices, processors
    from vlm_helpers.prefix_collator import PrefixLMCollator
    from vlm_helpers.tiny.families import FAMILIES, build_family

    family_name, layers, page_tokens = NEWER_CHOICES[key]
    family = replace(FAMILIES[family_name], sizes=layers, processor_sizes={})  # real processor files
    folder = build_family(family, tmp_path / key, init_std=0.02)
    assert_layout_like_the_hub(folder, family.model_id)
    published = real_json(family.model_id, "config.json", reconstructed=True)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["text_config"]["hidden_size"] == published["text_config"]["hidden_size"]
    assert saved["vision_config"]["hidden_size"] == published["vision_config"]["hidden_size"]
    choice = model_choices.get_model_choice(key)
    preset = on_cpu(T4, choice.recipe)
    model, processor = lora.load_chat_vlm(folder, dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                          quantize_4bit=False, image_budget=choice.image_budget("t4"))
    assert processors.image_tokens(processor, (1700, 2200)) == page_tokens
    collator = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)
    rows = [{**row, "id": str(row["questionId"])} for row in docvqa_rows(1)]
    batch = collator(rows)
    end = collator.tokenizer.eos_token if isinstance(collator, PrefixLMCollator) else collator.end_of_turn
    supervised = supervised_text(batch["labels"][0], collator.tokenizer)
    # SmolVLM's template writes "Assistant:" + " answer": the space after the colon is the answer's first token
    assert supervised.lstrip(" ") == rows[0]["answers"][0] + end, supervised
    model = lora.add_lora(model, target_modules=choice.lora_targets, r=8, alpha=8, dropout=0.0, quantized=False,
                          gradient_checkpointing=False)
    assert set(lora_types(model)) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    vision = [name for name, _ in lora.vision_encoders(model)]
    assert vision and not [n for n in lora.lora_module_names(model) if any(n.startswith(v + ".") for v in vision)]
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    assert 2 < one_lora_step(model, batch) < 100  # random weights at real width (Gemma scales embeddings by 50)
    predictions = evaluation.generate_predictions(model, processor, collator, rows, batch_size=1, max_new_tokens=3,
                                                  device="cpu", dtype=preset.dtype)
    assert len(predictions) == 1 and isinstance(predictions[0], str)
