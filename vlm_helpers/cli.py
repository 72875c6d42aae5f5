"""``vlm-train``: the notebooks' fine-tuning recipes as one command, on one GPU or many.

Run ``python -m vlm_helpers.cli --help`` (or ``vlm-train --help``) for the options and
examples. The recipes themselves live in :mod:`vlm_helpers.recipes`, one module each; this module only

1. parses and checks the command line (impossible combinations stop here, with
   argparse's exit code 2, before any model is loaded);
2. resolves every setting: command line, else the recipe's default for full or tiny
   mode, else the hardware preset (:func:`vlm_helpers.runtime.choose_preset`);
3. sets up distributed training when a launcher asked for it, runs the recipe, and
   tears down cleanly.

Distributed training. ``torchrun --nproc_per_node N -m vlm_helpers.cli ...`` (and
``accelerate launch --multi_gpu``, which sets the same variables) starts N copies of this
program with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment. Each copy then

* joins the process group: NCCL on GPUs, gloo on CPUs;
* uses GPU ``LOCAL_RANK`` (``torch.cuda.set_device``), so ``"cuda"`` means its own GPU;
* wraps the model in ``DistributedDataParallel`` (``env.wrap``), or with ``--fsdp`` (or
  accelerate's FSDP config) shards it with FSDP2, and trains on its own slice of every
  global batch (:func:`vlm_helpers.loop.epoch_indices`). The HF Trainer recipes
  leave the wrapping to the Trainer, which joins the same process group;
* leaves logging, checkpoints, evaluation and ``results/`` to rank 0. Evaluation runs on
  rank 0 alone while the other ranks wait at a barrier: simple and exactly the
  single-process numbers, at the price of idle GPUs during evaluation (keep
  ``--max-eval-samples`` moderate for frequent ``--eval-steps``). A sharded (FSDP)
  model cannot run on one rank, so there every rank generates for the same rows;
* meets the others at a barrier before leaving and destroys the process group.

Without those variables (plain ``python -m vlm_helpers.cli``) it is one ordinary process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from vlm_helpers import gated, runtime
from vlm_helpers.data.cauldron import DEFAULT_SUBSETS, check_subsets
from vlm_helpers.data.errors import DataValidationError
from vlm_helpers.launch import FSDPSettings, fsdp_from_environment, init_distributed, shutdown_distributed
from vlm_helpers.model_choices import MODEL_CHOICES
from vlm_helpers.recipes import custom, florence2_docvqa, idefics2_docvqa, phi3_aircraft
from vlm_helpers.recipes.options import (batching_recipe, check_resume, epilog, fraction, names, non_negative_float,
                                         non_negative_int, positive_float, positive_int, your_data)
from vlm_helpers.recipes.settings import Recipe, RunSettings, UserError
from vlm_helpers.results import default_results_dir, replace_problem
from vlm_helpers.tracking import REPORT_TO_CHOICES, check_report_to

__all__ = ["RECIPES", "build_parser", "get_recipe", "main", "resolve_settings", "user_problem"]

#: Every ``--recipe``, by name: each module's ``RECIPE`` (README, section "Scaling out: from one GPU to several
#: machines"). A new recipe is one module and one line here.
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    florence2_docvqa.RECIPE, idefics2_docvqa.RECIPE, phi3_aircraft.RECIPE, custom.RECIPE)}


def get_recipe(name: str) -> Recipe:
    """The :class:`~vlm_helpers.recipes.settings.Recipe` called ``name`` (README, section "Scaling out: from one GPU
    to several machines")."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def build_parser() -> argparse.ArgumentParser:
    """The ``vlm-train`` argument parser (importing it loads nothing heavy, so ``--help`` is fast).

    Its options are introduced in the README, section "Scaling out: from one GPU to several machines".
    """
    parser = argparse.ArgumentParser(
        prog="vlm-train",
        description="Fine-tune a small vision-language model with one of the series' recipes. "
                    "Works as a plain command on one CPU/GPU and under torchrun on several GPUs or machines.",
        epilog=epilog(RECIPES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--recipe", choices=list(RECIPES), default="florence2-docvqa",
                      help="model + method (default: %(default)s; see 'recipes' below)")
    what.add_argument("--dataset", default=None,
                      help="training data: docvqa or cauldron for the DocVQA recipes, aircraft for phi3-aircraft "
                           "(default: the recipe's first)")
    what.add_argument("--cauldron-subsets", type=names, default=None, metavar="A,B,...",
                      help="with --dataset cauldron: which configs of HuggingFaceM4/the_cauldron to mix "
                           "(default: docvqa,ai2d,chartqa)")
    what.add_argument("--tiny", action="store_true",
                      help="tiny random model + synthetic data: runs offline on a CPU in seconds "
                           "(also switched on by VLM_TINY=1)")
    what.add_argument("--max-train-samples", type=positive_int, default=None, metavar="N",
                      help="use only the first N training rows (questions)")
    what.add_argument("--max-eval-samples", type=positive_int, default=None, metavar="N",
                      help="evaluate on the first N validation rows (default: all; tiny: a few dozen)")

    yours = parser.add_argument_group("your own data (--recipe custom; notebook 06)")
    yours.add_argument("--data", default=None, metavar="PATH_OR_ID",
                       help="a .jsonl or .csv file listing images (paths relative to it), a folder written by "
                            "save_to_disk, or a Hub dataset id (tiny mode without it: a synthetic image folder)")
    yours.add_argument("--data-format", choices=("auto", "jsonl", "json", "csv", "conversations", "hf"), default=None,
                       help="how --data is laid out (default: auto, from the file or folder): jsonl/json (rows as "
                            "JSON lines or one array), csv (comma, ';' or tab), conversations (messages, OpenAI "
                            "image_url, ShareGPT/LLaVA), hf")
    yours.add_argument("--image-column", default=None, metavar="NAME", help="column with the image (default: image)")
    yours.add_argument("--question-column", default=None, metavar="NAME",
                       help="column with the question (default: question); for captioning give --prompt instead")
    yours.add_argument("--answer-column", default=None, metavar="NAME",
                       help="column with the answer, one string or a list of acceptable strings (default: answer)")
    yours.add_argument("--id-column", default=None, metavar="NAME",
                       help="column with a unique row id (default: file:line, or split:row)")
    yours.add_argument("--answer-separator", default=None, metavar="TEXT",
                       help="split every answer at TEXT into several acceptable ones, e.g. '|' for 'a|b' (default: "
                            "none; a CSV cell holding a JSON or Python list literal is always several answers)")
    yours.add_argument("--prompt", default=None, metavar="TEXT",
                       help="captioning: one fixed instruction used as every row's question (no question column)")
    yours.add_argument("--task", choices=("qa", "captioning"), default=None,
                       help="qa (the default): short answers (ANLS, exact match); captioning: free text (ROUGE, "
                            "tag F1)")
    yours.add_argument("--model", default=None, metavar="CHOICE",
                       help=f"{', '.join(MODEL_CHOICES)} (default: qwen2-vl; tiny: idefics2)")
    yours.add_argument("--method", choices=("lora", "qlora"), default=None,
                       help="LoRA or 4-bit QLoRA (default: what the GPU preset needs for the model)")
    yours.add_argument("--instruction", default=None, metavar="TEXT",
                       help='text before every question (default: "Answer briefly." for qa, none for captioning); '
                            'chat models only: florence2 reads its task prompt (<DocVQA> for qa) instead')
    yours.add_argument("--split-seed", type=int, default=None, metavar="SEED",
                       help="seed of the validation/test hold-outs when the data has no such splits (default: 42)")
    yours.add_argument("--validation-fraction", type=fraction, default=None, metavar="F",
                       help="held out of what is left after the test hold-out, to choose the best checkpoint "
                            "(default: 0.1)")
    yours.add_argument("--test-fraction", type=fraction, default=None, metavar="F",
                       help="held out for the final scores (default: 0.1)")

    how = parser.add_argument_group("how long and how fast (defaults: the recipe's, see below)")
    how.add_argument("--epochs", type=positive_int, default=None, help="passes over the training data")
    how.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                     help="stop after N optimizer steps in total (overrides --epochs; counts steps before a resume)")
    how.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                     help="rows per process per micro-batch (default: from the recipe or the GPU preset)")
    how.add_argument("--grad-accum", type=positive_int, default=None, metavar="K",
                     help="micro-batches accumulated per optimizer step")
    how.add_argument("--lr", type=positive_float, default=None, metavar="LR", help="peak learning rate")
    how.add_argument("--warmup-steps", type=non_negative_float, default=None, metavar="N",
                     help="linear warm-up steps before the linear decay (HF Trainer recipes: a value below 1 "
                          "is a fraction of the run)")
    how.add_argument("--weight-decay", type=non_negative_float, default=None, metavar="W", help="AdamW weight decay")
    how.add_argument("--seed", type=int, default=0, help="seed for data order, answer picks and synthetic data")

    out = parser.add_argument_group("evaluation, checkpoints and output")
    out.add_argument("--eval-steps", type=positive_int, default=None, metavar="N",
                     help="also evaluate (generation + the task's metric, on rank 0) every N steps; "
                          "there is always a final evaluation")
    out.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                     help="HF Trainer recipes: keep the adapter of the best evaluation (by the task's metric on "
                          "generated answers) and end with it; needs --eval-steps (default: on for custom)")
    out.add_argument("--patience", type=positive_int, default=None, metavar="K",
                     help="with --keep-best: stop after K evaluations without improvement")
    out.add_argument("--num-beams", type=positive_int, default=None, metavar="N",
                     help="beam width when generating answers for evaluation (default: the recipe's)")
    out.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                     help="longest generated answer, in tokens (default: the recipe's)")
    out.add_argument("--output-dir", type=Path, default=None,
                     help="checkpoints, history.json and the final model or adapter (default: outputs/<recipe>-<dataset>)")
    out.add_argument("--results-dir", type=Path, default=None,
                     help="where predictions and metrics go (default: $VLM_RESULTS_DIR or ./results)")
    out.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                     help="save a checkpoint every N steps (the last step is always saved too)")
    out.add_argument("--keep-checkpoints", type=positive_int, default=2, metavar="N",
                     help="keep only the newest N checkpoints (default: %(default)s)")
    out.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                     help="continue a run: alone, from the newest checkpoint in --output-dir; "
                          "or from the given checkpoint folder")
    out.add_argument("--replace-results", action="store_true",
                     help="let this run's evaluation replace a fine-tuned run of the same name that a notebook "
                          "(or a full-mode run) wrote in --results-dir; without it such a run is refused before "
                          "training")
    out.add_argument("--report-to", type=names, default=("none",), metavar="TRACKER",
                     help=f"experiment tracker(s): {', '.join(REPORT_TO_CHOICES)} (keys come from the environment, "
                          "e.g. WANDB_API_KEY)")
    out.add_argument("--logging-steps", type=positive_int, default=10, metavar="N",
                     help="print the loss every N steps; the HF Trainer recipes also record it only every N "
                          "steps, averaged (default: %(default)s)")

    adv = parser.add_argument_group("advanced")
    adv.add_argument("--num-workers", type=non_negative_int, default=None, metavar="N",
                     help="DataLoader worker processes per training process (default: 2 on GPU, 0 on CPU)")
    adv.add_argument("--skip-bad-rows", action="store_true",
                     help="drop rows that fail validation (and list them) instead of stopping at the first one")
    adv.add_argument("--max-skipped-steps", type=non_negative_int, default=10, metavar="N",
                     help="a step with a NaN/inf loss or gradient is not applied (and is recorded in history.json); "
                          "after more than N such steps training stops (default: %(default)s)")
    adv.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: only when the output is a terminal)")
    adv.add_argument("--fsdp", action="store_true",
                     help="under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2, "
                          "full shard) instead of replicating them (DDP). accelerate launch with "
                          "configs/accelerate_fsdp.yaml switches this on by itself")
    adv.add_argument("--dist-timeout-minutes", type=positive_float, default=60.0, metavar="M",
                     help="how long ranks wait for each other, e.g. while rank 0 evaluates (default: %(default)s)")
    adv.add_argument("--debug", action="store_true",
                     help="on a problem with the data, the files or the machine (normally one line, exit status 2), "
                          "also print the Python traceback")
    adv.add_argument("--write-weight-digests", action="store_true",
                     help="each process writes weights-rank<r>.json (hash of its trainable weights) to --output-dir: "
                          "all equal means the replicas stayed in sync")
    return parser


