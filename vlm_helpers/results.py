"""Reading and writing the series' ``results/`` folder: one format for notebooks 01-05.

Written by notebooks 01-04 and the CLI, read by ``notebooks/05_before_after_comparison.ipynb``.

Format. A *run* is one model evaluated on one task at one stage; its name is
``<task>__<model>__<stage>`` (e.g. ``docvqa__florence2__finetuned``), and it owns up to
three files in the results folder:

``<run>.predictions.jsonl``
    one JSON object per line: ``id``, ``question``, ``references`` (list of str),
    ``prediction``, ``model``, ``mode`` ("tiny" or "full"), and optionally ``origin`` (where
    the row was read: ``"data.jsonl:12"``) and ``image`` (a path to a saved copy of the input,
    for galleries);
``<run>.metrics.json``
    ``{"task", "model", "stage", "mode", "notebook", "samples", "metrics": {name: value}}``;
    ``stage`` is ``"baseline"`` (zero-shot) or ``"finetuned"``;
``<run>.history.json``
    the training loss history (list of ``{"step", "loss", ...}``), fine-tuned runs only;
``images/<task>/<run>/<id>.jpg``
    small copies of the evaluated inputs (when ``write_run`` gets ``images``), referenced by
    the records' ``image`` field relative to the results folder, for notebook 05's gallery.
    Each run owns its thumbnails: writing the run again replaces them (and removes those its
    new records no longer name), and another run with the same ids keeps its own.

Ids. A record's ``id`` names one evaluated row, the same row in every run that scored it, and
is unique within a run (``write_run`` refuses duplicates): DocVQA's ``questionId`` in notebooks
01-03, and in notebook 06 and ``vlm-train --recipe custom`` the id the user's data gave the row (its
``id`` field, or ``file:line`` where it has none), with ``origin`` (the file and line it was read
from) beside it, so predictions can be joined back to the user's own rows.

Files are written atomically (temporary file, then rename), so a crash never leaves
half a file for notebook 05 to choke on.

Producers. ``notebook`` in the metrics file names who wrote the run: ``"01"``..``"04"``
for the notebooks, ``"vlm-train"`` for the CLI. :func:`write_run` never silently replaces
a run it must not (see :func:`replace_problem`): a fine-tuned run from another producer
is a different fine-tuned model, and a ``"full"`` run is never replaced by a ``"tiny"``
one. Baselines are the same zero-shot measurement whoever runs them (notebooks 01 and
02 both write ``docvqa__florence2__baseline``), so they may replace each other, and a
producer may always re-run its own run in the same mode. In those refused cases
``write_run`` raises ``FileExistsError`` before writing anything; pass ``replace=True``
(``--replace-results`` for ``vlm-train``) or choose another results folder.

Reading. A truncated or invalid file, a metrics file without a required key, or a
predictions line without ``id`` / ``prediction`` / ``references`` (or with ``null``
there) raises a ``ValueError`` naming the file (and the line, for ``.jsonl``).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from vlm_helpers.history import finite_or_null

STAGES = ("baseline", "finetuned")
MODES = ("tiny", "full")

#: Keys every ``<run>.metrics.json`` must have.
METRICS_KEYS = ("task", "model", "stage", "mode", "metrics")
#: Keys every line of ``<run>.predictions.jsonl`` must have.
RECORD_KEYS = ("id", "prediction", "references")


def default_results_dir() -> Path:
    """``$VLM_RESULTS_DIR`` if set; else ``<repo>/results`` when run from the repo's
    ``notebooks/`` folder, else ``./results`` (e.g. ``/content/results`` on Colab).

    Used in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset", and read back in
    ``notebooks/05_before_after_comparison.ipynb``, section "Parameters".
    """
    if os.environ.get("VLM_RESULTS_DIR"):
        return Path(os.environ["VLM_RESULTS_DIR"])
    cwd = Path.cwd()
    if cwd.name == "notebooks" and (cwd.parent / "vlm_helpers").is_dir():
        return cwd.parent / "results"
    return cwd / "results"


def run_name(task: str, model: str, stage: str) -> str:
    """``<task>__<model>__<stage>``; names must not contain ``__`` themselves.

    The run names listed in ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    for part in (task, model):
        if "__" in part or "/" in part or not part:
            raise ValueError(f"task and model names must be non-empty, without '__' or '/': {part!r}")
    return f"{task}__{model}__{stage}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _producer(notebook: str) -> str:
    """Who wrote a run, in words: "notebook 02", "the vlm-train CLI", "an unknown producer"."""
    if not notebook:
        return "an unknown producer"
    if notebook == "vlm-train":
        return "the vlm-train CLI"
    return f"notebook {notebook}"


