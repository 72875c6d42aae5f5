"""Other people's data: small writers of the layouts users actually bring to notebook 06 and ``vlm-train --recipe
custom`` (issue 25), for tests to import (``from other_data import receipts_csv``; tests/ is on the path).

Receipts-like question answering unless said otherwise: a few small PNG "receipts" in ``images/`` and a file
listing them, with the user's own ids, several valid answers per question (DocVQA-style), non-Latin text (CJK,
Arabic), a question and an answer spanning two lines, an answer that is bracketed text (``[PAID]``) and one
holding ``|`` (``A|B Traders``), and a very small image (12 x 9). Every writer creates a new folder (it refuses
an existing one) and returns an :class:`OtherData` saying what a correct loader must find: the path to give as
``DATA`` / ``--data``, the :class:`~vlm_helpers.data.formats.Columns` (None for conversation layouts), the good
rows' ids, questions, answers and image sizes in file order, what ``detect_format`` says, and for broken files
which lines are broken and why.

Writers: :func:`receipts_jsonl` (optionally with an 8000 x 6000 image), :func:`receipts_csv` (``,`` / ``;`` / tab,
UTF-8 byte-order mark, list answers as JSON or Python literals or ``|``-separated), :func:`json_array`,
:func:`receipts_hub_folder` (``save_to_disk``), :func:`captions_csv` (captioning), :func:`sharegpt`,
:func:`openai_image_url` (path, ``file://`` and ``data:`` URLs), :func:`llava` (a JSON array with ``image`` and
``images``), :func:`broken_jsonl` (bad lines, skippable) and :func:`broken_json_array` (refused as a whole);
:func:`all_layouts` writes every good one. Images are tiny on disk; the large one (a flat colour, so its PNG is
small) is encoded once per test session and only when asked for.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from vlm_helpers.data.formats import Columns

__all__ = ["LARGE_SIZE", "RECEIPTS", "SMALL_SIZE", "OtherData", "all_layouts", "broken_json_array", "broken_jsonl",
           "captions_csv", "json_array", "large_image", "llava", "openai_image_url", "receipts_csv",
           "receipts_hub_folder", "receipts_jsonl", "sharegpt", "small_image"]

#: The very large photo (8000 x 6000: 48 M pixels, under PIL's decompression-bomb limit) and the very small one.
LARGE_SIZE = (8000, 6000)
SMALL_SIZE = (12, 9)

#: ``(id, question, answers, (width, height))`` of the receipts every QA writer lists, in this order.
RECEIPTS = [
    ("R-0001", "What is the total?", ["12.50", "$12.50"], (64, 96)),
    ("R-0002", "Which store is it?", ["A|B Traders"], (72, 96)),
    ("R-0003", "合計はいくらですか？", ["¥1,280", "1280円"], (64, 88)),
    ("R-0004", "ما هو المبلغ الإجمالي؟", ["٤٥ ر.س", "45 SAR"], (60, 100)),
    ("R-0005", "What does the stamp say?", ["[PAID]"], (64, 96)),
    ("R-0006", "Read the footer:\nwhat does it say?", ["Thank you,\ncome again"], (80, 64)),
    ("R-0007", "What is the date?", ["2024-03-01", "01/03/2024", "1 March 2024"], SMALL_SIZE),
    ("R-0008", "How many items?", ["3"], (64, 96)),
]
QA_COLUMNS = Columns(image="file_name", question="question", answer="answers", id="receipt_id")


@dataclass(frozen=True)
class OtherData:
    """What a writer made and what a correct loader must find in it.

    ``path``: the file or folder to load. ``columns``: the Columns to load it with (None: a conversation layout).
    ``ids`` / ``questions`` / ``answers`` / ``sizes``: the good rows, in file order (over the splits in order for a
    folder with several). ``format``: what ``detect_format`` says. ``layout``: a short name for messages.
    ``bad``: line -> a fragment of the reason, for each row broken on purpose (``on_bad="skip"`` lists them).
    ``refusal``: a fragment of the error refusing the whole file in both modes (None if it loads). ``splits``: rows
    per split (one file: ``{"train": n}``). ``task``: ``qa`` or ``captioning``. ``folder``: what was written.
    """

    path: Path
    columns: Columns | None
    ids: list[str]
    questions: list[str]
    answers: list[list[str]]
    sizes: list[tuple[int, int]]
    format: str
    layout: str
    folder: Path
    bad: dict[int, str] = field(default_factory=dict)
    refusal: str | None = None
    splits: dict[str, int] | None = None
    task: str = "qa"

    @property
    def good_rows(self) -> int:
        """How many rows load (with ``on_bad="skip"`` where some are broken)."""
        return len(self.ids)

    def cli_args(self) -> list[str]:
        """The ``vlm-train --recipe custom`` options that read this data (``--data`` and the column options)."""
        args = ["--data", str(self.path)]
        if self.columns is not None:
            c = self.columns
            args += ["--image-column", c.image, "--answer-column", c.answer]
            args += ["--question-column", c.question] if c.question else ["--prompt", c.prompt]
            args += ["--id-column", c.id] if c.id else []
            args += ["--answer-separator", c.answer_separator] if c.answer_separator else []
        return args + (["--task", "captioning"] if self.task == "captioning" else [])


def _new_folder(folder) -> Path:
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: each writer makes a new folder")
    (folder / "images").mkdir(parents=True)
    return folder


def _receipt(size: tuple[int, int], index: int) -> Image.Image:
    """A small receipt-like picture: a tinted paper, a header bar, item lines and the row's number."""
    width, height = size
    image = Image.new("RGB", size, (250 - 9 * index, 248, 240 - 5 * index))
    draw = ImageDraw.Draw(image)
    if min(size) >= 32:
        draw.rectangle((2, 2, width - 3, 10), fill=(40, 40, 40 + 20 * index))
        for y in range(16, height - 14, 8):
            draw.line((4, y, width - 6 - (y * 7 + index * 13) % 20, y), fill=(120, 120, 120))
        draw.text((4, height - 12), f"#{index + 1}", fill=(0, 0, 0))
    return image


