"""Everything Florence-2: the checkpoint, loading, the vision tower, the DocVQA collator, built-in tasks.

Taught in ``notebooks/02_florence2_docvqa.ipynb`` (loading, freezing, the collator) and
``notebooks/01_baseline_inference.ipynb`` (the built-in tasks). One loader serves both modes: in
full mode it gets a Hub id (``florence-community/Florence-2-base-ft``), in tiny mode the local
folder from :func:`vlm_helpers.tiny.tiny_checkpoint`.

What the blog got wrong in the collator and we fix:

- answer padding went into the loss: here every pad position of ``labels`` is -100,
  the value PyTorch's cross-entropy ignores;
- the processor ran on the GPU inside the training process: here the collator returns
  CPU tensors, so it can run in DataLoader worker processes (which must never touch
  CUDA) while the GPU trains.

The chat-model collator (Idefics2, LLaVA-Phi-3) lives in :mod:`vlm_helpers.chat_collator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vlm_helpers.processors import processor_from_pretrained
from vlm_helpers.runtime import torch_dtype
from vlm_helpers.revisions import revision_kwargs
from vlm_helpers.runtime import attention_by_part
from vlm_helpers.supervision import check_plain_text, pad_labels, pick_answer, reserved_text, to_rgb

FLORENCE2_MODEL_ID = "florence-community/Florence-2-base-ft"


DOCVQA_TASK_PROMPT = "<DocVQA>"


#: Florence-2 task tokens the notebook demonstrates (the processor expands them into prompts).
FLORENCE2_TASKS = ("<OCR>", "<CAPTION>", "<MORE_DETAILED_CAPTION>", "<REGION_TO_DESCRIPTION>")

#: Positions of Florence-2's BART encoder (base and large): the page's image tokens, ``<s>``, the prompt and
#: ``</s>`` must fit in them, or the position embedding fails with an IndexError that names no row.
FLORENCE2_MAX_PROMPT_TOKENS = 1024


def load_florence2(checkpoint: str | Path, *, dtype: torch.dtype | str, device: str = "cpu",
                   attn_implementation: str = "sdpa", revision: str | None = None):
    """Load a Florence-2 model and processor with the native transformers classes.

    ``dtype`` is required: transformers 5 loads a checkpoint in the dtype its ``config.json`` names when
    none is given, and Florence-2-base-ft's says ``float16``. For training pass ``torch.float32`` and let
    autocast run the maths in fp16/bf16: the blog's learning rate of 1e-6 is below bf16's resolution for
    weights near 1, so bf16 weights would silently not move. For inference only, load in the preset dtype.

    ``attn_implementation="flash_attention_2"`` (the A100 preset with flash-attn installed) becomes ``sdpa``
    (:func:`vlm_helpers.runtime.attention_by_part`): the DaViT vision tower's channel attention hands the kernel
    the number of image tokens as head dimension (36,864 at 768 px, where FlashAttention-2 takes at most 256),
    and transformers' FlashAttention path gets the BART decoder's cross-attention wrong on padded questions.
    ``revision``: the commit of a Hub id to load (``"main"`` for the newest files); None loads a default id at
    its pinned commit (:func:`vlm_helpers.revisions.hub_revision`; README, section "Pinned revisions"). A local
    folder (tiny mode, a saved model) gets none.
    Returns ``(model, processor)``. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    model, and freezing the vision encoder"; for inference in ``notebooks/01_baseline_inference.ipynb``, section
    "Florence-2: the built-in tasks".
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    hub = revision_kwargs(checkpoint, revision)  # {"revision": <pin>} for a Hub id, {} for a local folder
    processor = processor_from_pretrained(checkpoint, "florence2", **hub)  # the PIL image processor without torchvision
    attention = attention_by_part(AutoConfig.from_pretrained(checkpoint, **hub), attn_implementation)
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint, dtype=torch_dtype(dtype), attn_implementation=attention, **hub
    ).to(device)
    return model, processor


def florence2_vision_modules(model: nn.Module) -> list[nn.Module]:
    """The parts of Florence-2 that see pixels: the DaViT tower (and, if present, its projector).

    Frozen in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the vision encoder".
    """
    return [model.model.vision_tower]


