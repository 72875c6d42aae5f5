"""Synthetic The Cauldron: its real two columns, filled from synthetic DocVQA pages (tiny mode).

Used by the command line (``vlm-train --dataset cauldron --tiny``) through
:func:`vlm_helpers.data.sources.cauldron_dataset`; the real data and its flattening are in
:mod:`vlm_helpers.data.cauldron`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

import datasets
from datasets import Image

from vlm_helpers.data.cauldron import CAULDRON_FEATURES, DEFAULT_SUBSETS, check_subsets
from vlm_helpers.tiny.synthetic_docvqa import QUESTION_TEMPLATES, make_synthetic_docvqa

#: Raw (page) rows per subset that tiny mode generates when given no ``max_samples``.
TINY_ROWS_PER_SUBSET = 20

_SOURCE_NAMES = {"docvqa": "DocVQA", "ai2d": "AI2D", "chartqa": "ChartQA"}
_LETTERS = "ABCD"
# question text -> answer pool, for the templates whose answers come from a small pool
_POOLS = {t.question: t.pool for t in QUESTION_TEMPLATES if t.pool is not None and len(t.pool) > 1}


def make_synthetic_cauldron(
    num_rows: int,
    *,
    subsets: Sequence[str] = DEFAULT_SUBSETS,
    seed: int = 0,
    image_size: tuple[int, int] = (384, 480),
) -> datasets.DatasetDict:
    """A stand-in for :func:`load_cauldron`: ``{subset: Dataset}`` with exactly the real columns.

    Each subset gets ``num_rows`` rows; a row is one synthetic DocVQA page (rendered by
    :func:`~vlm_helpers.tiny.synthetic_docvqa.make_synthetic_docvqa`, seeded per subset) with all
    its questions as turns. The phrasing depends on the subset, loosely modelled on the
    real ones (not copied from them, and unverified offline):

    * ``docvqa`` and any other subset: the question, often followed by a brevity
      instruction line; the answer is the first DocVQA answer;
    * ``ai2d``: multiple choice (for questions whose answers come from a small pool):
      ``"Question: ...\\nChoices:\\nA. ...\\nAnswer with the letter."``, answered
      ``"Answer: B"``; other questions as for docvqa;
    * ``chartqa``: the question followed by ``"Answer briefly."``.

    For ``vlm-train --dataset cauldron --tiny`` (README, section "Scaling out: from one GPU to several
    machines").
    """
    subsets = check_subsets(subsets)
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    parts = {}
    for subset in subsets:
        subset_seed = zlib.crc32(f"cauldron/{subset}/{seed}".encode())
        rng = random.Random(subset_seed)
        pages: dict[int, dict] = {}
        if num_rows:
            # A page carries at most 5 questions, so 5 x num_rows rows span >= num_rows whole pages.
            questions = make_synthetic_docvqa(5 * num_rows, seed=subset_seed, image_size=image_size)
            questions = questions.cast_column("image", Image(decode=False))
            for row in questions:
                if row["docId"] not in pages:
                    if len(pages) == num_rows:
                        break
                    pages[row["docId"]] = {"images": [row["image"]], "texts": []}
                user, assistant = _phrase(subset, row["question"], row["answers"][0], rng)
                pages[row["docId"]]["texts"].append(
                    {"user": user, "assistant": assistant, "source": _SOURCE_NAMES.get(subset, subset)})
        columns = {"images": [p["images"] for p in pages.values()], "texts": [p["texts"] for p in pages.values()]}
        parts[subset] = datasets.Dataset.from_dict(columns, features=CAULDRON_FEATURES)
    return datasets.DatasetDict(parts)


def _phrase(subset: str, question: str, answer: str, rng: random.Random) -> tuple[str, str]:
    """(user, assistant) texts for one synthetic question in ``subset``'s style."""
    if subset == "ai2d" and question in _POOLS:
        pool = _POOLS[question]
        distractors = rng.sample([v for v in pool if v != answer], min(len(_LETTERS) - 1, len(pool) - 1))
        choices = distractors + [answer]
        rng.shuffle(choices)
        lines = "\n".join(f"{letter}. {choice}" for letter, choice in zip(_LETTERS, choices))
        return (f"Question: {question}\nChoices:\n{lines}\nAnswer with the letter.",
                f"Answer: {_LETTERS[choices.index(answer)]}")
    if subset == "chartqa":
        return f"{question}\nAnswer briefly.", answer
    suffix = rng.choice(("", "\nGive a very brief answer.", "\nShort answer required."))
    return question + suffix, answer
