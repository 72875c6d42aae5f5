"""The command line's recipes: what to train, on which data, with which defaults.

Used by :mod:`vlm_helpers.cli` (``vlm-train --recipe ...``). A recipe is a small
:class:`Recipe` record (name, datasets it accepts, default hyper-parameters for full
and tiny mode) plus one ``run(settings, env)`` function that does the work with the
same helpers the notebooks use. Adding a recipe = writing that function and one
:func:`register` call; the command line picks it up (choices, defaults, ``--help``).

``run`` receives:

* ``settings`` (:class:`RunSettings`): every option already resolved: command line
  value if given, else the recipe's default for the mode, else the hardware preset's;
* ``env`` (:class:`vlm_helpers.cli.launch.Distributed`): rank, world size, device, and helpers
  (``env.wrap(model)`` for DistributedDataParallel or FSDP2, ``env.barrier()``,
  ``env.main_process_first()``, ``env.log(...)`` which prints on rank 0 only).

It returns a small dict summarising the run (printed by the command line as JSON).

Two kinds of recipe exist. ``trainer="loop"`` (florence2-docvqa) runs the series' own
loop, :func:`vlm_helpers.loop.train`, on a model the recipe wraps with ``env.wrap``.
``trainer="hf"`` (idefics2-qlora-docvqa, phi3-aircraft) hands the model to the HF Trainer
(:func:`vlm_helpers.hf_trainer.train_with_trainer`), which does its own DDP under
torchrun; those share :func:`_run_chat_recipe` and differ only by a :class:`ChatSpec`
and a data function. Both kinds write a checkpoint after the last step (plus every
``--checkpoint-every`` steps) and continue one with ``--resume``; the formats differ
(``training_state.pt`` vs the Trainer's ``trainer_state.json`` + adapter + optimizer).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vlm_helpers.runtime import Preset
    from vlm_helpers.cli.launch import Distributed

__all__ = ["ChatSpec", "Defaults", "RECIPES", "Recipe", "RunSettings", "UserError", "YourData", "batching_recipe",
           "get_recipe", "register", "run_custom", "run_florence2_docvqa", "run_idefics2_qlora_docvqa",
           "run_phi3_aircraft", "weights_digest"]


class UserError(Exception):
    """A problem with the user's data, files or command line, not with the program: ``vlm-train`` prints its
    message as one line (``vlm-train: error: ...``, on rank 0 only), no traceback unless ``--debug``, and exits
    with status 2, as argparse does for a misspelt option.

    Raised for what the user can fix: a data file that cannot be read (``[data.jsonl:7] malformed JSON``), a
    column that does not exist, an output folder holding an earlier run, full mode on a machine without a GPU.
    The README, section "When things go wrong".
    """


@dataclass(frozen=True)
class Defaults:
    """A recipe's default hyper-parameters for one mode (full or tiny).

    ``batch_size``/``grad_accum`` of ``None`` mean "from the hardware preset"
    (:data:`vlm_helpers.runtime.BATCHING`). ``checkpoint_every`` of ``None`` means
    "only one checkpoint, after the last step". ``vlm-train --help`` prints them (README, section "Scaling
    out: from one GPU to several machines").
    """

    learning_rate: float
    epochs: int = 1
    batch_size: int | None = None  # per process
    grad_accum: int | None = None
    warmup_steps: float = 0  # steps; below 1 a fraction of the run (HF Trainer recipes only)
    weight_decay: float = 0.0
    eval_steps: int | None = None
    checkpoint_every: int | None = None
    max_eval_samples: int | None = None
    num_beams: int = 1  # evaluation by generation: beam width
    max_new_tokens: int = 32


@dataclass(frozen=True)
class Recipe:
    """One trainable combination of model, data and training loop.

    The three recipes are tabled in the README, section "Scaling out: from one GPU to several machines".
    """

    name: str
    summary: str  # one line for --help
    datasets: tuple[str, ...]  # accepted --dataset values; the first is the default
    full: Defaults
    tiny: Defaults
    run: Callable[[RunSettings, Distributed], dict]
    # "loop": vlm_helpers.loop (checkpoints hold training_state.pt; --resume, --fsdp);
    # "hf": the HF Trainer (its own checkpoints, with trainer_state.json; --resume, no --fsdp)
    trainer: str = "loop"
    # (task, model) of its fine-tuned run in results/ (notebook 05 reads "docvqa"/"florence2" etc.)
    results: tuple[str, str] = ("docvqa", "model")

    def defaults(self, tiny: bool) -> Defaults:
        return self.tiny if tiny else self.full

    def results_run(self, dataset: str) -> tuple[str, str]:
        """``(task, model)`` names of the run's results; another dataset than the first gets its own model name."""
        task, model = self.results
        return task, model if dataset == self.datasets[0] else f"{model}-{dataset}"


@dataclass(frozen=True)
class YourData:
    """``--recipe custom``: your data (notebook 06's parameters, as command-line options).

    Plain values only, so ``--help`` and ``run_settings.json`` need no heavy import. The same choices as
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data"; the command line is in the README,
    section "Your data: the formats notebook 06 reads".
    """

    source: str | None  # a file, a save_to_disk folder or a Hub id; None in tiny mode: a synthetic folder
    format: str  # "auto", "jsonl", "csv", "conversations", "hf"
    image_column: str
    question_column: str | None
    answer_column: str
    id_column: str | None
    prompt: str | None  # captioning: one fixed instruction used as every row's question
    task: str  # "qa" or "captioning"
    model: str  # a vlm_helpers.model_choices key
    method: str | None  # "lora", "qlora", or None: the preset decides
    instruction: str
    split_seed: int
    validation_fraction: float
    test_fraction: float
    answer_separator: str | None = None  # splits a string answer into several (e.g. "|"); None: as written

    def columns(self):
        """The :class:`~vlm_helpers.data.formats.Columns` these options name (``ValueError`` for an impossible
        mapping, e.g. one column in two parts); not for conversation files, which need none."""
        from vlm_helpers.data.formats import Columns

        return Columns(image=self.image_column, question=self.question_column, answer=self.answer_column,
                       id=self.id_column, prompt=self.prompt, answer_separator=self.answer_separator)

    def results_run(self) -> tuple[str, str]:
        """``(task, model)`` of the run's results: e.g. ``("qa", "custom-qwen2-vl")``."""
        return self.task, f"custom-{self.model}"


def batching_recipe(recipe: str, your_data: YourData | None) -> str:
    """The :data:`vlm_helpers.runtime.BATCHING` entry of a run: the recipe's, or the chosen model's for
    ``custom`` (README, section "Your data: the formats notebook 06 reads")."""
    if recipe != "custom":
        return recipe
    from vlm_helpers.model_choices import get_model_choice

    return get_model_choice(your_data.model).recipe


@dataclass
class RunSettings:
    """Every option of one run, resolved (see :func:`vlm_helpers.cli.main.resolve_settings`).

    Saved as ``run_settings.json`` in the output folder (README, section "One GPU").
    """

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
    warmup_steps: float  # whole steps for the loop; the HF Trainer also takes a fraction below 1
    weight_decay: float
    eval_steps: int | None
    checkpoint_every: int | None
    keep_checkpoints: int
    max_train_samples: int | None
    max_eval_samples: int | None
    num_beams: int
    max_new_tokens: int
    cauldron_subsets: tuple[str, ...]
    resume: str | None  # a checkpoint folder (the recipe's format), or None
    report_to: tuple[str, ...]
    seed: int
    num_workers: int
    logging_steps: int
    skip_bad_rows: bool
    max_skipped_steps: int  # NaN/inf steps skipped before training stops
    replace_results: bool  # may replace another producer's (or a full-mode) run in results_dir
    write_weight_digests: bool
    progress: bool
    preset: Preset = field(repr=False)
    keep_best: bool = False  # HF Trainer recipes: keep the adapter of the best evaluation (needs eval_steps)
    patience: int | None = None  # with keep_best: stop after this many evaluations without improvement
    your_data: YourData | None = None  # --recipe custom: the data, its columns, the task and the model

    def describe(self) -> dict:
        """The settings as plain JSON-able values (written to ``run_settings.json``)."""
        values = asdict(self)
        values["output_dir"], values["results_dir"] = str(self.output_dir), str(self.results_dir)
        values["preset"] = asdict(self.preset)
        return values


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` (the command line's ``--recipe`` choices; README, section "Scaling
    out: from one GPU to several machines")."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    if not recipe.datasets:
        raise ValueError(f"recipe {recipe.name!r} accepts no dataset")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe called ``name`` (``ValueError`` listing the choices otherwise).

    The recipes: the README, section "Scaling out: from one GPU to several machines".
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None


# ----------------------------------------------------------------- shared pieces


def weights_digest(model) -> dict:
    """SHA-256 and sum of the trainable weights (names sorted): equal on every rank if DDP kept them in sync.

    FSDP shards are gathered first (a collective: call it on every rank). How to use the digests on a first
    real multi-GPU run: the README, section "What was tested, and where".
    """
    from vlm_helpers.distributed import full_copy as _full, unwrap

    digest = hashlib.sha256()
    total = 0.0
    count = 0
    for name, param in sorted(unwrap(model).named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            continue
        tensor = _full(param).float().contiguous()
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


def _train_log_line(record: dict, total: int | None) -> str:
    loss = record.get("loss")
    parts = [f"step {record['step']}" + (f"/{total}" if total else ""),
             f"loss {loss:.4f}" if isinstance(loss, float) else "loss -", f"lr {record['lr']:.3g}"]
    if record.get("skipped"):
        parts.append(f"SKIPPED: {record['skipped']}")
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval_") and isinstance(v, float)]
    return " | ".join(parts)


# ----------------------------------------------------------- florence2-docvqa


def _docvqa_style_train_rows(settings: RunSettings):
    """Training rows with DocVQA's columns: DocVQA itself, or the flattened Cauldron."""
    if settings.dataset == "cauldron":
        from vlm_helpers.data.sources import cauldron_dataset

        return cauldron_dataset(settings.cauldron_subsets, tiny=settings.tiny, max_samples=settings.max_train_samples,
                                seed=settings.seed)
    from vlm_helpers.data.sources import docvqa_dataset

    return docvqa_dataset("train", tiny=settings.tiny, max_samples=settings.max_train_samples, seed=settings.seed)


def _validated(dataset, split: str, settings: RunSettings, env: Distributed, reports: list | None = None, **columns):
    """Validate every row before training (:func:`~vlm_helpers.data.validation.clean_dataset`),
    against the model's processor too (``columns`` holds ``processor=`` and the column names) and, for the
    training split, against the run's collator (``collator=``: answers too long for it).

    Stops at the first bad row (naming it), or with ``--skip-bad-rows`` drops bad rows
    and lists them. Returns the dataset restricted to the good rows; images stay
    encoded and are decoded when a batch needs them. Under torchrun rank 0 validates
    (decoding every image once, not once per process) and sends the verdict to the others; its
    :class:`~vlm_helpers.data.validation.ValidationReport` is appended to ``reports`` (rank 0 only).
    """
    from vlm_helpers.data.validation import clean_dataset

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


def run_florence2_docvqa(settings: RunSettings, env: Distributed) -> dict:
    """Fine-tune Florence-2 on DocVQA (or The Cauldron) exactly as notebook 02 does.

    The steps and helpers are the notebook's: :func:`~vlm_helpers.tiny.resolve_checkpoint`
    + :func:`~vlm_helpers.florence2.load_florence2`, freeze the DaViT vision tower,
    :class:`~vlm_helpers.florence2.Florence2Collator` with ``answer_choice="random"``,
    :func:`~vlm_helpers.data.validation.clean_dataset`, :func:`vlm_helpers.loop.train`,
    then :func:`~vlm_helpers.evaluation.evaluate` (generation + ANLS) and
    :func:`~vlm_helpers.results.write_run`. Under torchrun the model is wrapped in
    DistributedDataParallel (or sharded with FSDP2); evaluation runs on rank 0 only while
    the others wait (on every rank, same rows, when the model is sharded). The notebook's steps are
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; the command line is in the README, section
    "Scaling out: from one GPU to several machines".
    """
    from vlm_helpers import checkpoints, distributed, evaluation, florence2, freezing, loop, results, tiny
    from vlm_helpers.data.sources import docvqa_dataset

    preset = settings.preset
    # Downloads and cache writes once per machine; the other ranks then read the cache.
    with env.main_process_first():
        train_rows = _docvqa_style_train_rows(settings)
        eval_rows = docvqa_dataset("validation", tiny=settings.tiny, max_samples=settings.max_eval_samples,
                                   seed=settings.seed)
        checkpoint = tiny.resolve_checkpoint(florence2.FLORENCE2_MODEL_ID, tiny=settings.tiny, tiny_name="florence2")
        # fp32 master weights, as notebook 02 (the 1e-6 learning rate is below bf16/fp16 resolution); autocast
        # computes in the preset's dtype. Florence-2-base-ft's config says float16: without dtype= that would win
        model, processor = florence2.load_florence2(checkpoint, device=env.device, dtype="float32",
                                                 attn_implementation=preset.attn_implementation)
    collator = florence2.Florence2Collator(processor, answer_choice="random", seed=settings.seed)
    # checked against the processor too: text holding its special or task tokens is refused here, and
    # training answers too long for the collator (max_answer_tokens) before the first step
    train_rows = _validated(train_rows, "train", settings, env, processor=processor, collator=collator)
    eval_rows = _validated(eval_rows, "validation", settings, env, processor=processor)

    before = freezing.count_parameters(model)
    freezing.freeze(*florence2.florence2_vision_modules(model))
    env.log(f"model {checkpoint}: before freezing {before}; after freezing the vision tower "
            f"{freezing.count_parameters(model)}")
    generation_collator = florence2.Florence2Collator(processor)
    # DDP replicates the model; FSDP2 (--fsdp / accelerate's FSDP config) shards these blocks and the rest
    train_model = env.wrap(model, shard=("BartEncoderLayer", "BartDecoderLayer", "Florence2VisionBlock"),
                           shard_methods=("generate",))

    config = loop.TrainConfig(
        output_dir=str(settings.output_dir), learning_rate=settings.learning_rate, epochs=settings.epochs,
        max_steps=settings.max_steps, batch_size=settings.batch_size, grad_accum=settings.grad_accum,
        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps, dtype=preset.dtype,
        device=env.device, seed=settings.seed, num_workers=settings.num_workers,
        checkpoint_every=settings.checkpoint_every, checkpoint_at_end=True,
        keep_checkpoints=settings.keep_checkpoints, eval_every=settings.eval_steps, progress=settings.progress,
        max_skipped_steps=settings.max_skipped_steps,
    )
    total = loop.total_steps(len(train_rows), config, env.world_size)
    env.log(f"training {total} steps: {env.world_size} process(es) x batch {settings.batch_size} x accumulation "
            f"{settings.grad_accum} = {env.world_size * settings.batch_size * settings.grad_accum} rows per step, "
            f"{len(train_rows)} training rows")

    # the run's name in results/ ("florence2" is also notebook 02's); the records name the checkpoint
    _, model_label = get_recipe(settings.recipe).results_run(settings.dataset)
    model_name = "tiny-random-florence2" if settings.tiny else florence2.FLORENCE2_MODEL_ID

    sharded = distributed.is_sharded(train_model)

    def evaluate_on_rank0(title: str) -> tuple[list[dict], dict] | None:
        """Rank 0 generates for the whole validation set while the other ranks wait at a barrier.

        A sharded (FSDP) model cannot run on one rank alone: there every rank generates for
        the same rows (same inputs, so the same number of forward passes), rank 0 keeps the result.
        """
        result = None
        if env.is_main or sharded:
            with env.quiet_unless_main():
                result = evaluation.evaluate(
                    distributed.unwrap(train_model), processor, generation_collator, eval_rows, task="docvqa",
                    model_name=model_name, tiny=settings.tiny, device=env.device, dtype=preset.dtype,
                    batch_size=2 * settings.batch_size, num_beams=settings.num_beams,
                    max_new_tokens=settings.max_new_tokens, title=title)
        env.barrier()
        return result if env.is_main else None

    def evaluate_during_training(step: int) -> dict:
        result = evaluate_on_rank0(f"[vlm-train] step {step}")
        return {f"eval_{k}": v for k, v in result[1].items() if k != "samples"} if result else {}

    from vlm_helpers.tracking import Tracker

    tracker = Tracker(settings.report_to, settings) if env.is_main else None

    def log(record: dict) -> None:
        if tracker is not None:
            tracker.log(record)
        if record["step"] % settings.logging_steps == 0 or record["step"] == total or "skipped" in record or any(
                k.startswith("eval_") for k in record):
            env.log(_train_log_line(record, total))

    state = loop.train(train_model, train_rows, collator, config, resume_from=settings.resume,
                           eval_fn=evaluate_during_training if settings.eval_steps else None, log_fn=log)
    if settings.write_weight_digests:
        write_weight_digest(train_model, settings, env, state.step)

    summary: dict[str, Any] = {"recipe": settings.recipe, "dataset": settings.dataset, "steps": state.step,
                               "world_size": env.world_size, "output_dir": str(settings.output_dir),
                               "final_loss": state.history[-1]["loss"] if state.history else None,
                               "checkpoint": str(checkpoints.latest_checkpoint(settings.output_dir))}
    final = evaluate_on_rank0("[vlm-train] after fine-tuning")
    model_dir = settings.output_dir / "final"
    full_weights = env.full_state_dict(train_model) if sharded else None  # FSDP: gathered on every rank
    if env.is_main:
        records, scores = final
        metrics_file = results.write_run(settings.results_dir, task="docvqa", model=model_label, stage="finetuned",
                                         mode="tiny" if settings.tiny else "full", notebook="vlm-train",
                                         metrics=scores, records=records, history=state.history,
                                         replace=settings.replace_results)
        if full_weights is None:
            checkpoints.check_finite_weights(train_model)  # never save a NaN model
        distributed.unwrap(train_model).save_pretrained(model_dir, state_dict=full_weights)
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
    # The blog: AdamW lr 1e-6, 7 epochs, batch 6 on an A100 (the preset gives the batch); warm-up 50
    # and beam search 3 as in notebook 02.
    full=Defaults(learning_rate=1e-6, epochs=7, warmup_steps=50, checkpoint_every=1000, num_beams=3),
    # Tiny: lr 3e-3 with batch 8 makes the tiny random model learn; 6 epochs of the 200 synthetic
    # rows = 150 steps, notebook 02's tiny run length.
    tiny=Defaults(learning_rate=3e-3, epochs=6, batch_size=8, grad_accum=1, warmup_steps=10, max_eval_samples=40,
                  max_new_tokens=16),
    run=run_florence2_docvqa,
    results=("docvqa", "florence2"),
))


# ------------------------------------------------------- chat-model recipes


@dataclass(frozen=True)
class ChatSpec:
    """What differs between the HF Trainer recipes (Idefics2, LLaVA-Phi-3, and ``custom``'s model choice, which
    brings its own collator: Florence-2's for ``florence2``); the rest is shared.

    The recipes are tabled in the README, section "Scaling out: from one GPU to several machines".
    """

    model_id: str
    tiny_name: str  # vlm_helpers.tiny builder
    lora_targets: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float  # full mode; tiny mode uses 0 so short runs are reproducible
    quantize_4bit: bool | None  # QLoRA; None: as llava_phi3.default_4bit (a T4 only)
    init_lora_weights: bool | str
    instruction: str  # ChatVLMCollator(instruction=...)
    question_key: str | None
    answer_key: str
    id_key: str
    task: str  # results task: "docvqa" or "captioning"
    tiny_modules_to_save: tuple[str, ...] = ()  # whole modules trained next to the adapters, tiny mode only
    image_longest_edge: tuple[tuple[str, int], ...] = ()  # (preset name, pixels): Idefics2's image size
    image_splitting_by_preset: bool = False  # Idefics2: lora.default_image_splitting(preset name) decides
    do_image_splitting: bool | None = None  # otherwise this, when not None
    # preset name -> the processor settings bounding a page's image tokens (custom: ModelChoice.image_budget)
    image_budget: Callable[[str], dict] | None = None
    results_model: str | None = None  # the model name of its results (default: the recipe's)
    model_card: bool = False  # score the test rows before training too, and write a model card by the adapter
    # the collator of the rows; None: ChatVLMCollator(instruction, question/answer/id keys). custom: the model
    # choice's own (model_choices.ModelChoice.collator: Florence-2's for florence2)
    make_collator: Callable[[Any], Any] | None = None
    prompt_settings: tuple[tuple[str, str], ...] = ()  # what the model card records as the prompt (custom)
    report_data: bool = False  # print the data report of every split before training (custom: your data)


def _run_chat_recipe(settings: RunSettings, env: Distributed, spec: ChatSpec,
                     load_rows: Callable[[RunSettings], tuple[Any, Any]], validation_keys: dict) -> dict:
    """Load + LoRA (:mod:`vlm_helpers.lora`), :class:`~vlm_helpers.chat_collator.ChatVLMCollator` (or the spec's
    ``make_collator``),
    :func:`~vlm_helpers.hf_trainer.train_with_trainer`, then evaluation on rank 0 and the adapter.

    The HF Trainer does the distributed part itself under torchrun / accelerate launch
    (DDP, and FSDP/DeepSpeed from accelerate's config): the model is NOT wrapped here.
    A 4-bit model cannot move between devices, so each process loads it onto its own GPU.
    The Trainer writes ``checkpoint-<step>/`` after the last step (and every ``--checkpoint-every``
    steps); ``settings.resume`` continues one, and ``history.json`` then starts with the records
    the checkpoint holds. Rank 0 alone writes ``history.json``, ``results/`` and ``adapter/``.
    """
    from vlm_helpers import adapters, evaluation, llava_phi3, loop, lora, results, tiny
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.checkpoints import check_finite_weights
    from vlm_helpers.comparison import HEADLINE_METRICS
    from vlm_helpers.checkpoints import latest_trainer_checkpoint
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer

    preset = settings.preset  # its batch is the run's (--batch-size, the recipe's or the GPU preset's)
    quantize = llava_phi3.default_4bit(preset.name) if spec.quantize_4bit is None else spec.quantize_4bit
    with env.main_process_first():
        rows = load_rows(settings)  # (train, validation) or (train, validation, test)
        train_rows, eval_rows = rows[:2]
        test_rows = rows[2] if len(rows) > 2 else None
        checkpoint = tiny.resolve_checkpoint(spec.model_id, tiny=settings.tiny, tiny_name=spec.tiny_name)
        load_kwargs = {}
        if spec.image_splitting_by_preset:
            load_kwargs["do_image_splitting"] = lora.default_image_splitting(preset.name)
        elif spec.do_image_splitting is not None:
            load_kwargs["do_image_splitting"] = spec.do_image_splitting
        if dict(spec.image_longest_edge).get(preset.name):
            load_kwargs["image_longest_edge"] = dict(spec.image_longest_edge)[preset.name]
        if spec.image_budget is not None:  # e.g. Qwen2-VL's max_pixels on a T4 (notebook 06's loading cell)
            load_kwargs["image_budget"] = spec.image_budget(preset.name)
        model, processor = lora.load_chat_vlm(
            checkpoint, dtype=preset.dtype, attn_implementation=preset.attn_implementation, quantize_4bit=quantize,
            device_map={"": env.local_rank} if env.device == "cuda" else None, **load_kwargs)
    collator = (spec.make_collator(processor) if spec.make_collator is not None else
                ChatVLMCollator(processor, instruction=spec.instruction, question_key=spec.question_key,
                                answer_key=spec.answer_key, id_key=spec.id_key, seed=settings.seed))
    # training answers too long for the collator are refused (or skipped) here, not at their batch
    checks: list = []  # rank 0's validation reports (the data report and the card list what they left out)
    train_rows = _validated(train_rows, "train", settings, env, checks, processor=processor, collator=collator,
                            **validation_keys)
    # splits answered by generation: their prompts are priced (a question too long for the model), not the answers
    eval_rows = _validated(eval_rows, "validation", settings, env, checks, processor=processor, collator=collator,
                           price_answers=False, **validation_keys)
    if test_rows is not None:
        test_rows = _validated(test_rows, "test", settings, env, checks, processor=processor, collator=collator,
                               price_answers=False, **validation_keys)
    if spec.report_data and env.is_main:
        budget = spec.image_budget(preset.name) if spec.image_budget is not None else None
        without = lora.load_chat_processor(checkpoint) if budget else None
        env.log(_data_report({"train": train_rows, "validation": eval_rows, "test": test_rows}, spec, processor,
                             without, budget, preset.name, getattr(load_rows, "load_report", None), checks))
    model = lora.add_lora(model, target_modules=spec.lora_targets, r=spec.lora_r, alpha=spec.lora_alpha,
                                 dropout=0.0 if settings.tiny else spec.lora_dropout, quantized=quantize,
                                 gradient_checkpointing=preset.gradient_checkpointing,
                                 init_lora_weights=spec.init_lora_weights,
                                 modules_to_save=list(spec.tiny_modules_to_save) if settings.tiny and
                                 spec.tiny_modules_to_save else None)
    env.log(lora.lora_report(model))
    args = make_training_arguments(
        output_dir=str(settings.output_dir), batch_size=preset.batch_size, grad_accum=preset.grad_accum,
        dtype=preset.dtype, gradient_checkpointing=preset.gradient_checkpointing, device=env.device, learning_rate=settings.learning_rate, epochs=settings.epochs,
        max_steps=settings.max_steps or -1, warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        report_to=list(settings.report_to), logging_steps=settings.logging_steps,
        save_steps=settings.checkpoint_every, save_total_limit=settings.keep_checkpoints, save_at_end=True,
        seed=settings.seed,
        dataloader_num_workers=settings.num_workers, disable_tqdm=not settings.progress)
    _, model_label = get_recipe(settings.recipe).results_run(settings.dataset)
    model_label = spec.results_model or model_label
    model_name = f"tiny-random-{spec.tiny_name}" if settings.tiny else spec.model_id

    def evaluate_on_rank0(title: str, rows=eval_rows):
        result = None
        if env.is_main:  # the PEFT model itself, not the Trainer's DDP wrapper: no collective involved
            result = evaluation.evaluate(
                model, processor, collator, rows, task=spec.task, model_name=model_name, tiny=settings.tiny,
                device=env.device, dtype=preset.dtype, batch_size=2 * settings.batch_size,
                num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens,
                references_key=spec.answer_key, title=title)
        env.barrier()
        return result

    def evaluate_during_training(step: int) -> dict:
        result = evaluate_on_rank0(f"[vlm-train] step {step}")
        return {f"eval_{k}": v for k, v in result[1].items() if k != "samples"} if result else {}

    baseline = None
    if spec.model_card:  # the card's "before": the untrained adapter (LoRA's B starts at 0) on the test rows
        baseline = evaluate_on_rank0("[vlm-train] before fine-tuning (test split)", test_rows or eval_rows)
    started = time.perf_counter()  # the card's time only if a resumed checkpoint has no record of earlier sessions
    env.log(f"training with the HF Trainer: {env.world_size} process(es) x batch {settings.batch_size} x "
            f"accumulation {settings.grad_accum}, {len(train_rows)} training rows"
            + (f", resuming from {settings.resume}" if settings.resume else ""))
    trainer, history = train_with_trainer(model, train_rows, collator, args,
                                          eval_fn=evaluate_during_training if settings.eval_steps else None,
                                          eval_every=settings.eval_steps, resume_from_checkpoint=settings.resume,
                                          max_skipped_steps=settings.max_skipped_steps,
                                          keep_best=(f"eval_{HEADLINE_METRICS[spec.task][0]}" if settings.keep_best
                                                     else None),
                                          patience=settings.patience, processor=processor, base_model=spec.model_id)
    run_seconds = trainer.training_seconds  # every session's training, evaluations during training included
    if settings.write_weight_digests:
        write_weight_digest(model, settings, env, trainer.state.global_step)
    final_rows = eval_rows if test_rows is None else test_rows  # custom: the test split, not used for choosing
    final = evaluate_on_rank0("[vlm-train] after fine-tuning" + (" (test split)" if test_rows is not None else ""),
                              final_rows)
    summary: dict[str, Any] = {"recipe": settings.recipe, "dataset": settings.dataset,
                               "steps": trainer.state.global_step, "resumed_from_step": trainer.resumed_from_step,
                               "world_size": env.world_size,
                               "output_dir": str(settings.output_dir),
                               "final_loss": history[-1]["loss"] if history else None,
                               "checkpoint": str(latest_trainer_checkpoint(settings.output_dir))}
    if env.is_main:
        records, scores = final
        loop.save_history(history, settings.output_dir / "history.json")
        metrics_file = results.write_run(settings.results_dir, task=spec.task, model=model_label, stage="finetuned",
                                         mode="tiny" if settings.tiny else "full", notebook="vlm-train",
                                         metrics=scores, records=records, history=history,
                                         replace=settings.replace_results)
        check_finite_weights(model)  # never save a NaN adapter
        adapter = adapters.save_adapter(model, processor, settings.output_dir / "adapter", base_model=spec.model_id)
        summary.update(metrics=dict(scores), metrics_file=str(metrics_file), adapter_dir=str(adapter))
        if spec.model_card:
            card = _write_your_data_card(adapter, settings, spec, history, before=baseline[1], after=scores,
                                         splits={"train": train_rows, "validation": eval_rows, "test": final_rows},
                                         loaded=load_rows, checks=checks,
                                         run_seconds=run_seconds if run_seconds is not None
                                         else time.perf_counter() - started,
                                         resumed_from_step=trainer.resumed_from_step,
                                         earlier_time_known=run_seconds is not None)
            summary["model_card"] = str(card)
    env.barrier()
    return summary


def _docvqa_chat_rows(settings: RunSettings):
    from vlm_helpers.data.sources import docvqa_dataset

    return (_docvqa_style_train_rows(settings),
            docvqa_dataset("validation", tiny=settings.tiny, max_samples=settings.max_eval_samples, seed=settings.seed))


def run_idefics2_qlora_docvqa(settings: RunSettings, env: Distributed) -> dict:
    """Idefics2-8B + QLoRA on DocVQA (or The Cauldron) with the HF Trainer (notebook 03's pieces).

    The notebook's training: ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging
    Face Trainer"; the recipe: the README, section "Scaling out: from one GPU to several machines".
    """
    from vlm_helpers.lora import IDEFICS2_MODEL_ID
    from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS

    spec = ChatSpec(model_id=IDEFICS2_MODEL_ID, tiny_name="idefics2", lora_targets=IDEFICS2_LORA_TARGETS,
                    lora_r=8, lora_alpha=8, lora_dropout=0.1, quantize_4bit=True, init_lora_weights="gaussian",
                    instruction="Answer briefly.", question_key="question", answer_key="answers",
                    id_key="questionId", task="docvqa",
                    # as notebook 03: the tiny model also trains lm_head; a T4 halves the image size
                    tiny_modules_to_save=("lm_head",), image_longest_edge=(("t4", 490),),
                    image_splitting_by_preset=True)
    return _run_chat_recipe(settings, env, spec, _docvqa_chat_rows, {})


def _aircraft_rows(settings: RunSettings):
    """Train / validation splits of FGVC-Aircraft (Boeing 707/737/777/787) with a ``caption`` column."""
    from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT, caption_target
    from vlm_helpers.data.sources import aircraft_dataset

    seed = 42 if settings.seed == 0 else settings.seed  # the article's split seed unless one is asked for
    splits = aircraft_dataset(tiny=settings.tiny, seed=seed, verbose=False)

    def prepare(split, limit):
        rows = splits[split]
        rows = rows.select(range(min(limit, len(rows)))) if limit else rows
        # the target caption, and the prompt as "question" (for validation and the prediction records)
        return rows.map(lambda row: {"caption": caption_target(row), "question": AIRCRAFT_PROMPT})

    return prepare("train", settings.max_train_samples), prepare("validation", settings.max_eval_samples)


def phi3_aircraft_spec() -> ChatSpec:
    """What ``phi3-aircraft`` trains: notebook 04's model, LoRA, prompt layout and 4-bit rule.

    Those are taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The model", and
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "LoRA on the language model only".
    """
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_MODEL_ID

    return ChatSpec(model_id=LLAVA_PHI3_MODEL_ID, tiny_name="llava-phi3", lora_targets=LLAVA_PHI3_LORA_TARGETS,
                    lora_r=16, lora_alpha=32, lora_dropout=0.1, quantize_4bit=None, init_lora_weights=True,
                    # as notebook 04: the image first, then the prompt (the rows' "question" column)
                    instruction="", question_key="question", answer_key="caption", id_key="id",
                    task="captioning")


def run_phi3_aircraft(settings: RunSettings, env: Distributed) -> dict:
    """LLaVA-Phi-3-mini + LoRA captioning FGVC-Aircraft with the HF Trainer (notebook 04's pieces).

    The notebook's training: ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Training with the
    Hugging Face Trainer"; the recipe: the README, section "Scaling out: from one GPU to several machines".
    """
    return _run_chat_recipe(settings, env, phi3_aircraft_spec(), _aircraft_rows,
                            {"answer_key": "caption", "answers_may_be_str": True, "id_key": "id"})


register(Recipe(
    name="idefics2-qlora-docvqa",
    summary="Idefics2-8B, QLoRA (4-bit NF4 + LoRA r=8), HF Trainer; data: docvqa or cauldron",
    datasets=("docvqa", "cauldron"),
    # The QLoRA article: lr 1e-4, 2 epochs, warm-up 75 steps, weight decay 0.01, batch 2 x 8 (preset).
    full=Defaults(learning_rate=1e-4, epochs=2, warmup_steps=75, weight_decay=0.01, checkpoint_every=25),
    # Tiny: lr 1e-2 is what makes the tiny 4-bit model + LoRA learn in a few dozen steps (tests/test_chat_vlm.py).
    tiny=Defaults(learning_rate=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=2, max_eval_samples=16,
                  max_new_tokens=16),
    run=run_idefics2_qlora_docvqa,
    trainer="hf",
    results=("docvqa", "idefics2"),
))

register(Recipe(
    name="phi3-aircraft",
    summary="LLaVA-Phi-3-mini, LoRA r=16, HF Trainer; captions FGVC-Aircraft Boeing photos; data: aircraft",
    datasets=("aircraft",),
    # The Phi-3 captioning article: lr 1e-4, 4 epochs, warm-up 10% of the run, weight decay 0.01,
    # evaluation and saving every 10 steps.
    full=Defaults(learning_rate=1e-4, epochs=4, warmup_steps=0.1, weight_decay=0.01, eval_steps=10,
                  checkpoint_every=10),
    tiny=Defaults(learning_rate=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=2, max_eval_samples=16,
                  max_new_tokens=16),
    run=run_phi3_aircraft,
    trainer="hf",
    results=("captioning", "phi3"),
))


# ------------------------------------------------------------------ custom: your data


class YourDataLoader:
    """``--data``'s train / validation / test rows (notebook 06's loading and splitting), keeping what the data
    report and the model card need: the loader's report, the columns read (None for conversations) and, in tiny
    mode without ``--data``, why a synthetic folder stands in. The recipe ``custom`` of the README, section "Your
    data: the formats notebook 06 reads"."""

    def __init__(self) -> None:
        self.load_report = None
        self.columns = None
        self.note: str | None = None

    def __call__(self, settings: RunSettings):
        import tempfile

        from vlm_helpers.data.formats import load_your_data, train_validation_test
        from vlm_helpers.data.validation import DataValidationError

        data = settings.your_data
        source, columns = data.source, None
        if source is None:  # tiny mode (resolve_settings refuses a full-mode run without --data)
            from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

            synthetic = write_synthetic_image_folder(tempfile.mkdtemp(prefix="vlm-train-custom-"), rows=200,
                                                     task=data.task, seed=settings.seed)
            source, columns = synthetic.jsonl, synthetic.columns
            self.note = "tiny mode without --data: a synthetic image folder written by vlm-train"
        elif data.format != "conversations":
            columns = data.columns()
        try:  # what goes wrong here is the data's: a file that is missing or cannot be read, a column that is not
            # there, a split too small to hold out from. One line names it (vlm-train --debug: the traceback)
            splits, report = load_your_data(source, columns, format=data.format,
                                            on_bad="skip" if settings.skip_bad_rows else "raise")
            print(f"[vlm-train] {report}", flush=True)
            train, validation, test, lines = train_validation_test(splits, seed=data.split_seed,
                                                                   validation_fraction=data.validation_fraction,
                                                                   test_fraction=data.test_fraction)
        except DataValidationError:
            raise  # its message already says where: [data.jsonl:7, id=a7] ...
        except (ValueError, OSError) as error:
            raise UserError(f"--data {data.source if data.source is not None else source}: {error}") from error
        for line in lines:
            print(f"[vlm-train] {line}", flush=True)
        self.load_report = report
        self.columns = None if "conversations" in str(report.format) else columns

        def first(rows, limit):
            return rows.select(range(min(limit, len(rows)))) if limit else rows

        return (first(train, settings.max_train_samples), first(validation, settings.max_eval_samples),
                first(test, settings.max_eval_samples))


def _data_report(splits: dict, spec: ChatSpec, processor, processor_without_budget, budget, preset: str,
                 load_report, checks: list) -> str:
    """Notebook 06's one-screen data report (:func:`vlm_helpers.data.report.your_data_report`), printed by rank 0
    before training: what was read and left out (by ``file:line``), the rows per split, answer lengths in tokens,
    the largest image in image tokens under the preset's budget, and the metric (``notebooks/06_your_data_your_model.ipynb``,
    section "Your data")."""
    from vlm_helpers.data.report import your_data_report

    used = {name: rows for name, rows in splits.items() if rows is not None}
    return str(your_data_report(used, task="captioning" if spec.task == "captioning" else "qa",
                                load_report=load_report, checks=checks, processor=processor,
                                processor_without_budget=processor_without_budget, budget=budget,
                                model=spec.model_id, preset=preset))


def _write_your_data_card(adapter: Path, settings: RunSettings, spec: ChatSpec, history: list[dict], *,
                          before: dict, after: dict, splits: dict, loaded: "YourDataLoader", checks: list,
                          run_seconds: float,
                          resumed_from_step: int | None = None, earlier_time_known: bool = True) -> Path:
    """The model card of a ``custom`` run, with the numbers it measured (notebook 06 writes the same card): its
    data section is :func:`vlm_helpers.model_card.data_section` of what was loaded (the file by its name, the
    layout, rows used and left out per split, image sizes, the metric).

    A resumed run's card describes the whole run: its steps (from the first), and, with ``resumed_from_step``,
    a ``resumed`` line saying where it continued and whether the training time counts every session."""
    from vlm_helpers import model_card, runtime
    from vlm_helpers.comparison import HEADLINE_METRICS

    data = settings.your_data
    section = model_card.data_section(loaded.load_report, splits,
                                      task="captioning" if spec.task == "captioning" else "qa",
                                      split_seed=data.split_seed, columns=loaded.columns, checks=checks,
                                      note=loaded.note)
    best = next((record for record in history if record.get("best")), None)
    metric = f"eval_{HEADLINE_METRICS[spec.task][0]}"
    return model_card.write_model_card(
        adapter, base_model=spec.model_id, task=spec.task,
        data=section,
        hyperparameters={"method": "QLoRA" if spec.quantize_4bit else "LoRA", "lora_r": spec.lora_r,
                         "lora_alpha": spec.lora_alpha, "lora_dropout": 0.0 if settings.tiny else spec.lora_dropout,
                         "learning_rate": settings.learning_rate, "warmup_steps": settings.warmup_steps,
                         "batch": f"{settings.batch_size} x {settings.grad_accum}",
                         "steps": history[-1]["step"] if history else 0, "eval_every": settings.eval_steps,
                         **(dict(spec.prompt_settings) or {"instruction": spec.instruction}),
                         **({} if resumed_from_step is None else {"resumed": (
                             f"at step {resumed_from_step} ({Path(settings.resume).name}); the training time "
                             + ("counts every session" if earlier_time_known else
                                "counts this session only: the checkpoint holds no record of the earlier ones"))})},
        metrics_before=before, metrics_after=after, preset=settings.preset,
        hardware=runtime.describe(runtime.detect_hardware(), settings.preset), run_seconds=run_seconds,
        tiny=settings.tiny, best_step=best["step"] if best else None, best_metric=metric,
        best_value=best[metric] if best else None)


def run_custom(settings: RunSettings, env: Distributed) -> dict:
    """Your data, the model you choose: notebook 06 from the command line, on one GPU or many.

    The notebook: ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint";
    the options: the README, section "Your data: the formats notebook 06 reads".
    """
    from vlm_helpers.model_choices import get_model_choice

    data = settings.your_data
    choice = get_model_choice(data.model)
    spec = ChatSpec(model_id=choice.model_id, tiny_name=choice.tiny_name, lora_targets=choice.lora_targets,
                    lora_r=16, lora_alpha=32, lora_dropout=0.05,
                    quantize_4bit=choice.method(settings.preset.name, data.method) == "qlora",
                    init_lora_weights=True, instruction=data.instruction, question_key="question",
                    answer_key="answers", id_key="id", task=data.task, tiny_modules_to_save=("lm_head",),
                    image_budget=choice.image_budget, results_model=data.results_run()[1], model_card=True,
                    make_collator=lambda processor: choice.collator(processor, task=data.task,
                                                                    instruction=data.instruction, seed=settings.seed),
                    prompt_settings=tuple(choice.prompt_settings(data.task, data.instruction).items()),
                    report_data=True)
    return _run_chat_recipe(settings, env, spec, YourDataLoader(),
                            {"question_key": "question", "answer_key": "answers", "id_key": "id"})


register(Recipe(
    name="custom",
    summary="your data (--data: JSONL/CSV + images, a dataset folder or Hub id, conversations), the model of "
            "--model (florence2, idefics2, llava-phi3, qwen2-vl, smolvlm), LoRA or QLoRA by preset, the best "
            "checkpoint by the task metric; notebook 06",
    datasets=("your-data",),
    full=Defaults(learning_rate=1e-4, epochs=2, warmup_steps=0.05, eval_steps=50),
    tiny=Defaults(learning_rate=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0.1, eval_steps=10,
                  max_new_tokens=16),
    run=run_custom,
    trainer="hf",
    results=("qa", "custom"),
))
