"""Answers too long for the collator are found before the first step, not at their batch hours in.

``clean_dataset(..., collator=collator)`` prices every answer with the training collator's own rule
(``collator.length_problem(row)``): Florence-2's ``<s>`` + answer + ``</s>`` against
``max_answer_tokens``; the chat collator's whole conversation (prompt, image tokens, answer, end of
turn) against ``max_length``. A row with several acceptable answers is bad only when none fits, as the
collators draw among the answers that fit. Each test uses the tiny models and a few synthetic rows.
"""

from __future__ import annotations

import re

import pytest
import torch
from datasets import Dataset, Image as ImageFeature
from PIL import Image

from vlm_helpers import florence2, freezing, loop
from vlm_helpers.chat_collator import ChatVLMCollator
from vlm_helpers.data.validation import DataValidationError, clean_dataset, validate_dataset
from vlm_helpers.supervision import IGNORE_INDEX, supervised_text

LONG = "word " * 80  # about 80 tokens: over Florence2Collator's default max_answer_tokens=64
LONGER = "word " * 90
INSTRUCTION = "Answer briefly."


def _image(shade: int = 200) -> Image.Image:
    return Image.new("RGB", (64, 64), (shade, shade, 250))


def _rows() -> list[dict]:
    """Eight rows: two whose every answer is too long (one of them with a file:line origin), one whose
    long alternative comes with a short one (kept), five plain ones."""
    answers = [["12"], [LONG], ["Acme Corp"], [LONG, "7 May"], ["March 10"], [LONG, LONGER], ["blue"], ["42"]]
    rows = [{"questionId": 100 + i, "question": f"What is item {i}?", "answers": a, "image": _image(20 * i)}
            for i, a in enumerate(answers)]
    rows[5]["origin"] = "data.jsonl:6"
    return rows


def _dataset(rows: list[dict]) -> Dataset:
    for row in rows:
        row.setdefault("origin", None)
    return Dataset.from_list(rows).cast_column("image", ImageFeature())


@pytest.fixture(scope="module")
def florence_processor(tiny_florence2_path):
    return florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)[1]


@pytest.fixture(scope="module")
def chat_processors(tiny_cache):
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.tiny import tiny_checkpoint

    return {name: load_chat_processor(tiny_checkpoint(name, tiny_cache)) for name in ("idefics2", "qwen2-vl")}


def _chat_collator(processor, **kwargs) -> ChatVLMCollator:
    """A chat collator whose max_length lets the short answers through and refuses ``LONG``."""
    probe = ChatVLMCollator(processor, instruction=INSTRUCTION)
    short, long = probe.conversation_lengths(_rows()[3], [_rows()[3]["answers"][1], LONG])
    assert short < long
    return ChatVLMCollator(processor, instruction=INSTRUCTION, max_length=short + 8, **kwargs)


# ------------------------------------------------------------------ the collators' own rule, exactly


def test_florence2_price_is_the_collators_own_to_the_token(florence_processor):
    """At max_answer_tokens = the answer's length it trains; one less and both the collator and
    validation refuse it: the same tokenization, <s> and </s> counted once."""
    row = {"questionId": 1, "question": "What is the total?", "answers": ["Total due: 1,250.00 USD"],
           "image": _image()}
    labels = florence2.Florence2Collator(florence_processor)([row])["labels"][0]
    length = int((labels != IGNORE_INDEX).sum())  # <s> + answer + </s> as trained
    assert supervised_text(labels, florence_processor.tokenizer) == "<s>Total due: 1,250.00 USD</s>"
    fits = florence2.Florence2Collator(florence_processor, max_answer_tokens=length)
    assert fits.length_problem(row) is None and validate_dataset([row], split="train", collator=fits)[1].kept == 1
    fits([row])
    tight = florence2.Florence2Collator(florence_processor, max_answer_tokens=length - 1)
    assert tight.length_problem(row) == (f"the answer takes {length} tokens with <s> and </s>, more than "
                                         f"max_answer_tokens={length - 1}; raise max_answer_tokens or drop the "
                                         "row (nothing is cut silently)")
    with pytest.raises(ValueError, match=rf"questionId=1\).*takes {length} tokens.*max_answer_tokens={length - 1}"):
        tight([row])
    with pytest.raises(DataValidationError, match=rf"questionId=1\] the answer takes {length} tokens"):
        validate_dataset([row], split="train", collator=tight)


