"""The command line's recipes: what to train, on which data, with which defaults.

Used by :mod:`vlm_helpers.train` (``vlm-train --recipe ...``). A recipe is a small
:class:`Recipe` record (name, datasets it accepts, default hyper-parameters for full
and tiny mode) plus one ``run(settings, env)`` function that does the work with the
same helpers the notebooks use. Adding a recipe = writing that function and one
:func:`register` call; the command line picks it up (choices, defaults, ``--help``).

``run`` receives:

* ``settings`` (:class:`RunSettings`): every option already resolved: command line
  value if given, else the recipe's default for the mode, else the hardware preset's;
* ``env`` (:class:`vlm_helpers.train.Distributed`): rank, world size, device, and helpers
  (``env.wrap(model)`` for DistributedDataParallel, ``env.barrier()``,
  ``env.main_process_first()``, ``env.log(...)`` which prints on rank 0 only).

It returns a small dict summarising the run (printed by the command line as JSON).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vlm_helpers.runtime import Preset
    from vlm_helpers.train import Distributed

__all__ = ["Defaults", "REPORT_TO_CHOICES", "RECIPES", "Recipe", "RunSettings", "get_recipe", "register",
           "weights_digest"]


@dataclass(frozen=True)
class Defaults:
    """A recipe's default hyper-parameters for one mode (full or tiny).

    ``batch_size``/``grad_accum`` of ``None`` mean "from the hardware preset"
    (:data:`vlm_helpers.runtime.BATCHING`). ``checkpoint_every`` of ``None`` means
    "only one checkpoint, after the last step".
    """

    learning_rate: float
    epochs: int = 1
    batch_size: int | None = None  # per process
    grad_accum: int | None = None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    eval_steps: int | None = None
    checkpoint_every: int | None = None
    max_eval_samples: int | None = None


@dataclass(frozen=True)
class Recipe:
    """One trainable combination of model, data and training loop."""

    name: str
    summary: str  # one line for --help
    datasets: tuple[str, ...]  # accepted --dataset values; the first is the default
    full: Defaults
    tiny: Defaults
    run: Callable[[RunSettings, Distributed], dict]

    def defaults(self, tiny: bool) -> Defaults:
        return self.tiny if tiny else self.full


@dataclass
class RunSettings:
    """Every option of one run, resolved (see :func:`vlm_helpers.train.resolve_settings`)."""

    recipe: str
    dataset: str
    tiny: bool
    output_dir: Path
    results_dir: Path
    learning_rate: float
    epochs: int
    max_steps: int | None
    batch_size: int  # per process
    grad_accum: int
    warmup_steps: int
    weight_decay: float
    eval_steps: int | None
    checkpoint_every: int | None
    keep_checkpoints: int
    max_train_samples: int | None
    max_eval_samples: int | None
    cauldron_subsets: tuple[str, ...]
    resume: str | None  # a checkpoint folder, or None
    report_to: tuple[str, ...]
    seed: int
    num_workers: int
    logging_steps: int
    skip_bad_rows: bool
    write_weight_digests: bool
    progress: bool
    preset: Preset = field(repr=False)

    def describe(self) -> dict:
        """The settings as plain JSON-able values (written to ``run_settings.json``)."""
        values = asdict(self)
        values["output_dir"], values["results_dir"] = str(self.output_dir), str(self.results_dir)
        values["preset"] = asdict(self.preset)
        return values


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` (the command line's ``--recipe`` choices)."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    if not recipe.datasets:
        raise ValueError(f"recipe {recipe.name!r} accepts no dataset")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe called ``name`` (``ValueError`` listing the choices otherwise)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None


# ----------------------------------------------------------------- shared pieces

#: Experiment trackers ``--report-to`` accepts -> (package it needs, environment variable with its key).
REPORT_TO_CHOICES: dict[str, tuple[str | None, str | None]] = {
    "none": (None, None),
    "tensorboard": ("tensorboard", None),
    "trackio": ("trackio", None),
    "wandb": ("wandb", "WANDB_API_KEY"),
}


def weights_digest(model) -> dict:
    """SHA-256 and sum of the trainable weights (names sorted): equal on every rank if DDP kept them in sync."""
    from vlm_helpers.training import unwrap

    digest = hashlib.sha256()
    total = 0.0
    count = 0
    for name, param in sorted(unwrap(model).named_parameters()):
        if not param.requires_grad:
            continue
        tensor = param.detach().float().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
        total += float(tensor.double().sum())
        count += 1
    return {"sha256": digest.hexdigest(), "sum": total, "tensors": count}


def write_weight_digest(model, settings: RunSettings, env: Distributed, step: int) -> Path:
    """Write ``output_dir/weights-rank<r>.json`` for this rank (``--write-weight-digests``)."""
    path = settings.output_dir / f"weights-rank{env.rank}.json"
    path.write_text(json.dumps({"rank": env.rank, "world_size": env.world_size, "step": step,
                                **weights_digest(model)}, indent=1))
    return path


class Tracker:
    """Sends each training record to the trackers of ``--report-to`` (rank 0 only).

    Keys come from the environment (``WANDB_API_KEY``), never from the command line.
    """

    def __init__(self, names: tuple[str, ...], settings: RunSettings):
        self.names = [n for n in names if n != "none"]
        self._writers: list[Callable[[dict, int], None]] = []
        self._closers: list[Callable[[], None]] = []
        run_name = f"{settings.recipe}-{settings.dataset}"
        config = {k: v for k, v in settings.describe().items() if isinstance(v, (int, float, str, bool, type(None)))}
        for name in self.names:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(settings.output_dir / "runs"))
                self._writers.append(lambda rec, step, w=writer: [w.add_scalar(k, v, step) for k, v in rec.items()])
                self._closers.append(writer.close)
            elif name in ("wandb", "trackio"):
                module = __import__(name)
                module.init(project="vlm-finetuning", name=run_name, config=config)
                self._writers.append(lambda rec, step, m=module: m.log(rec, step=step))
                self._closers.append(module.finish)

    def log(self, record: dict) -> None:
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for write in self._writers:
            write(values, int(record["step"]))

    def close(self) -> None:
        for close in self._closers:
            close()


def check_report_to(names: tuple[str, ...]) -> str | None:
    """A problem with ``--report-to`` (unknown name, missing package or key), or None."""
    import os

    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown:
        return f"unknown tracker(s) {unknown}; choose from {', '.join(REPORT_TO_CHOICES)}"
    if "none" in names and len(names) > 1:
        return "'none' cannot be combined with other trackers"
    for name in names:
        package, key = REPORT_TO_CHOICES[name]
        if package and importlib.util.find_spec(package) is None:
            return f"--report-to {name} needs the {package!r} package: pip install {package}"
        if key and not os.environ.get(key):
            return f"--report-to {name} needs the environment variable {key} (never pass keys on the command line)"
    return None


def _train_log_line(record: dict, total: int | None) -> str:
    parts = [f"step {record['step']}" + (f"/{total}" if total else ""), f"loss {record['loss']:.4f}",
             f"lr {record['lr']:.3g}"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval_") and isinstance(v, float)]
    return " | ".join(parts)


# ----------------------------------------------------------- florence2-docvqa


def _docvqa_style_train_rows(settings: RunSettings):
    """Training rows with DocVQA's columns: DocVQA itself, or the flattened Cauldron."""
    if settings.dataset == "cauldron":
        from vlm_helpers.data.cauldron import cauldron_dataset

        return cauldron_dataset(settings.cauldron_subsets, tiny=settings.tiny, max_samples=settings.max_train_samples,
                                seed=settings.seed)
    from vlm_helpers.data.docvqa import docvqa_dataset

    return docvqa_dataset("train", tiny=settings.tiny, max_samples=settings.max_train_samples, seed=settings.seed)


