"""Reading and writing the series' ``results/`` folder: one format for notebooks 01-05.

Written by notebooks 01-04 and the CLI, read by ``notebooks/05_before_after_comparison.ipynb``.

Format. A *run* is one model evaluated on one task at one stage; its name is
``<task>__<model>__<stage>`` (e.g. ``docvqa__florence2__finetuned``), and it owns up to
three files in the results folder:

``<run>.predictions.jsonl``
    one JSON object per line: ``id``, ``question``, ``references`` (list of str),
    ``prediction``, ``model``, ``mode`` ("tiny" or "full"), and optionally ``image``
    (a path to a saved copy of the input, for galleries);
``<run>.metrics.json``
    ``{"task", "model", "stage", "mode", "notebook", "samples", "metrics": {name: value}}``;
    ``stage`` is ``"baseline"`` (zero-shot) or ``"finetuned"``;
``<run>.history.json``
    the training loss history (list of ``{"step", "loss", ...}``), fine-tuned runs only;
``images/<task>/<id>.jpg``
    small copies of the evaluated inputs (when ``write_run`` gets ``images``), referenced by
    the records' ``image`` field relative to the results folder, for notebook 05's gallery.

Files are written atomically (temporary file, then rename), so a crash never leaves
half a file for notebook 05 to choke on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

STAGES = ("baseline", "finetuned")


def default_results_dir() -> Path:
    """``$VLM_RESULTS_DIR`` if set; else ``<repo>/results`` when run from the repo's
    ``notebooks/`` folder, else ``./results`` (e.g. ``/content/results`` on Colab)."""
    if os.environ.get("VLM_RESULTS_DIR"):
        return Path(os.environ["VLM_RESULTS_DIR"])
    cwd = Path.cwd()
    if cwd.name == "notebooks" and (cwd.parent / "vlm_helpers").is_dir():
        return cwd.parent / "results"
    return cwd / "results"


def run_name(task: str, model: str, stage: str) -> str:
    """``<task>__<model>__<stage>``; names must not contain ``__`` themselves."""
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


def write_run(results_dir: str | Path, *, task: str, model: str, stage: str, mode: str, notebook: str,
              metrics: dict[str, float], records: list[dict] | None = None,
              history: list[dict] | None = None, images=None, thumbnail_size: int = 320) -> Path:
    """Write a run's metrics (and predictions, history if given); return the metrics file.

    ``images``: the evaluated images in the order of ``records`` (PIL images or anything
    :func:`vlm_helpers.data.images.to_rgb` accepts); thumbnails go to ``images/<task>/``.
    """
    if mode not in ("tiny", "full"):
        raise ValueError(f"mode must be 'tiny' or 'full', got {mode!r}")
    results_dir = Path(results_dir)
    name = run_name(task, model, stage)
    samples = len(records) if records is not None else int(metrics.get("samples", 0))
    summary = {"task": task, "model": model, "stage": stage, "mode": mode, "notebook": notebook,
               "samples": samples, "metrics": {k: float(v) for k, v in metrics.items() if k != "samples"}}
    if images is not None and records is not None:
        records = [dict(r, image=_save_thumbnail(results_dir, task, r["id"], image, thumbnail_size))
                   for r, image in zip(records, images, strict=True)]
    if records is not None:
        _write_atomic(results_dir / f"{name}.predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if history is not None:
        _write_atomic(results_dir / f"{name}.history.json", json.dumps(history, indent=1))
    path = results_dir / f"{name}.metrics.json"
    _write_atomic(path, json.dumps(summary, indent=1))
    return path


def _save_thumbnail(results_dir: Path, task: str, sample_id: str, image, size: int) -> str:
    from vlm_helpers.data.images import to_rgb

    relative = Path("images") / task / f"{sample_id}.jpg"
    target = results_dir / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        thumbnail = to_rgb(image)
        thumbnail.thumbnail((size, size))
        thumbnail.save(target, quality=85)
    return relative.as_posix()


def read_predictions(path: str | Path) -> list[dict]:
    """Read a ``.predictions.jsonl`` file; a malformed line raises an error naming file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
    return records


@dataclass(frozen=True)
class Run:
    """One run found in a results folder."""

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
        path = self.directory / f"{self.name}.predictions.jsonl"
        return read_predictions(path) if path.exists() else []

    def history(self) -> list[dict]:
        path = self.directory / f"{self.name}.history.json"
        return json.loads(path.read_text()) if path.exists() else []


def find_runs(results_dir: str | Path) -> list[Run]:
    """Every run with a ``.metrics.json`` in ``results_dir``, sorted by task, model, stage."""
    runs = []
    for path in sorted(Path(results_dir).glob("*.metrics.json")):
        data = json.loads(path.read_text())
        runs.append(Run(task=data["task"], model=data["model"], stage=data["stage"], mode=data["mode"],
                        notebook=data.get("notebook", ""), samples=int(data.get("samples", 0)),
                        metrics=dict(data["metrics"]), directory=path.parent))
    return sorted(runs, key=lambda r: (r.task, r.model, STAGES.index(r.stage)))


def pair_predictions(before: list[dict], after: list[dict], *, task: str) -> list[dict]:
    """Join two prediction lists by ``id``; add per-sample ``score_before``, ``score_after``, ``change``.

    Each sample is scored with :func:`vlm_helpers.evaluation.sample_score` for ``task``
    ("docvqa": ANLS, "captioning": tag F1). Rows present in only one list are left out.
    """
    from vlm_helpers.evaluation import sample_score

    def score(prediction, references):
        return sample_score(task, prediction, references)

    after_by_id = {r["id"]: r for r in after}
    paired = []
    for record in before:
        other = after_by_id.get(record["id"])
        if other is None:
            continue
        s_before = score(record["prediction"], record["references"])
        s_after = score(other["prediction"], other["references"])
        paired.append({**record, "before": record["prediction"], "after": other["prediction"],
                       "score_before": s_before, "score_after": s_after, "change": s_after - s_before})
    return paired
