"""Predictions carry the user's own ids (issue 25, finding 5), so they can be joined back to the user's rows.

The data here is laid out as other people lay theirs out, not as the synthetic set is: JSON Lines with an id under
a name of the user's choosing, JSON Lines without any id (the id is then ``file:line``), a semicolon CSV written by
a spreadsheet (with a byte-order mark), a ``save_to_disk`` folder (``split:row``), and every layout of the shared
writers in ``tests/other_data.py`` (ShareGPT, OpenAI ``image_url``, LLaVA, JSON arrays...). The model is simulated: a
stand-in whose ``generate`` answers each row with a text the test chose, so the test runs in a second and checks
the bookkeeping only (the real models' path through the same ``evaluate`` is run by notebook 06's tests).
"""

from __future__ import annotations

import json

import datasets
import pytest
from PIL import Image
from simulated_model import SimulatedModel

from vlm_helpers import evaluation, results
from vlm_helpers.data.formats import Columns, load_your_data
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

RECEIPTS = [  # (id, question, answers): the user's own ids, not positions, and not in file order
    ("R-0107", "What is the total?", ["12.50", "$12.50"]),
    ("R-0042", "合计金额是多少？", ["¥88"]),
    ("R-0999", "Wer hat die Rechnung gestellt?", ["Müller GmbH"]),
    ("R-0003", "ما هو المجموع؟", ["٤٥"]),
]


def _evaluate(rows, answer=lambda row: row["answers"][0], task="qa"):
    model = SimulatedModel(answer)
    return evaluation.evaluate(model, model, model, rows, task=task, model_name="simulated", tiny=True, batch_size=3)


def _image(path, colour=(200, 180, 160)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 32), colour).save(path)
    return path


def test_records_carry_the_id_column_the_user_named_and_the_file_line_it_was_read_from(tmp_path, capsys):
    lines = []
    for n, (key, question, answers) in enumerate(RECEIPTS):
        _image(tmp_path / "scans" / f"{key}.png", (40 * n, 90, 120))
        lines.append(json.dumps({"receipt": key, "scan": f"scans/{key}.png", "q": question, "a": answers},
                                ensure_ascii=False))
    (tmp_path / "receipts.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n",
                                             encoding="utf-8")  # a blank line: line numbers still count it
    splits, _ = load_your_data(tmp_path / "receipts.jsonl", Columns(image="scan", question="q", answer="a",
                                                                      id="receipt"))
    records, _ = _evaluate(splits["train"])
    assert [r["id"] for r in records] == [key for key, _, _ in RECEIPTS]
    assert [r["origin"] for r in records] == ["receipts.jsonl:1", "receipts.jsonl:2", "receipts.jsonl:4",
                                              "receipts.jsonl:5"]
    assert "simulated" in capsys.readouterr().out

    # written, read back, and joined to the user's own file by id: every prediction finds its row
    results.write_run(tmp_path / "results", task="qa", model="m", stage="baseline", mode="tiny", notebook="06",
                      metrics={"anls": 1.0}, records=records, images=[row["image"] for row in splits["train"]])
    (run,) = results.find_runs(tmp_path / "results")
    users = {row["receipt"]: row for row in map(json.loads, filter(None, (tmp_path / "receipts.jsonl")
                                                                     .read_text(encoding="utf-8").splitlines()))}
    for record in run.predictions():
        assert users[record["id"]]["q"] == record["question"] and users[record["id"]]["a"] == record["references"]
        line = int(record["origin"].rsplit(":", 1)[1])
        assert json.loads((tmp_path / "receipts.jsonl").read_text(encoding="utf-8").splitlines()[line - 1])[
            "receipt"] == record["id"]


def test_without_an_id_column_the_id_is_the_file_and_line(tmp_path):
    _image(tmp_path / "img" / "a.jpg")
    rows = [{"image": "img/a.jpg", "question": q, "answer": a} for _, q, a in RECEIPTS]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    splits, _ = load_your_data(tmp_path / "data.jsonl", Columns())
    records, _ = _evaluate(splits["train"])
    assert [r["id"] for r in records] == [f"data.jsonl:{n}" for n in range(1, 5)]
    lines = (tmp_path / "data.jsonl").read_text(encoding="utf-8").splitlines()
    for record in records:
        assert json.loads(lines[int(record["id"].split(":")[1]) - 1])["question"] == record["question"]


