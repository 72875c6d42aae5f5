"""A synthetic "your data" folder for tiny mode: PNG images and a ``data.jsonl`` (and a ``data.csv``) listing them.

Used by ``notebooks/06_your_data_your_model.ipynb``, section "Your data", in tiny mode, where the user's own
folder is replaced by one written here. The images and texts are the series' synthetic data, so a tiny model
can learn from them: question answering on :func:`vlm_helpers.tiny.synthetic_docvqa.make_synthetic_docvqa`'s
pages (answers from small pools, several questions per page) or captioning of
:func:`vlm_helpers.tiny.synthetic_aircraft.make_synthetic_fgvc`'s airliners (their tags as the caption).
Rows can be broken on purpose (:data:`BROKEN_KINDS`) so that ``ON_BAD_ROWS = "skip"`` has something to report;
:class:`SyntheticYourData` says which lines are broken and how.

:func:`tiny_data` is tiny mode's decision in notebook 06: the user's ``DATA`` when it can be read here (a file or
folder on this machine), else this synthetic folder in its place, with one line saying what was replaced and why
(the placeholder path that does not exist yet, a Hub id that tiny mode does not download).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT, caption_target
from vlm_helpers.data.formats import Columns, looks_local
from vlm_helpers.tiny.synthetic_aircraft import make_synthetic_fgvc
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

__all__ = ["BROKEN_KINDS", "SyntheticYourData", "TinyData", "tiny_data", "write_synthetic_image_folder"]

#: The ways a row can be broken: its image file does not exist, its JSON line is cut short (JSONL only),
#: or it has no answer (in the CSV: the line lacks its last value).
BROKEN_KINDS = ("missing_image", "malformed_json", "missing_answer")


@dataclass(frozen=True)
class SyntheticYourData:
    """What :func:`write_synthetic_image_folder` wrote: the files, the :class:`Columns` to read them with, and
    ``broken``: file name -> ``{line: kind}`` of every row broken on purpose. The tiny-mode data of
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    folder: Path
    jsonl: Path
    csv: Path | None
    columns: Columns
    good_rows: int
    broken: dict[str, dict[int, str]]


def _qa_rows(rows: int, seed: int, images: Path) -> list[dict]:
    """DocVQA-style rows; one PNG per page, shared by the page's questions."""
    pages = make_synthetic_docvqa(rows, seed=seed).cast_column("image", datasets.Image(decode=False))
    records = []
    for row in pages:
        name = f"page_{row['docId']}.png"
        if not (images / name).exists():
            (images / name).write_bytes(row["image"]["bytes"])
        records.append({"file_name": f"images/{name}", "question": row["question"], "answers": row["answers"]})
    return records


def _caption_rows(rows: int, seed: int, images: Path) -> list[dict]:
    """FGVC-style airliner photos, captioned with their tags."""
    planes = make_synthetic_fgvc(rows, seed=seed)
    raw = planes.cast_column("image", datasets.Image(decode=False))
    records = []
    for index, (row, image) in enumerate(zip(planes.select_columns(["clip_tags_ViT_L_14"]), raw["image"])):
        name = f"plane_{index:04d}.png"
        (images / name).write_bytes(image["bytes"])
        records.append({"file_name": f"images/{name}", "caption": caption_target(row)})
    return records


