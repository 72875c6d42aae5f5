"""The shared run of the HF Trainer recipes (``idefics2-qlora-docvqa``, ``phi3-aircraft``, ``custom``): load and
add LoRA, validate the rows, train with the Trainer, evaluate by generation, save the adapter; a
:class:`ChatSpec` says what differs.

The recipes are tabled in the README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlm_helpers import adapters, evaluation, llava_phi3, loop, lora, results
from vlm_helpers.chat_collator import ChatVLMCollator
from vlm_helpers.checkpoints import check_finite_weights, latest_trainer_checkpoint
from vlm_helpers.evaluation import HEADLINE_METRICS
from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer
from vlm_helpers.launch import Distributed
from vlm_helpers.recipes.common import validated, write_weight_digest
from vlm_helpers.recipes.settings import Recipe, RunSettings
from vlm_helpers.tiny import resolve_checkpoint

__all__ = ["ChatSpec", "run_chat_recipe"]


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
    # the collator of the rows; None: ChatVLMCollator(instruction, question/answer/id keys). custom: the model
    # choice's own (model_choices.ModelChoice.collator: Florence-2's for florence2)
    make_collator: Callable[[Any], Any] | None = None
    prompt_settings: tuple[tuple[str, str], ...] = ()  # what the model card records as the prompt (custom)


def run_chat_recipe(settings: RunSettings, env: Distributed, spec: ChatSpec,
                    load_rows: Callable[[RunSettings], tuple[Any, Any]], validation_keys: dict, *, recipe: Recipe,
                    report_data: Callable | None = None, write_card: Callable | None = None) -> dict:
    """Load + LoRA (:mod:`vlm_helpers.lora`), :class:`~vlm_helpers.chat_collator.ChatVLMCollator` (or the spec's
    ``make_collator``), :func:`~vlm_helpers.hf_trainer.train_with_trainer`, then evaluation on rank 0 and the
    adapter: the HF Trainer recipes of the README, section "Scaling out: from one GPU to several machines".

    The HF Trainer does the distributed part itself under torchrun / accelerate launch
    (DDP, and FSDP/DeepSpeed from accelerate's config): the model is NOT wrapped here.
    A 4-bit model cannot move between devices, so each process loads it onto its own GPU.
    The Trainer writes ``checkpoint-<step>/`` after the last step (and every ``--checkpoint-every``
    steps); ``settings.resume`` continues one, and ``history.json`` then starts with the records
    the checkpoint holds. Rank 0 alone writes ``history.json``, ``results/`` and ``adapter/``. ``recipe`` names
    the run in ``results/``; ``custom`` passes ``report_data`` (the data report printed before training) and
    ``write_card`` (the model card written by the adapter).
    """

    preset = settings.preset  # its batch is the run's (--batch-size, the recipe's or the GPU preset's)
    quantize = llava_phi3.default_4bit(preset.name) if spec.quantize_4bit is None else spec.quantize_4bit
    with env.main_process_first():
        rows = load_rows(settings)  # (train, validation) or (train, validation, test)
        train_rows, eval_rows = rows[:2]
        test_rows = rows[2] if len(rows) > 2 else None
        checkpoint = resolve_checkpoint(spec.model_id, tiny=settings.tiny, tiny_name=spec.tiny_name)
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
    train_rows = validated(train_rows, "train", settings, env, checks, processor=processor, collator=collator,
                            **validation_keys)
    # splits answered by generation: their prompts are priced (a question too long for the model), not the answers
    eval_rows = validated(eval_rows, "validation", settings, env, checks, processor=processor, collator=collator,
                           price_answers=False, **validation_keys)
    if test_rows is not None:
        test_rows = validated(test_rows, "test", settings, env, checks, processor=processor, collator=collator,
                               price_answers=False, **validation_keys)
    if report_data is not None and env.is_main:
        budget = spec.image_budget(preset.name) if spec.image_budget is not None else None
        without = lora.load_chat_processor(checkpoint) if budget else None
        env.log(report_data({"train": train_rows, "validation": eval_rows, "test": test_rows}, spec, processor,
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
        dtype=preset.dtype, gradient_checkpointing=preset.gradient_checkpointing, device=env.device,
        learning_rate=settings.learning_rate, epochs=settings.epochs,
        max_steps=settings.max_steps or -1, warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        report_to=list(settings.report_to), logging_steps=settings.logging_steps,
        save_steps=settings.checkpoint_every, save_total_limit=settings.keep_checkpoints, save_at_end=True,
        seed=settings.seed,
        dataloader_num_workers=settings.num_workers, disable_tqdm=not settings.progress)
    _, model_label = recipe.results_run(settings.dataset)
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
    if write_card is not None:  # the card's "before": the untrained adapter (LoRA's B starts at 0) on the test rows
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
        if write_card is not None:
            card = write_card(adapter, settings, spec, history, before=baseline[1], after=scores,
                                         splits={"train": train_rows, "validation": eval_rows, "test": final_rows},
                                         loaded=load_rows, checks=checks,
                                         run_seconds=run_seconds if run_seconds is not None
                                         else time.perf_counter() - started,
                                         resumed_from_step=trainer.resumed_from_step,
                                         earlier_time_known=run_seconds is not None)
            summary["model_card"] = str(card)
    env.barrier()
    return summary
