"""The "your data" loaders: every format, and every bad row named by file and line before anything trains."""

from __future__ import annotations

import io
import json
import math
import os
import statistics
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from vlm_helpers.data.canonical import CANONICAL_FEATURES, BadRow, DataFormatError
from vlm_helpers.data.conversations import load_conversations
from vlm_helpers.data.formats import Columns, load_hf_dataset, load_jsonl_or_csv, load_your_data
from vlm_helpers.data.splits import split_off_validation
from vlm_helpers.data.report import data_report, summarise
from vlm_helpers.data.validation import DataValidationError, clean_dataset
from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

QA = Columns(image="image", question="question", answer="answer")
CLEAN_KEYS = {"question_key": "question", "answer_key": "answers", "image_key": "image", "id_key": "id"}


def _png(path: Path, size: tuple[int, int], colour=(200, 30, 30), *, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, format="PNG" if orientation is None else "JPEG", exif=exif)
    return path


def _lines(path: Path, lines: list) -> Path:
    """Write JSONL lines: dicts are dumped, strings written as they are (blank or malformed lines)."""
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines),
                    encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's folder: two images in a sub-folder, one next to the file; one elsewhere (absolute paths)."""
    data = tmp_path / "my data"
    _png(data / "images" / "a.png", (32, 24))
    _png(data / "images" / "b.png", (80, 60), (10, 200, 10))
    _png(data / "c.png", (16, 16))
    _png(tmp_path / "elsewhere" / "d.png", (50, 40))
    return data


def _good(folder: Path) -> list:
    return [{"image": "images/a.png", "question": "What colour?", "answer": "red"},
            "",  # a blank line: skipped, but counted
            {"image": "c.png", "question": "How big?", "answer": ["small", "tiny"]},
            {"image": str(folder.parent / "elsewhere" / "d.png"), "question": "Where?", "answer": "elsewhere"}]


# ------------------------------------------------------------------ JSONL and CSV

def test_jsonl_rows_with_relative_subfolder_and_absolute_image_paths(folder):
    path = _lines(folder / "data.jsonl", _good(folder))
    dataset, report = load_jsonl_or_csv(path, QA)
    assert dataset.features == CANONICAL_FEATURES
    assert dataset["id"] == ["data.jsonl:1", "data.jsonl:3", "data.jsonl:4"]  # the blank line 2 still counts
    assert dataset["answers"] == [["red"], ["small", "tiny"], ["elsewhere"]]
    assert dataset["question"] == ["What colour?", "How big?", "Where?"]
    assert [image.size for image in dataset["image"]] == [(32, 24), (16, 16), (50, 40)]
    raw = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    assert [item["bytes"] for item in raw] == [None] * 3  # paths only: decoded when a row is read
    assert raw[0]["path"] == os.path.join(folder, "images", "a.png")
    assert (report.read, report.kept, report.skipped, report.splits) == (3, 3, 0, {"train": 3})


def test_image_root_replaces_the_files_folder(folder, tmp_path):
    listing = tmp_path / "lists" / "data.jsonl"
    listing.parent.mkdir()
    _lines(listing, [{"image": "images/b.png", "question": "Q?", "answer": "green"}])
    with pytest.raises(DataFormatError, match="image file not found"):
        load_jsonl_or_csv(listing, QA)  # relative to the file's folder there is no images/b.png
    dataset, _ = load_jsonl_or_csv(listing, QA, image_root=folder)
    assert dataset[0]["image"].size == (80, 60)


def test_an_id_column_and_a_captioning_prompt(folder):
    path = _lines(folder / "captions.jsonl", [{"uid": 7, "file": "images/a.png", "caption": "a red square"},
                                               {"uid": "x8", "file": "images/b.png", "caption": "a green one"}])
    columns = Columns(image="file", question=None, answer="caption", id="uid", prompt="Describe the image.")
    dataset, _ = load_jsonl_or_csv(path, columns)
    assert dataset["id"] == ["7", "x8"]
    assert dataset["question"] == ["Describe the image."] * 2
    assert dataset["answers"] == [["a red square"], ["a green one"]]


