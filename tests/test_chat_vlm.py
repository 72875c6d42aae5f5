"""Chat-VLM fine-tuning pieces of notebooks 03 (Idefics2 QLoRA) and 04 (LLaVA-Phi-3):
the chat collator's loss mask, 4-bit loading + LoRA, a Trainer run, adapter save/load/merge,
and the Trainer argument helpers. Everything runs on the tiny models, on CPU, in about 30 s.
"""

from __future__ import annotations

from pathlib import Path
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from lora_checks import assert_two_steps_train_lora_only, trainer_values

from vlm_helpers.chat_collator import ChatVLMCollator, detect_end_of_turn, vision_token_ids
from vlm_helpers.supervision import describe_sample
from vlm_helpers.supervision import IGNORE_INDEX, supervised_text
from vlm_helpers.runtime import HardwareProfile, choose_preset, override

pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer  # noqa: E402
from vlm_helpers.history import history_from_log  # noqa: E402
from vlm_helpers.tracking import secret, validate_report_to  # noqa: E402
from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS  # noqa: E402
from vlm_helpers.lora import add_lora, load_chat_processor, load_chat_vlm, lora_module_names, lora_report  # noqa: E402
from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS  # noqa: E402
from vlm_helpers.adapters import save_adapter  # noqa: E402
from vlm_helpers.lora import load_adapter, merge_for_export  # noqa: E402

MODELS = {
    "idefics2": {
        "recipe": "idefics2-qlora-docvqa",
        "end_of_turn": "<end_of_utterance>",
        "vision_tokens": {"<image>", "<fake_token_around_image>"},
        "targets": IDEFICS2_LORA_TARGETS,
        "n_lora": 2 * 7 + 3 + 2 * 7,  # text layers + modality_projection + perceiver layers
        "text_linear": r"model\.text_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj",
    },
    "llava-phi3": {
        "recipe": "phi3-aircraft",
        "end_of_turn": "<|end|>",
        "vision_tokens": {"<image>"},
        "targets": LLAVA_PHI3_LORA_TARGETS,
        "n_lora": 2 * 7,  # q/k/v/o_proj, gate/up/down_proj (Llama layout) in 2 decoder layers
        "text_linear": r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj",
    },
}
CPU = HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False)
INSTRUCTION = "Answer briefly."


class _LazyCheckpoints(dict):
    """Build (or find in the cache) each tiny model the first time a test asks for it."""

    def __init__(self, cache):
        super().__init__()
        self.cache = cache

    def __missing__(self, name):
        from vlm_helpers.tiny import tiny_checkpoint

        self[name] = tiny_checkpoint(name, self.cache)
        return self[name]


@pytest.fixture(scope="session")
def chat_paths(tiny_cache):
    return _LazyCheckpoints(tiny_cache)


def preset_for(name: str):
    return choose_preset(CPU, MODELS[name]["recipe"], tiny=True)


