"""Where a notebook's rows come from: the real dataset in full mode, its synthetic twin in tiny mode.

Taught in ``notebooks/02_florence2_docvqa.ipynb`` (DocVQA), ``03`` (DocVQA) and ``04``
(FGVC-Aircraft); The Cauldron is for the command line. Each function is the one place where the
two modes take different data: the real loaders are in :mod:`vlm_helpers.data` (``docvqa``,
``aircraft``, ``cauldron``), the synthetic twins with the same columns in :mod:`vlm_helpers.tiny`
(``synthetic_docvqa``, ``synthetic_aircraft``, ``synthetic_cauldron``). Everything downstream
sees the same rows either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets

from vlm_helpers.data.aircraft import load_fgvc_aircraft, prepare_splits, report_splits
from vlm_helpers.data.cauldron import DEFAULT_SUBSETS, check_subsets, flatten_cauldron, load_cauldron
from vlm_helpers.data.docvqa import DOCVQA_1200_ID, DOCVQA_ID, load_docvqa, load_docvqa_1200
from vlm_helpers.tiny.synthetic_aircraft import make_synthetic_fgvc
from vlm_helpers.tiny.synthetic_cauldron import TINY_ROWS_PER_SUBSET, make_synthetic_cauldron
from vlm_helpers.tiny.synthetic_docvqa import TINY_NUM_ROWS, make_synthetic_docvqa, synthetic_split_seed


def docvqa_dataset(
    split: str, *, tiny: bool, max_samples: int | None = None, seed: int = 0, dataset_id: str = DOCVQA_ID,
    revision: str | None = None,
) -> datasets.Dataset:
    """DocVQA rows for ``split``: synthetic when ``tiny`` is true, real otherwise.

    Tiny mode renders ``max_samples`` rows (default :data:`TINY_NUM_ROWS`) with a
    seed derived from ``seed`` and the split name, so "train" and "validation"
    never share pages but follow the same question/answer distribution. Only
    "train" and "validation" exist in tiny mode. Full mode calls
    :func:`load_docvqa` (non-streaming) for ``dataset_id``, or :func:`load_docvqa_1200`
    when ``dataset_id`` is :data:`DOCVQA_1200_ID`; ``seed`` is unused there, and
    ``dataset_id`` and ``revision`` (the commit to read; None: a default dataset's pinned one, README, section
    "Pinned revisions") are unused in tiny mode. Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    data: questions about scanned documents", and ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The
    data: 1,200 questions about scanned documents".
    """
    if not tiny:
        if dataset_id == DOCVQA_1200_ID:
            return load_docvqa_1200(split, max_samples=max_samples, revision=revision)
        return load_docvqa(split, max_samples=max_samples, dataset_id=dataset_id, revision=revision)
    if split not in TINY_NUM_ROWS:
        raise ValueError(
            f"synthetic DocVQA has splits {sorted(TINY_NUM_ROWS)}, not {split!r} "
            "(real DocVQA's test split has no answers, so there is nothing to mimic)"
        )
    num_rows = TINY_NUM_ROWS[split] if max_samples is None else max_samples
    return make_synthetic_docvqa(num_rows, seed=synthetic_split_seed(seed, split))


def aircraft_dataset(
    *,
    tiny: bool,
    seed: int = 42,
    num_rows: int = 170,
    num_test_rows: int = 20,
    image_size: tuple[int, int] = (128, 96),
    max_samples: int | None = None,
    cache_dir: str | None = None,
    verbose: bool = True,
    train_revision: str | None = None,
    test_revision: str | None = None,
) -> datasets.DatasetDict:
    """``train`` / ``validation`` / ``test`` splits from the Hub (``tiny=False``) or synthetic.

    Tiny mode renders ``num_rows`` rows standing in for the train repo (seed ``seed``)
    and ``num_test_rows`` for the test repo (seed ``seed + 1``), then runs the same
    :func:`prepare_splits` as full mode. The defaults give 108 / 28 / 16 rows, the
    article's sizes. ``seed`` is also the split seed; ``num_*`` and ``image_size`` are
    ignored in full mode, ``train_revision`` / ``test_revision`` (the commits of the two Hub repositories; None:
    the pinned ones) in tiny mode. Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data:
    FGVC-Aircraft photos and their tags".
    """
    if not tiny:
        return load_fgvc_aircraft(
            max_samples=max_samples, cache_dir=cache_dir, seed=seed, verbose=verbose,
            train_revision=train_revision, test_revision=test_revision,
        )
    raw_train = make_synthetic_fgvc(num_rows, seed=seed, image_size=image_size)
    raw_test = make_synthetic_fgvc(num_test_rows, seed=seed + 1, image_size=image_size)
    splits = prepare_splits(raw_train, raw_test, seed=seed, max_samples=max_samples)
    if verbose:
        report_splits(splits, "synthetic")
    return splits


def cauldron_dataset(
    subsets: Sequence[str] = DEFAULT_SUBSETS,
    *,
    tiny: bool,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 0,
    multi_image: str = "skip",
    strip_instructions: bool = True,
    revision: str | None = None,
) -> datasets.Dataset:
    """Flattened Cauldron rows (DocVQA-style): synthetic when ``tiny``, real otherwise.

    ``max_samples`` counts *flattened* rows (questions) over all subsets, shared evenly:
    each subset contributes at most ``ceil(max_samples / len(subsets))`` questions, read
    from that many raw rows at most, and the result is cut to ``max_samples``. Without
    it, tiny mode builds :data:`TINY_ROWS_PER_SUBSET` pages per subset and full mode
    loads every subset whole; ``revision`` is the commit full mode reads (None: the pinned one, README, section
    "Pinned revisions"). No notebook trains on it: it is ``vlm-train --dataset cauldron`` (README,
    section "Scaling out: from one GPU to several machines"), suggested in
    ``notebooks/02_florence2_docvqa.ipynb``, section "What to try next".
    """
    subsets = check_subsets(subsets)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    per_subset = math.ceil(max_samples / len(subsets)) if max_samples is not None else None
    if tiny:
        raw = make_synthetic_cauldron(per_subset or TINY_ROWS_PER_SUBSET, subsets=subsets, seed=seed)
    else:
        raw = load_cauldron(subsets, split=split, max_samples=per_subset, revision=revision)
    parts = []
    for name, part in raw.items():
        flat = flatten_cauldron(part, subset=name, multi_image=multi_image, strip_instructions=strip_instructions)
        parts.append(flat.select(range(min(per_subset, len(flat)))) if per_subset is not None else flat)
    flat = datasets.concatenate_datasets(parts)
    return flat.select(range(min(max_samples, len(flat)))) if max_samples is not None else flat


def docvqa_style_train_rows(dataset: str, *, subsets: tuple[str, ...], tiny: bool, max_samples: int | None,
                            seed: int):
    """Training rows with DocVQA's columns: DocVQA itself (``dataset="docvqa"``), or The Cauldron's ``subsets``
    flattened into them (``"cauldron"``). What ``vlm-train --dataset`` reads for the DocVQA recipes (README, section
    "Scaling out: from one GPU to several machines")."""
    if dataset == "cauldron":
        return cauldron_dataset(subsets, tiny=tiny, max_samples=max_samples, seed=seed)
    return docvqa_dataset("train", tiny=tiny, max_samples=max_samples, seed=seed)