def resolve_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunSettings:
    """Check combinations and fill in defaults; impossible combinations end in ``parser.error`` (exit 2), problems
    with files (``--data``, ``--output-dir``, ``--resume``, ``--results-dir``) in a
    :class:`~vlm_helpers.recipes.settings.UserError` (one line, exit 2).

    Where the defaults come from (recipe, mode, GPU preset): the README, section "One GPU".
    """
    recipe = get_recipe(args.recipe)
    dataset = args.dataset or recipe.datasets[0]
    if dataset not in recipe.datasets:
        parser.error(f"--recipe {recipe.name} trains on {' or '.join(recipe.datasets)}, not --dataset {dataset}")
    subsets: tuple[str, ...] = ()
    if args.cauldron_subsets is not None and dataset != "cauldron":
        parser.error("--cauldron-subsets only applies to --dataset cauldron")
    if dataset == "cauldron":
        try:
            subsets = check_subsets(args.cauldron_subsets if args.cauldron_subsets is not None else DEFAULT_SUBSETS)
        except ValueError as error:
            parser.error(f"--cauldron-subsets: {error}")
    problem = check_report_to(args.report_to)
    if problem:
        parser.error(f"--report-to: {problem}")
    tiny = args.tiny or runtime.is_tiny()
    data = your_data(args, recipe.name, tiny, parser)
    defaults = recipe.defaults(tiny)
    output_dir = args.output_dir or Path("outputs") / f"{recipe.name}-{dataset}{'-tiny' if tiny else ''}"
    resume = check_resume(args, output_dir, hf=recipe.trainer == "hf")
    warmup = args.warmup_steps if args.warmup_steps is not None else defaults.warmup_steps
    if recipe.trainer == "loop":
        if warmup != int(warmup):
            parser.error(f"--warmup-steps: {recipe.name} counts warm-up in whole steps, got {warmup:g}")
        warmup = int(warmup)

    results_dir = args.results_dir or default_results_dir()
    if not args.replace_results:
        task, model = recipe.results_run(dataset) if data is None else data.results_run()
        problem = replace_problem(results_dir, task=task, model=model, stage="finetuned",
                                  mode="tiny" if tiny else "full", notebook="vlm-train")
        if problem:
            raise UserError(f"--results-dir: {problem}")

    if recipe.trainer != "hf" and (args.keep_best or args.patience):
        parser.error(f"--keep-best and --patience apply to the HF Trainer recipes, not {recipe.name}")
    preset = runtime.choose_preset(runtime.detect_hardware(), batching_recipe(recipe.name, data), tiny=tiny)
    batch_size = args.batch_size or defaults.batch_size or preset.batch_size
    grad_accum = args.grad_accum or defaults.grad_accum or preset.grad_accum
    # the preset carries the batch that is trained, so the line describing it says what happens
    preset = runtime.override(preset, batch_size=batch_size, grad_accum=grad_accum)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    eval_steps = args.eval_steps or defaults.eval_steps
    keep_best = args.keep_best if args.keep_best is not None else data is not None
    if keep_best and not eval_steps:
        parser.error("--keep-best needs --eval-steps N: the best checkpoint is chosen among evaluations")
    if args.patience and not keep_best:
        parser.error("--patience needs --keep-best")
    return RunSettings(
        recipe=recipe.name, dataset=dataset, tiny=tiny, output_dir=output_dir,
        results_dir=results_dir,
        learning_rate=args.lr or defaults.learning_rate, epochs=args.epochs or defaults.epochs,
        max_steps=args.max_steps, batch_size=batch_size, grad_accum=grad_accum,
        warmup_steps=warmup,
        weight_decay=args.weight_decay if args.weight_decay is not None else defaults.weight_decay,
        eval_steps=eval_steps,
        checkpoint_every=args.checkpoint_every or defaults.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples or defaults.max_eval_samples,
        num_beams=args.num_beams or defaults.num_beams, max_new_tokens=args.max_new_tokens or defaults.max_new_tokens,
        cauldron_subsets=subsets, resume=resume, report_to=tuple(args.report_to), seed=args.seed,
        num_workers=args.num_workers if args.num_workers is not None else (2 if preset.device == "cuda" else 0),
        logging_steps=args.logging_steps, skip_bad_rows=args.skip_bad_rows,
        max_skipped_steps=args.max_skipped_steps, replace_results=args.replace_results,
        write_weight_digests=args.write_weight_digests, progress=progress, preset=preset,
        keep_best=keep_best, patience=args.patience, your_data=data,
    )