def make_rows() -> list[dict]:
    """Four rows whose answers have 1 to 4 words; one has two acceptable answers."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    answers = [["7"], ["Acme Corp"], ["March 10, 1990", "03/10/1990"], ["The annual budget review"]]
    questions = ["What is the page number?", "What is the name of the company?", "What is the date?",
                 "What is the subject?"]
    return [
        {"questionId": 100 + i, "question": q, "answers": a, "image": Image.new("RGB", (40 + 12 * i, 64), c)}
        for i, (q, a, c) in enumerate(zip(questions, answers, colours))
    ]


@pytest.fixture(scope="module")
def docvqa_rows():
    from vlm_helpers.data.sources import docvqa_dataset

    return {"train": docvqa_dataset("train", tiny=True, max_samples=48),
            "validation": list(docvqa_dataset("validation", tiny=True, max_samples=6))}


# ----------------------------------------------------------------------------------------------
# The collator
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_collator_supervises_answer_and_end_of_turn_only(chat_paths, name):
    spec = MODELS[name]
    processor = load_chat_processor(chat_paths[name])
    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    assert detect_end_of_turn(processor) == spec["end_of_turn"]
    assert vision_token_ids(processor) == set(tokenizer.convert_tokens_to_ids(sorted(spec["vision_tokens"])))

    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    rows = make_rows()
    batch = collator(rows)
    input_ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert labels.shape == input_ids.shape and "pixel_values" in batch
    if name == "idefics2":
        assert "pixel_attention_mask" in batch  # images of different sizes are padded

    # Each row learns exactly its own answer followed by the end-of-turn token.
    for i, row in enumerate(rows):
        expected = collator.target(row, i)
        assert expected in row["answers"]
        assert supervised_text(labels[i], tokenizer) == expected + spec["end_of_turn"]
    assert len({int(n) for n in labels.ne(IGNORE_INDEX).sum(1)}) >= 3  # different answer lengths

    # Never supervised: image tokens, fake image tokens, padding.
    for token_id in collator.vision_ids:
        assert bool((input_ids == token_id).any())
        assert bool((labels[input_ids == token_id] == IGNORE_INDEX).all())
    assert bool((labels[attention == 0] == IGNORE_INDEX).all())

    # Right padding for training: ones then zeros, the supervised span ends before the padding.
    lengths = attention.sum(1)
    assert bool((lengths < input_ids.shape[1]).any())
    for i, length in enumerate(lengths.tolist()):
        assert attention[i, :length].all() and not attention[i, length:].any()
        last_supervised = int(labels[i].ne(IGNORE_INDEX).nonzero().max())
        assert input_ids[i, last_supervised] == collator.end_of_turn_id
        assert last_supervised < length

    text = describe_sample(batch, tokenizer, row=1)
    assert f"[{spec['end_of_turn']}]" in text and "[<image>" not in text

    # Generation inputs: prompt only, LEFT padded, no labels; the tokenizer is left as it was.
    inputs = collator.generation_inputs(rows)
    assert "labels" not in inputs
    assert bool(inputs["attention_mask"][:, -1].all()) and not bool(inputs["attention_mask"][:, 0].all())
    for i, row in enumerate(rows):
        prompt = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
        assert torch.equal(prompt, input_ids[i, : len(prompt)])  # the prompt is a prefix of the chat
        assert bool((labels[i, : len(prompt)] == IGNORE_INDEX).all())
    assert tokenizer.padding_side == padding_side


def test_collator_names_the_row_with_no_answer(chat_paths):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(chat_paths["idefics2"])
    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    rows = make_rows()
    rows[2]["answers"] = []
    with pytest.raises(ValueError, match=r"row 2 of the batch \(questionId=102\).*empty"):
        collator(rows)
    rows[2]["answers"] = ["  "]
    with pytest.raises(ValueError, match=r"row 2 of the batch \(questionId=102\)"):
        collator(rows)

    # Captions: one string per row instead of a list, and no question.
    captions = ChatVLMCollator(processor, instruction="Describe the image.", question_key=None,
                               answer_key="caption", id_key="id")
    rows = [{"id": "a", "caption": "A red page.", "image": make_rows()[0]["image"]},
            {"id": "b", "caption": "", "image": make_rows()[1]["image"]}]
    assert supervised_text(captions(rows[:1])["labels"][0], processor.tokenizer) == "A red page.<end_of_utterance>"
    with pytest.raises(ValueError, match=r"row 1 of the batch \(id='b'\)"):
        captions(rows)


def test_collator_max_length_raises_instead_of_cutting(chat_paths):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(chat_paths["idefics2"])
    rows = make_rows()
    full = ChatVLMCollator(processor, instruction=INSTRUCTION)(rows)
    longest = int(full["attention_mask"].sum(1).max())  # the longest row, whole (template tail included)
    fits = ChatVLMCollator(processor, instruction=INSTRUCTION, max_length=longest)(rows)
    assert torch.equal(fits["labels"], full["labels"])  # nothing cut
    with pytest.raises(ValueError, match=r"row \d of the batch \(questionId=.*max_length=" + str(longest - 1)):
        ChatVLMCollator(processor, instruction=INSTRUCTION, max_length=longest - 1)(rows)


# ----------------------------------------------------------------------------------------------
# 4-bit loading + LoRA
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_4bit_lora_trains_adapters_only(chat_paths, name):
    spec = MODELS[name]
    model, processor = load_chat_vlm(chat_paths[name], dtype=preset_for(name).dtype, attn_implementation=preset_for(name).attn_implementation, quantize_4bit=True)
    text_linears = [m for n, m in model.named_modules() if re.fullmatch(spec["text_linear"], n)]
    assert text_linears and all(isinstance(m, bnb.nn.Linear4bit) for m in text_linears)
    assert not any(m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))

    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    rows = make_rows()
    # Generate BEFORE training, as notebook 03 does for its zero-shot score: without the CPU
    # workaround in load_chat_vlm this would cut most LoRA weights off from their gradients.
    with torch.no_grad():
        model.generate(**collator.generation_inputs(rows[:2]), max_new_tokens=2, do_sample=False)

    model = add_lora(model, target_modules=spec["targets"], dropout=0.0, quantized=True)
    names = lora_module_names(model)
    assert len(names) == spec["n_lora"] and all(re.fullmatch(spec["targets"], n) for n in names)
    assert not any(re.search(r"vision_model|vision_tower|multi_modal_projector", n) for n in names)
    if name == "llava-phi3":  # all 7 projection types of the Llama-layout decoder, nothing else
        assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"}
        # the fused Phi-3 names of the old target list reach only 2 of the 7 types here
        old = r"model\.language_model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
        matched = {n.rsplit(".", 1)[1] for n, m in model.named_modules() if re.fullmatch(
            old, re.sub(r"^base_model\.model\.", "", n))}
        assert matched == {"o_proj", "down_proj"}
    assert f"LoRA on {spec['n_lora']} modules" in lora_report(model)

    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n}
    assert_two_steps_train_lora_only(model, collator(make_rows()))


# ----------------------------------------------------------------------------------------------
# Trainer run, adapter round trip, merge
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_adapter(chat_paths, docvqa_rows, tmp_path_factory):
    """Tiny Idefics2 in 4-bit + LoRA (+ a trainable lm_head), 24 Trainer steps with generation
    evaluations in between (eval mode + no_grad in the middle of 4-bit training); adapter saved."""
    from vlm_helpers.evaluation import generate_predictions
    from vlm_helpers.metrics import anls

    path = chat_paths["idefics2"]
    preset = preset_for("idefics2")
    model, processor = load_chat_vlm(path, dtype=preset.dtype, attn_implementation=preset.attn_implementation, quantize_4bit=True)
    model = add_lora(model, target_modules=IDEFICS2_LORA_TARGETS, dropout=0.0, quantized=True,
                     modules_to_save=["lm_head"])
    collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
    eval_rows = docvqa_rows["validation"][:3]

    def eval_fn(step: int) -> dict:
        predictions = generate_predictions(model, processor, collator, eval_rows, max_new_tokens=4)
        return {"anls": anls(predictions, [row["answers"] for row in eval_rows])}

    out = tmp_path_factory.mktemp("trainer")
    args = make_training_arguments(**trainer_values(preset), output_dir=str(out / "run"), learning_rate=1e-2, max_steps=24,
                                   warmup_steps=0.1, logging_steps=1, save_steps=None, seed=0)
    _, history = train_with_trainer(model, docvqa_rows["train"], collator, args, eval_fn=eval_fn, eval_every=8)
    adapter = save_adapter(model, processor, out / "adapter")
    return {"model": model, "processor": processor, "collator": collator, "history": history,
            "adapter": adapter, "base": path, "out": out}


def predict(model, processor, collator, rows) -> tuple[list[str], list[list[int]], torch.Tensor]:
    """Greedy predictions, 5 forced greedy tokens (so empty answers still compare something) and the
    prompts' next-token logits. The round-trip test's fresh process imports this same function."""
    from vlm_helpers.evaluation import generate_predictions

    predictions = generate_predictions(model, processor, collator, rows, batch_size=3, max_new_tokens=6)
    inputs = collator.generation_inputs(rows)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1].float()
        tokens = model.generate(**inputs, min_new_tokens=5, max_new_tokens=5, do_sample=False)
    return predictions, tokens[:, inputs["input_ids"].shape[1]:].tolist(), logits


def test_trainer_lowers_the_loss(trained_adapter):
    history = trained_adapter["history"]
    assert [h["step"] for h in history] == list(range(1, 25))
    assert all({"step", "loss", "lr", "grad_norm"} <= set(h) for h in history)
    assert [h["step"] for h in history if "anls" in h] == [8, 16, 24]
    first, last = (sum(h["loss"] for h in part) / 4 for part in (history[:4], history[-4:]))
    assert last < first - 1.0, (first, last)


@pytest.mark.slow  # a second Python process: the slow tier (README, "Run the tests")
def test_adapter_round_trip_in_a_fresh_process(trained_adapter, docvqa_rows):
    rows = docvqa_rows["validation"][:3]
    predictions, tokens, logits = predict(trained_adapter["model"], trained_adapter["processor"],
                                          trained_adapter["collator"], rows)
    assert (trained_adapter["adapter"] / "adapter_config.json").exists()
    # the adapter (LoRA + the tiny model's lm_head) is not the base model
    base_size = (Path(trained_adapter["base"]) / "model.safetensors").stat().st_size
    assert (trained_adapter["adapter"] / "adapter_model.safetensors").stat().st_size < base_size / 1.5

    script = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_chat_vlm import INSTRUCTION, predict, preset_for
        from vlm_helpers.chat_collator import ChatVLMCollator
        from vlm_helpers.lora import load_adapter
        from vlm_helpers.data.sources import docvqa_dataset

        model, processor = load_adapter({str(trained_adapter["base"])!r}, {str(trained_adapter["adapter"])!r},
                                        dtype=preset_for("idefics2").dtype, attn_implementation=preset_for("idefics2").attn_implementation, quantize_4bit=True)
        collator = ChatVLMCollator(processor, instruction=INSTRUCTION)
        rows = list(docvqa_dataset("validation", tiny=True, max_samples=6))[:3]
        predictions, tokens, logits = predict(model, processor, collator, rows)
        print(json.dumps({{"predictions": predictions, "tokens": tokens, "logits": logits.tolist()}}))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["predictions"] == predictions and fresh["tokens"] == tokens
    torch.testing.assert_close(torch.tensor(fresh["logits"]), logits, atol=1e-5, rtol=1e-5)


def test_merge_for_export_matches_the_unmerged_adapter(trained_adapter, docvqa_rows):
    from transformers import AutoModelForImageTextToText

    rows = docvqa_rows["validation"][3:6]
    collator = trained_adapter["collator"]
    unmerged, processor = load_adapter(trained_adapter["base"], trained_adapter["adapter"],
                                       dtype=preset_for("idefics2").dtype, attn_implementation=preset_for("idefics2").attn_implementation, quantize_4bit=False)
    expected = predict(unmerged, processor, collator, rows)

    out = merge_for_export(trained_adapter["base"], trained_adapter["adapter"], trained_adapter["out"] / "merged",
                           dtype=torch.float32)
    merged = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    predictions, tokens, logits = predict(merged, processor, collator, rows)
    assert (predictions, tokens) == expected[:2]
    torch.testing.assert_close(logits, expected[2], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Trainer arguments, trackers and secrets
# ----------------------------------------------------------------------------------------------


def test_training_arguments_follow_the_preset(tmp_path):
    cpu = make_training_arguments(**trainer_values(preset_for("idefics2")), output_dir=str(tmp_path), max_steps=5, warmup_steps=0.1)
    assert (cpu.fp16, cpu.bf16, cpu.optim.value, cpu.remove_unused_columns) == (False, False, "adamw_torch", False)
    assert cpu.eval_strategy.value == "no" and cpu.warmup_steps == 0.1 and cpu.report_to == []

    t4 = HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
    preset = choose_preset(t4, "idefics2-qlora-docvqa")
    gpu = make_training_arguments(**trainer_values(preset), output_dir=str(tmp_path), max_steps=5)
    assert (gpu.fp16, gpu.bf16, gpu.optim.value) == (True, False, "paged_adamw_8bit")
    # transformers 5.23 calls it activation_checkpointing; the old names mirror the new ones
    assert gpu.gradient_checkpointing and gpu.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (gpu.per_device_train_batch_size, gpu.gradient_accumulation_steps) == (preset.batch_size, preset.grad_accum)
    assert not cpu.gradient_checkpointing
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():  # TrainingArguments refuses bf16 on CPU
        bf16 = make_training_arguments(**trainer_values(override(preset, dtype="bfloat16")), output_dir=str(tmp_path), max_steps=5)
        assert (bf16.fp16, bf16.bf16) == (False, True)


def test_report_to_and_secrets(monkeypatch):
    assert validate_report_to("none") == ["none"]
    assert validate_report_to(" None ") == ["none"]
    for bad in ("wandbb", "comet_ml", ["none", "wandb"], []):
        with pytest.raises(ValueError, match="report_to"):
            validate_report_to(bad)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(ValueError, match="wandb"):  # no key (or no package): refused before training
        validate_report_to("wandb")

    monkeypatch.setenv("VLM_TEST_SECRET", "s3cr3t")
    assert secret("VLM_TEST_SECRET") == "s3cr3t"
    monkeypatch.delenv("VLM_TEST_SECRET")
    assert secret("VLM_TEST_SECRET") is None


def test_history_from_log_has_the_training_loop_shape():
    log = [
        {"loss": 6.5, "grad_norm": 0.3, "learning_rate": 1e-3, "epoch": 0.1, "step": 5},
        {"anls": 0.2, "step": 5},
        {"loss": 5.0, "grad_norm": 0.2, "learning_rate": 5e-4, "epoch": 0.2, "step": 10},
        {"train_runtime": 3.0, "train_loss": 5.7, "epoch": 0.2, "step": 10},
    ]
    assert history_from_log(log) == [
        {"step": 5, "loss": 6.5, "grad_norm": 0.3, "lr": 1e-3, "epoch": 0.1, "anls": 0.2},
        {"step": 10, "loss": 5.0, "grad_norm": 0.2, "lr": 5e-4, "epoch": 0.2},
    ]


def test_generation_stops_at_the_end_of_turn_token_even_if_the_config_forgets_it(chat_paths):
    """A real checkpoint's generation config may list only eos; the collator's stop ids reach generate."""
    from vlm_helpers.evaluation import generate_predictions

    processor = load_chat_processor(chat_paths["llava-phi3"])
    collator = ChatVLMCollator(processor, instruction="Describe.", question_key=None, answer_key="answers")
    captured = {}

    class RecordingModel(torch.nn.Module):
        config = type("Config", (), {"is_encoder_decoder": False})()
        dtype = torch.float32

        def generate(self, **kwargs):
            captured.update(kwargs)
            prompt = kwargs["input_ids"]
            return torch.cat([prompt, torch.full((prompt.shape[0], 1), collator.end_of_turn_id)], dim=1)

    rows = [{"image": make_rows()[0]["image"], "answers": ["x"], "questionId": 1}]
    assert generate_predictions(RecordingModel(), processor, collator, rows) == [""]
    assert captured["eos_token_id"][0] == collator.end_of_turn_id
    assert processor.tokenizer.eos_token_id in captured["eos_token_id"]


def test_trainer_logs_print_as_a_table_with_numbers_not_dicts_of_strings():
    from vlm_helpers.hf_trainer import log_table_header, log_table_row

    header = log_table_header()
    row = log_table_row({"loss": 10.54321, "grad_norm": 3.2619, "learning_rate": 0.0026667, "epoch": 0.05}, 5)
    assert header.split() == ["step", "epoch", "loss", "grad", "norm", "learning", "rate"]
    assert row.split() == ["5", "0.05", "10.5432", "3.262", "0.00267"] and len(row) == len(header)
    assert log_table_row({"loss": 1.0, "epoch": 1.0}, 7).split()[3] == "-"  # a value not logged
    assert log_table_row({"anls": 0.5}, 10) is None  # not a training-loss log
    summary = log_table_row({"train_runtime": 22.32, "train_steps_per_second": 6.719, "train_loss": 2.929}, 150)
    assert summary == "trained 150 steps in 22.3 s (6.72 steps/s), mean loss 2.9290"