@pytest.mark.parametrize("bad, line, fragments", [
    ({"image": "images/nope.png", "question": "Q?", "answer": "a"}, 2,
     ["image file not found", os.path.join("images", "nope.png"), "from 'images/nope.png'"]),
    ({"image": "images/a.png", "question": "Q?"}, 2, ["no value for column 'answer'", "['image', 'question']"]),
    ('{"image": "images/a.png", "question": "Q?", "answer": "a"', 2, ["malformed JSON", "column"]),
    ({"image": "images/a.png", "question": "Q?", "answer": 42}, 2,
     ["'answer' must be a string or a list of strings, got 42"]),
    ({"image": "images/a.png", "question": "Q?", "answer": ["a", 3]}, 2, ["list of strings, got ['a', 3]"]),
    ({"image": "images/a.png", "question": 5, "answer": "a"}, 2, ["question 'question' must be a string"]),
    ('[1, 2]', 2, ["expected a JSON object", "got a JSON list"]),
], ids=["missing image", "missing column", "malformed line", "int answer", "mixed list", "int question", "array"])
def test_a_bad_jsonl_row_is_named_by_file_and_line_in_both_modes(folder, bad, line, fragments):
    good = {"image": "images/b.png", "question": "Colour?", "answer": "green"}
    path = _lines(folder / "data.jsonl", [good, bad, good])
    with pytest.raises(DataFormatError) as raised:
        load_jsonl_or_csv(path, QA, on_bad="raise")
    message = str(raised.value)
    assert message.startswith(f"[{path}:{line}] ")
    assert all(fragment in message for fragment in fragments), message
    assert isinstance(raised.value, DataValidationError) and raised.value.line == line

    dataset, report = load_jsonl_or_csv(path, QA, on_bad="skip")
    assert dataset["id"] == ["data.jsonl:1", "data.jsonl:3"]
    assert [(row.file, row.line) for row in report.skipped_rows] == [(str(path), line)]
    assert all(fragment in report.skipped_rows[0].reason for fragment in fragments)
    assert f"{path}:{line}: " in str(report) and "kept 2, skipped 1" in str(report)