@pytest.mark.parametrize("name", ["idefics2", "qwen2-vl"])
def test_chat_price_is_the_training_batchs_length_to_the_token(chat_processors, name):
    """The conversation lengths validation computes are the lengths of the training batch (images
    expanded, end of turn included); at max_length = the longest row the batch builds, one less refuses."""
    processor = chat_processors[name]
    rows = [dict(row, answers=row["answers"][:1]) for row in _rows()[:4]]
    batch = ChatVLMCollator(processor, instruction=INSTRUCTION)(rows)
    in_batch = batch["attention_mask"].sum(1).tolist()
    priced = [ChatVLMCollator(processor, instruction=INSTRUCTION).conversation_lengths(r, r["answers"])[0]
              for r in rows]
    assert priced == in_batch
    longest = max(in_batch)
    ChatVLMCollator(processor, instruction=INSTRUCTION, max_length=longest)(rows)
    assert validate_dataset(rows, split="train", collator=ChatVLMCollator(
        processor, instruction=INSTRUCTION, max_length=longest))[1].kept == 4
    tight = ChatVLMCollator(processor, instruction=INSTRUCTION, max_length=longest - 1)
    with pytest.raises(ValueError, match=rf"the conversation takes {longest} tokens.*max_length={longest - 1}"):
        tight(rows)
    _, report = validate_dataset(rows, split="train", on_bad="skip", collator=tight)
    assert [row.index for row in report.skipped_rows] == [i for i, n in enumerate(in_batch) if n == longest]


# ------------------------------------------------------------------ raise: refused before training


def test_florence2_raise_names_split_row_id_and_length(florence_processor):
    collator = florence2.Florence2Collator(florence_processor, answer_choice="random")
    length = len(collator.answer_ids(LONG))
    with pytest.raises(DataValidationError) as refused:
        clean_dataset(_dataset(_rows()), split="train", on_bad="raise", collator=collator)
    assert str(refused.value).startswith(
        f"[split='train', row 1, questionId=101] the answer takes {length} tokens with <s> and </s>, more than "
        "max_answer_tokens=64")
    assert (refused.value.split, refused.value.index, refused.value.question_id) == ("train", 1, 101)
    # the row with a file:line origin is named by it too
    with pytest.raises(DataValidationError, match=re.escape(
            f"[split='train', row 4, questionId=105, from data.jsonl:6] none of its 2 answers fits: they take "
            f"{length}, {len(collator.answer_ids(LONGER))} tokens with <s> and </s>, more than max_answer_tokens=64")):
        clean_dataset(_dataset(_rows()[:1] + _rows()[2:]), split="train", collator=collator)


def test_chat_raise_names_split_row_id_and_length(chat_processors):
    collator = _chat_collator(chat_processors["idefics2"])
    rows = _rows()
    lengths = collator.conversation_lengths(rows[1], rows[1]["answers"])
    with pytest.raises(DataValidationError, match=re.escape(
            f"[split='train', row 1, questionId=101] the conversation takes {lengths[0]} tokens (")
            + rf".*more than max_length={collator.max_length}"):
        clean_dataset(_dataset(rows), split="train", collator=collator)


# ------------------------------------------------------------------ skip: recorded, and training never meets them


def test_florence2_skip_records_the_rows_and_a_run_over_every_kept_row_completes(florence_processor,
                                                                                   tiny_florence2_path, tmp_path):
    collator = florence2.Florence2Collator(florence_processor, answer_choice="random")
    clean, report = clean_dataset(_dataset(_rows()), split="train", on_bad="skip", collator=collator)
    assert [(row.index, row.id, row.origin) for row in report.skipped_rows] == [(1, 101, None),
                                                                                  (5, 105, "data.jsonl:6")]
    length = len(collator.answer_ids(LONG))
    assert f"row 1 (questionId=101): the answer takes {length} tokens" in str(report)
    assert "row 5 (questionId=105) from data.jsonl:6: none of its 2 answers fits" in str(report)
    assert clean["questionId"] == [100, 102, 103, 104, 106, 107]  # the multi-answer row with a short answer stays

    # one epoch over the 6 kept rows (3 steps of 2) with the run's collator: no batch meets a long answer
    model, _ = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    freezing.freeze(*florence2.florence2_vision_modules(model))
    config = loop.TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-4, max_steps=3, batch_size=2,
                              progress=False)
    state = loop.train(model, clean, collator, config)
    assert state.step == 3 and sum(record["tokens"] for record in state.history) > 0


def test_chat_skip_records_the_rows_and_every_kept_row_collates(chat_processors):
    collator = _chat_collator(chat_processors["idefics2"], answer_choice="random")
    clean, report = clean_dataset(_dataset(_rows()), split="train", on_bad="skip", collator=collator)
    assert [(row.index, row.id) for row in report.skipped_rows] == [(1, 101), (5, 105)]
    assert "none of its 2 answers fits: the conversations take" in report.skipped_rows[1].reason
    assert clean["questionId"] == [100, 102, 103, 104, 106, 107]
    for seed in range(4):  # every kept row, in batches of 3, under several answer draws
        seeded = _chat_collator(chat_processors["idefics2"], answer_choice="random", seed=seed)
        for start in range(0, len(clean), 3):
            seeded([clean[i] for i in range(start, min(start + 3, len(clean)))])


# ------------------------------------------------------------------ several answers: bad only when none fits


