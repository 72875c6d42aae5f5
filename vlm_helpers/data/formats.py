"""Load the data people actually have into the series' rows: files with an image folder, or a Hugging Face dataset.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Every loader returns rows of
:data:`vlm_helpers.data.canonical.CANONICAL_FEATURES` (``id``, ``image``, ``question``, ``answers``, ``origin``), so the
validation (:func:`vlm_helpers.data.validation.clean_dataset`), the collators and the evaluation of
notebooks 02-04 work on them unchanged:

* :func:`load_jsonl_or_csv`: a JSON Lines file, a ``.json`` file holding one JSON array of rows, or a CSV file
  (comma, ``;``, tab or ``|`` separated, sniffed from the header), with image paths relative to the file's
  folder (or to ``image_root=``, or absolute, or ``file://`` / ``data:`` URLs). :class:`Columns` says which keys
  hold what.
* :func:`load_hf_dataset`: a Hub id (``datasets.load_dataset``) or a folder written by ``save_to_disk``.
* :func:`vlm_helpers.data.conversations.load_conversations`: conversations (chat-template ``messages``, OpenAI
  ``image_url`` parts, ShareGPT / LLaVA ``conversations``), as JSON Lines or one JSON array.
* :func:`load_your_data`: one entry point that picks the format from the source.
* :func:`split_off_validation`: a seeded validation split when the data has none.

Problems are reported by file and line (or dataset, split and row) before anything trains: a
:class:`vlm_helpers.data.canonical.DataFormatError` with ``on_bad="raise"``, a skipped row in the
:class:`vlm_helpers.data.canonical.LoadReport` with ``on_bad="skip"``. Nothing is written next to the
user's files.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from vlm_helpers.data.canonical import (CANONICAL_FEATURES, DataFormatError, LoadReport, OnBad, RowCollector,
                                        json_container, own_row_id, read_json_records, resolve_image, text_lines)
from vlm_helpers.data.conversations import CONVERSATION_KEYS, load_conversations
from vlm_helpers.revisions import revision_kwargs

__all__ = ["Columns", "detect_format", "load_hf_dataset", "load_jsonl_or_csv", "load_your_data", "looks_local"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_FORMATS = ("auto", "jsonl", "json", "csv", "conversations", "hf")
#: The separators a CSV header is tried with, and their names in messages.
CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class Columns:
    """Which of the user's columns (JSONL keys, CSV header names, dataset columns) hold what.

    ``image``: the image (a path in files; an image or a path in a dataset). ``question``: the question;
    for captioning set ``question=None`` and give ``prompt=``, one fixed instruction used as every row's
    question. ``answer``: one string or a list of acceptable strings. ``id``: a unique id per row; without
    it the id is ``"<file name>:<line>"``, ``"<file name>[<element>]"`` (a JSON array) or ``"<split>:<row>"``.

    Several acceptable answers (DocVQA-style): a JSON list, or a list feature of a dataset, is read as it is.
    A CSV cell cannot hold a list, so a cell that is exactly one JSON or Python list literal of strings
    (``["12.50", "$12.50"]`` or ``['12.50', '$12.50']``, what ``pandas.to_csv`` writes for a list) is read as
    several answers; any other cell is one answer, as written (``[PAID]`` included). ``answer_separator``
    (e.g. ``"|"``) splits every string answer that is not a list literal, in any format, at that text, with
    white space around each part removed: off by default, since ``|`` or ``;`` can be part of a real answer.
    Chosen in ``notebooks/06_your_data_your_model.ipynb``, section "Your data"; the accepted forms are listed in
    the README, section "Your data: the formats notebook 06 reads".
    """

    image: str = "image"
    question: str | None = "question"
    answer: str = "answer"
    id: str | None = None
    prompt: str | None = None
    answer_separator: str | None = None

    def __post_init__(self) -> None:
        if (self.question is None) == (self.prompt is None):
            raise ValueError("give either question= (the column holding each row's question) or prompt= "
                             "(one fixed instruction for every row, for captioning, with question=None)")
        if self.prompt is not None and not (isinstance(self.prompt, str) and self.prompt.strip()):
            raise ValueError(f"prompt must be a non-empty string, got {self.prompt!r}")
        names = self.used()
        for role, name in names.items():
            if not (isinstance(name, str) and name):
                raise ValueError(f"Columns({role}=...) must be a non-empty column name, got {name!r}")
        if len(set(names.values())) != len(names):
            raise ValueError(f"each column can play one part only, got {names}")
        if self.answer_separator is not None and not (isinstance(self.answer_separator, str)
                                                      and self.answer_separator.strip()):
            raise ValueError(f"answer_separator must be a non-blank string such as '|', got {self.answer_separator!r}")

    def fields(self) -> dict[str, str]:
        """What a model card records: ``{role: column}`` plus the captioning ``prompt`` when there is one.

        Written into the card in ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".
        """
        return {**self.used(), **({"prompt": self.prompt} if self.prompt else {}),
                **({"answer_separator": self.answer_separator} if self.answer_separator else {})}

    def used(self) -> dict[str, str]:
        """``{role: column}`` for the roles that name a column (``id`` and ``question`` may not)."""
        roles = {"id": self.id, "image": self.image, "question": self.question, "answer": self.answer}
        return {role: name for role, name in roles.items() if name is not None}


def _list_literal(text: str) -> tuple[list | None, str | None]:
    """``(answers, None)`` when a CSV cell is exactly one JSON or Python list literal of strings, ``(None, None)``
    when it is not a list literal (one answer, as written), ``(None, problem)`` for a list of non-strings."""
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None, None
    try:
        value = json.loads(stripped)
    except ValueError:
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None, None
    if not isinstance(value, list):
        return None, None
    if not all(isinstance(item, str) for item in value):
        return None, (f"the answer cell {text!r} is a list literal whose items are not all strings: quote each "
                      f"answer ({json.dumps([str(item) for item in value])}); to mean this text itself, write it as a "
                      f"one-item list ({json.dumps([text])})")
    return value, None


def _answers(value: Any, columns: Columns, *, from_csv: bool, counts: dict) -> tuple[list | None, str | None]:
    """The answer list of one row (the forms :class:`Columns` documents); ``counts`` tallies how each was read."""
    if isinstance(value, str):
        if from_csv:
            parsed, problem = _list_literal(value)
            if problem:
                return None, problem
            if parsed is not None:
                counts["list literal"] = counts.get("list literal", 0) + 1
                return parsed, None
            if value.strip().startswith("[") and value.strip().endswith("]"):
                counts.setdefault("bracketed", value)  # the first one, quoted in the report
        if columns.answer_separator is not None and columns.answer_separator in value:
            counts["split"] = counts.get("split", 0) + 1
            return [part.strip() for part in value.split(columns.answer_separator)], None
        return [value], None
    if isinstance(value, list) and all(isinstance(answer, str) for answer in value):
        return value, None
    return None, f"the answer {columns.answer!r} must be a string or a list of strings, got {value!r}"


def _layout_hint(record: dict, name: str) -> str:
    """What a row that lacks the asked columns looks like, when it has a known other layout."""
    found = [key for key in CONVERSATION_KEYS if isinstance(record.get(key), list)]
    if found:
        return (f"; this row is a conversation ({found[0]!r}): read the file with format='conversations' (or "
                "'auto'), no Columns needed")
    key = next((key for key, value in record.items() if isinstance(value, list) and value
                and all(isinstance(item, dict) for item in value)), None)
    if key is not None:
        return (f"; its {key!r} holds a list of {len(record[key])} objects: if those are the rows, write them as "
                f"one JSON array: python -c \"import json; json.dump(json.load(open('{name}'))[{key!r}], "
                "open('rows.json', 'w'))\"")
    return ""


def _row_values(record: dict, columns: Columns, *, base: Path, default_id: str, from_csv: bool = False,
                counts: dict | None = None, name: str = "data.json"):
    """``(row_id, values, problem)`` for one record: ``values`` are ``add``'s keywords, or None with a problem."""
    row_id = default_id
    if columns.id is not None and columns.id in record:
        row_id, problem = own_row_id(record[columns.id], columns.id)
        if problem:
            return None, None, problem
    missing = [name for name in columns.used().values() if record.get(name) is None]
    if missing:
        absent = ", ".join(repr(name) for name in missing)
        return row_id, None, f"no value for column {absent}; this row has {list(record)}{_layout_hint(record, name)}"
    image, problem = resolve_image(record[columns.image], base)
    if problem:
        return row_id, None, problem
    question = columns.prompt if columns.question is None else record[columns.question]
    if not isinstance(question, str):
        return row_id, None, f"the question {columns.question!r} must be a string, got {type(question).__name__}"
    answers, problem = _answers(record[columns.answer], columns, from_csv=from_csv,
                                counts={} if counts is None else counts)
    if problem:
        return row_id, None, problem
    return row_id, {"row_id": row_id, "image": image, "question": question, "answers": answers}, None


