"""The Idefics2 article's DocVQA subset (``nielsr/docvqa_1200_examples``, notebook 03): its own
schema turned into DocVQA's columns, with the Hub replaced by a fake ``load_dataset``."""

from __future__ import annotations

import io

import datasets
import pytest
from PIL import Image

from vlm_helpers.data import docvqa
from vlm_helpers.data.docvqa import DOCVQA_1200_ID, docvqa_1200_rows, load_docvqa_1200
from vlm_helpers.data.sources import docvqa_dataset
from vlm_helpers.data.validation import clean_dataset

# Written out by hand from the dataset card of nielsr/docvqa_1200_examples, on purpose not
# imported from the module under test.
SCHEMA_1200 = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "query": {lang: datasets.Value("string") for lang in ("de", "en", "es", "fr", "it")},
    "answers": datasets.List(datasets.Value("string")),
    "words": datasets.List(datasets.Value("string")),
    "bounding_boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
    "answer": {"match_score": datasets.Value("float64"), "matched_text": datasets.Value("string"),
               "start": datasets.Value("int64"), "text": datasets.Value("string")},
})


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), colour).save(buffer, format="PNG")  # DocVQA pages are often greyscale
    return buffer.getvalue()


def fake_1200(n: int, prefix: str = "train") -> datasets.Dataset:
    rows = {
        "id": [f"{prefix}_{i}" for i in range(n)],
        "image": [{"bytes": _png(40 * i), "path": None} for i in range(n)],
        "query": [{"de": f"Frage {i}?", "en": f"What is item {i}?", "es": f"¿{i}?", "fr": f"{i} ?", "it": f"{i}?"}
                  for i in range(n)],
        "answers": [[f"answer {i}", f"ans {i}"] for i in range(n)],
        "words": [["What", "is"] for _ in range(n)],
        "bounding_boxes": [[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]] for _ in range(n)],
        "answer": [{"match_score": 1.0, "matched_text": f"answer {i}", "start": 0, "text": f"answer {i}"}
                   for i in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=SCHEMA_1200)


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``datasets.load_dataset``; record (dataset id, split) of every call."""
    calls = []

    def load_dataset(dataset_id, name=None, *, split, cache_dir=None, streaming=False, **kwargs):
        calls.append((dataset_id, split + (" (streamed)" if streaming else "")))
        assert "[:" not in split, "a split slice makes datasets download every split first"
        rows = fake_1200({"train": 10, "test": 4, "validation": 6}[split], prefix=split)
        return rows.to_iterable_dataset() if streaming else rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_rows_get_docvqa_columns():
    rows = docvqa_1200_rows(fake_1200(3))
    assert rows.column_names == ["questionId", "question", "answers", "image"]
    assert rows["questionId"] == ["train_0", "train_1", "train_2"]
    assert rows["question"] == ["What is item 0?", "What is item 1?", "What is item 2?"]
    assert rows[2]["answers"] == ["answer 2", "ans 2"]
    assert isinstance(rows[1]["image"], Image.Image) and rows[1]["image"].size == (40, 30)
    assert docvqa_1200_rows(fake_1200(1), language="de")["question"] == ["Frage 0?"]


def test_image_bytes_are_passed_through_untouched():
    raw = fake_1200(2)
    rows = docvqa_1200_rows(raw)
    undecoded = datasets.Image(decode=False)
    assert [r["image"]["bytes"] for r in rows.cast_column("image", undecoded)] == \
        [r["image"]["bytes"] for r in raw.cast_column("image", undecoded)]


def test_load_maps_validation_to_the_test_split(fake_hub):
    train = load_docvqa_1200("train")
    validation = load_docvqa_1200("validation", max_samples=3)
    assert fake_hub == [(DOCVQA_1200_ID, "train"), (DOCVQA_1200_ID, "test (streamed)")]
    assert len(train) == 10 and len(validation) == 3
    assert validation[0]["questionId"] == "test_0"
    with pytest.raises(ValueError, match="splits"):
        load_docvqa_1200("test")
    with pytest.raises(ValueError, match="max_samples"):
        load_docvqa_1200("train", max_samples=0)


def test_docvqa_dataset_full_mode_option(fake_hub):
    rows = docvqa_dataset("validation", tiny=False, max_samples=2, dataset_id=DOCVQA_1200_ID)
    assert fake_hub == [(DOCVQA_1200_ID, "test (streamed)")]
    assert rows.column_names == ["questionId", "question", "answers", "image"]
    # the default is still HuggingFaceM4/DocumentVQA, and tiny mode never touches the Hub
    docvqa_dataset("train", tiny=False, max_samples=5)
    assert fake_hub[-1] == (docvqa.DOCVQA_ID, "train (streamed)")
    assert len(docvqa_dataset("train", tiny=True, max_samples=3, dataset_id=DOCVQA_1200_ID)) == 3
    assert len(fake_hub) == 2


def test_rows_pass_validation(fake_hub):
    rows = load_docvqa_1200("train", max_samples=4)
    clean, report = clean_dataset(rows, split="train")
    assert report.kept == 4 and report.skipped == 0 and len(clean) == 4
