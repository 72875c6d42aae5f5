"""Checkpoints that resume the *same* loss curve: what is saved, how, and how it is read back.

Taught in ``notebooks/02_florence2_docvqa.ipynb`` (used by :func:`vlm_helpers.loop.train`
and the command line). A checkpoint is one file, ``checkpoint-<step>/training_state.pt``:
the trainable weights (the frozen rest is the base checkpoint's), optimizer, scheduler and
gradient-scaler states, the training position and every process's RNG state. It is written
to a staging folder ``checkpoint-<step>.tmp`` and renamed into place, so a crash never leaves
half a checkpoint under a checkpoint's name. With FSDP2 the sharded tensors are gathered
first, so one format serves one process, DDP and FSDP alike.

What counts as a checkpoint is decided in one place, :func:`scan_checkpoints`, for this loop's
checkpoints and the HF Trainer's alike (:mod:`vlm_helpers.hf_trainer` passes its own
completeness rule): only folders named exactly ``checkpoint-<step>`` that are complete. A
staging folder left by a kill mid-write, or a Trainer checkpoint whose ``trainer_state.json``
is cut short, is *incomplete*: never resumed from, reported, and set aside by
:func:`set_aside_incomplete` when a run resumes (a staging folder is deleted: it is a
half-written copy of what the previous checkpoint already holds; an incomplete Trainer
checkpoint is renamed ``incomplete-checkpoint-<step>`` and kept for you to inspect).
Before anything is written, the trainable weights are checked to be finite
(:func:`check_finite_weights`), so no checkpoint ever holds NaN weights.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from vlm_helpers.distributed import full_copy, is_dtensor, is_sharded, shard_like, unwrap, world

CHECKPOINT_FILE = "training_state.pt"


def rng_state() -> dict:
    """This process's Python, torch and (if present) CUDA RNG states.

    Saved in every checkpoint, as ``notebooks/02_florence2_docvqa.ipynb``, section "Training", explains.
    """
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore RNG states saved by :func:`rng_state` (see ``notebooks/02_florence2_docvqa.ipynb``, section
    "Training": a resumed run continues the same loss curve)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

def gather_rng_states() -> list[dict]:
    """Every process's RNG state, in rank order (a collective: all ranks must call it).

    Why checkpoints hold them all: the README, section "Several GPUs on one machine".
    """
    rank, world_size = world()
    if world_size == 1:
        return [rng_state()]
    states: list = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (the frozen rest is the base checkpoint's), as full tensors.

    For an FSDP2-sharded model this is a collective: call it on every rank. What a checkpoint holds is
    taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; the gathering in the README,
    section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """
    return {name: full_copy(p) for name, p in unwrap(model).named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded states gathered into full tensors (collective if sharded).

    The live optimizer state is left untouched: ``state_dict()`` shares its per-parameter
    dicts, so they are copied before anything is replaced. See the README, section "When DDP is not
    enough: FSDP or DeepSpeed ZeRO" (an FSDP checkpoint resumes on one GPU).
    """
    saved = optimizer.state_dict()
    saved["state"] = {index: {key: (full_copy(value) if is_dtensor(value) else value)
                              for key, value in sorted(per_param.items())}
                      for index, per_param in sorted(saved["state"].items())}
    return saved

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)(\.tmp)?")


def loop_checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint of :func:`vlm_helpers.loop.train`, or None.

    What counts as complete is explained in the README, section "When things go wrong".
    """
    if path.name.endswith(".tmp"):
        return "a staging folder: the run was stopped while writing this checkpoint"
    if not (path / CHECKPOINT_FILE).is_file():
        return f"no {CHECKPOINT_FILE} in that folder (not a checkpoint of this loop)"
    return None


def scan_checkpoints(output_dir: str | Path, problem: Callable[[Path], str | None] = loop_checkpoint_problem
                     ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(complete, incomplete)`` checkpoint folders of ``output_dir``.

    ``complete``: folders named ``checkpoint-<step>`` for which ``problem(path)`` is None,
    oldest step first. ``incomplete``: ``(folder, why)`` for every other ``checkpoint-<step>``
    or ``checkpoint-<step>.tmp`` folder. Other names are not ours and are ignored. Explained in the
    README, section "When things go wrong" (a crash or a disconnect).
    """
    complete, incomplete = [], []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        why = problem(path)
        if why is None and match.group(2) is None:
            complete.append((int(match.group(1)), path))
        else:
            incomplete.append((path, why or "a staging folder"))
    return [path for _, path in sorted(complete)], sorted(incomplete)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders in ``output_dir``, oldest first (see the README, section "When things go
    wrong")."""
    return scan_checkpoints(output_dir)[0]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None: the one a resumed run continues from
    (README, section "When things go wrong"); ``vlm-train`` names it in its summary (README, section
    "One GPU")."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def describe_incomplete(incomplete: list[tuple[Path, str]]) -> str:
    """One readable line per incomplete checkpoint folder (README, section "When things go wrong")."""
    return "; ".join(f"{path.name} ({why})" for path, why in incomplete)


def set_aside_incomplete(incomplete: list[tuple[Path, str]], log: Callable[[str], None] = print) -> None:
    """Move incomplete checkpoints out of the way before a run resumes, saying what was done.

    A staging folder (``checkpoint-<step>.tmp``) is deleted: it is a half-written file. Any other
    incomplete folder is renamed ``incomplete-checkpoint-<step>`` (numbered if taken) and kept.
    Explained in the README, section "When things go wrong".
    """
    for path, why in incomplete:
        if path.name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path} ({why})")
            continue
        target, n = path.with_name(f"incomplete-{path.name}"), 1
        while target.exists():
            target, n = path.with_name(f"incomplete-{path.name}-{n}"), n + 1
        os.replace(path, target)
        log(f"set aside {path.name} as {target.name} ({why}); resuming from the newest complete checkpoint")


def resume_point(output_dir: str | Path, resume, *, problem: Callable[[Path], str | None] = loop_checkpoint_problem,
                 results: tuple[str, ...] = ("final",), argument: str = "resume_from='latest'",
                 is_main: bool = True) -> Path | None:
    """The checkpoint a run continues from, or None for a fresh run; refuses what would lose work.

    ``resume``: None/False (fresh), ``"latest"``/True (the newest *complete* checkpoint), or a
    checkpoint folder (or the state file inside it). A fresh run into a folder holding any
    checkpoint, complete or not, or one of ``results`` (``final``, ``adapter``) raises
    ``FileExistsError`` before anything is written. Before resuming, the main process sets
    incomplete checkpoints aside (:func:`set_aside_incomplete`). ``problem`` is the
    completeness rule (this loop's, or the HF Trainer's); ``argument`` names the way to resume
    in messages. ``RESUME = True`` in ``notebooks/02_florence2_docvqa.ipynb``, section "Parameters", makes
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training", resume; the rules are in the README, section
    "When things go wrong".
    """
    output_dir = Path(output_dir)
    complete, incomplete = scan_checkpoints(output_dir, problem)
    if resume is None or resume is False:
        earlier = [p.name for p in complete] + [p.name for p, _ in incomplete]
        earlier += [name for name in results if (output_dir / name).exists()]
        if earlier:
            raise FileExistsError(
                f"{output_dir} already holds {', '.join(earlier)} from an earlier run; nothing was changed. "
                f"Resume with {argument} (the newest complete checkpoint), or choose a new output_dir.")
        return None
    if resume == "latest" or resume is True:
        if not complete:
            found = f" (only incomplete ones: {describe_incomplete(incomplete)})" if incomplete else ""
            raise FileNotFoundError(f"{argument} but {output_dir} holds no complete checkpoint{found}")
        resume = complete[-1]
    else:
        resume = Path(resume)
        if resume.is_file():  # the state file itself: its folder is the checkpoint
            resume = resume.parent
        why = problem(resume)
        if why is not None:
            raise ValueError(f"cannot resume from {resume}: {why}")
    if is_main and incomplete:
        set_aside_incomplete(incomplete)
    return resume


def check_finite_weights(model: nn.Module) -> None:
    """Raise ``FloatingPointError`` naming the first trainable parameter holding NaN or inf.

    Called before a checkpoint or a final model is written (with FSDP2: this rank's shards).
    Explained in the README, section "When things go wrong" (NaN or inf).
    """
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            local = param.to_local() if is_dtensor(param) else param
            if not bool(torch.isfinite(local.detach()).all()):
                raise FloatingPointError(f"trainable parameter {name!r} holds NaN or inf: refusing to save it")


def save_checkpoint(model, optimizer, scheduler, scaler, state, config,
                    rng_states: list[dict] | None = None, *, trainable: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write ``output_dir/checkpoint-<step>/training_state.pt`` atomically; prune old ones.

    ``state`` and ``config``: the loop's ``TrainState`` and ``TrainConfig`` dataclasses
    (:mod:`vlm_helpers.loop`, which imports this module, not the other way round).

    ``rng_states``: one RNG state per rank (see :func:`gather_rng_states`); by default
    this process's state only. ``trainable``/``optimizer_state``: already gathered full
    states (FSDP); by default taken from ``model`` and ``optimizer`` here. What it saves is taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    rng_states = rng_states if rng_states is not None else [rng_state()]
    if trainable is None:
        check_finite_weights(model)
    elif not all(bool(torch.isfinite(t).all()) for t in trainable.values()):
        raise FloatingPointError(f"step {state.step}: a trainable parameter holds NaN or inf: refusing to save it")
    target = Path(config.output_dir) / f"checkpoint-{state.step}"
    staging = target.with_name(target.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    torch.save({
        "trainable": trainable if trainable is not None else trainable_state_dict(model),
        "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": asdict(state),
        "rng": rng_states[0],
        "rng_per_rank": rng_states,
        "world_size": len(rng_states),
        "config": asdict(config),
    }, staging / CHECKPOINT_FILE)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    for old in checkpoint_dirs(config.output_dir)[: -config.keep_checkpoints]:
        shutil.rmtree(old)
    return target

def load_checkpoint(path: str | Path, model, optimizer, scheduler, scaler,
                    config=None) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; return the saved training state as a dict
    (the fields of :class:`vlm_helpers.loop.TrainState`).

    The data position is stored per process (micro-batches of ``batch_size`` rows each).
    If this run has another number of processes or another ``config.batch_size``, the
    position is converted through the number of rows already seen in the epoch, which is
    exact because every global batch is a slice of the same seeded permutation; a
    position that does not fall on a boundary of the new global batch is refused. Resuming is taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; another number of GPUs in the README,
    section "Several GPUs on one machine".
    """
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)  # our own file, written above
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"Checkpoint {file} cannot be read ({error}); the disk may have filled up or the machine "
                         "stopped while it was written. Resume from an older checkpoint-<step> folder instead, or "
                         "move this one away and resume from the newest remaining one") from error
    rank, world_size = world()
    params = dict(unwrap(model).named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(saved["trainable"]) != expected:
        missing, extra = expected - set(saved["trainable"]), set(saved["trainable"]) - expected
        raise ValueError(
            f"Checkpoint {file} does not match the model's trainable parameters "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}): freeze the same parts as the run that wrote it"
        )
    state = dict(saved["state"])
    saved_world, saved_batch = saved.get("world_size", 1), saved["config"]["batch_size"]
    batch_size = config.batch_size if config is not None else saved_batch
    if (saved_world, saved_batch) != (world_size, batch_size):
        rows_seen = state["batch_in_epoch"] * saved_batch * saved_world
        if rows_seen % (batch_size * world_size):
            raise ValueError(
                f"Checkpoint {file} stopped {rows_seen} rows into epoch {state['epoch']} (batch {saved_batch} x "
                f"{saved_world} process(es)), which is not a whole number of global batches of "
                f"{batch_size} x {world_size}: resume with the same global batch or process count"
            )
        state["batch_in_epoch"] = rows_seen // (batch_size * world_size)
    with torch.no_grad():
        for name, tensor in saved["trainable"].items():
            param = params[name]
            param.copy_(shard_like(tensor, param) if is_dtensor(param) else tensor)
    optimizer.load_state_dict(saved["optimizer"])
    for group in optimizer.param_groups:  # FSDP2: full moment tensors back into this rank's shards
        for param in group["params"]:
            if is_dtensor(param):
                per_param = optimizer.state.get(param, {})
                for key, value in per_param.items():
                    if torch.is_tensor(value) and not is_dtensor(value) and value.shape == param.shape:
                        per_param[key] = shard_like(value, param)
    scheduler.load_state_dict(saved["scheduler"])
    # the optimizer came back with the learning rate the *saved* run planned for its next step; a resumed run
    # planned to another length (more max_steps or epochs) continues on its own schedule from that step instead
    # (the same rate when the length is unchanged)
    if hasattr(scheduler, "lr_lambdas"):
        for group, base, rule in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * rule(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    # each process gets back its own RNG state when the process count is unchanged, else rank 0's
    rng_states = saved.get("rng_per_rank", [saved["rng"]])
    set_rng_state(rng_states[rank] if len(rng_states) == world_size else saved["rng"])
    return state

def checkpoint_all_ranks(model, optimizer, scheduler, scaler, state, config, rank: int) -> None:
    """Called on every rank: gather RNG states (and FSDP shards), then rank 0 writes the checkpoint.

    Rank 0 alone writes, as the README, section "Several GPUs on one machine", explains.
    """
    rng_states = gather_rng_states()
    trainable = optimizer_state = None
    if is_sharded(model):  # all-gathers: every rank takes part, rank 0 keeps the result
        trainable, optimizer_state = trainable_state_dict(model), full_optimizer_state(optimizer)
    if rank == 0:
        save_checkpoint(model, optimizer, scheduler, scaler, state, config, rng_states, trainable=trainable,
                        optimizer_state=optimizer_state)


# The Hugging Face Trainer's checkpoints (``checkpoint-<step>/``), read by :mod:`vlm_helpers.hf_trainer`
# and by ``vlm-train --resume``.

#: The file that makes ``checkpoint-<step>/`` a complete Trainer checkpoint (the Trainer writes it last).
TRAINER_STATE_FILE = "trainer_state.json"

#: Written into each checkpoint by :func:`train_with_trainer` after the Trainer's files: ``{"seconds": ...,
#: "step": ...}``, the training time up to that checkpoint over every session, so a resumed run reports its
#: whole training time (the Trainer's ``train_runtime`` counts one session).
TRAINING_TIME_FILE = "training_time.json"


def trainer_checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete Trainer checkpoint, or None.

    The Trainer writes ``trainer_state.json`` last, with a plain (non-atomic) write: a checkpoint
    is complete when that file exists and reads back with its ``global_step``. Explained in the README,
    section "When things go wrong"; ``RESUME`` in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section
    "Parameters", relies on it.
    """
    state_file = Path(path) / TRAINER_STATE_FILE
    if path.name.endswith(".tmp"):
        return "a staging folder: the run was stopped while writing this checkpoint"
    if not state_file.is_file():
        return f"no {TRAINER_STATE_FILE} in that folder (a checkpoint cut short by a crash, or not a checkpoint)"
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{TRAINER_STATE_FILE} is cut short or corrupt ({error}): the run was stopped while writing it"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE_FILE} has no global_step"
    return None


def trainer_checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete Trainer checkpoints (see :func:`trainer_checkpoint_problem`), oldest first.

    What counts as complete: the README, section "When things go wrong".
    """
    return scan_checkpoints(output_dir, trainer_checkpoint_problem)[0]


def latest_trainer_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete Trainer checkpoint in ``output_dir``, or None.

    The checkpoint named when too many NaN steps stop training, and the one a resume continues from
    (README, section "When things go wrong").
    """
    found = trainer_checkpoint_dirs(output_dir)
    return found[-1] if found else None


def checkpoint_json(checkpoint: str | Path | None, name: str) -> dict | None:
    """``checkpoint/name`` read as JSON, or None (no checkpoint, no such file, not JSON).

    What a resumed Trainer run reads back (its plan, its training time so far): README, section "When things go
    wrong"."""
    try:
        return json.loads((Path(checkpoint) / name).read_text()) if checkpoint is not None else None
    except (OSError, ValueError):
        return None