def _write_png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


@functools.lru_cache(maxsize=1)
def _large_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", LARGE_SIZE, (236, 232, 220)).save(buffer, format="PNG")
    return buffer.getvalue()


def large_image(path) -> Path:
    """Write the 8000 x 6000 photo (a flat colour: a few hundred KB on disk) at ``path``; encoded once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_large_png())
    return path


def small_image(path) -> Path:
    """Write the 12 x 9 image at ``path``."""
    return _write_png(Path(path), _receipt(SMALL_SIZE, 0))


def _images(folder: Path, rows=RECEIPTS) -> list[str]:
    """One PNG per receipt under ``images/``; their paths relative to ``folder``."""
    names = []
    for index, (_, _, _, size) in enumerate(rows):
        name = f"images/receipt_{index + 1:02d}.png"
        _write_png(folder / name, _receipt(size, index))
        names.append(name)
    return names


def _expected(rows=RECEIPTS, ids=None) -> dict:
    return {"ids": list(ids) if ids is not None else [row[0] for row in rows], "questions": [row[1] for row in rows],
            "answers": [list(row[2]) for row in rows], "sizes": [row[3] for row in rows]}


def _jsonl(path: Path, records: list, *, bom: bool = False) -> Path:
    text = "".join((json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r) + "\n" for r in records)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def receipts_jsonl(folder, *, bom: bool = False, large: bool = False) -> OtherData:
    """``receipts.jsonl``: JSON Lines with list answers, the user's ids and non-Latin text; ``bom`` starts the file
    with a UTF-8 byte-order mark; ``large`` adds a ninth row, ``R-0009``, whose image is 8000 x 6000."""
    folder = _new_folder(folder)
    names = _images(folder)
    rows = list(RECEIPTS)
    if large:
        large_image(folder / "images" / "large_photo.png")
        names.append("images/large_photo.png")
        rows.append(("R-0009", "What is the total on this photo?", ["99.00"], LARGE_SIZE))
    records = [{"receipt_id": rid, "file_name": name, "question": q, "answers": a}
               for (rid, q, a, _), name in zip(rows, names)]
    path = _jsonl(folder / "receipts.jsonl", records, bom=bom)
    return OtherData(path, QA_COLUMNS, format="jsonl", layout="JSON Lines", folder=folder, splits={"train": len(rows)},
                     **_expected(rows))


_ANSWER_FORMS = ("json", "python", "pipe")


def _answer_cell(answers: list[str], form: str) -> str:
    """How a spreadsheet or pandas writes several answers in one cell; one answer is written as it is."""
    if form == "pipe":
        if len(answers) == 1 and "|" not in answers[0]:
            return answers[0]
        if any("|" in answer for answer in answers):  # the escape: a list literal is never split
            return json.dumps(answers, ensure_ascii=False)
        return "|".join(answers)
    if len(answers) == 1:
        return answers[0]
    return json.dumps(answers, ensure_ascii=False) if form == "json" else repr(answers)


def receipts_csv(folder, *, delimiter: str = ",", bom: bool = False, answers: str = "json",
                 name: str = "receipts.csv") -> OtherData:
    """A spreadsheet export: ``delimiter`` ``","``, ``";"`` (many locales) or ``"\\t"``; ``bom`` (Excel's
    "CSV UTF-8"); several answers in one cell as a JSON list (``answers="json"``), a Python list literal as
    ``pandas.to_csv`` writes it (``"python"``), or ``|``-separated (``"pipe"``: the Columns then say
    ``answer_separator="|"``). Quoted values span lines (row R-0006), ``[PAID]`` stays one answer."""
    if answers not in _ANSWER_FORMS:
        raise ValueError(f"answers must be one of {_ANSWER_FORMS}, got {answers!r}")
    folder = _new_folder(folder)
    names = _images(folder)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["receipt_id", "file_name", "question", "answers"])
    for (rid, question, values, _), image in zip(RECEIPTS, names):
        writer.writerow([rid, image, question, _answer_cell(values, answers)])
    path = folder / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    columns = Columns(image="file_name", question="question", answer="answers", id="receipt_id",
                      answer_separator="|" if answers == "pipe" else None)
    separated = {",": "CSV", ";": "CSV, semicolon-separated", "\t": "CSV, tab-separated"}[delimiter]
    return OtherData(path, columns, format="csv", layout=separated, folder=folder, splits={"train": len(RECEIPTS)},
                     **_expected())


def json_array(folder, *, indent: int | None = None, own_ids: bool = True) -> OtherData:
    """``receipts.json``: one JSON array of rows (``indent=None``: all on one line, as ``json.dump`` writes it).
    Without ``own_ids`` the ids are ``receipts.json[<element>]``."""
    folder = _new_folder(folder)
    names = _images(folder)
    records = [{**({"receipt_id": rid} if own_ids else {}), "file_name": name, "question": q, "answers": a}
               for (rid, q, a, _), name in zip(RECEIPTS, names)]
    path = folder / "receipts.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=indent), encoding="utf-8")
    columns = QA_COLUMNS if own_ids else Columns(image="file_name", question="question", answer="answers")
    ids = None if own_ids else [f"receipts.json[{i}]" for i in range(len(RECEIPTS))]
    return OtherData(path, columns, format="json", layout="JSON array", folder=folder,
                     splits={"train": len(RECEIPTS)}, **_expected(ids=ids))


def receipts_hub_folder(folder) -> OtherData:
    """``receipts_dataset/``, written by ``DatasetDict.save_to_disk``: train (the first 6 receipts) and validation
    (the last 2), an ``Image`` column ``picture``, ``query``, a list column ``answers`` and ``receipt_id``."""
    folder = _new_folder(folder)
    parts = {"train": RECEIPTS[:6], "validation": RECEIPTS[6:]}
    features = datasets.Features({"receipt_id": datasets.Value("string"), "picture": datasets.Image(),
                                  "query": datasets.Value("string"),
                                  "answers": datasets.List(datasets.Value("string"))})
    offset = 0
    splits = {}
    for split, rows in parts.items():
        splits[split] = datasets.Dataset.from_dict(
            {"receipt_id": [r[0] for r in rows], "picture": [_receipt(r[3], offset + i) for i, r in enumerate(rows)],
             "query": [r[1] for r in rows], "answers": [r[2] for r in rows]}, features=features)
        offset += len(rows)
    path = folder / "receipts_dataset"
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        datasets.DatasetDict(splits).save_to_disk(str(path))
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()
    columns = Columns(image="picture", question="query", answer="answers", id="receipt_id")
    return OtherData(path, columns, format="hf", layout="save_to_disk folder", folder=folder,
                     splits={name: len(rows) for name, rows in parts.items()}, **_expected())


CAPTIONS = [("IMG_0101", "a long paper receipt on a wooden table, slightly crumpled", (96, 64)),
            ("IMG_0102", "two receipts side by side, the left one torn", (64, 64)),
            ("IMG_0103", "手書きの領収書、右下に赤い印鑑", (64, 80)),
            ("IMG_0104", "إيصال مطبوع من متجر البقالة", (80, 60)),
            ("IMG_0105", "a faded thermal receipt,\nalmost unreadable", (64, 96))]
CAPTION_PROMPT = "Describe the receipt."


def captions_csv(folder, *, delimiter: str = ",") -> OtherData:
    """Captioning: ``photos.csv`` with columns ``photo`` (the id), ``path`` and ``caption`` (free text, CJK and
    Arabic included, one caption spanning two lines); no question column, so the Columns give a prompt."""
    folder = _new_folder(folder)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["photo", "path", "caption"])
    for index, (photo, caption, size) in enumerate(CAPTIONS):
        _write_png(folder / "images" / f"{photo}.png", _receipt(size, index))
        writer.writerow([photo, f"images/{photo}.png", caption])
    path = folder / "photos.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    columns = Columns(image="path", question=None, answer="caption", id="photo", prompt=CAPTION_PROMPT)
    return OtherData(path, columns, ids=[c[0] for c in CAPTIONS], questions=[CAPTION_PROMPT] * len(CAPTIONS),
                     answers=[[c[1]] for c in CAPTIONS], sizes=[c[2] for c in CAPTIONS], format="csv", layout="CSV",
                     folder=folder, splits={"train": len(CAPTIONS)}, task="captioning")


def _first(answers: list[str]) -> str:
    return answers[0]


def sharegpt(folder, *, container: str = "jsonl") -> OtherData:
    """ShareGPT-style ``conversations`` (``from`` human/gpt, ``value`` with ``<image>``), the image in ``image`` or
    ``images``; one row with a system turn, one without an id (its id is then ``file:line`` or ``file[element]``).
    ``container``: ``"jsonl"`` (``sharegpt.jsonl``) or ``"json"`` (``sharegpt.json``, one indented array).
    Conversations carry one answer per question: the first of each receipt's answers."""
    if container not in ("jsonl", "json"):
        raise ValueError(f"container must be 'jsonl' or 'json', got {container!r}")
    folder = _new_folder(folder)
    names = _images(folder)
    name = f"sharegpt.{container}"
    records, ids = [], []
    for index, ((rid, question, answers, _), image) in enumerate(zip(RECEIPTS, names)):
        turns = [{"from": "human", "value": f"<image>\n{question}" if index % 3 else f"{question}\n<image>"},
                 {"from": "gpt", "value": _first(answers)}]
        if index == 1:
            turns.insert(0, {"from": "system", "value": "You read receipts."})
        record = {"id": rid, **({"images": [image]} if index % 2 else {"image": image}), "conversations": turns}
        if index == 4:
            del record["id"]
        records.append(record)
        ids.append(rid if index != 4 else (f"{name}:{index + 1}" if container == "jsonl" else f"{name}[{index}]"))
    path = folder / name
    if container == "jsonl":
        _jsonl(path, records)
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    expected = _expected(ids=ids)
    expected["answers"] = [[_first(a)] for a in expected["answers"]]
    return OtherData(path, None, format="conversations", layout=f"ShareGPT, {container}", folder=folder,
                     splits={"train": len(RECEIPTS)}, **expected)


