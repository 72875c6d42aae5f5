"""DocVQA: its columns and the real loaders (full mode, Colab).

Taught in ``notebooks/02_florence2_docvqa.ipynb``.

* :func:`load_docvqa` reads ``HuggingFaceM4/DocumentVQA`` from the Hub (full mode).
* :func:`load_docvqa_1200` reads ``nielsr/docvqa_1200_examples``, the 1,200-question subset
  the Idefics2 QLoRA article trains on (notebook 03), renamed to DocVQA's column names.

The synthetic twin for tiny mode is :mod:`vlm_helpers.tiny.synthetic_docvqa`;
:func:`vlm_helpers.data.sources.docvqa_dataset` picks one of the two by mode, so everything
downstream has one code path.
"""

from __future__ import annotations

import datasets
from datasets import Features, Image, List, Value

from vlm_helpers.data.hub import first_rows
from vlm_helpers.revisions import revision_kwargs

__all__ = [
    "CHAT_INSTRUCTION",
    "DOCVQA_1200_ID",
    "DOCVQA_1200_SPLITS",
    "DOCVQA_FEATURES",
    "DOCVQA_ID",
    "docvqa_1200_rows",
    "load_docvqa",
    "load_docvqa_1200",
]

#: Column names and types of ``HuggingFaceM4/DocumentVQA``.
DOCVQA_FEATURES = Features(
    {
        "questionId": Value("int32"),
        "question": Value("string"),
        "question_types": List(Value("string")),
        "image": Image(),
        "docId": Value("int32"),
        "ucsf_document_id": Value("string"),
        "ucsf_document_page_no": Value("string"),
        "answers": List(Value("string")),
    }
)

DOCVQA_ID = "HuggingFaceM4/DocumentVQA"

#: The text chat models (Idefics2) see before the image and question, in training and in
#: evaluation alike (notebooks 01 and 03): the Idefics2 QLoRA article's instruction.
CHAT_INSTRUCTION = "Answer briefly."

#: The Idefics2 QLoRA article's data: 1,000 train + 200 test questions drawn from DocVQA, in
#: another schema: ``id`` (str), ``image``, ``query`` (``{"de", "en", "es", "fr", "it"}``),
#: ``answers`` (list of str), plus OCR ``words`` / ``bounding_boxes`` and a matched ``answer`` span.
DOCVQA_1200_ID = "nielsr/docvqa_1200_examples"

#: Our split name -> the split of ``nielsr/docvqa_1200_examples``. It has no "validation"; its
#: 200 "test" questions come with answers, so they serve as our validation rows.
DOCVQA_1200_SPLITS = {"train": "train", "validation": "test"}


def load_docvqa(
    split: str = "train",
    *,
    max_samples: int | None = None,
    streaming: bool = False,
    dataset_id: str = DOCVQA_ID,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load real DocVQA from the Hugging Face Hub (needs internet; Colab "full" mode).

    * ``streaming=False``: returns a ``Dataset``. With ``max_samples`` only the first rows are
      read, by streaming (:func:`vlm_helpers.data.hub.first_rows`): a split slice such as
      ``"validation[:100]"`` would make ``datasets`` download and prepare every split of
      the repository first (about 10 GB). Without it the whole split is downloaded.
    * ``streaming=True``: returns an ``IterableDataset`` that reads rows lazily;
      ``max_samples`` keeps the first rows with ``.take``. The rows can be iterated
      only, not indexed.

    ``revision``: the commit to read; None reads ``HuggingFaceM4/DocumentVQA`` at its pinned commit
    (:func:`vlm_helpers.revisions.hub_revision`; README, section "Pinned revisions").
    The ``test`` split has no answers; train on ``train``, evaluate on ``validation``. Full mode of
    ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    if streaming:
        dataset = datasets.load_dataset(dataset_id, split=split, streaming=True, cache_dir=cache_dir,
                                        **revision_kwargs(dataset_id, revision))
        return dataset.take(max_samples) if max_samples is not None else dataset
    return first_rows(dataset_id, split, max_samples, cache_dir=cache_dir,
                      hub_kwargs=revision_kwargs(dataset_id, revision))


def docvqa_1200_rows(dataset: datasets.Dataset, *, language: str = "en") -> datasets.Dataset:
    """Turn rows of ``nielsr/docvqa_1200_examples`` into DocVQA-style rows.

    Keeps ``image`` and ``answers``; ``query[language]`` becomes ``question`` and ``id`` becomes
    ``questionId`` (a string, as in that dataset); the OCR columns are dropped. Only the small
    columns are read: no page image is decoded or re-encoded. Taught in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The data: 1,200 questions about scanned documents".
    """
    questions = [query[language] for query in dataset["query"]]
    ids = [str(row_id) for row_id in dataset["id"]]
    rows = dataset.select_columns(["image", "answers"])
    rows = rows.add_column("question", questions).add_column("questionId", ids)
    return rows.select_columns(["questionId", "question", "answers", "image"])


def load_docvqa_1200(
    split: str = "train",
    *,
    max_samples: int | None = None,
    language: str = "en",
    dataset_id: str = DOCVQA_1200_ID,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> datasets.Dataset:
    """Load the Idefics2 article's DocVQA subset (about 150 MB) with DocVQA's column names.

    ``split`` is "train" (1,000 questions) or "validation" (the set's 200 "test" questions,
    see :data:`DOCVQA_1200_SPLITS`); ``max_samples`` keeps the first rows; ``revision`` as for
    :func:`load_docvqa` (None: the pinned commit). Needs the Hub. Full mode of
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The data: 1,200 questions about scanned documents".
    """
    if split not in DOCVQA_1200_SPLITS:
        raise ValueError(f"{dataset_id} has splits {sorted(DOCVQA_1200_SPLITS)} here, not {split!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    return docvqa_1200_rows(first_rows(dataset_id, DOCVQA_1200_SPLITS[split], max_samples, cache_dir=cache_dir,
                                       hub_kwargs=revision_kwargs(dataset_id, revision)), language=language)
