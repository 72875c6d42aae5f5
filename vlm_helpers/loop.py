"""An explicit, readable training loop with exact gradient accumulation and exact resume.

Taught in ``notebooks/02_florence2_docvqa.ipynb``; the command line
(:mod:`vlm_helpers.cli`) runs the same loop under torchrun. What it does, in order:

1. the data order of epoch ``e`` is a permutation seeded by ``seed + e``, so any step's
   batch can be rebuilt after a restart without replaying earlier batches;
2. one optimizer step = ``grad_accum`` micro-batches (per process); the loss is the sum
   of token losses divided by the number of supervised tokens in the *whole* step,
   across micro-batches and processes. (Averaging per-batch means, as most tutorials do,
   over-weights short answers and makes accumulation differ from a big batch.);
3. mixed precision from the preset: autocast in bf16, or fp16 with a gradient scaler;
   the weights themselves stay fp32;
4. gradient clipping, AdamW, a linear schedule with warm-up;
5. every ``checkpoint_every`` steps (and after the last step with ``checkpoint_at_end``):
   trainable weights, optimizer, scheduler, scaler, step, data position and RNG states
   (one per process), written atomically; the last ``keep_checkpoints`` kept
   (:mod:`vlm_helpers.checkpoints`);
6. a step whose loss or gradient norm is NaN or inf is *not applied*: the check runs after
   the backward pass and before ``optimizer.step()``, the update is skipped (weights and
   optimizer moments untouched; the schedule moves on, as the fp16 gradient scaler does),
   and the step is recorded as skipped. More than ``max_skipped_steps`` such steps stop
   training with a message; weights in memory and in every checkpoint stay finite. (With
   fp16, a finite loss with an infinite gradient is the gradient scaler's routine overflow:
   it skips that update and lowers its scale; recorded, not counted, unless the scale has
   already fallen to 1, where the gradient is infinite unscaled and the step counts.);
7. the loss history goes to ``history.json`` for plotting (and each record to ``log_fn``);
   a skipped step's record has ``"loss": null`` (if the loss itself was not finite) and a
   ``"skipped"`` reason.

Under torchrun the caller wraps the model in ``DistributedDataParallel`` (or shards it
with FSDP2's ``fully_shard``) first; the loop then shards the data by rank, all-reduces
token counts, lets rank 0 alone write files, and returns on every rank only after rank 0
has finished writing (the details are in :mod:`vlm_helpers.distributed`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from vlm_helpers.checkpoints import checkpoint_all_ranks, load_checkpoint, resume_point, scan_checkpoints
from vlm_helpers.supervision import IGNORE_INDEX
from vlm_helpers.distributed import all_reduce_sum, is_dtensor, no_gradient_sync, world
from vlm_helpers.freezing import frozen_to_eval
from vlm_helpers.history import finite_or_null

@dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the data.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """

    output_dir: str
    learning_rate: float = 1e-6
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; when set, overrides epochs
    batch_size: int = 2  # per process
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    dtype: str = "float32"  # autocast dtype: float32 (off), float16 or bfloat16
    device: str = "cpu"
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int | None = None
    checkpoint_at_end: bool = False  # also checkpoint the last step when checkpoint_every missed it
    keep_checkpoints: int = 2
    max_skipped_steps: int = 10  # steps with a NaN/inf loss or gradient skipped before training stops
    eval_every: int | None = None
    progress: bool = True


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint.

    :func:`train` returns it (``state.history`` is plotted) in ``notebooks/02_florence2_docvqa.ipynb``,
    section "Training".
    """

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    history: list[dict] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)  # steps whose update was not applied (NaN/inf)



def epoch_indices(num_rows: int, *, seed: int, epoch: int, batch_size: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This process's micro-batches (lists of row indices) for ``epoch``, in order.

    Global batch ``k`` is rows ``perm[k*B*W : (k+1)*B*W]`` of a permutation seeded by
    ``seed + epoch``; process ``r`` takes the ``r``-th slice of size ``B``. So one process
    with batch ``B*W`` sees exactly the rows that ``W`` processes with batch ``B`` see
    together. The last incomplete global batch is dropped so every process gets the same count.
    Explained in the README, section "Several GPUs on one machine" (step 3); the loop that uses it is
    taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(num_rows, generator=generator).tolist()
    global_batch = batch_size * world_size
    batches = []
    for start in range(0, num_rows - global_batch + 1, global_batch):
        begin = start + rank * batch_size
        batches.append(perm[begin: begin + batch_size])
    return batches


def steps_per_epoch(num_rows: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps one epoch gives (micro-batches per process // accumulation).

    Part of :func:`total_steps`, printed in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    return (num_rows // (config.batch_size * world_size)) // config.grad_accum


def total_steps(num_rows: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps the run will take: ``max_steps`` if set, else epochs x steps per epoch.

    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    if config.max_steps is not None:
        return config.max_steps
    steps = config.epochs * steps_per_epoch(num_rows, config, world_size)
    if steps == 0:
        raise ValueError(
            f"{num_rows} rows give no optimizer step with batch {config.batch_size} x {world_size} processes "
            f"x accumulation {config.grad_accum}: use more rows or a smaller batch"
        )
    return steps


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over supervised tokens (label != -100).

    Logits and labels are aligned: Florence-2's decoder is fed the labels shifted right (the model
    does it when given ``labels``), so position ``t``'s logits predict ``labels[t]``. Taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training" (written out, then compared with this one).
    """
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def supervised_tokens(labels: torch.Tensor) -> int:
    """How many label positions the loss counts.

    The divisor of an accumulation window, taught in ``notebooks/02_florence2_docvqa.ipynb``, section
    "Training".
    """
    return int(labels.ne(IGNORE_INDEX).sum())


