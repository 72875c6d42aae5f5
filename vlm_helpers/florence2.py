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

from vlm_helpers.data.images import to_rgb
from vlm_helpers.data.validation import reserved_text
from vlm_helpers.supervision import check_plain_text, pad_labels, pick_answer

FLORENCE2_MODEL_ID = "florence-community/Florence-2-base-ft"


DOCVQA_TASK_PROMPT = "<DocVQA>"


#: Florence-2 task tokens the notebook demonstrates (the processor expands them into prompts).
FLORENCE2_TASKS = ("<OCR>", "<CAPTION>", "<MORE_DETAILED_CAPTION>", "<REGION_TO_DESCRIPTION>")


def load_florence2(checkpoint: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   attn_implementation: str = "sdpa"):
    """Load a Florence-2 model and processor with the native transformers classes.

    For training keep ``dtype=torch.float32`` and let autocast run the maths in fp16/bf16:
    the blog's learning rate of 1e-6 is below bf16's resolution for weights near 1, so
    bf16 weights would silently not move. For inference only, load in the preset dtype.
    Returns ``(model, processor)``. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and
    freezing the vision encoder"; for inference in ``notebooks/01_baseline_inference.ipynb``, section
    "Florence-2: the built-in tasks".
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint, dtype=dtype, attn_implementation=attn_implementation
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

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see"; the
    ``<s>`` is explained in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning".
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