def openai_image_url(folder) -> OtherData:
    """OpenAI-style ``messages`` in ``openai.jsonl`` (no ids: they are ``openai.jsonl:<line>``); the image is an
    ``image_url`` part whose URL is, by row: a relative path, a ``file://`` URL, a ``data:`` URL holding the PNG
    (with ``"detail"``), a bare string, and the same kinds again; one row has a system message, the assistant's
    content is a string or a list of text parts."""
    folder = _new_folder(folder)
    names = _images(folder)
    records = []
    for index, ((_, question, answers, _), image) in enumerate(zip(RECEIPTS, names)):
        kind = index % 4
        if kind == 0:
            part = {"type": "image_url", "image_url": {"url": image}}
        elif kind == 1:
            part = {"type": "image_url", "image_url": {"url": (folder / image).resolve().as_uri()}}
        elif kind == 2:
            data = base64.b64encode((folder / image).read_bytes()).decode("ascii")
            part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "low"}}
        else:
            part = {"type": "image_url", "image_url": image}
        text = {"type": "text", "text": question}
        content = [text, part] if index % 2 else [part, text]
        reply = _first(answers) if index % 2 else [{"type": "text", "text": _first(answers)}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]
        if index == 3:
            messages.insert(0, {"role": "system", "content": "You are a careful receipt reader."})
        records.append({"messages": messages})
    path = _jsonl(folder / "openai.jsonl", records)
    expected = _expected(ids=[f"openai.jsonl:{i + 1}" for i in range(len(RECEIPTS))])
    expected["answers"] = [[_first(a)] for a in expected["answers"]]
    return OtherData(path, None, format="conversations", layout="OpenAI image_url", folder=folder,
                     splits={"train": len(RECEIPTS)}, **expected)