def _validated(dataset, split: str, settings: RunSettings, env: Distributed, **columns):
    """Run :func:`~vlm_helpers.data.validation.validate_dataset` on every row before training.

    Stops at the first bad row (naming it), or with ``--skip-bad-rows`` drops bad rows
    and reports them. Returns the dataset itself (restricted to the good rows): images
    stay on disk and are decoded when a batch needs them.
    """
    from vlm_helpers.data.validation import validate_dataset

    _, report = validate_dataset(dataset, split=split, on_bad="skip" if settings.skip_bad_rows else "raise",
                                 return_rows=False, **columns)
    env.log(f"validated {split}: {report.kept} rows kept, {report.skipped} skipped")
    if report.skipped:
        env.log(str(report))
        dataset = dataset.select(report.kept_indices)
    return dataset


def run_florence2_docvqa(settings: RunSettings, env: Distributed) -> dict:
    """Fine-tune Florence-2 on DocVQA (or The Cauldron) exactly as notebook 02 does.

    The steps and helpers are the notebook's: :func:`~vlm_helpers.models.resolve_checkpoint`
    + :func:`~vlm_helpers.models.load_florence2`, freeze the DaViT vision tower,
    :class:`~vlm_helpers.collators.Florence2Collator` with ``answer_choice="random"``,
    :func:`~vlm_helpers.data.validation.validate_dataset`, :func:`vlm_helpers.training.train`,
    then :func:`~vlm_helpers.evaluation.generate_predictions` + ANLS and
    :func:`~vlm_helpers.results.write_run`. Under torchrun the model is wrapped in
    DistributedDataParallel; evaluation runs on rank 0 only while the others wait.
    """
    from vlm_helpers import collators, evaluation, models, results, training
    from vlm_helpers.data.docvqa import docvqa_dataset

    preset = settings.preset
    # Downloads and cache writes once per machine; the other ranks then read the cache.
    with env.main_process_first():
        train_rows = _docvqa_style_train_rows(settings)
        eval_rows = docvqa_dataset("validation", tiny=settings.tiny, max_samples=settings.max_eval_samples,
                                   seed=settings.seed)
        checkpoint = models.resolve_checkpoint(models.FLORENCE2_MODEL_ID, tiny=settings.tiny, tiny_name="florence2")
        model, processor = models.load_florence2(checkpoint, device=env.device,
                                                 attn_implementation=preset.attn_implementation)
    train_rows = _validated(train_rows, "train", settings, env)
    eval_rows = _validated(eval_rows, "validation", settings, env)

    before = models.count_parameters(model)
    models.freeze(*models.florence2_vision_modules(model))
    env.log(f"model {checkpoint}: before freezing {before}; after freezing the vision tower "
            f"{models.count_parameters(model)}")
    collator = collators.Florence2Collator(processor, answer_choice="random", seed=settings.seed)
    generation_collator = collators.Florence2Collator(processor)
    train_model = env.wrap(model)

    config = training.TrainConfig(
        output_dir=str(settings.output_dir), learning_rate=settings.learning_rate, epochs=settings.epochs,
        max_steps=settings.max_steps, batch_size=settings.batch_size, grad_accum=settings.grad_accum,
        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps, dtype=preset.dtype,
        device=env.device, seed=settings.seed, num_workers=settings.num_workers,
        checkpoint_every=settings.checkpoint_every, checkpoint_at_end=True,
        keep_checkpoints=settings.keep_checkpoints, eval_every=settings.eval_steps, progress=settings.progress,
    )
    total = training.total_steps(len(train_rows), config, env.world_size)
    env.log(f"training {total} steps: {env.world_size} process(es) x batch {settings.batch_size} x accumulation "
            f"{settings.grad_accum} = {env.world_size * settings.batch_size * settings.grad_accum} rows per step, "
            f"{len(train_rows)} training rows")

    model_label = "florence2" if settings.dataset == "docvqa" else f"florence2-{settings.dataset}"

    def predict(rows) -> list[dict]:
        predictions = evaluation.generate_predictions(
            training.unwrap(train_model), processor, generation_collator, rows, batch_size=settings.batch_size,
            device=env.device, dtype=preset.dtype)
        return evaluation.prediction_records(rows.remove_columns("image"), predictions, model_name=model_label,
                                             mode="tiny" if settings.tiny else "full")

    def evaluate(step: int) -> dict:
        # Rank 0 generates on the whole validation set; the others wait at the barrier.
        metrics = {}
        if env.is_main:
            metrics = {f"eval_{k}": v for k, v in evaluation.score_docvqa(predict(eval_rows)).items()
                       if k != "samples"}
        env.barrier()
        return metrics

    tracker = Tracker(settings.report_to, settings) if env.is_main else None

    def log(record: dict) -> None:
        if tracker is not None:
            tracker.log(record)
        if record["step"] % settings.logging_steps == 0 or record["step"] == total or any(
                k.startswith("eval_") for k in record):
            env.log(_train_log_line(record, total))

    state = training.train(train_model, train_rows, collator, config, resume_from=settings.resume,
                           eval_fn=evaluate if settings.eval_steps else None, log_fn=log)
    if settings.write_weight_digests:
        write_weight_digest(train_model, settings, env, state.step)

    summary: dict[str, Any] = {"recipe": settings.recipe, "dataset": settings.dataset, "steps": state.step,
                               "world_size": env.world_size, "output_dir": str(settings.output_dir),
                               "final_loss": state.history[-1]["loss"] if state.history else None,
                               "checkpoint": str(training.latest_checkpoint(settings.output_dir))}
    if env.is_main:
        records = predict(eval_rows)
        scores = evaluation.score_docvqa(records)
        metrics_file = results.write_run(settings.results_dir, task="docvqa", model=model_label, stage="finetuned",
                                         mode="tiny" if settings.tiny else "full", notebook="vlm-train",
                                         metrics=scores, records=records, history=state.history)
        model_dir = settings.output_dir / "model"
        training.unwrap(train_model).save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        summary.update(metrics={k: v for k, v in scores.items()}, metrics_file=str(metrics_file),
                       model_dir=str(model_dir))
        env.log(f"validation ANLS {scores['anls']:.4f} on {scores['samples']} questions; results in {metrics_file}; "
                f"model in {model_dir}")
        if tracker is not None:
            tracker.log({"step": state.step, **{f"final_{k}": v for k, v in scores.items()}})
            tracker.close()
    env.barrier()
    return summary