def test_a_row_with_one_answer_that_fits_is_kept_and_trains_on_it(florence_processor, chat_processors):
    row = _rows()[3]  # [LONG, "7 May"]
    chat = _chat_collator(chat_processors["idefics2"])
    for collator in (florence2.Florence2Collator(florence_processor), chat):
        assert collator.length_problem(row) is None
        assert validate_dataset([row], split="train", collator=collator)[1].kept == 1
    tokenizer = chat_processors["idefics2"].tokenizer
    for seed in range(6):  # whatever the seeded draw, the answer that fits is the one learned
        batch = florence2.Florence2Collator(florence_processor, answer_choice="random", seed=seed)([row])
        assert supervised_text(batch["labels"][0], florence_processor.tokenizer) == "<s>7 May</s>"
        batch = _chat_collator(chat_processors["idefics2"], answer_choice="random", seed=seed)([row])
        assert supervised_text(batch["labels"][0], tokenizer) == "7 May<end_of_utterance>"


def test_without_a_collator_or_a_limit_nothing_is_priced(florence_processor, chat_processors):
    """Calls that do not pass collator= (older notebooks) behave as before; a chat collator without
    max_length has no limit, so nothing is refused for its length."""
    rows = _rows()
    assert validate_dataset(rows, split="train", processor=florence_processor)[1].kept == 8
    unlimited = ChatVLMCollator(chat_processors["idefics2"], instruction=INSTRUCTION)
    assert unlimited.length_problem(rows[1]) is None
    assert validate_dataset(rows, split="train", collator=unlimited)[1].kept == 8
    with pytest.raises(TypeError, match="no length_problem"):
        validate_dataset(rows, split="train", collator=object())


def test_the_collator_also_brings_its_processors_reserved_text_check(florence_processor):
    row = dict(_rows()[0], question="What does <OCR> say?")
    with pytest.raises(DataValidationError, match=r"row 0, questionId=100\] question 'question' contains '<OCR>'"):
        validate_dataset([row], split="train", collator=florence2.Florence2Collator(florence_processor))


# ------------------------------------------------------------------ the command line validates with its collator


def test_vlm_train_refuses_a_long_training_answer_before_the_first_step(tiny_cache, tmp_path, monkeypatch, capsys):
    from vlm_helpers import cli as train
    from vlm_helpers.recipes import florence2_docvqa
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    def rows_with_a_long_answer(dataset, **_):
        rows = make_synthetic_docvqa(8, seed=2)
        return rows.map(lambda row, i: {"answers": [LONG] if i == 3 else row["answers"]}, with_indices=True)

    monkeypatch.setenv("VLM_CACHE", str(tiny_cache))
    monkeypatch.delenv("VLM_TINY", raising=False)
    monkeypatch.setattr(florence2_docvqa, "docvqa_style_train_rows", rows_with_a_long_answer)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:  # a data problem: one line and exit status 2 (no traceback)
        train.main(["--tiny", "--max-eval-samples", "2", "--batch-size", "4", "--max-steps", "2",
                    "--output-dir", str(out), "--results-dir", str(tmp_path / "results")])
    assert stopped.value.code == 2
    assert re.search(r"vlm-train: error: \[split='train', row 3, questionId=\d+\] the answer takes \d+ tokens with "
                     r"<s> and </s>, more than max_answer_tokens=64", capsys.readouterr().err)
    assert not list(out.glob("checkpoint-*")) and not (out / "history.json").exists()


def test_a_question_too_long_for_florence2s_encoder_is_refused_in_every_split(florence_processor, tiny_florence2_path):
    """Florence-2's encoder has 1,024 positions for the page's image tokens, <s>, the prompt and </s>. A longer
    question made the forward fail with an IndexError naming no row (in training, and in the evaluation that
    generates answers for validation and test rows). Priced before training, also where answers are not."""
    collator = florence2.Florence2Collator(florence_processor)
    rows = _rows()[:3]
    rows[1]["question"] = "Which of these words " + "word " * 1100 + "is last?"
    assert collator.prompt_length(rows[1]) > 1024 >= collator.prompt_length(rows[0])
    with pytest.raises(DataValidationError, match=r"row 1, questionId=101\] the question takes the encoder to \d+ "
                                                  r"positions .* more than its 1024"):
        clean_dataset(_dataset(rows), split="test", on_bad="raise", collator=collator, price_answers=False)
    kept, report = clean_dataset(_dataset(_rows()[:3] + [rows[1]]), split="validation", on_bad="skip",
                                 collator=collator, price_answers=False)
    assert len(kept) == 3 and report.skipped == 1
    with pytest.raises(ValueError, match=r"questionId=101\): the question takes the encoder"):
        collator.generation_inputs(rows)  # and at batch time, naming the row
    model = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)[0]
    with pytest.raises(IndexError):  # what the model does with it: no row named
        model(**florence_processor(text=[rows[1]["question"]], images=[_image()], return_tensors="pt"))
