"""``vlm-train --recipe phi3-aircraft``: notebook 04's LoRA fine-tune of LLaVA-Phi-3-mini captioning FGVC-Aircraft
photos, with the HF Trainer.

The notebook's training: ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Training with the Hugging
Face Trainer"; the recipe: the README, section "Scaling out: from one GPU to several machines".
"""

from __future__ import annotations

from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT, caption_target
from vlm_helpers.data.sources import aircraft_dataset
from vlm_helpers.launch import Distributed
from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS, LLAVA_PHI3_MODEL_ID
from vlm_helpers.recipes.chat import ChatSpec, run_chat_recipe
from vlm_helpers.recipes.settings import Defaults, Recipe, RunSettings

__all__ = ["RECIPE", "phi3_aircraft_spec", "run_phi3_aircraft"]


def _aircraft_rows(settings: RunSettings):
    """Train / validation splits of FGVC-Aircraft (Boeing 707/737/777/787) with a ``caption`` column."""
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
    return run_chat_recipe(settings, env, phi3_aircraft_spec(), _aircraft_rows,
                           {"answer_key": "caption", "answers_may_be_str": True, "id_key": "id"}, recipe=RECIPE)


RECIPE = Recipe(
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
    notebook="04_phi3_aircraft_captioning.ipynb",
    steps=("resolve_checkpoint", "load_chat_vlm", "clean_dataset", "add_lora", "make_training_arguments",
           "train_with_trainer", "evaluate", "write_run", "save_adapter"),
)