_HOW_TO_PROCEED = ("To keep it, choose another results folder (VLM_RESULTS_DIR, or --results-dir for vlm-train); "
                   "to replace it anyway, pass replace=True to write_run (--replace-results for vlm-train).")


def replace_problem(results_dir: str | Path, *, task: str, model: str, stage: str, mode: str,
                    notebook: str) -> str | None:
    """Why writing this run would replace a run it must not, or None when writing is fine.

    Reads the existing ``<run>.metrics.json`` in ``results_dir`` (none: None) and refuses
    when (a) ``stage`` is ``"finetuned"`` and the existing run comes from another producer
    (``notebook``): that is a different fine-tuned model; (b) the existing run is ``"full"``
    and this one is ``"tiny"``, at any stage; (c) the existing file cannot be read.
    Baselines from different producers may replace each other. The reason names the file,
    the existing producer and mode, and how to proceed. The rules are in the README, section "When things
    go wrong" (nothing you made is overwritten).
    """
    path = Path(results_dir) / f"{run_name(task, model, stage)}.metrics.json"
    if not path.exists():
        return None
    try:
        existing = _read_metrics(path)
    except ValueError as error:
        return (f"{path} already exists but cannot be read ({error}), so writing would replace it unseen. "
                + _HOW_TO_PROCEED)
    old = f"{_producer(existing.get('notebook', ''))}, mode {existing['mode']}"
    new = f"{_producer(notebook)}, mode {mode}"
    if existing["mode"] == "full" and mode == "tiny":
        return (f"{path} holds a full-mode {stage} run ({old}); a tiny run ({new}) must never replace it. "
                + _HOW_TO_PROCEED)
    if stage == "finetuned" and existing.get("notebook", "") != notebook:
        return (f"{path} holds a fine-tuned model from {old}; this one ({new}) is a different fine-tuned "
                "model and would replace it. " + _HOW_TO_PROCEED)
    return None


def check_replaceable(results_dir: str | Path, *, task: str, model: str, mode: str, notebook: str,
                      stages: tuple[str, ...] = STAGES) -> None:
    """Raise ``FileExistsError`` when writing these runs would replace one it must not
    (:func:`replace_problem`). Call it before training, so a refusal costs seconds, not hours.

    Called in ``notebooks/02_florence2_docvqa.ipynb``, section "The machine and the preset" (and in the same
    section of notebooks 03 and 04).
    """
    for stage in stages:
        problem = replace_problem(results_dir, task=task, model=model, stage=stage, mode=mode, notebook=notebook)
        if problem:
            raise FileExistsError(problem)


