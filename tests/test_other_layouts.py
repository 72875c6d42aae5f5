"""Issue 25, findings 8 and 9: the layouts people actually have load through ``load_your_data`` (format "auto"),
with the right rows, ids and answers, and what cannot be read is refused with the file, line (or element) and a
hint. The data comes from ``tests/other_data.py``, not from the synthetic set's own format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from other_data import (LARGE_SIZE, RECEIPTS, all_layouts, broken_json_array, broken_jsonl, llava, openai_image_url,
                        receipts_csv, receipts_jsonl, sharegpt)
from vlm_helpers.data.canonical import DataFormatError
from vlm_helpers.data.formats import Columns, detect_format, load_hf_dataset, load_jsonl_or_csv, load_your_data
from vlm_helpers.data.validation import clean_dataset

CLEAN_KEYS = {"question_key": "question", "answer_key": "answers", "image_key": "image", "id_key": "id"}
QA = Columns(image="image", question="question", answer="answer")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return all_layouts(tmp_path_factory.mktemp("other-data"))


def _sizes(rows: datasets.Dataset) -> list[tuple[int, int]]:
    """Image sizes read from the headers only (no decoding of the pixels)."""
    sizes = []
    for image in rows.cast_column("image", datasets.Image(decode=False))["image"]:
        with Image.open(image["path"] if image["bytes"] is None else __import__("io").BytesIO(image["bytes"])) as im:
            sizes.append(im.size)
    return sizes


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


LAYOUT_NAMES = ["jsonl_bom", "csv_json_lists", "csv_semicolon_bom_python_lists", "tsv", "csv_tab_pipe", "json_array",
                "json_array_indented_no_ids", "hub_folder", "captions_csv", "sharegpt_jsonl", "sharegpt_json",
                "openai_image_url", "llava"]


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_each_layout_loads_with_auto_format_and_gives_the_rows_the_user_wrote(layouts, name):
    written = layouts[name]
    before = _listing(written.folder)
    assert detect_format(written.path) == written.format
    splits, report = load_your_data(written.path, written.columns)  # format="auto"
    assert {split: len(rows) for split, rows in splits.items()} == written.splits
    assert report.skipped == 0 and report.kept == written.good_rows
    rows = datasets.concatenate_datasets(list(splits.values()))
    assert rows["id"] == written.ids
    assert rows["question"] == written.questions
    assert rows["answers"] == written.answers
    assert _sizes(rows) == written.sizes
    clean_dataset(rows, split="train", **CLEAN_KEYS)  # every row passes the series' own checks
    assert _listing(written.folder) == before  # nothing written next to the user's files


def test_the_report_names_the_layout_found(layouts):
    def first_line(name):
        return str(load_your_data(layouts[name].path, layouts[name].columns)[1]).splitlines()[0]

    assert "(csv: CSV, semicolon-separated)" in first_line("csv_semicolon_bom_python_lists")
    assert "(csv: CSV, tab-separated)" in first_line("tsv")
    assert "(json: JSON array)" in first_line("json_array")
    assert "(conversations: JSON array; ShareGPT/LLaVA (conversations with from/value))" in first_line("llava")
    assert "(conversations: JSON Lines; OpenAI messages (image_url parts))" in first_line("openai_image_url")
    _, report = load_your_data(layouts["csv_json_lists"].path, layouts["csv_json_lists"].columns)
    assert "4 answer cell(s) held a list literal, read as a list of answers" in report.notes
    assert any("kept as one answer, as written (the first: '[PAID]')" in note for note in report.notes)


def test_explicit_format_names_read_the_same_rows(layouts):
    for name, format in (("sharegpt_json", "conversations"), ("llava", "conversations"), ("json_array", "jsonl"),
                         ("json_array", "json"), ("jsonl_bom", "json"), ("tsv", "csv")):
        written = layouts[name]
        splits, _ = load_your_data(written.path, written.columns, format=format)
        assert splits["train"]["id"] == written.ids, (name, format)


# ------------------------------------------------------------------ finding 9: several answers in one cell

def _one_cell_csv(folder: Path, cell: str, *, delimiter: str = ",") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), "white").save(folder / "a.png")
    path = folder / "one.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        import csv

        csv.writer(handle, delimiter=delimiter).writerows([["image", "question", "answer"], ["a.png", "Q?", cell]])
    return path


@pytest.mark.parametrize("cell, separator, expected", [
    ('["12.50", "$12.50"]', None, ["12.50", "$12.50"]),  # a JSON list literal
    ("['12.50', '$12.50']", None, ["12.50", "$12.50"]),  # what pandas.to_csv writes for a Python list
    ('  ["a"]  ', None, ["a"]),
    ("12.50|$12.50", None, ["12.50|$12.50"]),  # | is text unless asked for
    ("12.50|$12.50", "|", ["12.50", "$12.50"]),
    ("a | b |c", "|", ["a", "b", "c"]),
    ('["A|B Traders"]', "|", ["A|B Traders"]),  # a list literal is never split
    ("[PAID]", None, ["[PAID]"]),  # brackets that are not a list of quoted strings: one answer, as written
    ("['unclosed', 'list'", None, ["['unclosed', 'list'"]),
    ("see [1]", None, ["see [1]"]),
    ("12;50", ";", ["12", "50"]),
], ids=["json", "python", "spaces", "pipe as text", "pipe asked", "pipe spaces", "escaped pipe", "bracketed text",
        "unclosed", "inner brackets", "other separator"])
def test_a_csv_answer_cell_is_one_answer_or_a_list_in_the_documented_forms(tmp_path, cell, separator, expected):
    columns = Columns(image="image", question="question", answer="answer", answer_separator=separator)
    dataset, _ = load_jsonl_or_csv(_one_cell_csv(tmp_path, cell), columns)
    assert dataset["answers"] == [expected]


@pytest.mark.parametrize("cell, separator, fragment", [
    ("[12, 12.5]", None, 'is a list literal whose items are not all strings: quote each answer (["12", "12.5"])'),
    ("[]", None, "the answer list is empty"),
    ("a|", "|", "answer 1 is empty"),
], ids=["numbers", "empty list", "empty part"])
def test_a_list_cell_that_cannot_be_answers_is_named_by_its_line(tmp_path, cell, separator, fragment):
    columns = Columns(image="image", question="question", answer="answer", answer_separator=separator)
    path = _one_cell_csv(tmp_path, cell)
    with pytest.raises(DataFormatError) as raised:
        load_jsonl_or_csv(path, columns)
    assert str(raised.value).startswith(f"[{path}:2] ") and fragment in str(raised.value), str(raised.value)


def test_json_answers_are_lists_already_and_the_separator_applies_to_every_format(tmp_path):
    Image.new("RGB", (20, 20), "white").save(tmp_path / "a.png")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"image": "a.png", "question": "Q?", "answer": answer})
                              for answer in ('["a", "b"]', "x|y", ["p|q"])) + "\n")
    dataset, _ = load_jsonl_or_csv(path, QA)
    assert dataset["answers"] == [['["a", "b"]'], ["x|y"], ["p|q"]]  # a JSON string is one answer, as written
    piped = Columns(image="image", question="question", answer="answer", answer_separator="|")
    dataset, _ = load_jsonl_or_csv(path, piped)
    assert dataset["answers"] == [['["a", "b"]'], ["x", "y"], ["p|q"]]  # a real list is never split
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")] * 2, "question": ["Q?"] * 2,
                                "answer": ["x | y", "z"]}).save_to_disk(str(saved))
    assert load_hf_dataset(saved, piped)["train"]["answers"] == [["x", "y"], ["z"]]
    assert piped.fields()["answer_separator"] == "|"  # the model card records it
    with pytest.raises(ValueError, match="answer_separator must be a non-blank string"):
        Columns(answer_separator=" ")


# ------------------------------------------------------------------ CSV separators and encodings

def test_the_csv_separator_is_the_one_under_which_the_header_has_the_columns(tmp_path):
    Image.new("RGB", (20, 20), "white").save(tmp_path / "a.png")
    semicolons = tmp_path / "de.csv"  # a German spreadsheet: ';' between fields, ',' in the numbers
    semicolons.write_text("image;question;answer\na.png;Wie hoch ist die Summe?;12,50\n", encoding="utf-8")
    assert load_jsonl_or_csv(semicolons, QA)[0]["answers"] == [["12,50"]]
    commas = tmp_path / "en.csv"  # a comma file whose values hold ';'
    commas.write_text('image,question,answer\na.png,"Q; really?",a;b\n', encoding="utf-8")
    dataset, report = load_jsonl_or_csv(commas, QA)
    assert dataset["question"] == ["Q; really?"] and dataset["answers"] == [["a;b"]] and report.layout == "CSV"
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"image";"question";"answer"\n"a.png";"Q?";"x"\n', encoding="utf-8")
    assert load_jsonl_or_csv(quoted, QA)[0]["answers"] == [["x"]]
    pipes = tmp_path / "pipes.csv"
    pipes.write_text("image|question|answer\na.png|Q?|x\n", encoding="utf-8")
    assert load_jsonl_or_csv(pipes, QA)[1].layout == "CSV, pipe-separated"


def test_a_header_that_fits_two_separators_is_refused_with_the_conversion(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("image,question,answer,x;image;question;answer\na.png,Q?,a,b\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as raised:
        load_jsonl_or_csv(path, QA)
    message = str(raised.value)
    assert message.startswith(f"[{path}:1] the header holds the columns ['image', 'question', 'answer'] both when "
                              "split at comma (',') and semicolon (';'): cannot tell the separator")
    assert "pd.read_csv('odd.csv', sep=';').to_csv('commas.csv', index=False)" in message


def test_an_excel_unicode_text_file_utf16_and_tab_separated_loads(tmp_path):
    Image.new("RGB", (20, 20), "white").save(tmp_path / "a.png")
    path = tmp_path / "export.txt"
    path.write_bytes("image\tquestion\tanswer\r\na.png\t合計は？\t¥1,280\r\n".encode("utf-16"))
    dataset, report = load_your_data(path, QA, format="csv")
    assert dataset["train"]["question"] == ["合計は？"] and dataset["train"]["answers"] == [["¥1,280"]]
    assert dataset["train"]["id"] == ["export.txt:2"] and report.layout == "CSV, tab-separated"


def test_a_semicolon_csv_with_a_bom_and_quoted_newlines_counts_lines_from_the_header(tmp_path):
    written = receipts_csv(tmp_path / "r", delimiter=";", bom=True, answers="python")
    text = written.path.read_text(encoding="utf-8-sig").replace("images/receipt_08.png", "images/gone.png")
    written.path.write_text("\ufeff" + text, encoding="utf-8")
    line = 1 + text.split("\n").index(next(row for row in text.split("\n") if row.startswith("R-0008")))
    assert line == 11  # R-0006's question and answer each span two lines
    with pytest.raises(DataFormatError, match=rf"^\[{written.path}:{line}, id=R-0008\] image file not found"):
        load_your_data(written.path, written.columns)


# ------------------------------------------------------------------ JSON arrays

def test_a_json_array_names_the_element_and_its_line(tmp_path):
    Image.new("RGB", (20, 20), "white").save(tmp_path / "a.png")
    path = tmp_path / "rows.json"
    elements = [{"image": "a.png", "question": "Q0?", "answer": "a"}, {"image": "a.png", "question": "Q1?"},
                "not an object", {"image": "a.png", "question": "Q3?", "answer": ["c", "d"]}]
    path.write_text(json.dumps(elements, indent=2), encoding="utf-8")
    with pytest.raises(DataFormatError) as raised:
        load_your_data(path, QA)
    assert str(raised.value).startswith(f"[{path}:7, element 1] no value for column 'answer'")
    assert (raised.value.line, raised.value.element) == (7, 1)  # element 0 takes lines 2-6 (indent=2)
    splits, report = load_your_data(path, QA, on_bad="skip")
    assert splits["train"]["id"] == ["rows.json[0]", "rows.json[3]"]
    assert splits["train"]["origin"] == ["rows.json[0]", "rows.json[3]"]
    assert [(row.line, row.element) for row in report.skipped_rows] == [(7, 1), (11, 2)]
    assert f"{path}:11 (element 2): expected a JSON object {{...}}, got a JSON str" in str(report)


def test_a_broken_json_array_is_refused_in_both_modes_at_the_broken_element(tmp_path):
    written = broken_json_array(tmp_path / "b")
    for on_bad in ("raise", "skip"):
        with pytest.raises(DataFormatError) as raised:
            load_your_data(written.path, written.columns, on_bad=on_bad)
        ((line, fragment),) = written.bad.items()
        assert str(raised.value).startswith(f"[{written.path}:{line}, element 2] {fragment} of the array, which "
                                            f"starts on line {line}"), str(raised.value)
        assert "refused whatever on_bad says" in str(raised.value)


def test_one_json_object_instead_of_rows_is_refused_with_the_conversion(tmp_path):
    Image.new("RGB", (20, 20), "white").save(tmp_path / "a.png")
    wrapper = {"version": 2, "data": [{"image": "a.png", "question": "Q?", "answer": "a"}] * 3}
    pretty = tmp_path / "wrapped.json"
    pretty.write_text(json.dumps(wrapper, indent=2))
    with pytest.raises(DataFormatError) as raised:
        load_your_data(pretty, QA)
    message = str(raised.value)
    assert message.startswith(f"[{pretty}:1] the file is one JSON object spread over several lines (keys ['version', "
                              "'data']; lists of objects: 'data' (3 objects))")
    assert "json.dump(json.load(open('wrapped.json'))['data'], open('rows.json', 'w'))" in message
    one_line = tmp_path / "wrapped_one_line.json"
    one_line.write_text(json.dumps(wrapper))
    with pytest.raises(DataFormatError, match=r"wrapped_one_line\.json:1\] no value for column 'image', 'question', "
                                              r"'answer'; this row has \['version', 'data'\]; its 'data' holds a list "
                                              r"of 3 objects: if those are the rows"):
        load_your_data(one_line, QA)
    trailing = tmp_path / "two.json"
    trailing.write_text('[{"image": "a.png", "question": "Q?", "answer": "a"}]\n[]\n')
    with pytest.raises(DataFormatError, match=r"two\.json:2\] the file holds one JSON array followed by more text"):
        load_your_data(trailing, QA)


# ------------------------------------------------------------------ conversations: images and refusals

@pytest.fixture
def images(tmp_path) -> Path:
    Image.new("RGB", (30, 20), "red").save(tmp_path / "a.png")
    Image.new("RGB", (40, 10), "blue").save(tmp_path / "b.png")
    return tmp_path


def _chat_file(folder: Path, *records) -> Path:
    path = folder / "chat.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _url_part(url) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Colour?"},
                                                      {"type": "image_url", "image_url": {"url": url}}]},
                         {"role": "assistant", "content": "red"}]}


@pytest.mark.parametrize("url, fragment", [
    ("https://example.com/a.png", "the image is a remote URL (https://example.com/a.png); this series reads local "
                                  "files only (training runs without network access): download the images"),
    ("s3://bucket/a.png", "the image is a remote URL (s3://bucket/a.png)"),
    ("file://otherhost/data/a.png", "names another machine ('otherhost')"),
    ("data:text/plain;base64,aGVsbG8=", "the data: URL holds 'text/plain', not an image"),
    ("data:image/png;base64,not base64!", "the data: URL's base64 cannot be decoded"),
    ("file:///nowhere/a.png", "image file not found: /nowhere/a.png (from 'file:///nowhere/a.png')"),
], ids=["https", "s3", "other host", "text data", "bad base64", "missing file url"])
def test_image_urls_that_cannot_be_read_offline_are_refused_clearly(images, url, fragment):
    path = _chat_file(images, _url_part("a.png"), _url_part(url))
    with pytest.raises(DataFormatError) as raised:
        load_your_data(path)
    assert str(raised.value).startswith(f"[{path}:2] ") and fragment in str(raised.value), str(raised.value)


def test_file_and_data_urls_name_local_images(images):
    data = "data:image/png;base64," + base64.b64encode((images / "b.png").read_bytes()).decode()
    path = _chat_file(images, _url_part((images / "a.png").as_uri()), _url_part(data), _url_part("file:b.png"),
                      _url_part("~/" + str((images / "a.png").relative_to(Path.home())))
                      if str(images).startswith(str(Path.home())) else _url_part(str(images / "a.png")))
    splits, report = load_your_data(path)
    rows = splits["train"]
    assert _sizes(rows) == [(30, 20), (40, 10), (40, 10), (30, 20)]
    raw = rows.cast_column("image", datasets.Image(decode=False))["image"]
    assert raw[0] == {"path": str(images / "a.png"), "bytes": None} and raw[1]["path"] is None
    assert report.layout == "JSON Lines; OpenAI messages (image_url parts)"


@pytest.mark.parametrize("record, accepted", [
    ({"image": "a.png", "images": ["a.png"]}, True),  # the same file named twice is one image
    ({"images": ["a.png", "./a.png"]}, True),
    ({"images": "a.png"}, True),  # a path rather than a list: trivially one
    ({"image": ["a.png"]}, True),
    ({"images": ["a.png", "b.png"]}, False),
    ({"image": "a.png", "images": ["b.png"]}, False),
], ids=["image and images", "same path twice", "images as a string", "image as a list", "two images",
        "image and another"])
def test_one_image_per_row_unless_it_is_trivially_one(images, record, accepted):
    row = {"id": "x1", **record, "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                    {"from": "gpt", "value": "red"}]}
    path = _chat_file(images, row)
    if accepted:
        assert _sizes(load_your_data(path)[0]["train"]) == [(30, 20)]
    else:
        with pytest.raises(DataFormatError, match=r"chat\.jsonl:1, id=x1\] the row has 2 images; this format takes "
                                                  r"exactly one image per row \(the series trains one image per "
                                                  r"question\): keep one, or make one row per image"):
            load_your_data(path)


@pytest.mark.parametrize("turns, fragment", [
    ([{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "Q2"},
      {"from": "gpt", "value": "b"}],
     "got roles ['user', 'assistant', 'user', 'assistant']; split a multi-turn conversation into one row per question "
     "(2 questions here)"),
    ([{"from": "human", "value": "<image>Q"}, {"from": "tool", "value": "x"}],
     "turn 1 of 'conversations' is from 'tool'; expected user/human, assistant/gpt or system"),
    ([{"from": "human", "text": "<image>Q"}, {"from": "gpt", "value": "a"}],
     "turn 0 of 'conversations' must have 'from' and 'value'; it has ['from', 'text']"),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "<image>Q"}], "got roles ['assistant', 'user']"),
], ids=["multi-turn", "unknown speaker", "no value", "answer first"])
def test_a_sharegpt_row_that_is_not_one_question_is_refused_with_why(images, turns, fragment):
    path = _chat_file(images, {"image": "a.png", "conversations": turns})
    with pytest.raises(DataFormatError) as raised:
        load_your_data(path)
    assert str(raised.value).startswith(f"[{path}:1] ") and fragment in str(raised.value), str(raised.value)


def test_a_conversation_file_read_as_columns_says_which_format_to_use(tmp_path):
    written = llava(tmp_path / "l")
    columns = Columns(image="image", question="question", answer="answer")
    with pytest.raises(DataFormatError) as raised:
        load_your_data(written.path, columns, format="json")
    assert str(raised.value).startswith(f"[{written.path}:2, element 0] no value for column "
                                        "'question', 'answer'")
    assert ("this row is a conversation ('conversations'): read the file with format='conversations' (or 'auto'), "
            "no Columns needed") in str(raised.value)


def test_sharegpt_and_openai_rows_carry_the_users_ids_and_a_json_array_its_element(tmp_path):
    jsonl = sharegpt(tmp_path / "s1")
    array = sharegpt(tmp_path / "s2", container="json")
    assert jsonl.ids[4] == "sharegpt.jsonl:5" and array.ids[4] == "sharegpt.json[4]"
    for written in (jsonl, array):
        assert load_your_data(written.path)[0]["train"]["id"] == written.ids
    assert load_your_data(openai_image_url(tmp_path / "o").path)[0]["train"]["id"][:2] == ["openai.jsonl:1",
                                                                                            "openai.jsonl:2"]


# ------------------------------------------------------------------ the broken file and the very large image

def test_the_broken_file_stops_at_its_first_bad_line_or_lists_every_one(tmp_path):
    written = broken_jsonl(tmp_path / "broken")
    first = min(written.bad)
    with pytest.raises(DataFormatError, match=rf"^\[{written.path}:{first}\] {written.bad[first]}"):
        load_your_data(written.path, written.columns)
    splits, report = load_your_data(written.path, written.columns, on_bad="skip")
    assert splits["train"]["id"] == written.ids and report.read == 11
    assert {row.line: row.reason for row in report.skipped_rows}.keys() == written.bad.keys()
    for row in report.skipped_rows:
        assert written.bad[row.line] in row.reason, row


def test_a_very_large_image_is_listed_without_being_decoded(tmp_path):
    written = receipts_jsonl(tmp_path / "big", large=True)
    assert (written.folder / "images" / "large_photo.png").stat().st_size < 2_000_000  # small on disk
    splits, _ = load_your_data(written.path, written.columns)
    assert splits["train"]["id"] == written.ids and written.ids[-1] == "R-0009"
    assert _sizes(splits["train"])[-1] == LARGE_SIZE == written.sizes[-1]
    assert written.sizes[6] == (12, 9) and RECEIPTS[6][3] == (12, 9)
