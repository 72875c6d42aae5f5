"""Notebook 06 on your own data, run in tiny mode with parameters injected after its parameters cell (as papermill
does): two runs as committed on the synthetic stand-in (a chat model, Qwen2-VL's twin; and Florence-2, an
encoder-decoder with its own collator, on captions), and two on data a user made, in layouts the synthetic set does
not use: a ``;``-separated receipts CSV for Idefics2's twin in 4 bits, set in the parameters cell as a user sets it,
and ShareGPT conversations in a JSON array (``tests/other_data.py``) with ``COLUMNS = None`` for SmolVLM's twin.

Every run trains, keeps the best checkpoint by the validation metric, scores the test split before and after and
writes a model card. The checks read what the notebook printed and the card it wrote: tiny mode reads the user's
file with the twin of the user's model, or says in one line what stands in for it and why (issue 25, finding 1);
conversations without ``COLUMNS`` end with a card (finding 2); the data report prices the largest image in image
tokens under the preset's budget (finding 3); the card describes the data that was loaded (finding 6).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import other_data
import pytest
from PIL import Image

from test_notebooks import NOTEBOOKS, output_problems, outputs_text, run_notebook, run_stages

from vlm_helpers import model_card, model_choices, processors

NAME = "06_your_data_your_model.ipynb"
PLACEHOLDER = "my_data/data.jsonl"  # the parameters cell's DATA, which does not exist


def run_with(parameters: str, results_dir, cache_dir, edits: dict[str, str] | None = None):
    """Run notebook 06 with ``parameters`` injected after its parameters cell (as papermill does), after setting
    the parameters named in ``edits`` in the parameters cell itself, as a user edits it (``{"MODEL": '"smolvlm"'}``
    replaces the line ``MODEL = ...``: what tiny mode does after it then applies, unlike to injected values)."""
    path = NOTEBOOKS / NAME
    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    for name, value in (edits or {}).items():
        source, count = re.subn(rf"^{name} = .*$", lambda _: f"{name} = {value}", notebook.cells[index].source,
                                count=1, flags=re.M)
        assert count == 1, f"the parameters cell has no line {name} = ..."
        notebook.cells[index].source = source
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(parameters))
    injected = NOTEBOOKS / f".injected-{abs(hash((parameters, str(edits))))}-{NAME}"
    nbformat.write(notebook, injected)
    try:
        return run_notebook(injected.name, results_dir, cache_dir, timeout=300)
    finally:
        injected.unlink()


# ------------------------------------------------------------------------------ a user's data, in their layouts

#: Receipts CSV as a spreadsheet in a decimal-comma locale exports it: ``;``-separated, totals like ``3,50 €``, a
#: byte-order mark (Excel's "CSV UTF-8"); the user's ids (``receipt no``) and column names with spaces and capitals,
#: questions spanning two lines (quoted newlines: a record is not a line), accented text,
#: images in a folder with a space, PNG and EXIF-rotated JPEG, a very large (6000 x 4000) and a very small (12 x 9)
#: image, a row whose image is missing and one whose answer is empty (both skipped and listed in tiny mode).
RECEIPT_COLUMNS = dict(image="scan file", question="Question", answer="expected answer", id="receipt no")
LARGE, SMALL = (6000, 4000), (12, 9)
CSV_ROWS = 48  # good rows; MAX_ROWS = 40 keeps the first 40 of them


def receipts_csv(folder: Path) -> dict:
    """Write ``folder/receipts.csv`` and its scans; return what a correct run must find."""
    scans = folder / "scans 2024"
    scans.mkdir(parents=True)
    stores = ["Café Müller", "Bäckerei Sonne", "A&B Traders", "Élan Vital"]
    lines = ["\ufeffreceipt no;scan file;Question;expected answer"]
    line, where, bad = 1, {}, {}
    for index in range(CSV_ROWS + 2):
        row_id = f"R-{index:03d}"
        size = LARGE if index == 7 else SMALL if index == 11 else (64 + index % 5 * 8, 96)
        name = f"scans 2024/{row_id}.{'jpg' if index % 3 == 0 else 'png'}"
        image = Image.new("RGB", size, (40 * (index % 6), 120, 200 - 30 * (index % 4)))
        if index % 3 == 0:  # a phone's JPEG, stored sideways with an EXIF orientation
            exif = Image.Exif()
            exif[0x0112] = 6
            image.save(folder / name, format="JPEG", exif=exif)
        else:
            image.save(folder / name)
        question, answer = (f'"Which store\nis receipt {index}?"', stores[index % 4]) if index % 2 else \
            (f"What is the total of receipt {index}?", f"{index % 7},50 €")
        if index == 5:  # the image is missing
            name, bad[index] = "scans 2024/lost.png", "image file not found"
        if index == 9:  # an empty answer
            answer, bad[index] = '""', "empty"
        line += 1
        where[row_id] = line
        lines.append(f"{row_id};{name};{question};{answer}")
        line += question.count("\n")
    (folder / "receipts.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": folder / "receipts.csv", "lines": where,
            "bad": {f"R-{index:03d}": why for index, why in bad.items()}}


# ------------------------------------------------------------------------------ the runs

SHORT = "MAX_STEPS, EVAL_EVERY = 20, 10"  # the runs on a user's data check the path, not learning: fewer steps


def variants(folder: Path) -> dict[str, tuple[dict[str, str], str, dict]]:
    """``{variant: (parameters set in the parameters cell, parameters injected after it, what was written)}``; the
    user's data is written under ``folder``."""
    receipts = receipts_csv(folder / "receipts")
    chats = other_data.sharegpt(folder / "chats", container="json")  # one indented array, non-Latin text
    return {
        "qa-qwen2-vl-synthetic": ({}, "", {}),  # the notebook as committed: DATA is the placeholder, MODEL "qwen2-vl"
        # the other kind of model (an encoder-decoder, Florence2Collator) on the other task; captions are learnt
        # faster (notebook 04 trains 60 steps): a shorter run keeps the suite quick
        "captioning-florence2-synthetic":
            ({}, 'TASK, MODEL, INSTRUCTION, MAX_STEPS, EVAL_EVERY = "captioning", "florence2", "", 60, 20', {}),
        # a user's CSV and another model, set in the parameters cell as a user sets them
        "receipts-csv-idefics2-qlora":
            ({"DATA": repr(str(receipts["path"])), "COLUMNS": f"Columns(**{RECEIPT_COLUMNS!r})", "MODEL": '"idefics2"'},
             f"MAX_ROWS = 40\n{SHORT}", receipts),
        "chats-smolvlm-conversations":
            ({}, f'DATA, DATA_FORMAT, COLUMNS, MODEL = {str(chats.path)!r}, "conversations", None, "smolvlm"\n'
                 f"{SHORT}", chats),
        # every other model choice, on the synthetic stand-in (issue 28: MODEL = "<key>" works in tiny mode)
        **{f"qa-{key}-synthetic": ({}, f"MODEL = {key!r}\n{SHORT}", {}) for key in OTHER_CHOICES},
    }


