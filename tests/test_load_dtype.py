"""A checkpoint's own ``dtype`` never decides the dtype of the weights the series loads.

transformers 5 defaults ``from_pretrained`` to ``dtype="auto"``: with no ``dtype=`` the weights come
back in the dtype the checkpoint's ``config.json`` names. Florence-2-base-ft's published config says
``"dtype": "float16"``, so since the tiny Florence-2 is built from it (and saved in fp16, as the real
checkpoint is), every loading path is checked here on a checkpoint whose config says float16: the
Florence-2 loader, ``lora.load_chat_vlm`` (16-bit and 4-bit), ``lora.load_adapter`` and
``lora.merge_for_export`` return (or save) the dtype asked for. A last test reads the package, the
command line's recipes, the bench scripts and the notebooks: every model load there names its dtype.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlm_helpers import adapters, florence2, lora
from vlm_helpers.tiny import tiny_checkpoint
from vlm_helpers.tiny.real import REAL_CHECKPOINTS, real_json

ROOT = Path(__file__).resolve().parents[1]
ASKED = [torch.float32, torch.bfloat16]


def stored_dtypes(folder: Path) -> set[str]:
    """The dtypes of the tensors in ``folder``'s safetensors files (``"F16"``, ``"F32"``, ...)."""
    found = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            found |= {weights.get_slice(key).get_dtype() for key in weights.keys()}
    return found


def float_dtypes(model, *, skip_lora: bool = False) -> set:
    return {p.dtype for n, p in model.named_parameters() if p.is_floating_point() and not (skip_lora and "lora_" in n)}


# ------------------------------------------------------------------------------------------ Florence-2

def test_the_tiny_florence2_is_stored_in_fp16_as_the_published_checkpoint(tiny_florence2_path):
    published = real_json(REAL_CHECKPOINTS["florence2"], "config.json")
    assert published["dtype"] == "float16"
    saved = json.loads((Path(tiny_florence2_path) / "config.json").read_text())
    assert saved["dtype"] == published["dtype"]
    assert stored_dtypes(Path(tiny_florence2_path)) == {"F16"}


def test_without_a_dtype_transformers_takes_the_checkpoints_fp16(tiny_florence2_path):
    """The trap the explicit dtype avoids (transformers 5's ``dtype="auto"`` default)."""
    from transformers import AutoModelForImageTextToText

    assert float_dtypes(AutoModelForImageTextToText.from_pretrained(tiny_florence2_path)) == {torch.float16}
    with pytest.raises(TypeError, match="dtype"):
        florence2.load_florence2(tiny_florence2_path)  # the series' loader makes the caller choose


@pytest.mark.parametrize("dtype", ASKED, ids=str)
def test_florence2_loader_returns_the_dtype_asked_for(tiny_florence2_path, dtype):
    model, _ = florence2.load_florence2(tiny_florence2_path, dtype=dtype)
    assert float_dtypes(model) == {dtype} and model.config.dtype == dtype


# ------------------------------------------------------------------------------------------- chat models

@pytest.fixture(scope="module")
def fp16_chat_checkpoint(tiny_cache, tmp_path_factory):
    """The tiny LLaVA-Phi-3, saved again in fp16: its config.json then says float16 (as the real one's
    ``torch_dtype`` does)."""
    from transformers import AutoModelForImageTextToText

    folder = tmp_path_factory.mktemp("fp16-chat") / "llava-phi3"
    shutil.copytree(tiny_checkpoint("llava-phi3", tiny_cache), folder)
    AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float16).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    assert stored_dtypes(folder) == {"F16"}
    return folder


@pytest.fixture(scope="module")
def fp16_chat_adapter(fp16_chat_checkpoint, tmp_path_factory):
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS

    model, processor = lora.load_chat_vlm(fp16_chat_checkpoint, dtype="float32", attn_implementation="sdpa",
                                          quantize_4bit=False)
    model = lora.add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, r=4, alpha=8, dropout=0.0, quantized=False)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    return adapters.save_adapter(model, processor, tmp_path_factory.mktemp("fp16-chat-adapter") / "adapter")


