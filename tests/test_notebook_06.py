"""Notebook 06 on your own data: run in tiny mode for two model families (a chat model in 4 bits, and
Florence-2, an encoder-decoder with its own collator) and both task kinds.

Each run writes a synthetic image folder with three rows broken on purpose, trains, keeps the best
checkpoint by the validation metric, scores the test split before and after, and writes a model card.
The checks read what the notebook printed and the model card it wrote.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from test_notebooks import NOTEBOOKS, output_problems, outputs_text, run_notebook, run_stages

from vlm_helpers import model_card

NAME = "06_your_data_your_model.ipynb"


def run_with(parameters: str, results_dir, cache_dir):
    """Run notebook 06 with ``parameters`` injected after its parameters cell (as papermill does)."""
    path = NOTEBOOKS / NAME
    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(parameters))
    injected = NOTEBOOKS / f".injected-{abs(hash(parameters))}-{NAME}"
    nbformat.write(notebook, injected)
    try:
        return run_notebook(injected.name, results_dir, cache_dir, timeout=300)
    finally:
        injected.unlink()


VARIANTS = {
    "qa-idefics2-qlora": "",  # the notebook as committed: TASK "qa", MODEL "idefics2" in tiny mode
    # the other kind of model (an encoder-decoder, Florence2Collator) on the other task; captions are learnt
    # faster (notebook 04 trains 60 steps): a shorter run keeps the suite quick
    "captioning-florence2-lora":
        'TASK, MODEL, INSTRUCTION, MAX_STEPS, EVAL_EVERY = "captioning", "florence2", "", 60, 20',
}


@pytest.fixture(scope="module")
def executed_variants(tmp_path_factory, tiny_cache):
    """Both variants side by side (each kernel uses one thread), each into its own results folder."""
    results_dirs = {variant: tmp_path_factory.mktemp("results") for variant in VARIANTS}

    def run(variant):
        parameters, results_dir = VARIANTS[variant], results_dirs[variant]
        return (run_notebook(NAME, results_dir, tiny_cache, timeout=300) if not parameters
                else run_with(parameters, results_dir, tiny_cache))

    return run_stages([sorted(VARIANTS)], run)


@pytest.fixture(params=sorted(VARIANTS))
def executed(request, executed_variants):
    notebooks, errors = executed_variants
    if request.param in errors:
        raise errors[request.param]
    return request.param, notebooks[request.param]


def test_notebook_06_trains_and_the_card_holds_after_above_before(executed):
    variant, notebook = executed
    text = outputs_text(notebook)
    card_path = re.search(r"model card: (\S+README\.md)", text).group(1)
    card = model_card.read_model_card(card_path.rsplit("/", 1)[0])
    task = "qa" if variant.startswith("qa") else "captioning"
    headline = {"qa": "anls", "captioning": "rouge1"}[task]
    assert card["tiny"] and card["metrics_after"][headline] > card["metrics_before"][headline], card
    assert ("QLoRA" if variant.endswith("qlora") else "LoRA") == card["hyperparameters"]["method"]
    printed = re.search(rf"^{headline}\s+([\d.]+) -> ([\d.]+)", text, re.M)
    assert float(printed.group(1)) < float(printed.group(2))  # the notebook's own before/after line agrees
    assert card["best"] is not None and card["best"]["metric"] == f"val_{headline}"
    assert f"best checkpoint: step {card['best']['step']} of" in text
    assert card["data"]["split_seed"] == 42 and card["data"]["counts"]["test"] == 40
    # the model's own collator: Florence-2 reads a task prompt (none for captions), chat models an instruction
    prompt = {"task_prompt": ""} if "florence2" in variant else {"instruction": "Answer briefly."}
    assert {key: card["hyperparameters"].get(key) for key in prompt} == prompt, card["hyperparameters"]


def test_notebook_06_reports_each_broken_row_by_file_and_line_and_runs_clean(executed):
    _, notebook = executed
    text = outputs_text(notebook)
    broken = dict(re.findall(r"(\d+): '(\w+)'", re.search(r"broken lines \{([^}]*)\}", text).group(1)))
    assert sorted(broken.values()) == ["malformed_json", "missing_answer", "missing_image"]
    for line, kind in broken.items():
        reported = re.search(rf"data\.jsonl:{line}: (.*)", text)
        assert reported, f"line {line} ({kind}) is not reported"
        assert {"missing_image": "image file not found", "malformed_json": "malformed JSON",
                "missing_answer": "no value for column"}[kind] in reported.group(1)
    assert "same answers after reloading" in text
    problems = output_problems(notebook)
    assert not problems, "\n".join(problems)


def test_notebook_06_says_its_image_budget_and_what_a_page_costs(executed):
    """The loading cell prints the preset's image budget and what a 1700x2200 page costs under it (tiny twins
    keep their own settings: Idefics2's is its image splitting, Florence-2 takes fixed-size images)."""
    variant, notebook = executed
    line = re.search(r"image budget on preset tiny: (.+); a 1700x2200 page costs ([\d,]+) image tokens",
                     outputs_text(notebook))
    assert line, "notebook 06's loading cell does not say its image budget"
    assert line.group(1) == {"qa-idefics2-qlora": "do_image_splitting=False",
                             "captioning-florence2-lora": "none (the processor's own settings)"}[variant]
    assert int(line.group(2).replace(",", "")) > 0