def write_run(results_dir: str | Path, *, task: str, model: str, stage: str, mode: str, notebook: str,
              metrics: dict[str, float], records: list[dict] | None = None,
              history: list[dict] | None = None, images=None, thumbnail_size: int = 320,
              replace: bool = False) -> Path:
    """Write a run's metrics (and predictions, history if given); return the metrics file.

    ``notebook``: the producer, ``"01"``..``"04"`` or ``"vlm-train"``.
    ``images``: the evaluated images in the order of ``records`` (PIL images or anything
    :func:`vlm_helpers.supervision.to_rgb` accepts); thumbnails go to ``images/<task>/<run>/``,
    replacing the run's earlier ones.

    Raises:
        FileExistsError: :func:`replace_problem` objects (another producer's fine-tuned
            run, a full run about to be replaced by a tiny one, an unreadable metrics
            file) and ``replace`` is False. Nothing is written then, not even thumbnails.
        ValueError: two records share an ``id`` (pairing and thumbnails need one row per id).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning" (the baseline) and
    ``notebooks/02_florence2_docvqa.ipynb``, section "After fine-tuning" (the fine-tuned run and its history).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'tiny' or 'full', got {mode!r}")
    results_dir = Path(results_dir)
    name = run_name(task, model, stage)
    if records is not None:
        _check_unique_ids(records, name)
    if not replace:
        check_replaceable(results_dir, task=task, model=model, mode=mode, notebook=notebook, stages=(stage,))
    samples = len(records) if records is not None else int(metrics.get("samples", 0))
    summary = {"task": task, "model": model, "stage": stage, "mode": mode, "notebook": notebook,
               "samples": samples, "metrics": {k: float(v) for k, v in metrics.items() if k != "samples"}}
    thumbnails = Path("images") / task / name  # this run's own folder, relative to results_dir
    if images is not None and records is not None:
        records = [dict(r, image=_save_thumbnail(results_dir, thumbnails, r["id"], image, thumbnail_size))
                   for r, image in zip(records, images, strict=True)]
    if records is not None:
        _write_atomic(results_dir / f"{name}.predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        _remove_stale_thumbnails(results_dir, thumbnails, {r.get("image") for r in records})
    if history is not None:
        _write_atomic(results_dir / f"{name}.history.json", json.dumps(finite_or_null(history), indent=1, allow_nan=False))
    path = results_dir / f"{name}.metrics.json"
    _write_atomic(path, json.dumps(summary, indent=1))
    return path


def _check_unique_ids(records: list[dict], name: str) -> None:
    """Raise a ``ValueError`` naming the first id two records share."""
    seen = set()
    for position, record in enumerate(records):
        key = str(record.get("id")) if isinstance(record, dict) else None
        if key in seen:
            raise ValueError(f"{name}: records[{position}] repeats the id {key!r}; every record needs its own id "
                             "(the row's own: DocVQA's questionId, your data's id), or pairing and thumbnails "
                             "would mix two rows up")
        seen.add(key)


def _thumbnail_file(sample_id) -> str:
    """A file name for one record's thumbnail: the id itself when it is a safe name, else the
    id made safe plus a checksum of it (so ``"a/b"`` and ``"a_b"`` never share a file)."""
    text = str(sample_id)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:80]
    if safe != text or not safe:
        safe = f"{safe}-{zlib.crc32(text.encode()):08x}"
    return f"{safe}.jpg"


def _save_thumbnail(results_dir: Path, folder: Path, sample_id, image, size: int) -> str:
    """Write one thumbnail (always, replacing an earlier one) atomically; return its relative path."""
    from vlm_helpers.supervision import to_rgb

    relative = folder / _thumbnail_file(sample_id)
    target = results_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    thumbnail = to_rgb(image)
    thumbnail.thumbnail((size, size))
    tmp = target.with_name(target.name + ".tmp")
    thumbnail.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, target)
    return relative.as_posix()


def _remove_stale_thumbnails(results_dir: Path, folder: Path, keep: set) -> None:
    """Delete the run's thumbnails its records no longer name (a smaller or different re-run)."""
    directory = results_dir / folder
    if not directory.is_dir():
        return
    for path in directory.glob("*.jpg"):
        if path.relative_to(results_dir).as_posix() not in keep:
            path.unlink()


def _describe(value, none: str) -> str:
    """A value for an error message; ``none`` is how to spell None ("null" in a file)."""
    if value is None:
        return none
    text = repr(value)
    return f"{text[:37] + '...' if len(text) > 40 else text} of type {type(value).__name__}"


