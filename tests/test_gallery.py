"""Notebook 05's gallery shows, beside each question, the page that question was asked about.

Three things have to hold for that: synthetic DocVQA ids name the same row whatever the sample size
(notebook 01 scores fewer rows than 02 and 03), each run owns its thumbnails, and pairing a baseline
with a fine-tuned run by id never pairs two different questions.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlm_helpers import comparison, results
from vlm_helpers.supervision import to_rgb
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa, synthetic_split_seed

SEED = synthetic_split_seed(42, "validation")  # notebooks 01-03: docvqa_dataset("validation", seed=42)


def _thumbnail_pixels(image, size: int = 320) -> np.ndarray:
    """The thumbnail ``write_run`` should have saved for ``image``, made independently here."""
    thumbnail = to_rgb(image)
    thumbnail.thumbnail((size, size))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.int16)


def _saved_pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _records(rows, predict) -> list[dict]:
    """Prediction records as ``evaluation.prediction_records`` makes them, ``predict(i, row)`` the prediction."""
    return [{"id": str(row["questionId"]), "question": row["question"], "references": list(row["answers"]),
             "prediction": predict(i, row), "model": "m", "mode": "tiny"} for i, row in enumerate(rows)]


def test_gallery_thumbnail_is_the_page_of_the_question_beside_it(tmp_path):
    small = list(make_synthetic_docvqa(20, seed=SEED))  # notebook 01: 20 validation questions in tiny mode
    large = list(make_synthetic_docvqa(40, seed=SEED))  # notebook 02: 40
    # Baseline right on even rows, fine-tuned right except on rows 2, 6, 10, ...:
    # improved (odd rows), unchanged (0, 4, 8, ...) and regressed (2, 6, ...) examples all occur.
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="baseline", mode="tiny", notebook="01",
                      metrics={"anls": 0.5}, records=_records(small, lambda i, r: r["answers"][0] if i % 2 == 0 else ""),
                      images=[row["image"] for row in small])
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="finetuned", mode="tiny", notebook="02",
                      metrics={"anls": 0.7}, records=_records(large, lambda i, r: "" if i % 4 == 2 else r["answers"][0]),
                      images=[row["image"] for row in large])
    before, after = results.find_runs(tmp_path)
    examples = comparison.pick_examples(before, after, per_kind=100)
    shown = [example for group in examples.values() for example in group]

    before_rows = {str(row["questionId"]): row for row in small}
    after_rows = {str(row["questionId"]): row for row in large}
    for example in shown:
        row = after_rows[example["id"]]  # the row whose fine-tuned prediction is shown
        assert example["question"] == row["question"] and example["references"] == list(row["answers"])
        assert example["after"] == ("" if large.index(row) % 4 == 2 else row["answers"][0])
        assert before_rows[example["id"]]["question"] == row["question"], "before and after are one question"
        assert np.array_equal(_saved_pixels(tmp_path / example["image"]), _thumbnail_pixels(row["image"])), (
            f"the thumbnail beside question {example['id']} ({row['question']!r}) is another page")
    assert len(shown) == len(small), "every baseline question is paired with the same question fine-tuned"
    assert all(examples.values()), {kind: len(group) for kind, group in examples.items()}


def test_each_run_owns_its_thumbnails_and_replacing_a_run_replaces_them(tmp_path):
    red, blue, green = (Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 160, 0)))
    record = {"id": "7", "question": "What colour?", "references": ["x"], "prediction": "x"}
    common = dict(task="docvqa", stage="finetuned", mode="tiny", metrics={"anls": 1.0}, records=[record])
    results.write_run(tmp_path, model="florence2", notebook="02", images=[red], **common)
    results.write_run(tmp_path, model="idefics2", notebook="03", images=[blue], **common)  # same task, same id
    runs = {run.model: run for run in results.find_runs(tmp_path)}
    assert _saved_pixels(tmp_path / runs["florence2"].predictions()[0]["image"])[0, 0].tolist() == [254, 0, 0]
    assert _saved_pixels(tmp_path / runs["idefics2"].predictions()[0]["image"])[0, 0, 2] > 250  # blue, not red

    results.write_run(tmp_path, model="florence2", notebook="02", images=[green], **common)  # a re-run replaces
    image = runs["florence2"].predictions()[0]["image"]
    assert _saved_pixels(tmp_path / image)[0, 0, 1] > 150 and _saved_pixels(tmp_path / image)[0, 0, 0] < 10


def test_pairing_drops_pairs_whose_question_differs_and_says_how_many(capsys):
    before = [{"id": "1", "question": "Who is the sender?", "references": ["John Smith"], "prediction": ""},
              {"id": "2", "question": "What is the date?", "references": ["01/02/1990"], "prediction": ""}]
    after = [{"id": "1", "question": "Who is the sender?", "references": ["John Smith"], "prediction": "John Smith"},
             {"id": "2", "question": "What is the total amount?", "references": ["$5.00"], "prediction": "$5.00"}]
    paired = results.pair_predictions(before, after, task="docvqa")
    assert [p["id"] for p in paired] == ["1"]
    printed = capsys.readouterr().out
    assert "1 of 2" in printed and "different question" in printed
    with pytest.raises(ValueError, match="different question"):
        results.pair_predictions(before, after, task="docvqa", on_mismatch="raise")


def test_synthetic_docvqa_rows_are_prefix_stable():
    small = make_synthetic_docvqa(7, seed=SEED).to_list()
    large = make_synthetic_docvqa(30, seed=SEED).to_list()
    assert large[:7] == small, "the first rows of a bigger set are the smaller set, image bytes included"
    assert len({row["questionId"] for row in large}) == len(large)
    assert make_synthetic_docvqa(30, seed=SEED).to_list() == large


def test_a_smaller_rerun_removes_the_thumbnails_its_records_no_longer_name(tmp_path):
    pages = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(3)]
    records = [{"id": key, "question": f"q{key}", "references": ["x"], "prediction": "x"} for key in ("a/b", "a_b", "3")]
    common = dict(task="docvqa", model="florence2", stage="baseline", mode="tiny", notebook="02", metrics={})
    results.write_run(tmp_path, records=records, images=pages, **common)
    (run,) = results.find_runs(tmp_path)
    paths = [record["image"] for record in run.predictions()]
    assert len(set(paths)) == 3, "ids that differ get files that differ, 'a/b' and 'a_b' included"
    assert all(path.startswith("images/docvqa/docvqa__florence2__baseline/") for path in paths)
    results.write_run(tmp_path, records=records[2:], images=pages[2:], **common)
    assert sorted(p.name for p in (tmp_path / "images/docvqa/docvqa__florence2__baseline").iterdir()) == ["3.jpg"]
    results.write_run(tmp_path, records=records[2:], **common)  # no images this time: no stale thumbnail either
    assert not list((tmp_path / "images").rglob("*.jpg"))


def test_a_run_with_two_records_under_one_id_is_refused(tmp_path):
    record = {"id": "7", "question": "q", "references": ["x"], "prediction": "x"}
    with pytest.raises(ValueError, match=r"records\[1\] repeats the id '7'"):
        results.write_run(tmp_path, task="docvqa", model="m", stage="baseline", mode="tiny", notebook="02",
                          metrics={}, records=[record, {**record, "question": "another"}])
    assert not list(tmp_path.iterdir()), "nothing written"


# ---------------------------------------------------------------------------------------------------------------
# Issue 25, finding 4: the gallery ranks by the headline metric, per example, as the table and the best checkpoint
# ---------------------------------------------------------------------------------------------------------------

CAPTIONS = [  # free-text captions of someone's own photos (no comma-separated tags): (reference, before, after)
    ("a red tram crossing a stone bridge at dusk", "a photo", "a red tram on a stone bridge at dusk"),
    ("two dogs asleep on a blue sofa", "dogs", "two dogs asleep on a sofa"),
    ("a bowl of ramen with an egg and scallions", "a bowl of ramen with an egg", "a plate"),
    ("a cyclist waiting at a traffic light in the rain", "a cyclist in the rain", "a cyclist in the rain"),
    ("snow on the roofs of an old village", "an image", "snow on the roofs of a village"),
]


def _caption_runs(tmp_path, captions=CAPTIONS):
    """A baseline and a fine-tuned captioning run written as notebook 06 writes them, scored by the scorer."""
    from vlm_helpers import evaluation

    for stage, column in (("baseline", 1), ("finetuned", 2)):
        records = [{"id": f"photos.jsonl:{n}", "question": "Describe the photo.", "references": [caption[0]],
                    "prediction": caption[column], "model": "m", "mode": "tiny"}
                   for n, caption in enumerate(captions, 1)]
        results.write_run(tmp_path, task="captioning", model="florence2", stage=stage, mode="tiny", notebook="06",
                          metrics=evaluation.score_captions(records), records=records)
    return results.find_runs(tmp_path)


def test_free_text_captions_rank_by_rouge1_the_metric_the_table_leads_with(tmp_path):
    from vlm_helpers.metrics import rouge

    before, after = _caption_runs(tmp_path)
    table = comparison.comparison_table([before, after])
    headline = comparison.HEADLINE_METRICS["captioning"][0]
    assert table[0]["metric"] == headline == "rouge1"  # the table's first row for the task

    examples = comparison.pick_examples(before, after, per_kind=10)
    shown = [example for group in examples.values() for example in group]
    assert len(shown) == len(CAPTIONS)
    # with tag F1 (comma-separated tags) every free-text caption scored 0.00 -> 0.00: all "unchanged"
    assert sorted(e["id"] for e in examples["improved"]) == ["photos.jsonl:1", "photos.jsonl:2", "photos.jsonl:5"]
    changes = [e["change"] for e in examples["improved"]]
    assert changes == sorted(changes, reverse=True) and changes[-1] > 0.3  # most improved first
    assert [e["id"] for e in examples["regressed"]] == ["photos.jsonl:3"]
    assert [e["id"] for e in examples["unchanged"]] == ["photos.jsonl:4"]
    for example in shown:
        assert example["metric"] == headline
        for stage in ("before", "after"):
            expected = rouge([example[stage]], [example["references"][0]])["rouge1"]
            assert example[f"score_{stage}"] == pytest.approx(expected)
    # per example, the same number as the table: the mean of the per-example scores is the run's score
    assert sum(e["score_before"] for e in shown) / len(shown) == pytest.approx(table[0]["before"])
    assert sum(e["score_after"] for e in shown) / len(shown) == pytest.approx(table[0]["after"])


def test_the_best_checkpoint_is_chosen_by_the_mean_of_the_same_per_example_score():
    """``generation_eval_fn`` gives ``val_<headline>``, the key notebook 06 and the CLI keep the best adapter by;
    it is the mean of the scores the gallery shows per example."""
    from simulated_model import SimulatedModel

    from vlm_helpers import evaluation

    rows = [{"id": str(n), "question": "Describe the photo.", "answers": [reference], "prediction": after}
            for n, (reference, _, after) in enumerate(CAPTIONS)]
    model = SimulatedModel(lambda row: row["prediction"])
    scores = evaluation.generation_eval_fn(model, model, model, rows, task="captioning")(step=10)
    headline = comparison.HEADLINE_METRICS["captioning"][0]
    per_example = [evaluation.sample_score("captioning", row["prediction"], row["answers"]) for row in rows]
    assert scores[f"val_{headline}"] == pytest.approx(sum(per_example) / len(per_example))
    for task in comparison.HEADLINE_METRICS:  # every task's per-example default is its headline
        assert evaluation.sample_score(task, "a b", ["a b"]) == 1.0


def test_the_gallery_names_the_metric_it_ranks_by(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from vlm_helpers import plotting

    before, after = _caption_runs(tmp_path)
    fig = plotting.gallery(comparison.pick_examples(before, after, per_kind=1), tmp_path)
    drawn = [text.get_text() for ax in fig.axes for text in ax.texts]
    headers = [text.splitlines()[0] for text in drawn]
    assert headers[0].startswith("IMPROVED  id photos.jsonl:1  (rouge1 0.") and headers[1].startswith("UNCHANGED")
    assert headers[2].startswith("REGRESSED  id photos.jsonl:3  (rouge1 0.")
    assert not any("0.00 -> 0.00" in header for header in headers)
    assert "(rouge1 " in drawn[0].splitlines()[-1]  # the before/after lines name it too


def test_another_metric_of_the_task_can_be_asked_for_and_an_unknown_one_is_refused(tmp_path):
    before, after = _caption_runs(tmp_path, [("boeing 737, white fuselage", "boeing 737",
                                              "boeing 707, white fuselage")])
    (by_tags,) = results.pair_predictions(before.predictions(), after.predictions(), task="captioning",
                                          metric="tag_f1")
    assert by_tags["metric"] == "tag_f1"
    assert (by_tags["score_before"], by_tags["score_after"]) == (pytest.approx(2 / 3), pytest.approx(0.5))
    with pytest.raises(ValueError, match="no per-sample 'anls' for task 'captioning'"):
        comparison.pick_examples(before, after, metric="anls")
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        results.pair_predictions([], [], task="ocr")


def test_notebook_05_ranks_each_task_by_its_headline_and_draws_non_latin_text_cleanly(tmp_path, tiny_cache):
    """Notebook 05 on a results folder written by hand: DocVQA-style questions in Chinese, free-text captions.
    Its outputs stay clean (no "Glyph missing" warning, whatever fonts this machine has) and name the metric."""
    from test_notebooks import output_problems, outputs_text, run_notebook

    page = Image.new("RGB", (60, 80), (250, 250, 240))
    questions = [("合计金额是多少？", "¥88", "¥ 88"), ("What is the date?", "01/02/1990", "01/02/1990"),
                 ("Wer hat die Rechnung gestellt?", "Müller GmbH", "Mueller"), ("请问发票号码？", "A-17", "A17 刚")]
    for model, notebook in (("florence2", "02"), ("idefics2", "03")):
        for stage, column in (("baseline", None), ("finetuned", 2)):
            records = [{"id": str(900 + n), "question": q, "references": [ref],
                        "prediction": "" if column is None else row[column], "model": model, "mode": "tiny"}
                       for n, (q, ref, *row) in enumerate(questions) for row in [(q, ref, *row)]]
            results.write_run(tmp_path, task="docvqa", model=model, stage=stage, mode="tiny", notebook=notebook,
                              metrics={"anls": 0.5, "levenshtein_similarity": 0.5}, records=records,
                              images=[page] * len(records),
                              history=[{"step": s, "loss": 3.0 / s} for s in range(1, 30)] if column else None)
    _caption_runs(tmp_path)  # captioning / florence2 from "06"; phi3 is the series' captioning run
    for stage, column in (("baseline", 1), ("finetuned", 2)):
        records = [{"id": str(n), "question": "Describe the photo.", "references": [c[0]], "prediction": c[column],
                    "model": "phi3", "mode": "tiny"} for n, c in enumerate(CAPTIONS)]
        results.write_run(tmp_path, task="captioning", model="phi3", stage=stage, mode="tiny", notebook="04",
                          metrics={"rouge1": 0.3, "rougeL": 0.3, "tag_f1": 0.0}, records=records,
                          images=[page] * len(records))

    notebook = run_notebook("05_before_after_comparison.ipynb", tmp_path, tiny_cache)
    assert not output_problems(notebook), output_problems(notebook)
    text = outputs_text(notebook)
    ranked = [line for line in text.splitlines() if "ranked by" in line]
    assert len(ranked) == 4, ranked  # (captioning: florence2, phi3; docvqa: florence2, idefics2), EXAMPLES_PER_KIND 2
    assert ranked[1].startswith("phi3 on captioning: 2 improved, 1 unchanged, 1 regressed, ranked by each example's "
                                "rouge1")
    assert ranked[2].startswith("florence2 on docvqa: 2 improved, 2 unchanged, 0 regressed, ranked by each "
                                "example's anls")
    for name in ("gallery_captioning_phi3.png", "gallery_captioning_florence2.png", "gallery_docvqa_idefics2.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
