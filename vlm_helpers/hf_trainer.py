"""Training chat VLMs with the Hugging Face ``Trainer``: its arguments, checkpoints, NaN guard, history.

Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb`` and reused by
``notebooks/04_phi3_aircraft_captioning.ipynb``. Notebook 02 writes its own loop
(:mod:`vlm_helpers.loop`); here the ``Trainer`` does the loop and this module only fills in
its arguments the way the series needs them:

- current argument names (transformers 5.x): ``eval_strategy``, float ``warmup_steps`` (a
  fraction of the run when < 1; ``warmup_ratio`` is gone), ``dtype`` flags from the preset
  (``fp16`` on a T4, ``bf16`` from compute capability 8.0, neither on CPU), and gradient
  checkpointing with ``use_reentrant=False`` when the preset asks for it (called
  ``activation_checkpointing`` from transformers 5.23 on);
- ``remove_unused_columns=False``: our collator needs the raw ``image``/``question`` columns,
  which the Trainer would otherwise drop because the model's ``forward`` does not name them;
- ``paged_adamw_8bit`` on GPU (QLoRA's optimizer: 8-bit states, paged to CPU on memory spikes),
  plain ``adamw_torch`` on CPU, where bitsandbytes' paged optimizers do not run;
- the loss history comes back as ``[{"step", "loss", ...}]``, the shape :mod:`vlm_helpers.loop`
  writes, so plotting and ``results/`` code is shared;
- checkpoints are the Trainer's own (``checkpoint-<step>/`` with the adapter, optimizer, scheduler,
  each process's RNG state and ``trainer_state.json``, whose ``log_history`` is the loss curve so
  far): ``save_at_end=True`` writes exactly one, after the last step, and
  ``train_with_trainer(..., resume_from_checkpoint=...)`` continues from it. The Trainer writes
  ``trainer_state.json`` last and not atomically, so a checkpoint counts only when that file
  reads back (:func:`trainer_checkpoint_problem`); a resume skips one cut short by a crash for
  the previous complete one. A fresh run into a folder that already holds checkpoints or a saved
  ``adapter/`` is refused, so a finished run is never overwritten. A resumed run continues the step count
  and the learning-rate schedule (a longer plan without a second warm-up), and its checkpoints and
  ``best-adapter/`` name the base by its Hub id, not by a path of this machine;
- non-finite steps: the Trainer itself would apply a NaN gradient, and its
  ``logging_nan_inf_filter`` logs a NaN loss as a finite number. Here every optimizer step's
  loss and gradients are checked before ``optimizer.step()``; a NaN/inf step is not applied
  (its gradients are dropped), recorded as skipped, and more than ``max_skipped_steps`` stop
  training. The history has one record per optimizer step with that step's own loss
  (``null`` for a skipped one), so a NaN never hides in a logging window's average;
- under ``torchrun`` the Trainer wraps the model in DDP itself: gloo on CPU, and
  ``find_unused_parameters=False`` because every trainable weight (LoRA on modules that run,
  ``modules_to_save``) gets a gradient at every step.

Evaluation is by *generation* + ANLS (:func:`vlm_helpers.evaluation.generate_predictions`), not
the Trainer's teacher-forced ``eval_loss``: pass ``eval_fn`` to :func:`train_with_trainer`.

Experiment trackers need keys: they come from Colab secrets or environment variables
(:func:`vlm_helpers.tracking.secret`), never from a notebook cell (the article's ``wandb.login(key="...")``).
"""

from __future__ import annotations

import json
import os
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vlm_helpers.checkpoints import (TRAINER_STATE_FILE, TRAINING_TIME_FILE, checkpoint_json, latest_trainer_checkpoint,
                                     resume_point, trainer_checkpoint_problem)
from vlm_helpers.history import history_from_log
from vlm_helpers.tracking import validate_report_to

__all__ = ["LOG_COLUMNS", "log_table_header", "log_table_row", "make_training_arguments",
           "train_with_trainer"]

#: ``save_steps`` for "only after the last step": never a multiple of a real step number, and with
#: ``save_strategy="steps"`` the Trainer always saves once the run reaches ``max_steps``.
_SAVE_ONLY_AT_END = 10**12