class Florence2Collator:
    """Batch DocVQA-style rows for Florence-2: encoder gets ``<DocVQA>`` + question + image,
    the decoder learns ``<s>`` + the answer + ``</s>``; padding never reaches the loss.

    A question or answer holding one of the model's reserved strings (a task token such as
    ``<OCR>``, ``<s>``, ``<loc_5>``) and an answer longer than ``max_answer_tokens`` raise a
    ``ValueError`` naming the row, as does a question that takes the encoder past its 1,024 positions
    (``max_prompt_tokens``, the page's image tokens included): nothing is cut silently. Of several acceptable answers, only
    those that fit are drawn from; a row raises only when none fits. :meth:`length_problem` applies
    that rule to one row before training (``clean_dataset(..., collator=collator)``), so an over-long
    answer is refused or skipped before the first step instead of stopping the run at its batch.

    Rows need ``question``, ``image`` and ``answers`` (a list of strings). The model builds
    its decoder inputs from ``labels`` by shifting them right behind ``decoder_start_token_id``
    (``</s>``), so we pass labels only.

    Why the labels start with ``<s>``: the published generation config of the Florence-2
    checkpoints has ``forced_bos_token_id: 0``, so at inference the decoder always reads
    ``[</s>, <s>, answer...]``. Labels without ``<s>`` would train it on ``[</s>, answer...]``,
    with every answer token one position earlier than it will ever be generated. With ``<s>``
    first, training and generation see the same prefix (the blog's ``tokenizer(answers)``
    added it too).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see"; the
    ``<s>`` is explained in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning".
    """

    def __init__(self, processor, *, task_prompt: str = DOCVQA_TASK_PROMPT, max_answer_tokens: int = 64,
                 answer_choice: str = "first", seed: int = 0, id_key: str = "questionId",
                 max_prompt_tokens: int = FLORENCE2_MAX_PROMPT_TOKENS):
        self.processor = processor
        self.task_prompt = task_prompt
        self.max_answer_tokens = max_answer_tokens  # the limit, <s> and </s> included
        self.max_prompt_tokens = max_prompt_tokens  # the encoder's: image tokens, <s>, prompt, </s>
        self._prompt_overhead: int | None = None
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

    def prompt_length(self, row: dict) -> int:
        """How many encoder positions ``row`` takes: the page's image tokens, ``<s>``, the task prompt and the
        question, ``</s>`` (measured once with the processor on a blank image, then by the tokenizer)."""
        if self._prompt_overhead is None:
            from PIL import Image

            blank = self.processor(text=[""], images=[Image.new("RGB", (8, 8))])["input_ids"][0]
            self._prompt_overhead = len(blank)
        text = self.task_prompt + row["question"]
        return self._prompt_overhead + len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_problem(self, row: dict) -> str | None:
        length = self.prompt_length(row)
        if length <= self.max_prompt_tokens:
            return None
        return (f"the question takes the encoder to {length} positions with the page's image tokens, more than "
                f"its {self.max_prompt_tokens}; shorten the question or drop the row")

    def generation_inputs(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Inputs for ``model.generate``: prompt and pixels, no labels. A question too long for the encoder
        raises naming the row."""
        prompts = self.prompts(rows)
        for position, row in enumerate(rows):
            problem = self._prompt_problem(row)
            if problem:
                raise ValueError(f"{self._where(row, position)}: {problem}")
        images = [to_rgb(row["image"]) for row in rows]
        return dict(self.processor(text=prompts, images=images, return_tensors="pt", padding=True))

    def answer_ids(self, answer: str) -> list[int]:
        """The decoder's target for one answer, uncut: ``<s>``, the answer's tokens, ``</s>``.

        The one tokenization of an answer: :meth:`target_ids` trains on it and ``max_answer_tokens``
        limits its length (:meth:`length_problem`, used by ``clean_dataset(..., collator=...)``).
        """
        tokenizer = self.processor.tokenizer
        return [tokenizer.bos_token_id] + tokenizer(answer, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]

    def _fits(self, answer: str) -> bool:
        return len(self.answer_ids(answer)) <= self.max_answer_tokens

    def _too_long(self, lengths: Sequence[int]) -> str:
        """The problem of a row none of whose answers fits, with each answer's length and the limit."""
        if len(lengths) == 1:
            said = f"the answer takes {lengths[0]} tokens"
        else:
            said = f"none of its {len(lengths)} answers fits: they take {', '.join(map(str, lengths))} tokens"
        return (f"{said} with <s> and </s>, more than max_answer_tokens={self.max_answer_tokens}; raise "
                "max_answer_tokens or drop the row (nothing is cut silently)")

    def _answers(self, row: dict) -> list:
        """The answers a row's target is drawn from (a single string is one answer)."""
        answers = row.get("answers")
        return [] if answers is None else [answers] if isinstance(answers, str) else list(answers)

    def length_problem(self, row: dict, *, answers: bool = True) -> str | None:
        """Why ``row`` cannot be batched for its length, or None when it fits.

        The collator's own rules, for validation before training: the question with the page's image tokens
        against the encoder's ``max_prompt_tokens`` (:meth:`prompt_length`), and, with ``answers=True`` (a
        training split), each answer priced by :meth:`answer_ids` against ``max_answer_tokens``; a row with
        several answers is bad only when none fits (the collator draws among those that fit). Used by
        :func:`vlm_helpers.data.validation.clean_dataset` with ``collator=``, as in
        ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
        """
        problem = self._prompt_problem(row) if row.get("question") is not None else None
        if problem or not answers:
            return problem
        lengths = [len(self.answer_ids(answer)) for answer in self._answers(row)]
        if not lengths or any(length <= self.max_answer_tokens for length in lengths):
            return None
        return self._too_long(lengths)

    def target_ids(self, answer: str, *, where: str = "this row") -> list[int]:
        """Token ids the decoder must produce: ``<s>``, the answer and ``</s>`` (:meth:`answer_ids`).

        An answer that does not fit in ``max_answer_tokens`` raises (naming ``where``) instead of
        being cut: a cut answer teaches the model to stop mid-word.
        """
        check_plain_text(answer, self.reserved, where=where, what="answer")
        ids = self.answer_ids(answer)
        if len(ids) > self.max_answer_tokens:
            raise ValueError(f"{where}: {self._too_long([len(ids)])}")
        return ids

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = self.generation_inputs(rows)
        targets = []
        for i, row in enumerate(rows):
            where = self._where(row, i)
            answers = self._answers(row)
            if len(answers) > 1:
                # several acceptable answers: draw among those that fit, so a long alternative cannot
                # stop a run at the batch where the seeded draw happens to pick it
                fitting = [a for a in answers if isinstance(a, str) and self._fits(a)]
                if not fitting and all(isinstance(a, str) for a in answers):
                    raise ValueError(f"{where}: {self.length_problem(row)}")
                answers = fitting or answers[:1]
            answer = pick_answer(answers, choice=self.answer_choice, seed=self.seed, key=row.get(self.id_key, i))
            targets.append(self.target_ids(answer, where=where))
        batch["labels"] = pad_labels(targets)
        return batch


def box_to_location_tokens(box: tuple[float, float, float, float], image_size: tuple[int, int]) -> str:
    """A pixel box ``(x0, y0, x1, y1)`` as Florence-2's ``<loc_*>`` tokens (1000 bins per axis).

    Taught in ``notebooks/01_baseline_inference.ipynb``, section "Florence-2: the built-in tasks".
    """
    width, height = image_size
    bins = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    return "".join(f"<loc_{min(999, max(0, int(b * 1000)))}>" for b in bins)


@torch.no_grad()
def florence2_task(model, processor, image, task: str, text_input: str = "", *, device: str = "cpu",
                   max_new_tokens: int = 64, num_beams: int = 1):
    """Run one Florence-2 task on one image and return the processor's post-processed result.

    ``task`` is a task token such as ``"<CAPTION>"``; tasks that take an input (a region for
    ``<REGION_TO_DESCRIPTION>``, a phrase for grounding) get it in ``text_input``. Taught in
    ``notebooks/01_baseline_inference.ipynb``, section "Florence-2: the built-in tasks".
    """
    image = to_rgb(image)
    inputs = processor(text=task + text_input, images=image, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
    text = processor.batch_decode(generated, skip_special_tokens=False)[0]
    return processor.post_process_generation(text, task=task, image_size=image.size)[task]
