"""Which model to fine-tune on your data: each supported choice with its LoRA targets, batches and method.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets". The
choices are the series' three models (Florence-2 of notebook 02, Idefics2 of 03, LLaVA-Phi-3 of 04) and
two newer small chat models that :class:`vlm_helpers.chat_collator.ChatVLMCollator`,
:func:`vlm_helpers.lora.add_lora` and the adapter helpers are tested with (``tests/test_other_families.py``).
What differs between them is recorded here, once:

- the ``kind``: ``"chat"`` models (decoder-only, a chat template) are batched by
  :class:`~vlm_helpers.chat_collator.ChatVLMCollator` with the notebook's ``INSTRUCTION``; Florence-2
  (``"florence2"``, an encoder-decoder without a chat template) by
  :class:`~vlm_helpers.florence2.Florence2Collator`, which puts a task prompt before the question
  (:data:`FLORENCE2_TASK_PROMPTS`: notebook 02's ``<DocVQA>`` for answers, none for captions);
  :meth:`ModelChoice.collator` makes the right one;
- the LoRA ``target_modules``: every projection of the language model (attention and MLP), never the
  vision encoder; the pattern depends on what the checkpoint calls its language model (``text_model`` in
  Idefics2 and SmolVLM, ``language_model`` in LLaVA, Qwen2-VL and Florence-2, whose BART encoder and
  decoder name their projections ``out_proj``, ``fc1`` and ``fc2``);
- the batches per GPU preset (``runtime.BATCHING``, under the choice's ``recipe`` name);
- LoRA or QLoRA: 4-bit storage of the frozen weights where 16-bit weights would not fit the preset's GPU
  with room for activations (``qlora_on``; Idefics2's tiny twin takes the 4-bit path too, as in notebook 03,
  so tiny mode runs QLoRA with it and LoRA with the others); ``METHOD`` in the notebook overrides it;
- the image budget per preset (``image_budgets``): the processor settings that bound how many image tokens a
  page costs, applied by :func:`vlm_helpers.lora.load_chat_processor`. Qwen2-VL's published configuration lets a
  1700x2200 scanned page become 4,819 image tokens (19,276 vision patches): a training step at the T4 batch
  then needs 13.1 GiB, at the edge of the card, and six times the FLOPs, and a 12-megapixel phone photo three
  times the tokens (simulated by ``bench/gpu_memory.py``). Under the T4 preset its ``max_pixels`` is Qwen's own
  suggestion, 1280 x 28 x 28 (a page costs 1,240 tokens; 6.6 GiB), under the A100 preset twice that. Idefics2
  and SmolVLM take a resize size and image splitting; Florence-2 (768 px, 577 tokens) and LLaVA-Phi-3 (336 px,
  576 tokens) take fixed-size images and need none. Tiny twins keep their own small settings, except Qwen2-VL's,
  which keeps the published processor configuration and so takes the T4 budget in tiny mode too (on a user's
  photos, without it, one training step of the twin on a CPU takes a minute instead of a second). The peaks per
  preset: the README, section "GPU memory and run time, simulated". :func:`image_tokens` prices a page with
  the real processor;
- the tiny twin of tiny mode (``tiny_name``: a :mod:`vlm_helpers.tiny` builder); every choice has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlm_helpers.chat_collator import ChatVLMCollator
from vlm_helpers.florence2 import DOCVQA_TASK_PROMPT, FLORENCE2_MODEL_ID, Florence2Collator
from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS, LLAVA_PHI3_MODEL_ID
from vlm_helpers.lora import IDEFICS2_MODEL_ID
from vlm_helpers.prefix_collator import PALIGEMMA_TASK_PREFIXES, PrefixLMCollator
from vlm_helpers.lora_targets import FLORENCE2_LORA_TARGETS, IDEFICS2_LORA_TARGETS, LANGUAGE_MODEL_LORA_TARGETS
from vlm_helpers.runtime import BATCHING

#: What Florence-2 reads before the question, by task: notebook 02's ``<DocVQA>`` for short answers; for
#: captions nothing, so the encoder reads your prompt alone (the question column, or ``Columns.prompt``).
FLORENCE2_TASK_PROMPTS = {"qa": DOCVQA_TASK_PROMPT, "captioning": ""}

#: The longest Florence-2 answer, in tokens with ``<s>`` and ``</s>``: its decoder's 1,024 positions.
FLORENCE2_MAX_ANSWER_TOKENS = 1024

#: Qwen2-VL's ``max_pixels`` under the T4 preset: Qwen's model card suggests 1280 x 28 x 28, at most 1,280 image
#: tokens per image (each 28x28 block of pixels is one token after the 2x2 merge of 14-px patches). A 1700x2200
#: page costs 1,240; a training step at the T4 batch peaks at 6.6 GiB (simulated by ``bench/gpu_memory.py``;
#: 13.1 GiB and 6x the FLOPs without the budget, at 4,819 tokens; most of it the logits of the long sequence).
QWEN2_VL_T4_MAX_PIXELS = 1280 * 28 * 28

#: ... and under the A100 preset (batch 4): twice the pixels, 2,508 tokens a page, 22.9 GiB simulated. The next
#: step, 3840 x 28 x 28, peaks at 32.0 GiB (too much for the 32 GB cards of the preset), and the published
#: 12,845,056 at 39.5 GiB: an A100 40 GB runs out of memory (``python bench/gpu_memory.py --notebook 06 --preset a100
#: --case qwen2-vl`` with ``--max-pixels 3010560``, or with ``--no-image-budget``).
QWEN2_VL_A100_MAX_PIXELS = 2560 * 28 * 28

#: SmolVLM: a page is resized to this longest side, then cut into 512-px tiles (4 x 4 + the whole page, 64 tokens
#: each: 1,088 tokens); its training step peaks at 3.6 GiB on the T4 preset (simulated), so the budget keeps the
#: (reconstructed) published size and only makes the bound explicit.
SMOLVLM_LONGEST_EDGE = 2048

#: SmolVLM2-2.2B: a page is resized to this longest side, then cut into 384-px tiles (4 x 4 + the whole page, 81
#: tokens each: 1,377 tokens), the published size; the budget makes the bound explicit.
SMOLVLM2_LONGEST_EDGE = 1536

METHODS = ("lora", "qlora")
KINDS = ("chat", "florence2", "prefix-lm")


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
    tiny_name: str  # the vlm_helpers.tiny builder of its tiny twin (tiny mode)
    # preset -> processor settings bounding the image tokens (lora.load_chat_processor's image_budget); a preset
    # not listed (and every fixed-size model) keeps the checkpoint's own settings
    image_budgets: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    note: str = ""
    # "chat" (ChatVLMCollator), "florence2" (Florence2Collator) or "prefix-lm" (PrefixLMCollator, PaliGemma)
    kind: str = "chat"
    gated: bool = False  # the Hub repository needs its license accepted and a token (Gemma, PaliGemma)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def collator(self, processor, *, task: str, instruction: str, seed: int):
        """The collator for canonical rows (``id``, ``image``, ``question``, ``answers``) of ``task``.

        Chat models: :class:`~vlm_helpers.chat_collator.ChatVLMCollator` with ``instruction`` before the
        question (notebook 03's layout). Florence-2: :class:`~vlm_helpers.florence2.Florence2Collator` with
        the task prompt of :data:`FLORENCE2_TASK_PROMPTS` instead of an instruction (Florence-2 was
        pre-trained on task prompts, not on instructions), one of the acceptable answers drawn per row as
        the chat collator does. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Before
        fine-tuning".
        """
        if task not in FLORENCE2_TASK_PROMPTS:
            raise ValueError(f"TASK must be one of {sorted(FLORENCE2_TASK_PROMPTS)}, got {task!r}")
        if self.kind == "prefix-lm":
            return PrefixLMCollator(processor, task_prefix=PALIGEMMA_TASK_PREFIXES[task], answer_choice="random",
                                    seed=seed, question_key="question", answer_key="answers", id_key="id")
        if self.kind == "florence2":
            return Florence2Collator(processor, task_prompt=FLORENCE2_TASK_PROMPTS[task], answer_choice="random",
                                     seed=seed, id_key="id", max_answer_tokens=FLORENCE2_MAX_ANSWER_TOKENS)
        return ChatVLMCollator(processor, instruction=instruction, seed=seed, question_key="question",
                               answer_key="answers", id_key="id")

    def prompt_settings(self, task: str, instruction: str) -> dict[str, str]:
        """What the model reads before each question, for the model card: the instruction (chat models) or
        Florence-2's task prompt. Written in ``notebooks/06_your_data_your_model.ipynb``, section "Share the
        result"."""
        if self.kind == "florence2":
            return {"task_prompt": FLORENCE2_TASK_PROMPTS[task]}
        if self.kind == "prefix-lm":
            return {"task_prefix": PALIGEMMA_TASK_PREFIXES[task]}
        return {"instruction": instruction}

    def method(self, preset_name: str, forced: str | None = None) -> str:
        """``"qlora"`` or ``"lora"`` for this preset, unless ``forced`` (the notebook's ``METHOD``).

        Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
        """
        if forced is not None:
            if forced not in METHODS:
                raise ValueError(f"METHOD must be one of {METHODS} or None, got {forced!r}")
            return forced
        return "qlora" if preset_name in self.qlora_on else "lora"

    def image_budget(self, preset_name: str) -> dict[str, Any]:
        """The processor settings that bound a page's image tokens on this preset (empty: the checkpoint's own).

        Passed as ``image_budget`` to :func:`vlm_helpers.lora.load_chat_vlm`. Taught in
        ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
        """
        return dict(self.image_budgets.get(preset_name, {}))

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
    ModelChoice("florence2", FLORENCE2_MODEL_ID, 0.23, FLORENCE2_LORA_TARGETS, "florence2-docvqa",
                qlora_on=(), tiny_name="florence2", kind="florence2",
                note="notebook 02's model, with LoRA here; an encoder-decoder: a task prompt (<DocVQA> for qa) "
                     "replaces INSTRUCTION"),
    ModelChoice("idefics2", IDEFICS2_MODEL_ID, 8.4, IDEFICS2_LORA_TARGETS, "idefics2-qlora-docvqa",
                qlora_on=("t4", "a100", "tiny"), tiny_name="idefics2",
                image_budgets={"t4": {"do_image_splitting": False}, "cpu": {"do_image_splitting": False},
                               "a100": {"do_image_splitting": False}, "tiny": {"do_image_splitting": False}},
                note="notebook 03's model; image splitting off (64 image tokens per image)"),
    ModelChoice("llava-phi3", LLAVA_PHI3_MODEL_ID, 4.1, LLAVA_PHI3_LORA_TARGETS, "phi3-aircraft",
                qlora_on=("t4",), tiny_name="llava-phi3", note="notebook 04's model"),
    ModelChoice("qwen2-vl", "Qwen/Qwen2-VL-2B-Instruct", 2.2, LANGUAGE_MODEL_LORA_TARGETS, "qwen2-vl-lora",
                qlora_on=(), tiny_name="qwen2-vl",
                image_budgets={"t4": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS}, "cpu": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS},
                               "a100": {"max_pixels": QWEN2_VL_A100_MAX_PIXELS},
                               # the twin keeps the published processor settings, so tiny mode on your photos
                               # needs the T4 budget too: a 4032x3024 photo is 15,552 tokens without it
                               "tiny": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS}},
                note="the vision encoder is model.visual; images of any size become variable token counts, "
                     "bounded by max_pixels"),
    ModelChoice("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", 3.75, LANGUAGE_MODEL_LORA_TARGETS,
                "qwen2.5-vl-3b-lora", qlora_on=(), tiny_name="qwen2.5-vl",
                image_budgets={"t4": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS}, "cpu": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS},
                               "a100": {"max_pixels": QWEN2_VL_A100_MAX_PIXELS},
                               "tiny": {"max_pixels": QWEN2_VL_T4_MAX_PIXELS}},
                note="Qwen2-VL's successor: window attention in the vision encoder (model.visual), the same "
                     "image-token rule, bounded by max_pixels"),
    ModelChoice("smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct", 0.26, IDEFICS2_LORA_TARGETS, "smolvlm-lora",
                qlora_on=(), tiny_name="smolvlm",
                image_budgets={preset: {"longest_edge": SMOLVLM_LONGEST_EDGE, "do_image_splitting": True}
                               for preset in ("t4", "a100", "cpu")},
                note="the language model is text_model, as in Idefics2; images are split into tiles"),
    ModelChoice("smolvlm2-2.2b", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", 2.25, IDEFICS2_LORA_TARGETS,
                "smolvlm2-2.2b-lora", qlora_on=(), tiny_name="smolvlm2",
                image_budgets={preset: {"longest_edge": SMOLVLM2_LONGEST_EDGE, "do_image_splitting": True}
                               for preset in ("t4", "a100", "cpu")},
                note="SmolVLM's layout at 2.2 B (language model text_model); a page is cut into 384-px tiles, "
                     "81 image tokens each"),
    ModelChoice("gemma3-4b", "google/gemma-3-4b-it", 4.3, LANGUAGE_MODEL_LORA_TARGETS, "gemma3-4b-lora",
                qlora_on=("t4",), tiny_name="gemma3", gated=True,
                note="gated (accept the license on the Hub, then a token); 896-px images, 256 image tokens; "
                     "on a T4 it computes in fp32, not fp16 (its activations overflow fp16: runtime.FP16_OVERFLOWS)"),
    ModelChoice("paligemma2-3b", "google/paligemma2-3b-pt-448", 3.0, LANGUAGE_MODEL_LORA_TARGETS,
                "paligemma2-3b-lora", qlora_on=(), tiny_name="paligemma2", kind="prefix-lm", gated=True,
                note="gated (accept the license on the Hub, then a token); a prefix-LM, no chat template: a task "
                     "prefix (answer en / caption en) replaces INSTRUCTION, the answer is the suffix; 448-px "
                     "images, 1,024 image tokens"),
)}


def get_model_choice(key: str) -> ModelChoice:
    """The :class:`ModelChoice` for the notebook's ``MODEL``; an unknown key is refused with the choices.

    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    if key not in MODEL_CHOICES:
        raise ValueError(f"MODEL = {key!r} is not a supported choice; choose one of {sorted(MODEL_CHOICES)}")
    return MODEL_CHOICES[key]