def test_a_repeated_id_names_both_lines(folder):
    rows = [{"id": "r1", "image": "images/a.png", "question": "Q?", "answer": "a"}] * 2
    path = _lines(folder / "data.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"\[.*data.jsonl:2, id=r1\] id 'r1' is used again \(first on line 1\)"):
        load_jsonl_or_csv(path, Columns(image="image", question="question", answer="answer", id="id"))


def test_skip_mode_still_refuses_a_file_without_one_usable_row(folder):
    path = _lines(folder / "data.jsonl", ["{not json", {"image": "images/a.png"}])
    with pytest.raises(DataFormatError, match=r"no usable rows \(2 read\); first problem: .*data.jsonl:1: malformed"):
        load_jsonl_or_csv(path, QA, on_bad="skip")


def test_csv_with_a_bom_a_quoted_newline_and_bad_lines(folder):
    path = folder / "data.csv"
    path.write_text('\ufeffimage,question,answer\n'
                    'images/a.png,"Two\nlines?",red\n'  # one record on lines 2-3
                    '\n'
                    'images/gone.png,Q?,x\n'  # line 5
                    'c.png,Size?\n'  # line 6: a value short
                    f'{folder.parent / "elsewhere" / "d.png"},Where?,far\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"^\[{path}:5\] image file not found: .*gone.png"):
        load_jsonl_or_csv(path, QA)
    dataset, report = load_jsonl_or_csv(path, QA, on_bad="skip")
    assert dataset["id"] == ["data.csv:2", "data.csv:7"]
    assert dataset["question"] == ["Two\nlines?", "Where?"] and dataset["answers"] == [["red"], ["far"]]
    assert [(row.line, row.reason) for row in report.skipped_rows][1] == (
        6, "the line has 2 values, the header has 3 columns")
    assert report.skipped_rows[0].line == 5


def test_csv_header_without_a_column_is_refused_in_both_modes(folder):
    path = folder / "data.csv"
    path.write_text("image,question,text\nimages/a.png,Q?,red\n")
    for on_bad in ("raise", "skip"):
        with pytest.raises(DataFormatError) as raised:
            load_jsonl_or_csv(path, QA, on_bad=on_bad)
        assert str(raised.value) == (f"[{path}:1] the header has no column 'answer'; its columns are "
                                     "['image', 'question', 'text']")


def test_missing_files_unknown_suffixes_and_bad_columns_are_refused(folder):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_jsonl_or_csv(folder / "nope.jsonl", QA)
    (folder / "data.json").write_text("[]")  # a JSON array with no rows
    with pytest.raises(DataFormatError, match=r"data\.json\] no usable rows \(0 read\)"):
        load_jsonl_or_csv(folder / "data.json", QA)
    (folder / "data.parquet").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format from the extension '.parquet'"):
        load_jsonl_or_csv(folder / "data.parquet", QA)
    with pytest.raises(ValueError, match="either question="):
        Columns(image="image", question="question", answer="answer", prompt="Describe.")
    with pytest.raises(ValueError, match="either question="):
        Columns(image="image", question=None, answer="answer")
    with pytest.raises(ValueError, match="one part only"):
        Columns(image="x", question="x", answer="answer")


def test_one_file_per_split_and_a_missing_columns_argument(folder):
    train = _lines(folder / "train.jsonl", [{"image": "images/a.png", "question": "Q?", "answer": "a"},
                                            '{"broken": ', {"image": "images/b.png", "question": "Q?", "answer": "b"}])
    (folder / "val.csv").write_text("image,question,answer\nc.png,Q?,c\n")
    splits, report = load_your_data({"train": train, "validation": folder / "val.csv"}, QA, on_bad="skip")
    assert splits["train"]["id"] == ["train.jsonl:1", "train.jsonl:3"] and splits["validation"]["id"] == ["val.csv:2"]
    assert report.splits == {"train": 2, "validation": 1} and report.read == 4 and report.format == "jsonl/csv"
    assert [(Path(row.file).name, row.line) for row in report.skipped_rows] == [("train.jsonl", 2)]
    with pytest.raises(ValueError, match=r"pass columns=Columns\(image=..., question=..., answer=...\)"):
        load_your_data(train)


# ------------------------------------------------------------------ Hugging Face datasets

def _user_dataset(rows: int, offset: int = 0) -> datasets.Dataset:
    images = [Image.new("RGB", (20 + offset + i, 10), (i * 40, 0, 0)) for i in range(rows)]
    return datasets.Dataset.from_dict(
        {"picture": images, "query": [f"q{i}?" for i in range(rows)], "label_text": [f"a{i}" for i in range(rows)],
         "extra": list(range(rows))},
        features=datasets.Features({"picture": datasets.Image(), "query": datasets.Value("string"),
                                    "label_text": datasets.Value("string"), "extra": datasets.Value("int64")}))


HF_COLUMNS = Columns(image="picture", question="query", answer="label_text")


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_saved_dataset_dict_is_mapped_to_canonical_rows_and_left_untouched(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": _user_dataset(4), "validation": _user_dataset(2, offset=50)}).save_to_disk(saved)
    before = _listing(saved)
    splits = load_hf_dataset(saved, HF_COLUMNS)
    assert sorted(splits) == ["train", "validation"]
    train = splits["train"]
    assert train.features == CANONICAL_FEATURES
    assert train["id"] == ["train:0", "train:1", "train:2", "train:3"]
    assert splits["validation"]["id"] == ["validation:0", "validation:1"]
    assert train["question"] == ["q0?", "q1?", "q2?", "q3?"] and train["answers"][2] == ["a2"]
    assert splits["validation"][1]["image"].size == (71, 10)
    part, _, _ = split_off_validation(train, count=1, seed=0)
    clean_dataset(part, split="train", **CLEAN_KEYS)
    assert _listing(saved) == before  # no cache or index files written next to the user's dataset

    only = load_hf_dataset(saved, HF_COLUMNS, split="validation")
    assert list(only) == ["validation"]
    with pytest.raises(ValueError, match=r"has splits \['train', 'validation'\], not 'test'"):
        load_hf_dataset(saved, HF_COLUMNS, split="test")


def test_a_saved_dataset_missing_a_column_names_dataset_split_and_columns(tmp_path):
    saved = tmp_path / "one"
    _user_dataset(3).save_to_disk(saved)
    columns = Columns(image="picture", question="query", answer="caption")
    with pytest.raises(DataFormatError) as raised:
        load_hf_dataset(saved, columns, split="train")
    assert str(raised.value) == (f"[folder {saved}, split 'train'] no column 'caption'; the columns are "
                                 "['picture', 'query', 'label_text', 'extra']")
    splits, report = load_your_data(saved, HF_COLUMNS, split="mine")  # one Dataset: named by split=
    assert list(splits) == ["mine"] and splits["mine"]["id"][0] == "mine:0" and report.format == "hf"


def test_an_id_column_of_a_dataset_must_be_unique(tmp_path):
    saved = tmp_path / "ids"
    _user_dataset(3).map(lambda row: {"extra": 1}).save_to_disk(saved)
    with pytest.raises(DataFormatError, match=r"split 'train', row 1\] id '1' is used again \(first on row 0\)"):
        load_hf_dataset(saved, Columns(image="picture", question="query", answer="label_text", id="extra"))


def test_a_dataset_of_image_paths_and_a_captioning_prompt(folder, tmp_path):
    saved = tmp_path / "paths"
    datasets.Dataset.from_dict({"file": [str(folder / "images" / "b.png")], "text": ["green"]}).save_to_disk(saved)
    columns = Columns(image="file", question=None, answer="text", prompt="Describe the image.")
    rows = load_hf_dataset(saved, columns)["train"]
    assert rows.features == CANONICAL_FEATURES
    assert rows[0]["image"].size == (80, 60) and rows["question"] == ["Describe the image."]
    assert rows["answers"] == [["green"]]


def test_a_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, *, split=None):
        calls.append((name, config, split))
        parts = datasets.DatasetDict({"train": _user_dataset(3), "test": _user_dataset(1)})
        return parts[split] if split else parts

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits, report = load_your_data("someone/their-data", HF_COLUMNS)
    assert calls == [("someone/their-data", None, None)]
    assert sorted(splits) == ["test", "train"] and splits["test"]["id"] == ["test:0"]
    assert report.splits == {"train": 3, "test": 1} and report.format == "hf"
    splits = load_hf_dataset("someone/their-data", HF_COLUMNS, split="test", config="v2")
    assert calls[-1] == ("someone/their-data", "v2", "test") and list(splits) == ["test"]
    with pytest.raises(DataFormatError, match=r"\[dataset 'someone/their-data', split 'train'\] no column 'nope'"):
        load_hf_dataset("someone/their-data", Columns(image="picture", question="nope", answer="label_text"))


# ------------------------------------------------------------------ conversations

def _chat(user, assistant="red", **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


def test_conversations_in_both_layouts(folder):
    path = _lines(folder / "chat.jsonl", [
        _chat([{"type": "image", "image": "images/a.png"}, {"type": "text", "text": "What colour?"}],
              [{"type": "text", "text": "red"}], id="c1"),
        _chat([{"type": "image", "path": "images/b.png"}, {"type": "text", "text": "And this?"}], "green"),
        _chat("<image>\nHow big?", "small", images=["c.png"]),
        _chat([{"type": "image"}, {"type": "text", "text": "Which?"}], "d", images=[str(folder.parent / "elsewhere"
                                                                                      / "d.png")]),
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Where? <image>"}, {"role": "assistant", "content": "here"}],
         "images": ["images/a.png"]},
    ])
    dataset, report = load_conversations(path)
    assert dataset.features == CANONICAL_FEATURES
    assert dataset["id"] == ["c1", "chat.jsonl:2", "chat.jsonl:3", "chat.jsonl:4", "chat.jsonl:5"]
    assert dataset["question"] == ["What colour?", "And this?", "How big?", "Which?", "Where?"]
    assert dataset["answers"] == [["red"], ["green"], ["small"], ["d"], ["here"]]
    assert [row["image"].size for row in dataset] == [(32, 24), (80, 60), (16, 16), (50, 40), (32, 24)]
    assert len(report.notes) == 1 and "1 rows have a system turn" in report.notes[0] and "'Be brief.'" in str(report)
    splits, auto = load_your_data(path)  # a JSONL of messages is recognised without columns
    assert splits["train"]["id"] == dataset["id"] and auto.format == "conversations"


@pytest.mark.parametrize("bad, fragment", [
    (_chat([{"type": "image", "image": "images/a.png"}, {"type": "image", "image": "c.png"},
            {"type": "text", "text": "Both?"}]), "the row has 2 images; this format takes exactly one image per row"),
    (_chat("<image><image>Both?", images=["c.png", "images/a.png"]), "the row has 2 images"),
    ({"messages": [{"role": "user", "content": "<image>Q1"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "b"}], "images": ["c.png"]},
     "got roles ['user', 'assistant', 'user', 'assistant']; split a multi-turn conversation"),
    (_chat("Q?"), "the row has no image"),
    (_chat("<image>Q?", images=["images/gone.png"]), "image file not found"),
    (_chat("<image>Q?", [{"type": "image", "image": "c.png"}], images=["c.png"]), "the assistant turn holds an image"),
    ({"conversations": []}, "'conversations' must be a non-empty list of turns, got []"),
    ({"image": "c.png", "question": "Q?"}, "no 'messages' list (or ShareGPT's 'conversations'); this row has "
                                           "['image', 'question']: a row of columns is read with Columns(...)"),
], ids=["two image items", "two listed images", "two turns", "no image", "missing file", "image answer",
        "empty conversations", "no messages"])
def test_a_bad_conversation_is_named_by_file_and_line(folder, bad, fragment):
    good = _chat("<image>Q?", "fine", images=["c.png"])
    path = _lines(folder / "chat.jsonl", [good, bad])
    with pytest.raises(DataFormatError) as raised:
        load_conversations(path)
    assert str(raised.value).startswith(f"[{path}:2] ") and fragment in str(raised.value), str(raised.value)
    dataset, report = load_conversations(path, on_bad="skip")
    assert dataset["id"] == ["chat.jsonl:1"]
    assert report.skipped_rows == [BadRow(str(path), 2, "chat.jsonl:2", report.skipped_rows[0].reason)]
    assert fragment in report.skipped_rows[0].reason


# ------------------------------------------------------------------ the series' validation, through the id

def test_clean_dataset_names_the_file_and_line_of_a_corrupt_image(folder):
    (folder / "images" / "corrupt.png").write_bytes(b"these bytes are not an image")
    path = _lines(folder / "data.jsonl", [{"image": "images/a.png", "question": "Q?", "answer": "a"},
                                          {"image": "images/corrupt.png", "question": "Q?", "answer": "b"},
                                          {"image": "images/b.png", "question": "  ", "answer": "c"}])
    with pytest.raises(DataFormatError, match=r"data\.jsonl:3\] the question is empty"):  # no decoding needed
        load_your_data(path, QA)
    splits, report = load_your_data(path, QA, on_bad="skip")  # the files exist: the loader does not decode them
    assert report.kept == 2
    with pytest.raises(DataValidationError, match=r"\[split='train', row 1, id=data.jsonl:2\] image could not be "
                                                  r"decoded: 28 bytes are not in any image format"):
        clean_dataset(splits["train"], split="train", **CLEAN_KEYS)
    clean, checked = clean_dataset(splits["train"], split="train", on_bad="skip", **CLEAN_KEYS)
    assert clean["id"] == ["data.jsonl:1"]
    assert [row.id for row in checked.skipped_rows] == ["data.jsonl:2"]


def test_with_your_own_ids_clean_dataset_still_names_the_file_and_line_after_the_hold_outs(folder, tmp_path):
    """A user's id column replaces the "file:line" id, and a hold-out renumbers the rows of each split: the
    rows' origin field keeps the file and line in clean_dataset's messages, for files and for datasets."""
    from vlm_helpers.data.splits import train_validation_test

    (folder / "images" / "corrupt.png").write_bytes(b"these bytes are not an image")
    lines = [{"image": "images/a.png", "question": f"Q{i}?", "answer": "a", "key": f"doc-{i}"} for i in range(30)]
    lines[17] = dict(lines[17], image="images/corrupt.png")
    path = _lines(folder / "data.jsonl", lines)
    splits, _ = load_your_data(path, Columns(image="image", question="question", answer="answer", id="key"))
    assert splits["train"]["origin"][17] == "data.jsonl:18"
    train, validation, test, _ = train_validation_test(splits, seed=0, validation_fraction=0.2, test_fraction=0.2)
    split, rows = next((name, rows) for name, rows in (("train", train), ("validation", validation),
                                                       ("test", test)) if "doc-17" in rows["id"])
    position = rows["id"].index("doc-17")
    with pytest.raises(DataValidationError, match=rf"\[split='{split}', row {position}, id=doc-17, from "
                                                  r"data\.jsonl:18\] image could not be decoded"):
        clean_dataset(rows, split=split, **CLEAN_KEYS)
    _, report = clean_dataset(rows, split=split, on_bad="skip", **CLEAN_KEYS)
    assert f"row {position} (id=doc-17) from data.jsonl:18: image could not be decoded" in str(report)

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [str(folder / "images" / "a.png"), str(folder / "images" / "corrupt.png")],
                                "question": ["Q?", "Q?"], "answer": ["a", "b"], "key": ["x", "y"]}
                               ).save_to_disk(str(saved))
    rows = load_hf_dataset(saved, Columns(image="image", question="question", answer="answer", id="key"))["train"]
    with pytest.raises(DataValidationError, match=r"row 1, id=y, from train:1\]"):
        clean_dataset(rows, split="train", **CLEAN_KEYS)


