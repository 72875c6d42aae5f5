"""The base-vs-fine-tuned demo (``vlm_helpers.demo``): its answers come from the two models, bad input gets a sentence.

Default tier: the parts without Gradio (the input checks, the two answers of a tiny Florence-2, a saved adapter
loaded back, the headless guard, where gradio is imported). Slow tier: the real app, served on a free local port
and driven through its HTTP API with ``gradio_client`` (in-process, and ``python -m vlm_helpers.demo --tiny`` as a
separate process), every family of the series, and one click-through in a headless Chromium where Playwright and a
Chromium are installed. Without gradio (``pip install -e ".[demo]"``, which ``.ci/run`` installs) those tests skip.
"""

from __future__ import annotations

import ast
import os
import re
import select
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from vlm_helpers import demo, evaluation, lora
from vlm_helpers.demo import DemoInputError
from vlm_helpers.model_choices import MODEL_CHOICES

ROOT = Path(__file__).resolve().parent.parent


# --- default tier: no gradio -------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_one_sentence(tmp_path):
    fine = tmp_path / "page.png"
    Image.effect_noise((64, 48), 60).convert("RGB").save(fine)  # noise: a file of several kB
    assert demo.read_image(str(fine)).size == (64, 48)
    (tmp_path / "notes.txt").write_text("not a picture")
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 6_000)).save(huge)  # 60 megapixels, a small file
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(fine.read_bytes()[: fine.stat().st_size // 2])
    cases = {None: "No image yet", "": "No image yet", str(tmp_path / "notes.txt"): "notes.txt is not an image",
             str(huge): "huge.png is 10000 x 6000 pixels (60 megapixels); the demo reads images up to 50",
             str(truncated): "cut.png"}
    for path, message in cases.items():
        with pytest.raises(DemoInputError, match=re.escape(message)):
            demo.read_image(path)
    assert demo.check_question("  What is the total?\n") == "What is the total?"
    for question, message in [("", "The question is empty"), ("   \n", "The question is empty"), (None, "empty"),
                              ("x" * 1001, "1,001 characters")]:
        with pytest.raises(DemoInputError, match=message):
            demo.check_question(question)


def test_the_notebook_cell_opens_the_app_only_when_someone_can_click():
    assert demo.skip_reason({}) is None
    assert "test suite" in demo.skip_reason({"PYTEST_CURRENT_TEST": "tests/x.py::t (call)"})
    assert demo.skip_reason({"VLM_DEMO": "0"}) == "VLM_DEMO=0 is set"
    assert demo.skip_reason({"VLM_DEMO": "1"}) is None


def test_gradio_is_imported_only_inside_the_demo_functions():
    """The package imports without gradio: only functions of ``vlm_helpers/demo.py`` import it."""
    where = []
    for path in (ROOT / "vlm_helpers").rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
        inside = {id(sub) for function in functions for sub in ast.walk(function)}
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] in ("gradio", "gradio_client") for name in names):
                where.append((path.name, id(node) in inside))
    assert where and all(name == "demo.py" and inside for name, inside in where), where


def test_the_demo_extra_holds_gradio_and_ci_installs_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r for r in extras["demo"] if r.startswith("gradio")], extras["demo"]
    assert 'pip install -e ".[demo]"' in (ROOT / ".ci" / "run").read_text()  # so the slow tier drives the app


def _zero_adapters(model) -> None:
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.zero_()


