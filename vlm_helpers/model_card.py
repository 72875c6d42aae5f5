"""A shareable result: the model card next to a saved adapter, read back, and the opt-in upload to the Hub.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".

:func:`write_model_card` writes ``README.md`` into the adapter's folder: YAML front matter the Hub reads
(``base_model``, ``library_name: peft``, ``pipeline_tag: image-text-to-text``, ``tags``, ``license`` only when
given), then markdown tables of the data (rows per split, which column plays which role, the split seed, where the
data comes from; for your own data also the format or conversation layout, rows read and skipped with the reasons,
image sizes and the metric with why it suits the task), the hyper-parameters, the preset, hardware and run time,
the best checkpoint, the scores before and after fine-tuning with each metric's definition
(:data:`METRIC_DEFINITIONS`, the one place they are written), and how to load the adapter. In tiny mode the title
carries :func:`vlm_helpers.runtime.mode_label` and so does every number. :func:`read_model_card` parses the card
back (front matter and numbers), so a test can check that it shows what was measured.

A ``README.md`` this module did not write (no :data:`CARD_MARKER` line) is never replaced: the user's
card, or one they started from PEFT's template, is theirs. The one exception is the empty template that
PEFT's ``save_pretrained`` drops into every adapter folder, recognised line by line.

:func:`push_to_hub` uploads the folder (adapter weights and config, processor files, card) to a private
repository by default; the token comes from the argument or from ``HF_TOKEN`` in Colab's secrets panel or
the environment (:func:`vlm_helpers.tracking.secret`), never from a cell, and is never printed.

:func:`data_section` builds the card's ``data`` from what was actually loaded (``load_your_data``'s report,
the splits as used and the checks' reports), for notebook 06 and ``vlm-train --recipe custom`` alike: the file
by its name, never an absolute path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

#: The line that marks a card as written by :func:`write_model_card` (which may then replace it).
CARD_MARKER = ("<!-- written by vlm_helpers.model_card.write_model_card, which replaces this file when it runs "
               "again; delete this line to keep your edits -->")
CARD_FILE = "README.md"

#: What each score means, written once for the cards (``val_``/``eval_``/``test_`` prefixes share the entry).
METRIC_DEFINITIONS: dict[str, str] = {
    "anls": ("Average Normalized Levenshtein Similarity, DocVQA's official metric: for each question, the best "
             "over its reference answers of 1 - NL, where NL is the Levenshtein distance between the lower-cased, "
             "whitespace-normalised prediction and answer divided by the longer one's length; a question scores 0 "
             "when NL >= 0.5. Mean over questions, from 0 to 1, higher is better."),
    "levenshtein_similarity": ("ANLS without its 0.5 threshold (the number the Florence-2 fine-tuning blog "
                               "reported): partial credit is kept, so it is always >= ANLS and not comparable "
                               "with published ANLS scores."),
    "exact_match": ("The fraction of questions whose lower-cased, whitespace-normalised prediction equals one of "
                    "the reference answers normalised the same way; from 0 to 1, higher is better."),
    "rouge1": ("ROUGE-1 F-measure: overlap of single words between the generated and the reference text "
               "(rouge_score with Porter stemming; lower-cased ASCII letters and digits), best over the "
               "references, mean over samples; from 0 to 1, higher is better."),
    "rouge2": "ROUGE-2 F-measure: as ROUGE-1, for pairs of consecutive words.",
    "rougeL": "ROUGE-L F-measure: as ROUGE-1, for the longest common subsequence of words.",
    "tag_precision": ("Matched tags / predicted tags, counted over the whole evaluation set (micro-average). Tags "
                      "are the comma-separated pieces of a caption, lower-cased and whitespace-normalised."),
    "tag_recall": "Matched tags / reference tags, counted over the whole evaluation set (micro-average).",
    "tag_f1": ("Harmonic mean of tag precision and recall, 2 x matched / (predicted + reference tags), "
               "micro-averaged; 1.0 when neither side has any tag. Higher is better."),
    "samples": "How many evaluation rows were scored.",
}
_METRIC_PREFIXES = ("val_", "eval_", "test_")
_DATA_KEYS = ("source", "counts", "fields", "split_seed")
#: What each loader's format is, in words, for the card (a format not listed is shown by its name).
FORMAT_WORDS = {
    "jsonl": "JSON Lines, one row per line, read with the columns below",
    "json": "a JSON array of rows, read with the columns below",
    "csv": "CSV, one row per line after the header, read with the columns below",
    "hf": "a Hugging Face dataset, read with the columns below",
    "conversations": ("conversations: per row one user turn with the image and the question, then one assistant "
                      "turn with the answer"),
}
#: Where a conversation row's parts are, for the card's role table.
CONVERSATION_FIELDS = {"image": "the user turn's image", "question": "the user turn's text",
                       "answer": "the assistant turn's text"}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\",;:()/]+/)+([^\s'\",;:()/]+)")
_BASE_TAGS = ("peft", "lora", "vision-language-model", "vlm-finetuning-series")


def metric_definition(name: str, definitions: Mapping[str, str] = METRIC_DEFINITIONS) -> str:
    """The definition of metric ``name`` (``val_anls`` reads ``anls``'s); ``KeyError`` naming it if there is none.

    Used by the card of ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".
    """
    if name in definitions:
        return definitions[name]
    for prefix in _METRIC_PREFIXES:
        if name.startswith(prefix) and name[len(prefix):] in definitions:
            return definitions[name[len(prefix):]]
    raise KeyError(f"no definition for metric {name!r}: pass metric_definitions={{{name!r}: '...'}} "
                   f"(known: {', '.join(sorted(definitions))})")


def source_name(source) -> str:
    """How a card names the data: a Hub id as it is, a local file or folder by its name only (a card is made to
    be shared, and an absolute path tells a reader nothing but your folder layout), several files as
    ``split=name``; ``None`` (tiny mode) as the synthetic folder. Used in
    ``notebooks/06_your_data_your_model.ipynb``, section "Share the result"."""
    import os

    from vlm_helpers.data.report import source_label

    if source is None:
        return "synthetic image folder (tiny mode)"
    if isinstance(source, Mapping):
        return ", ".join(f"{split}={source_name(path)}" for split, path in source.items())
    return source_label(os.fspath(source))


def _scrub(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (a card is made to be shared)."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)


def data_section(load_report, splits: Mapping, *, task: str, split_seed: int, columns=None, checks=(),
                 note: str | None = None) -> dict:
    """The card's ``data``, built from what was actually loaded, for :func:`write_model_card`.

    Args:
        load_report: ``load_your_data``'s :class:`~vlm_helpers.data.canonical.LoadReport` (source, format,
            rows read, rows skipped while reading and why).
        splits: the rows as used, ``{"train": ..., "validation": ..., "test": ...}`` (after ``clean_dataset``).
        task: ``"qa"`` or ``"captioning"``: the metric and why (:func:`vlm_helpers.data.report.headline_metric`).
        split_seed: the seed of the held-out splits.
        columns: the :class:`vlm_helpers.data.formats.Columns` the rows were read with; None for conversations,
            whose layout is described instead (:data:`CONVERSATION_FIELDS`), as it is whenever the format is
            ``conversations``.
        checks: ``clean_dataset``'s reports of the splits (the rows they left out).
        note: one sentence more about the data (tiny mode's synthetic stand-in says why it stands in).

    Returns ``{"source", "format", "counts", "skipped", "skipped_reasons", "read", "fields", "images", "metric",
    "split_seed"}`` (+ ``"note"``): the source by its name only (:func:`source_name`), the format in words
    (:data:`FORMAT_WORDS`), rows used and skipped per split, rows read, the skip reasons counted by kind (no
    paths), image sizes, the headline metric with why. Written in ``notebooks/06_your_data_your_model.ipynb``,
    section "Share the result"; ``vlm-train --recipe custom`` writes the same.
    """
    from vlm_helpers.data.report import headline_metric, your_data_report

    report = your_data_report(splits, task=task, load_report=load_report, checks=checks)
    kinds = [kind for kind in str(load_report.format).split("/") if kind]
    conversations = "conversations" in kinds
    if conversations or columns is None:
        fields = dict(CONVERSATION_FIELDS)
        if columns is not None and columns.id is not None:
            fields = {"id": columns.id, **fields}
    else:
        fields = columns.fields()
    costs = report.costs
    images = f"{costs.images} distinct images"
    if costs.width is not None:
        images += (f"; width px {costs.width}; height px {costs.height}; the largest "
                   f"{costs.largest[0]}x{costs.largest[1]} px")
    metric, why = headline_metric(task)
    layout = getattr(load_report, "layout", "")  # what the loader found in the file, e.g. "CSV, ';'-separated"
    described = "; ".join(FORMAT_WORDS.get(kind, kind) for kind in kinds) or str(load_report.format)
    data = {"source": source_name(str(load_report.source)),
            "format": described + (f" (found: {layout})" if layout and layout.lower() not in described.lower()
                                   else ""),
            "counts": dict(report.rows), "skipped": report.skipped_by_split(),
            "skipped_reasons": {_scrub(kind): count for kind, count in report.skipped_by_reason().items()},
            "read": report.read, "fields": fields, "images": images,
            "metric": f"{metric}, {why}; it chose the best checkpoint on the validation split",
            "split_seed": split_seed}
    if note:
        data["note"] = _scrub(note)
    return data


def write_model_card(folder: str | Path, *, base_model: str, task: str, data: Mapping, hyperparameters: Mapping,
                     metrics_before: Mapping, metrics_after: Mapping, preset, hardware: str, run_seconds: float,
                     tiny: bool, best_step: int | None = None, best_metric: str | None = None,
                     best_value: float | None = None, metric_definitions: Mapping[str, str] | None = None,
                     title: str | None = None, license: str | None = None, tags: tuple[str, ...] = (),
                     decimals: int = 4) -> Path:
    """Write ``folder/README.md``, the model card of a fine-tuned adapter; return its path.

    Args:
        base_model: the base model's Hub id (``base_model`` in the front matter).
        task: what the adapter does, in words (e.g. ``"DocVQA question answering"``).
        data: ``{"source": text, "counts": {split: rows}, "fields": {role: column}, "split_seed": int}``, plus
            optionally what :func:`data_section` adds (``format``, ``note``, ``skipped``, ``read``,
            ``skipped_reasons``, ``images``, ``metric``); build it with :func:`data_section` for your own data.
        hyperparameters: name -> value, shown as given (``str(value)``).
        metrics_before, metrics_after: the scores before and after fine-tuning (``evaluation.evaluate``'s
            dicts; ``samples`` is shown as a count). Every metric needs a definition.
        preset: the run's :class:`vlm_helpers.runtime.Preset` (its ``name`` and ``dtype`` are shown).
        hardware: the machine, e.g. ``"Tesla T4 (15.0 GB)"`` or ``"CPU only"``.
        run_seconds: the training time.
        tiny: tiny mode: the title and every number carry :func:`vlm_helpers.runtime.mode_label`.
        best_step, best_metric, best_value: the checkpoint kept by ``train_with_trainer(keep_best=...)``.
        metric_definitions: extra or replacement definitions (default: :data:`METRIC_DEFINITIONS`).
        license: the front matter's ``license``, only if given.
        decimals: scores are shown rounded to this many decimals (stated in the card).

    Raises ``FileExistsError`` naming the file if ``folder`` holds a ``README.md`` this module did not write
    (PEFT's empty template excepted), ``ValueError`` if ``data`` lacks a key, ``KeyError`` for a metric
    without a definition. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".
    """
    from huggingface_hub import ModelCardData

    from vlm_helpers.results import _write_atomic
    from vlm_helpers.runtime import mode_label

    path = Path(folder) / CARD_FILE
    if path.exists() and not _replaceable(path.read_text(encoding="utf-8")):
        raise FileExistsError(f"{path} exists and was not written by write_model_card: nothing was changed. "
                              "Move it away (or merge it into the card by hand) and run write_model_card again.")
    missing = [key for key in _DATA_KEYS if key not in data]
    if missing:
        raise ValueError(f"data needs {', '.join(_DATA_KEYS)}; missing {', '.join(missing)}")
    definitions = {**METRIC_DEFINITIONS, **(metric_definitions or {})}
    names = list(dict.fromkeys([*metrics_before, *metrics_after]))
    explained = {name: metric_definition(name, definitions) for name in names}
    label = f" {mode_label(True)}" if tiny else ""

    def number(value, places: int | None = None) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return str(value)
        text = str(value) if places is None else f"{value:.{places}f}"
        return text + label

    def score(metrics: Mapping, name: str) -> str:
        if name not in metrics:
            return "-"
        value = metrics[name]
        return number(int(value)) if name == "samples" else number(float(value), decimals)

    rows = []
    for name in names:
        change = "-"
        if name != "samples" and name in metrics_before and name in metrics_after:
            change = f"{float(metrics_after[name]) - float(metrics_before[name]):+.{decimals}f}{label}"
        rows.append([f"`{name}`", score(metrics_before, name), score(metrics_after, name), change])

    card_tags = list(dict.fromkeys([*_BASE_TAGS, *tags, *(["tiny-random-not-a-real-result"] if tiny else [])]))
    front = ModelCardData(base_model=base_model, library_name="peft", pipeline_tag="image-text-to-text",
                          tags=card_tags, license=license).to_yaml()
    heading = (title or f"{task}: a LoRA adapter for {base_model}") + label
    lines = ["---", front, "---", "", CARD_MARKER, "", f"# {heading}", ""]
    if tiny:
        lines += [f"> **{mode_label(True)}** This adapter was trained in tiny mode, to test the code path: a tiny "
                  "random model, a short run on the few rows described under *Data* (your own, or a synthetic folder "
                  "standing in for them). None of its numbers says anything about the real model.", ""]
    lines += [f"A LoRA adapter (PEFT) for [`{base_model}`](https://huggingface.co/{base_model}), fine-tuned for "
              f"{task}. It holds only the trained weights: load the base model and put the adapter on top "
              "(see *How to use*).", "",
              "## Data", "", " ".join(_scrub(str(data["source"])).split()), "",
              *_data_lines(data, number, label),
              f"Split seed: {number(data['split_seed'])}", "",
              "## Training", "",
              *_table(["hyper-parameter", "value"], [[name, number(value)] for name, value in hyperparameters.items()]),
              "",
              *_table(["preset", "dtype", "hardware", "training time (s)"],
                      [[preset.name, preset.dtype, hardware, number(float(run_seconds), 1)]]), ""]
    if best_step is not None:
        chosen = (f", chosen by `{best_metric}` = {number(float(best_value), decimals)} on the validation split"
                  if best_metric is not None and best_value is not None else "")
        lines += [f"Best checkpoint: step {number(int(best_step))}{chosen}. Its adapter is this one.", ""]
    lines += ["## Results", "",
              f"Scores of generated answers (not teacher-forced tokens), rounded to {decimals} decimals.", "",
              *_table(["metric", "before fine-tuning", "after fine-tuning", "change"], rows), "",
              "## Metric definitions", "",
              *[f"- `{name}`: {text}" for name, text in explained.items()], "",
              "## How to use", "",
              "Load the base model as it was trained (in 4 bits if it was trained in 4 bits: the adapter learned "
              "corrections to those weights), then the adapter and its processor:", "",
              "```python",
              "import torch",
              "from peft import PeftModel",
              "from transformers import AutoModelForImageTextToText, AutoProcessor",
              "",
              "# name the dtype: without it transformers takes the one in the checkpoint's config.json",
              f'base = AutoModelForImageTextToText.from_pretrained("{base_model}", dtype=torch.bfloat16)'
              "  # float16 on a T4",
              'model = PeftModel.from_pretrained(base, "<this repository or folder>")',
              'processor = AutoProcessor.from_pretrained("<this repository or folder>")',
              "```", ""]
    _write_atomic(path, "\n".join(lines))
    return path


def _data_lines(data: Mapping, number, label: str) -> list[str]:
    """The Data section between the source and the split seed: the optional lines of :func:`data_section`
    around the tables of rows per split and of the roles."""
    lines = []
    for key, heading in (("format", "Format"), ("note", "Note")):
        if data.get(key):
            lines += [f"{heading}: {' '.join(_scrub(str(data[key])).split())}", ""]
    skipped = data.get("skipped")
    if skipped is not None:
        counts = _table(["split", "rows", "skipped"], [[split, number(int(n)), number(int(skipped.get(split, 0)))]
                                                      for split, n in data["counts"].items()])
    else:
        counts = _table(["split", "rows"], [[split, number(int(n))] for split, n in data["counts"].items()])
    lines += [*counts, ""]
    if data.get("read") is not None:
        lines += [f"Rows read: {number(int(data['read']))}", ""]
    lines += [*_table(["role", "column"], [[role, f"`{column}`" if re.fullmatch(r"[^\s`]+", str(column)) else column]
                                           for role, column in data["fields"].items()]), ""]
    reasons = data.get("skipped_reasons")
    if reasons:
        lines += [*_table(["skipped because", "rows"], [[reason, number(int(n))] for reason, n in reasons.items()]),
                  ""]
    for key, heading in (("images", "Images"), ("metric", "Metric")):
        if data.get(key):
            text = " ".join(_scrub(str(data[key])).split())
            lines += [f"{heading}: {text}{label if re.search(r'[0-9]', text) else ''}", ""]
    return lines


def read_model_card(folder: str | Path) -> dict:
    """Parse a card written by :func:`write_model_card` back into its front matter and numbers.

    Returns ``{"front_matter", "title", "tiny", "data": {"source", "counts", "fields", "split_seed"},
    "hyperparameters" (values as shown, strings), "preset": {"name", "dtype", "hardware"}, "run_seconds", "best":
    {"step", "metric", "value"} or None, "decimals", "metrics_before", "metrics_after", "changes",
    "definitions"}``; ``data`` also holds the optional keys of :func:`data_section` the card shows (``format``,
    ``note``, ``skipped``, ``read``, ``skipped_reasons``, ``images``, ``metric``). Scores are floats as rounded in
    the card (None where a side has none), ``samples`` an int. Raises ``ValueError`` for a README.md this module
    did not write. Used in ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".
    """
    from huggingface_hub import ModelCard

    from vlm_helpers.runtime import mode_label

    path = Path(folder) / CARD_FILE
    text = path.read_text(encoding="utf-8")
    if CARD_MARKER not in text:
        raise ValueError(f"{path} was not written by write_model_card (no marker line)")
    card = ModelCard(text)
    title = next(line[2:] for line in card.text.splitlines() if line.startswith("# "))
    label = mode_label(True)
    tiny = title.endswith(label)

    def plain(cell: str) -> str:
        return cell.replace(label, "").strip().strip("`")

    sections = _sections(card.text)
    data_tables = _tables(sections["Data"])
    train_tables = _tables(sections["Training"])
    results = _tables(sections["Results"])[0]
    seed = plain(re.search(r"^Split seed: (.+)$", sections["Data"], flags=re.M).group(1))
    decimals = int(re.search(r"rounded to (\d+) decimals", sections["Results"]).group(1))
    best = re.search(r"^Best checkpoint: step (\d+)\s*(?:, chosen by `([^`]+)` = (\S+))?",
                     sections["Training"].replace(label, ""), flags=re.M)

    def value(cell: str, name: str):
        cell = plain(cell)
        if cell == "-":
            return None
        return int(cell) if name == "samples" else float(cell)

    preset = train_tables[1][0]
    return {
        "front_matter": card.data.to_dict(),
        "title": title,
        "tiny": tiny,
        "data": _read_data(sections["Data"], data_tables, plain, seed),
        "hyperparameters": {plain(name): plain(shown) for name, shown in train_tables[0]},
        "preset": {"name": plain(preset[0]), "dtype": plain(preset[1]), "hardware": plain(preset[2])},
        "run_seconds": float(plain(preset[3])),
        "best": None if best is None else {"step": int(best.group(1)), "metric": best.group(2),
                                           "value": float(best.group(3)) if best.group(3) else None},
        "decimals": decimals,
        "metrics_before": {plain(row[0]): value(row[1], plain(row[0])) for row in results},
        "metrics_after": {plain(row[0]): value(row[2], plain(row[0])) for row in results},
        "changes": {plain(row[0]): None if plain(row[3]) == "-" else float(plain(row[3])) for row in results},
        "definitions": dict(re.findall(r"^- `([^`]+)`: (.+)$", sections["Metric definitions"], flags=re.M)),
    }


def _read_data(section: str, tables: list, plain, seed: str) -> dict:
    """The Data section back into :func:`write_model_card`'s ``data`` (the optional keys only when present)."""
    data = {"source": _paragraphs(section)[0],
            "counts": {plain(row[0]): int(plain(row[1])) for row in tables[0]}}
    if tables[0] and len(tables[0][0]) == 3:
        data["skipped"] = {plain(row[0]): int(plain(row[2])) for row in tables[0]}
    data["fields"] = {plain(role): plain(column) for role, column in tables[1]}
    if len(tables) > 2:
        data["skipped_reasons"] = {plain(reason): int(plain(n)) for reason, n in tables[2]}
    for key, heading in (("format", "Format"), ("note", "Note"), ("read", "Rows read"), ("images", "Images"),
                         ("metric", "Metric")):
        found = re.search(rf"^{heading}: (.+)$", section, flags=re.M)
        if found:
            data[key] = int(plain(found.group(1))) if key == "read" else plain(found.group(1))
    data["split_seed"] = int(seed) if seed.lstrip("-").isdigit() else seed
    return data


def _replaceable(text: str) -> bool:
    """A card :func:`write_model_card` may replace: its own, or PEFT's untouched template."""
    return CARD_MARKER in text or is_peft_template(text)


def is_peft_template(text: str) -> bool:
    """Whether ``text`` is the card PEFT's ``save_pretrained`` writes: huggingface_hub's default template, then
    only PEFT's additions (framework versions, a quantization block). Any edit of the template makes it False. Such a
    card is replaced by the real one and never uploaded (``notebooks/06_your_data_your_model.ipynb``, section "Share
    the result")."""
    from huggingface_hub import ModelCard, ModelCardData

    template = ModelCard.from_template(ModelCardData()).text.splitlines()
    try:
        lines = ModelCard(text).text.splitlines()
    except ValueError:
        return False
    added = lines[len(template):]
    return lines[:len(template)] == template and all(
        not line.strip() or line.startswith(("- ", "## Training procedure", "### Framework versions",
                                             "The following `bitsandbytes` quantization config"))
        for line in added)


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(headers: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines (``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return lines + ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]


def _sections(body: str) -> dict[str, str]:
    """``## heading`` -> the text under it (fenced code is not searched for headings)."""
    sections, current, fenced = {}, None, False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def _tables(text: str) -> list[list[list[str]]]:
    """The tables of a section, each as its body rows of cells (the heading and rule rows dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            current.append(cells)
        else:
            current = None
    return [table[2:] for table in tables]


def _paragraphs(text: str) -> list[str]:
    """The non-table, non-empty text blocks of a section, each joined into one line."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip() and not line.startswith("|"):
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    return blocks
