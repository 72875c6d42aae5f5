"""Notebook 06's data before training (issue 25): what tiny mode reads (finding 1), the one-screen data report with
the largest image priced in image tokens under the preset's budget (finding 3), on a user's data in a layout of
their own (ids and column names of theirs, a very large and a very small image, a broken line, a corrupt image).

The notebook runs themselves are in ``tests/test_notebook_06.py``; these are the package functions they call.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from vlm_helpers import lora, model_choices, processors
from vlm_helpers.data.formats import Columns, load_your_data
from vlm_helpers.data.splits import train_validation_test
from vlm_helpers.data.report import LARGE_PHOTO, headline_metric, reason_kind, source_label, your_data_report
from vlm_helpers.data.validation import clean_dataset
from vlm_helpers.tiny.synthetic_your_data import synthetic_columns, tiny_data

COLUMNS = Columns(image="photo", question="ask", answer="reply", id="uid")
LARGE = (6000, 4000)
KEYS = dict(question_key="question", answer_key="answers", id_key="id")


def users_jsonl(folder: Path, rows: int = 24) -> Path:
    """A user's JSONL: their ids and key names, images next to it and in a sub-folder, one 6000 x 4000 photo (row
    u-05), one 12 x 9 image, a line whose image is missing (line 3) and an image file that is not an image (u-10)."""
    (folder / "pics").mkdir(parents=True)
    lines = []
    for index in range(rows):
        size = LARGE if index == 5 else (12, 9) if index == 8 else (60 + index, 40)
        name = f"pics/{index}.png"
        if index == 10:
            (folder / name).write_bytes(b"not a png")
        else:
            Image.new("RGB", size, (index * 9 % 255, 90, 160)).save(folder / name)
        lines.append({"uid": f"u-{index:02d}", "photo": name if index != 2 else "pics/gone.png",
                      "ask": f"What is shown in {index}?", "reply": ["a square", "square"] if index % 2 else "a box"})
    path = folder / "mine.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- tiny_data

def test_tiny_mode_reads_the_users_data_as_it_is_when_it_is_here(tmp_path):
    path = users_jsonl(tmp_path / "d")
    for data in (path, str(path), {"train": path}, tmp_path / "d"):  # a file, its name, split files, a folder
        chosen = tiny_data(data, COLUMNS, format="jsonl", task="qa")
        assert (chosen.source, chosen.columns, chosen.format) == (data, COLUMNS, "jsonl")
        assert not chosen.replaced and chosen.note is None and "\n" not in chosen.line
        assert chosen.line.startswith("tiny mode: reading your DATA")
    assert not list((tmp_path / "d").glob("*.jsonl"))[1:]  # nothing was written next to the user's data


@pytest.mark.parametrize("data,why", [
    ("my_data/data.jsonl", "DATA = 'my_data/data.jsonl' is not on this machine (no such file or folder)"),
    ("someone/receipts", "DATA = 'someone/receipts' is a Hub id, and tiny mode downloads nothing"),
    (None, "DATA is None"),
    ({"train": "here.jsonl", "test": "gone.jsonl"},
     "DATA names files that are not on this machine (test='gone.jsonl')"),
])
def test_tiny_mode_says_in_one_line_what_stands_in_for_data_it_cannot_read_and_why(data, why, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.jsonl").write_text("{}\n")
    chosen = tiny_data(data, COLUMNS, format="conversations", task="captioning", folder=tmp_path / "stand-in",
                       rows=6)
    assert chosen.replaced and "\n" not in chosen.line
    assert chosen.line.startswith(f"tiny mode: {why}, so a synthetic folder stands in for DATA and COLUMNS "
                                  "(and DATA_FORMAT 'conversations'): ")
    assert str(tmp_path / "stand-in" / "data.jsonl") in chosen.line and "6 good rows" in chosen.line
    assert chosen.note == f"a synthetic image folder written by tiny mode: {why}"
    assert chosen.columns == synthetic_columns("captioning") and chosen.format == "auto"
    splits, report = load_your_data(chosen.source, chosen.columns, format=chosen.format, on_bad="skip")
    assert len(splits["train"]) == 6 and report.skipped == 3  # the three rows broken on purpose


# ---------------------------------------------------------------------------------------------- the report

@pytest.fixture(scope="module")
def qwen2_vl_processors(tiny_cache):
    """Qwen2-VL's twin (its published processor settings) with the T4 budget and without it."""
    from vlm_helpers.tiny import tiny_checkpoint

    choice = model_choices.get_model_choice("qwen2-vl")
    twin = tiny_checkpoint(choice.tiny_name, tiny_cache)
    return choice.image_budget("t4"), lora.load_chat_processor(twin, image_budget=choice.image_budget("t4")), \
        lora.load_chat_processor(twin)


def loaded(folder: Path, processor):
    """The notebook's steps up to the report: load (skipping), hold out, check every split."""
    splits, load_report = load_your_data(users_jsonl(folder), COLUMNS, on_bad="skip")
    train, validation, test, _ = train_validation_test(splits, seed=1, validation_fraction=0.2, test_fraction=0.2)
    used, checks = {}, []
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        used[name], check = clean_dataset(rows, split=name, on_bad="skip", processor=processor, **KEYS)
        checks.append(check)
    return used, load_report, checks


