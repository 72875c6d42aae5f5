"""Tests for vlm_helpers.data: image conversion, row validation, synthetic DocVQA, loaders."""

from __future__ import annotations

import io
import random
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest
from PIL import Image

from vlm_helpers.tiny import synthetic_docvqa
from vlm_helpers.tiny.synthetic_docvqa import QUESTION_TEMPLATES, make_synthetic_docvqa, sample_document
from vlm_helpers.data.sources import docvqa_dataset
from vlm_helpers.data.docvqa import load_docvqa
from vlm_helpers.supervision import ImageDecodeError, to_rgb
from vlm_helpers.data.validation import DataValidationError, validate_dataset, validate_row

# Written out by hand from the HuggingFaceM4/DocumentVQA dataset card, on purpose
# not imported from the module under test.
REAL_DOCVQA_FEATURES = datasets.Features(
    {
        "questionId": datasets.Value("int32"),
        "question": datasets.Value("string"),
        "question_types": datasets.List(datasets.Value("string")),
        "image": datasets.Image(),
        "docId": datasets.Value("int32"),
        "ucsf_document_id": datasets.Value("string"),
        "ucsf_document_page_no": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
    }
)
DOCVQA_QUESTION_TYPES = {
    "handwritten", "form", "table/list", "layout", "free_text",
    "Image/Photo", "figure/diagram", "Yes/No", "others",
}


@pytest.fixture(scope="module")
def train_rows() -> datasets.Dataset:
    return docvqa_dataset("train", tiny=True, max_samples=200, seed=0)


@pytest.fixture(scope="module")
def validation_rows() -> datasets.Dataset:
    return docvqa_dataset("validation", tiny=True, max_samples=60, seed=0)


def _raw(dataset: datasets.Dataset) -> list[dict]:
    """Rows with undecoded images, so image bytes can be compared."""
    return list(dataset.cast_column("image", datasets.Image(decode=False)))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ to_rgb

def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    if transparent:
        image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (4, 4), 128), (128, 128, 128)),
        (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (Image.new("LA", (4, 4), (50, 255)), (50, 50, 50)),
        (_palette_image(transparent=False), (255, 0, 0)),
        (_palette_image(transparent=True), (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (255, 255, 255, 0)), (255, 255, 255)),
        (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # not black
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
        (Image.new("I;16", (4, 4), 32896), (128, 128, 128)),
        (Image.new("I", (4, 4), 65535), (255, 255, 255)),
        (Image.new("I", (4, 4), 100), (100, 100, 100)),
        (Image.new("F", (4, 4), 1.0), (255, 255, 255)),
        (Image.new("F", (4, 4), 0.5), (128, 128, 128)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("1", (4, 4), 0), (0, 0, 0)),
        (Image.new("RGB", (4, 4), (1, 2, 3)), (1, 2, 3)),
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else None,
)
def test_to_rgb_converts_every_mode(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.size == image.size
    assert rgb.getpixel((0, 0)) == expected


def test_to_rgb_keeps_16_bit_contrast():
    gradient = np.array([[0, 16384, 49152, 65535]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(gradient)))[0, :, 0]
    assert rgb.tolist() == [0, 64, 191, 255]  # scaled, not clipped to 255


def test_to_rgb_accepts_bytes_dict_and_path(tmp_path):
    encoded = _png(_palette_image(transparent=True))
    path = tmp_path / "page.png"
    path.write_bytes(encoded)
    for source in (encoded, {"bytes": encoded, "path": None}, {"bytes": None, "path": str(path)}, str(path), path):
        assert to_rgb(source).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("bad", [b"not a png", b"", {"bytes": None, "path": None}, 12345, "/no/such/file.png"])
def test_to_rgb_raises_decode_error(bad):
    with pytest.raises(ImageDecodeError):
        to_rgb(bad)


def test_to_rgb_raises_on_truncated_png():
    encoded = _png(Image.new("RGB", (64, 64), (10, 200, 30)))
    with pytest.raises(ImageDecodeError):
        to_rgb(encoded[: len(encoded) // 2])


# -------------------------------------------------------------- validation

def _row(**overrides) -> dict:
    row = {
        "questionId": 7,
        "question": "  What is the date?  ",
        "image": Image.new("L", (8, 8), 200),
        "answers": ["03/04/1998"],
    }
    row.update(overrides)
    return row


def test_validate_row_cleans():
    cleaned = validate_row(_row(), split="train", index=0)
    assert cleaned["question"] == "What is the date?"
    assert cleaned["image"].mode == "RGB"
    assert cleaned["answers"] == ["03/04/1998"]


def test_corrupt_image_names_split_and_index():
    with pytest.raises(DataValidationError) as info:
        validate_row(_row(image={"bytes": b"not a png", "path": None}), split="validation", index=17)
    message = str(info.value)
    assert "validation" in message and "17" in message and "questionId=7" in message
    assert "decode" in message
    assert (info.value.split, info.value.index) == ("validation", 17)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"answers": []}, "empty list"),
        ({"answers": None}, "missing"),
        ({"answers": ["ok", "  "]}, "answers[1] is an empty string"),
        ({"answers": [3]}, "must be a string"),
        ({"answers": "a string"}, "answers_may_be_str"),
        ({"question": "   "}, "empty"),
        ({"question": None}, "must be a string"),
        ({"image": None}, "missing"),
        ({"image": Image.new("RGB", (0, 5))}, "zero size"),
    ],
)
def test_validate_row_rejects(overrides, fragment):
    with pytest.raises(DataValidationError, match="row 3") as info:
        validate_row(_row(**overrides), split="test", index=3)
    assert "split='test'" in str(info.value)
    assert fragment in str(info.value)


