"""What a recipe is and what a run is given: :class:`Recipe`, its :class:`Defaults`, the resolved
:class:`RunSettings`, ``--recipe custom``'s :class:`YourData`, and :class:`UserError` (a problem the user can fix).

Plain values only, so ``--help`` and ``run_settings.json`` need no heavy import. The recipes are tabled in the
README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vlm_helpers.launch import Distributed
    from vlm_helpers.runtime import Preset

__all__ = ["Defaults", "Recipe", "RunSettings", "UserError", "YourData"]


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
    # the notebook whose flow it runs, and the public helpers both call, in the order both call them
    # (tests/test_recipe_flows.py reads the notebook's cells and the recipe's code and checks it)
    notebook: str = ""
    steps: tuple[str, ...] = ()

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

    def results_run(self) -> tuple[str, str]:
        """``(task, model)`` of the run's results: e.g. ``("qa", "custom-qwen2-vl")``."""
        return self.task, f"custom-{self.model}"


@dataclass
class RunSettings:
    """Every option of one run, resolved (see :func:`vlm_helpers.cli.resolve_settings`).

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
