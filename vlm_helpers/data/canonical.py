"""The one row schema every "your data" loader produces, and the bookkeeping the loaders share.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Whatever the user's
data looks like (a JSONL or CSV file next to an image folder, a Hugging Face dataset, a chat-style
JSONL), the loaders of :mod:`vlm_helpers.data.formats` and :mod:`vlm_helpers.data.conversations`
turn it into rows of :data:`CANONICAL_FEATURES`:

* ``id`` (str): the user's id, or where the row came from: ``"data.jsonl:4"`` (file name and line,
  1-based), ``"data.json[3]"`` (file name and element of a JSON array, 0-based) or ``"train:3"`` (split and
  row, 0-based) for a Hugging Face dataset. Later errors of
  :func:`vlm_helpers.data.validation.clean_dataset` quote it, so they name the file and line too.
* ``image``: a ``datasets.Image`` feature holding the file's path (or, for a ``data:`` URL, its bytes), decoded
  only when a row is read.
* ``question`` (str): the question, or the fixed prompt of a captioning task.
* ``answers`` (list of str): one or more acceptable answers or captions.
* ``origin`` (str): where the row was read, whatever its id: ``"data.jsonl:4"`` (file name and line) or
  ``"train:3"`` (split and row of a dataset). ``clean_dataset``'s errors add it when the id is the user's own
  (``[split='train', row 5, id=a7, from data.jsonl:12]``), since row numbers count within a split after the
  hold-outs.

Problems found while reading a file raise :class:`DataFormatError` (``on_bad="raise"``) or are
listed as :class:`BadRow` in a :class:`LoadReport` (``on_bad="skip"``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import datasets

from vlm_helpers.data.errors import DataValidationError

__all__ = ["BadRow", "CANONICAL_FEATURES", "DataFormatError", "LoadReport", "RowCollector", "json_container",
           "own_row_id", "read_json_records", "read_jsonl", "resolve_image", "resolve_image_path", "text_lines"]

#: Columns and types of every dataset the "your data" loaders return.
CANONICAL_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "origin": datasets.Value("string"),
})

OnBad = Literal["raise", "skip"]


class DataFormatError(DataValidationError):
    """The user's data cannot be read as asked; the message starts with where: ``[data.jsonl:4, id=a7]``.

    ``source`` is the file (as the user named it) or the dataset (``dataset 'org/name', split 'train'``);
    ``line`` the 1-based line of a file, ``element`` the 0-based element of a file holding one JSON array
    (``[data.json:12, element 3]``: the element starts on line 12), ``row`` the 0-based row of a dataset,
    ``row_id`` the row's id when it is the user's own. A subclass of the series' :class:`DataValidationError`,
    so code that catches one catches both. Raised by ``ON_BAD_ROWS = "raise"`` in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    def __init__(self, problem: str, *, source: str, line: int | None = None, row: int | None = None,
                 row_id: Any = None, element: int | None = None) -> None:
        self.source, self.line, self.row, self.element, self.problem = source, line, row, element, problem
        self.split, self.index, self.question_id = None, line if line is not None else row, row_id
        where = (source + (f":{line}" if line is not None else "") + (f", element {element}" if element is not None
                                                                      else "") + (f", row {row}" if row is not None
                                                                                  else ""))
        if row_id is not None:
            where += f", id={row_id}"
        ValueError.__init__(self, f"[{where}] {problem}")


class BadRow(NamedTuple):
    """One row a loader dropped with ``on_bad="skip"``: file, 1-based line, id (None if unknown), why, and the
    0-based element for a file holding one JSON array (None otherwise).

    Listed by the load report in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    file: str
    line: int
    id: str | None
    reason: str
    element: int | None = None

    def __str__(self) -> str:
        own_id = self.id is not None and self.id != _default_id(Path(self.file).name, self.line, self.element)
        return (f"{self.file}:{self.line}" + (f" (element {self.element})" if self.element is not None else "")
                + (f" (id={self.id})" if own_id else "") + f": {self.reason}")


def _default_id(name: str, line: int, element: int | None) -> str:
    """A row's id when the user gives none: ``data.jsonl:4`` (line), or ``data.json[3]`` (element of an array)."""
    return f"{name}[{element}]" if element is not None else f"{name}:{line}"


