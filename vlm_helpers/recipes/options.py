"""The command line's options turned into a run's settings: argument types, the help's tables of recipes and
defaults, ``--recipe custom``'s options (:class:`~vlm_helpers.recipes.settings.YourData`) and the ``--resume`` /
``--output-dir`` checks. Used by :mod:`vlm_helpers.cli`; the options are introduced in the README, section
"Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from vlm_helpers.best_checkpoint import RUN_RESULTS
from vlm_helpers.checkpoints import (describe_incomplete, loop_checkpoint_problem, scan_checkpoints,
                                     trainer_checkpoint_problem)
from vlm_helpers.data.formats import Columns, detect_format, looks_local
from vlm_helpers.model_choices import get_model_choice
from vlm_helpers.recipes.settings import Recipe, UserError, YourData

__all__ = ["batching_recipe", "check_resume", "columns", "epilog", "fraction", "names", "non_negative_float",
           "non_negative_int", "positive_float", "positive_int", "your_data"]

def _parse(text: str, kind: type, expected: str):
    """``kind(text)``, or argparse's usage error naming what was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _refuse(problem: str):
    raise argparse.ArgumentTypeError(problem)


def positive_int(text: str) -> int:
    """A whole number of 1 or more (``--epochs``, ``--batch-size``, ...). The options: the README, section
    "Scaling out: from one GPU to several machines"."""
    value = _parse(text, int, "a whole number")
    return value if value > 0 else _refuse(f"must be a positive whole number (1 or more), got {value}")


def non_negative_int(text: str) -> int:
    """A whole number of 0 or more (``--num-workers``, ``--max-skipped-steps``, ...). The options: the README,
    section "Scaling out: from one GPU to several machines"."""
    value = _parse(text, int, "a whole number")
    return value if value >= 0 else _refuse(f"must be 0 or more, got {value}")


def positive_float(text: str) -> float:
    """A number above 0 (``--lr``). The options: the README, section "Scaling out: from one GPU to several
    machines"."""
    value = _parse(text, float, "a number such as 1e-5")
    return value if value > 0 else _refuse(f"must be greater than 0, got {text}")


def non_negative_float(text: str) -> float:
    """A number of 0 or more (``--weight-decay``, ``--warmup-steps``). The options: the README, section "Scaling
    out: from one GPU to several machines"."""
    value = _parse(text, float, "a number")
    return value if value >= 0 else _refuse(f"must be 0 or more, got {text}")


def fraction(text: str) -> float:
    """A number between 0 and 1 (``--validation-fraction``, ``--test-fraction``). The options: the README, section
    "Scaling out: from one GPU to several machines"."""
    value = positive_float(text)
    return value if value < 1 else _refuse(f"must be between 0 and 1, got {text}")


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list (``--report-to``, ``--cauldron-subsets``). The options: the README, section "Scaling
    out: from one GPU to several machines"."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _defaults_table(recipes: Mapping[str, Recipe]) -> str:
    lines = []
    for recipe in recipes.values():
        for mode, d in (("full", recipe.full), ("tiny", recipe.tiny)):
            batch = (f"{d.batch_size} x {d.grad_accum}" if d.batch_size is not None else "from GPU preset")
            ckpt = f"checkpoint every {d.checkpoint_every}" if d.checkpoint_every else "checkpoint at the end"
            lines.append(f"  {recipe.name:22s} {mode}: lr {d.learning_rate:g}, {d.epochs} epoch(s), batch {batch}, "
                         f"warm-up {d.warmup_steps:g}, {ckpt}")
    return "\n".join(lines)


