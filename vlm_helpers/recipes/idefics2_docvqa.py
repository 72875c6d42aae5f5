"""``vlm-train --recipe idefics2-qlora-docvqa``: notebook 03's QLoRA fine-tune of Idefics2-8B on DocVQA (or The
Cauldron), with the HF Trainer.

The notebook's training: ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face
Trainer"; the recipe: the README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

from vlm_helpers.data.sources import docvqa_dataset, docvqa_style_train_rows
from vlm_helpers.launch import Distributed
from vlm_helpers.lora import IDEFICS2_MODEL_ID
from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS
from vlm_helpers.recipes.chat import ChatSpec, run_chat_recipe
from vlm_helpers.recipes.settings import Defaults, Recipe, RunSettings

__all__ = ["RECIPE", "run_idefics2_qlora_docvqa"]


def _docvqa_chat_rows(settings: RunSettings):
    return (docvqa_style_train_rows(settings.dataset, subsets=settings.cauldron_subsets, tiny=settings.tiny,
                                    max_samples=settings.max_train_samples, seed=settings.seed),
            docvqa_dataset("validation", tiny=settings.tiny, max_samples=settings.max_eval_samples, seed=settings.seed))


def run_idefics2_qlora_docvqa(settings: RunSettings, env: Distributed) -> dict:
    """Idefics2-8B + QLoRA on DocVQA (or The Cauldron) with the HF Trainer (notebook 03's pieces).

    The notebook's training: ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging
    Face Trainer"; the recipe: the README, section "Scaling out: from one GPU to several machines".
    """
    spec = ChatSpec(model_id=IDEFICS2_MODEL_ID, tiny_name="idefics2", lora_targets=IDEFICS2_LORA_TARGETS,
                    lora_r=8, lora_alpha=8, lora_dropout=0.1, quantize_4bit=True, init_lora_weights="gaussian",
                    instruction="Answer briefly.", question_key="question", answer_key="answers",
                    id_key="questionId", task="docvqa",
                    # as notebook 03: the tiny model also trains lm_head; a T4 halves the image size
                    tiny_modules_to_save=("lm_head",), image_longest_edge=(("t4", 490),),
                    image_splitting_by_preset=True)
    return run_chat_recipe(settings, env, spec, _docvqa_chat_rows, {}, recipe=RECIPE)


RECIPE = Recipe(
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
    notebook="03_idefics2_qlora_docvqa.ipynb",
    steps=("resolve_checkpoint", "load_chat_vlm", "clean_dataset", "add_lora", "make_training_arguments",
           "train_with_trainer", "evaluate", "write_run", "save_adapter"),
)
