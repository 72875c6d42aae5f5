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
from vlm_helpers.data.images import to_rgb
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
