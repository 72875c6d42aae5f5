"""Try it yourself: one image, one question, the base model's answer next to the fine-tuned one's.

Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned
model side by side". :func:`build_demo` makes a Gradio app (an image upload with the series' example pictures to
click, a question box, two answers with their generation times); :func:`launch_demo` serves it (a public
``share`` link on Colab, a local URL elsewhere). The *base* answer comes from the same weights with the adapter
switched off (PEFT's ``disable_adapter()``), so there is no second copy of the model in memory; the *fine-tuned*
answer from the model as it is. Every family of the series works, because the answers are generated through the
model's own collator (:func:`vlm_helpers.evaluation.generate_predictions`): Florence-2's task prompt, the chat
template and its instruction for the chat models.

Gradio is imported only inside :func:`build_demo` and :func:`launch_demo` (``pip install -e ".[demo]"``; Colab
has it). A bad input never reaches the model: no image, a file that is not an image, an image over
:data:`MAX_MEGAPIXELS`, an empty or overlong question each get one sentence in the page (:class:`DemoInputError`,
shown by Gradio as an error message, not a traceback).

``python -m vlm_helpers.demo --tiny`` serves it on a tiny random twin whose adapter holds random (non-zero)
weights, on a CPU, in seconds; ``python -m vlm_helpers.demo --adapter outputs/<run>/adapter`` serves a trained
adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from vlm_helpers import evaluation, lora, model_choices, runtime
from vlm_helpers.comparison import display_text
from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT
from vlm_helpers.data.docvqa import CHAT_INSTRUCTION
from vlm_helpers.tiny import resolve_checkpoint

#: The largest image the demo reads, in megapixels. A 48-megapixel phone photo passes; no model of the series
#: sees more than a few megapixels of it anyway (each processor resizes to its image budget), so anything larger
#: only costs memory and time before the model runs. Larger images are refused with a message, not downscaled.
MAX_MEGAPIXELS = 50

#: The longest question accepted, in characters (a question, not a document).
MAX_QUESTION_CHARS = 1000

#: ``VLM_DEMO=0`` keeps the notebooks' demo cells from opening the app (the test suite's runs skip it anyway).
DEMO_ENV_VAR = "VLM_DEMO"


class DemoInputError(ValueError):
    """An input the demo refuses, with the sentence the page shows. Raised by :func:`read_image` and
    :func:`check_question`; see ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the
    base and the fine-tuned model side by side"."""


@dataclass(frozen=True)
class BothAnswers:
    """The base model's and the fine-tuned model's answer to one question, and how long each took.

    Returned by :func:`answer_both`; shown side by side in ``notebooks/05_before_after_comparison.ipynb``,
    section "Try it yourself: the base and the fine-tuned model side by side".
    """

    base: str
    finetuned: str
    base_seconds: float
    finetuned_seconds: float


def skip_reason(environ: dict | None = None) -> str | None:
    """Why a notebook's demo cell should not open the app, or None when it should.

    The cell is skipped when nobody can click: the notebook is executed by the test suite (pytest sets
    ``PYTEST_CURRENT_TEST``, which the executed kernel inherits, for ``--nbmake`` and ``tests/test_notebooks.py``
    alike), or ``VLM_DEMO=0`` is set. Used in ``notebooks/05_before_after_comparison.ipynb``, section "Try it
    yourself: the base and the fine-tuned model side by side".
    """
    environ = os.environ if environ is None else environ
    if environ.get(DEMO_ENV_VAR, "").strip().lower() in ("0", "false", "no"):
        return f"{DEMO_ENV_VAR}={environ[DEMO_ENV_VAR]} is set"
    if "PYTEST_CURRENT_TEST" in environ:
        return "the notebook is executed headless by the test suite (nobody to click)"
    return None


def read_image(path: str | os.PathLike | None, *, max_megapixels: float = MAX_MEGAPIXELS):
    """Open an uploaded file as an RGB image, or raise :class:`DemoInputError` with what is wrong.

    The size is read from the header before any pixel is decoded, so a huge image is refused without
    decoding it. Used by the app of ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself:
    the base and the fine-tuned model side by side".
    """
    from PIL import Image, UnidentifiedImageError

    if path is None or str(path) == "":
        raise DemoInputError("No image yet: upload one (or click an example below), then ask.")
    name = Path(path).name
    limit = f"the demo reads images up to {max_megapixels:g} megapixels; scale it down first"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise DemoInputError(f"{name} is too large ({error}); {limit}.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise DemoInputError(f"{name} is not an image this demo can read: upload a PNG, JPEG or WebP "
                             "picture.") from None
    width, height = image.size
    if width * height > max_megapixels * 1e6:
        raise DemoInputError(f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); "
                             f"{limit}.")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError):  # a truncated or corrupt file: the header was fine, the pixels not
        raise DemoInputError(f"{name} could not be decoded (a damaged or truncated file?).") from None


