"""A training history: one record per optimizer step (``{"step", "loss", "lr", ...}``), as both trainers write it.

The series' own loop (:mod:`vlm_helpers.loop`, notebook 02) writes these records itself; the Hugging Face
Trainer's log becomes the same shape through :func:`history_from_log` (notebooks 03, 04, 06), so plotting and
``results/`` read one format. A skipped step's loss is ``None`` (NaN is no JSON): :func:`finite_or_null`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["finite_or_null", "history_from_log"]


def finite_or_null(history: list[dict]) -> list[dict]:
    """The history with NaN/inf (which JSON cannot hold) as null (also used by ``loop.save_history``).

    Why a skipped step's loss is ``null``: the README, section "When things go wrong".
    """
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            for record in history]


def history_from_log(log_history: Sequence[dict]) -> list[dict]:
    """Turn ``trainer.state.log_history`` into ``[{"step", "epoch", "loss", "lr", "grad_norm"}]``.

    :func:`train_with_trainer` logs every optimizer step's own loss (``step_loss``, ``null`` when
    the step was skipped, with a ``skipped`` reason); where a step has that entry it is the
    record's ``loss``, and the Trainer's average over the logging window (which would hide a NaN)
    is dropped. Histories without those entries (older runs) keep the Trainer's logged loss.
    Entries without a loss (the end-of-run summary) are skipped; other keys logged at the same
    step (e.g. generation metrics) are merged into that step's record. The ``history`` plotted in
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer"; skipped
    steps are explained in the README, section "When things go wrong".
    """
    records: dict[int, dict] = {}
    own_loss: set[int] = set()
    for entry in log_history:
        if "step" not in entry or "train_runtime" in entry:
            continue
        step = int(entry["step"])
        record = records.setdefault(step, {"step": step})
        if "step_loss" in entry:
            own_loss.add(step)
        for key, value in entry.items():
            if key == "learning_rate":
                record.setdefault("lr", value)
            elif key == "step_loss":
                record["loss"] = value
            elif key == "loss":
                if step not in own_loss:
                    record["loss"] = value
            elif key != "step":
                record[key] = value
    for record in records.values():  # NaN/inf (a skipped step's grad_norm) is not JSON: null
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = None
    return [records[step] for step in sorted(records) if "loss" in records[step] or "skipped" in records[step]]
