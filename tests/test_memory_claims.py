"""What notebooks 01-04 say about their memory settings is what the model they load is, under the T4 and
the A100 preset.

Each notebook states its memory settings in markdown (4-bit NF4, image splitting, image size, batch,
fp32 weights, gradient checkpointing) and prints some of them (``runtime.describe``'s line, "frozen
weights in ..."). Here the notebook's own cells run (its parameters, its preset cell, its model-loading
and LoRA cells, nothing after) on the tiny models, on this CPU, with the preset a T4 or an A100 would get
(``runtime.choose_preset`` for a fake GPU profile, moved to the CPU as ``tests/test_real_shape.py`` does).
Then each claim, read from the notebook's text or printed output, is compared with the loaded model's
state: ``gradient_checkpointing`` flags, 4-bit layers and their quantization, parameter dtypes, the
processor's image settings, the training configuration's batch. A claim whose wording changed fails
with a message saying so, so that a new claim gets its check.

Notebook 05 loads no model and claims no memory setting; notebook 06 has its own tests.
"""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from vlm_helpers import florence2, runtime, tiny
from vlm_helpers.tiny import tiny_checkpoint

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PROFILES = {
    "t4": runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False),
    "a100": runtime.HardwareProfile("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, on_colab=True,
                                    flash_attn_installed=False),
}
PARAMETERS = "TINY = runtime.is_tiny()"  # every notebook's parameters cell


# ------------------------------------------------------------------------------------ reading notebooks

def notebook_cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / name).read_text())["cells"]


def markdown(name: str) -> str:
    """All markdown of the notebook, whitespace folded to single spaces."""
    text = " ".join("".join(c["source"]) for c in notebook_cells(name) if c["cell_type"] == "markdown")
    return " ".join(text.split())


def claim(text: str, pattern: str) -> re.Match:
    """The claim ``pattern`` (a regex over whitespace-folded text) must still be made."""
    found = re.search(pattern, text)
    assert found, f"the notebook no longer says {pattern!r}: check its new claim and update this test"
    return found


def code_cell(name: str, marker: str) -> str:
    """The one code cell of ``name`` that contains ``marker``."""
    sources = ["".join(c["source"]) for c in notebook_cells(name) if c["cell_type"] == "code"]
    found = [source for source in sources if marker in source]
    assert len(found) == 1, f"{name}: {len(found)} code cells contain {marker!r}"
    return found[0]


def statements_through(source: str, marker: str) -> str:
    """The top-level statements of a cell up to and including the first one containing ``marker``
    (the loading part of a cell that goes on to evaluate)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for statement in tree.body:
        if marker in ast.get_source_segment(source, statement):
            return "\n".join(lines[: statement.end_lineno])
    raise AssertionError(f"no statement contains {marker!r}")


def gpu_preset_on_cpu(profile, recipe: str, choose=runtime.choose_preset) -> runtime.Preset:
    """The preset ``profile`` gets for ``recipe`` (dtype, batches, checkpointing), run on this CPU."""
    return runtime.override(choose(profile, recipe), device="cpu")


def run_cells(name: str, profile_name: str, tiny_cache, steps: list[tuple[str, str | None]],
              parameters: dict | None = None) -> tuple[dict, str]:
    """Run the notebook's cells named by ``(marker, through)`` (``through``: stop after the statement
    containing it) under a GPU preset on this CPU, with the tiny models and tiny data; ``parameters`` are set
    after the parameters cell (as papermill injects them). Returns the namespace and what the cells printed."""
    profile = PROFILES[profile_name]
    choose = runtime.choose_preset
    namespace: dict = {"runtime": runtime, "tiny": tiny}  # what each notebook's set-up cell imports
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLM_TINY", "1")  # tiny models and synthetic data; the preset is the GPU's (below)
        patch.setattr(runtime, "choose_preset", lambda _profile, recipe, *a, **k: gpu_preset_on_cpu(profile, recipe,
                                                                                                   choose))
        patch.setattr(runtime, "setup", lambda recipe, *, tiny, seed=0, preset_name=None:
                      (profile, gpu_preset_on_cpu(profile, recipe, choose)))
        patch.setattr(tiny, "resolve_checkpoint", lambda model_id, *, tiny, tiny_name, cache_dir=None:
                      str(tiny_checkpoint(tiny_name, tiny_cache)))
        with redirect_stdout(printed):
            for marker, through in steps:
                source = code_cell(name, marker)
                exec(compile(statements_through(source, through) if through else source, f"{name} [{marker}]",
                             "exec"), namespace)
                if marker == PARAMETERS:
                    namespace.update(parameters or {})
                    namespace["REPLACE_RESULTS"] = True  # no results/ check: nothing is written
                    output_dir = Path(str(namespace.get("OUTPUT_DIR", "")))
                    if output_dir.is_absolute() and output_dir.parent == Path(tempfile.gettempdir()):
                        shutil.rmtree(output_dir, ignore_errors=True)  # the tiny parameters' fresh folder
    return namespace, printed.getvalue()


# ------------------------------------------------------------------------------------- model state

def checkpointing(model) -> bool:
    """What transformers' ``is_activation_checkpointing`` reads, through a PEFT wrapper too."""
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def checkpointing_claimed(printed: str) -> bool:
    """The ``runtime.describe`` line's "gradient checkpointing on|off"."""
    return claim(printed, r"gradient checkpointing (on|off)").group(1) == "on"


