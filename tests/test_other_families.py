"""The chat helpers on vision-language families the series does not build itself (issue 12).

Each family is a tiny random model derived from its real checkpoint's vendored configuration and
chat template, with a tokenizer of the real kind (``vlm_helpers/tiny/families.py``), loaded through the
series' own loaders. For every family: a batch of four rows is supervised on exactly answer +
end-of-turn; the token ids are transformers' own chat-template tokenization; ``add_lora`` keeps out
of the vision encoder; two 4-bit LoRA steps change the adapters only; generation stops at the
end-of-turn token; a saved and reloaded adapter answers the same. The families: Qwen2-VL, Gemma 3,
Llama 3.2 Vision (Mllama), LLaVA-1.5, LLaVA-NeXT-Mistral and SmolVLM (Idefics3). Then the refusals: a template
whose generation prompt differs from its assistant header (LLaVA-OneVision) and prefix-LM
processors (PaliGemma).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from vlm_helpers.tiny.families import FAMILIES, build_family
from lora_checks import assert_two_steps_train_lora_only

from vlm_helpers.chat_collator import ChatVLMCollator, vision_token_ids
from vlm_helpers.lora import add_lora, load_chat_processor, load_chat_vlm, vision_encoders
from vlm_helpers.adapters import save_adapter
from vlm_helpers.lora import load_adapter
from vlm_helpers.supervision import IGNORE_INDEX
from vlm_helpers.evaluation import generate_predictions
from vlm_helpers.runtime import HardwareProfile, choose_preset

pytestmark = pytest.mark.slow  # the other-family tier, also run in the Colab-constraints environment (README, "Run the tests"): `python -m pytest -m slow`

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

CPU = HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False)
PRESET = choose_preset(CPU, "phi3-aircraft", tiny=True)
INSTRUCTION = "Answer briefly."
NAMES = [name for name in FAMILIES if name != "paligemma2"]  # chat families; PaliGemma 2: test_prefix_collator.py


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    class Lazy(dict):
        def __missing__(self, name):
            self[name] = build_family(FAMILIES[name], tmp_path_factory.mktemp(name))
            return self[name]

    return Lazy()


def make_rows() -> list[dict]:
    """Four rows whose answers have 1 to 4 words, images of different sizes."""
    answers = ["7", "Acme Corp", "March 10, 1990", "The annual budget review"]
    questions = ["What is the page number?", "What is the name of the company?", "What is the date?",
                 "What is the subject?"]
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    return [{"questionId": 100 + i, "question": q, "answers": [a], "image": Image.new("RGB", (48 + 16 * i, 64), c)}
            for i, (q, a, c) in enumerate(zip(questions, answers, colours))]


def conversation(collator, row, answer=None, with_pixels=True):
    """The collator's messages, with the row's image in the image part (what apply_chat_template loads)."""
    messages = collator.messages(row, answer)
    for part in messages[0]["content"]:
        if part["type"] == "image" and with_pixels:
            part["image"] = row["image"]
    return messages


def unpadded(batch, i) -> list[int]:
    return batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()


# ----------------------------------------------------------------------------------------------
# the collator
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_batch_supervises_exactly_answer_and_end_of_turn(family_dirs, name):
    family = FAMILIES[name]
    processor = load_chat_processor(family_dirs[name])
    tokenizer = processor.tokenizer
    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    assert collator.end_of_turn == family.end_of_turn
    rows = make_rows()
    batch = collator(rows)
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert supervised == list(range(supervised[0], supervised[-1] + 1)), "one contiguous span"
        ids = labels[supervised].tolist()
        assert ids[-1] == collator.end_of_turn_id and collator.end_of_turn_id not in ids[:-1]
        assert tokenizer.decode(ids[:-1]).strip() == row["answers"][0]
        assert torch.equal(labels[supervised], batch["input_ids"][i][supervised])
        assert batch["attention_mask"][i][supervised].all()
        assert not set(ids) & collator.vision_ids


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_are_transformers_own_chat_template_tokenization(family_dirs, name):
    processor = load_chat_processor(family_dirs[name])
    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    rows = make_rows()
    batch, prompts = collator(rows), collator.generation_inputs(rows)
    for i, row in enumerate(rows):
        answer = row["answers"][0]
        prompt = processor.apply_chat_template(conversation(collator, row), add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"][0]
        assert unpadded(prompts, i) == list(prompt), "inference prompt"
        full = processor.apply_chat_template(conversation(collator, row, answer), tokenize=True,
                                             return_dict=True)["input_ids"][0]
        ids = unpadded(batch, i)
        assert ids[: len(prompt)] == list(prompt), "the training prompt is the inference prompt"
        if collator.layout.appended:  # the template writes no end-of-turn: eos replaces its tail
            tail = processor.tokenizer(collator.layout.tail, add_special_tokens=False)["input_ids"]
            assert ids == list(full)[: len(full) - len(tail)] + [collator.end_of_turn_id]
        else:
            assert ids == list(full)
        bos = processor.tokenizer.bos_token_id
        assert bos is None or ids[:2] != [bos, bos], "no double BOS"


@pytest.mark.parametrize("name", NAMES)
def test_vision_token_ids_are_what_the_processor_inserts(family_dirs, name):
    processor = load_chat_processor(family_dirs[name])
    found = set(processor.tokenizer.convert_ids_to_tokens(sorted(vision_token_ids(processor))))
    assert FAMILIES[name].vision_tokens <= found
    assert FAMILIES[name].end_of_turn not in found


# ----------------------------------------------------------------------------------------------
# LoRA, generation, adapters
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_add_lora_keeps_out_of_the_vision_encoder(family_dirs, name):
    model, _ = load_chat_vlm(family_dirs[name], dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation, quantize_4bit=False)
    encoders = [encoder for _, encoder in vision_encoders(model)]
    peft_model = add_lora(model, target_modules=FAMILIES[name].lora_targets, quantized=False)
    lora = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    assert len(lora) >= 7 * 2, lora  # 7 projection types in each of the 2 text layers
    assert not any(p.requires_grad for encoder in encoders for p in encoder.parameters())
    model, _ = load_chat_vlm(family_dirs[name], dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation, quantize_4bit=False)
    with pytest.raises(ValueError, match="LoRA reached the vision encoder"):
        add_lora(model, target_modules="all-linear", quantized=False)


def force_tokens(model, sequence: list[int], then: int):
    """Make the language-model head emit ``sequence`` and then ``then`` forever (a hook on its output)."""
    head = model.get_output_embeddings()
    calls = []

    def hook(module, args, output):
        step = len(calls)
        calls.append(step)
        token = sequence[step] if step < len(sequence) else then
        forced = torch.full_like(output, -1e4)
        forced[..., token] = 1e4
        return forced

    return head.register_forward_hook(hook)


@pytest.mark.parametrize("name", NAMES)
def test_generation_stops_at_the_end_of_turn(family_dirs, name):
    model, processor = load_chat_vlm(family_dirs[name], dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation, quantize_4bit=False)
    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    tokenizer = processor.tokenizer
    words = tokenizer(" budget review", add_special_tokens=False)["input_ids"]
    after = tokenizer("zzz", add_special_tokens=False)["input_ids"][0]
    handle = force_tokens(model, words + [collator.end_of_turn_id], then=after)
    try:
        predictions = generate_predictions(model, processor, collator, make_rows()[:1], max_new_tokens=12)
    finally:
        handle.remove()
    assert predictions == ["budget review"]


@pytest.fixture(scope="module")
def trained(family_dirs, tmp_path_factory):
    """Per family: a 4-bit model with LoRA after two steps (checked), its adapter saved."""
    results = {}

    def train(name):
        if name not in results:
            model, processor = load_chat_vlm(family_dirs[name], dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation, quantize_4bit=True)
            model = add_lora(model, target_modules=FAMILIES[name].lora_targets, quantized=True, dropout=0.0)
            collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
            assert_two_steps_train_lora_only(model, collator(make_rows()), lr=5e-2)
            adapter = save_adapter(model, processor, tmp_path_factory.mktemp(f"{name}-adapter"))
            results[name] = model, processor, collator, adapter
        return results[name]

    return train


@pytest.mark.parametrize("name", NAMES)
def test_two_4bit_lora_steps_change_lora_only(trained, name):
    trained(name)  # assert_two_steps_train_lora_only ran inside


@pytest.mark.parametrize("name", NAMES)
def test_adapter_round_trip_gives_the_same_predictions(family_dirs, trained, name):
    model, processor, collator, adapter = trained(name)
    rows = make_rows()
    expected = generate_predictions(model, processor, collator, rows, max_new_tokens=6)
    reloaded, reloaded_processor = load_adapter(family_dirs[name], adapter, dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation, quantize_4bit=True)
    assert type(reloaded_processor).__name__ == type(processor).__name__
    again = generate_predictions(reloaded, reloaded_processor, ChatVLMCollator(reloaded_processor,
                                 instruction=INSTRUCTION), rows, max_new_tokens=6)
    assert again == expected


# ----------------------------------------------------------------------------------------------
# what the helpers refuse, and the vision-encoder guard
# ----------------------------------------------------------------------------------------------


def test_a_model_without_a_vision_encoder_is_an_error_not_a_silent_pass():
    config = transformers.Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, vocab_size=256)
    with pytest.raises(ValueError, match="Found no vision encoder in Qwen2ForCausalLM"):
        add_lora(transformers.Qwen2ForCausalLM(config), target_modules=["q_proj"], quantized=False)


def _facts(model_id: str) -> dict:
    import json

    from vlm_helpers.tiny.real import real_dir

    return json.loads((real_dir(model_id) / "tokenizer_facts.json").read_text())


NEXT = "llava-hf/llava-v1.6-mistral-7b-hf"


@pytest.mark.parametrize("template, appended", [("chat_template_pre_pr43", True), ("chat_template", False)])
def test_llava_next_mistral_templates_end_every_answer_with_eos(family_dirs, template, appended):
    """LLaVA-NeXT-Mistral's template wrote a literal '<\\s>' before its PR #43 (a typo for '</s>'): the
    collator says so and ends the answer with eos; the current template writes '</s>' itself."""
    processor = load_chat_processor(family_dirs["llava-next"])
    processor.chat_template = _facts(NEXT)[template]  # the published one, or the one before PR #43
    if appended:
        with pytest.warns(UserWarning, match=r"<\\\\s>"):
            collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    else:
        collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    assert (collator.end_of_turn, collator.layout.appended) == ("</s>", appended)
    rows = make_rows()
    batch = collator(rows)
    tokenizer = processor.tokenizer
    for i, row in enumerate(rows):
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert tokenizer.decode(supervised[:-1]).strip() == row["answers"][0]
        assert supervised[-1] == tokenizer.eos_token_id
        assert "<\\s>" not in tokenizer.decode(unpadded(batch, i))


def _onevision_processor():
    """LLaVA-OneVision's processor with a tiny Qwen2 tokenizer and the template transformers' own
    LLaVA-OneVision processor tests use (the Hub's chat_template.json of llava-onevision-qwen2-0.5b-ov-hf
    is not in the stored pages; its assistant header is the same, see its SOURCES.md)."""
    from vlm_helpers.tiny.families import Family, tiny_tokenizer

    from vlm_helpers.processors import image_only_processor_class
    from vlm_helpers.tiny.common import image_processor_class

    tokens = {151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
              151646: ("<image>", True), 151647: ("<video>", True)}  # added_tokens.json of the repository
    family = Family(name="llava-onevision", model_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                    tokenizer_kind="qwen2", tokens=tokens, roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                    sizes={})
    template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
        "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
        "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
        "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    processor_class = image_only_processor_class(transformers.LlavaOnevisionProcessor)
    return processor_class(image_processor=image_processor_class("LlavaOnevisionImageProcessor")(),
                           tokenizer=tiny_tokenizer(family), chat_template=template, patch_size=14,
                           vision_feature_select_strategy="full")


def test_a_generation_prompt_that_differs_from_the_assistant_header_is_refused_with_both_renderings():
    with pytest.raises(ValueError, match="generation prompt is not the text it writes before an answer") as error:
        ChatVLMCollator(_onevision_processor(), instruction=INSTRUCTION)
    message = str(error.value)
    assert repr("<|im_start|>user <image>\nQ<|im_end|><|im_start|>assistant\n") in message
    assert repr("<|im_start|>user <image>\nQ<|im_end|><|im_start|>assistant \n") in message


def _paligemma_processor(chat_template):
    from vlm_helpers.tiny.families import FAMILIES, Family, tiny_tokenizer

    from vlm_helpers.tiny.common import image_processor_class

    gemma = FAMILIES["gemma3"]
    family = Family(name="paligemma", model_id=gemma.model_id, tokenizer_kind="gemma", sizes={},
                    tokens={**{i: t for i, t in gemma.tokens.items() if i < 5}, 257152: ("<image>", True)},
                    roles=gemma.roles)
    image_processor = image_processor_class("SiglipImageProcessor")(size={"height": 56, "width": 56})
    image_processor.image_seq_length = 16
    return transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(family),
                                           chat_template=chat_template)


@pytest.mark.parametrize("chat_template", [None, "{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}"])
def test_prefix_lm_processors_are_refused_at_construction_with_how_to_fine_tune_them(chat_template):
    with pytest.raises(ValueError, match=r"prefix-LM processor .*suffix=\[answer"):
        ChatVLMCollator(_paligemma_processor(chat_template), instruction=INSTRUCTION)