def llava(folder) -> OtherData:
    """LLaVA-style ``llava.json``: one indented JSON array of ``{"id", "image" or "images": [one path],
    "conversations"}``, ids as LLaVA writes them (digit strings, and one integer), images in a sub-folder."""
    folder = _new_folder(folder)
    names = _images(folder)
    records, ids = [], []
    for index, ((_, question, answers, _), image) in enumerate(zip(RECEIPTS, names)):
        rid = 33471 + index if index == 2 else f"{33471 + index:012d}"
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": _first(answers)}]
        records.append({"id": rid, **({"images": [image]} if index % 2 else {"image": image}), "conversations": turns})
        ids.append(str(rid))
    path = folder / "llava.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    expected = _expected(ids=ids)
    expected["answers"] = [[_first(a)] for a in expected["answers"]]
    return OtherData(path, None, format="conversations", layout="LLaVA, JSON array", folder=folder,
                     splits={"train": len(RECEIPTS)}, **expected)


def broken_jsonl(folder) -> OtherData:
    """``receipts.jsonl`` with 11 lines, 7 of them broken on purpose (``bad``: line -> why): cut-short JSON, a missing
    image file, no answer, a remote URL, bytes that are not UTF-8, an id used again, an empty answer list. The 4
    good rows load with ``on_bad="skip"``; ``on_bad="raise"`` stops at line 2."""
    folder = _new_folder(folder)
    names = _images(folder)

    def row(index, **change):
        rid, question, answers, _ = RECEIPTS[index]
        return json.dumps({"receipt_id": rid, "file_name": names[index], "question": question, "answers": answers,
                           **change}, ensure_ascii=False)

    lines = [row(0),
             row(1)[:-9],  # 2: cut short
             row(2),
             row(3, file_name="images/missing.png"),  # 4
             json.dumps({"receipt_id": "R-0099", "file_name": names[4], "question": "Total?"}),  # 5: no answers
             row(5),
             row(6, file_name="https://example.com/receipt.png"),  # 7
             None,  # 8: not UTF-8
             row(0, question="Again?"),  # 9: R-0001 again
             row(7, receipt_id="R-0100", answers=[]),  # 10
             row(7)]
    raw = b"".join(line.encode("utf-8") + b"\n" if line is not None else
                   '{"receipt_id": "R-0098", "question": "Caf\xe9?"}\n'.encode("latin-1") for line in lines)
    path = folder / "receipts.jsonl"
    path.write_bytes(raw)
    bad = {2: "malformed JSON", 4: "image file not found", 5: "no value for column 'answers'", 7: "remote URL",
           8: "not UTF-8", 9: "id 'R-0001' is used again (first on line 1)", 10: "the answer list is empty"}
    good = [0, 2, 5, 7]
    rows = [RECEIPTS[i] for i in good]
    return OtherData(path, QA_COLUMNS, format="jsonl", layout="JSON Lines", folder=folder, bad=bad,
                     splits={"train": len(good)}, **_expected(rows))