def check_question(question: str | None, *, max_chars: int = MAX_QUESTION_CHARS) -> str:
    """The question with its surrounding whitespace removed; :class:`DemoInputError` if it is empty or too long.

    Used by the app of ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and
    the fine-tuned model side by side".
    """
    text = (question or "").strip()
    if not text:
        raise DemoInputError("The question is empty: type what you want to ask about the image.")
    if len(text) > max_chars:
        raise DemoInputError(f"The question has {len(text):,} characters; the demo takes at most {max_chars:,}.")
    return text


def answer_both(model, processor, collator, image, question: str, **generate_kwargs) -> BothAnswers:
    """Ask the base model (the adapter disabled) and the fine-tuned one (as it is) the same question.

    ``model`` is a PEFT model: ``disable_adapter()`` runs the very same weights without the LoRA matrices (and
    without any ``modules_to_save`` copy), so no second model is loaded. ``generate_kwargs`` go to
    :func:`vlm_helpers.evaluation.generate_predictions` (``num_beams``, ``max_new_tokens``, ``device``,
    ``dtype``). Not thread-safe (the adapter is switched off for the whole model): the app runs one question
    at a time. Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and
    the fine-tuned model side by side".
    """
    if not hasattr(model, "disable_adapter"):
        raise TypeError("the demo compares a PEFT model with and without its adapter: pass the model with its "
                        "LoRA adapter (lora.add_lora or lora.load_adapter), not a plain model")
    rows = [{"id": "demo", "image": image, "question": question, "answers": [""]}]
    started = time.perf_counter()
    with model.disable_adapter():
        base = evaluation.generate_predictions(model, processor, collator, rows, **generate_kwargs)[0]
    middle = time.perf_counter()
    finetuned = evaluation.generate_predictions(model, processor, collator, rows, **generate_kwargs)[0]
    return BothAnswers(base, finetuned, middle - started, time.perf_counter() - middle)


def example_images(folder: str | os.PathLike, *, seed: int = 0) -> list[list[str]]:
    """The series' pictures to click, written as PNGs into ``folder``: ``[[image path, question], ...]``.

    A synthetic DocVQA page (with a question printed on it) and a synthetic aircraft photo (with notebook 04's
    caption prompt): the images of tiny mode, drawn on this machine, nothing downloaded. Shown under the upload
    in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned model
    side by side".
    """
    import random

    import numpy as np

    from vlm_helpers.tiny.render import render_document
    from vlm_helpers.tiny.synthetic_aircraft import AIRCRAFT_LOOKS, render_aircraft
    from vlm_helpers.tiny.synthetic_docvqa import sample_document

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = sample_document(random.Random(seed))
    page = folder / "example_page.png"
    render_document(document.spec, size=(600, 776)).save(page)
    photo = folder / "example_aircraft.png"
    render_aircraft(sorted(AIRCRAFT_LOOKS)[seed % len(AIRCRAFT_LOOKS)], np.random.default_rng(seed),
                    image_size=(384, 288)).save(photo)
    return [[str(page), document.questions[0][0]], [str(photo), AIRCRAFT_PROMPT]]


def _shown(text: str) -> str:
    """A model's answer as the page shows it: control characters escaped, at most 2,000 characters."""
    return display_text(text, max_chars=2000, quote=False) or "(an empty answer)"