def _file_format(path: Path) -> str:
    """``jsonl``, ``json`` (one JSON array: the content decides for ``.json``, ``.jsonl`` and ``.ndjson``) or
    ``csv`` (``.csv``, ``.tsv``); another extension is refused with how to choose."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return json_container(path) if path.is_file() else ("json" if suffix == ".json" else "jsonl")
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; say which it is "
                     "with format='jsonl', 'json' or 'csv' (command line: --data-format)")


def load_jsonl_or_csv(path: str | os.PathLike, columns: Columns, *, on_bad: OnBad = "raise",
                      image_root: str | os.PathLike | None = None, split: str = "train",
                      format: str | None = None) -> tuple[datasets.Dataset, LoadReport]:
    """Read a JSON Lines, JSON array or CSV file of rows into canonical rows; return ``(dataset, report)``.

    JSON: one object per line, or one JSON array of objects (the first character decides; errors in an array
    name the element and the line it starts on). CSV: the separator (comma, ``;``, tab or ``|``) is the one
    under which the header holds the asked columns (refused only when several would); quoted values may span
    lines; a UTF-8 byte-order mark (or a UTF-16 file) is handled. Image references are resolved against
    ``image_root`` when given, else against the file's folder; absolute paths, ``file://`` and ``data:`` URLs
    are accepted, remote URLs refused. Every image file must exist (it is decoded later, lazily). Answers: see
    :class:`Columns` (CSV list literals, ``answer_separator``); the report's notes say how many were read as
    lists. Problems are named by file and line: a malformed JSON line (with the parser's message), a missing
    column (with the columns the row has, and a hint when the row is a conversation), a missing image file
    (with the resolved path), a wrong type, a repeated id. ``on_bad="raise"`` raises
    :class:`~vlm_helpers.data.canonical.DataFormatError` at the first; ``"skip"`` drops the row and lists it in
    the report. Blank JSONL lines are ignored. CSV lines count from the header (line 1); a CSV header without
    a needed column, and a malformed JSON array, are errors in both modes. ``format`` (``"jsonl"``,
    ``"json"`` or ``"csv"``) overrides the file's extension. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (looked in {os.path.abspath(path)})")
    kind = format or _file_format(path)
    if kind not in ("jsonl", "json", "csv"):
        raise ValueError(f"{path}: format must be 'jsonl', 'json' or 'csv', got {kind!r}")
    if kind != "csv":
        kind = json_container(path)  # JSON Lines or one array: the content decides
    base = Path(os.path.abspath(image_root if image_root is not None else path.parent))
    rows = RowCollector(path, format=kind, on_bad=on_bad, split=split)
    counts: dict = {}
    if kind == "csv":
        delimiter = _csv_delimiter(path, columns)
        records = ((line, None, record, problem) for line, record, problem in _read_csv(path, columns, delimiter))
        rows.report.layout = f"CSV, {CSV_DELIMITERS[delimiter]}-separated" if delimiter != "," else "CSV"
    else:
        records = read_json_records(path)
        rows.report.layout = "JSON array" if kind == "json" else "JSON Lines"
    for line, element, record, problem in records:
        row_id, values, problem = (None, None, problem) if problem else _row_values(
            record, columns, base=base, default_id=rows.default_id(line, element), from_csv=kind == "csv",
            counts=counts, name=path.name)
        if problem:
            rows.fail(line, problem, row_id=row_id, element=element)
        else:
            rows.add(line, element=element, **values)
    dataset, report = rows.finish()
    if counts.get("list literal"):
        report.notes.append(f"{counts['list literal']} answer cell(s) held a list literal, read as a list of "
                            "answers")
    if counts.get("split"):
        report.notes.append(f"{counts['split']} answer(s) split at {columns.answer_separator!r} "
                            "(Columns(answer_separator=...))")
    if "bracketed" in counts:
        report.notes.append(f"answer cells in brackets that are not a list of quoted strings were kept as one answer, "
                            f"as written (the first: {counts['bracketed']!r})")
    return dataset, report


def _csv_lines(path: Path):
    """The file's lines decoded one by one; a line that is not UTF-8 stops the read, named by its number."""
    for number, text, problem in text_lines(path):
        if problem:
            raise DataFormatError(f"line {number} is {problem} (Excel: 'CSV UTF-8')", source=str(path),
                                  line=number)
        yield text


def _csv_delimiter(path: Path, columns: Columns) -> str:
    """The separator under which the header line holds every asked column; the most frequent one if none
    does (the header error then lists the columns found); refused when several would."""
    header = next(_csv_lines(path), "")
    needed = list(columns.used().values())
    fits, counts = [], {}
    for delimiter in CSV_DELIMITERS:
        names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]
        counts[delimiter] = len(names)
        if all(name in names for name in needed):
            fits.append(delimiter)
    if len(fits) > 1:
        found = " and ".join(f"{CSV_DELIMITERS[d]} ({d!r})" for d in fits)
        raise DataFormatError(f"the header holds the columns {needed} both when split at {found}: cannot tell the "
                              "separator; rewrite it with commas, e.g. python -c \"import pandas as pd; "
                              f"pd.read_csv('{path.name}', sep='{fits[-1]!s}').to_csv('commas.csv', index=False)\"",
                              source=str(path), line=1)
    return fits[0] if fits else max(CSV_DELIMITERS, key=lambda d: counts[d])


