"""PaliGemma 2 is trained with suffix labels, not refused (issue 28): the same checks the chat families get.

On the tiny twin of ``google/paligemma2-3b-pt-448`` (its configuration shrunk by sizes, its real processor class):
the labels are exactly the answer and ``<eos>`` (prefix, image tokens and padding -100), generation starts where
training did (the generation prompt is the training sequence's prefix), a model trained on two rows answers them and
stops, reserved text and over-long rows are refused with the row's id, and notebook 06's choice gets this collator.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_helpers import evaluation, lora, model_choices
from vlm_helpers.chat_collator import ChatVLMCollator
from vlm_helpers.prefix_collator import PALIGEMMA_TASK_PREFIXES, PrefixLMCollator
from vlm_helpers.supervision import IGNORE_INDEX
from vlm_helpers.tiny import tiny_checkpoint

ROWS = [
    {"id": "a", "image": Image.new("RGB", (300, 200), "white"), "question": "What is the total?", "answers": ["12.50"]},
    {"id": "b", "image": Image.new("RGB", (40, 90), (200, 30, 30)), "question": "Who signed it, and when?",
     "answers": ["J. Smith, 1999"]},
    {"id": "c", "image": Image.new("RGB", (64, 64), (20, 90, 200)), "question": None, "answers": "a blue square"},
]


@pytest.fixture(scope="module")
def paligemma(tiny_cache):
    return lora.load_chat_vlm(str(tiny_checkpoint("paligemma2", tiny_cache)), dtype="float32",
                              attn_implementation="sdpa", quantize_4bit=False)


def test_labels_are_the_answer_and_eos_only(paligemma):
    _, processor = paligemma
    collator = PrefixLMCollator(processor, task_prefix="answer en")
    batch = collator(ROWS)
    tokenizer = processor.tokenizer
    for i, row in enumerate(ROWS):
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        answer = row["answers"] if isinstance(row["answers"], str) else row["answers"][0]
        assert tokenizer.decode(supervised) == answer + tokenizer.eos_token
        assert int(supervised[-1]) == tokenizer.eos_token_id
        # the supervised positions are the suffix: token type 1, attended, never an image token
        where = batch["labels"][i] != IGNORE_INDEX
        assert batch["token_type_ids"][i][where].eq(1).all() and batch["attention_mask"][i][where].eq(1).all()
        assert not (batch["input_ids"][i][where] == processor.image_token_id).any()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["input_ids"] == processor.image_token_id).sum(1).eq(processor.image_seq_length).all()


def test_generation_starts_where_training_did(paligemma):
    _, processor = paligemma
    collator = PrefixLMCollator(processor, task_prefix=PALIGEMMA_TASK_PREFIXES["qa"])
    batch, prompts = collator(ROWS), collator.generation_inputs(ROWS)
    assert "labels" not in prompts
    assert prompts["attention_mask"][:, -1].eq(1).all()  # left-padded: every prompt ends in the last column
    for i in range(len(ROWS)):
        prompt = prompts["input_ids"][i][prompts["attention_mask"][i] == 1]
        first_answer_token = int((batch["labels"][i] != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(batch["input_ids"][i][:first_answer_token], prompt)
    text = processor.tokenizer.decode(prompts["input_ids"][0][prompts["attention_mask"][0] == 1])
    assert text.endswith("<bos>answer en What is the total?\n")
    assert collator.prefix(ROWS[2]) == "answer en"  # no question: the task prefix alone


def test_a_model_trained_on_two_rows_answers_them_and_stops(paligemma, tiny_cache):
    """The end-to-end form of both rules: were the labels shifted, or the generation prompt not the training
    prefix, or <eos> not supervised, the answers would not come back exactly."""
    model, processor = lora.load_chat_vlm(str(tiny_checkpoint("paligemma2", tiny_cache)), dtype="float32",
                                          attn_implementation="sdpa", quantize_4bit=False)
    collator = PrefixLMCollator(processor, task_prefix="answer en", answer_choice="first")
    rows = ROWS[:2]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(**collator(rows)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    answers = evaluation.generate_predictions(model, processor, collator, rows, max_new_tokens=12,
                                              postprocess=str)
    assert answers == [row["answers"][0] for row in rows], (answers, float(loss))


def test_reserved_text_and_long_rows_are_refused_with_the_row(paligemma):
    _, processor = paligemma
    collator = PrefixLMCollator(processor, task_prefix="answer en", max_length=40)
    bad = {**ROWS[0], "id": "r-7", "question": "Where is <loc0042>?"}
    with pytest.raises(ValueError, match=r"r-7.*<loc0042>|<loc0042>.*r-7"):
        collator([bad])
    long = {**ROWS[0], "id": "r-8", "answers": ["word " * 40]}
    assert "max_length=40" in collator.length_problem(long)
    assert collator.length_problem(ROWS[0]) is None
    with pytest.raises(ValueError, match="r-8"):
        collator([long])


def test_each_collator_refuses_the_other_kind(paligemma, tiny_cache):
    _, processor = paligemma
    with pytest.raises(ValueError, match="PrefixLMCollator"):
        ChatVLMCollator(processor, instruction="Answer briefly.")
    chat = lora.load_chat_processor(str(tiny_checkpoint("qwen2-vl", tiny_cache)))
    with pytest.raises(ValueError, match="not a prefix-LM processor"):
        PrefixLMCollator(chat, task_prefix="answer en")


def test_notebook_06s_choice_gets_the_prefix_collator_and_its_task_prefix(paligemma):
    _, processor = paligemma
    choice = model_choices.get_model_choice("paligemma2-3b")
    for task, prefix in PALIGEMMA_TASK_PREFIXES.items():
        collator = choice.collator(processor, task=task, instruction="Answer briefly.", seed=0)
        assert isinstance(collator, PrefixLMCollator) and collator.task_prefix == prefix
        assert choice.prompt_settings(task, "Answer briefly.") == {"task_prefix": prefix}
    assert choice.gated and choice.kind == "prefix-lm"
