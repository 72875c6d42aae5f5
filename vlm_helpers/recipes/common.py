"""Steps every recipe of ``vlm-train`` shares: the rows validated before training (on rank 0, the verdict sent
to the others) and the digests that show the ranks kept the same weights.

The recipes are in the README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlm_helpers.data.validation import clean_dataset
from vlm_helpers.distributed import full_copy, unwrap
from vlm_helpers.launch import Distributed
from vlm_helpers.recipes.settings import RunSettings, UserError

__all__ = ["validated", "weights_digest", "write_weight_digest"]


def weights_digest(model) -> dict:
    """SHA-256 and sum of the trainable weights (names sorted): equal on every rank if DDP kept them in sync.

    FSDP shards are gathered first (a collective: call it on every rank). How to use the digests on a first
    real multi-GPU run: the README, section "What was tested, and where".
    """
    digest = hashlib.sha256()
    total = 0.0
    count = 0
    for name, param in sorted(unwrap(model).named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            continue
        tensor = full_copy(param).float().contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
        total += float(tensor.double().sum())
        count += 1
    return {"sha256": digest.hexdigest(), "sum": total, "tensors": count}


def write_weight_digest(model, settings: RunSettings, env: Distributed, step: int) -> Path:
    """Write ``output_dir/weights-rank<r>.json`` for this rank (``--write-weight-digests``).

    Compare the files of all ranks, as the README, section "What was tested, and where", suggests.
    """
    path = settings.output_dir / f"weights-rank{env.rank}.json"
    path.write_text(json.dumps({"rank": env.rank, "world_size": env.world_size, "step": step,
                                **weights_digest(model)}, indent=1))
    return path


def validated(dataset, split: str, settings: RunSettings, env: Distributed, reports: list | None = None, **columns):
    """Validate every row before training (:func:`~vlm_helpers.data.validation.clean_dataset`),
    against the model's processor too (``columns`` holds ``processor=`` and the column names) and, for the
    training split, against the run's collator (``collator=``: answers too long for it).

    Stops at the first bad row (naming it), or with ``--skip-bad-rows`` drops bad rows
    and lists them. Returns the dataset restricted to the good rows; images stay
    encoded and are decoded when a batch needs them. Under torchrun rank 0 validates
    (decoding every image once, not once per process) and sends the verdict to the others; its
    :class:`~vlm_helpers.data.validation.ValidationReport` is appended to ``reports`` (rank 0 only).
    The check's messages: the README, section "When things go wrong".
    """
    verdict: tuple | None = None
    if env.is_main:
        try:
            _, report = clean_dataset(dataset, split=split, on_bad="skip" if settings.skip_bad_rows else "raise",
                                      **columns)
            verdict = ("ok", report.kept_indices if report.skipped else None, str(report), report.kept)
            if reports is not None:
                reports.append(report)
        except ValueError as error:
            env.broadcast(("error", str(error)))
            raise
    verdict = env.broadcast(verdict)
    if verdict[0] == "error":  # the same user error on every rank (rank 0 alone prints it)
        raise UserError(f"rank 0 found a bad row: {verdict[1]}")
    _, kept_indices, text, kept = verdict
    env.log(text if kept_indices is not None else f"validated {split}: all {kept} rows usable")
    return dataset.select(kept_indices) if kept_indices is not None else dataset