def _read_csv(path: Path, columns: Columns, delimiter: str = ","):
    """``(line, record, problem)`` per CSV record, lines counted from the header (line 1)."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**24))  # long answers or captions are fine
    reader = csv.reader(_csv_lines(path), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            raise DataFormatError("the file is empty: expected a header line naming the columns",
                                  source=str(path), line=1)
        header = [name.strip() for name in header]
        missing = [name for name in columns.used().values() if name not in header]
        if missing:
            read_as = f" (read as {CSV_DELIMITERS[delimiter]}-separated)" if delimiter != "," else ""
            hint = ("; the file looks like JSON: use format='jsonl' or 'json'"
                    if header[0].lstrip().startswith(("{", "[")) else "")
            raise DataFormatError(f"the header has no column {', '.join(map(repr, missing))}; its columns "
                                  f"are {header}{read_as}{hint}", source=str(path), line=1)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataFormatError(f"the header names {repeated} more than once", source=str(path), line=1)
        previous = reader.line_num
        for values in reader:
            start, previous = previous + 1, reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                yield start, None, f"the line has {len(values)} values, the header has {len(header)} columns"
            else:
                yield start, dict(zip(header, values)), None
    except csv.Error as err:
        raise DataFormatError(f"cannot read the CSV ({err})", source=str(path), line=reader.line_num) from err


def load_hf_dataset(source: str | os.PathLike, columns: Columns, *, split: str | None = None,
                    config: str | None = None, revision: str | None = None) -> datasets.DatasetDict:
    """A Hugging Face dataset as canonical rows: a Hub id, or a folder written by ``save_to_disk``.

    A folder holding ``dataset_dict.json`` or ``state.json`` is read with ``datasets.load_from_disk``
    (a ``DatasetDict`` or one ``Dataset``, whose split is named ``split`` or ``"train"``); anything else is
    passed to ``datasets.load_dataset(source, config, split=split)``, at ``revision`` (a commit hash or branch;
    None: a default dataset's pinned commit, any other id unpinned, as one printed line says; README, section
    "Pinned revisions"). ``split`` keeps one split. The user's
    columns are mapped to ``id`` / ``image`` / ``question`` / ``answers``; a missing column is an error
    naming the dataset, the split and the columns that exist. The image column may be an ``Image`` feature or
    path strings (relative to the working directory). Only text columns are read; images stay as stored, and
    nothing is written to the dataset's folder. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    name = os.fspath(source)
    if os.path.isdir(name):
        if not any(os.path.isfile(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json")):
            raise ValueError(f"{name} is a folder but not one written by save_to_disk (no dataset_dict.json or "
                             "state.json): pass the .jsonl/.csv file that lists its images instead")
        loaded, label = datasets.load_from_disk(name), f"folder {name}"
    elif os.path.exists(name) or not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"{name!r} is neither a folder written by save_to_disk nor a Hub id")
    else:
        loaded = datasets.load_dataset(name, config, split=split, **revision_kwargs(name, revision))
        label = f"dataset {name!r}"
    if isinstance(loaded, datasets.Dataset):
        loaded = {split or "train": loaded}
    elif split is not None:
        if split not in loaded:
            raise ValueError(f"{label} has splits {sorted(loaded)}, not {split!r}")
        loaded = {split: loaded[split]}
    return datasets.DatasetDict({part: _canonical_dataset(ds, columns, where=f"{label}, split {part!r}",
                                                          split=part) for part, ds in loaded.items()})


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _canonical_dataset(ds: datasets.Dataset, columns: Columns, *, where: str, split: str) -> datasets.Dataset:
    """Rename and convert one split; the image column is kept as stored (no decoding, no cache files)."""
    missing = [name for name in columns.used().values() if name not in ds.column_names]
    if missing:
        raise DataFormatError(f"no column {', '.join(map(repr, missing))}; the columns are {ds.column_names}",
                              source=where)
    image = ds.features[columns.image]
    if not (isinstance(image, datasets.Image) or _is_text(image)):
        raise DataFormatError(f"column {columns.image!r} holds {image}, not images or image paths", source=where)
    answer = ds.features[columns.answer]
    if not (_is_text(answer) or _is_text(getattr(answer, "feature", None))):
        raise DataFormatError(f"column {columns.answer!r} holds {answer}, not strings or lists of strings",
                              source=where)
    if columns.question is not None and not _is_text(ds.features[columns.question]):
        raise DataFormatError(f"column {columns.question!r} holds {ds.features[columns.question]}, not strings",
                              source=where)
    sep = columns.answer_separator
    answers = [([part.strip() for part in value.split(sep)] if sep and sep in value else [value])
               if isinstance(value, str) else value for value in ds[columns.answer]]
    questions = list(ds[columns.question]) if columns.question is not None else [columns.prompt] * len(ds)
    if columns.id is None:
        ids = [f"{split}:{row}" for row in range(len(ds))]
    else:
        ids = _ids(list(ds[columns.id]), where, columns.id)
    rows = ds.select_columns([columns.image])  # the only column left, so renaming it cannot clash
    rows = rows.rename_column(columns.image, "image") if columns.image != "image" else rows
    rows = rows.cast_column("image", datasets.Image())  # paths become images; an Image column stays as stored
    origins = [f"{split}:{row}" for row in range(len(ds))]
    for name, values in (("id", ids), ("question", questions), ("answers", answers), ("origin", origins)):
        rows = rows.add_column(name, values, feature=CANONICAL_FEATURES[name])
    return rows.select_columns(list(CANONICAL_FEATURES))


def _ids(values: list, where: str, column: str) -> list[str]:
    """The id column as strings; an empty or repeated id is an error naming the row (and the first one)."""
    first: dict[str, int] = {}
    for row, value in enumerate(values):
        row_id, problem = own_row_id(value, column)
        if problem:
            raise DataFormatError(problem, source=where, row=row)
        if row_id in first:
            raise DataFormatError(f"id {row_id!r} is used again (first on row {first[row_id]})", source=where, row=row)
        first[row_id] = row
    return list(first)


def looks_local(text: str) -> bool:
    """Whether a source that does not exist was meant as a local path rather than a Hub id ``owner/name``:
    it ends in a data file's extension (``.jsonl``, ``.csv``, ``.json``, ...), starts with ``.``, ``/`` or ``~``,
    has more than one ``/``, uses ``\\``, has no ``/`` at all, or its first folder exists here. Used by
    :func:`load_your_data` and ``vlm-train --recipe custom``, so a mistyped path is reported as missing instead
    of being looked up on the Hub (``notebooks/06_your_data_your_model.ipynb``, section "Your data")."""
    if not _HUB_ID.fullmatch(text) or text.count("/") > 1:
        return True
    first, _, rest = text.partition("/")
    data_file = Path(text).suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".parquet",
                                              ".arrow")
    return data_file or text.startswith((".", "~")) or Path(first).is_dir() or not rest