def _record_problem(record, *, none: str = "None") -> str | None:
    """What is wrong with one prediction record, or None. The one definition of a valid record.

    A record is a dict with ``id`` (str or int), ``prediction`` (str) and ``references``
    (a non-empty list of str); other keys are free.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {_describe(record, none)}"
    for key in RECORD_KEYS:
        if key not in record:
            return f"missing required key {key!r} (every record needs {', '.join(RECORD_KEYS)})"
    if record["id"] is None or isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)):
        return f"'id' is {_describe(record['id'], none)} (expected a string or an integer)"
    if not isinstance(record["prediction"], str):
        return f"'prediction' is {_describe(record['prediction'], none)} (expected a string)"
    references = record["references"]
    if not isinstance(references, list) or not references:
        return f"'references' is {_describe(references, none)} (expected a non-empty list of strings)"
    for j, reference in enumerate(references):
        if not isinstance(reference, str):
            return f"'references'[{j}] is {_describe(reference, none)} (expected a string)"
    return None


def _read_json(path: Path):
    """Parse a JSON file; a truncated or invalid one raises a ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text: {error.reason})") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                         "the file is truncated or corrupt: delete it or re-run what wrote it") from error


def _read_metrics(path: Path) -> dict:
    """Read and check one ``<run>.metrics.json``; problems raise a ``ValueError`` naming the file."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in METRICS_KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing required key {key!r} "
                             f"(a metrics file needs {', '.join(METRICS_KEYS)})")
    if data["stage"] not in STAGES:
        raise ValueError(f"{path}: 'stage' is {data['stage']!r}, expected one of {STAGES}")
    if data["mode"] not in MODES:
        raise ValueError(f"{path}: 'mode' is {data['mode']!r}, expected one of {MODES}")
    if not isinstance(data["metrics"], dict):
        raise ValueError(f"{path}: 'metrics' is {_describe(data['metrics'], 'null')}, expected an object")
    samples = data.get("samples", 0)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"{path}: 'samples' is {_describe(samples, 'null')}, expected a whole number >= 0")
    return data


def read_predictions(path: str | Path) -> list[dict]:
    """Read a ``.predictions.jsonl`` file, checking every record.

    Raises ``ValueError`` naming the file and line: first for any line that is not valid
    JSON (e.g. a truncated last line), then for a record that is not a JSON object, lacks
    ``id`` / ``prediction`` / ``references``, or has ``null`` (or a wrong type) there. Behind
    :meth:`Run.predictions`, which feeds ``notebooks/05_before_after_comparison.ipynb``, section "Gallery:
    improved, unchanged, regressed".
    """
    parsed = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
    for number, record in parsed:
        problem = _record_problem(record, none="null")
        if problem:
            raise ValueError(f"{path}, line {number}: {problem}")
    return [record for _, record in parsed]


@dataclass(frozen=True)
class Run:
    """One run found in a results folder.

    Listed in ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """

    task: str
    model: str
    stage: str
    mode: str
    notebook: str
    samples: int
    metrics: dict[str, float]
    directory: Path

    @property
    def name(self) -> str:
        return run_name(self.task, self.model, self.stage)

    def predictions(self) -> list[dict]:
        """The run's prediction records (``[]`` without a predictions file); see :func:`read_predictions`."""
        path = self.directory / f"{self.name}.predictions.jsonl"
        return read_predictions(path) if path.exists() else []

    def history(self) -> list[dict]:
        """The training loss history (``[]`` without a history file).

        Raises ``ValueError`` naming the file when it is truncated, invalid or not a list.
        """
        path = self.directory / f"{self.name}.history.json"
        if not path.exists():
            return []
        history = _read_json(path)
        if not isinstance(history, list):
            raise ValueError(f"{path}: expected a JSON list of {{step, loss}} entries, got {type(history).__name__}")
        return history


def find_runs(results_dir: str | Path) -> list[Run]:
    """Every run with a ``.metrics.json`` in ``results_dir``, sorted by task, model, stage.

    Raises ``ValueError`` naming the file when a metrics file is truncated, invalid or
    lacks a required key (``task``, ``model``, ``stage``, ``mode``, ``metrics``). Taught in
    ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """
    runs = []
    for path in sorted(Path(results_dir).glob("*.metrics.json")):
        data = _read_metrics(path)
        runs.append(Run(task=data["task"], model=data["model"], stage=data["stage"], mode=data["mode"],
                        notebook=data.get("notebook", ""), samples=int(data.get("samples", 0)),
                        metrics=dict(data["metrics"]), directory=path.parent))
    return sorted(runs, key=lambda r: (r.task, r.model, STAGES.index(r.stage)))


