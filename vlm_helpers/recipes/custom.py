"""``vlm-train --recipe custom``: notebook 06 from the command line: your data, the model you choose, LoRA or
QLoRA by preset, the best checkpoint by the task metric, a model card with the measured numbers.

The notebook: ``notebooks/06_your_data_your_model.ipynb``, section "Training: keep the best checkpoint"; the
options: the README, section "Your data: the formats notebook 06 reads".
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from vlm_helpers import model_card, runtime
from vlm_helpers.data.errors import DataValidationError
from vlm_helpers.data.formats import load_your_data
from vlm_helpers.data.splits import train_validation_test
from vlm_helpers.data.report import your_data_report
from vlm_helpers.evaluation import HEADLINE_METRICS
from vlm_helpers.launch import Distributed
from vlm_helpers.model_choices import MODEL_CHOICES, get_model_choice
from vlm_helpers.recipes.chat import ChatSpec, run_chat_recipe
from vlm_helpers.recipes.options import columns as your_data_columns
from vlm_helpers.recipes.settings import Defaults, Recipe, RunSettings, UserError
from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

__all__ = ["RECIPE", "YourDataLoader", "run_custom"]


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
        data = settings.your_data
        source, columns = data.source, None
        if source is None:  # tiny mode (resolve_settings refuses a full-mode run without --data)
            synthetic = write_synthetic_image_folder(tempfile.mkdtemp(prefix="vlm-train-custom-"), rows=200,
                                                     task=data.task, seed=settings.seed)
            source, columns = synthetic.jsonl, synthetic.columns
            self.note = "tiny mode without --data: a synthetic image folder written by vlm-train"
        elif data.format != "conversations":
            columns = your_data_columns(data)
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
    data = settings.your_data
    choice = get_model_choice(data.model)
    spec = ChatSpec(model_id=choice.model_id, tiny_name=choice.tiny_name, lora_targets=choice.lora_targets,
                    lora_r=16, lora_alpha=32, lora_dropout=0.05,
                    quantize_4bit=choice.method(settings.preset.name, data.method) == "qlora",
                    init_lora_weights=True, instruction=data.instruction, question_key="question",
                    answer_key="answers", id_key="id", task=data.task, tiny_modules_to_save=("lm_head",),
                    image_budget=choice.image_budget, results_model=data.results_run()[1],
                    make_collator=lambda processor: choice.collator(processor, task=data.task,
                                                                    instruction=data.instruction, seed=settings.seed),
                    prompt_settings=tuple(choice.prompt_settings(data.task, data.instruction).items()))
    return run_chat_recipe(settings, env, spec, YourDataLoader(),
                           {"question_key": "question", "answer_key": "answers", "id_key": "id"}, recipe=RECIPE,
                           report_data=_data_report, write_card=_write_your_data_card)


RECIPE = Recipe(
    name="custom",
    summary="your data (--data: JSONL/CSV + images, a dataset folder or Hub id, conversations), the model of "
            f"--model ({', '.join(MODEL_CHOICES)}), LoRA or QLoRA by preset, the best "
            "checkpoint by the task metric; notebook 06",
    datasets=("your-data",),
    full=Defaults(learning_rate=1e-4, epochs=2, warmup_steps=0.05, eval_steps=50),
    tiny=Defaults(learning_rate=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0.1, eval_steps=10,
                  max_new_tokens=16),
    run=run_custom,
    trainer="hf",
    results=("qa", "custom"),
    notebook="06_your_data_your_model.ipynb",
    steps=("load_your_data", "train_validation_test", "resolve_checkpoint", "load_chat_vlm", "clean_dataset",
           "your_data_report", "add_lora", "make_training_arguments", "train_with_trainer", "evaluate",
           "save_adapter", "write_model_card"),
)