def linear_4bit(model) -> list:
    import bitsandbytes as bnb

    return [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]


def float_dtypes(model, *, frozen_only: bool = False) -> set:
    return {p.dtype for p in model.parameters() if p.is_floating_point() and not (frozen_only and p.requires_grad)}


# ------------------------------------------------------------------------------------------- 01

@pytest.mark.parametrize("profile_name", ["t4", "a100"])
def test_notebook_01_loads_each_model_as_it_says(profile_name, tiny_cache):
    name = "01_baseline_inference.ipynb"
    text = markdown(name)
    namespace, _ = run_cells(name, profile_name, tiny_cache, [
        (PARAMETERS, None), ('runtime.setup("florence2-docvqa"', None),
        ("florence2.load_florence2(", "load_florence2("), ("idefics2_preset = ", "load_chat_vlm("),
        ("phi3_preset = ", "load_chat_vlm(")])
    # Florence-2 "inference only: the preset dtype", whatever its checkpoint's config.json says (float16)
    claim(code_cell(name, "florence2.load_florence2("), r"dtype=florence_preset\.torch_dtype, +# inference only")
    assert float_dtypes(namespace["florence"]) == {namespace["florence_preset"].torch_dtype}
    # Idefics2: "we load it in 4-bit NF4 ... Image splitting (four crops plus the full image) is off on a T4"
    claim(text, r"so we load it in 4-bit NF4")
    claim(text, r"Image splitting \(four crops plus the full image\) is off on a T4 to save memory")
    layers = linear_4bit(namespace["idefics2"])
    assert layers and {layer.weight.quant_type for layer in layers} == {"nf4"}
    assert namespace["idefics2_processor"].image_processor.do_image_splitting == (profile_name != "t4")
    # LLaVA-Phi-3 as notebook 04 loads it: 4-bit on a T4 only
    assert bool(linear_4bit(namespace["phi3"])) == (profile_name == "t4")


# ------------------------------------------------------------------------------------------- 02

@pytest.fixture(scope="module", params=["t4", "a100"])
def notebook_02(request, tiny_cache):
    namespace, printed = run_cells("02_florence2_docvqa.ipynb", request.param, tiny_cache, [
        (PARAMETERS, None), ('runtime.setup("florence2-docvqa"', None), ("model, processor = florence2.load_florence2(",
                                                                            None),
        ("config = loop.TrainConfig(", "TrainConfig(")])
    return request.param, namespace, printed


def test_notebook_02_checkpointing_is_what_the_preset_line_says(notebook_02):
    """The preset line printed "gradient checkpointing on" on a T4 while the explicit loop never switched
    it on. Florence-2 needs it on no GPU (runtime.needs_gradient_checkpointing): the line and the
    markdown say "off", and the model is not checkpointed."""
    _, namespace, printed = notebook_02
    assert checkpointing_claimed(printed) is checkpointing(namespace["model"]) is False
    claim(markdown("02_florence2_docvqa.ipynb"), r"\*\*Gradient checkpointing\*\* .{0,160}stays \*\*off\*\* for "
                                                 r"Florence-2 on every GPU")


def test_notebook_02_keeps_fp32_weights_although_the_checkpoint_is_fp16(notebook_02):
    _, namespace, _ = notebook_02
    saved = json.loads((Path(namespace["checkpoint"]) / "config.json").read_text())
    assert saved["dtype"] == "float16"  # the tiny checkpoint, like the real one: so the claim has teeth
    assert float_dtypes(namespace["model"]) == {torch.float32}
    text = markdown("02_florence2_docvqa.ipynb")
    claim(text, r"The weights themselves stay in fp32")
    claim(text, r"The checkpoint is stored in fp16 \(its `config.json` says `\"dtype\": \"float16\"`\)")