def make_training_arguments(*, output_dir: str, batch_size: int, grad_accum: int, dtype: str,
                            gradient_checkpointing: bool = False, device: str = "cpu", learning_rate: float = 1e-4, epochs: float = 1.0,
                            max_steps: int = -1, warmup_steps: float = 0, weight_decay: float = 0.01,
                            report_to: str | Sequence[str] = "none", logging_steps: int = 5,
                            save_steps: int | None = None, save_total_limit: int = 1, save_at_end: bool = False,
                            seed: int = 0, max_grad_norm: float = 1.0, lr_scheduler_type: str = "linear",
                            dataloader_num_workers: int | None = None, **overrides):
    """``TrainingArguments`` for a QLoRA/LoRA run: batching, precision, checkpointing, optimizer.

    ``batch_size`` (per device) x ``grad_accum`` is the batch of one optimizer step; ``dtype``
    (``"bfloat16"``, ``"float16"`` or ``"float32"``) picks the Trainer's ``bf16``/``fp16`` flags;
    ``device="cuda"`` picks the paged 8-bit AdamW and DataLoader workers. The notebooks pass their
    preset's values (``preset.batch_size``, ``preset.dtype``, ...).

    Checkpoints (``checkpoint-<step>/`` in ``output_dir``, the newest ``save_total_limit`` kept):
    ``save_steps=N`` saves every N steps and after the last one; ``save_steps=None`` saves none
    (save the adapter yourself at the end), unless ``save_at_end=True``: then exactly one, after
    the last step, which ``train_with_trainer(..., resume_from_checkpoint=...)`` can continue.
    ``warmup_steps`` below 1 is a fraction of the run (the article's 75 of 178 steps = 0.42).
    Under ``torchrun`` on CPU the Trainer's DDP uses gloo; ``find_unused_parameters`` is off
    (pass ``ddp_find_unused_parameters=True`` if you train a module that some steps skip).
    ``**overrides`` go straight to ``TrainingArguments`` (e.g. ``eval_strategy="steps"``).

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer",
    and used again in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Training with the Hugging
    Face Trainer".
    """
    from transformers import TrainingArguments

    on_gpu = device == "cuda"
    dtype = str(dtype).removeprefix("torch.")
    if dataloader_num_workers is None:
        dataloader_num_workers = 2 if on_gpu else 0  # workers run the collator while the GPU trains
    arguments = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=max_steps,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        lr_scheduler_type=lr_scheduler_type,
        optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        fp16=dtype == "float16",
        bf16=dtype == "bfloat16",
        use_cpu=not on_gpu,
        **_checkpointing_arguments(TrainingArguments, gradient_checkpointing),
        remove_unused_columns=False,
        eval_strategy="no",
        logging_steps=logging_steps,
        save_strategy="steps" if save_steps or save_at_end else "no",
        save_steps=save_steps or (_SAVE_ONLY_AT_END if save_at_end else 500),
        save_total_limit=save_total_limit,
        # under torchrun on CPU: gloo (NCCL needs GPUs); one process must not name a backend, or
        # accelerate sets up a process group that nothing launched
        ddp_backend="gloo" if not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient (and no extra graph walk)
        report_to=validate_report_to(report_to),
        seed=seed,
        dataloader_num_workers=dataloader_num_workers,
        dataloader_pin_memory=on_gpu,
    )
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def _checkpointing_arguments(arguments_class, enabled: bool) -> dict:
    """Gradient checkpointing flags; transformers 5.23 renamed them ``activation_checkpointing*``
    (the old names still work there, with a deprecation warning, until v6)."""
    name = ("activation_checkpointing" if "activation_checkpointing" in arguments_class.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def _continue_schedule(args, optimizer, lr_scheduler, *, step: int, planned: int | None, max_steps: int) -> list[str]:
    """After a resume: give the optimizer the learning rate of step ``step + 1`` on this run's schedule.

    The Trainer restores the optimizer with the learning rate the checkpoint's schedule set after its last
    step and trains the next step with it before the scheduler moves. Under the same plan that is right; when
    the run is now planned for another number of steps (``max_steps``; the checkpoint's run planned
    ``planned``), that step would train at the old plan's rate: 0 after a finished linear schedule. And a
    warm-up given as a fraction of the run would grow with the new plan, sending a run that had finished its
    warm-up back into one. So the schedule is rebuilt for ``max_steps`` with the warm-up the run began with,
    and the rate of step ``step + 1`` set from it. A learning rate changed on resume is not applied (the
    checkpoint's peak continues, as the Trainer does), but said. Returns the lines to print (none when nothing
    changed). Schedules that are not a ``LambdaLR`` (all of the Trainer's ``lr_scheduler_type`` but
    ``reduce_lr_on_plateau``) are left alone.
    """
    import torch
    from transformers import get_scheduler

    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return []
    lines = []
    if planned is not None and planned != max_steps:
        began, fresh = args.get_warmup_steps(planned), args.get_warmup_steps(max_steps)
        scratch = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        rebuilt = get_scheduler(args.lr_scheduler_type, optimizer=scratch, num_warmup_steps=began,
                                num_training_steps=max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        scheduler.lr_lambdas = [rebuilt.lr_lambdas[0]] * len(scheduler.base_lrs)
        lines.append(f"resumed at step {step} of a run planned for {planned} steps, now planned for {max_steps}: the "
                     f"learning-rate schedule continues on the new plan with the warm-up the run began with "
                     f"({began} step{'s' if began != 1 else ''}" + (
                         f"; a run planned for {max_steps} steps from the start would warm up for {fresh}, but a "
                         "resumed run does not warm up again)" if fresh != began else ")"))
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = list(rates)  # what get_last_lr() (the history's "lr") reports for the next step
    if lines:
        lines[-1] += f": step {step + 1} trains at {rates[0]:.3g}"
    if scheduler.base_lrs and not math.isclose(scheduler.base_lrs[0], args.learning_rate, rel_tol=1e-9):
        lines.append(f"the checkpoint's peak learning rate {scheduler.base_lrs[0]:g} continues; the "
                     f"learning_rate {args.learning_rate:g} given now applies to new runs only")
    return lines


def _guarded_trainer(trainer_class, guard: "_NonFiniteGuard"):
    """A ``Trainer`` subclass that hands every micro-batch's loss to ``guard``."""

    class GuardedTrainer(trainer_class):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            guard.add_loss(loss)
            guard.scaler = getattr(self.accelerator, "scaler", None)  # fp16: accelerate's GradScaler
            return loss

    return GuardedTrainer


class _NonFiniteGuard:
    """Checks each optimizer step's loss and gradients before the update (see the module docstring).

    As a Trainer callback: ``on_pre_optimizer_step`` decides (the verdict is shared by all
    processes, so DDP replicas stay identical) and drops the gradients of a bad step, so the
    optimizer leaves those weights and their moments alone; ``on_step_end`` logs the step's
    own loss. The grad scaler of fp16 runs skips an overflowing step by itself: such a step
    (finite loss, infinite gradient) is recorded but not counted toward ``max_skipped``, unless
    the scale has fallen to 1 (then the gradient is infinite unscaled, and the step counts).
    """

    def __init__(self, max_skipped: int, fp16: bool):
        self.max_skipped = max_skipped
        self.fp16 = fp16
        self.skipped_steps: list[int] = []
        self._loss = None
        self._record: dict = {}
        self.scaler = None

    def add_loss(self, loss) -> None:
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def callback(self):
        from transformers import TrainerCallback

        guard = self

        class NonFiniteSteps(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # a resumed run's earlier skips count too
                guard.skipped_steps = sorted({int(e["step"]) for e in state.log_history
                                              if e.get("skipped") and not str(e["skipped"]).startswith("fp16")})

            def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                                      **kwargs):
                guard.before_update(state, model, lr_scheduler)

            def on_step_end(self, args, state, control, **kwargs):
                guard.after_update(state, args.output_dir)

        return NonFiniteSteps()

    def before_update(self, state, model, lr_scheduler) -> None:
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad.detach() for p in params if p.grad is not None]
        loss = self._loss if self._loss is not None else torch.zeros(())
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if hasattr(grad_norm, "full_tensor"):  # FSDP (accelerate's config): a sharded norm
            grad_norm = grad_norm.full_tensor()
        values = torch.stack([loss.to(grad_norm.device).float(), grad_norm.float()])
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # the mean loss; any rank's NaN is everyone's
            dist.all_reduce(values)
            values[0] /= dist.get_world_size()
        loss_value, grad_value = (float(v) for v in values)
        self._loss = None
        step = state.global_step + 1
        self._record = {"step": step, "step_loss": loss_value if math.isfinite(loss_value) else None}
        if lr_scheduler is not None:
            self._record["learning_rate"] = lr_scheduler.get_last_lr()[0]
        if math.isfinite(loss_value) and math.isfinite(grad_value):
            return
        scale = self.scaler.get_scale() if self.scaler is not None else 2.0
        if self.fp16 and math.isfinite(loss_value) and scale > 1:  # infinite even unscaled: counted below
            self._record["skipped"] = ("fp16 overflow (non-finite gradient norm): the gradient scaler skips this "
                                       "update and lowers its scale")
            return
        for param in params:  # no gradient: the optimizer leaves these weights and their moments alone
            param.grad = None
        problem = (f"non-finite loss ({loss_value})" if not math.isfinite(loss_value)
                   else f"non-finite gradient norm ({grad_value})")
        self._record["skipped"] = f"{problem}: update not applied"
        self.skipped_steps.append(step)

    def after_update(self, state, output_dir) -> None:
        from vlm_helpers.loop import too_many_skipped

        if self._record:
            state.log_history.append(self._record)
            self._record = {}
        if len(self.skipped_steps) > self.max_skipped:
            raise FloatingPointError(too_many_skipped(self.skipped_steps, self.max_skipped,
                                                      checkpoint=latest_trainer_checkpoint(output_dir)))


#: Columns of the log table printed while training: (log key, heading, format).
LOG_COLUMNS = (("step", "step", "{:>6d}"), ("epoch", "epoch", "{:>6.2f}"), ("loss", "loss", "{:>8.4f}"),
               ("grad_norm", "grad norm", "{:>9.3f}"), ("learning_rate", "learning rate", "{:>13.3g}"))


def log_table_header() -> str:
    """The heading line of :func:`log_table_row`'s table.

    Shown in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer".
    """
    widths = [len(fmt.format(0 if key == "step" else 0.0)) for key, _, fmt in LOG_COLUMNS]
    return "  ".join(heading.rjust(width) for (_, heading, _), width in zip(LOG_COLUMNS, widths))


def log_table_row(logs: dict, step: int, *, first_step: int = 0) -> str | None:
    """One line of the training table for a Trainer log entry, or ``None`` for entries that are not
    training-loss logs. The end-of-run summary becomes one sentence instead of a dict; ``first_step`` is the
    step a resumed run started from (the Trainer's time, speed and mean loss count only the steps after it).

    Shown in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer".
    """
    if "train_runtime" in logs:
        if not first_step:
            trained = f"trained {step} steps"
        elif step > first_step:
            trained = f"trained steps {first_step + 1}-{step} ({step - first_step} steps, resumed at step {first_step})"
        else:
            trained = f"trained no step (resumed at step {first_step}, where the run ends)"
        return (f"{trained} in {logs['train_runtime']:.1f} s ({logs.get('train_steps_per_second', 0):.2f} steps/s), "
                f"mean loss {logs.get('train_loss', float('nan')):.4f}")
    if "loss" not in logs:
        return None
    cells = []
    for key, _, fmt in LOG_COLUMNS:
        value = step if key == "step" else logs.get(key)
        width = len(fmt.format(0 if key == "step" else 0.0))
        cells.append("-".rjust(width) if value is None else fmt.format(value))
    return "  ".join(cells)


def train_with_trainer(model, train_rows, collator: Callable, args, *,
                       eval_fn: Callable[[int], dict] | None = None, eval_every: int | None = None,
                       resume_from_checkpoint: str | Path | bool | None = None, max_skipped_steps: int = 10,
                       keep_best: str | None = None, greater_is_better: bool = True, patience: int | None = None,
                       processor=None, base_model: str | None = None):
    """Train with ``transformers.Trainer``; return ``(trainer, history)``.

    ``eval_fn(step) -> {"anls": ...}`` (e.g. generation + ANLS on validation rows) runs every
    ``eval_every`` optimizer steps in eval mode; its numbers join that step's history record.

    ``resume_from_checkpoint`` (a ``checkpoint-<step>`` folder, or ``True`` for the newest
    *complete* one in ``args.output_dir``) continues that run: adapter weights, optimizer,
    scheduler, each process's RNG state and the position in the data come back, and ``history``
    starts with the checkpoint's records (the losses logged before it, not recomputed).
    ``args.max_steps`` counts all steps, those before the checkpoint included. This run's
    ``logging_steps``/``save_steps`` apply from the resume on (the Trainer alone would keep the
    checkpoint's). The learning rate continues the schedule: the same values as the run that went straight
    on; a run now planned for more (or fewer) steps continues on the new plan from the checkpoint's step,
    without a second warm-up (one printed line says so). The last printed line counts the steps trained now
    (``trained steps 4-6 (3 steps, resumed at step 3)``), and ``trainer.training_seconds`` is the training
    time of every session (each checkpoint records it in :data:`TRAINING_TIME_FILE`; None when the resumed
    checkpoint predates that file), ``trainer.resumed_from_step`` the checkpoint's step (None for a fresh run).
    Without it, a folder holding an earlier run's checkpoints or ``adapter/`` is refused
    (``FileExistsError``) before anything is written.

    ``base_model`` (the Hub id of the base, e.g. a model choice's ``model_id``) is what the checkpoints' and
    ``best-adapter/``'s ``adapter_config.json`` and README name as the base, not the folder it was loaded from
    (:func:`vlm_helpers.adapters.portable_adapter_files`; without it a local folder is named by its name alone).

    A step whose loss or gradient is NaN/inf is not applied and is recorded as skipped; more than
    ``max_skipped_steps`` of them stop training with ``FloatingPointError`` (weights stay finite).

    ``keep_best="val_anls"`` (a key of ``eval_fn``'s result; ``greater_is_better=False`` for a metric to
    minimise) keeps the best adapter by that metric in ``<output_dir>/best-adapter/`` (with ``processor``,
    if given), stops after ``patience`` evaluations without improvement (None: never), and at the end
    loads the best weights back into ``model``: its history record gets ``"best": True`` and
    ``trainer.state.best_metric``/``best_global_step``/``best_model_checkpoint`` say which won. Ties keep
    the earlier step, NaN never wins; a resume continues with the checkpoint's best
    (:mod:`vlm_helpers.best_checkpoint`). Taught in ``notebooks/06_your_data_your_model.ipynb``, section
    "Training: keep the best checkpoint".

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer",
    and used with ``eval_fn`` in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Training with the
    Hugging Face Trainer".
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback

    from vlm_helpers.best_checkpoint import RUN_RESULTS, BestCheckpointKeeper
    from vlm_helpers.checkpoints import check_finite_weights
    from vlm_helpers.adapters import portable_adapter_files

    if keep_best is not None and (eval_fn is None or not eval_every):
        raise ValueError(f"keep_best={keep_best!r} chooses among evaluations: pass eval_fn and eval_every too")
    if keep_best is not None and getattr(model, "peft_config", None) is None:
        raise ValueError("keep_best saves and reloads LoRA adapters: the model must be a PEFT model (add_lora)")
    if patience is not None and keep_best is None:
        raise ValueError("patience counts evaluations without improvement of keep_best: pass keep_best too")
    resume = resume_point(args.output_dir, resume_from_checkpoint, problem=trainer_checkpoint_problem,
                          results=("adapter", *RUN_RESULTS), argument="resume_from_checkpoint=True",
                          is_main=int(os.environ.get("RANK", "0")) == 0)
    keeper = None if keep_best is None else BestCheckpointKeeper(
        keep_best, greater_is_better=greater_is_better, patience=patience, output_dir=args.output_dir,
        processor=processor, resume=resume, base_model=base_model)
    # what the checkpoint's run had planned, and how long it had trained (None: a checkpoint without the record)
    planned = (checkpoint_json(resume, TRAINER_STATE_FILE) or {}).get("max_steps") if resume is not None else None
    earlier = (checkpoint_json(resume, TRAINING_TIME_FILE) or {}).get("seconds") if resume is not None else 0.0
    clock = {"started": time.perf_counter(), "first_step": 0}

    class ContinuedRun(TrainerCallback):
        """The run continues a checkpoint's: its learning-rate schedule (:func:`_continue_schedule`) and step count;
        each checkpoint records the training time so far and names the base portably."""

        def on_train_begin(self, arguments, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            clock["started"], clock["first_step"] = time.perf_counter(), state.global_step
            if resume is not None and optimizer is not None and lr_scheduler is not None:
                lines = _continue_schedule(arguments, optimizer, lr_scheduler, step=state.global_step, planned=planned,
                                           max_steps=state.max_steps)
                for line in lines if state.is_world_process_zero else ():
                    print(line)

        def on_save(self, arguments, state, control, **kwargs):
            checkpoint = Path(arguments.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                portable_adapter_files(checkpoint, base_model)
                if earlier is not None:
                    seconds = earlier + time.perf_counter() - clock["started"]
                    (checkpoint / TRAINING_TIME_FILE).write_text(json.dumps({"seconds": seconds,
                                                                            "step": state.global_step}))

    class CurrentIntervals(TrainerCallback):
        def on_train_begin(self, arguments, state, control, **kwargs):
            state.compute_steps(arguments, state.max_steps)  # a resumed state holds the old run's intervals

    class GenerationEval(TrainerCallback):
        def on_step_end(self, arguments, state, control, model=None, **kwargs):
            last = state.max_steps > 0 and state.global_step >= state.max_steps  # the final weights count too
            if eval_fn is not None and eval_every and (state.global_step % eval_every == 0 or last):
                was_training = model.training
                model.eval()
                metrics = eval_fn(state.global_step)
                model.train(was_training)
                state.log_history.append({"step": state.global_step, **metrics})
                if keeper is not None:
                    keeper.after_evaluation(arguments, state, control, model, metrics)

    class LogTable(TrainerCallback):
        printed_header = False

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            line = (log_table_row(logs or {}, state.global_step, first_step=clock["first_step"])
                    if state.is_world_process_zero else None)
            if line is not None:
                if not self.printed_header and "train_runtime" not in logs:
                    print(log_table_header())
                    self.printed_header = True
                print(line)

    class FiniteBeforeSaving(TrainerCallback):
        def on_step_end(self, arguments, state, control, model=None, **kwargs):
            if control.should_save:  # the Trainer saves right after this: never a NaN checkpoint
                check_finite_weights(model)

    guard = _NonFiniteGuard(max_skipped_steps, fp16=bool(args.fp16))
    callbacks = [CurrentIntervals(), ContinuedRun(), guard.callback(), FiniteBeforeSaving()]
    callbacks += [GenerationEval()] if eval_fn is not None else []
    callbacks += [keeper.callback()] if keeper is not None else []
    trainer = _guarded_trainer(Trainer, guard)(model=model, args=args, train_dataset=train_rows,
                                               data_collator=collator, callbacks=callbacks)
    if args.disable_tqdm:  # the Trainer would print each log as a dict of strings: a table instead
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogTable())
    if keeper is not None and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise ValueError("keep_best saves the adapter from rank 0 alone: not with FSDP or DeepSpeed sharding")
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    trainer.training_seconds = None if earlier is None else earlier + time.perf_counter() - clock["started"]
    trainer.resumed_from_step = clock["first_step"] if resume is not None else None
    model.eval()
    history = history_from_log(trainer.state.log_history)
    if keeper is not None:
        keeper.finish(trainer, model, history)
    return trainer, history
