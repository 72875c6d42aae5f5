"""Labels and the loss mask: the tools every collator of the series shares.

Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see", and used
again by the chat collator of ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the
loss may see". A label of
``IGNORE_INDEX`` (-100) is a position the loss does not see: PyTorch's cross-entropy skips it.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

import torch

from vlm_helpers.data.validation import find_reserved

IGNORE_INDEX = -100
def pick_answer(answers: Sequence[str], *, choice: str, seed: int, key: object) -> str:
    """Pick the training target among several valid answers.

    ``choice="first"`` takes ``answers[0]`` (the blog's choice); ``"random"`` draws one
    with an RNG seeded by ``(seed, key)``, so the pick is reproducible in any worker process.
    The collator's ``answer_choice`` in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what
    the loss may see".
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
    would silently end at an end-of-turn token. The collators' check described in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    found = find_reserved(text, reserved)
    if found:
        raise ValueError(f"{where}: the {what} contains {found}, which the model's processor does not read as "
                         "text; validate the data with clean_dataset(..., processor=processor) before training")


def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad token-id lists into a ``(batch, max_len)`` tensor filled with -100.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    width = max(len(seq) for seq in sequences)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(sequences):
        labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return labels


def supervised_text(labels: torch.Tensor, tokenizer) -> str:
    """Decode only the supervised positions (label != -100) of one row, special tokens kept.

    What the loss sees, as in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss
    may see".
    """
    kept = [int(t) for t in labels.tolist() if t != IGNORE_INDEX]
    return tokenizer.decode(kept, skip_special_tokens=False)


def format_supervision(token_ids: torch.Tensor, labels: torch.Tensor | None, tokenizer, *, width: int = 100) -> str:
    """Show a learner which tokens the loss sees: ``[token]`` is supervised, ``·token·`` is not.

    For a decoder-only model pass ``input_ids`` and ``labels`` of the same row (aligned);
    for Florence-2 pass the ``labels`` row as both arguments. Repeated image tokens are
    folded into one ``<image>xN`` entry so the line stays readable. Used in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    ids = [int(t) for t in token_ids.tolist()]
    # -100 is not a token: show it as what it is (padding the loss skips), not as token id 0
    tokens = [str(IGNORE_INDEX) if t == IGNORE_INDEX else tokenizer.convert_ids_to_tokens(t) for t in ids]
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