def test_notebook_02_trains_the_batch_it_announces(notebook_02):
    profile_name, namespace, _ = notebook_02
    found = claim(markdown("02_florence2_docvqa.ipynb"),
                  r"batch (\d+) on a 40 GB A100\. A 16 GB T4 gets batch (\d+) with (\d+) accumulation steps")
    a100_batch, t4_batch, t4_accumulation = map(int, found.groups())
    expected = {"a100": (a100_batch, 1), "t4": (t4_batch, t4_accumulation)}[profile_name]
    config, preset = namespace["config"], namespace["preset"]
    assert (config.batch_size, config.grad_accum) == (preset.batch_size, preset.grad_accum) == expected


def test_notebook_02_frozen_vision_tower_keeps_no_activations(notebook_02):
    """"the frozen vision tower stores no activations at all": in a training forward its output needs no
    gradient, so autograd saves nothing inside it."""
    from vlm_helpers import freezing
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    _, namespace, _ = notebook_02
    claim(markdown("02_florence2_docvqa.ipynb"), r"the frozen vision tower stores no activations at all")
    model, processor = namespace["model"], namespace["processor"]
    tower = namespace["vision_tower"]
    outputs = []
    handle = tower.register_forward_hook(lambda module, args, output: outputs.append(output.last_hidden_state))
    model.train()
    freezing.frozen_to_eval(model)  # as the loop does
    rows = [dict(row) for row in make_synthetic_docvqa(2, seed=0)]
    try:
        loss = model(**florence2.Florence2Collator(processor)(rows)).loss
    finally:
        handle.remove()
        model.eval()
    assert loss.requires_grad and outputs and not outputs[0].requires_grad