def user_problem(error: BaseException) -> str | None:
    """The one line ``vlm-train`` prints for ``error`` when it is the user's to fix, or None for a program error.

    The user's: :class:`~vlm_helpers.recipes.settings.UserError` (data files, options, output folders, no GPU), a
    row that fails validation (:class:`~vlm_helpers.data.validation.DataValidationError`, which names file and
    line or split, row and id), and a folder the run refuses to overwrite (``FileExistsError``). Anything else
    keeps its traceback. The README, section "When things go wrong".
    """
    if not isinstance(error, (UserError, DataValidationError, FileExistsError)):
        return None
    return " ".join(str(error).split())  # one line, whatever the message holds


def _stop(error: BaseException, line: str, *, debug: bool, is_main: bool) -> NoReturn:
    """Print ``vlm-train: error: <line>`` on rank 0 (with ``--debug``: the traceback first) and exit with status 2,
    by ``SystemExit(2)`` as argparse does for a misspelt option."""
    if is_main:
        if debug:
            import traceback

            traceback.print_exception(error)
        print(f"vlm-train: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _require_gpu(settings: RunSettings) -> None:
    """Full mode (real checkpoints and data) on a machine without a GPU stops here, before anything loads: the
    command line's form of the notebooks' :func:`vlm_helpers.runtime.require_gpu_unless_tiny`."""
    try:
        runtime.require_gpu_unless_tiny(settings.tiny, notebook="vlm-train")
    except runtime.NeedsGPU:
        raise UserError(f"--recipe {settings.recipe} in full mode loads the real checkpoint and data, and this "
                        "machine has no GPU (torch.cuda.is_available() is False): add --tiny to run the recipe on a "
                        "tiny random model on this CPU, or run it on a GPU machine (Colab: Runtime > Change "
                        "runtime type > T4 GPU)") from None


def _require_access(settings: RunSettings) -> None:
    """A gated checkpoint (``--model gemma3-4b``, ``paligemma2-3b``) without a token or an accepted license stops here,
    in one line, before anything downloads: the command line's form of notebook 06's
    :func:`vlm_helpers.gated.require_access`."""
    if settings.your_data is None:  # the series' recipes load open checkpoints
        return
    choice = MODEL_CHOICES[settings.your_data.model]
    try:
        gated.require_access(choice.model_id, gated=choice.gated, tiny=settings.tiny)
    except gated.GatedModelError as error:
        raise UserError(f"--model {choice.key}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vlm-train`` / ``python -m vlm_helpers.cli``; returns the exit code.

    Exit status 0: trained; 2 (``SystemExit(2)``, as argparse): a misspelt or impossible command line (argparse:
    usage and the error), or a problem the user can fix (:func:`user_problem`: one line on stderr, printed by
    rank 0 alone, no traceback unless ``--debug``); anything else is a program error with its traceback. Taught
    in the README, section "Scaling out: from one GPU to several machines".
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, parser)
        _require_gpu(settings)
        _require_access(settings)
    except UserError as error:  # before the process group exists: RANK says which process prints
        _stop(error, user_problem(error), debug=args.debug, is_main=os.environ.get("RANK", "0") == "0")
    recipe = get_recipe(settings.recipe)
    fsdp = None
    if settings.recipe == "florence2-docvqa":  # the recipes on the HF Trainer read accelerate's FSDP variables themselves
        try:
            fsdp = FSDPSettings() if args.fsdp else fsdp_from_environment()
        except ValueError as error:
            parser.error(str(error))
    elif args.fsdp:
        parser.error(f"--fsdp shards the florence2-docvqa recipe's own training loop; {settings.recipe} trains with "
                     "the HF Trainer: launch it with accelerate launch --config_file configs/accelerate_fsdp.yaml")
    env = init_distributed(timeout_minutes=args.dist_timeout_minutes, fsdp=fsdp)
    try:
        # as in every notebook's first cell: seeds, and one torch thread for tiny models on a CPU
        profile, _ = runtime.setup(batching_recipe(settings.recipe, settings.your_data), tiny=settings.tiny,
                                   seed=settings.seed)
        env.log(runtime.describe(profile, settings.preset))
        env.log(f"recipe {recipe.name} on {settings.dataset}"
                + (f" ({','.join(settings.cauldron_subsets)})" if settings.cauldron_subsets else "")
                + f", {env.world_size} process(es), backend {env.backend or 'none'}"
                + (", FSDP2" if env.fsdp and env.enabled else ", DDP" if env.enabled else "")
                + f", output {settings.output_dir}"
                + (f", resuming {settings.resume}" if settings.resume else ""))
        if env.is_main:
            settings.output_dir.mkdir(parents=True, exist_ok=True)
            (settings.output_dir / "run_settings.json").write_text(
                json.dumps({**settings.describe(), "world_size": env.world_size}, indent=1, default=str))
        summary = recipe.run(settings, env)
    except NotImplementedError as error:
        shutdown_distributed(env, ok=False)
        print(f"vlm-train: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        shutdown_distributed(env, ok=False)
        line = user_problem(error)
        if line is None:
            raise
        # every rank stops with status 2; under torchrun the others have met the same data, or rank 0's verdict
        _stop(error, line + ("" if args.debug else " (vlm-train --debug shows the traceback)"), debug=args.debug,
              is_main=env.is_main)
    except BaseException:
        shutdown_distributed(env, ok=False)
        raise
    shutdown_distributed(env, ok=True)
    if env.is_main:
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
