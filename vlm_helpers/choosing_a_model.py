"""Choosing a model for your data: what each of notebook 06's choices costs and what it is known to score.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets", which prints
:func:`choosing_table`; the README, section "Choosing a model", holds the same table (``tests/test_choosing.py``
checks they agree). Per choice (:data:`vlm_helpers.model_choices.MODEL_CHOICES`): parameters, license and
languages as the model card states them, the image budget, the T4 and A100 plans (method, batch, dtype), the peak
GPU memory of one training step **simulated** by ``bench/gpu_memory.py`` (fake tensors on a CPU; no GPU was
used) and the training time per 1,000 rows **estimated** from its counted FLOPs, and a published DocVQA score
(ANLS) with its source and setting. Scores are not comparable one to one: splits (val or test) and settings
(zero-shot, or after fine-tuning on DocVQA) differ, and each row says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_helpers.model_choices import MODEL_CHOICES
from vlm_helpers.runtime import BATCHING, FP16_OVERFLOWS

__all__ = ["EVIDENCE", "Evidence", "choosing_table", "plan_text"]


@dataclass(frozen=True)
class Evidence:
    """What is known about one choice, with where it comes from. Tabled in
    ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets"."""

    license: str
    languages: str
    image: str  # the image budget and what a 1700x2200 page costs under the T4 preset
    docvqa: str  # the published score and its setting, or why there is none
    source: str  # the page showing it
    # preset -> (peak GiB, simulated: the larger of a training step and an evaluation batch's generation; minutes per
    # 1,000 training rows and epoch, estimated; both from ``python bench/gpu_memory.py --notebook 06``)
    simulated: dict[str, tuple[float, float]]


EVIDENCE: dict[str, Evidence] = {
    "florence2": Evidence(
        "MIT", "English", "none needed: 768 px, 577 tokens",
        "none published for base-ft (Florence-2-large, 0.77 B, fine-tuned on DocVQA: 60.1 val)",
        "https://huggingface.co/blog/docmatix", {"t4": (1.6, 0.5), "a100": (4.0, 0.1)}),
    "idefics2": Evidence(
        "Apache-2.0", "English", "image splitting off: 64 tokens a page",
        "74.0 test with image splitting, 67.3 without (DocVQA's training set is in its instruction data)",
        "https://huggingface.co/blog/idefics2", {"t4": (7.4, 9), "a100": (9.1, 2)}),
    "llava-phi3": Evidence(
        "none declared on the card (its parts: MIT)", "English", "none needed: 336 px, 576 tokens", "none published",
        "https://huggingface.co/xtuner/llava-phi-3-mini-hf", {"t4": (3.6, 13), "a100": (11.6, 3)}),
    "qwen2-vl": Evidence(
        "Apache-2.0", "English (reads multilingual text in images)", "max_pixels 1280 x 28 x 28: 1,240 tokens a page",
        "90.1 test, zero-shot", "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct",
        {"t4": (6.6, 20), "a100": (22.9, 10)}),
    "qwen2.5-vl-3b": Evidence(
        "Qwen Research License (non-commercial)", "English", "max_pixels 1280 x 28 x 28: 1,240 tokens a page",
        "93.9 test, zero-shot", "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct",
        {"t4": (9.7, 28), "a100": (16.9, 13)}),
    "smolvlm": Evidence(
        "Apache-2.0", "English", "longest edge 2048, 512-px tiles: 1,088 tokens a page", "58.3 val, zero-shot",
        "https://huggingface.co/HuggingFaceTB/SmolVLM-256M-Instruct", {"t4": (3.8, 4), "a100": (13.8, 1)}),
    "smolvlm2-2.2b": Evidence(
        "Apache-2.0", "English", "longest edge 1536, 384-px tiles: 1,377 tokens a page", "79.98 val, zero-shot",
        "https://huggingface.co/HuggingFaceTB/SmolVLM2-2.2B-Instruct", {"t4": (5.5, 24), "a100": (9.4, 5)}),
    "gemma3-4b": Evidence(
        "Gemma Terms of Use (gated)", "over 140 languages", "none needed: 896 px, 256 tokens",
        "75.8 (instruction-tuned, split not stated; pre-trained 4B: 72.8 val)",
        "https://huggingface.co/google/gemma-3-4b-it", {"t4": (5.6, 85), "a100": (10.2, 2)}),
    "paligemma2-3b": Evidence(
        "Gemma Terms of Use (gated)", "multilingual", "none needed: 448 px, 1,024 tokens",
        "73.6 val after fine-tuning on DocVQA (no zero-shot score: a pre-trained checkpoint)",
        "https://arxiv.org/abs/2412.03555", {"t4": (9.5, 15), "a100": (20.5, 3)}),
}


def plan_text(key: str, preset_name: str) -> str:
    """The plan of one choice on one preset, e.g. ``QLoRA, 1 x 16, fp32: 5.6 GiB, 1.4 h``. Tabled in
    ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets"."""
    choice = MODEL_CHOICES[key]
    batch, accumulation = BATCHING[choice.recipe][preset_name]
    dtype = {"t4": "fp32" if choice.recipe in FP16_OVERFLOWS else "fp16", "a100": "bf16"}.get(preset_name, "")
    peak, minutes = EVIDENCE[key].simulated[preset_name]
    time = f"{minutes / 60:.1f} h" if minutes >= 60 else "under 1 min" if minutes < 1 else f"{minutes:g} min"
    return (f"{choice.method(preset_name).upper().replace('QLORA', 'QLoRA').replace('LORA', 'LoRA')}, "
            f"{batch} x {accumulation}, {dtype}: {peak:g} GiB, {time}")


def choosing_table() -> str:
    """The table of notebook 06's choices, as Markdown: printed in ``notebooks/06_your_data_your_model.ipynb``,
    section "The model and its LoRA targets", and kept in the README, section "Choosing a model"."""
    lines = ["| `MODEL` | parameters | license | languages | image budget | T4 plan: peak (simulated), time per "
             "1,000 rows (estimated) | A100 plan | DocVQA (ANLS), published | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, choice in MODEL_CHOICES.items():
        evidence = EVIDENCE[key]
        lines.append(f"| `{key}` | {choice.parameters_b:g} B | {evidence.license} | {evidence.languages} | "
                     f"{evidence.image} | {plan_text(key, 't4')} | {plan_text(key, 'a100')} | "
                     f"{evidence.docvqa} | {evidence.source} |")
    return "\n".join(lines)