def test_string_targets_and_custom_keys():
    row = {"img": Image.new("RGB", (4, 4)), "prompt": "Describe the aircraft.", "caption": "A Boeing 747."}
    keys = {"answer_key": "caption", "question_key": "prompt", "image_key": "img", "id_key": None}
    cleaned = validate_row(row, split="train", index=0, answers_may_be_str=True, **keys)
    assert cleaned["caption"] == "A Boeing 747."
    with pytest.raises(DataValidationError):
        validate_row(row, split="train", index=0, **keys)
    with pytest.raises(DataValidationError, match="empty string"):
        validate_row({**row, "caption": " "}, split="train", index=0, answers_may_be_str=True, **keys)
    no_answers = {"image": Image.new("RGB", (4, 4)), "question": "q"}
    assert validate_row(no_answers, split="test", index=0, answer_key=None)["question"] == "q"


def _dataset_with_bad_rows() -> datasets.Dataset:
    good = _png(Image.new("RGB", (8, 8), (255, 255, 255)))
    images = [good, good, good, b"not a png", good, good]
    answers = [["a"], ["b"], [], ["c"], ["d"], ["e"]]
    return datasets.Dataset.from_dict(
        {
            "questionId": list(range(100, 106)),
            "question": ["q?"] * 6,
            "image": [{"bytes": data, "path": None} for data in images],
            "answers": answers,
        },
        features=datasets.Features(
            {
                "questionId": datasets.Value("int32"),
                "question": datasets.Value("string"),
                "image": datasets.Image(),
                "answers": datasets.List(datasets.Value("string")),
            }
        ),
    )


def test_validate_dataset_raises_on_first_bad_row():
    with pytest.raises(DataValidationError) as info:
        validate_dataset(_dataset_with_bad_rows(), split="train")
    assert (info.value.index, info.value.question_id) == (2, 102)
    assert "empty list" in str(info.value)


def test_validate_dataset_stops_before_reading_more_rows():
    def rows():
        yield _row()
        yield _row(answers=[])
        raise AssertionError("validation read past the first bad row")

    with pytest.raises(DataValidationError, match="row 1"):
        validate_dataset(rows(), split="train")


def test_validate_dataset_skip_counts():
    rows, report = validate_dataset(_dataset_with_bad_rows(), split="train", on_bad="skip")
    assert (report.checked, report.kept, report.skipped) == (6, 4, 2)
    assert [row.index for row in report.skipped_rows] == [2, 3]
    assert "empty list" in report.skipped_rows[0].reason and "decode" in report.skipped_rows[1].reason
    assert report.kept_indices == [0, 1, 4, 5]
    assert [row["questionId"] for row in rows] == [100, 101, 104, 105]
    assert all(row["image"].mode == "RGB" for row in rows)
    assert "skipped 2" in str(report)
    assert [row.id for row in report.skipped_rows] == [102, 103] and "row 2 (questionId=102)" in str(report)
    light_rows, light_report = validate_dataset(
        _dataset_with_bad_rows(), split="train", on_bad="skip", return_rows=False
    )
    assert light_rows == [] and light_report.kept_indices == report.kept_indices


def test_synthetic_dataset_passes_validation(validation_rows):
    rows, report = validate_dataset(validation_rows, split="validation")
    assert report.kept == report.checked == len(validation_rows) == len(rows)


# ------------------------------------------------------- synthetic DocVQA

def test_schema_equals_real_docvqa(train_rows):
    assert train_rows.features == REAL_DOCVQA_FEATURES
    assert list(train_rows.column_names) == list(REAL_DOCVQA_FEATURES)
    assert len(train_rows) == 200
    assert isinstance(train_rows[0]["image"], Image.Image)


def test_same_seed_same_bytes_different_seed_differs():
    first = _raw(make_synthetic_docvqa(12, seed=3))
    again = _raw(make_synthetic_docvqa(12, seed=3))
    other = _raw(make_synthetic_docvqa(12, seed=4))
    assert first == again
    assert first != other
    assert {r["image"]["bytes"] for r in first}.isdisjoint(r["image"]["bytes"] for r in other)


def test_rows_look_like_docvqa(train_rows):
    rows = list(train_rows.remove_columns("image"))
    assert all(row["answers"] and all(a.strip() for a in row["answers"]) for row in rows)
    assert any(len(row["answers"]) > 1 for row in rows), "some questions accept several answers"
    assert len({row["questionId"] for row in rows}) == len(rows)
    questions_per_doc = Counter(row["docId"] for row in rows)
    assert max(questions_per_doc.values()) >= 3  # several questions per page
    assert {t for row in rows for t in row["question_types"]} <= DOCVQA_QUESTION_TYPES
    assert all(row["question"].endswith("?") for row in rows)