# ------------------------------------------------------------------ splitting and the report

def test_split_off_validation_is_seeded_disjoint_and_complete(folder):
    rows = [{"image": "c.png", "question": f"q{i}?", "answer": str(i)} for i in range(20)]
    dataset, _ = load_jsonl_or_csv(_lines(folder / "data.jsonl", rows), QA)
    train, validation, line = split_off_validation(dataset, fraction=0.12, seed=3)
    assert len(validation) == math.ceil(0.12 * 20) == 3 and len(train) == 17
    assert set(train["id"]).isdisjoint(validation["id"]) and set(train["id"]) | set(validation["id"]) == set(
        dataset["id"])
    assert train["id"] == sorted(train["id"], key=dataset["id"].index)  # original order kept
    again = split_off_validation(dataset, fraction=0.12, seed=3)
    assert again[1]["id"] == validation["id"] and again[2] == line
    assert line == "no validation split given: held out 3 of 20 rows (seed 3): train=17, validation=3"
    other = [split_off_validation(dataset, count=3, seed=seed)[1]["id"] for seed in (0, 1, 2)]
    assert len({tuple(ids) for ids in other + [validation["id"]]}) > 1  # the seed decides
    for bad in ({"count": 20}, {"count": 0}, {"fraction": 1.0}, {}, {"count": 2, "fraction": 0.5}):
        with pytest.raises(ValueError):
            split_off_validation(dataset, seed=0, **bad)