def epilog(recipes: Mapping[str, Recipe]) -> str:
    """``vlm-train --help``'s tail: the recipes, their default hyper-parameters, examples and notes (README,
    section "Scaling out: from one GPU to several machines")."""
    lines = "\n".join(f"  {r.name:22s} {r.summary}" for r in recipes.values())
    return f"""\
recipes:
{lines}

default hyper-parameters (full mode follows the articles; tiny mode makes the tiny models learn):
{_defaults_table(recipes)}

examples:
  # try it in a minute on any CPU: tiny random model, synthetic documents, no download
  python -m vlm_helpers.cli --recipe florence2-docvqa --tiny --max-steps 20

  # the Florence-2 blog's run on one GPU (batch size from the GPU preset)
  vlm-train --recipe florence2-docvqa --dataset docvqa --epochs 7 --eval-steps 1000 --max-eval-samples 500

  # 4 GPUs on one machine; --batch-size is per GPU, so this trains on 4 x 6 rows per step
  torchrun --nproc_per_node 4 -m vlm_helpers.cli --recipe florence2-docvqa --dataset cauldron \\
      --epochs 10 --eval-steps 10000 --batch-size 6
  accelerate launch --multi_gpu --num_processes 4 -m vlm_helpers.cli --recipe florence2-docvqa

  # the same with fully sharded weights, gradients and optimizer state (FSDP2) instead of DDP
  torchrun --nproc_per_node 4 -m vlm_helpers.cli --recipe florence2-docvqa --fsdp
  accelerate launch --config_file configs/accelerate_fsdp.yaml -m vlm_helpers.cli --recipe florence2-docvqa

  # Idefics2 QLoRA on 2 GPUs (the HF Trainer does the DDP; each GPU holds its own 4-bit copy)
  torchrun --nproc_per_node 2 -m vlm_helpers.cli --recipe idefics2-qlora-docvqa --max-steps 178

  # continue the newest checkpoint in the output folder (after a Colab disconnect, or to train longer)
  vlm-train --recipe florence2-docvqa --output-dir outputs/florence --resume --max-steps 20000

notes:
  * --max-steps, when given, overrides --epochs.
  * Batch sizes are per process: one optimizer step sees processes x --batch-size x --grad-accum rows.
  * The run writes checkpoints, history.json and final/ (florence2-docvqa: the fine-tuned model) or
    adapter/ (the chat recipes: the LoRA adapter) to --output-dir, and predictions + metrics to
    --results-dir (read by notebook 05). It never replaces a notebook's fine-tuned results of the same
    name, nor full-mode results with tiny ones, unless you pass --replace-results; a fresh run never
    writes into an --output-dir holding an earlier run's checkpoints, final/ or adapter/.
  * Crash-safe: a checkpoint is written to checkpoint-N.tmp and renamed when complete; --resume takes
    the newest complete checkpoint and sets aside one cut short by a crash. A step with a NaN/inf loss
    or gradient is not applied (see --max-skipped-steps); history.json lists it as skipped.
  * A problem you can fix (a broken row, named by file:line or split/row/id; a missing file or column; an
    --output-dir holding an earlier run; full mode on a machine without a GPU) stops the run before training
    with one line and exit status 2; --debug adds the traceback. Under torchrun rank 0 prints it.
  * The HF Trainer recipes' --resume continues the step count and the learning-rate schedule (a higher
    --max-steps continues on the longer plan, without a second warm-up); the last line counts the steps
    trained now.
  * --resume works with every recipe (each continues its own checkpoint format: florence2-docvqa's
    training_state.pt, the HF Trainer's trainer_state.json). --fsdp is for florence2-docvqa (the
    series' own loop); the chat recipes train with the HF Trainer, which takes accelerate's
    FSDP/DeepSpeed config instead.
  * VLM_TINY=1 in the environment is the same as --tiny. VLM_CACHE says where tiny models are built.
  * Multi-GPU and multi-node recipes: the README, section "Scaling out: from one GPU to several machines".
"""


def your_data(args: argparse.Namespace, recipe: str, tiny: bool, parser: argparse.ArgumentParser):
    """``--recipe custom``'s options as a :class:`~vlm_helpers.recipes.settings.YourData` (None for other recipes).

    The options are notebook 06's parameters: the README, section "Your data: the formats notebook 06 reads".
    """
    custom_only = ("data", "data_format", "image_column", "question_column", "answer_column", "id_column", "prompt",
                   "task", "model", "method", "instruction", "split_seed", "validation_fraction", "test_fraction",
                   "answer_separator")
    if recipe != "custom":
        given = [f"--{name.replace('_', '-')}" for name in custom_only if getattr(args, name) is not None]
        if given:
            parser.error(f"{', '.join(given)} only apply to --recipe custom")
        return None
    if args.data is None and not tiny:
        parser.error("--recipe custom needs --data (a .jsonl/.csv file, a save_to_disk folder or a Hub id)")
    if args.data is not None and not Path(args.data).exists():
        if looks_local(args.data):
            raise UserError(f"--data: no such file or folder: {Path(args.data).absolute()} (a Hub dataset id looks "
                            "like 'owner/name')")
    task = args.task or "qa"
    data_format = args.data_format or "auto"
    model = args.model or ("idefics2" if tiny else "qwen2-vl")
    try:
        get_model_choice(model)
    except ValueError as error:
        parser.error(f"--model: {error}")
    captioning = task == "captioning"
    conversations = data_format == "conversations" or (
        args.data is not None and data_format == "auto" and Path(args.data).is_file()
        and _detected_format(args.data, parser) == "conversations")
    if args.prompt is not None and not captioning:
        parser.error("--prompt is for --task captioning (one instruction for every image); qa rows have questions")
    if args.prompt is not None and args.question_column is not None:
        parser.error("give --question-column (qa) or --prompt (captioning), not both")
    if captioning and args.prompt is None and args.data is not None and not conversations:
        parser.error("--task captioning needs --prompt TEXT: the instruction every image is captioned with")
    instruction = args.instruction if args.instruction is not None else ("" if captioning else "Answer briefly.")
    data = YourData(source=args.data, format=data_format, image_column=args.image_column or "image",
                    question_column=None if args.prompt is not None else args.question_column or "question",
                    answer_column=args.answer_column or "answer", id_column=args.id_column, prompt=args.prompt,
                    task=task, model=model, method=args.method, instruction=instruction,
                    split_seed=42 if args.split_seed is None else args.split_seed,
                    validation_fraction=args.validation_fraction or 0.1, test_fraction=args.test_fraction or 0.1,
                    answer_separator=args.answer_separator)
    if not conversations:
        try:  # the column mapping is checked now, not after the model has loaded
            columns(data)
        except ValueError as error:
            raise UserError(f"the column options: {error}") from None
    return data