#: The model choices the four runs above do not train: each runs the notebook as committed but for MODEL.
OTHER_CHOICES = sorted(set(model_choices.MODEL_CHOICES) - {"qwen2-vl", "florence2", "idefics2", "smolvlm"})
DEFAULT = "qa-qwen2-vl-synthetic"  # the notebook as committed: part of the tiny series, in the fast tier
SLOW = pytest.mark.slow  # the other data and models: the slow tier (README, "Run the tests"), `python -m pytest -m slow`
#: what the tests that read a run directly need (the parametrized ones name theirs in their parameters)
NEEDS = {"test_tiny_mode_reads_the_users_file_with_the_twin_of_the_users_model": {"receipts-csv-idefics2-qlora"},
         "test_conversations_without_columns_finish_with_a_card_that_describes_the_layout":
             {"chats-smolvlm-conversations"},
         "test_the_data_report_prices_the_largest_image_under_the_presets_budget":
             {"receipts-csv-idefics2-qlora", DEFAULT}}
ORDER = ["qa-qwen2-vl-synthetic", "captioning-florence2-synthetic", "receipts-csv-idefics2-qlora",
         "chats-smolvlm-conversations"] + [f"qa-{key}-synthetic" for key in OTHER_CHOICES]  # the longer runs first


@pytest.fixture(scope="module")
def executed_variants(request, tmp_path_factory, tiny_cache):
    """The variants this session's selected tests need, two side by side (each kernel uses one thread), each into
    its own results folder."""
    wanted = set()
    for item in request.session.items:
        if item.module is request.module:
            params = getattr(item, "callspec", None)
            wanted |= {value for name, value in (params.params.items() if params else ())
                       if name in ("executed", "synthetic")}
            wanted |= NEEDS.get(item.originalname, set())
    runs = {variant: run for variant, run in variants(tmp_path_factory.mktemp("users-data")).items() if variant in wanted}
    results_dirs = {variant: tmp_path_factory.mktemp("results") for variant in runs}

    def run(variant):
        edits, parameters, _ = runs[variant]
        return (run_notebook(NAME, results_dirs[variant], tiny_cache, timeout=300) if not parameters
                else run_with(parameters, results_dirs[variant], tiny_cache, edits))

    notebooks, errors = run_stages([[variant for variant in ORDER if variant in runs]], run)
    return notebooks, errors, {variant: written for variant, (_, _, written) in runs.items()}