def test_a_spreadsheet_csv_with_semicolons_and_a_byte_order_mark_keeps_its_ids(tmp_path):
    _image(tmp_path / "Belege" / "b.png")
    body = "Beleg-Nr;Datei;Frage;Antwort\n" + "".join(
        f"{key};Belege/b.png;{question};{answers[0]}\n" for key, question, answers in RECEIPTS)
    (tmp_path / "belege.csv").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    splits, _ = load_your_data(tmp_path / "belege.csv", Columns(image="Datei", question="Frage", answer="Antwort",
                                                                  id="Beleg-Nr"))
    records, _ = _evaluate(splits["train"], answer=lambda row: "")
    assert [r["id"] for r in records] == [key for key, _, _ in RECEIPTS]
    assert [r["origin"] for r in records] == [f"belege.csv:{n}" for n in range(2, 6)]  # line 1 is the header


def test_a_dataset_folder_gives_split_and_row(tmp_path):
    image = Image.new("RGB", (16, 16))
    ds = datasets.Dataset.from_dict({"picture": [image] * 3, "prompt_text": ["a?", "b?", "c?"],
                                     "label": ["x", "y", "z"]},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "prompt_text": datasets.Value("string"),
                                                                "label": datasets.Value("string")}))
    datasets.DatasetDict({"test": ds}).save_to_disk(tmp_path / "hub_style")
    splits, _ = load_your_data(tmp_path / "hub_style", Columns(image="picture", question="prompt_text",
                                                               answer="label"))
    records, _ = _evaluate(splits["test"])
    assert [r["id"] for r in records] == ["test:0", "test:1", "test:2"]


def test_docvqa_rows_keep_their_question_ids():
    rows = make_synthetic_docvqa(5, seed=3)
    records, _ = _evaluate(rows, task="docvqa")
    assert [r["id"] for r in records] == [str(key) for key in rows["questionId"]]
    assert "origin" not in records[0]  # DocVQA rows have none
    records, _ = _evaluate(rows.remove_columns("questionId"), task="docvqa")
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]  # only a row without any id gets its position


def test_two_rows_with_one_id_are_refused_naming_both():
    rows = [{"id": "a7", "question": "q1", "answers": ["x"]}, {"id": "b2", "question": "q2", "answers": ["y"]},
            {"id": "a7", "question": "q3", "answers": ["z"]}]
    with pytest.raises(ValueError, match=r"rows 0 and 2 share the id 'a7' \(column 'id'\)"):
        evaluation.prediction_records(rows, ["x", "y", "z"], model_name="m", mode="tiny")
    explicit = evaluation.prediction_records(rows, ["x", "y", "z"], model_name="m", mode="tiny", id_key="question")
    assert [r["id"] for r in explicit] == ["q1", "q2", "q3"]


def test_every_layout_of_other_peoples_data_gets_its_own_ids_in_the_predictions(tmp_path):
    """The shared writers of other people's layouts (``tests/other_data.py``): whatever the layout, each record's
    ``id`` is the one its loader gave the row (the user's id, ``file:line``, ``file[element]`` or ``split:row``),
    and joins back to the row's question."""
    from other_data import all_layouts

    problems = []
    for name, data in all_layouts(tmp_path).items():
        splits, _ = load_your_data(data.path, data.columns)
        records = [record for split in splits.values() for record in _evaluate(split, task=data.task)[0]]
        if [record["id"] for record in records] != data.ids:
            problems.append(f"{name}: ids {[record['id'] for record in records]} != {data.ids}")
        elif [record["question"] for record in records] != data.questions:
            problems.append(f"{name}: an id names another row's question")
        elif not all(record.get("origin") for record in records):
            problems.append(f"{name}: a record has no origin")
    assert not problems, "\n".join(problems)