register(Recipe(
    name="florence2-docvqa",
    summary="Florence-2-base-ft, full fine-tuning (vision tower frozen), explicit loop; data: docvqa or cauldron",
    datasets=("docvqa", "cauldron"),
    # The blog: AdamW lr 1e-6, 7 epochs, no warm-up, batch 6 on an A100 (the preset gives the batch).
    full=Defaults(learning_rate=1e-6, epochs=7, checkpoint_every=1000),
    # Tiny: lr 3e-3 with batch 8 is what makes the tiny random model learn in a few dozen steps.
    tiny=Defaults(learning_rate=3e-3, epochs=2, batch_size=8, grad_accum=1, warmup_steps=2, max_eval_samples=32),
    run=run_florence2_docvqa,
))


# ------------------------------------------------------- chat-model recipes


def _chat_recipe_missing(recipe: str) -> str | None:
    """Name the missing piece if the chat-model modules are not there (yet)."""
    for module in ("vlm_helpers.chat_models", "vlm_helpers.chat_collator", "vlm_helpers.hf_training"):
        if importlib.util.find_spec(module) is None:
            return (f"recipe {recipe!r} needs {module} (load_chat_vlm/add_lora, ChatVLMCollator, "
                    "HF Trainer helpers), which is not in this installation")
    return None