def pair_predictions(before: list[dict], after: list[dict], *, task: str, metric: str | None = None,
                     on_mismatch: str = "drop") -> list[dict]:
    """Join two prediction lists by ``id``; add per-sample ``score_before``, ``score_after``, ``change``
    and ``metric`` (its name).

    Each sample is scored with :func:`vlm_helpers.evaluation.sample_score` for ``task``: by its headline
    metric ("docvqa" and "qa": ANLS, "captioning": ROUGE-1), the one the comparison table leads with and
    the best checkpoint is chosen by, unless ``metric`` names another of the task's metrics (e.g.
    ``"tag_f1"``). Ids are compared as strings. Rows present in only one list are left out, with a
    printed count.

    A pair is only made of the *same* question: when an id names a different question (or
    different references) in the two lists, the runs scored different rows under one id
    (e.g. data that changed between the two runs). ``on_mismatch="drop"`` leaves such pairs
    out and prints how many; ``"raise"`` raises instead. A pair's ``image`` is the
    fine-tuned record's thumbnail (the baseline's when it has none): the same page either way.

    Raises:
        ValueError: a record lacks ``id`` / ``prediction`` / ``references`` or has None
            there; the message names the list (before / after), the position and the id.
            Also, with ``on_mismatch="raise"``, an id whose question differs.

    Used in ``notebooks/02_florence2_docvqa.ipynb``, section "After fine-tuning".
    """
    from vlm_helpers.evaluation import HEADLINE_METRICS, sample_score

    if on_mismatch not in ("drop", "raise"):
        raise ValueError(f"on_mismatch must be 'drop' or 'raise', got {on_mismatch!r}")
    if task not in HEADLINE_METRICS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(HEADLINE_METRICS)}")
    metric = metric or HEADLINE_METRICS[task][0]

    def score(prediction, references):
        return sample_score(task, prediction, references, metric=metric)

    _check_records(before, "before")
    _check_records(after, "after")
    after_by_id = {str(r["id"]): r for r in after}
    before_ids = {str(r["id"]) for r in before}
    paired, mismatched = [], []
    for record in before:
        other = after_by_id.get(str(record["id"]))
        if other is None:
            continue
        if (record.get("question", ""), list(record["references"])) != (other.get("question", ""),
                                                                          list(other["references"])):
            mismatched.append((record, other))
            continue
        s_before = score(record["prediction"], record["references"])
        s_after = score(other["prediction"], other["references"])
        image = other.get("image") or record.get("image")
        paired.append({**record, **({"image": image} if image else {}), "before": record["prediction"],
                       "after": other["prediction"], "metric": metric, "score_before": s_before,
                       "score_after": s_after, "change": s_after - s_before})
    if mismatched:
        first, other = mismatched[0]
        message = (f"{len(mismatched)} of {len(paired) + len(mismatched)} pairs would join a different question: "
                   "the same id has another question or other references in the two runs (first: id "
                   f"{str(first['id'])!r}, {first.get('question', '')!r} {first['references']!r} before, "
                   f"{other.get('question', '')!r} {other['references']!r} after), so the runs scored different "
                   "rows under one id; re-run both on the same data")
        if on_mismatch == "raise":
            raise ValueError(message)
        print(f"pair_predictions: {message}. They are left out.")
    unpaired = {"before": (sum(str(r["id"]) not in after_by_id for r in before), len(before)),
                "after": (sum(key not in before_ids for key in after_by_id), len(after))}
    alone = [f"{n} of {total} {side}" for side, (n, total) in unpaired.items() if n]
    if alone:
        print(f"pair_predictions: {len(paired)} pairs; left out {' and '.join(alone)} records, which have no "
              "partner with the same id (the runs scored different rows)")
    return paired


def _check_records(records: list[dict], side: str) -> None:
    """Raise a ``ValueError`` naming ``side``, position and id of the first bad record."""
    for position, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            record_id = record.get("id") if isinstance(record, dict) else None
            raise ValueError(f"{side}[{position}] (record id {record_id!r}): {problem}")
