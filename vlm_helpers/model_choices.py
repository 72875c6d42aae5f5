"""Which model to fine-tune on your data: each supported choice with its LoRA targets, batches and method.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets". Every
choice is a chat vision-language model that :class:`vlm_helpers.chat_collator.ChatVLMCollator`,
:func:`vlm_helpers.lora.add_lora` and the adapter helpers are tested with (``tests/test_other_families.py``
and the series' own notebooks 03 and 04). What differs between them is recorded here, once:

- the LoRA ``target_modules``: every projection of the language model (attention and MLP), never the
  vision encoder; the pattern depends on what the checkpoint calls its language model (``text_model`` in
  Idefics2 and SmolVLM, ``language_model`` in LLaVA and Qwen2-VL);
- the batches per GPU preset (``runtime.BATCHING``, under the choice's ``recipe`` name);
- LoRA or QLoRA: 4-bit storage of the frozen weights where 16-bit weights would not fit the preset's GPU
  with room for activations (``qlora_on``; Idefics2's tiny twin takes the 4-bit path too, as in notebook 03,
  so tiny mode runs QLoRA with it and LoRA with LLaVA-Phi-3); ``METHOD`` in the notebook overrides it;
- whether a tiny twin exists for tiny mode (``tiny_name``: a :mod:`vlm_helpers.tiny` builder).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS, LLAVA_PHI3_MODEL_ID
from vlm_helpers.lora import IDEFICS2_LORA_TARGETS, IDEFICS2_MODEL_ID
from vlm_helpers.runtime import BATCHING

#: Every projection of a language model called ``language_model`` (LLaVA-style, Qwen2-VL, Gemma 3).
LANGUAGE_MODEL_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

METHODS = ("lora", "qlora")


@dataclass(frozen=True)
class ModelChoice:
    """One model notebook 06 can fine-tune, and what it needs.

    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """

    key: str  # the notebook's MODEL value
    model_id: str  # the Hub checkpoint (full mode)
    parameters_b: float  # billions of parameters, for the memory estimate printed by describe()
    lora_targets: str  # PEFT target_modules (a regular expression over module names)
    recipe: str  # the runtime.BATCHING entry with its batches per preset
    qlora_on: tuple[str, ...]  # presets whose GPU needs 4-bit storage of the frozen weights
    tiny_name: str | None  # the vlm_helpers.tiny builder of its tiny twin; None: full mode only
    image_splitting: bool | None = None  # Idefics2-style splitting: None keeps the processor's setting
    note: str = ""

    def method(self, preset_name: str, forced: str | None = None) -> str:
        """``"qlora"`` or ``"lora"`` for this preset, unless ``forced`` (the notebook's ``METHOD``).

        Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
        """
        if forced is not None:
            if forced not in METHODS:
                raise ValueError(f"METHOD must be one of {METHODS} or None, got {forced!r}")
            return forced
        return "qlora" if preset_name in self.qlora_on else "lora"

    def batches(self, preset_name: str) -> tuple[int, int]:
        """(per-device batch, accumulation steps) for a preset ("t4", "a100", "cpu", "tiny").

        Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
        """
        return BATCHING[self.recipe][preset_name]

    def describe(self, preset_name: str, forced: str | None = None) -> str:
        """One line: the checkpoint, its size, the method and batches chosen for this preset.

        Printed in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
        """
        method = self.method(preset_name, forced)
        weights_gb = self.parameters_b * (0.55 if method == "qlora" else 2.0)  # NF4 ~4.4 bits incl. constants
        batch, accum = self.batches(preset_name)
        return (f"{self.model_id}: {self.parameters_b:g} B parameters, {method.upper()} "
                f"(frozen weights ~{weights_gb:.1f} GB), batch {batch} x accumulation {accum} on preset "
                f"{preset_name}" + (f"; {self.note}" if self.note else ""))


MODEL_CHOICES: dict[str, ModelChoice] = {choice.key: choice for choice in (
    ModelChoice("idefics2", IDEFICS2_MODEL_ID, 8.4, IDEFICS2_LORA_TARGETS, "idefics2-qlora-docvqa",
                qlora_on=("t4", "a100", "tiny"), tiny_name="idefics2", image_splitting=False,
                note="notebook 03's model; image splitting off (64 image tokens per image)"),
    ModelChoice("llava-phi3", LLAVA_PHI3_MODEL_ID, 4.1, LLAVA_PHI3_LORA_TARGETS, "phi3-aircraft",
                qlora_on=("t4",), tiny_name="llava-phi3", note="notebook 04's model"),
    ModelChoice("qwen2-vl", "Qwen/Qwen2-VL-2B-Instruct", 2.2, LANGUAGE_MODEL_LORA_TARGETS, "qwen2-vl-lora",
                qlora_on=(), tiny_name=None,
                note="the vision encoder is model.visual; images of any size become variable token counts"),
    ModelChoice("smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct", 0.26, IDEFICS2_LORA_TARGETS, "smolvlm-lora",
                qlora_on=(), tiny_name=None,
                note="the language model is text_model, as in Idefics2; images are split into tiles"),
)}


def get_model_choice(key: str, *, tiny: bool = False) -> ModelChoice:
    """The :class:`ModelChoice` for the notebook's ``MODEL``; in tiny mode only choices with a tiny twin.

    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    if key not in MODEL_CHOICES:
        raise ValueError(f"MODEL = {key!r} is not a supported choice; choose one of {sorted(MODEL_CHOICES)}")
    choice = MODEL_CHOICES[key]
    if tiny and choice.tiny_name is None:
        with_twin = sorted(k for k, c in MODEL_CHOICES.items() if c.tiny_name)
        raise ValueError(f"MODEL = {key!r} has no tiny twin for tiny mode; in tiny mode choose one of {with_twin} "
                         f"(full mode on a GPU runs {choice.model_id})")
    return choice