def detect_format(source: str | os.PathLike) -> str:
    """The format of one source: ``jsonl``, ``json`` (one JSON array of rows), ``csv``, ``conversations`` or ``hf``.

    A folder is ``hf`` (``save_to_disk``), a name that is not a file a Hub id. A ``.csv`` / ``.tsv`` file is
    ``csv``. A ``.jsonl``, ``.ndjson`` or ``.json`` file is read by its content: ``conversations`` when its first
    row has a ``messages`` or ``conversations`` list (chat-template, OpenAI, ShareGPT and LLaVA layouts), else
    ``json`` when the file is one JSON array and ``jsonl`` when it is JSON Lines. What ``format="auto"`` means in
    :func:`load_your_data` and ``vlm-train --data-format auto`` (``notebooks/06_your_data_your_model.ipynb``,
    section "Your data")."""
    path = Path(source)
    if path.is_dir():
        return "hf"  # a save_to_disk folder
    if not path.exists():
        if looks_local(os.fspath(source)):
            raise FileNotFoundError(f"no such file or folder: {os.path.abspath(path)} (from {os.fspath(source)!r}); "
                                    "a Hub dataset id looks like 'owner/name'")
        return "hf"  # a Hub id (load_hf_dataset reads it)
    kind = _file_format(path)
    if kind != "csv" and path.is_file():
        try:
            first = next((record for _, _, record, problem in read_json_records(path) if not problem), None)
        except DataFormatError:
            first = None  # the loader reports it, by line
        if first is not None and any(isinstance(first.get(key), list) for key in CONVERSATION_KEYS):
            return "conversations"
    return kind


