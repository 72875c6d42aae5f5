"""Batching rows for chat vision-language models (Idefics2, LLaVA-Phi-3), with an exact loss mask.

Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb`` and reused unchanged by
``notebooks/04_phi3_aircraft_captioning.ipynb``. Each row becomes a two-turn chat::

    user:      <instruction> <image> <question>
    assistant: <answer><end-of-turn>

and the chat template of the processor turns it into text, e.g. for Idefics2
``"User: Answer briefly.<image>What is the total?<end_of_utterance>\\nAssistant: 12.50<end_of_utterance>\\n"``.

Only the answer and the end-of-turn token are learned. What the Idefics2 article got wrong,
and what the Phi-3 article got wrong, fixed here:

- the article put the *image token id* into the labels at pad positions, and the loss counts it;
  here pad, image tokens and the whole prompt are -100, the value the loss ignores;
- without the end-of-turn token (``<end_of_utterance>``, ``<|end|>``) in the labels the model
  never learns to stop; we keep it and mask whatever the template writes after it;
- the Phi-3 collator only ever used ``examples[0]`` (batch size 1); this one takes any batch.

How the prompt is masked: each row is rendered twice, prompt only (with the generation prompt,
e.g. ``"Assistant:"``) and the full conversation. Both go through the processor (which expands
``<image>`` into the image tokens), and the prompt's ids must be a prefix of the full ids. If a
tokenizer merged characters across the prompt/answer boundary that check fails loudly instead of
silently supervising the wrong tokens. The images are processed twice for that; on real data this
costs milliseconds per row, far less than the forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlm_helpers.collators import IGNORE_INDEX, check_plain_text, format_supervision, pick_answer
from vlm_helpers.data.images import to_rgb
from vlm_helpers.data.validation import reserved_text

__all__ = ["ChatVLMCollator", "describe_sample", "detect_end_of_turn", "vision_token_ids"]

#: Processor attributes that may name vision placeholder tokens (Idefics2 has the first two;
#: Idefics3/SmolVLM add a global image token; other families use begin/end-of-image tokens).
_VISION_TOKEN_ATTRIBUTES = ("image_token", "fake_image_token", "global_image_token", "boi_token",
                            "eoi_token", "image_start_token", "image_end_token", "image_break_token")

_SENTINEL = "\u2402ANSWER\u2402"  # a string no chat template writes by itself


def vision_token_ids(processor) -> set[int]:
    """Ids of every image-related placeholder token the processor inserts (never supervised).

    ``processor.image_token_id`` plus the ids of tokens such as ``<fake_token_around_image>``
    (Idefics2) or a global-image token (Idefics3), whichever the processor defines.
    """
    tokenizer = processor.tokenizer
    ids: set[int] = set()
    if getattr(processor, "image_token_id", None) is not None:
        ids.add(int(processor.image_token_id))
    for attribute in _VISION_TOKEN_ATTRIBUTES:
        token = getattr(processor, attribute, None)
        if isinstance(token, str) and token:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(int(token_id))
    if not ids:
        raise ValueError(f"{type(processor).__name__} defines no image token: is it a vision-language processor?")
    return ids


def detect_end_of_turn(processor) -> str:
    """The special token the chat template writes right after an assistant answer.

    Renders a conversation whose answer is a sentinel string and returns the first special
    token after it: ``<end_of_utterance>`` for Idefics2, ``<|end|>`` for Phi-3. Falls back to
    the tokenizer's eos token when the template writes no special token after the answer.
    """
    tokenizer = processor.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]},
    ]
    rendered = processor.apply_chat_template(messages, tokenize=False)
    if _SENTINEL not in rendered:
        raise ValueError("The chat template dropped the assistant's answer; pass end_of_turn= explicitly.")
    suffix = rendered.split(_SENTINEL, 1)[1]
    special = set(tokenizer.all_special_ids) | {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token_id in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    if tokenizer.eos_token is None:
        raise ValueError(f"No special token after the answer in {rendered!r}; pass end_of_turn= explicitly.")
    return tokenizer.eos_token


class ChatVLMCollator:
    """Turn rows into training batches (``__call__``) or generation inputs (``generation_inputs``).

    Args:
        processor: a processor with a chat template and an image token (Idefics2, LLaVA, ...).
        instruction: a short text put before the image, e.g. ``"Answer briefly."`` ("" for none).
        question_key: column with the question; ``None`` for tasks without one (captioning).
        answer_key: column with the target: a list of acceptable answers (DocVQA) or one string.
        image_key, id_key: columns with the image and the row id (the id seeds the answer pick
            and names the row in error messages).
        answer_choice: ``"random"`` (reproducible per row id and ``seed``) or ``"first"``.
        max_length: the longest training sequence, in tokens; a row that does not fit raises with
            its id (nothing is cut silently: a cut answer never learns to stop).
        end_of_turn: the token that ends the assistant turn; detected from the template if None.
    """

    def __init__(self, processor, *, instruction: str, question_key: str | None = "question",
                 answer_key: str = "answers", image_key: str = "image", id_key: str = "questionId",
                 answer_choice: str = "random", seed: int = 0, max_length: int | None = None,
                 end_of_turn: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.instruction = instruction
        self.question_key = question_key
        self.answer_key = answer_key
        self.image_key = image_key
        self.id_key = id_key
        self.answer_choice = answer_choice
        self.seed = seed
        self.max_length = max_length
        self.end_of_turn = end_of_turn or detect_end_of_turn(processor)
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if self.end_of_turn_id is None or self.end_of_turn_id == self.tokenizer.unk_token_id:
            raise ValueError(f"end_of_turn {self.end_of_turn!r} is not a single token of this tokenizer")
        self.vision_ids = vision_token_ids(processor)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token before batching")
        if self.end_of_turn_id in self.vision_ids:
            raise ValueError(f"end_of_turn {self.end_of_turn!r} is an image token")
        self.reserved = reserved_text(processor)
        check_plain_text(instruction, self.reserved, where="ChatVLMCollator(instruction=...)", what="instruction")

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the end-of-turn token, then the tokenizer's eos.

        :func:`vlm_helpers.evaluation.generate_predictions` passes them to ``generate``, so a
        checkpoint whose generation config forgets the end-of-turn token still stops there.
        """
        ids = [self.end_of_turn_id]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id != self.end_of_turn_id:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ text
    def _where(self, row: dict, position: int) -> str:
        return f"row {position} of the batch ({self.id_key}={row.get(self.id_key, position)!r})"

    def _check_question(self, row: dict, position: int) -> None:
        if self.question_key is not None:
            check_plain_text(row[self.question_key], self.reserved, where=self._where(row, position),
                             what="question")

    def messages(self, row: dict, answer: str | None = None) -> list[dict]:
        """The chat for one row: the user turn, plus the assistant turn when ``answer`` is given."""
        content = []
        if self.instruction:
            content.append({"type": "text", "text": self.instruction})
        content.append({"type": "image"})
        if self.question_key is not None:
            content.append({"type": "text", "text": row[self.question_key]})
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def prompt_text(self, row: dict) -> str:
        """The prompt a user sends at inference: user turn + the assistant marker."""
        return self.processor.apply_chat_template(self.messages(row), add_generation_prompt=True)

    def full_text(self, row: dict, answer: str) -> str:
        """The whole conversation, answer and end-of-turn included."""
        return self.processor.apply_chat_template(self.messages(row, answer))

    def target(self, row: dict, position: int) -> str:
        """The answer to learn for one row; a clear error names the row when there is none."""
        key = row.get(self.id_key, position)
        where = f"row {position} of the batch ({self.id_key}={key!r})"
        if self.answer_key not in row:
            raise ValueError(f"{where} has no {self.answer_key!r} column")
        answers = row[self.answer_key]
        if isinstance(answers, str):
            if not answers.strip():
                raise ValueError(f"{where} has an empty {self.answer_key!r}")
            check_plain_text(answers, self.reserved, where=where, what="answer")
            return answers
        if answers is None or len(answers) == 0:
            raise ValueError(f"{where} has an empty {self.answer_key!r} list: drop it or fix the data")
        try:
            answer = pick_answer(answers, choice=self.answer_choice, seed=self.seed, key=key)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        check_plain_text(answer, self.reserved, where=where, what="answer")
        return answer

    def _images(self, rows: Sequence[dict]) -> list[list]:
        return [[to_rgb(row[self.image_key])] for row in rows]

    # ------------------------------------------------------------------ batches
    def generation_inputs(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Prompt-only inputs for ``model.generate``, LEFT-padded, without labels.

        Left padding puts every prompt's last token in the last column, so the generated
        tokens of all rows start at the same position (what ``generate_predictions`` cuts at).
        The padding side is passed per call, so the tokenizer's own setting is not changed.
        """
        for position, row in enumerate(rows):
            self._check_question(row, position)
        texts = [self.prompt_text(row) for row in rows]
        return dict(self.processor(text=texts, images=self._images(rows), return_tensors="pt",
                                   padding=True, padding_side="left"))

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """A RIGHT-padded training batch: processor outputs plus ``labels``."""
        for position, row in enumerate(rows):
            self._check_question(row, position)
        answers = [self.target(row, i) for i, row in enumerate(rows)]
        images = self._images(rows)
        full = self.processor(text=[self.full_text(row, a) for row, a in zip(rows, answers)], images=images,
                              return_tensors="pt", padding=True, padding_side="right")
        prompts = self.processor(text=[self.prompt_text(row) for row in rows], images=images,
                                 padding=False)["input_ids"]
        input_ids, attention = full["input_ids"], full["attention_mask"]  # (batch, width)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(rows):
            where = f"row {i} of the batch ({self.id_key}={row.get(self.id_key, i)!r})"
            length = int(attention[i].sum())
            ids = input_ids[i, :length].tolist()
            prompt = list(prompts[i])
            if ids[: len(prompt)] != prompt:
                raise ValueError(
                    f"{where}: the prompt's tokens are not a prefix of the full conversation's tokens, "
                    "so the prompt cannot be masked by its length (the tokenizer merges text across the "
                    "prompt/answer boundary; check the chat template)")
            answer_ids = ids[len(prompt):]
            if self.end_of_turn_id not in answer_ids:
                raise ValueError(f"{where}: no {self.end_of_turn!r} after the answer; pass end_of_turn= explicitly")
            stop = len(prompt) + answer_ids.index(self.end_of_turn_id) + 1  # keep the end-of-turn token
            if self.max_length is not None and length > self.max_length:
                raise ValueError(f"{where}: the conversation takes {length} tokens ({len(prompt)} for the prompt, "
                                 f"images included), more than max_length={self.max_length}; raise max_length, "
                                 "shrink the image or drop the row (nothing is cut silently)")
            labels[i, len(prompt):stop] = input_ids[i, len(prompt):stop]
        for token_id in self.vision_ids:
            labels[input_ids == token_id] = IGNORE_INDEX
        # Padding is found by the attention mask, not by id: some tokenizers reuse eos as pad.
        labels[attention == 0] = IGNORE_INDEX
        batch = dict(full)
        batch["labels"] = labels
        return batch


def describe_sample(batch: dict[str, torch.Tensor], tokenizer, row: int = 0, *, width: int = 100) -> str:
    """One row of a training batch, ``[supervised]`` vs ``·masked·`` tokens (padding left out)."""
    length = int(batch["attention_mask"][row].sum())
    return format_supervision(batch["input_ids"][row, :length], batch["labels"][row, :length], tokenizer, width=width)