def synthetic_columns(task: str) -> Columns:
    """The :class:`Columns` of the folder :func:`write_synthetic_image_folder` writes for ``task``.

    Tiny mode of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if task == "qa":
        return Columns(image="file_name", question="question", answer="answers")
    return Columns(image="file_name", question=None, answer="caption", prompt=AIRCRAFT_PROMPT)


def write_synthetic_image_folder(folder: str | os.PathLike, *, rows: int = 24, task: str = "qa",
                                 broken: Sequence[str] = (), write_csv: bool = False,
                                 seed: int = 0) -> SyntheticYourData:
    """Write ``rows`` good rows (and one extra line per entry of ``broken``) into an empty ``folder``.

    ``folder/images/*.png`` holds the images; ``folder/data.jsonl`` lists them with paths relative to the file
    (``file_name``), the question (``question``, for ``task="qa"``) and the answers (``answers``, a list) or
    the caption (``caption``, for ``task="captioning"``, read with the fixed prompt
    :data:`vlm_helpers.data.aircraft.AIRCRAFT_PROMPT`). ``write_csv=True`` also writes ``data.csv`` with the same
    rows (the first answer only) and the broken rows that a CSV can have. Broken lines are spread through the
    file; a ``folder`` that holds anything is refused, so nothing is overwritten. Tiny mode of
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if task not in ("qa", "captioning"):
        raise ValueError(f"task must be 'qa' or 'captioning', got {task!r}")
    unknown = [kind for kind in broken if kind not in BROKEN_KINDS]
    if unknown:
        raise ValueError(f"unknown broken kinds {unknown}; expected some of {BROKEN_KINDS}")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; write the synthetic data into a new folder")
    images = folder / "images"
    images.mkdir(parents=True)
    good = _qa_rows(rows, seed, images) if task == "qa" else _caption_rows(rows, seed, images)
    columns = synthetic_columns(task)
    answer = columns.answer

    # (kind, record) in file order: broken rows after every len(good) / (len(broken) + 1) good ones
    ordered: list[tuple[str | None, dict]] = [(None, record) for record in good]
    for k, kind in reversed(list(enumerate(broken))):
        record = dict(good[k % len(good)])
        if kind == "missing_image":
            record["file_name"] = f"images/missing_{k}.png"
        elif kind == "missing_answer":
            del record[answer]
        ordered.insert((k + 1) * len(good) // (len(broken) + 1), (kind, record))

    jsonl = folder / "data.jsonl"
    found: dict[str, dict[int, str]] = {"data.jsonl": {}, "data.csv": {}}
    with open(jsonl, "w", encoding="utf-8") as handle:
        for line, (kind, record) in enumerate(ordered, start=1):
            text = json.dumps(record)
            handle.write((text[:-1] if kind == "malformed_json" else text) + "\n")
            if kind:
                found["data.jsonl"][line] = kind
    table = None
    if write_csv:
        table = folder / "data.csv"
        names = list(good[0])
        with open(table, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            line = 1
            for kind, record in ordered:
                if kind == "malformed_json":
                    continue
                line += 1
                values = [record[name][0] if name == "answers" else record[name] for name in names if name in record]
                writer.writerow(values)
                if kind:
                    found["data.csv"][line] = kind
    else:
        del found["data.csv"]
    return SyntheticYourData(folder=folder, jsonl=jsonl, csv=table, columns=columns, good_rows=len(good),
                             broken=found)


@dataclass(frozen=True)
class TinyData:
    """What tiny mode reads: ``source``, ``columns`` and ``format`` for ``load_your_data``; ``line``, the one line
    that says so (printed); ``note``, what the model card adds about the data (None when it is the user's own).
    ``replaced`` is True when a synthetic folder stands in for ``DATA``. Made by :func:`tiny_data` in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    source: Any
    columns: Columns | None
    format: str
    line: str
    note: str | None = None
    synthetic: SyntheticYourData | None = None

    @property
    def replaced(self) -> bool:
        """Whether a synthetic folder stands in for the user's ``DATA``."""
        return self.synthetic is not None


def _unreadable(data: Any) -> str | None:
    """Why tiny mode cannot read ``data`` on this machine (None: it can)."""
    if data is None:
        return "DATA is None"
    if isinstance(data, Mapping):
        missing = [f"{split}={os.fspath(path)!r}" for split, path in data.items() if not os.path.exists(path)]
        return f"DATA names files that are not on this machine ({', '.join(missing)})" if missing else None
    text = os.fspath(data)
    if os.path.exists(text):
        return None
    if looks_local(text):
        return f"DATA = {text!r} is not on this machine (no such file or folder)"
    return f"DATA = {text!r} is a Hub id, and tiny mode downloads nothing"


def tiny_data(data: Any, columns: Columns | None, *, format: str = "auto", task: str = "qa",
              folder: str | os.PathLike | None = None, rows: int = 400,
              broken: Sequence[str] = BROKEN_KINDS, seed: int = 0) -> TinyData:
    """Tiny mode's data: the user's ``DATA`` when it is on this machine, else a synthetic folder in its place.

    ``data``, ``columns`` and ``format`` are the notebook's ``DATA``, ``COLUMNS`` and ``DATA_FORMAT``. A file,
    a folder or one file per split that exists is read as it is, with the user's ``columns`` and ``format``
    (tiny mode changes the model, a tiny twin, and the row limit, not the data). Otherwise (the placeholder
    path, a Hub id: tiny mode runs offline and downloads nothing) :func:`write_synthetic_image_folder` writes
    ``rows`` good rows for ``task`` plus the ``broken`` ones into ``folder`` (default: a new temporary folder),
    and the returned :class:`TinyData` reads that with its own columns; its ``line`` says what was replaced and
    why. Called by the data cell of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    why = _unreadable(data)
    if why is None:
        return TinyData(source=data, columns=columns, format=format,
                        line=f"tiny mode: reading your DATA ({_shown(data)}) with a tiny twin of MODEL")
    target = folder if folder is not None else tempfile.mkdtemp(prefix="tiny-06-data-")
    synthetic = write_synthetic_image_folder(target, rows=rows, task=task, broken=broken, seed=seed)
    replaced = "DATA and COLUMNS" + (f" (and DATA_FORMAT {format!r})" if format != "auto" else "")
    line = (f"tiny mode: {why}, so a synthetic folder stands in for {replaced}: {synthetic.jsonl}, "
            f"{synthetic.good_rows} good rows and broken lines {synthetic.broken['data.jsonl']}")
    note = f"a synthetic image folder written by tiny mode: {why}"
    return TinyData(source=synthetic.jsonl, columns=synthetic.columns, format="auto", line=line, note=note,
                    synthetic=synthetic)


def _shown(data: Any) -> str:
    if isinstance(data, Mapping):
        return ", ".join(f"{split}={os.fspath(path)}" for split, path in data.items())
    return os.fspath(data)
