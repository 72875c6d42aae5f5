"""The results/ format: write, read back, pair, compare, and the missing-runs message."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlm_helpers import comparison, results


def _records(predictions, references):
    return [{"id": str(i), "question": f"q{i}", "references": refs, "prediction": p, "model": "m", "mode": "tiny"}
            for i, (p, refs) in enumerate(zip(predictions, references))]


def test_write_and_find_runs_round_trip_with_thumbnails(tmp_path):
    refs = [["invoice"], ["USD"], ["John Smith"]]
    images = [Image.new("RGBA", (600, 800), (255, 0, 0, 0)) for _ in refs]
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="baseline", mode="tiny", notebook="02",
                      metrics={"anls": 0.0, "samples": 3}, records=_records(["", "", ""], refs), images=images)
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="finetuned", mode="tiny", notebook="02",
                      metrics={"anls": 0.5}, records=_records(["invoice", "EUR", ""], refs),
                      history=[{"step": 1, "loss": 2.0}], images=images)
    runs = results.find_runs(tmp_path)
    assert [(r.stage, r.samples) for r in runs] == [("baseline", 3), ("finetuned", 3)]
    after = runs[1]
    assert after.history() == [{"step": 1, "loss": 2.0}]
    first = after.predictions()[0]
    assert set(first) >= {"id", "question", "references", "prediction", "model", "mode", "image"}
    thumbnail = Image.open(tmp_path / first["image"])
    assert max(thumbnail.size) == 320 and thumbnail.mode == "RGB"
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary file"


def test_malformed_prediction_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.predictions.jsonl"
    path.write_text(json.dumps({"id": "1"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"x.predictions.jsonl, line 2"):
        results.read_predictions(path)


def test_run_names_and_modes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        results.run_name("docvqa", "florence2", "after")
    with pytest.raises(ValueError, match="mode"):
        results.write_run(tmp_path, task="docvqa", model="m", stage="baseline", mode="small", notebook="x", metrics={})


def test_table_examples_and_missing_message(tmp_path):
    refs = [["invoice"], ["USD"], ["John Smith"], ["letter"]]
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="baseline", mode="tiny", notebook="02",
                      metrics={"anls": 0.25, "levenshtein_similarity": 0.3},
                      records=_records(["", "USD", "John Smith", ""], refs))
    results.write_run(tmp_path, task="docvqa", model="florence2", stage="finetuned", mode="tiny", notebook="02",
                      metrics={"anls": 0.5, "levenshtein_similarity": 0.6},
                      records=_records(["invoice", "USD", "", "letter"], refs))
    runs = results.find_runs(tmp_path)
    table = comparison.comparison_table(runs)
    anls_row = next(row for row in table if row["metric"] == "anls")
    assert anls_row["before"] == 0.25 and anls_row["after"] == 0.5 and anls_row["change"] == pytest.approx(0.25)
    assert "+0.250" in comparison.format_table(table)
    examples = comparison.pick_examples(runs[0], runs[1], per_kind=2)
    assert [e["id"] for e in examples["improved"]] == ["0", "3"]
    assert [e["id"] for e in examples["unchanged"]] == ["1"]
    assert [e["id"] for e in examples["regressed"]] == ["2"]
    message = comparison.missing_message(comparison.missing_runs(runs))
    assert "03_idefics2_qlora_docvqa" in message and "04_phi3_aircraft_captioning" in message
    assert "docvqa / florence2" not in message  # both Florence-2 runs exist