@dataclass
class LoadReport:
    """What a loader read: the source, its format, rows per split and every row it skipped.

    ``format`` is the loader's (``jsonl``, ``json``, ``csv``, ``conversations``, ``hf``); ``layout`` says what was
    found in the file: the container (``JSON Lines``, ``JSON array``, ``CSV, ';'-separated``) and, for
    conversations, the row layouts (``ShareGPT/LLaVA``, ``OpenAI image_url``, ``messages``). Printed in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    source: str
    format: str
    read: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: str = ""

    @property
    def kept(self) -> int:
        """Rows kept, over all splits."""
        return sum(self.splits.values())

    @property
    def skipped(self) -> int:
        """Rows dropped."""
        return len(self.skipped_rows)

    def __str__(self) -> str:
        sizes = ", ".join(f"{name}={count}" for name, count in self.splits.items())
        kind = f"{self.format}: {self.layout}" if self.layout else self.format
        lines = [f"{self.source} ({kind}): read {self.read} rows, kept {self.kept}, "
                 f"skipped {self.skipped} -> {sizes}"]
        lines += [f"  {row}" for row in self.skipped_rows] + [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def text_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line, text, problem)`` for every line of a text file (lines count from 1, line endings kept).

    UTF-8, with or without a byte-order mark, is decoded line by line, so a line that is not UTF-8 is named
    by its own number (``text`` None, ``problem`` says why). A file starting with a UTF-16 byte-order mark
    (Excel's "Unicode Text") is decoded as UTF-16. Shared by the JSONL and CSV readers of
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    with open(path, "rb") as handle:
        if handle.read(2) in _UTF16_BOMS:
            handle.seek(0)
            try:
                text = handle.read().decode("utf-16")
            except UnicodeDecodeError as err:
                raise DataFormatError(f"the file starts as UTF-16 but is not ({err.reason}); save it as UTF-8",
                                      source=str(path), line=1) from err
            for number, line in enumerate(io.StringIO(text, newline=""), start=1):
                yield number, line, None
            return
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8"), None
            except UnicodeDecodeError as err:
                yield number, None, f"not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8"


def read_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, object, problem)`` for every non-blank line of a JSONL file (lines count from 1).

    ``problem`` is None for a JSON object, else what is wrong (malformed JSON with the parser's
    message, a JSON value that is not an object, text that is not UTF-8). Blank lines are skipped;
    a UTF-8 byte-order mark is ignored. Read line by line for ``notebooks/06_your_data_your_model.ipynb``,
    section "Your data".
    """
    for number, text, problem in text_lines(path):
        if problem:
            yield number, None, problem
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            yield number, None, f"malformed JSON: {err.msg} (column {err.colno})"
            continue
        if not isinstance(value, dict):
            yield number, None, f"expected a JSON object {{...}}, got a JSON {type(value).__name__}"
            continue
        yield number, value, None


def json_container(path: Path) -> str:
    """``"json"`` for a file holding one JSON array (its first character, after white space and a byte-order
    mark, is ``[``), else ``"jsonl"`` (JSON Lines: one object per line). The content decides, not the
    extension: ``notebooks/06_your_data_your_model.ipynb``, section "Your data"."""
    with open(path, "rb") as handle:
        if handle.read(3) != b"\xef\xbb\xbf":
            handle.seek(0)
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return "json" if stripped.startswith(b"[") else "jsonl"
    return "jsonl"


_SPACE = re.compile(r"\s*")


def _list_values(value: dict) -> str:
    """The keys of an object that hold lists of objects, with their lengths (what a wrapper file looks like)."""
    lists = {key: len(item) for key, item in value.items()
             if isinstance(item, list) and item and all(isinstance(entry, dict) for entry in item)}
    return ", ".join(f"{key!r} ({count} objects)" for key, count in lists.items())


def _one_object_hint(path: Path) -> str | None:
    """Why a JSON file whose first line does not parse is refused, when the whole file is one JSON object."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    lists = _list_values(value)
    key = next((k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(e, dict) for e in v)),
               None)
    convert = (f"; if the rows are its list {key!r}, write them as one JSON array: python -c \"import json; "
               f"json.dump(json.load(open('{path.name}'))[{key!r}], open('rows.json', 'w'))\"" if key else "")
    return (f"the file is one JSON object spread over several lines (keys {list(value)[:8]}"
            + (f"; lists of objects: {lists}" if lists else "") + "), not rows: expected JSON Lines (one object per "
            f"line) or one JSON array of objects{convert}")


def _read_json_array(path: Path) -> Iterator[tuple[int, int, Any, str | None]]:
    """``(line, element, object, problem)`` for each element of a file holding one JSON array."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataFormatError(f"line {line} is not UTF-8 ({err.reason}); save the file as UTF-8", source=str(path),
                              line=line) from err
    decoder, line, counted = json.JSONDecoder(), 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, index), index
        return line

    position = _SPACE.match(text, _SPACE.match(text).end() + 1).end()  # after the opening [
    element = 0
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            at = line_at(position)
            try:
                value, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"malformed JSON in element {element} of the array, which starts on line {at}: "
                                      f"{err.msg} (noticed at line {err.lineno}, column {err.colno}); the elements "
                                      "after it cannot be found, so the file is refused whatever on_bad says",
                                      source=str(path), line=at, element=element) from err
            if isinstance(value, dict):
                yield at, element, value, None
            else:
                yield at, element, None, f"expected a JSON object {{...}}, got a JSON {type(value).__name__}"
            element += 1
            position = _SPACE.match(text, end).end()
            if text.startswith(",", position):
                position = _SPACE.match(text, position + 1).end()
            elif text.startswith("]", position):
                position += 1
                break
            else:
                raise DataFormatError(f"expected ',' or ']' after element {element - 1} of the array",
                                      source=str(path), line=line_at(position))
    rest = _SPACE.match(text, position).end()
    if rest != len(text):
        raise DataFormatError("the file holds one JSON array followed by more text; expected one JSON array of "
                              "objects, or JSON Lines (one object per line)", source=str(path), line=line_at(rest))