def test_summarise_uses_the_nearest_rank_p95():
    assert summarise([5, 1, 3]) == (1, 3, 5, 5)
    values = list(range(1, 21))  # ceil(0.95 * 20) = 19th smallest
    assert summarise(values) == (1, 10.5, 19, 20)
    assert summarise([]) is None


@pytest.fixture(scope="module")
def idefics2_processor(tiny_cache):
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.tiny import tiny_checkpoint

    return load_chat_processor(tiny_checkpoint("idefics2", tiny_cache))


def test_data_report_counts_sizes_lengths_and_tokens(folder, idefics2_processor):
    _png(folder / "images" / "sideways.jpg", (90, 40), orientation=6)  # shown upright: 40 x 90
    _png(folder / "images" / "big.png", (100, 70))
    (folder / "images" / "corrupt.png").write_bytes(b"nope")
    rows = [{"image": "images/a.png", "question": "What colour?", "answer": ["red", "dark red"]},  # 32 x 24
            {"image": "images/a.png", "question": "Again?", "answer": "yes"},  # the same file, read once
            {"image": "images/big.png", "question": "And?", "answer": "green"},  # 100 x 70
            {"image": "images/sideways.jpg", "question": "Turned?", "answer": "a longer answer"},
            {"image": "images/corrupt.png", "question": "Broken?", "answer": "x"}]
    dataset, _ = load_jsonl_or_csv(_lines(folder / "data.jsonl", rows), QA)
    report = data_report(dataset)
    assert (report.rows, report.images, report.unreadable) == (5, 3, ("data.jsonl:5",))
    assert report.width == (32, 36, 100, 100)  # widths 32, 32, 100, 40 -> median (32 + 40) / 2
    assert report.height == (24, 47, 90, 90)  # heights 24, 24, 70, 90 -> median (24 + 70) / 2
    assert report.small_rows == 3  # all but the 100 x 70 image have a side under 64 px
    answers = ["red", "dark red", "yes", "green", "a longer answer", "x"]
    assert report.answers == 6
    assert report.answer_chars == (1, 4, 15, 15)  # lengths 1, 3, 3, 5, 8, 15
    assert report.answer_tokens is None and report.image_tokens is None
    assert "5 rows, 3 distinct images, 1 unreadable" in str(report)
    assert "3 rows have an image smaller than 64 px" in str(report)

    with_tokens = data_report(dataset, processor=idefics2_processor)
    tokenizer = idefics2_processor.tokenizer
    lengths = [len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers]
    ordered = sorted(lengths)
    assert with_tokens.answer_tokens == (ordered[0], statistics.median(ordered), ordered[-1], ordered[-1])
    # Idefics2 without image splitting: image_seq_len <image> tokens between two <fake_token_around_image>
    assert with_tokens.image_tokens == idefics2_processor.image_seq_len + 2
    question_tokens = len(tokenizer("What colour?", add_special_tokens=False)["input_ids"])
    assert with_tokens.prompt_tokens > with_tokens.image_tokens + question_tokens
    assert with_tokens.first_row == "data.jsonl:1"
    assert f"{with_tokens.image_tokens} of them for the image" in str(with_tokens)


