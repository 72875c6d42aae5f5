"""The Cauldron: synthetic stand-in with the real schema, flattening to DocVQA-style rows, loaders."""

from __future__ import annotations

import io

import datasets
import pytest
from PIL import Image

from vlm_helpers.data import cauldron
from vlm_helpers.tiny import synthetic_cauldron
from vlm_helpers.data.cauldron import CAULDRON_SUBSETS, check_subsets, flatten_cauldron, load_cauldron, strip_instruction
from vlm_helpers.data.sources import cauldron_dataset
from vlm_helpers.tiny.synthetic_cauldron import make_synthetic_cauldron

# Written out by hand from the HuggingFaceM4/the_cauldron dataset card (every config has
# these two columns), on purpose not imported from the module under test.
REAL_CAULDRON_FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List(
            {"user": datasets.Value("string"), "assistant": datasets.Value("string"),
             "source": datasets.Value("string")}
        ),
    }
)


def _png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _handmade(rows: list[tuple[list[bytes], list[tuple[str, str]]]]) -> datasets.Dataset:
    """A Cauldron-shaped dataset from (images, [(user, assistant), ...]) pairs."""
    return datasets.Dataset.from_dict(
        {"images": [[{"bytes": b, "path": None} for b in images] for images, _ in rows],
         "texts": [[{"user": u, "assistant": a, "source": "handmade"} for u, a in turns] for _, turns in rows]},
        features=REAL_CAULDRON_FEATURES,
    )


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_cauldron(6, subsets=("docvqa", "ai2d", "chartqa"), seed=0)


def test_synthetic_has_exactly_the_real_schema_one_part_per_subset(synthetic):
    assert list(synthetic) == ["docvqa", "ai2d", "chartqa"]
    for name, part in synthetic.items():
        assert part.features == REAL_CAULDRON_FEATURES, name
        assert part.num_rows == 6
        for row in part:
            assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
            assert 3 <= len(row["texts"]) <= 5  # one page, all its questions as turns
            assert all(t["user"].strip() and t["assistant"].strip() and t["source"] for t in row["texts"])


def test_synthetic_is_seeded_and_subsets_differ(synthetic):
    again = make_synthetic_cauldron(6, subsets=("docvqa", "ai2d", "chartqa"), seed=0)
    other = make_synthetic_cauldron(6, subsets=("docvqa",), seed=1)
    assert again["docvqa"]["texts"] == synthetic["docvqa"]["texts"]
    assert other["docvqa"]["texts"] != synthetic["docvqa"]["texts"]
    assert synthetic["docvqa"]["texts"] != synthetic["chartqa"]["texts"]


def test_synthetic_subsets_use_their_own_phrasing(synthetic):
    ai2d_turns = [t for row in synthetic["ai2d"] for t in row["texts"]]
    choice_turns = [t for t in ai2d_turns if "\nChoices:\n" in t["user"]]
    assert choice_turns, "ai2d should ask multiple-choice questions"
    for turn in choice_turns:
        letters = [line[0] for line in turn["user"].split("\n") if line[1:3] == ". "]
        assert turn["user"].endswith("Answer with the letter.")
        assert turn["assistant"].startswith("Answer: ") and turn["assistant"][-1] in letters
    chartqa_turns = [t for row in synthetic["chartqa"] for t in row["texts"]]
    assert all(t["user"].endswith("\nAnswer briefly.") for t in chartqa_turns)


def test_strip_instruction_removes_only_a_trailing_brevity_line():
    assert strip_instruction("What is the date?\nGive a very brief answer.") == "What is the date?"
    assert strip_instruction("What is the date?\nanswer briefly") == "What is the date?"  # case, no full stop
    assert strip_instruction("  Who signed?\nShort answer required.  ") == "Who signed?"
    mc = "Question: Which part?\nChoices:\nA. root\nB. leaf\nAnswer with the letter."
    assert strip_instruction(mc) == mc  # changes what the answer is: kept
    assert strip_instruction("Give a very brief answer.") == "Give a very brief answer."  # nothing left otherwise
    assert strip_instruction("Answer briefly. What is the total?") == "Answer briefly. What is the total?"


def test_flatten_turns_each_turn_into_a_docvqa_style_row(synthetic):
    flat = flatten_cauldron(synthetic)
    turns = sum(len(row["texts"]) for part in synthetic.values() for row in part)
    assert flat.num_rows == turns
    assert flat.features == cauldron.FLAT_FEATURES
    assert {"questionId", "question", "answers", "image"} <= set(flat.column_names)
    assert len(set(flat["questionId"])) == turns
    first_raw = synthetic["docvqa"].cast_column("images", datasets.List(datasets.Image(decode=False)))[0]
    first = flat.cast_column("image", datasets.Image(decode=False))[0]
    assert first["questionId"] == "docvqa/0/0" and first["subset"] == "docvqa" and first["source"] == "DocVQA"
    assert first["image"]["bytes"] == first_raw["images"][0]["bytes"]
    assert first["answers"] == [first_raw["texts"][0]["assistant"]]
    assert first["question"] == strip_instruction(first_raw["texts"][0]["user"])
    questions = flat["question"]
    assert not any(q.endswith(("Give a very brief answer.", "Answer briefly.", "Short answer required."))
                   for q in questions)
    assert any(q.endswith("Answer with the letter.") for q in questions)
    kept = flatten_cauldron(synthetic, strip_instructions=False)
    assert any(q.endswith("\nAnswer briefly.") for q in kept["question"])


