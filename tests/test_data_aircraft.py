"""Tests for vlm_helpers.data.aircraft (notebook 04's data pipeline), all offline.

Hand-computed sizes used below (see ``ROW_CYCLE``: each block of 20 synthetic rows holds
16 target Boeings, 4 per type, then 2 A320s, 1 Cessna 172 and 1 Boeing 747):

- 100 train rows = 5 blocks -> 80 Boeings (20 per type) -> validation = ceil(0.2 * 80) = 16,
  train = 64;
- 25 test rows = 1 block (16) + rows 20-24 (707, 737, 777, 787, A320) -> 20 Boeings;
- 170 train rows = 8 blocks (128) + rows 160-169 (8 Boeings) -> 136 -> 108 / 28, and
  20 test rows -> 16: the article's 108 / 28 / 16.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from vlm_helpers.data import aircraft as A
from vlm_helpers.data import sources
from vlm_helpers.tiny import synthetic_aircraft as S


@pytest.fixture(scope="module")
def raw_train() -> Dataset:
    return S.make_synthetic_fgvc(100, seed=0)


@pytest.fixture(scope="module")
def raw_test() -> Dataset:
    return S.make_synthetic_fgvc(25, seed=1)


def _pixels(ds: Dataset) -> list[np.ndarray]:
    return [np.asarray(img) for img in ds["image"]]


# --- constants and schema ---------------------------------------------------------------


def test_article_constants() -> None:
    assert A.AIRCRAFT_PROMPT == (
        "Generate a concise caption for this image, mentioning specific airplane types"
    )
    assert A.TARGET_TYPES == ("707", "737", "777", "787")
    assert A.FILTER_VALUES == ("boeing 707", "boeing 737", "boeing 777", "boeing 787")
    assert A.TRAIN_DATASET_ID == "Multimodal-Fatima/FGVC_Aircraft_train"
    assert A.TEST_DATASET_ID == "Multimodal-Fatima/FGVC_Aircraft_test"
    assert A.TAGS_COLUMN == "clip_tags_ViT_L_14"
    assert A.ARTICLE_SPLIT_SIZES == {"train": 108, "validation": 28, "test": 16}
    assert len(A.FGVC_VARIANTS) == 100 == len(set(A.FGVC_VARIANTS))
    assert all(look.label in A.FGVC_VARIANTS for look in S.AIRCRAFT_LOOKS.values())
    assert set(S.ROW_CYCLE) == set(S.AIRCRAFT_LOOKS)


def test_synthetic_has_real_schema(raw_train: Dataset) -> None:
    assert raw_train.features == A.fgvc_features()
    assert raw_train.column_names == ["image", "label", "id", "clip_tags_ViT_L_14", "blip_caption"]
    row = raw_train[0]
    assert row["image"].size == (128, 96) and row["image"].mode == "RGB"
    assert isinstance(row["clip_tags_ViT_L_14"], list)
    assert all(isinstance(t, str) and t == t.lower() for t in row["clip_tags_ViT_L_14"])
    assert raw_train["id"] == list(range(100))
    # the label column is a class label over the real FGVC variant names
    assert raw_train.features["label"].int2str(row["label"]) == "707-320"


def test_image_size_is_configurable() -> None:
    ds = S.make_synthetic_fgvc(2, image_size=(64, 48))
    assert ds[0]["image"].size == (64, 48)


# --- the article's filter -----------------------------------------------------------------


def test_filter_is_exact_list_membership() -> None:
    rows = [
        ["tupolev sb", "707", "boeing 707", "douglas dc-8", "boeing 2707"],  # article: kept
        ["boeing 2707", "707"],  # substring of nothing we look for: dropped
        ["Boeing 737", "737"],  # tags are lowercase; the match is case-sensitive: dropped
        ["boeing 737 max"],  # contains "boeing 737" only as a substring: dropped
        ["airbus a320", "boeing 787"],  # any one target tag is enough: kept
        ["boeing 747", "747"],  # a Boeing, but not one of the four: dropped
        [],
    ]
    ds = Dataset.from_dict({"id": list(range(len(rows))), "clip_tags_ViT_L_14": rows})
    assert A.filter_boeing(ds)["id"] == [0, 4]
    assert [A.has_target_tag(r) for r in rows] == [True, False, False, False, True, False, False]


def test_filter_keeps_exactly_the_target_boeings(raw_train: Dataset) -> None:
    kinds = S.synthetic_kinds(100)
    expected = [i for i, k in enumerate(kinds) if k in A.TARGET_TYPES]
    kept = A.filter_boeing(raw_train)
    assert kept["id"] == expected and len(kept) == 80
    assert kept.features == raw_train.features
    for t in A.TARGET_TYPES:  # 20 of each type survive
        assert sum(f"boeing {t}" in tags for tags in kept["clip_tags_ViT_L_14"]) == 20
    dropped = {kinds[i] for i in set(range(100)) - set(expected)}
    assert dropped == {"a320", "cessna172", "747"}


def test_filter_works_on_a_datasetdict(raw_train: Dataset, raw_test: Dataset) -> None:
    out = A.filter_boeing(DatasetDict({"train": raw_train, "test": raw_test}))
    assert A.split_sizes(out) == {"train": 80, "test": 20}


# --- split -------------------------------------------------------------------------------


def test_split_sizes_and_disjointness(raw_train: Dataset, raw_test: Dataset) -> None:
    splits = A.prepare_splits(raw_train, raw_test)
    assert list(splits) == ["train", "validation", "test"]
    assert A.split_sizes(splits) == {"train": 64, "validation": 16, "test": 20}
    train_ids, val_ids = set(splits["train"]["id"]), set(splits["validation"]["id"])
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(A.filter_boeing(raw_train)["id"])
    # test comes from the test repo only, untouched by the split
    assert splits["test"]["id"] == A.filter_boeing(raw_test)["id"]


def test_split_train_val_is_seeded(raw_train: Dataset) -> None:
    kept = A.filter_boeing(raw_train)
    a, b = A.split_train_val(kept), A.split_train_val(kept, seed=42)
    assert a["validation"]["id"] == b["validation"]["id"]
    assert A.split_train_val(kept, seed=0)["validation"]["id"] != a["validation"]["id"]
    assert A.split_sizes(A.split_train_val(kept, test_size=0.25)) == {"train": 60, "validation": 20}


def test_tiny_mode_reproduces_article_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    splits = sources.aircraft_dataset(tiny=True)
    assert A.split_sizes(splits) == A.ARTICLE_SPLIT_SIZES
    assert "train=108, validation=28, test=16" in capsys.readouterr().out


def test_max_samples_caps_every_split(raw_train: Dataset, raw_test: Dataset) -> None:
    splits = A.prepare_splits(raw_train, raw_test, max_samples=10)
    assert A.split_sizes(splits) == {"train": 10, "validation": 10, "test": 10}


# --- target text ---------------------------------------------------------------------------


def test_caption_target(raw_train: Dataset) -> None:
    row = raw_train[0]
    assert A.caption_target(row) == "boeing 707, 707, douglas dc-8, four-engine jet, airliner"
    assert A.caption_target(row, sep=",") == "boeing 707,707,douglas dc-8,four-engine jet,airliner"
    assert A.caption_target({"clip_tags_ViT_L_14": ["tupolev sb", "boeing 707"]}) == (
        "tupolev sb, boeing 707"
    )
    for t, tags in zip(S.synthetic_kinds(4), raw_train.select(range(4))["clip_tags_ViT_L_14"]):
        assert A.caption_target({"clip_tags_ViT_L_14": tags}).startswith(f"boeing {t}, {t}")


# --- determinism ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_prefix_stable(raw_train: Dataset) -> None:
    again = S.make_synthetic_fgvc(12, seed=0)
    for a, b in zip(_pixels(again), _pixels(raw_train.select(range(12)))):
        np.testing.assert_array_equal(a, b)
    assert again["clip_tags_ViT_L_14"] == raw_train.select(range(12))["clip_tags_ViT_L_14"]
    other = S.make_synthetic_fgvc(12, seed=5)
    assert any(not np.array_equal(a, b) for a, b in zip(_pixels(again), _pixels(other)))
    # the kinds (and so the tags and sizes) do not depend on the seed
    assert other["clip_tags_ViT_L_14"] == again["clip_tags_ViT_L_14"]


def test_images_vary_within_a_type(raw_train: Dataset) -> None:
    same_type = raw_train.select([0, 5, 10, 15])  # four 707s
    pix = _pixels(same_type)
    assert all(not np.array_equal(pix[0], p) for p in pix[1:])


# --- the visible traits ----------------------------------------------------------------------


def test_each_type_shows_its_own_colour_and_no_other() -> None:
    """Every target type paints a big region in its fuselage colour; no other target does."""
    colours = {t: np.array(S.AIRCRAFT_LOOKS[t].fuselage, dtype=float) for t in A.TARGET_TYPES}
    means = {}
    for t in A.TARGET_TYPES:
        fractions = {u: [] for u in A.TARGET_TYPES}
        region = []
        for i in range(8):
            img = np.asarray(S.render_aircraft(t, np.random.default_rng([9, i]))).astype(float)
            for u, c in colours.items():
                near = np.linalg.norm(img - c, axis=-1) < 45
                fractions[u].append(near.mean())
                if u == t:
                    region.append(img[near].mean(axis=0))
        assert min(fractions[t]) > 0.03, (t, fractions[t])
        assert all(max(fractions[u]) < 0.005 for u in A.TARGET_TYPES if u != t), (t, fractions)
        means[t] = np.mean(region, axis=0)
    # the mean colour of the fuselage regions differs clearly between every pair of types
    for i, t in enumerate(A.TARGET_TYPES):
        for u in A.TARGET_TYPES[i + 1 :]:
            assert np.linalg.norm(means[t] - means[u]) > 80, (t, u)


def test_engine_traits_are_distinct() -> None:
    looks = S.AIRCRAFT_LOOKS
    assert looks["707"].engines_per_wing == 2
    assert all(looks[t].engines_per_wing == 1 for t in ("737", "777", "787"))
    assert looks["777"].pod_radius > looks["787"].pod_radius > looks["737"].pod_radius
    assert looks["787"].wingtip == "raked" and looks["737"].wingtip == "winglet"


# --- full-mode loader, with the Hub replaced by synthetic data ----------------------------


def test_load_fgvc_aircraft_requests_the_article_datasets(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raw_train: Dataset,
    raw_test: Dataset,
) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split=None, cache_dir=None, **kwargs):
        calls.append((path, split, cache_dir))
        return {A.TRAIN_DATASET_ID: raw_train, A.TEST_DATASET_ID: raw_test}[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = A.load_fgvc_aircraft(cache_dir="/tmp/hf-cache")
    assert calls == [
        ("Multimodal-Fatima/FGVC_Aircraft_train", "train", "/tmp/hf-cache"),
        ("Multimodal-Fatima/FGVC_Aircraft_test", "test", "/tmp/hf-cache"),
    ]
    assert isinstance(splits, DatasetDict)
    assert A.split_sizes(splits) == {"train": 64, "validation": 16, "test": 20}
    assert "train=64, validation=16, test=20" in capsys.readouterr().out

    # aircraft_dataset(tiny=False) takes exactly the same path
    calls.clear()
    full = sources.aircraft_dataset(tiny=False, max_samples=5, verbose=False)
    assert [c[0] for c in calls] == [A.TRAIN_DATASET_ID, A.TEST_DATASET_ID]
    assert A.split_sizes(full) == {"train": 5, "validation": 5, "test": 5}
    assert capsys.readouterr().out == ""


def test_import_is_light() -> None:
    code = (
        "import sys, vlm_helpers.data.aircraft as a; "
        "print(sorted(m for m in ('torch', 'datasets', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- caption and prompt columns for the chat collator -------------------------------------


def test_with_captions_adds_target_and_prompt(raw_train: Dataset, raw_test: Dataset) -> None:
    from vlm_helpers.data.validation import DataValidationError, clean_dataset

    splits = A.with_captions(A.prepare_splits(raw_train, raw_test))
    assert isinstance(splits, DatasetDict) and list(splits) == ["train", "validation", "test"]
    assert A.split_sizes(splits) == {"train": 64, "validation": 16, "test": 20}
    for ds in splits.values():
        assert ds.column_names[-2:] == [A.CAPTION_COLUMN, A.PROMPT_COLUMN]
        assert ds[A.CAPTION_COLUMN] == [", ".join(tags) for tags in ds[A.TAGS_COLUMN]]
        assert set(ds[A.PROMPT_COLUMN]) == {A.AIRCRAFT_PROMPT}
    row = splits["train"][0]
    assert row[A.CAPTION_COLUMN] == A.caption_target(row)

    # The rows pass the series' validation with the captioning column names.
    columns = {"question_key": A.PROMPT_COLUMN, "answer_key": A.CAPTION_COLUMN, "answers_may_be_str": True,
               "id_key": "id"}
    clean, report = clean_dataset(splits["test"], split="test", **columns)
    assert (report.kept, report.skipped) == (20, 0) and len(clean) == 20

    # A second call replaces the columns; prompt and separator can be changed.
    again = A.with_captions(splits["test"], prompt="Tags?", sep=",")
    assert again.column_names.count(A.CAPTION_COLUMN) == 1
    assert again[0][A.CAPTION_COLUMN] == ",".join(again[0][A.TAGS_COLUMN]) and again[0][A.PROMPT_COLUMN] == "Tags?"
    with pytest.raises(ValueError, match="prompt"):
        A.with_captions(splits["test"], prompt=" ")

    # A row without tags gets an empty caption, which validation refuses, naming the row.
    untagged = A.with_captions(raw_test.select(range(3)).map(
        lambda r, i: {A.TAGS_COLUMN: [] if i == 1 else r[A.TAGS_COLUMN]}, with_indices=True))
    with pytest.raises(DataValidationError, match=r"row 1.*'caption' is an empty string"):
        clean_dataset(untagged, split="test", **columns)