def build_demo(model, processor, collator, *, title: str = "Base model vs fine-tuned", tiny: bool = False,
               examples: list[list[str]] | None = None, max_megapixels: float = MAX_MEGAPIXELS,
               **generate_kwargs):
    """The Gradio app (a ``gradio.Blocks``, not started): upload, question, two answers with their times.

    ``examples``: ``[[image path, question], ...]`` to click (default: :func:`example_images` in a temporary
    folder). ``generate_kwargs`` as for :func:`answer_both`. Its API endpoint ``/answer`` takes the image and the
    question and returns the base answer, its time, the fine-tuned answer, its time (the tests call it with
    ``gradio_client``). Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the
    base and the fine-tuned model side by side".
    """
    try:
        import gradio as gr
    except ImportError:
        raise ModuleNotFoundError('the demo needs gradio: pip install -e ".[demo]" (Colab has it)') from None

    if examples is None:
        examples = example_images(tempfile.mkdtemp(prefix="vlm-demo-examples-"))

    def answer(image_payload, question):
        # preprocess=False: the upload arrives as Gradio's file data, so a file that is not an image, or a huge
        # one, is refused here with a sentence instead of failing inside Gradio's own decoding
        path = image_payload.get("path") if isinstance(image_payload, dict) else image_payload
        try:
            image = read_image(path, max_megapixels=max_megapixels)
            text = check_question(question)
        except DemoInputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        both = answer_both(model, processor, collator, image, text, **generate_kwargs)
        return (_shown(both.base), f"{both.base_seconds:.2f} s", _shown(both.finetuned),
                f"{both.finetuned_seconds:.2f} s")

    label = runtime.mode_label(tiny)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\n{label}\n\nUpload an image (or click an example), ask a question: the same "
                    "weights answer without the adapter (base) and with it (fine-tuned).")
        with gr.Row():
            image = gr.Image(type="filepath", label="Your image", sources=["upload", "clipboard"], height=320)
            with gr.Column():
                question = gr.Textbox(label="Question", lines=2, placeholder="What is the invoice number?")
                ask = gr.Button("Ask both models", variant="primary")
        with gr.Row():
            with gr.Column():
                base = gr.Textbox(label="Base model (adapter disabled)", interactive=False)
                base_time = gr.Textbox(label="Generation time, base", interactive=False)
            with gr.Column():
                tuned = gr.Textbox(label="Fine-tuned (with the adapter)", interactive=False)
                tuned_time = gr.Textbox(label="Generation time, fine-tuned", interactive=False)
        gr.Examples(examples=examples, inputs=[image, question], label="The series' example images (synthetic)")
        inputs, outputs = [image, question], [base, base_time, tuned, tuned_time]
        # one question at a time: answer_both switches the adapter off for the whole model
        ask.click(answer, inputs, outputs, api_name="answer", preprocess=False, concurrency_limit=1)
        question.submit(answer, inputs, outputs, api_name=False, preprocess=False, concurrency_limit=1)
    return demo


def launch_demo(model, processor, collator, *, share: bool | None = None, server_name: str = "127.0.0.1",
                server_port: int | None = None, block: bool | None = None, **build_kwargs):
    """Build the app (:func:`build_demo`) and serve it; returns the running ``gradio.Blocks``.

    ``share``: None gives a public link on Colab (the notebook's own machine is not reachable from your browser
    otherwise) and a local URL elsewhere. ``block``: None keeps a script running until Ctrl+C and returns at once
    in a notebook. Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base
    and the fine-tuned model side by side".
    """
    demo = build_demo(model, processor, collator, **build_kwargs)
    if share is None:
        share = "google.colab" in sys.modules
    in_notebook = "ipykernel" in sys.modules
    demo.launch(share=share, server_name=server_name, server_port=server_port,
                prevent_thread_lock=not (block if block is not None else not in_notebook))
    return demo


def tiny_demo_model(model_key: str = "qwen2-vl", *, cache_dir: str | None = None, seed: int = 0):
    """A tiny random twin of ``model_key`` with a LoRA adapter of random, non-zero weights, for trying the app.

    A freshly initialised LoRA adapter changes nothing (its B matrices start at zero), so the "fine-tuned"
    answers would equal the base ones; here both LoRA matrices are drawn at random (``init_lora_weights=False``),
    so the two answers differ, as after training. Returns ``(model, processor, collator, generate_kwargs)``.
    Used by ``python -m vlm_helpers.demo --tiny`` and, in tiny mode without a saved adapter, by
    ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned model
    side by side".
    """
    import torch

    choice = model_choices.get_model_choice(model_key)
    _, preset = runtime.setup(choice.recipe, tiny=True, seed=seed)
    checkpoint = resolve_checkpoint(choice.model_id, tiny=True, tiny_name=choice.tiny_name, cache_dir=cache_dir)
    quantize = choice.method(preset.name) == "qlora"
    model, processor = lora.load_chat_vlm(checkpoint, quantize_4bit=quantize, dtype=preset.dtype,
                                          attn_implementation=preset.attn_implementation, device=preset.device,
                                          image_budget=choice.image_budget(preset.name))
    torch.manual_seed(seed)
    model = lora.add_lora(model, target_modules=choice.lora_targets, r=8, alpha=16, dropout=0.0, quantized=quantize,
                          init_lora_weights=False)
    model.eval()
    collator = choice.collator(processor, task="qa", instruction=CHAT_INSTRUCTION, seed=seed)
    return model, processor, collator, dict(num_beams=1, max_new_tokens=16, device=preset.device,
                                            dtype=preset.dtype)