def test_florence2_checkpointing_if_switched_on_recomputes_the_language_model_only(tiny_florence2_path):
    """runtime.needs_gradient_checkpointing's reason, checked: transformers' checkpointing reaches the BART
    layers of Florence-2, never its DaViT blocks (no checkpointing layers; the published config's
    ``enable_checkpoint`` is microsoft's and unread), and the frozen tower runs once per step."""
    from vlm_helpers import freezing
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    tower = florence2.florence2_vision_modules(model)[0]
    freezing.freeze(tower)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.text_config.use_cache = False  # what transformers would do, with a warning
    flagged = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True}
    assert flagged == {"BartEncoder", "BartDecoder", "BartEncoderLayer", "BartDecoderLayer"}
    calls = {"vision": 0, "encoder": 0}
    tower.blocks[0][0].register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
    model.model.language_model.encoder.layers[0].self_attn.register_forward_hook(
        lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    model.train()
    freezing.frozen_to_eval(model)
    rows = [dict(row) for row in make_synthetic_docvqa(2, seed=0)]
    model(**florence2.Florence2Collator(processor)(rows)).loss.backward()
    assert calls == {"vision": 1, "encoder": 2}  # the encoder layer ran again in the backward pass
    assert all(p.grad is None for p in tower.parameters())


# ------------------------------------------------------------------------------------------- 03

@pytest.mark.parametrize("profile_name", ["t4", "a100"])
def test_notebook_03_quantization_images_batch_and_checkpointing_are_as_it_says(profile_name, tiny_cache):
    name = "03_idefics2_qlora_docvqa.ipynb"
    text = markdown(name)
    namespace, printed = run_cells(name, profile_name, tiny_cache, [
        (PARAMETERS, None), ('runtime.setup("idefics2-qlora-docvqa"', None), ("def qlora_quantization(", None),
        ("lora.load_chat_vlm(checkpoint", None), ("def lora_adapters(", None), ("model = lora.add_lora(", None)])
    model, processor, preset = namespace["model"], namespace["processor"], namespace["preset"]
    # "Gradient checkpointing (on for GPUs)", and the preset line
    claim(text, r"\*\*Gradient checkpointing\*\* \(on for GPUs\)")
    assert checkpointing_claimed(printed) is checkpointing(model) is True
    # "The T4 preset runs 1 x 16"
    found = claim(text, r"The T4 preset runs (\d+) x (\d+)")
    if profile_name == "t4":
        assert (preset.batch_size, preset.grad_accum) == tuple(map(int, found.groups()))
    # "NF4 ... with double quantization ..., computing in the preset's dtype"
    claim(text, r"\*\*NF4\*\* .{0,120}with \*\*double quantization\*\* .{0,120}computing in the preset's dtype")
    layers = linear_4bit(model)
    assert layers and {(layer.weight.quant_type, layer.weight.quant_state.nested, layer.compute_dtype)
                       for layer in layers} == {("nf4", True, preset.torch_dtype)}
    # "The article switched splitting off to fit a T4, and so does the T4 preset. The T4 preset also shrinks
    # pages to a longest side of 490 px instead of 980 ... on an A100 keep both defaults"
    claim(text, r"The article switched splitting off to fit a T4, and so does the T4 preset")
    edge = int(claim(text, r"shrinks pages to a longest side of (\d+) px instead of 980").group(1))
    claim(text, r"on an A100 keep both defaults")
    image_processor = processor.image_processor
    published = json.loads((Path(namespace["checkpoint"]) / "preprocessor_config.json").read_text())["size"]
    if profile_name == "t4":
        assert (image_processor.do_image_splitting, image_processor.size["longest_edge"]) == (False, edge)
    else:  # the real checkpoint splits by default (its tiny twin stores False: the preset sets it)
        assert (image_processor.do_image_splitting, image_processor.size["longest_edge"]) == (
            True, published["longest_edge"])


# ------------------------------------------------------------------------------------------- 04

@pytest.mark.parametrize("profile_name", ["t4", "a100"])
def test_notebook_04_precision_batch_and_checkpointing_are_as_it_says(profile_name, tiny_cache):
    name = "04_phi3_aircraft_captioning.ipynb"
    text = markdown(name)
    namespace, printed = run_cells(name, profile_name, tiny_cache, [
        (PARAMETERS, None), ('runtime.setup("phi3-aircraft"', None), ("load_chat_vlm(checkpoint", None),
        ("def lora_targets(", None), ("model = add_lora(", None)])
    model, preset = namespace["model"], namespace["preset"]
    # "From compute capability 8.0 ... we compute in bf16, below it (T4) in fp16"
    claim(text, r"From compute capability 8\.0 \(A100, L4, H100\) we compute in bf16, below it \(T4\) in fp16")
    assert preset.dtype == {"t4": "float16", "a100": "bfloat16"}[profile_name]
    # "4 photos x 2 accumulation steps on a big GPU, 1 x 8 on a T4"
    found = claim(text, r"(\d+) photos x (\d+) accumulation steps on a big GPU, (\d+) x (\d+) on a T4")
    big, small = tuple(map(int, found.groups()[:2])), tuple(map(int, found.groups()[2:]))
    assert (preset.batch_size, preset.grad_accum) == {"a100": big, "t4": small}[profile_name]
    # "on a T4 the frozen weights are stored in 4-bit NF4 ... A big GPU keeps the weights in bf16", as printed
    claim(text, r"on a T4 the frozen weights are stored in 4-bit NF4")
    claim(text, r"A big GPU keeps the weights in bf16")
    layers = linear_4bit(model)
    if profile_name == "t4":
        assert "frozen weights in 4-bit NF4 (QLoRA)" in printed
        assert layers and {layer.weight.quant_type for layer in layers} == {"nf4"}
    else:
        assert "frozen weights in bfloat16" in printed
        assert not layers and float_dtypes(model, frozen_only=True) == {torch.bfloat16}
    # the preset line's "gradient checkpointing on", applied by add_lora
    assert checkpointing_claimed(printed) is checkpointing(model) is True


# ------------------------------------------------------------------------------------------- 06

@pytest.mark.parametrize("profile_name", ["t4", "a100"])
def test_notebook_06_gemma3_computes_in_fp32_on_a_t4_and_bf16_on_an_a100(profile_name, tiny_cache):
    """Issue 28: Gemma 3's activations overflow fp16 (tests/test_fp16_overflow.py), so its T4 plan computes in fp32:
    the preset line says so, and the model notebook 06 loads holds no fp16 tensor; on an A100, bf16 as usual."""
    name = "06_your_data_your_model.ipynb"
    namespace, printed = run_cells(name, profile_name, tiny_cache, [
        (PARAMETERS, None), ("choice = model_choices.get_model_choice(MODEL)", None),
        ("LOAD_KWARGS = dict(", "model, processor = lora.load_chat_vlm")], parameters={"MODEL": "gemma3-4b"})
    expected = {"t4": "float32", "a100": "bfloat16"}[profile_name]
    claim(printed, rf"preset {profile_name}: {expected},")
    model = namespace["model"]
    assert namespace["QUANTIZE"] == (profile_name == "t4") and bool(linear_4bit(model)) == (profile_name == "t4")
    assert float_dtypes(model) == {getattr(torch, expected)}
    if profile_name == "t4":
        assert {module.compute_dtype for module in linear_4bit(model)} == {torch.float32}