def read_json_records(path: Path) -> Iterator[tuple[int, int | None, Any, str | None]]:
    """``(line, element, object, problem)`` for every row of a JSON file, whichever container it uses.

    A file whose first character is ``[`` holds one JSON array (pretty-printed or on one line): ``element``
    is the 0-based index and ``line`` the line it starts on; a malformed array (unlike a malformed JSON line) is
    refused as a whole, since the elements after it cannot be found. Anything else is JSON Lines (``element``
    None), read by :func:`read_jsonl`; a file that is one JSON object over several lines is refused with a hint.
    Both layouts of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if json_container(path) == "json":
        yield from _read_json_array(path)
        return
    for number, value, problem in read_jsonl(path):
        if number == 1 and problem and problem.startswith("malformed JSON"):
            hint = _one_object_hint(path)
            if hint:
                raise DataFormatError(hint, source=str(path), line=1)
        yield number, None, value, problem


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _data_url(value: str) -> tuple[bytes | None, str | None]:
    """The bytes of a ``data:`` URL (``data:image/png;base64,...``), or a problem."""
    header, comma, payload = value.partition(",")
    if not comma:
        return None, "the data: URL has no ',' before its data"
    kind = header[len("data:"):].split(";")
    if kind[0] and not kind[0].lower().startswith("image/"):
        return None, f"the data: URL holds {kind[0]!r}, not an image"
    try:
        data = (base64.b64decode(payload, validate=True) if "base64" in (part.lower() for part in kind[1:])
                else urllib.parse.unquote_to_bytes(payload))
    except (binascii.Error, ValueError) as err:
        return None, f"the data: URL's base64 cannot be decoded ({err})"
    if not data:
        return None, "the data: URL holds no bytes"
    return data, None


def resolve_image(value: Any, base: Path) -> tuple[dict | None, str | None]:
    """``({"path": ..., "bytes": ...}, None)`` for one image reference, else ``(None, problem)``.

    Accepted: a path relative to ``base`` (or absolute, or starting with ``~``); a ``file://`` URL
    (``file:///home/me/a.png``, or ``file:images/a.png`` relative to ``base``); a ``data:`` URL with the image's
    bytes (``data:image/png;base64,...``, kept in memory as ``bytes``). ``http(s)://`` and other remote URLs
    are refused: training reads local files only. A path must name an existing file; nothing is decoded here.
    What image references notebook 06 reads: ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if not isinstance(value, str):
        return None, f"the image path must be a string, got {type(value).__name__} {value!r}"
    if not value.strip():
        return None, "the image path is empty"
    if value[:5].lower() == "data:":
        data, problem = _data_url(value.strip())
        return ({"path": None, "bytes": data}, None) if data is not None else (None, problem)
    if value[:5].lower() == "file:":
        parsed = urllib.parse.urlparse(value.strip())
        if parsed.netloc not in ("", "localhost"):
            return None, f"the file: URL {value!r} names another machine ({parsed.netloc!r}); give a local path"
        path = urllib.request.url2pathname(parsed.path)
    elif _URL.match(value):
        shown = value if len(value) <= 120 else value[:117] + "..."
        return None, (f"the image is a remote URL ({shown}); this series reads local files only (training runs "
                      "without network access): download the images and give their paths")
    else:
        path = value
    resolved = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if os.path.isdir(resolved):
        return None, f"the image path {value!r} is a folder: {resolved}"
    if not os.path.isfile(resolved):
        return None, f"image file not found: {resolved} (from {value!r})"
    return {"path": resolved, "bytes": None}, None


def resolve_image_path(value: Any, base: Path) -> tuple[str | None, str | None]:
    """``(absolute path, None)`` for an image path relative to ``base`` (or absolute), else ``(None, problem)``.

    The file must exist; it is not opened (decoding is :func:`vlm_helpers.data.validation.clean_dataset`'s
    job). A ``file://`` URL is a path; a ``data:`` URL, which has no path, is refused here (use
    :func:`resolve_image`). How paths are resolved: ``notebooks/06_your_data_your_model.ipynb``, section
    "Your data".
    """
    image, problem = resolve_image(value, base)
    if problem:
        return None, problem
    if image["path"] is None:
        return None, "a data: URL has no file path"
    return image["path"], None


def own_row_id(value: Any, column: str) -> tuple[str | None, str | None]:
    """``(id, None)`` for a usable id value (a non-empty string or an integer, kept as a string), else
    ``(None, problem)``. The ``id`` column of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None, f"the id {column!r} must be a non-empty string or an integer, got {value!r}"
    return str(value), None


class RowCollector:
    """Collects canonical rows from one file; raises or records every problem, by line (and element).

    ``fail`` raises :class:`DataFormatError` (``on_bad="raise"``) or records a :class:`BadRow`
    (``"skip"``); ``add`` keeps a row and refuses an id seen before; ``finish`` returns the
    ``datasets.Dataset`` and the :class:`LoadReport`. ``element`` is the 0-based element of a file holding one
    JSON array (None for lines). Shared by the file loaders of ``notebooks/06_your_data_your_model.ipynb``,
    section "Your data".
    """

    def __init__(self, path: Path, *, format: str, on_bad: OnBad, split: str) -> None:
        if on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
        self.path, self.on_bad, self.split = path, on_bad, split
        self.report = LoadReport(source=str(path), format=format)
        self.columns: dict[str, list] = {name: [] for name in CANONICAL_FEATURES}
        self.first_line: dict[str, str] = {}

    def default_id(self, line: int, element: int | None = None) -> str:
        """The id of a row without one: ``"<file name>:<line>"``, or ``"<file name>[<element>]"`` in an array."""
        return _default_id(self.path.name, line, element)

    def fail(self, line: int, problem: str, *, row_id: str | None = None, element: int | None = None) -> None:
        """Raise, or record the row as skipped (``row_id``: the row's id, if known)."""
        self.report.read += 1
        if self.on_bad == "raise":
            own_id = row_id if row_id is not None and row_id != self.default_id(line, element) else None
            raise DataFormatError(problem, source=str(self.path), line=line, row_id=own_id, element=element)
        self.report.skipped_rows.append(BadRow(str(self.path), line, row_id, problem, element))

    def add(self, line: int, *, row_id: str, image: str | dict, question: str, answers: list[str],
            element: int | None = None) -> None:
        """Keep one row (its image a path checked to exist, or ``{"path", "bytes"}`` from
        :func:`resolve_image`), after the checks that need no decoding: a non-empty question and answers, a
        non-empty image. Those found here are named by file and line; what needs decoding (a corrupt image,
        reserved tokens) is ``clean_dataset``'s, by id."""
        image = {"path": image, "bytes": None} if isinstance(image, str) else image
        size = len(image["bytes"]) if image["bytes"] is not None else os.path.getsize(image["path"])
        problem = (f"the question is empty ({question!r})" if not question.strip() else
                   "the answer list is empty" if not answers else
                   f"answer {next(i for i, a in enumerate(answers) if not a.strip())} is empty ({answers!r})"
                   if not all(answer.strip() for answer in answers) else
                   f"the image file is empty (0 bytes): {image['path']}" if size == 0 else None)
        if problem:
            self.fail(line, problem, row_id=row_id, element=element)
            return
        if row_id in self.first_line:
            self.fail(line, f"id {row_id!r} is used again (first {self.first_line[row_id]})", row_id=row_id,
                      element=element)
            return
        self.report.read += 1
        self.first_line[row_id] = f"on line {line}" if element is None else f"in element {element}, line {line}"
        for name, value in (("id", row_id), ("image", image), ("question", question),
                            ("answers", answers), ("origin", self.default_id(line, element))):
            self.columns[name].append(value)

    def finish(self) -> tuple[datasets.Dataset, LoadReport]:
        """The kept rows as a dataset with :data:`CANONICAL_FEATURES`, and the report."""
        kept = len(self.columns["id"])
        if kept == 0:
            first = f"; first problem: {self.report.skipped_rows[0]}" if self.report.skipped_rows else ""
            raise DataFormatError(f"no usable rows ({self.report.read} read){first}", source=str(self.path))
        self.report.splits[self.split] = kept
        return datasets.Dataset.from_dict(self.columns, features=CANONICAL_FEATURES), self.report