def _executed(variant: str, executed_variants):
    """``(variant, notebook, printed text, card read back, card path, the user's data written for it)``."""
    notebooks, errors, written = executed_variants
    if variant in errors:
        raise errors[variant]
    notebook = notebooks[variant]
    text = outputs_text(notebook)
    card_path = Path(re.search(r"model card: (\S+README\.md)", text).group(1))
    return variant, notebook, text, model_card.read_model_card(card_path.parent), card_path, written[variant]


@pytest.fixture(params=[DEFAULT, pytest.param("captioning-florence2-synthetic", marks=SLOW),
                        pytest.param("receipts-csv-idefics2-qlora", marks=SLOW),
                        pytest.param("chats-smolvlm-conversations", marks=SLOW)]
                + [pytest.param(f"qa-{key}-synthetic", marks=SLOW) for key in OTHER_CHOICES])
def executed(request, executed_variants):
    return _executed(request.param, executed_variants)


@pytest.fixture(params=[DEFAULT, pytest.param("captioning-florence2-synthetic", marks=SLOW)])
def synthetic(request, executed_variants):
    return _executed(request.param, executed_variants)


def test_notebook_06_runs_clean_and_the_reloaded_adapter_answers_the_same(executed):
    _, notebook, text, _, _, _ = executed
    assert "same answers after reloading" in text
    problems = output_problems(notebook)
    assert not problems, "\n".join(problems)


def test_notebook_06_trains_and_the_card_holds_after_above_before(synthetic):
    variant, _, text, card, _, _ = synthetic
    task = "qa" if variant.startswith("qa") else "captioning"
    headline = {"qa": "anls", "captioning": "rouge1"}[task]
    assert card["tiny"] and card["metrics_after"][headline] > card["metrics_before"][headline], card
    assert card["hyperparameters"]["method"] == "LoRA"
    printed = re.search(rf"^{headline}\s+([\d.]+) -> ([\d.]+)", text, re.M)
    assert float(printed.group(1)) < float(printed.group(2))  # the notebook's own before/after line agrees
    assert card["best"] is not None and card["best"]["metric"] == f"val_{headline}"
    assert f"best checkpoint: step {card['best']['step']} of" in text
    assert card["data"]["split_seed"] == 42 and card["data"]["counts"]["test"] == 40
    # the model's own collator: Florence-2 reads a task prompt (none for captions), chat models an instruction
    prompt = {"task_prompt": ""} if "florence2" in variant else {"instruction": "Answer briefly."}
    assert {key: card["hyperparameters"].get(key) for key in prompt} == prompt, card["hyperparameters"]


