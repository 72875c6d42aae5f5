"""Before/after comparison across the series: the table, missing runs, example picking.

Taught in ``notebooks/05_before_after_comparison.ipynb``; reads what
:mod:`vlm_helpers.results` wrote for notebooks 01-04.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_helpers.results import Run, pair_predictions


@dataclass(frozen=True)
class ExpectedRun:
    """A run notebook 05 wants, and the notebook(s) that produce it."""

    task: str
    model: str
    stage: str
    notebooks: str


EXPECTED_RUNS = (
    ExpectedRun("docvqa", "florence2", "baseline", "01_baseline_inference or 02_florence2_docvqa"),
    ExpectedRun("docvqa", "florence2", "finetuned", "02_florence2_docvqa"),
    ExpectedRun("docvqa", "idefics2", "baseline", "01_baseline_inference or 03_idefics2_qlora_docvqa"),
    ExpectedRun("docvqa", "idefics2", "finetuned", "03_idefics2_qlora_docvqa"),
    ExpectedRun("captioning", "phi3", "baseline", "01_baseline_inference or 04_phi3_aircraft_captioning"),
    ExpectedRun("captioning", "phi3", "finetuned", "04_phi3_aircraft_captioning"),
)

#: The metrics shown per task, headline first.
HEADLINE_METRICS = {"docvqa": ("anls", "levenshtein_similarity"), "captioning": ("rouge1", "rougeL", "tag_f1")}

#: Numbers the source articles report, with their metric spelled out. They are not comparable
#: one-to-one with ours (other subsets, other scoring), and are shown for orientation only.
ARTICLE_REFERENCES = (
    {"task": "docvqa", "model": "florence2", "metric": "Levenshtein similarity (x100, no 0.5 threshold; NOT ANLS)",
     "before": 0.0, "after": 57.0,
     "source": "Hugging Face blog 'Fine-tuning Florence-2' (2024): DocVQA validation, 7 epochs"},
    {"task": "captioning", "model": "phi3", "metric": "ROUGE-1",
     "before": 0.025, "after": 0.49,
     "source": "Phi-3-vision aircraft captioning article: first five test photos, Phi-3-vision-128k-instruct"},
    {"task": "docvqa", "model": "idefics2", "metric": "(no score reported)", "before": None, "after": None,
     "source": "Idefics2 QLoRA article: reports 7,589,912 trainable of 8.41 B parameters (0.09%), no metric"},
)


def missing_runs(runs: list[Run]) -> list[ExpectedRun]:
    """Expected runs with no file in the results folder."""
    have = {(r.task, r.model, r.stage) for r in runs}
    return [e for e in EXPECTED_RUNS if (e.task, e.model, e.stage) not in have]


def missing_message(missing: list[ExpectedRun]) -> str:
    """A readable note naming the notebooks that would produce the missing runs."""
    if not missing:
        return "All expected runs are present."
    lines = ["Some results are missing; run these notebooks first (in tiny or full mode):"]
    lines += [f"  - {e.task} / {e.model} / {e.stage}: notebook {e.notebooks}" for e in missing]
    return "\n".join(lines)


def comparison_table(runs: list[Run]) -> list[dict]:
    """One row per (task, model, metric) with ``before``, ``after``, ``change``, samples and mode.

    ``before`` or ``after`` is None where that stage has not been run.
    """
    by_key = {(r.task, r.model, r.stage): r for r in runs}
    rows = []
    for task, model in sorted({(r.task, r.model) for r in runs}):
        before, after = by_key.get((task, model, "baseline")), by_key.get((task, model, "finetuned"))
        for metric in HEADLINE_METRICS.get(task, ()):
            b = before.metrics.get(metric) if before else None
            a = after.metrics.get(metric) if after else None
            modes = sorted({r.mode for r in (before, after) if r is not None})
            rows.append({"task": task, "model": model, "metric": metric, "before": b, "after": a,
                         "change": (a - b) if a is not None and b is not None else None,
                         "samples": max((r.samples for r in (before, after) if r is not None), default=0),
                         "mode": "/".join(modes)})
    return rows


def _cell(value, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """The comparison table as aligned text."""
    header = ("task", "model", "metric", "before", "after", "change", "samples", "mode")
    body = [[_cell(row[key], signed=key == "change") for key in header] for row in rows]
    widths = [max([len(name)] + [len(line[i]) for line in body]) for i, name in enumerate(header)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(value.ljust(w) for value, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def pick_examples(before: Run, after: Run, *, per_kind: int = 2) -> dict[str, list[dict]]:
    """The most improved, unchanged and most regressed samples between two runs of one task.

    "unchanged" prefers samples whose (equal) score is highest, i.e. already right before.
    A kind with no sample (e.g. nothing regressed) maps to an empty list.
    """
    paired = pair_predictions(before.predictions(), after.predictions(), task=before.task)
    improved = sorted((p for p in paired if p["change"] > 0), key=lambda p: -p["change"])
    unchanged = sorted((p for p in paired if p["change"] == 0), key=lambda p: -p["score_after"])
    regressed = sorted((p for p in paired if p["change"] < 0), key=lambda p: p["change"])
    return {"improved": improved[:per_kind], "unchanged": unchanged[:per_kind], "regressed": regressed[:per_kind]}