def test_flatten_skips_multi_image_and_imageless_rows_unless_asked():
    data = _handmade([
        ([_png((255, 0, 0))], [("Q1?\nGive a very brief answer.", "a1"), ("Q2?", "a2")]),
        ([_png((0, 255, 0)), _png((0, 0, 255))], [("What differs between the images?", "colour")]),
        ([], [("Nothing to see?", "no")]),
    ])
    skipped = flatten_cauldron(data, subset="handmade")
    assert skipped["questionId"] == ["handmade/0/0", "handmade/0/1"]
    assert skipped["question"] == ["Q1?", "Q2?"] and skipped["answers"] == [["a1"], ["a2"]]
    first = flatten_cauldron(data, subset="handmade", multi_image="first")
    assert first["questionId"] == ["handmade/0/0", "handmade/0/1", "handmade/1/0"]
    assert first[2]["image"].getpixel((0, 0)) == (0, 255, 0)  # the first of the two images
    with pytest.raises(ValueError, match="multi_image"):
        flatten_cauldron(data, multi_image="all")
    with pytest.raises(ValueError, match="missing column"):
        flatten_cauldron(datasets.Dataset.from_dict({"question": ["q"]}))


def test_flattened_rows_pass_validation_and_batch_for_florence2(synthetic, tiny_florence2_path):
    from vlm_helpers import florence2
    from vlm_helpers.data.validation import validate_dataset

    flat = flatten_cauldron(synthetic)
    _, report = validate_dataset(flat, split="train", return_rows=False)
    assert report.kept == flat.num_rows and report.skipped == 0
    _, processor = florence2.load_florence2(tiny_florence2_path, dtype="float32")
    batch = florence2.Florence2Collator(processor, answer_choice="random")([flat[i] for i in range(4)])
    assert batch["labels"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4


def test_check_subsets_names_the_problem():
    assert check_subsets(["docvqa", " ai2d "]) == ("docvqa", "ai2d")
    assert len(CAULDRON_SUBSETS) == 50
    with pytest.raises(ValueError, match="unknown Cauldron subset.*docvqa2"):
        check_subsets(["docvqa2"])
    with pytest.raises(ValueError, match="repeat"):
        check_subsets(["docvqa", "docvqa"])
    with pytest.raises(ValueError, match="at least one"):
        check_subsets([])


@pytest.fixture()
def fake_hub(monkeypatch, synthetic):
    """Replace datasets.load_dataset by a recorder that serves synthetic subsets."""
    calls = []

    def fake_load_dataset(path, name=None, *, split=None, cache_dir=None, streaming=False, **kwargs):
        calls.append((path, name, split + (" (streamed)" if streaming else "")))
        assert "[:" not in split, "a split slice makes datasets download every split first"
        part = synthetic[name]
        return part.to_iterable_dataset() if streaming else part

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_load_cauldron_requests_one_config_per_subset(fake_hub):
    loaded = load_cauldron(["docvqa", "chartqa"], max_samples=4)
    assert fake_hub == [("HuggingFaceM4/the_cauldron", "docvqa", "train (streamed)"),
                        ("HuggingFaceM4/the_cauldron", "chartqa", "train (streamed)")]
    assert list(loaded) == ["docvqa", "chartqa"]
    assert all(part.features == REAL_CAULDRON_FEATURES and part.num_rows == 4 for part in loaded.values())
    fake_hub.clear()
    load_cauldron(["ai2d"])
    assert fake_hub == [("HuggingFaceM4/the_cauldron", "ai2d", "train")]
    with pytest.raises(ValueError, match="unknown Cauldron subset"):
        load_cauldron(["not_a_subset"])


def test_cauldron_dataset_full_mode_shares_max_samples_between_subsets(fake_hub):
    flat = cauldron_dataset(["docvqa", "ai2d", "chartqa"], tiny=False, max_samples=10)
    # ceil(10 / 3) = 4 raw rows requested per subset, 4 questions kept per subset, cut to 10
    assert [call[1:] for call in fake_hub] == [("docvqa", "train (streamed)"), ("ai2d", "train (streamed)"),
                                               ("chartqa", "train (streamed)")]
    assert flat.num_rows == 10
    assert flat["subset"] == ["docvqa"] * 4 + ["ai2d"] * 4 + ["chartqa"] * 2


def test_cauldron_dataset_tiny_mode_is_offline_and_sized(monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("tiny mode must not call load_dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    flat = cauldron_dataset(["docvqa", "chartqa"], tiny=True, max_samples=7, seed=3)
    assert flat.num_rows == 7 and set(flat["subset"]) == {"docvqa", "chartqa"}
    default = cauldron_dataset(["docvqa"], tiny=True)
    assert default.num_rows >= 3 * synthetic_cauldron.TINY_ROWS_PER_SUBSET  # 20 pages, 3-5 questions each