def test_the_report_prices_the_largest_image_with_the_budget_and_without(tmp_path, qwen2_vl_processors):
    budget, budgeted, unbudgeted = qwen2_vl_processors
    used, load_report, checks = loaded(tmp_path / "d", budgeted)
    report = your_data_report(used, task="qa", load_report=load_report, checks=checks, processor=budgeted,
                              processor_without_budget=unbudgeted, budget=budget, model="qwen2-vl", preset="t4")
    assert report.costs.largest == LARGE and report.costs.largest_row == "u-05 (mine.jsonl:6)"
    assert report.largest_tokens == processors.image_tokens(budgeted, LARGE) <= 1_280
    assert report.largest_tokens_without == processors.image_tokens(unbudgeted, LARGE) > 15_000
    assert report.photo_tokens_without == 15_552 and report.photo_tokens <= 1_280  # a 4032 x 3024 phone photo
    screen = str(report)
    assert (f"largest image: 6000x4000 px, row u-05 (mine.jsonl:6): {report.largest_tokens:,} image tokens for "
            f"qwen2-vl on preset t4 (without the budget: {report.largest_tokens_without:,})") in screen
    assert (f"image budget: max_pixels=1,003,520; a 4032x3024 phone photo would cost 15,552 image tokens without "
            f"it, {report.photo_tokens:,} with it") in screen
    # rows per split, what was left out and where (the loader's by file name and line, the checks' by origin)
    assert report.rows == {name: len(rows) for name, rows in used.items()} and sum(report.rows.values()) == 22
    assert [(line.stage, line.where, line.id) for line in report.skipped] == [
        ("read", "mine.jsonl:3", "u-02"), ("checks", "mine.jsonl:11", "u-10")]
    assert report.skipped_by_reason() == {"image file not found": 1, reason_kind(report.skipped[1].reason): 1}
    assert "read 24 rows from mine.jsonl (jsonl): kept 23, skipped 1" in screen
    assert "rows per split: " in screen and "(22 used; 1 more left out by the checks)" in screen
    assert "    mine.jsonl:3 (id=u-02): image file not found" in screen
    assert "answers: " in screen and "; tokens min " in screen  # answer lengths in the model's tokens
    assert "metric: anls on the validation split chooses the best checkpoint; " in screen
    assert len(screen.splitlines()) <= 20  # one screen


def test_the_report_needs_no_model_and_says_so_little(tmp_path):
    """Without a processor (the model card's use): sizes and counts, no token prices."""
    used, load_report, checks = loaded(tmp_path / "d", None)
    report = your_data_report(used, task="captioning", load_report=load_report, checks=checks)
    assert report.largest_tokens is None and report.photo_tokens is None and report.costs.answer_tokens is None
    assert report.metric == "rouge1" and "largest image: 6000x4000 px, row u-05 (mine.jsonl:6)\n" in str(report)
    assert "image budget" not in str(report)


def test_a_long_list_of_skipped_rows_is_counted_not_printed_in_full(tmp_path):
    folder = tmp_path / "d"
    path = users_jsonl(folder)
    text = path.read_text() + "".join(f'{{"uid": "x{index}", "photo": "pics/none{index}.png", "ask": "?", '
                                      f'"reply": "a"}}\n' for index in range(12))
    path.write_text(text)
    splits, load_report = load_your_data(path, COLUMNS, on_bad="skip")
    screen = str(your_data_report(splits, task="qa", load_report=load_report))
    assert "skipped 13: 13 image file not found" in screen
    assert screen.count("image file not found: ") == 6 and "... and 7 more" in screen


def test_the_metric_for_each_task_and_why():
    assert headline_metric("qa")[0] == "anls" and "partial credit" in headline_metric("qa")[1]
    assert headline_metric("captioning")[0] == "rouge1" and "words" in headline_metric("captioning")[1]
    with pytest.raises(ValueError, match="TASK must be one of"):
        headline_metric("docvqa")


def test_a_source_is_shown_by_its_name(tmp_path):
    path = users_jsonl(tmp_path / "secret project")
    assert source_label(str(path)) == "mine.jsonl" and source_label("org/name") == "org/name"
    assert source_label(f"train={path}, test={path}") == "train=mine.jsonl, test=mine.jsonl"
    assert source_label("/nowhere/else/data.csv") == "data.csv"  # an absolute path never whole


def test_reason_kinds_drop_the_particulars():
    assert reason_kind("image file not found: /a/b/c.png (from 'c.png')") == "image file not found"
    assert reason_kind("malformed JSON: Expecting ',' delimiter (column 101)") == "malformed JSON"
    assert reason_kind("no value for column 'answers'; this row has ['a']") == "no value for column 'answers'"


def test_splits_with_no_rows_are_refused():
    empty = datasets.Dataset.from_dict({"id": [], "question": []})
    with pytest.raises(ValueError, match="no rows to report on"):
        your_data_report({"train": empty}, task="qa")


def test_qwen2_vl_in_tiny_mode_keeps_a_users_photo_to_the_t4_budget(qwen2_vl_processors, tiny_cache):
    """Qwen2-VL's twin keeps the published processor settings, so in tiny mode a user's phone photo would be 15,552
    image tokens (about a minute per training step of the twin on a CPU) without the T4 budget."""
    from vlm_helpers.tiny import tiny_checkpoint

    choice = model_choices.get_model_choice("qwen2-vl")
    assert choice.image_budget("tiny") == choice.image_budget("t4")
    processor = lora.load_chat_processor(tiny_checkpoint(choice.tiny_name, tiny_cache),
                                         image_budget=choice.image_budget("tiny"))
    assert processors.image_tokens(processor, LARGE_PHOTO) <= 1_280