def test_the_two_answers_come_from_the_base_and_the_adapted_model(tiny_cache):
    """The base answer is the plain checkpoint's, the fine-tuned one the adapted model's; an adapter of zeros
    changes nothing (so equal answers mean the adapter, not the demo, made no difference)."""
    model, processor, collator, generate = demo.tiny_demo_model("florence2", cache_dir=str(tiny_cache))
    image, question = Image.new("RGB", (96, 80), (200, 180, 40)), "What is the total?"
    both = demo.answer_both(model, processor, collator, image, question, **generate)
    rows = [{"id": "q", "image": image, "question": question, "answers": [""]}]
    checkpoint = Path(tiny_cache) / "tiny-florence2"
    plain, _ = lora.load_chat_vlm(checkpoint, quantize_4bit=False, dtype="float32", attn_implementation="eager")
    assert both.base == evaluation.generate_predictions(plain, processor, collator, rows, **generate)[0]
    assert both.finetuned == evaluation.generate_predictions(model, processor, collator, rows, **generate)[0]
    assert both.base != both.finetuned, "a random adapter changes the answer"
    assert both.base_seconds > 0 and both.finetuned_seconds > 0
    _zero_adapters(model)
    again = demo.answer_both(model, processor, collator, image, question, **generate)
    assert again.base == again.finetuned == both.base
    with pytest.raises(TypeError, match="PEFT model"):
        demo.answer_both(plain, processor, collator, image, question, **generate)


def test_a_saved_adapter_is_found_and_loaded_back_as_trained(tiny_cache, tmp_path):
    """What notebook 05's cell does with the adapter the last notebook saved."""
    from vlm_helpers import adapters
    from vlm_helpers.model_choices import get_model_choice

    model, processor, collator, generate = demo.tiny_demo_model("florence2", cache_dir=str(tiny_cache), seed=3)
    image = Image.new("RGB", (96, 80), (20, 90, 200))
    expected = demo.answer_both(model, processor, collator, image, "Who signed it?", **generate)
    assert demo.find_adapters(tmp_path / "outputs") == []
    saved = adapters.save_adapter(model, processor, tmp_path / "outputs" / "06" / "adapter",
                                  base_model=get_model_choice("florence2").model_id)
    assert demo.find_adapters(tmp_path / "outputs") == [saved]
    loaded, loaded_processor, loaded_collator, loaded_generate = demo.load_trained(saved, tiny=True,
                                                                                   cache_dir=str(tiny_cache))
    again = demo.answer_both(loaded, loaded_processor, loaded_collator, image, "Who signed it?",
                             **{**loaded_generate, "max_new_tokens": generate["max_new_tokens"]})
    assert (again.base, again.finetuned) == (expected.base, expected.finetuned)
    with pytest.raises(FileNotFoundError, match="not a saved adapter"):
        demo.load_trained(tmp_path, tiny=True)


# --- slow tier: the real app ---------------------------------------------------------------------------------------


def _gradio():
    return pytest.importorskip("gradio", reason='gradio is not installed: pip install -e ".[demo]" (CI installs it)')


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_cache, tmp_path_factory):
    """The app on a tiny Qwen2-VL with a random adapter, served on a free local port; ``(url, model, ...)``."""
    _gradio()
    model, processor, collator, generate = demo.tiny_demo_model("qwen2-vl", cache_dir=str(tiny_cache))
    examples = demo.example_images(tmp_path_factory.mktemp("examples"))
    app = demo.build_demo(model, processor, collator, tiny=True, examples=examples, **generate)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", model, processor, collator, generate, examples
    app.close()


@pytest.mark.slow
def test_the_app_answers_with_both_models_through_its_http_api(served, tmp_path):
    from gradio_client import Client, handle_file

    url, model, processor, collator, generate, examples = served
    client = Client(url, verbose=False)
    page, question = examples[0]
    base, base_time, tuned, tuned_time = client.predict(handle_file(page), question, api_name="/answer")
    expected = demo.answer_both(model, processor, collator, demo.read_image(page), question, **generate)
    assert (base, tuned) == (demo._shown(expected.base), demo._shown(expected.finetuned))
    assert base != tuned
    assert re.fullmatch(r"\d+\.\d\d s", base_time) and re.fullmatch(r"\d+\.\d\d s", tuned_time)

    saved = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if "lora_B" in name}
    _zero_adapters(model)  # the same app, its adapter now changing nothing: both answers agree
    try:
        base_zero, _, tuned_zero, _ = client.predict(handle_file(page), question, api_name="/answer")
    finally:
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in saved:
                    parameter.copy_(saved[name])
    assert base_zero == tuned_zero == base