def run_idefics2_qlora_docvqa(settings: RunSettings, env: Distributed) -> dict:
    """Idefics2-8B + QLoRA on DocVQA (or The Cauldron) with the HF Trainer (notebook 03)."""
    missing = _chat_recipe_missing(settings.recipe)
    raise NotImplementedError(missing or (
        "recipe 'idefics2-qlora-docvqa' is registered but not wired yet: write its run function in "
        "vlm_helpers/recipes.py with chat_models.load_chat_vlm + add_lora, chat_collator.ChatVLMCollator "
        "and hf_training.train_with_trainer (HF Trainer runs under torchrun as is)"))


def run_phi3_aircraft(settings: RunSettings, env: Distributed) -> dict:
    """LLaVA-Phi-3 + LoRA captioning FGVC-Aircraft with the HF Trainer (notebook 04)."""
    missing = _chat_recipe_missing(settings.recipe)
    raise NotImplementedError(missing or (
        "recipe 'phi3-aircraft' is registered but not wired yet: write its run function in "
        "vlm_helpers/recipes.py with chat_models.load_chat_vlm + add_lora, chat_collator.ChatVLMCollator, "
        "data.aircraft.aircraft_dataset and hf_training.train_with_trainer"))


register(Recipe(
    name="idefics2-qlora-docvqa",
    summary="Idefics2-8B, QLoRA (4-bit NF4 + LoRA r=8), HF Trainer; data: docvqa or cauldron",
    datasets=("docvqa", "cauldron"),
    # The QLoRA article: lr 1e-4, 2 epochs, warm-up 75 steps, weight decay 0.01, batch 2 x 8.
    full=Defaults(learning_rate=1e-4, epochs=2, warmup_steps=75, weight_decay=0.01, checkpoint_every=25),
    tiny=Defaults(learning_rate=1e-3, epochs=1, batch_size=4, grad_accum=1, max_eval_samples=16),
    run=run_idefics2_qlora_docvqa,
))

register(Recipe(
    name="phi3-aircraft",
    summary="LLaVA-Phi-3-mini, LoRA r=16, HF Trainer; captions FGVC-Aircraft Boeing photos; data: aircraft",
    datasets=("aircraft",),
    # The Phi-3 captioning article: lr 1e-4, 4 epochs, weight decay 0.01, evaluation/saving every 10 steps.
    full=Defaults(learning_rate=1e-4, epochs=4, weight_decay=0.01, eval_steps=10, checkpoint_every=10),
    tiny=Defaults(learning_rate=1e-3, epochs=1, batch_size=4, grad_accum=1, max_eval_samples=16),
    run=run_phi3_aircraft,
))
