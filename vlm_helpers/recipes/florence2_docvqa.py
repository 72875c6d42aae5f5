"""``vlm-train --recipe florence2-docvqa``: notebook 02's full fine-tune of Florence-2 on DocVQA (or The
Cauldron), on the series' own loop, under torchrun with DDP or FSDP2.

The notebook's steps are ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; the command line is in the
README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

from typing import Any

from vlm_helpers import checkpoints, distributed, evaluation, florence2, freezing, loop, results
from vlm_helpers.data.sources import docvqa_dataset, docvqa_style_train_rows
from vlm_helpers.launch import Distributed
from vlm_helpers.recipes.common import validated, write_weight_digest
from vlm_helpers.recipes.settings import Defaults, Recipe, RunSettings
from vlm_helpers.tiny import resolve_checkpoint
from vlm_helpers.tracking import Tracker

__all__ = ["RECIPE", "run_florence2_docvqa"]


def _train_log_line(record: dict, total: int | None) -> str:
    loss = record.get("loss")
    parts = [f"step {record['step']}" + (f"/{total}" if total else ""),
             f"loss {loss:.4f}" if isinstance(loss, float) else "loss -", f"lr {record['lr']:.3g}"]
    if record.get("skipped"):
        parts.append(f"SKIPPED: {record['skipped']}")
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval_") and isinstance(v, float)]
    return " | ".join(parts)


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
    preset = settings.preset
    # Downloads and cache writes once per machine; the other ranks then read the cache.
    with env.main_process_first():
        train_rows = docvqa_style_train_rows(settings.dataset, subsets=settings.cauldron_subsets, tiny=settings.tiny,
                                             max_samples=settings.max_train_samples, seed=settings.seed)
        eval_rows = docvqa_dataset("validation", tiny=settings.tiny, max_samples=settings.max_eval_samples,
                                   seed=settings.seed)
        checkpoint = resolve_checkpoint(florence2.FLORENCE2_MODEL_ID, tiny=settings.tiny, tiny_name="florence2")
        # fp32 master weights, as notebook 02 (the 1e-6 learning rate is below bf16/fp16 resolution); autocast
        # computes in the preset's dtype. Florence-2-base-ft's config says float16: without dtype= that would win
        model, processor = florence2.load_florence2(checkpoint, device=env.device, dtype="float32",
                                                 attn_implementation=preset.attn_implementation)
    # as notebook 02: the DaViT vision tower is frozen right after loading
    before = freezing.count_parameters(model)
    freezing.freeze(*florence2.florence2_vision_modules(model))
    env.log(f"model {checkpoint}: before freezing {before}; after freezing the vision tower "
            f"{freezing.count_parameters(model)}")
    collator = florence2.Florence2Collator(processor, answer_choice="random", seed=settings.seed)
    # checked against the processor too: text holding its special or task tokens is refused here, and
    # training answers too long for the collator (max_answer_tokens) before the first step
    train_rows = validated(train_rows, "train", settings, env, processor=processor, collator=collator)
    eval_rows = validated(eval_rows, "validation", settings, env, processor=processor)

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
    _, model_label = RECIPE.results_run(settings.dataset)
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


RECIPE = Recipe(
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
    notebook="02_florence2_docvqa.ipynb",
    steps=("resolve_checkpoint", "load_florence2", "freeze", "Florence2Collator", "clean_dataset", "TrainConfig",
           "train", "evaluate", "write_run"),
)
