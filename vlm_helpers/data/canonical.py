"""The one row schema every "your data" loader produces, and the bookkeeping the loaders share.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Whatever the user's
data looks like (a JSONL or CSV file next to an image folder, a Hugging Face dataset, a chat-style
JSONL), the loaders of :mod:`vlm_helpers.data.formats` and :mod:`vlm_helpers.data.conversations`
turn it into rows of :data:`CANONICAL_FEATURES`:

* ``id`` (str): the user's id, or where the row came from: ``"data.jsonl:4"`` (file name and line,
  1-based) or ``"train:3"`` (split and row, 0-based) for a Hugging Face dataset. Later errors of
  :func:`vlm_helpers.data.validation.clean_dataset` quote it, so they name the file and line too.
* ``image``: a ``datasets.Image`` feature holding the file's path, decoded only when a row is read.
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

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import datasets

from vlm_helpers.data.validation import DataValidationError

__all__ = ["BadRow", "CANONICAL_FEATURES", "DataFormatError", "LoadReport", "RowCollector", "own_row_id",
           "read_jsonl", "resolve_image_path"]

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
    ``line`` the 1-based line of a file, ``row`` the 0-based row of a dataset, ``row_id`` the row's id
    when it is the user's own. A subclass of the series' :class:`DataValidationError`, so code that
    catches one catches both. Raised by ``ON_BAD_ROWS = "raise"`` in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    def __init__(self, problem: str, *, source: str, line: int | None = None, row: int | None = None,
                 row_id: Any = None) -> None:
        self.source, self.line, self.row, self.problem = source, line, row, problem
        self.split, self.index, self.question_id = None, line if line is not None else row, row_id
        where = source + (f":{line}" if line is not None else "") + (f", row {row}" if row is not None else "")
        if row_id is not None:
            where += f", id={row_id}"
        ValueError.__init__(self, f"[{where}] {problem}")


class BadRow(NamedTuple):
    """One row a loader dropped with ``on_bad="skip"``: file, 1-based line, id (None if unknown) and why.

    Listed by the load report in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    file: str
    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        own_id = self.id is not None and self.id != f"{Path(self.file).name}:{self.line}"
        return f"{self.file}:{self.line}" + (f" (id={self.id})" if own_id else "") + f": {self.reason}"


@dataclass
class LoadReport:
    """What a loader read: the source, its format, rows per split and every row it skipped.

    Printed in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    source: str
    format: str
    read: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        lines = [f"{self.source} ({self.format}): read {self.read} rows, kept {self.kept}, "
                 f"skipped {self.skipped} -> {sizes}"]
        lines += [f"  {row}" for row in self.skipped_rows] + [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def read_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line, object, problem)`` for every non-blank line of a JSONL file (lines count from 1).

    ``problem`` is None for a JSON object, else what is wrong (malformed JSON with the parser's
    message, a JSON value that is not an object, text that is not UTF-8). Blank lines are skipped;
    a UTF-8 byte-order mark is ignored. Read line by line for ``notebooks/06_your_data_your_model.ipynb``,
    section "Your data".
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield number, None, f"not UTF-8 text ({err})"
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield number, None, f"malformed JSON: {err.msg} at column {err.colno}"
                continue
            if not isinstance(value, dict):
                yield number, None, f"expected a JSON object {{...}}, got a JSON {type(value).__name__}"
                continue
            yield number, value, None


def resolve_image_path(value: Any, base: Path) -> tuple[str | None, str | None]:
    """``(absolute path, None)`` for an image path relative to ``base`` (or absolute), else ``(None, problem)``.

    The file must exist; it is not opened (decoding is :func:`vlm_helpers.data.validation.clean_dataset`'s
    job). How paths are resolved: ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if not isinstance(value, str):
        return None, f"the image path must be a string, got {type(value).__name__} {value!r}"
    if not value.strip():
        return None, "the image path is empty"
    if value.startswith(("http://", "https://")):
        return None, f"the image is a URL ({value}); download the images and give their paths"
    resolved = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if os.path.isdir(resolved):
        return None, f"the image path {value!r} is a folder: {resolved}"
    if not os.path.isfile(resolved):
        return None, f"image file not found: {resolved} (from {value!r})"
    return resolved, None


def own_row_id(value: Any, column: str) -> tuple[str | None, str | None]:
    """``(id, None)`` for a usable id value (a non-empty string or an integer, kept as a string), else
    ``(None, problem)``. The ``id`` column of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None, f"the id {column!r} must be a non-empty string or an integer, got {value!r}"
    return str(value), None


class RowCollector:
    """Collects canonical rows from one file; raises or records every problem, by line.

    ``fail`` raises :class:`DataFormatError` (``on_bad="raise"``) or records a :class:`BadRow`
    (``"skip"``); ``add`` keeps a row and refuses an id seen before; ``finish`` returns the
    ``datasets.Dataset`` and the :class:`LoadReport`. Shared by the file loaders of
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    def __init__(self, path: Path, *, format: str, on_bad: OnBad, split: str) -> None:
        if on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
        self.path, self.on_bad, self.split = path, on_bad, split
        self.report = LoadReport(source=str(path), format=format)
        self.columns: dict[str, list] = {name: [] for name in CANONICAL_FEATURES}
        self.first_line: dict[str, int] = {}

    def default_id(self, line: int) -> str:
        """The id of a row without one: ``"<file name>:<line>"``."""
        return f"{self.path.name}:{line}"

    def fail(self, line: int, problem: str, *, row_id: str | None = None) -> None:
        """Raise, or record the row as skipped (``row_id``: the row's id, if known)."""
        self.report.read += 1
        if self.on_bad == "raise":
            own_id = row_id if row_id is not None and row_id != self.default_id(line) else None
            raise DataFormatError(problem, source=str(self.path), line=line, row_id=own_id)
        self.report.skipped_rows.append(BadRow(str(self.path), line, row_id, problem))

    def add(self, line: int, *, row_id: str, image: str, question: str, answers: list[str]) -> None:
        """Keep one row (its image is a path checked to exist), after the checks that need no decoding:
        a non-empty question and answers, a non-empty image file. Those found here are named by file and
        line; what needs decoding (a corrupt image, reserved tokens) is ``clean_dataset``'s, by id."""
        problem = (f"the question is empty ({question!r})" if not question.strip() else
                   "the answer list is empty" if not answers else
                   f"answer {next(i for i, a in enumerate(answers) if not a.strip())} is empty ({answers!r})"
                   if not all(answer.strip() for answer in answers) else
                   f"the image file is empty (0 bytes): {image}" if os.path.getsize(image) == 0 else None)
        if problem:
            self.fail(line, problem, row_id=row_id)
            return
        if row_id in self.first_line:
            self.fail(line, f"id {row_id!r} is used again (first on line {self.first_line[row_id]})", row_id=row_id)
            return
        self.report.read += 1
        self.first_line[row_id] = line
        for name, value in (("id", row_id), ("image", {"path": image, "bytes": None}), ("question", question),
                            ("answers", answers), ("origin", self.default_id(line))):
            self.columns[name].append(value)

    def finish(self) -> tuple[datasets.Dataset, LoadReport]:
        """The kept rows as a dataset with :data:`CANONICAL_FEATURES`, and the report."""
        kept = len(self.columns["id"])
        if kept == 0:
            first = f"; first problem: {self.report.skipped_rows[0]}" if self.report.skipped_rows else ""
            raise DataFormatError(f"no usable rows ({self.report.read} read){first}", source=str(self.path))
        self.report.splits[self.split] = kept
        return datasets.Dataset.from_dict(self.columns, features=CANONICAL_FEATURES), self.report