def test_tiny_mode_says_in_one_line_what_stands_in_for_data_it_cannot_read(synthetic):
    """DATA as committed is a placeholder that does not exist: one printed line names it, says why and what stands
    in; the card says the rows were a synthetic stand-in. The broken rows of the stand-in are named by file and
    line."""
    variant, _, text, card, _, _ = synthetic
    said = [line for line in text.splitlines() if line.startswith("tiny mode:")]
    assert len(said) == 1, said
    assert re.fullmatch(rf"tiny mode: DATA = '{PLACEHOLDER}' is not on this machine \(no such file or folder\), so a "
                        r"synthetic folder stands in for DATA and COLUMNS: \S+data\.jsonl, 400 good rows and broken "
                        r"lines \{.*\}", said[0]), said[0]
    assert card["data"]["source"] == "data.jsonl" and "synthetic" in card["data"]["note"]
    assert PLACEHOLDER in card["data"]["note"]
    broken = dict(re.findall(r"(\d+): '(\w+)'", re.search(r"broken lines \{([^}]*)\}", text).group(1)))
    assert sorted(broken.values()) == ["malformed_json", "missing_answer", "missing_image"]
    for line, kind in broken.items():
        reported = re.search(rf"data\.jsonl:{line}: (.*)", text)
        assert reported, f"line {line} ({kind}) is not reported"
        assert {"missing_image": "image file not found", "malformed_json": "malformed JSON",
                "missing_answer": "no value for column"}[kind] in reported.group(1)
    assert card["data"]["skipped"]["train"] == 3 and sum(card["data"]["skipped_reasons"].values()) == 3


@SLOW
def test_tiny_mode_reads_the_users_file_with_the_twin_of_the_users_model(executed_variants):
    """DATA set to a user's CSV and MODEL to Idefics2 in the parameters cell: tiny mode reads that file (its first
    MAX_ROWS rows, its ids, its broken rows named by file and line, quoted newlines counted) with Idefics2's twin in
    4 bits; nothing stands in for it. The card names the file by its name only and its columns as given."""
    _, _, text, card, card_path, receipts = _executed("receipts-csv-idefics2-qlora", executed_variants)
    source = receipts["path"]
    assert card["data"]["source"] == "receipts.csv"
    assert card["front_matter"]["base_model"] == "HuggingFaceM4/idefics2-8b"
    assert f"tiny mode: reading your DATA ({source}) with a tiny twin of MODEL" in text
    assert "stands in" not in text and "synthetic" not in card["data"].get("note", "")
    for row_id, why in receipts["bad"].items():  # named by the line its record starts on
        line = receipts["lines"][row_id]
        assert re.search(rf"receipts\.csv:{line} \(id={row_id}\): .*{why}", text), (row_id, line)
    assert "MAX_ROWS = 40: train 40 rows" in text
    assert card["hyperparameters"]["method"] == "QLoRA" and card["title"].endswith(model_card_label())
    data = card["data"]
    assert data["source"] == "receipts.csv"
    assert data["fields"] == {"id": "receipt no", "image": "scan file", "question": "Question",
                              "answer": "expected answer"}
    assert data["format"].startswith("CSV") and "semicolon" in data["format"] and data["read"] == CSV_ROWS + 2
    assert sum(data["counts"].values()) == 40 and data["counts"]["test"] == 4
    assert data["skipped_reasons"] == {"image file not found": 1, "answer 0 is empty": 1}
    assert "the largest 6000x4000 px" in data["images"] and data["metric"].startswith("anls")
    written = card_path.read_text()
    assert str(source.parent) not in written and "/tmp" not in written  # no path of the user's machine
    # the ids in the data report are the user's, with the line each row was read from
    assert re.search(rf"largest image: 6000x4000 px, row R-007 \(receipts\.csv:{receipts['lines']['R-007']}\): "
                     r"\d+ image tokens for idefics2 on preset tiny", text)