def broken_json_array(folder) -> OtherData:
    """``receipts.json``: an indented JSON array whose third element is cut short; an array cannot be read past
    it, so the file is refused in both ``on_bad`` modes, naming the element and its line (``refusal``)."""
    folder = _new_folder(folder)
    names = _images(folder)
    elements = [json.dumps({"receipt_id": rid, "file_name": name, "question": q, "answers": a}, ensure_ascii=False)
                for (rid, q, a, _), name in zip(RECEIPTS[:4], names)]
    elements[2] = elements[2][:-2]  # drops the closing "]}" of its answers and the object
    text = "[\n" + ",\n".join(f"  {element}" for element in elements) + "\n]\n"
    path = folder / "receipts.json"
    path.write_text(text, encoding="utf-8")
    return OtherData(path, QA_COLUMNS, ids=[], questions=[], answers=[], sizes=[], format="json", layout="JSON array",
                     folder=folder, bad={4: "malformed JSON in element 2"}, refusal="malformed JSON in element 2",
                     splits={})


def all_layouts(folder) -> dict[str, OtherData]:
    """Every good layout, each in its own sub-folder of ``folder`` (no large image, no broken file)."""
    folder = Path(folder)
    return {
        "jsonl_bom": receipts_jsonl(folder / "jsonl_bom", bom=True),
        "csv_json_lists": receipts_csv(folder / "csv_json_lists"),
        "csv_semicolon_bom_python_lists": receipts_csv(folder / "csv_semicolon", delimiter=";", bom=True,
                                                       answers="python"),
        "tsv": receipts_csv(folder / "tsv", delimiter="\t", name="receipts.tsv"),
        "csv_tab_pipe": receipts_csv(folder / "csv_tab_pipe", delimiter="\t", answers="pipe"),
        "json_array": json_array(folder / "json_array"),
        "json_array_indented_no_ids": json_array(folder / "json_array_indented", indent=2, own_ids=False),
        "hub_folder": receipts_hub_folder(folder / "hub"),
        "captions_csv": captions_csv(folder / "captions"),
        "sharegpt_jsonl": sharegpt(folder / "sharegpt_jsonl"),
        "sharegpt_json": sharegpt(folder / "sharegpt_json", container="json"),
        "openai_image_url": openai_image_url(folder / "openai"),
        "llava": llava(folder / "llava"),
    }
