"""The hold-out split: validation and test rows held out of the training rows, seeded, when the data has none.

The validation split chooses the best checkpoint; the test split, which plays no part in that choice, gives
the before/after scores. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data"
(``vlm-train --recipe custom`` splits the same way).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import datasets

__all__ = ["split_off_validation", "train_validation_test"]


def split_off_validation(dataset: datasets.Dataset, *, seed: int, fraction: float | None = None,
                         count: int | None = None, name: str = "validation"
                         ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Hold out a seeded validation split: ``(train, validation, report)``, report a printable line.

    ``name`` is what the held-out split is called in the report (``"test"`` for a test split).
    Give ``fraction`` (``ceil(fraction * n)`` rows) or ``count``. The held-out rows are drawn with
    ``random.Random(seed)``, the same for the same seed and size; both parts keep the original row order.
    (``Dataset.train_test_split`` would write index files next to a dataset loaded from disk.) Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    n = len(dataset)
    if (fraction is None) == (count is None):
        raise ValueError(f"give either fraction= or count= for the {name} split")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        count = math.ceil(fraction * n)
    if not 1 <= count < n:
        raise ValueError(f"cannot hold out {count} of {n} rows: both splits need at least one row")
    held = set(random.Random(seed).sample(range(n), count))
    validation = dataset.select(sorted(held))
    train = dataset.select([row for row in range(n) if row not in held])
    return train, validation, (f"no {name} split given: held out {count} of {n} rows (seed {seed}): "
                               f"train={len(train)}, {name}={len(validation)}")


def train_validation_test(splits: Mapping[str, datasets.Dataset], *, seed: int, validation_fraction: float,
                          test_fraction: float) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset, list[str]]:
    """Three disjoint splits from what the data has: ``(train, validation, test, report_lines)``.

    Splits the data already has (``validation``, ``test``) are used as they are; a missing one is held out
    of ``train`` with :func:`split_off_validation` (the test split with ``seed``, then the validation split
    with ``seed + 1``), and each hold-out is reported in ``report_lines``. The validation split chooses the
    best checkpoint; the test split, which plays no part in that choice, gives the before/after scores.
    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data"; ``vlm-train --recipe custom``
    splits the same way.
    """
    aliases = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}
    named = {}
    for name, rows in splits.items():
        canonical = aliases.get(name, name)
        if canonical not in ("train", "validation", "test"):
            raise ValueError(f"the data has a split {name!r} this recipe cannot place; its splits are {sorted(splits)} "
                             "(expected train, validation or val/dev, test)")
        if canonical in named:
            same = sorted(other for other in splits if aliases.get(other, other) == canonical)
            raise ValueError(f"the data has two {canonical} splits: {same}")
        named[canonical] = rows
    splits = named
    if "train" not in splits:
        raise ValueError(f"the data has no 'train' split; its splits are {sorted(splits)}")
    train, lines = splits["train"], []
    needed = 1 + ("test" not in splits) + ("validation" not in splits)
    if len(train) < needed:
        raise ValueError(f"the train split has {len(train)} row(s): too few to hold out the missing validation/test "
                         f"split(s) ({needed} at least; better hundreds)")
    test = splits.get("test")
    if test is None:
        train, test, line = split_off_validation(train, fraction=test_fraction, seed=seed, name="test")
        lines.append(line)
    validation = splits.get("validation")
    if validation is None:
        train, validation, line = split_off_validation(train, fraction=validation_fraction, seed=seed + 1)
        lines.append(line)
    return train, validation, test, lines