def _detected_format(source: str, parser: argparse.ArgumentParser) -> str:
    """``--data-format auto`` for a file, as the loader will see it (a file it cannot tell is a usage error)."""
    try:
        return detect_format(source)
    except ValueError as error:
        raise UserError(f"--data: {error}") from None


def check_resume(args: argparse.Namespace, output_dir: Path, *, hf: bool) -> str | None:
    """The checkpoint folder to resume from (or None); refuse to overwrite or resume nothing.

    A checkpoint is a complete ``checkpoint-<step>/``: holding ``training_state.pt``
    (florence2-docvqa's loop) or a ``trainer_state.json`` that reads back (the HF Trainer
    recipes). A staging folder or a checkpoint cut short by a crash is never resumed from;
    a fresh run refuses a folder holding any checkpoint, complete or not, or the final
    model (``final/``), adapter (``adapter/``) or best adapter (``best-adapter/``) of an earlier run.
    Each refusal is a :class:`~vlm_helpers.recipes.settings.UserError` (one line, exit status 2; the README,
    section "When things go wrong"). ``hf``: the recipe trains with the HF Trainer (its checkpoint format).
    """
    problem = trainer_checkpoint_problem if hf else loop_checkpoint_problem
    complete, incomplete = scan_checkpoints(output_dir, problem)
    if args.resume is None:
        if complete:
            raise UserError(f"--output-dir {output_dir} already holds {complete[-1].name}: pass --resume to continue "
                            "that run, or choose another --output-dir")
        results = [name for name in (("adapter", *RUN_RESULTS) if hf else ("final",)) if (output_dir / name).exists()]
        if incomplete or results:
            what = describe_incomplete(incomplete) if incomplete else f"{results[0]}/ (the result of a finished run)"
            raise UserError(f"--output-dir {output_dir} already holds {what} from an earlier run and no complete "
                            "checkpoint to resume; nothing was changed: choose another --output-dir (or delete "
                            "those folders yourself)")
        return None
    if args.resume == "latest":
        if not complete:
            found = f" (incomplete only: {describe_incomplete(incomplete)})" if incomplete else ""
            raise UserError(f"--resume: {output_dir} holds no complete checkpoint{found}; start without --resume in "
                            "another --output-dir, or pass --output-dir of the run to continue")
        checkpoint = complete[-1]
    else:
        checkpoint = Path(args.resume)
        why = problem(checkpoint)
        if why is not None:
            raise UserError(f"--resume {checkpoint}: not a complete {args.recipe} checkpoint ({why}); give a "
                            "checkpoint-<step> folder, or --resume alone for the newest complete one in --output-dir")
    step = checkpoint.name.rpartition("-")[2]
    if args.max_steps is not None and step.isdigit() and args.max_steps <= int(step):
        raise UserError(f"--resume: {checkpoint} is already at step {step}; pass a --max-steps above {step} "
                        "to train further")
    return str(checkpoint)


def columns(data: YourData) -> Columns:
    """The :class:`~vlm_helpers.data.formats.Columns` that ``--recipe custom``'s options name (``ValueError`` for an
    impossible mapping, e.g. one column in two parts); not for conversation files, which need none. The options:
    the README, section "Your data: the formats notebook 06 reads"."""
    return Columns(image=data.image_column, question=data.question_column, answer=data.answer_column,
                   id=data.id_column, prompt=data.prompt, answer_separator=data.answer_separator)


def batching_recipe(recipe: str, your_data: YourData | None) -> str:
    """The :data:`vlm_helpers.runtime.BATCHING` entry of a run: the recipe's, or the chosen model's for
    ``custom`` (README, section "Your data: the formats notebook 06 reads")."""
    if recipe != "custom":
        return recipe
    return get_model_choice(your_data.model).recipe