def load_your_data(source: str | os.PathLike | Mapping[str, str | os.PathLike], columns: Columns | None = None,
                   *, format: str = "auto", on_bad: OnBad = "raise", image_root: str | os.PathLike | None = None,
                   split: str | None = None, config: str | None = None,
                   revision: str | None = None) -> tuple[datasets.DatasetDict, LoadReport]:
    """Load the user's data, whatever its format; return ``(splits, report)``.

    ``source`` is a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file (one split, named ``split`` or ``"train"``),
    a mapping ``{split: file}`` (e.g. ``{"train": "train.jsonl", "validation": "val.jsonl"}``), a folder written
    by ``save_to_disk`` or a Hub id (every split, or ``split``). ``format="auto"`` picks the loader with
    :func:`detect_format` (a JSON file whose first row has ``messages`` or ``conversations`` is read as
    conversations); or say ``"jsonl"`` / ``"json"`` (JSON rows, lines or one array), ``"csv"``,
    ``"conversations"`` or ``"hf"``. ``columns`` is needed except for conversations. ``revision``: the commit of a
    Hub id to read (:func:`load_hf_dataset`). Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if isinstance(source, Mapping):
        parts = {name: _load_file(path, columns, format=format, on_bad=on_bad, image_root=image_root, split=name)
                 for name, path in source.items()}
        report = LoadReport(source=", ".join(f"{name}={path}" for name, path in source.items()),
                            format="/".join(dict.fromkeys(r.format for _, r in parts.values())),
                            layout="/".join(dict.fromkeys(r.layout for _, r in parts.values() if r.layout)))
        for _, part in parts.values():
            report.read += part.read
            report.splits.update(part.splits)
            report.skipped_rows += part.skipped_rows
            report.notes += part.notes
        return datasets.DatasetDict({name: ds for name, (ds, _) in parts.items()}), report
    kind = detect_format(source) if format == "auto" else format
    if kind == "hf":
        splits = load_hf_dataset(source, _need(columns, source), split=split, config=config, revision=revision)
        sizes = {name: len(ds) for name, ds in splits.items()}
        return splits, LoadReport(source=os.fspath(source), format="hf", read=sum(sizes.values()), splits=sizes)
    dataset, report = _load_file(source, columns, format=kind, on_bad=on_bad, image_root=image_root,
                                 split=split or "train")
    return datasets.DatasetDict({split or "train": dataset}), report


def _need(columns: Columns | None, source: Any) -> Columns:
    if columns is None:
        raise ValueError(f"{source}: pass columns=Columns(image=..., question=..., answer=...) naming your columns")
    return columns


def _load_file(path, columns, *, format: str, on_bad: OnBad, image_root, split: str):
    kind = detect_format(path) if format == "auto" else format
    if kind == "conversations":
        id_key = columns.id if columns is not None and columns.id else "id"
        return load_conversations(path, on_bad=on_bad, image_root=image_root, split=split, id_key=id_key)
    if kind not in ("jsonl", "json", "csv"):
        raise ValueError(f"{path}: a split given as a file must be JSON, JSON Lines or CSV, got format {kind!r}")
    return load_jsonl_or_csv(path, _need(columns, path), on_bad=on_bad, image_root=image_root, split=split,
                             format=kind)