# ------------------------------------------------------------------ the synthetic folder of tiny mode

def test_the_synthetic_folder_breaks_exactly_the_rows_it_says(tmp_path):
    broken = ("missing_image", "malformed_json", "missing_answer")
    written = write_synthetic_image_folder(tmp_path / "tiny", rows=9, broken=broken, write_csv=True)
    assert set(written.broken["data.jsonl"].values()) == set(broken)
    assert set(written.broken["data.csv"].values()) == {"missing_image", "missing_answer"}
    reasons = {"missing_image": "image file not found", "malformed_json": "malformed JSON",
               "missing_answer": "no value for column 'answers'"}
    csv_reasons = {**reasons, "missing_answer": "the line has 2 values, the header has 3 columns"}
    for path, why in ((written.jsonl, reasons), (written.csv, csv_reasons)):
        expected = written.broken[path.name]
        dataset, report = load_your_data(path, written.columns, on_bad="skip")
        assert {row.line: next(kind for kind, text in why.items() if text in row.reason)
                for row in report.skipped_rows} == expected
        assert len(dataset["train"]) == written.good_rows == 9
        with pytest.raises(DataFormatError, match=rf"^\[{path}:{min(expected)}\]"):
            load_your_data(path, written.columns)
        clean_dataset(dataset["train"], split="train", **CLEAN_KEYS)  # the good rows pass the series' checks
    rows = load_your_data(written.jsonl, written.columns, on_bad="skip")[0]["train"]
    answers = Counter(answer for row in rows["answers"] for answer in row)
    assert answers.most_common(1)[0][1] > 1  # answers drawn from small pools repeat
    assert len(list((written.folder / "images").iterdir())) < len(rows)  # several questions per page
    with pytest.raises(FileExistsError):
        write_synthetic_image_folder(tmp_path / "tiny", rows=2)


