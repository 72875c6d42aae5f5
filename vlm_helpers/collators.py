"""Turning dataset rows into model batches, with the loss mask done right (Florence-2).

Taught in ``notebooks/02_florence2_docvqa.ipynb``. What the blog got wrong and we fix:

- answer padding went into the loss: here every pad position of ``labels`` is -100,
  the value PyTorch's cross-entropy ignores;
- the processor ran on the GPU inside the training process: here the collator returns
  CPU tensors, so it can run in DataLoader worker processes (which must never touch
  CUDA) while the GPU trains.

The chat-model collator (Idefics2, Phi-3) lives in :mod:`vlm_helpers.chat_collator`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

import torch

from vlm_helpers.data.images import to_rgb
from vlm_helpers.data.validation import find_reserved, reserved_text

IGNORE_INDEX = -100
DOCVQA_TASK_PROMPT = "<DocVQA>"


def pick_answer(answers: Sequence[str], *, choice: str, seed: int, key: object) -> str:
    """Pick the training target among several valid answers.

    ``choice="first"`` takes ``answers[0]`` (the blog's choice); ``"random"`` draws one
    with an RNG seeded by ``(seed, key)``, so the pick is reproducible in any worker process.
    """
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"Row {key!r} has no usable answer: answers={list(answers)!r}")
    if choice == "first":
        return answers[0]
    if choice == "random":
        rng = random.Random(zlib.crc32(f"{seed}/{key}".encode()))
        return answers[rng.randrange(len(answers))]
    raise ValueError(f"answer choice must be 'first' or 'random', got {choice!r}")


def check_plain_text(text: str, reserved, *, where: str, what: str) -> None:
    """Raise ``ValueError`` naming the row when ``text`` holds one of the model's reserved strings.

    ``reserved`` comes from :func:`vlm_helpers.data.validation.reserved_text`. The processor would
    otherwise raise without naming the row (``<image>``, Florence-2's ``<OCR>``), or the answer
    would silently end at an end-of-turn token.
    """
    found = find_reserved(text, reserved)
    if found:
        raise ValueError(f"{where}: the {what} contains {found}, which the model's processor does not read as "
                         "text; validate the data with clean_dataset(..., processor=processor) before training")


def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad token-id lists into a ``(batch, max_len)`` tensor filled with -100."""
    width = max(len(seq) for seq in sequences)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(sequences):
        labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return labels


class Florence2Collator:
    """Batch DocVQA-style rows for Florence-2: encoder gets ``<DocVQA>`` + question + image,
    the decoder learns ``<s>`` + the answer + ``</s>``; padding never reaches the loss.

    A question or answer holding one of the model's reserved strings (a task token such as
    ``<OCR>``, ``<s>``, ``<loc_5>``) and an answer longer than ``max_answer_tokens`` raise a
    ``ValueError`` naming the row: nothing is cut silently. Of several acceptable answers, only
    those that fit are drawn from; a row raises only when none fits.

    Rows need ``question``, ``image`` and ``answers`` (a list of strings). The model builds
    its decoder inputs from ``labels`` by shifting them right behind ``decoder_start_token_id``
    (``</s>``), so we pass labels only.

    Why the labels start with ``<s>``: the published generation config of the Florence-2
    checkpoints has ``forced_bos_token_id: 0``, so at inference the decoder always reads
    ``[</s>, <s>, answer...]``. Labels without ``<s>`` would train it on ``[</s>, answer...]``,
    with every answer token one position earlier than it will ever be generated. With ``<s>``
    first, training and generation see the same prefix (the blog's ``tokenizer(answers)``
    added it too).
    """

    def __init__(self, processor, *, task_prompt: str = DOCVQA_TASK_PROMPT, max_answer_tokens: int = 64,
                 answer_choice: str = "first", seed: int = 0, id_key: str = "questionId"):
        self.processor = processor
        self.task_prompt = task_prompt
        self.max_answer_tokens = max_answer_tokens
        self.answer_choice = answer_choice
        self.seed = seed
        self.id_key = id_key
        self.reserved = reserved_text(processor)

    def _where(self, row: dict, position: int) -> str:
        return f"row {position} of the batch ({self.id_key}={row.get(self.id_key, position)!r})"

    def prompts(self, rows: Sequence[dict]) -> list[str]:
        """The encoder text of each row: task token followed by the question."""
        for position, row in enumerate(rows):
            check_plain_text(row["question"], self.reserved, where=self._where(row, position), what="question")
        return [self.task_prompt + row["question"] for row in rows]

    def generation_inputs(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Inputs for ``model.generate``: prompt and pixels, no labels."""
        images = [to_rgb(row["image"]) for row in rows]
        return dict(self.processor(text=self.prompts(rows), images=images, return_tensors="pt", padding=True))

    def _fits(self, answer: str) -> bool:
        ids = self.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return len(ids) + 2 <= self.max_answer_tokens

    def target_ids(self, answer: str, *, where: str = "this row") -> list[int]:
        """Token ids the decoder must produce: ``<s>``, the answer and ``</s>``.

        An answer that does not fit in ``max_answer_tokens`` raises (naming ``where``) instead of
        being cut: a cut answer teaches the model to stop mid-word.
        """
        check_plain_text(answer, self.reserved, where=where, what="answer")
        tokenizer = self.processor.tokenizer
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(ids) + 2 > self.max_answer_tokens:
            raise ValueError(f"{where}: the answer has {len(ids)} tokens, more than max_answer_tokens="
                             f"{self.max_answer_tokens} minus <s> and </s>; raise max_answer_tokens or drop the row")
        return [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = self.generation_inputs(rows)
        targets = []
        for i, row in enumerate(rows):
            where = self._where(row, i)
            answers = row["answers"]
            if isinstance(answers, (list, tuple)) and len(answers) > 1:
                # several acceptable answers: draw among those that fit, so a long alternative cannot
                # stop a run at the batch where the seeded draw happens to pick it
                fitting = [a for a in answers if isinstance(a, str) and self._fits(a)]
                answers = fitting or answers[:1]
            answer = pick_answer(answers, choice=self.answer_choice, seed=self.seed, key=row.get(self.id_key, i))
            targets.append(self.target_ids(answer, where=where))
        batch["labels"] = pad_labels(targets)
        return batch


def supervised_text(labels: torch.Tensor, tokenizer) -> str:
    """Decode only the supervised positions (label != -100) of one row, special tokens kept."""
    kept = [int(t) for t in labels.tolist() if t != IGNORE_INDEX]
    return tokenizer.decode(kept, skip_special_tokens=False)


def format_supervision(token_ids: torch.Tensor, labels: torch.Tensor | None, tokenizer, *, width: int = 100) -> str:
    """Show a learner which tokens the loss sees: ``[token]`` is supervised, ``·token·`` is not.

    For a decoder-only model pass ``input_ids`` and ``labels`` of the same row (aligned);
    for Florence-2 pass the ``labels`` row as both arguments. Repeated image tokens are
    folded into one ``<image>xN`` entry so the line stays readable.
    """
    tokens = tokenizer.convert_ids_to_tokens([max(int(t), 0) for t in token_ids.tolist()])
    flags = [True] * len(tokens) if labels is None else [int(x) != IGNORE_INDEX for x in labels.tolist()]
    parts: list[str] = []
    previous, run = None, 0
    for token, supervised in list(zip(tokens, flags)) + [(None, None)]:
        if (token, supervised) == previous:
            run += 1
            continue
        if previous is not None:
            text, was_supervised = previous
            text = text.replace("Ġ", "␣").replace("▁", "␣").replace("\n", "\\n")
            if run > 1:
                text = f"{text}x{run}"
            parts.append(f"[{text}]" if was_supervised else f"·{text}·")
        previous, run = (token, supervised), 1
    lines, line = [], ""
    for part in parts:
        if len(line) + len(part) > width and line:
            lines.append(line)
            line = ""
        line += part + " "
    lines.append(line)
    return "\n".join(l.rstrip() for l in lines)
