"""Keep the best checkpoint by the task metric on generated answers, not by the loss.

Used by :func:`vlm_helpers.hf_trainer.train_with_trainer` (``keep_best="val_anls"``), taught in
``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint". The rules:

- at every evaluation (``eval_fn`` every ``eval_every`` steps) the value of ``keep_best`` is compared with
  the best so far; it *improves* only when it is finite and strictly better, so a tie keeps the earlier
  step and a NaN (or inf) never wins;
- an improvement saves the adapter (and the processor, if given) to ``<output_dir>/best-adapter/``
  atomically: everything is written to ``best-adapter.tmp/``, :data:`METADATA_FILE` (metric, step, value)
  last, then the folder is renamed into place, so no half-written folder is ever called ``best-adapter``;
- ``patience=K``: after K evaluations in a row without improvement, training stops (one printed line);
- at the end the best adapter's weights are loaded back into the model in memory, so what follows
  (evaluation, saving) uses them, and one line says which step won.

The best so far is never kept in a separate state: it is recomputed from the evaluations in
``trainer.state.log_history``, which every Trainer checkpoint stores in ``trainer_state.json``. Its
weights travel with the checkpoint too: each ``checkpoint-<step>/`` gets a copy of ``best-adapter/`` in
``best-so-far/best-adapter/`` (one level deeper than the Trainer's adapter sub-folders, which it would
otherwise load as a second adapter on resume). A resumed run therefore continues with the best of the
evaluations *before* its checkpoint; a ``best-adapter/`` written later by the interrupted run is set
aside (renamed, never deleted) and the checkpoint's copy put back.

Under ``torchrun`` the decision is made on rank 0 (where ``eval_fn`` may be the only one to score) and
sent to every rank, so all stop at the same step; only rank 0 writes; at the end every rank loads the
same ``best-adapter/`` (the output folder must be shared, as for a resume).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

#: The folder, inside the run's ``output_dir``, holding the best adapter so far.
BEST_ADAPTER_DIR = "best-adapter"
#: Written last into the best adapter's folder: which metric chose it, at which step, with which value.
METADATA_FILE = "best_checkpoint.json"
#: Where each Trainer checkpoint keeps its copy of the best adapter so far (relative to the checkpoint).
CHECKPOINT_COPY = ("best-so-far", BEST_ADAPTER_DIR)
#: What a fresh run refuses to start over: a best adapter, or the previous one kept while the new one is
#: renamed into place (present only if a run stopped right then).
RUN_RESULTS = (BEST_ADAPTER_DIR, BEST_ADAPTER_DIR + ".old")


def is_improvement(value: float, best: float | None, *, greater_is_better: bool) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet): finite and strictly better, so ties keep the earlier.

    The rule of ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint".
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better else value < best


def evaluations(log_history: Sequence[dict], metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every evaluation in a Trainer log history that reports ``metric``, in order.

    Read from ``trainer.state.log_history`` in ``notebooks/06_your_data_your_model.ipynb``, section
    "Training: keep the best checkpoint".
    """
    return [(int(entry["step"]), _as_float(entry[metric])) for entry in log_history
            if metric in entry and "step" in entry]


def best_evaluation(log_history: Sequence[dict], metric: str, *, greater_is_better: bool
                    ) -> tuple[int, float] | None:
    """The winning ``(step, value)`` among the evaluations of ``log_history`` (:func:`is_improvement`), or None.

    None when no evaluation gave a finite value. The choice reported in
    ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint".
    """
    best = None
    for step, value in evaluations(log_history, metric):
        if is_improvement(value, None if best is None else best[1], greater_is_better=greater_is_better):
            best = (step, value)
    return best


def evaluations_without_improvement(log_history: Sequence[dict], metric: str, *, greater_is_better: bool) -> int:
    """How many evaluations came after the best one (all of them when none was finite): what ``patience`` counts.

    Early stopping in ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint".
    """
    best = best_evaluation(log_history, metric, greater_is_better=greater_is_better)
    return sum(1 for step, _ in evaluations(log_history, metric) if best is None or step > best[0])