def test_the_synthetic_captioning_folder_uses_the_fixed_prompt(tmp_path):
    from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT

    written = write_synthetic_image_folder(tmp_path / "planes", rows=4, task="captioning")
    splits, report = load_your_data(written.jsonl, written.columns)
    rows = splits["train"]
    assert report.skipped == 0 and rows["question"] == [AIRCRAFT_PROMPT] * 4
    assert rows["answers"][0][0].startswith("boeing 707, ") and rows[0]["image"].size == (128, 96)


# ---------------------------------------------------------------------------------- review fixes


def _one_row_folder(tmp_path, name="data.jsonl", record=None):
    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (32, 24), "white").save(tmp_path / "images" / "a.png")
    record = record or {"file_name": "images/a.png", "question": "What?", "answer": "x"}
    path = tmp_path / name
    path.write_text("\n".join(json.dumps({**record, "question": f"Q{i}?"}) for i in range(3)) + "\n")
    return path


def test_an_explicit_format_wins_over_the_extension_and_an_unknown_one_says_how_to_choose(tmp_path):
    from vlm_helpers.data.formats import Columns, load_your_data

    columns = Columns(image="file_name", question="question", answer="answer")
    path = _one_row_folder(tmp_path, "lines.txt")
    with pytest.raises(ValueError, match=r"format='jsonl', 'json' or 'csv'"):
        load_your_data(path, columns)
    splits, _ = load_your_data(path, columns, format="jsonl")
    assert splits["train"].num_rows == 3
    splits, report = load_your_data(_one_row_folder(tmp_path, "lines.json"), columns)  # JSON Lines named .json
    assert splits["train"].num_rows == 3 and report.format == "jsonl"
    with pytest.raises(DataFormatError, match="header"):  # a JSONL file read as CSV is not silently JSONL
        load_your_data(_one_row_folder(tmp_path, "good.jsonl"), columns, format="csv")