@pytest.mark.slow
def test_the_app_answers_bad_input_with_a_message_not_a_traceback(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, *_ , examples = served
    client = Client(url, verbose=False)
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("1", (10_000, 6_000)).save(tmp_path / "huge.png")
    cases = [((None, "What is this?"), "No image yet: upload one"),
             ((handle_file(examples[0][0]), "   "), "The question is empty"),
             ((handle_file(str(tmp_path / "notes.txt")), "What is this?"), "notes.txt is not an image"),
             ((handle_file(str(tmp_path / "huge.png")), "What is this?"), "(60 megapixels); the demo reads images up "
                                                                         "to 50 megapixels")]
    for arguments, message in cases:
        with pytest.raises(AppError) as refused:
            client.predict(*arguments, api_name="/answer")
        assert message in str(refused.value) and "Traceback" not in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(MODEL_CHOICES))
def test_every_family_answers_with_and_without_its_adapter(key, tiny_cache, tmp_path):
    """Each model choice answers both example pictures twice; its random adapter changes the model's logits (a
    tiny twin's text may still agree, e.g. when both answers are only newlines, which the cleaning empties)."""
    import torch

    model, processor, collator, generate = demo.tiny_demo_model(key, cache_dir=str(tiny_cache))
    for image_path, question in demo.example_images(tmp_path):
        image = demo.read_image(image_path)
        both = demo.answer_both(model, processor, collator, image, question, **generate)
        assert isinstance(both.base, str) and isinstance(both.finetuned, str)
    inputs = collator.generation_inputs([{"id": "q", "image": image, "question": question, "answers": [""]}])
    with torch.no_grad():
        with model.disable_adapter():
            base = model(**inputs).logits
        tuned = model(**inputs).logits
    assert not torch.allclose(base, tuned), key


@pytest.mark.slow
def test_the_command_serves_the_tiny_app(tiny_cache):
    """``python -m vlm_helpers.demo --tiny`` (the README's command) serves the app; two answers come back."""
    _gradio()
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, VLM_CACHE=str(tiny_cache), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "vlm_helpers.demo", "--tiny", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(f"127.0.0.1:{port}" in line for line in lines):
            if not select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"http://127.0.0.1:{port}" in line for line in lines), "".join(lines[-20:])
        assert "TINY mode" in "".join(lines)
        page, question = demo.example_images(Path(tiny_cache) / "cli-examples")[0]
        base, _, tuned, _ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(page), question, api_name="/answer")
        assert base and tuned and base != tuned
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_a_browser_clicks_an_example_and_gets_both_answers(served):
    """A headless Chromium: click the aircraft example, ask, read both answers; ask with no image, read the message."""
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="Playwright is not installed (pip install playwright, and a Chromium: "
                                            "apt-get install chromium)")
    if _chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    url, model, processor, collator, generate, examples = served
    photo, prompt = examples[1]
    expected = demo.answer_both(model, processor, collator, demo.read_image(photo), prompt, **generate)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.get_by_role("button", name="Ask both models").click()  # no image yet
            page.get_by_text("No image yet: upload one").first.wait_for(timeout=30_000)
            page.get_by_text("Generate a concise caption").first.click()  # the aircraft example: image and prompt
            # the example loads in its own event: wait until the upload shows it (the two thumbnails, and it)
            loaded = "() => [...document.querySelectorAll('img')].filter(i => i.src.includes('/file=')).length >= 3"
            page.wait_for_function(loaded, timeout=30_000)
            page.get_by_role("button", name="Ask both models").click()
            tuned = page.get_by_label("Fine-tuned (with the adapter)")
            shows = "(want) => [...document.querySelectorAll('textarea')].some(t => t.value === want)"
            page.wait_for_function(shows, arg=demo._shown(expected.finetuned), timeout=60_000)
            assert page.get_by_label("Question").input_value() == prompt
            assert page.get_by_label("Base model (adapter disabled)").input_value() == demo._shown(expected.base)
            assert tuned.input_value() == demo._shown(expected.finetuned)
        finally:
            browser.close()
