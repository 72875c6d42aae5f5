"""Before/after comparison across the series: the table, missing runs, example picking,
and model text made safe and short to print or draw (:func:`display_text`, :func:`format_pair`).

Taught in ``notebooks/05_before_after_comparison.ipynb``; reads what
:mod:`vlm_helpers.results` wrote for notebooks 01-04.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vlm_helpers.evaluation import HEADLINE_METRICS
from vlm_helpers.results import Run, pair_predictions


@dataclass(frozen=True)
class ExpectedRun:
    """A run notebook 05 wants, and the notebook(s) that produce it.

    Listed in ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """

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

# HEADLINE_METRICS (the metrics shown per task, headline first) lives in vlm_helpers.evaluation, next to the
# scorers that compute them: the table shows them in that order, and the gallery ranks by the first, per example.

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
    """Expected runs with no file in the results folder.

    Taught in ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """
    have = {(r.task, r.model, r.stage) for r in runs}
    return [e for e in EXPECTED_RUNS if (e.task, e.model, e.stage) not in have]


def missing_message(missing: list[ExpectedRun]) -> str:
    """A readable note naming the notebooks that would produce the missing runs.

    Printed in ``notebooks/05_before_after_comparison.ipynb``, section "What is there".
    """
    if not missing:
        return "All expected runs are present."
    lines = ["Some results are missing; run these notebooks first (in tiny or full mode):"]
    lines += [f"  - {e.task} / {e.model} / {e.stage}: notebook {e.notebooks}" for e in missing]
    return "\n".join(lines)


def comparison_table(runs: list[Run]) -> list[dict]:
    """One row per (task, model, metric) with ``before``, ``after``, ``change``, samples and mode.

    ``before`` or ``after`` is None where that stage has not been run. Taught in
    ``notebooks/05_before_after_comparison.ipynb``, section "The table".
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
    """The comparison table as aligned text, as printed in ``notebooks/05_before_after_comparison.ipynb``,
    section "The table"."""
    header = ("task", "model", "metric", "before", "after", "change", "samples", "mode")
    body = [[_cell(row[key], signed=key == "change") for key in header] for row in rows]
    widths = [max([len(name)] + [len(line[i]) for line in body]) for i, name in enumerate(header)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(value.ljust(w) for value, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def pick_examples(before: Run, after: Run, *, per_kind: int = 2, metric: str | None = None) -> dict[str, list[dict]]:
    """The most improved, unchanged and most regressed samples between two runs of one task.

    Samples are ranked by their own score under the task's headline metric (the table's first row for the
    task, e.g. ROUGE-1 for captions, and the score the best checkpoint is chosen by), or by ``metric``;
    each sample carries it as ``"metric"`` (:func:`vlm_helpers.results.pair_predictions`).
    "unchanged" prefers samples whose (equal) score is highest, i.e. already right before.
    A kind with no sample (e.g. nothing regressed) maps to an empty list. Taught in
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    paired = pair_predictions(before.predictions(), after.predictions(), task=before.task, metric=metric)
    improved = sorted((p for p in paired if p["change"] > 0), key=lambda p: -p["change"])
    unchanged = sorted((p for p in paired if p["change"] == 0), key=lambda p: -p["score_after"])
    regressed = sorted((p for p in paired if p["change"] < 0), key=lambda p: p["change"])
    return {"improved": improved[:per_kind], "unchanged": unchanged[:per_kind], "regressed": regressed[:per_kind]}


#: Longest model text shown by :func:`display_text` by default, quotes and ellipsis included.
DISPLAY_CHARS = 72

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    """A character as Python writes it in a string literal: ``\\n``, ``\\x13``, ``\\u5c4b``, ``\\U0001f600``."""
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display_text(text: str, *, max_chars: int = DISPLAY_CHARS, quote: bool = True,
                 drawable: Callable[[str], bool] | None = None) -> str:
    """A model's text made safe and short to print or draw: the one place that does it.

    Characters that are not printable (control characters such as ``\\x13`` or a newline,
    format characters, lone surrogates) are escaped as in a Python string literal, so garbage
    from a tiny random model cannot move the cursor, ring a bell or break a line. With
    ``quote`` the result is quoted as ``repr`` quotes (an empty answer shows as ``''``); a
    text that fits is then exactly ``repr(text)``. Printable unicode (``é``, ``屋``) stays as it is,
    unless ``drawable`` says the font cannot draw it (see
    :func:`vlm_helpers.plotting.font_can_draw`), in which case it is escaped too, so matplotlib
    draws ``\\u5c4b`` instead of an empty box and a "Glyph missing" warning.

    At most ``max_chars`` characters come out (quotes included): a longer text is cut before an
    escape or character that would not fit, and ends with an ellipsis.
    Used in ``notebooks/02_florence2_docvqa.ipynb``, section "Save, reload, and ask a new question"
    (and where notebooks 03 and 04 print predictions); drawn in
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    if not isinstance(text, str):
        text = str(text)
    quote_char = '"' if ("'" in text and '"' not in text) else "'"
    pieces = []
    for char in text:
        if quote and char in ("\\", quote_char):
            pieces.append("\\" + char)
        elif char.isprintable() and (drawable is None or drawable(char)):
            pieces.append(char)
        else:
            pieces.append(_escape(char))
    ellipsis = "…" if drawable is None or drawable("…") else "..."
    ends = 2 if quote else 0
    if sum(map(len, pieces)) + ends > max_chars:
        budget, kept = max_chars - ends - len(ellipsis), []
        for piece in pieces:
            if len(piece) > budget:
                break
            kept.append(piece)
            budget -= len(piece)
        pieces = kept + [ellipsis]
    body = "".join(pieces)
    return f"{quote_char}{body}{quote_char}" if quote else body


def format_pair(row: dict, *, max_chars: int = DISPLAY_CHARS, drawable: Callable[[str], bool] | None = None) -> str:
    """One paired row of :func:`vlm_helpers.results.pair_predictions` as printable lines.

    The question (left out when empty, as for captioning prompts), the references, and the
    before / after predictions with their scores (named by the row's ``"metric"`` when it has one:
    ``(rouge1 0.45)``), every text through :func:`display_text` (``max_chars`` each, twice that for the question).
    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "After fine-tuning" (and in 03 and 04);
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed",
    draws the same lines.
    """
    def show(text, limit=max_chars, **kwargs):
        return display_text(text, max_chars=limit, drawable=drawable, **kwargs)

    # a question is data, not model output: it gets twice the room
    lines = [f"Q: {show(row['question'], 2 * max_chars, quote=False)}"] if row.get("question") else []
    metric = f"{row['metric']} " if row.get("metric") else ""
    lines += [f"   reference {' | '.join(show(reference) for reference in row['references'])}",
              f"   before    {show(row['before'])}  ({metric}{row['score_before']:.2f})",
              f"   after     {show(row['after'])}  ({metric}{row['score_after']:.2f})"]
    return "\n".join(lines)