def find_adapters(root: str | os.PathLike = "outputs") -> list[Path]:
    """The saved adapters under ``root`` (folders with an ``adapter_config.json``), the newest first.

    Notebooks 03, 04 and 06 save theirs as ``outputs/<notebook>/adapter`` in full mode (06 also keeps
    ``best-adapter``). Used in ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base
    and the fine-tuned model side by side".
    """
    found = [config.parent for config in Path(root).glob("**/adapter_config.json")]
    return sorted(found, key=lambda folder: (folder / "adapter_config.json").stat().st_mtime, reverse=True)


def load_trained(adapter_dir: str | os.PathLike, *, tiny: bool, task: str = "qa",
                 instruction: str = CHAT_INSTRUCTION, seed: int = 0, cache_dir: str | None = None):
    """A saved adapter on its base model, ready for the app: ``(model, processor, collator, generate_kwargs)``.

    The base is the model choice whose Hub id the adapter names (``adapter_config.json``; tiny mode loads that
    choice's tiny twin), loaded as it was trained: the preset's dtype and attention, 4-bit where the preset
    trains QLoRA; the processor saved with the adapter wins (:func:`vlm_helpers.lora.load_adapter`). ``task`` and
    ``instruction`` make the collator (notebook 03: ``"qa"`` and ``"Answer briefly."``; 04's captions:
    ``"captioning"`` and ``""``). ``cache_dir``: where tiny twins are built (default ``$VLM_CACHE``). Used in
    ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned model
    side by side".
    """
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: not a saved adapter")
    base = json.loads(config_file.read_text())["base_model_name_or_path"]
    choice = next((c for c in model_choices.MODEL_CHOICES.values() if c.model_id == base), None)
    if choice is None:
        known = sorted(c.model_id for c in model_choices.MODEL_CHOICES.values())
        raise ValueError(f"{adapter_dir} is an adapter of {base!r}; the demo loads adapters of {known}")
    _, preset = runtime.setup(choice.recipe, tiny=tiny, seed=seed)
    checkpoint = resolve_checkpoint(choice.model_id, tiny=tiny, tiny_name=choice.tiny_name, cache_dir=cache_dir)
    model, processor = lora.load_adapter(checkpoint, adapter_dir, quantize_4bit=choice.method(preset.name) == "qlora",
                                         dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                         device=preset.device, image_budget=choice.image_budget(preset.name))
    collator = choice.collator(processor, task=task, instruction=instruction, seed=seed)
    return model, processor, collator, dict(num_beams=1, max_new_tokens=32 if task == "qa" else 64,
                                            device=preset.device, dtype=preset.dtype)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m vlm_helpers.demo``; the app is the one of
    ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned model
    side by side"."""
    parser = argparse.ArgumentParser(prog="python -m vlm_helpers.demo",
                                     description="Serve the demo: the base model's answer (adapter disabled) next "
                                                 "to the fine-tuned one's, on your image and question.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", action="store_true", help="a tiny random twin with a random adapter (CPU, seconds)")
    which.add_argument("--adapter", help="a saved adapter folder, e.g. outputs/03_idefics2_qlora_docvqa/adapter")
    parser.add_argument("--model", default="qwen2-vl", choices=sorted(model_choices.MODEL_CHOICES),
                        help="with --tiny: the model choice whose twin to serve (default qwen2-vl)")
    parser.add_argument("--task", default="qa", choices=("qa", "captioning"), help="with --adapter (default qa)")
    parser.add_argument("--instruction", default=CHAT_INSTRUCTION,
                        help=f"with --adapter: the text before each question (default {CHAT_INSTRUCTION!r})")
    parser.add_argument("--port", type=int, default=None, help="the local port (default: Gradio's, 7860 or next)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the app until Ctrl+C: ``python -m vlm_helpers.demo --tiny``, or ``--adapter <folder>`` (the app of
    ``notebooks/05_before_after_comparison.ipynb``, section "Try it yourself: the base and the fine-tuned model
    side by side")."""
    args = build_parser().parse_args(argv)
    tiny = args.tiny or runtime.is_tiny()
    if args.tiny:
        model, processor, collator, generate = tiny_demo_model(args.model)
        title = f"Base vs fine-tuned: tiny {args.model} with a random adapter"
    else:
        model, processor, collator, generate = load_trained(args.adapter, tiny=tiny, task=args.task,
                                                            instruction=args.instruction)
        title = f"Base vs fine-tuned: {Path(args.adapter)}"
    print(f"serving {title} {runtime.mode_label(tiny)}", flush=True)
    launch_demo(model, processor, collator, share=args.share or None, server_name=args.host,
                server_port=args.port, block=True, title=title, tiny=tiny, **generate)


if __name__ == "__main__":
    main()