def read_best_metadata(folder: str | Path) -> dict | None:
    """The ``{"metric", "step", "value", "greater_is_better"}`` of a best-adapter folder, or None if it has none.

    A folder without a readable :data:`METADATA_FILE` is not a complete best adapter. See
    ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint".
    """
    try:
        return json.loads((Path(folder) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None


def save_best_adapter(model, processor, folder: str | Path, *, metric: str, step: int, value: float,
                      greater_is_better: bool, base_model: str | None = None) -> Path:
    """Write the adapter (``adapters.save_adapter``; the adapter alone when ``processor`` is None) to ``folder``
    atomically: into ``<folder>.tmp``, :data:`METADATA_FILE` last, then renamed into place.

    The previous best is replaced only once the new one is complete. Refuses NaN/inf weights. Its files name
    ``base_model`` (a Hub id) as the base, never the path it was loaded from
    (:func:`vlm_helpers.adapters.portable_adapter_files`). Taught in ``notebooks/06_your_data_your_model.ipynb``,
    section "Training: keep the best checkpoint".
    """
    from vlm_helpers.checkpoints import check_finite_weights
    from vlm_helpers.adapters import portable_adapter_files, save_adapter

    folder = Path(folder)
    check_finite_weights(model)
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)  # a staging folder left by a crash is half-written
    if processor is None:
        model.save_pretrained(staging)
        portable_adapter_files(staging, base_model)
    else:
        save_adapter(model, processor, staging, base_model=base_model)
    metadata = {"metric": metric, "step": int(step), "value": float(value), "greater_is_better": greater_is_better}
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
    _replace_folder(staging, folder)
    return folder


def load_best_weights(model, folder: str | Path) -> None:
    """Put the adapter weights saved in ``folder`` back into ``model`` (a PEFT model), in memory.

    Raises ``ValueError`` if the file holds weights the model does not have. Done at the end of
    ``train_with_trainer(..., keep_best=...)``: ``notebooks/06_your_data_your_model.ipynb``, section "Training:
    keep the best checkpoint".
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{folder} holds weights this model does not have ({unexpected[:3]}...): "
                         "was it saved from another LoRA configuration?")


class BestCheckpointKeeper:
    """What ``train_with_trainer(..., keep_best=..., patience=...)`` does at each evaluation, save and at the end.

    ``after_evaluation`` decides (rank 0), saves an improvement, and sets ``control.should_training_stop``
    once ``patience`` evaluations in a row did not improve; ``callback()`` restores the best adapter on
    resume and copies it into every Trainer checkpoint; ``finish`` loads the winner back into the model and
    returns ``(step, value)`` or None. Taught in ``notebooks/06_your_data_your_model.ipynb``, section
    "Training: keep the best checkpoint".
    """

    def __init__(self, metric: str, *, greater_is_better: bool, patience: int | None, output_dir: str | Path,
                 processor=None, resume: str | Path | None = None, base_model: str | None = None):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a whole number >= 1 (or None: no early stopping), got {patience!r}")
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.folder = Path(output_dir) / BEST_ADAPTER_DIR
        self.processor = processor
        self.resume = Path(resume) if resume is not None else None
        self.base_model = base_model  # the Hub id the saved adapters name as their base

    def best(self, log_history: Sequence[dict]) -> tuple[int, float] | None:
        """The best ``(step, value)`` of ``log_history`` for this keeper's metric (:func:`best_evaluation`)."""
        return best_evaluation(log_history, self.metric, greater_is_better=self.greater_is_better)

    def after_evaluation(self, args, state, control, model, metrics: dict) -> None:
        """Called right after ``eval_fn``'s entry joined ``state.log_history``, on every process."""
        stop = None
        if state.is_world_process_zero:
            stop = self._decide(state, model, metrics)
        if _from_rank0(stop):
            control.should_training_stop = True
            if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
                from vlm_helpers.checkpoints import check_finite_weights

                check_finite_weights(model)  # as before any checkpoint: never a NaN one
                control.should_save = True  # the run's last checkpoint, as after its last step

    def _decide(self, state, model, metrics: dict) -> bool:
        if self.metric not in metrics:
            raise KeyError(f"keep_best={self.metric!r}, but eval_fn returned {sorted(metrics)}: "
                           "name one of those keys")
        value = _as_float(metrics[self.metric])
        earlier = self.best(state.log_history[:-1])
        if is_improvement(value, None if earlier is None else earlier[1], greater_is_better=self.greater_is_better):
            save_best_adapter(model, self.processor, self.folder, metric=self.metric, step=state.global_step,
                              value=value, greater_is_better=self.greater_is_better, base_model=self.base_model)
            return False
        waited = evaluations_without_improvement(state.log_history, self.metric,
                                                 greater_is_better=self.greater_is_better)
        if self.patience is None or waited < self.patience:
            return False
        best = "none had a finite value" if earlier is None else f"step {earlier[0]}, {self.metric} {earlier[1]:.4f}"
        print(f"early stopping at step {state.global_step}: {self.metric} has not improved for {waited} "
              f"evaluations (patience {self.patience}); best: {best}")
        return True

    def callback(self):
        """A ``TrainerCallback``: restores the best adapter on resume, copies it into each checkpoint."""
        from transformers import TrainerCallback

        keeper = self

        class KeepBestCheckpoint(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero and keeper.resume is not None:
                    keeper._restore(state)

            def on_save(self, args, state, control, **kwargs):
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if state.is_world_process_zero and checkpoint.is_dir() and read_best_metadata(keeper.folder):
                    target = checkpoint.joinpath(*CHECKPOINT_COPY)
                    staging = target.with_name(target.name + ".tmp")
                    shutil.rmtree(staging, ignore_errors=True)
                    shutil.copytree(keeper.folder, staging)
                    _replace_folder(staging, target)

        return KeepBestCheckpoint()

    def _matches(self, metadata: dict | None, best: tuple[int, float] | None) -> bool:
        return (metadata is not None and best is not None and metadata.get("metric") == self.metric
                and metadata.get("step") == best[0])

    def _restore(self, state) -> None:
        """The best adapter of the resumed checkpoint back in ``best-adapter/`` (see the module docstring)."""
        best = self.best(state.log_history)
        current = read_best_metadata(self.folder)
        if self._matches(current, best) or (best is None and not self.folder.exists()):
            return
        copy = self.resume.joinpath(*CHECKPOINT_COPY)
        saved = read_best_metadata(copy)
        if best is not None and not self._matches(saved, best):
            found = f"it holds step {saved.get('step')} by {saved.get('metric')}" if saved else "absent"
            raise FileNotFoundError(
                f"{self.resume} records step {best[0]} as the best by {self.metric} ({best[1]:.4f}), but neither "
                f"{self.folder} nor {copy} ({found}) holds that adapter (was the run that wrote it started without "
                f"keep_best={self.metric!r}?). Resume without keep_best, or train into a new output_dir.")
        if self.folder.exists():  # written by the interrupted run after the checkpoint: kept, under another name
            aside = _free_name(self.folder.with_name(
                f"{self.folder.name}-step-{current.get('step') if current else 'unknown'}-set-aside"))
            os.replace(self.folder, aside)
            print(f"set aside {self.folder.name}/ as {aside.name}/: written after {self.resume.name}, "
                  "which this run resumes from")
        if best is not None:
            staging = self.folder.with_name(self.folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(copy, staging)
            _replace_folder(staging, self.folder)
            print(f"best so far: step {best[0]}, {self.metric} {best[1]:.4f} (restored from {copy})")

    def finish(self, trainer, model, history: list[dict]) -> tuple[int, float] | None:
        """After ``trainer.train()``: load the winner into ``model``, mark its ``history`` record ``"best": True``,
        set ``trainer.state.best_metric``/``best_global_step``/``best_model_checkpoint``, print one line."""
        import torch.distributed as dist

        best = _from_rank0(self.best(trainer.state.log_history) if trainer.is_world_process_zero() else None)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # rank 0 has finished writing best-adapter/
        step = trainer.state.global_step
        count = len(evaluations(trainer.state.log_history, self.metric))
        if best is None:
            if trainer.is_world_process_zero():
                what = (f"no evaluation ran (the run's {step} steps ended before the first one)" if count == 0
                        else f"no evaluation gave a finite {self.metric} ({count} evaluations)")
                print(f"{what}: no best checkpoint, the model keeps the weights of step {step}")
            return None
        metadata = read_best_metadata(self.folder)
        if not self._matches(metadata, best):
            raise RuntimeError(f"{self.folder} should hold step {best[0]} by {self.metric}, but its "
                               f"{METADATA_FILE} says {metadata}")
        load_best_weights(model, self.folder)
        for record in history:
            if record["step"] == best[0]:
                record["best"] = True
        trainer.state.best_metric, trainer.state.best_global_step = best[1], best[0]
        trainer.state.best_model_checkpoint = str(self.folder)
        if trainer.is_world_process_zero():
            print(f"best checkpoint: step {best[0]} of {step}, {self.metric} {best[1]:.4f} (best of {count} "
                  f"evaluations); the model now holds its weights, saved in {self.folder}")
        return best


def _as_float(value) -> float:
    """A metric value as a float (NaN for None: a missing score never wins)."""
    return float("nan") if value is None else float(value)


def _from_rank0(value):
    """``value`` as rank 0 has it, on every process (itself on one process). A collective under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


def _free_name(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing an older ``target`` only then."""
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