def test_a_mistyped_local_path_is_reported_missing_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    import datasets

    from vlm_helpers.data.formats import Columns, load_your_data

    def no_hub(*args, **kwargs):
        raise AssertionError(f"looked up on the Hub: {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_data").mkdir()
    for typo in ("my_data/saved", "my_data/data.JSON", "./data.jsonl", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            load_your_data(typo, Columns())


def test_load_time_checks_name_the_line_of_an_empty_answer_question_or_image_file(tmp_path):
    from vlm_helpers.data.formats import Columns, load_jsonl_or_csv

    path = _one_row_folder(tmp_path)
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({"file_name": "images/a.png", "question": "Q?", "answer": " "})
    lines[1] = json.dumps({"file_name": "images/a.png", "question": "  ", "answer": "x"})
    lines[2] = json.dumps({"file_name": "images/empty.png", "question": "Q?", "answer": ["x", ""]})
    lines.append(json.dumps({"file_name": "images/empty.png", "question": "Q?", "answer": "x"}))
    lines.append(json.dumps({"file_name": "images/a.png", "question": "Q?", "answer": "x"}))  # one good row
    path.write_text("\n".join(lines) + "\n")
    columns = Columns(image="file_name", question="question", answer="answer")
    with pytest.raises(DataFormatError, match=r"data\.jsonl:1\] answer 0 is empty"):
        load_jsonl_or_csv(path, columns)
    _, report = load_jsonl_or_csv(path, columns, on_bad="skip")
    reasons = {bad.line: bad.reason for bad in report.skipped_rows}
    assert "question is empty" in reasons[2] and "answer 1 is empty" in reasons[3] and "0 bytes" in reasons[4]


def test_csv_problems_name_their_own_line(tmp_path):
    from vlm_helpers.data.formats import Columns, load_jsonl_or_csv

    _one_row_folder(tmp_path)
    columns = Columns(image="file_name", question="question", answer="answer")
    rows = [f"images/a.png,Question {i}?,answer {i}" for i in range(3000)]
    rows[1499] = "images/a.png,Qu\xe9?,x"
    path = tmp_path / "latin1.csv"
    path.write_bytes(("file_name,question,answer\n" + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1\.csv:1501\] line 1501 is not UTF-8"):
        load_jsonl_or_csv(path, columns)
    long = tmp_path / "long.csv"
    long.write_text("file_name , question,answer\nimages/a.png,Q?," + "x" * 200_000 + "\n")
    dataset, _ = load_jsonl_or_csv(long, columns)  # a long caption, and spaces around a header name
    assert len(dataset[0]["answers"][0]) == 200_000
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("file_name;question;answer\nimages/a.png;Q?;x\n")
    with pytest.raises(DataFormatError, match=r"no column 'image'; its columns are \['file_name', 'question', "
                                              r"'answer'\] \(read as semicolon-separated\)"):
        load_jsonl_or_csv(semicolons, QA)  # the header has no 'image' under any separator
    twice = tmp_path / "twice.csv"
    twice.write_text("file_name,question,answer,answer\nimages/a.png,Q?,x,y\n")
    with pytest.raises(DataFormatError, match="more than once"):
        load_jsonl_or_csv(twice, columns)


def test_a_split_left_empty_by_skip_mode_stops_before_training(tmp_path):
    import datasets

    from vlm_helpers.data.validation import clean_dataset

    rows = datasets.Dataset.from_list([{"questionId": 1, "question": "Q?", "answers": [], "image": None}])
    with pytest.raises(ValueError, match=r"split='validation'.*no usable rows: all 1 were skipped"):
        clean_dataset(rows, split="validation", on_bad="skip")


def test_train_validation_test_places_common_split_names_and_refuses_others():
    import datasets

    from vlm_helpers.data.splits import train_validation_test

    def rows(n, start=0):
        return datasets.Dataset.from_dict({"id": [str(start + i) for i in range(n)]})

    train, validation, test, lines = train_validation_test({"train": rows(10), "val": rows(3, 100)}, seed=0,
                                                           validation_fraction=0.1, test_fraction=0.2)
    assert validation["id"] == ["100", "101", "102"] and len(test) == 2 and len(train) == 8
    assert lines == ["no test split given: held out 2 of 10 rows (seed 0): train=8, test=2"]
    with pytest.raises(ValueError, match="cannot place"):
        train_validation_test({"train": rows(10), "holdout": rows(2)}, seed=0, validation_fraction=0.1,
                              test_fraction=0.1)
    with pytest.raises(ValueError, match="two validation splits"):
        train_validation_test({"train": rows(10), "val": rows(2), "dev": rows(2)}, seed=0, validation_fraction=0.1,
                              test_fraction=0.1)
    with pytest.raises(ValueError, match=r"2 row\(s\): too few.*3 at least"):
        train_validation_test({"train": rows(2)}, seed=0, validation_fraction=0.1, test_fraction=0.1)


def test_a_conversation_that_marks_an_image_but_names_no_file_says_so(tmp_path):
    from vlm_helpers.data.conversations import load_conversations

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>What is it?"},
                                             {"role": "assistant", "content": "A cat"}]}) + "\n")
    with pytest.raises(DataFormatError, match=r"chat\.jsonl:1\] the row marks an image \(<image>\) but names no "):
        load_conversations(path)
