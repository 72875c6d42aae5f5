"""Evaluation by generation: what the user will actually get from the model.

Taught in ``notebooks/02_florence2_docvqa.ipynb`` and reused by 01, 03 and 04. The model
*generates* an answer (greedy or beam search), we post-process it, and score it
against every reference with ANLS (:mod:`vlm_helpers.metrics`). Scoring the argmax of
teacher-forced logits, as the Phi-3 article does, measures something a user never sees.

Any collator with a ``generation_inputs(rows)`` method works here: Florence-2's
(encoder-decoder: the output holds only the answer) and the chat collator
(decoder-only: the output repeats the prompt, which we cut off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch


def clean_prediction(text: str) -> str:
    """Post-process a decoded answer: drop leftover task tokens and surrounding whitespace.

    Part of the evaluation in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning".
    """
    for token in ("<DocVQA>", "<s>", "</s>", "<pad>", "<end_of_utterance>", "<|end|>", "<|endoftext|>"):
        text = text.replace(token, "")
    return " ".join(text.split())


@torch.no_grad()
def generate_predictions(model, processor, collator, rows: Sequence[dict], *, batch_size: int = 8,
                         num_beams: int = 1, max_new_tokens: int = 32, device: str = "cpu",
                         dtype: str = "float32", progress: bool = False,
                         postprocess: Callable[[str], str] = clean_prediction) -> list[str]:
    """Generate one answer per row, in batches of ``batch_size``; return cleaned strings.

    Used in ``notebooks/02_florence2_docvqa.ipynb``, section "Save, reload, and ask a new question", and
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Save the adapter, reload it, get the same answers".
    """
    model.eval()
    autocast = torch.autocast(device, dtype=getattr(torch, dtype)) if dtype != "float32" else nullcontext()
    tokenizer = getattr(processor, "tokenizer", processor)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    # chat collators know their end-of-turn token; stop there even if the checkpoint's config does not
    stop = {"eos_token_id": collator.stop_token_ids} if hasattr(collator, "stop_token_ids") else {}
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    predictions: list[str] = []
    for start in starts:
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        inputs = {k: v.to(device) for k, v in collator.generation_inputs(chunk).items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with autocast:
            output = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                    **stop)
        if not encoder_decoder:  # decoder-only: the prompt comes back first (left-padded, same width)
            output = output[:, inputs["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        predictions.extend(postprocess(text) for text in texts)
    return predictions


#: Columns that hold a row's own id, in the order :func:`row_id` looks for them: DocVQA's ``questionId``
#: (notebooks 01-03), then ``id`` (the canonical rows of notebook 06 and ``vlm-train --recipe custom``, whose
#: loaders put the user's id there, or ``file:line`` when the user has none; FGVC-Aircraft's ``id`` in 04).
ID_KEYS = ("questionId", "id")


def row_id(row: dict, position: int, id_key: str | None = None) -> tuple[str, str | None]:
    """A row's id as a prediction record carries it, and the column it came from.

    With ``id_key``, that column (the row's ``position`` when the row lacks it); without, the first of
    :data:`ID_KEYS` the row has, else the ``position`` (column None), so a record can always be joined
    back to the row the user gave. The records of ``notebooks/06_your_data_your_model.ipynb``, section
    "Before fine-tuning", carry the ids its loaders gave the rows.
    """
    keys = (id_key,) if id_key else ID_KEYS
    for key in keys:
        value = row.get(key)
        if value is not None and str(value) != "":
            return str(value), key
    return str(position), None


def _reference_list(references) -> list:
    """A row's references as a list: a bare string is one reference."""
    return [references] if isinstance(references, str) else list(references)


def prediction_records(rows: Sequence[dict], predictions: Sequence[str], *, model_name: str, mode: str,
                       id_key: str | None = None, question_key: str = "question",
                       references_key: str = "answers") -> list[dict]:
    """Rows + predictions as records for :func:`vlm_helpers.results.write_run`.

    Each record: ``id``, ``question``, ``references``, ``prediction``, ``model``, ``mode`` ("tiny" or
    "full"), and ``origin`` when the row has one (notebook 06's ``"data.jsonl:12"``: the file and line it
    was read from). ``id`` is the row's own id (:func:`row_id`: ``id_key``, or DocVQA's ``questionId``,
    or the ``id`` of a canonical row), so predictions join back to the user's data; only a row without
    any id gets its position. The records :func:`evaluate` returns in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning".

    Raises:
        ValueError: the lengths differ, or two rows share an id (the message names the column and both
            positions), which would pair the wrong rows in a gallery.
    """
    if len(rows) != len(predictions):
        raise ValueError(f"{len(rows)} rows but {len(predictions)} predictions")
    records, first_position = [], {}
    for index, (row, prediction) in enumerate(zip(rows, predictions)):
        key, column = row_id(row, index, id_key)
        if key in first_position:
            source = f"column {column!r}" if column else "a row without an id gets its position"
            raise ValueError(f"rows {first_position[key]} and {index} share the id {key!r} ({source}); every "
                             "evaluated row needs its own id to be joined back to the data: make the ids unique, "
                             "or pass id_key= another column")
        first_position[key] = index
        record = {
            "id": key,
            "question": row.get(question_key, ""),
            "references": _reference_list(row[references_key]),
            "prediction": prediction,
            "model": model_name,
            "mode": mode,
        }
        if isinstance(row.get("origin"), str) and row["origin"]:
            record["origin"] = row["origin"]
        records.append(record)
    return records


def score_docvqa(records: Sequence[dict]) -> dict[str, float]:
    """ANLS and the blog's Levenshtein similarity over prediction records.

    The scores of ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning"; the metrics are taught
    in ``notebooks/02_florence2_docvqa.ipynb``, section "The metric: ANLS, not "Levenshtein similarity"".
    """
    from vlm_helpers.metrics import anls, levenshtein_similarity

    predictions = [r["prediction"] for r in records]
    references = [r["references"] for r in records]
    return {"anls": anls(predictions, references), "levenshtein_similarity": levenshtein_similarity(predictions, references),
            "samples": len(records)}


def score_short_answers(records: Sequence[dict]) -> dict[str, float]:
    """ANLS and exact match over prediction records: question answering on your own data (task ``"qa"``).

    Used in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning".
    """
    from vlm_helpers.metrics import anls, exact_match

    predictions = [r["prediction"] for r in records]
    references = [r["references"] for r in records]
    return {"anls": anls(predictions, references), "exact_match": exact_match(predictions, references),
            "samples": len(records)}


def _first_reference(references):
    """The caption reference of one record: the first of a list, a bare string as is.

    Anything else (None, an empty list, a number) is passed through unchanged, so the
    metric raises its ``ValueError`` naming the sample's index.
    """
    if isinstance(references, (list, tuple)) and references:
        return references[0]
    return references


def score_captions(records: Sequence[dict]) -> dict[str, float]:
    """ROUGE (1, 2, L) and tag precision/recall/F1 of generated captions (notebook 04).

    The metrics are taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The metrics: ROUGE and
    tags"; used in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Before fine-tuning".
    """
    from vlm_helpers.metrics import rouge, tag_scores

    predictions = [r["prediction"] for r in records]
    references = [_first_reference(r["references"]) for r in records]
    return {**rouge(predictions, references), **tag_scores(predictions, references), "samples": len(records)}


#: The metrics each task's scorer reports that notebooks 05 and 06 show, headline first. The headline is the
#: one every place ranks by: the table's first row, the gallery's per-example score (:func:`sample_score`),
#: and the validation score that picks the best checkpoint (``val_<headline>`` / ``eval_<headline>``).
HEADLINE_METRICS = {"docvqa": ("anls", "levenshtein_similarity"), "captioning": ("rouge1", "rougeL", "tag_f1"),
                    "qa": ("anls", "exact_match")}


def _rouge_per_sample(rouge_type: str) -> Callable[[list[str], list[list[str]]], list[float]]:
    def per_sample(predictions, references):
        from vlm_helpers.metrics import rouge

        return [rouge([p], [r], rouge_types=(rouge_type,))[rouge_type] for p, r in zip(predictions, references)]

    return per_sample


def _per_sample_scorers() -> dict[str, Callable[[list[str], list], list[float]]]:
    """Metric name -> ``f(predictions, references) -> [score per sample]``, each the per-sample form of a
    :data:`SCORERS` metric (their mean is the scorer's value, tag F1 aside: the scorer's is micro-averaged)."""
    from vlm_helpers import metrics

    return {"anls": metrics.anls_per_sample, "levenshtein_similarity": metrics.levenshtein_similarity_per_sample,
            "exact_match": metrics.exact_match_per_sample, "tag_f1": metrics.tag_f1_per_sample,
            **{name: _rouge_per_sample(name) for name in ("rouge1", "rouge2", "rougeL")}}


def sample_score(task: str, prediction: str, references: Sequence[str], *, metric: str | None = None) -> float:
    """One sample's score for ``task``: by default its headline metric (:data:`HEADLINE_METRICS`),
    the same one the table leads with and the best checkpoint is chosen by.

    ANLS for DocVQA and ``"qa"``, ROUGE-1 for captioning; ``metric`` picks another of the task's
    metrics (e.g. ``"tag_f1"``). ``references`` is a list of strings (a bare string counts as one); for
    captioning the first one is used, as :func:`score_captions` does, so the mean of the per-sample
    scores is the run's score. A None prediction or reference raises the metrics' ``ValueError``. The
    per-sample scores of ``notebooks/02_florence2_docvqa.ipynb``, section "After fine-tuning", and of the
    gallery in ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    if task not in SCORERS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(SCORERS)}")
    metric = metric or HEADLINE_METRICS[task][0]
    scorers = _per_sample_scorers()
    if metric not in scorers or metric not in HEADLINE_METRICS[task]:
        known = [name for name in HEADLINE_METRICS[task] if name in scorers]
        raise ValueError(f"no per-sample {metric!r} for task {task!r}; expected one of {known}")
    if task == "captioning":  # one caption reference, as a bare string (tag F1 reads strings)
        references = _first_reference(references)
    elif isinstance(references, str):
        references = [references]
    return scorers[metric]([prediction], [references])[0]


SCORERS: dict[str, Callable[[Sequence[dict]], dict[str, float]]] = {
    "docvqa": score_docvqa, "captioning": score_captions, "qa": score_short_answers}


def evaluate(model, processor, collator, rows: Sequence[dict], *, task: str, model_name: str, tiny: bool,
             device: str = "cpu", dtype: str = "float32", batch_size: int = 8, num_beams: int = 1,
             max_new_tokens: int = 32, title: str = "", references_key: str = "answers",
             id_key: str | None = None, progress: bool = False) -> tuple[list[dict], dict[str, float]]:
    """Generate for ``rows``, score them for ``task``, print one labelled line; return (records, scores).

    The records carry each row's own id (``id_key``; by default ``questionId`` or ``id``, see
    :func:`prediction_records`) and its ``origin`` where it has one.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning" (and "After fine-tuning");
    zero-shot in ``notebooks/01_baseline_inference.ipynb``, section "Florence-2 on DocVQA questions, zero-shot".
    """
    predictions = generate_predictions(model, processor, collator, rows, batch_size=batch_size, num_beams=num_beams,
                                       max_new_tokens=max_new_tokens, device=device, dtype=dtype, progress=progress)
    records = prediction_records(rows, predictions, model_name=model_name, mode="tiny" if tiny else "full",
                                 references_key=references_key, id_key=id_key)
    scores = SCORERS[task](records)
    print(format_scores(scores, tiny=tiny, title=title or model_name))
    return records, scores


def generation_eval_fn(model, processor, collator, rows: Sequence[dict], *, task: str, prefix: str = "val_",
                       references_key: str = "answers", **generate_kwargs) -> Callable[[int], dict[str, float]]:
    """A callback for training loops: at a given step, generate for ``rows`` and score them.

    Returns ``f(step) -> {"val_anls": ...}`` (DocVQA) or ``{"val_rouge1", "val_tag_f1", ...}``
    (captioning): the same generation-based scores as the final evaluation, never the argmax
    of teacher-forced logits. ``generate_kwargs`` go to :func:`generate_predictions`. Taught in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Training with the Hugging Face Trainer".
    """
    def evaluate_at(step: int) -> dict[str, float]:
        predictions = generate_predictions(model, processor, collator, rows, **generate_kwargs)
        # scores need no ids: the rows are only scored, never written or paired
        records = [{"prediction": prediction, "references": _reference_list(row[references_key])}
                   for row, prediction in zip(rows, predictions, strict=True)]
        scores = SCORERS[task](records)
        return {prefix + name: value for name, value in scores.items() if name != "samples"}

    return evaluate_at


def format_scores(scores: dict, *, tiny: bool, title: str) -> str:
    """One printable line of scores, always ending with the tiny/full mode label.

    The line :func:`evaluate` prints in ``notebooks/02_florence2_docvqa.ipynb``, section "Before fine-tuning".
    """
    from vlm_helpers.runtime import mode_label

    parts = [f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}" for name, value in scores.items()]
    return f"{title}: " + " | ".join(parts) + "  " + mode_label(tiny)