def nonfinite_problem(loss: float | None, grad_norm: float | None) -> str | None:
    """Why a step's update must not be applied (its loss or gradient norm is NaN or inf), or None.

    Mentioned in ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; the rules are in the README,
    section "When things go wrong".
    """
    if loss is not None and not math.isfinite(loss):
        return f"non-finite loss ({loss})"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"non-finite gradient norm ({grad_norm})"
    return None


def too_many_skipped(skipped_steps: list[int], limit: int, *, checkpoint: str | Path | None) -> str:
    """The message training stops with once more than ``limit`` updates were skipped.

    Explained in the README, section "When things go wrong" (NaN or inf).
    """
    where = (f"The newest checkpoint ({checkpoint}) holds finite weights" if checkpoint
             else "No checkpoint was written yet")
    return (f"Training stopped: {len(skipped_steps)} steps had a NaN/inf loss or gradient (steps "
            f"{', '.join(map(str, skipped_steps[-20:]))}), more than the limit of {limit}. Their updates were "
            f"skipped, so the weights stayed finite. {where}. Lower the learning rate (or look at the rows of "
            "those steps) and resume, or raise the limit.")


def make_optimizer(model: nn.Module, config: TrainConfig, total: int):
    """AdamW over trainable parameters, and a linear schedule with ``warmup_steps``.

    The loop's optimizer, described in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters: did you freeze everything?")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total)
    return optimizer, scheduler


def _micro_batches(dataset, collator, config: TrainConfig, state: TrainState, rank: int,
                   world_size: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, batch_in_epoch_after, batch)`` forever, starting at the saved position."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        batches = epoch_indices(len(dataset), seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                rank=rank, world_size=world_size)
        if not batches:
            raise ValueError(f"Dataset of {len(dataset)} rows is smaller than one global batch")
        # pinned (page-locked) batches on a GPU: only from them is the loop's .to(device, non_blocking=True)
        # an asynchronous copy; from ordinary memory it waits
        loader = DataLoader(dataset, batch_sampler=batches[start:], collate_fn=collator,
                            num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed),
                            persistent_workers=False, pin_memory=torch.device(config.device).type == "cuda")
        for offset, batch in enumerate(loader, start=start + 1):
            yield epoch, offset, batch
        epoch, start = epoch + 1, 0


def train(model: nn.Module, dataset: Sequence, collator: Callable, config: TrainConfig, *,
          resume_from: str | Path | None = None,
          eval_fn: Callable[[int], dict] | None = None,
          log_fn: Callable[[dict], None] | None = None) -> TrainState:
    """Train ``model`` on ``dataset`` (rows) batched by ``collator``; return the final state.

    ``resume_from``: a checkpoint folder, or ``"latest"`` for the newest one in
    ``output_dir``. Starting fresh in a folder that already holds checkpoints is refused,
    so a finished run is never overwritten by accident.
    ``eval_fn(step)`` runs every ``eval_every`` steps on every rank (it decides itself
    which ranks do work) and returns metrics merged into that step's record.
    ``log_fn(record)`` is called on rank 0 with each step's record (loss, lr, ...).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    rank, world_size = world()
    output_dir = Path(config.output_dir)
    resume_from = resume_point(output_dir, resume_from, is_main=rank == 0)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = total_steps(len(dataset), config, world_size)
    optimizer, scheduler = make_optimizer(model, config, total)
    use_scaler = config.dtype == "float16"
    scaler = torch.amp.GradScaler(config.device, enabled=use_scaler) if use_scaler else None
    torch.manual_seed(config.seed)
    state = TrainState()
    last_saved = -1
    if resume_from is not None:
        state = TrainState(**load_checkpoint(resume_from, model, optimizer, scheduler, scaler, config))
        last_saved = state.step
    autocast = (torch.autocast(config.device, dtype=getattr(torch, config.dtype))
                if config.dtype != "float32" else nullcontext())
    progress = None
    if config.progress and rank == 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=state.step, desc="training", unit="step")
    model.train()
    frozen_to_eval(model)  # frozen parts (the vision tower) keep dropout / drop-path off
    stream = _micro_batches(dataset, collator, config, state, rank, world_size)
    while state.step < total:
        window = [next(stream) for _ in range(config.grad_accum)]
        local_tokens = sum(supervised_tokens(batch["labels"]) for _, _, batch in window)
        step_tokens = all_reduce_sum(local_tokens, config.device)
        if step_tokens == 0:
            raise ValueError(f"Step {state.step + 1} has no supervised token: check the collator's labels")
        loss_sum = 0.0
        for index, (_, _, batch) in enumerate(window):
            batch = {k: v.to(config.device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            # DDP averages gradients over processes, so scale by world_size to get a global token mean
            sync = no_gradient_sync(model) if (world_size > 1 and index < len(window) - 1) else nullcontext()
            with sync:
                with autocast:
                    logits = model(**batch, labels=labels).logits
                    summed = token_loss_sum(logits, labels)
                loss = summed * world_size / step_tokens
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += float(summed.detach())
        if scaler is not None:
            scaler.unscale_(optimizer)
        # the total gradient norm (clipping to max_grad_norm if set): computed for every step,
        # because a NaN/inf gradient must be caught before optimizer.step() writes it into the weights
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
        grad_norm = float(grad_norm.full_tensor() if is_dtensor(grad_norm) else grad_norm)
        step_loss = all_reduce_sum(loss_sum, config.device) / step_tokens
        problem = nonfinite_problem(step_loss, grad_norm)
        state.step += 1
        record = {"step": state.step, "epoch": window[-1][0], "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                  "tokens": int(step_tokens), "grad_norm": grad_norm}
        if problem is None:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        elif scaler is not None and math.isfinite(step_loss) and scaler.get_scale() > 1:
            # fp16 overflow: the scaler's routine skip. (At a scale of 1 or less the gradient is
            # infinite without any scaling: that is counted below like any other bad step.)
            scaler.step(optimizer)  # sees the inf and does not step
            scaler.update()
            record.update(grad_norm=None, skipped=f"fp16 overflow ({problem}): the gradient scaler skipped the "
                                                 f"update and lowered its scale to {scaler.get_scale():g}")
        else:  # not applied: weights and optimizer moments stay as they were
            if scaler is not None:
                scaler.update()
            state.skipped_steps.append(state.step)
            record.update({key: None for key in ("loss", "grad_norm") if not math.isfinite(record[key])})
            record["skipped"] = f"{problem}: update not applied"
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.epoch, state.batch_in_epoch = window[-1][0], window[-1][1]
        if len(state.skipped_steps) > config.max_skipped_steps:
            state.history.append(record)
            if rank == 0:
                save_history(state.history, output_dir / "history.json")
            complete = scan_checkpoints(output_dir)[0]
            raise FloatingPointError(too_many_skipped(state.skipped_steps, config.max_skipped_steps,
                                                      checkpoint=complete[-1] if complete else None))
        if eval_fn is not None and config.eval_every and state.step % config.eval_every == 0:
            model.eval()
            record.update(eval_fn(state.step))
            model.train()
            frozen_to_eval(model)
        state.history.append(record)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}", skipped=len(state.skipped_steps))
        if log_fn is not None and rank == 0:
            log_fn(record)
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            checkpoint_all_ranks(model, optimizer, scheduler, scaler, state, config, rank)
            last_saved = state.step
        if rank == 0:
            save_history(state.history, output_dir / "history.json")
    if config.checkpoint_at_end and state.step != last_saved:
        checkpoint_all_ranks(model, optimizer, scheduler, scaler, state, config, rank)
    if progress is not None:
        progress.close()
    if world_size > 1:  # nobody returns while rank 0 is still writing checkpoint or history
        dist.barrier()
    model.eval()
    return state




def save_history(history: list[dict], path: str | Path) -> None:
    """Write the loss history as JSON (atomically, so a crash never leaves half a file).

    NaN/inf, which JSON cannot hold, are written as null (a skipped step's record says why).
    The ``history.json`` of the README, section "One GPU", and of the README, section "When things go wrong".
    """
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(finite_or_null(history), indent=1, allow_nan=False))
    os.replace(tmp, path)


def load_history(path: str | Path) -> list[dict]:
    """Read a ``history.json`` written by :func:`train` (the loss curve; README, section "One GPU")."""
    return json.loads(Path(path).read_text())