def test_first_answer_is_printed_on_the_page():
    rng = random.Random(11)
    layouts = set()
    for _ in range(150):
        document = sample_document(rng)
        layouts.add(document.spec.layout)
        printed = "\n".join(document.spec.texts())
        assert printed.isascii(), "the bundled font has ASCII glyphs only"
        for question, answers, _ in document.questions:
            assert answers[0].lower() in printed.lower(), (question, answers)
    assert layouts == {"form", "invoice", "letter"}


def test_train_and_validation_share_distribution_not_pages(train_rows, validation_rows):
    train, validation = _raw(train_rows), _raw(validation_rows)
    for column in ("docId", "questionId", "ucsf_document_id"):
        assert {r[column] for r in train}.isdisjoint(r[column] for r in validation)
    assert {r["image"]["bytes"] for r in train}.isdisjoint(r["image"]["bytes"] for r in validation)
    templates = {t.question for t in QUESTION_TEMPLATES if "{" not in t.question}
    for rows in (train, validation):
        assert len({r["question"] for r in rows} & templates) >= 6


def _anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    def distance(a: str, b: str) -> int:
        previous = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            current = [i]
            for j, cb in enumerate(b, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
            previous = current
        return previous[-1]

    best = 0.0
    for answer in answers:
        p, a = prediction.strip().lower(), answer.strip().lower()
        normalised = distance(p, a) / max(len(p), len(a), 1)
        best = max(best, 1 - normalised if normalised < threshold else 0.0)
    return best


def test_question_alone_gives_partial_credit(train_rows, validation_rows):
    """A model that cannot read at all can still score: answer each question with its commonest training answer."""
    by_question = defaultdict(Counter)
    for row in train_rows.remove_columns("image"):
        by_question[row["question"]][row["answers"][0]] += 1
    scores = []
    for row in validation_rows.remove_columns("image"):
        guesses = by_question.get(row["question"])
        scores.append(_anls(guesses.most_common(1)[0][0], row["answers"]) if guesses else 0.0)
    assert 0.15 < float(np.mean(scores)) < 0.8


# ------------------------------------------------------------------ loaders

class _FakeStream:
    def __init__(self):
        self.taken = None

    def take(self, n):
        self.taken = n
        return self


def test_load_docvqa_reads_a_small_sample_by_streaming(tmp_path):
    """max_samples streams the first rows of one split from a local parquet repository: nothing is
    prepared in the cache (a split slice would download and prepare every split first)."""
    repo, cache = _parquet_repo(tmp_path), tmp_path / "cache"
    rows = load_docvqa("validation", max_samples=5, dataset_id=str(repo), cache_dir=str(cache))
    assert isinstance(rows, datasets.Dataset) and len(rows) == 5
    assert rows.features == REAL_DOCVQA_FEATURES
    assert rows["questionId"] == list(range(100, 105))
    assert isinstance(rows[0]["image"], Image.Image)
    assert not list(cache.rglob("*.arrow")), "streaming must not prepare an Arrow cache of the splits"
    whole = load_docvqa("validation", dataset_id=str(repo), cache_dir=str(cache))
    assert len(whole) == 12 and list(cache.rglob("*.arrow"))  # without a limit: the usual download


def _parquet_repo(tmp_path):
    """A local dataset repository in the Hub's layout: data/<split>-0000i-of-00002.parquet."""
    repo = tmp_path / "DocumentVQA"
    (repo / "data").mkdir(parents=True)
    for split, first_id in (("train", 0), ("validation", 100)):
        rows = make_synthetic_docvqa(12, seed=first_id).map(
            lambda row, i: {"questionId": first_id + i}, with_indices=True)
        for shard in range(2):
            rows.shard(2, shard, contiguous=True).to_parquet(
                str(repo / "data" / f"{split}-{shard:05d}-of-00002.parquet"))
    return repo


def test_load_docvqa_streams_and_takes(monkeypatch):
    stream, calls = _FakeStream(), []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or stream)
    assert load_docvqa("train", max_samples=32, streaming=True, dataset_id="me/docvqa") is stream
    assert stream.taken == 32
    assert calls == [(("me/docvqa",), {"split": "train", "streaming": True, "cache_dir": None})]
    with pytest.raises(ValueError):
        load_docvqa(max_samples=0)


def test_docvqa_dataset_picks_source(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: calls.append((kwargs["split"], kwargs.get("streaming")))
                        or make_synthetic_docvqa(3, seed=1).to_iterable_dataset())
    assert len(docvqa_dataset("train", tiny=False, max_samples=2)) == 2
    assert calls == [("train", True)]
    assert len(docvqa_dataset("train", tiny=True, max_samples=5)) == 5
    assert calls == [("train", True)]  # tiny mode never touches the Hub
    with pytest.raises(ValueError, match="test"):
        docvqa_dataset("test", tiny=True)
    assert synthetic_docvqa.synthetic_split_seed(0, "train") != synthetic_docvqa.synthetic_split_seed(0, "validation")
