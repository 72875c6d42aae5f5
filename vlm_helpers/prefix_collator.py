"""Batching rows for prefix-LM vision-language models (PaliGemma, PaliGemma 2): the answer is the *suffix*.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning" (``MODEL = "paligemma2-3b"``).

PaliGemma has no chat template and no roles. Its processor reads the image tokens, ``<bos>``, a text *prefix*
and ``"\\n"``; given ``suffix=``, it appends the answer and ``<eos>``::

    <image> x 1024  <bos>answer en What is the total?\\n  12.50<eos>
    |-------------- prefix: token_type_ids 0 --------|  |- suffix: 1 -|

The model attends to the whole prefix in both directions (that is what ``token_type_ids`` tell it in
training) and to the suffix causally. The processor's labels are the suffix tokens (answer and ``<eos>``) and
-100 everywhere else; this collator keeps that rule, checks it, and adds what the generic chat helpers do for
chat models:

- the prefix is the task prefix PaliGemma was pre-trained with (:data:`PALIGEMMA_TASK_PREFIXES`: ``"answer en"``
  before a question, ``"caption en"`` for a caption), then the row's question;
- generation starts where training did: :meth:`generation_inputs` calls the same processor on the same prefix,
  without a suffix, and every training batch checks that its prefix tokens are exactly those;
- the answer is supervised with the ``<eos>`` that ends it (without it the model never learns to stop);
  prefix, image tokens and padding are -100 (padding found by the attention mask, not by id);
- questions and answers holding the tokenizer's reserved tokens (``<image>``, ``<eos>``, ``<loc0042>``...) are
  refused with the row's id, and ``max_length`` refuses a row that would not fit, as the chat collator does.

A chat collator refuses this processor (:func:`vlm_helpers.chat_collator.check_chat_processor`): the two kinds
build their labels differently, and :meth:`vlm_helpers.model_choices.ModelChoice.collator` picks the right one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlm_helpers.supervision import (IGNORE_INDEX, check_plain_text, is_prefix_lm_processor, pick_answer,
                                     reserved_text, to_rgb)

__all__ = ["PALIGEMMA_TASK_PREFIXES", "PrefixLMCollator"]

#: What PaliGemma reads before a row's question, by the notebook's ``TASK``: the prefixes of its pre-training
#: mixture (big_vision's PaliGemma README: ``answer en`` for visual questions, ``caption en`` for captions).
PALIGEMMA_TASK_PREFIXES = {"qa": "answer en", "captioning": "caption en"}


class PrefixLMCollator:
    """Turn rows into training batches (``__call__``) or generation inputs (``generation_inputs``) for PaliGemma.

    Args:
        processor: a prefix-LM processor (``PaliGemmaProcessor``); a chat processor is refused.
        task_prefix: the text before the question (:data:`PALIGEMMA_TASK_PREFIXES`), ``""`` for none.
        question_key: column with the question (``None``, or an empty question: the task prefix alone).
        answer_key: column with the target: a list of acceptable answers or one string.
        image_key, id_key: columns with the image and the row id (the id seeds the answer pick and names the
            row in error messages).
        answer_choice: ``"random"`` (reproducible per row id and ``seed``) or ``"first"``.
        max_length: the longest training sequence in tokens (image tokens, prefix, answer and ``<eos>``); a row
            that does not fit is refused with its id (nothing is cut silently). None: no limit.

    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning".
    """

    def __init__(self, processor, *, task_prefix: str, question_key: str | None = "question",
                 answer_key: str = "answers", image_key: str = "image", id_key: str = "id",
                 answer_choice: str = "random", seed: int = 0, max_length: int | None = None):
        if not is_prefix_lm_processor(processor):
            raise ValueError(f"{type(processor).__name__} is not a prefix-LM processor (it takes no suffix=): "
                             "use ChatVLMCollator for chat models")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.task_prefix = task_prefix
        self.question_key = question_key
        self.answer_key = answer_key
        self.image_key = image_key
        self.id_key = id_key
        self.answer_choice = answer_choice
        self.seed = seed
        self.max_length = max_length
        if self.tokenizer.eos_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an eos token (it ends every answer) and a pad token")
        self.image_token_id = processor.image_token_id
        self.reserved = reserved_text(processor)
        check_plain_text(task_prefix, self.reserved, where="PrefixLMCollator(task_prefix=...)", what="task prefix")

    @property
    def stop_token_ids(self) -> list[int]:
        """The token that ends an answer: ``<eos>``, which the processor appends to every training suffix."""
        return [self.tokenizer.eos_token_id]

    # ------------------------------------------------------------------ text
    def _where(self, row: dict, position: int) -> str:
        return f"row {position} of the batch ({self.id_key}={row.get(self.id_key, position)!r})"

    def prefix(self, row: dict, position: int = 0) -> str:
        """The text before the answer: the task prefix, then the question (checked for reserved tokens)."""
        question = row.get(self.question_key) if self.question_key is not None else None
        if question:
            check_plain_text(question, self.reserved, where=self._where(row, position), what="question")
        return " ".join(part for part in (self.task_prefix, question) if part)

    def _texts(self, rows: Sequence[dict]) -> list[str]:
        # the image token first, as the processor expects it (without it the processor warns and adds it itself)
        return [self.processor.image_token + self.prefix(row, i) for i, row in enumerate(rows)]

    def _images(self, rows: Sequence[dict]) -> list:
        return [to_rgb(row[self.image_key]) for row in rows]

    def _answers(self, row: dict) -> list:
        answers = row.get(self.answer_key)
        return [] if answers is None else [answers] if isinstance(answers, str) else list(answers)

    def target(self, row: dict, position: int) -> str:
        """The answer to learn for one row; a clear error names the row when there is none."""
        where = self._where(row, position)
        if self.answer_key not in row:
            raise ValueError(f"{where} has no {self.answer_key!r} column")
        answers = [a for a in self._answers(row) if isinstance(a, str) and a.strip()]
        if not answers:
            raise ValueError(f"{where} has an empty {self.answer_key!r}: drop it or fix the data")
        if self.max_length is not None and len(answers) > 1:
            fitting = [a for a, n in zip(answers, self.lengths(row, answers)) if n <= self.max_length]
            answers = fitting or answers
        try:
            answer = pick_answer(answers, choice=self.answer_choice, seed=self.seed,
                                 key=row.get(self.id_key, position))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        check_plain_text(answer, self.reserved, where=where, what="answer")
        return answer

    # ------------------------------------------------------------------ lengths
    def lengths(self, row: dict, answers: Sequence[str]) -> list[int]:
        """Tokens of the whole training sequence of ``row`` with each of ``answers`` (image tokens included)."""
        image, text = self._images([row])[0], self._texts([row])[0]
        return [len(self._unpadded(text, image, suffix=answer)) for answer in answers]

    def _unpadded(self, text: str, image, **suffix) -> list[int]:
        """One row's token ids, unpadded. One row per call: transformers 5.15's processor builds its labels with
        ``np.array`` over the whole batch, which fails on rows of different lengths without padding."""
        return list(self.processor(text=[text], images=[image], padding=False, **suffix)["input_ids"][0])

    def length_problem(self, row: dict, *, answers: bool = True) -> str | None:
        """Why ``row`` cannot be batched for its length, or None (the chat collator's rule, on the suffix layout).

        Used by :func:`vlm_helpers.data.validation.clean_dataset` with ``collator=``, as in
        ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
        """
        if self.max_length is None:
            return None
        if not answers:
            length = len(self.generation_inputs([row])["input_ids"][0])
            return None if length <= self.max_length else (
                f"the prompt takes {length} tokens with its image tokens, more than max_length={self.max_length}")
        candidates = self._answers(row)
        if not candidates:
            return None
        lengths = self.lengths(row, candidates)
        if min(lengths) <= self.max_length:
            return None
        return (f"the sequence takes {min(lengths)} tokens at the shortest answer, more than "
                f"max_length={self.max_length}; raise max_length or drop the row (nothing is cut silently)")

    # ------------------------------------------------------------------ batches
    def generation_inputs(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Prefix-only inputs for ``model.generate``, LEFT-padded: exactly the prefix of a training sequence.

        Without the processor's all-ignored ``labels`` (it returns them even without a suffix)."""
        inputs = self.processor(text=self._texts(rows), images=self._images(rows), return_tensors="pt",
                                padding=True, padding_side="left")
        return {key: value for key, value in inputs.items() if key != "labels"}

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """A RIGHT-padded training batch: processor outputs (``token_type_ids`` included) plus checked ``labels``."""
        answers = [self.target(row, i) for i, row in enumerate(rows)]
        texts, images = self._texts(rows), self._images(rows)
        batch = dict(self.processor(text=texts, images=images, suffix=answers, return_tensors="pt",
                                    padding=True, padding_side="right"))
        prompts = [self._unpadded(text, image) for text, image in zip(texts, images)]
        input_ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(rows):
            where = self._where(row, i)
            length = int(attention[i].sum())
            prompt = list(prompts[i])
            if input_ids[i, : len(prompt)].tolist() != prompt or types[i, : len(prompt)].any():
                raise ValueError(f"{where}: the training prefix is not the generation prompt; the processor "
                                 "tokenizes prefix and suffix differently")
            suffix = input_ids[i, len(prompt):length]
            if len(suffix) == 0 or int(suffix[-1]) != self.tokenizer.eos_token_id:
                raise ValueError(f"{where}: the answer does not end with {self.tokenizer.eos_token!r}")
            if self.max_length is not None and length > self.max_length:
                raise ValueError(f"{where}: the sequence takes {length} tokens, more than max_length="
                                 f"{self.max_length} (nothing is cut silently)")
            labels[i, len(prompt):length] = suffix
        labels[input_ids == self.image_token_id] = IGNORE_INDEX
        labels[attention == 0] = IGNORE_INDEX
        batch["labels"] = labels
        return batch