@SLOW
def test_conversations_without_columns_finish_with_a_card_that_describes_the_layout(executed_variants):
    """``DATA_FORMAT = "conversations"`` and ``COLUMNS = None`` (the README: conversations need no Columns), on
    ShareGPT conversations in one JSON array (``tests/other_data.py``): the run trains and writes its card, whose
    roles are the conversation's parts (it once crashed reading ``COLUMNS.fields()`` after training)."""
    _, _, text, card, _, chats = _executed("chats-smolvlm-conversations", executed_variants)
    data = card["data"]
    assert card["front_matter"]["base_model"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert data["source"] == "sharegpt.json" and data["format"].startswith("conversations")
    assert "ShareGPT" in data["format"]  # the layout the loader found
    assert data["fields"] == model_card.CONVERSATION_FIELDS
    assert data["read"] == len(chats.ids) == sum(data["counts"].values()) and "skipped_reasons" not in data
    assert "rows have a system turn" in text


@SLOW
def test_the_data_report_prices_the_largest_image_under_the_presets_budget(executed_variants, tiny_cache):
    """The one-screen report before training: the largest image in image tokens as the loaded processor (with the
    preset's budget) makes it, and what the budget does to a 4032x3024 phone photo; the metric and why."""
    from vlm_helpers import lora, model_choices
    from vlm_helpers.data.report import LARGE_PHOTO
    from vlm_helpers.tiny import tiny_checkpoint

    _, _, text, _, _, receipts = _executed("receipts-csv-idefics2-qlora", executed_variants)
    choice = model_choices.get_model_choice("idefics2")
    twin = tiny_checkpoint(choice.tiny_name, tiny_cache)
    budgeted = lora.load_chat_processor(twin, image_budget=choice.image_budget("tiny"))
    tokens = processors.image_tokens(budgeted, LARGE)
    assert (f"largest image: 6000x4000 px, row R-007 (receipts.csv:{receipts['lines']['R-007']}): {tokens:,} image "
            f"tokens for idefics2 on preset tiny (without the budget: "
            f"{processors.image_tokens(lora.load_chat_processor(twin), LARGE):,})") in text
    photo = [processors.image_tokens(processor, LARGE_PHOTO) for processor in (lora.load_chat_processor(twin),
                                                                                  budgeted)]
    assert photo[0] == photo[1]  # the twin does not split images anyway
    assert (f"image budget: do_image_splitting=False; a 4032x3024 phone photo would cost {photo[1]:,} image tokens, "
            "with or without it") in text
    assert "metric: anls on the validation split chooses the best checkpoint; " in text
    _, _, text, _, _, _ = _executed("qa-qwen2-vl-synthetic", executed_variants)
    assert re.search(r"image budget: max_pixels=1,003,520; a 4032x3024 phone photo would cost 15,552 image tokens "
                     r"without it, 1,2\d\d with it", text)


def test_notebook_06_says_its_image_budget_and_what_a_page_costs(executed):
    """The loading cell prints the preset's image budget and what a 1700x2200 page costs under it (tiny twins
    keep their own settings, Idefics2's is its image splitting, Florence-2 takes fixed-size images; Qwen2-VL's twin
    has the published processor settings, so tiny mode applies the T4 budget to it too)."""
    variant, _, text, _, _, _ = executed
    line = re.search(r"image budget on preset tiny: (.+); a 1700x2200 page costs ([\d,]+) image tokens", text)
    assert line, "notebook 06's loading cell does not say its image budget"
    expected = {"qa-qwen2-vl-synthetic": "max_pixels=1,003,520",
                "captioning-florence2-synthetic": "none (the processor's own settings)",
                "receipts-csv-idefics2-qlora": "do_image_splitting=False",
                "chats-smolvlm-conversations": "none (the processor's own settings)"}
    for key in OTHER_CHOICES:  # the other choices' runs: their tiny preset's budget, as the package states it
        expected[f"qa-{key}-synthetic"] = processors.budget_text(model_choices.get_model_choice(key).image_budget("tiny"))
    assert line.group(1) == expected[variant]
    assert int(line.group(2).replace(",", "")) > 0
    if variant.startswith("qa-qwen2-vl"):
        assert "a 1700x2200 page costs 1,240 image tokens (without it: 4,819)" in text


def model_card_label() -> str:
    from vlm_helpers.runtime import mode_label

    return mode_label(True)