@pytest.mark.parametrize("dtype", ASKED, ids=str)
def test_load_chat_vlm_returns_the_dtype_asked_for(fp16_chat_checkpoint, dtype):
    model, _ = lora.load_chat_vlm(fp16_chat_checkpoint, dtype=dtype, attn_implementation="sdpa", quantize_4bit=False)
    assert float_dtypes(model) == {dtype}


@pytest.mark.parametrize("dtype", ASKED, ids=str)
def test_load_chat_vlm_in_4_bits_computes_in_the_dtype_asked_for(fp16_chat_checkpoint, dtype):
    import bitsandbytes as bnb

    model, _ = lora.load_chat_vlm(fp16_chat_checkpoint, dtype=dtype, attn_implementation="sdpa", quantize_4bit=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {layer.compute_dtype for layer in layers} == {dtype}
    assert float_dtypes(model) == {dtype}  # the layers left unquantized (norms, embeddings, vision tower)


@pytest.mark.parametrize("dtype", ASKED, ids=str)
def test_load_adapter_returns_the_dtype_asked_for(fp16_chat_checkpoint, fp16_chat_adapter, dtype):
    model, _ = lora.load_adapter(fp16_chat_checkpoint, fp16_chat_adapter, dtype=dtype, attn_implementation="sdpa",
                                 quantize_4bit=False)
    assert float_dtypes(model, skip_lora=True) == {dtype}
    assert float_dtypes(model) <= {dtype, torch.float32}  # PEFT keeps adapters of a 16-bit base in fp32


@pytest.mark.parametrize("dtype", ASKED, ids=str)
def test_merge_for_export_saves_the_dtype_asked_for(fp16_chat_checkpoint, fp16_chat_adapter, dtype, tmp_path):
    out = lora.merge_for_export(fp16_chat_checkpoint, fp16_chat_adapter, tmp_path / "merged", dtype=dtype)
    assert json.loads((out / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    assert stored_dtypes(out) == {{torch.float32: "F32", torch.bfloat16: "BF16"}[dtype]}


# ------------------------------------------------------------------------------------- every call site

#: Calls that load a model's weights: ``from_pretrained`` of a model class, and the series' loaders.
LOADERS = ("load_florence2", "load_chat_vlm", "load_adapter")
MODEL_CLASS = re.compile(r"(AutoModel\w*|\w+For\w+|\w+Model)$")


def _callee(call: ast.Call) -> tuple[str, str]:
    """(the called attribute or function's name, the name of what it is called on)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
        return func.attr, owner
    return getattr(func, "id", ""), ""


def loads_without_a_dtype(source: str, where: str) -> list[str]:
    """Model loads in ``source`` that name no ``dtype`` (a ``**kwargs`` call is taken to name one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name, owner = _callee(node)
        is_load = name in LOADERS or (name == "from_pretrained" and MODEL_CLASS.match(owner or "")
                                      and owner != "PeftModel")  # PEFT puts an adapter on a loaded model
        keywords = {k.arg for k in node.keywords}
        if is_load and "dtype" not in keywords and None not in keywords:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def _notebook_code(path: Path) -> str:
    """A notebook's code cells as one Python source; shell and magic lines become ``pass``."""
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for cell in cells for line in cell.splitlines()]
    return "\n".join(lines)


def test_every_model_load_of_the_package_cli_bench_and_notebooks_names_its_dtype():
    sources = {str(p.relative_to(ROOT)): p.read_text() for folder in ("vlm_helpers", "bench")
               for p in sorted((ROOT / folder).rglob("*.py"))}
    sources |= {str(p.relative_to(ROOT)): _notebook_code(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert any("load_florence2(" in source for name, source in sources.items() if name.endswith(".ipynb"))
    missing = [line for name, source in sources.items() for line in loads_without_a_dtype(source, name)]
    assert missing == []


def test_the_call_site_check_sees_a_load_without_dtype():
    source = ("model, processor = florence2.load_florence2(checkpoint, device='cpu')\n"
              "base = AutoModelForImageTextToText.from_pretrained(path)\n"
              "ok = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)\n"
              "also_ok = lora.load_chat_vlm(path, **LOAD_KWARGS)\n"
              "processor = AutoProcessor.from_pretrained(path)\n")
    assert [line.split(":")[1] for line in loads_without_a_dtype(source, "x")] == ["1", "2"]
