"""FGVC-Aircraft captioning data for ``notebooks/04_phi3_aircraft_captioning.ipynb``.

The lesson follows the Phi-3-vision captioning article: caption airplane photos with
their types, using the CLIP tags that ship with the ``Multimodal-Fatima`` copy of
FGVC-Aircraft as the target text. The pipeline, step by step:

1. **Load** ``Multimodal-Fatima/FGVC_Aircraft_train`` (split ``train``) and
   ``Multimodal-Fatima/FGVC_Aircraft_test`` (split ``test``). The two are never
   concatenated.
2. **Filter** each one separately to rows whose ``clip_tags_ViT_L_14`` list contains
   one of ``"boeing 707"``, ``"boeing 737"``, ``"boeing 777"``, ``"boeing 787"``
   (:func:`filter_boeing`). As in the article this is *list membership*: a tag must be
   exactly one of those strings (lowercase, as the tags are stored), so ``"boeing 2707"``
   or ``"Boeing 737"`` do not count, while a row tagged
   ``["tupolev sb", "707", "boeing 707", ...]`` is kept with all its tags.
3. **Split** the filtered *train* repo 80/20 with ``seed=42`` into ``train`` and
   ``validation`` (:func:`split_train_val`, ``Dataset.train_test_split``: the
   validation part gets ``ceil(0.2 * n)`` rows).
4. **Test** = the filtered *test* repo, untouched.
5. **Target** text = the row's tags joined by commas (:func:`caption_target`), asked for
   with :data:`AIRCRAFT_PROMPT`. :func:`with_captions` stores both as columns (``caption``,
   ``prompt``), the form the chat collator and the row validation read.

The article reports 108 / 28 / 16 rows (train / validation / test), i.e. 136 filtered
train rows and 16 filtered test rows (:data:`ARTICLE_SPLIT_SIZES`).

Offline (tests, CI, ``VLM_TINY=1``) the same pipeline runs on
:func:`vlm_helpers.tiny.synthetic_aircraft.make_synthetic_fgvc`: rendered side views of airliners
with the real column schema, whose visible traits (fuselage and tail colour, engine count and
size, wingtips) determine their tags. :func:`vlm_helpers.data.sources.aircraft_dataset` picks real
or synthetic data and returns the same ``DatasetDict`` either way. With its defaults the tiny mode even reproduces the
article's split sizes exactly (170 + 20 synthetic rows -> 108 / 28 / 16).

Importing this module loads neither ``datasets`` nor Pillow; both are imported on use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset, DatasetDict, Features

# --------------------------------------------------------------------------------------
# Constants from the article
# --------------------------------------------------------------------------------------

#: Hub ids of the two FGVC-Aircraft copies the article uses (train repo, test repo).
TRAIN_DATASET_ID = "Multimodal-Fatima/FGVC_Aircraft_train"
TEST_DATASET_ID = "Multimodal-Fatima/FGVC_Aircraft_test"

#: The instruction the model is fine-tuned (and evaluated) with.
AIRCRAFT_PROMPT = "Generate a concise caption for this image, mentioning specific airplane types"

#: The four Boeing families the lesson keeps.
TARGET_TYPES: tuple[str, ...] = ("707", "737", "777", "787")

#: The exact tag strings the article's filter looks for (``"boeing 707"``, ...).
FILTER_VALUES: tuple[str, ...] = tuple(f"boeing {t}" for t in TARGET_TYPES)

#: Column holding the CLIP ViT-L/14 tags: a list of lowercase strings per image.
TAGS_COLUMN = "clip_tags_ViT_L_14"
IMAGE_COLUMN = "image"

#: Columns added by :func:`with_captions`: the target text and the instruction.
CAPTION_COLUMN = "caption"
PROMPT_COLUMN = "prompt"

#: Separator used by :func:`caption_target`. The article joins with a bare ``","``;
#: ``", "`` reads better and ROUGE tokenisation ignores the difference.
TAG_SEPARATOR = ", "

#: Split sizes printed in the article for the real data (seed 42, 80/20 split).
ARTICLE_SPLIT_SIZES: dict[str, int] = {"train": 108, "validation": 28, "test": 16}

#: Class names of the ``label`` column: the 100 FGVC-Aircraft variants, ASCII-sorted as
#: in FGVC's ``variants.txt`` (that the Hub copy keeps this index order is not verified
#: offline; nothing here depends on it). FGVC-Aircraft has no 787 variant: in the real data
#: the ``"boeing 787"`` tag is CLIP's zero-shot guess on photos of other airliners.
FGVC_VARIANTS: tuple[str, ...] = (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600",
    "737-700", "737-800", "737-900", "747-100", "747-200", "747-300", "747-400",
    "757-200", "757-300", "767-200", "767-300", "767-400", "777-200", "777-300",
    "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300",
    "A340-200", "A340-300", "A340-500", "A340-600", "A380", "ATR-42", "ATR-72",
    "An-12", "BAE 146-200", "BAE 146-300", "BAE-125", "Beechcraft 1900", "Boeing 717",
    "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208",
    "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8",
    "DC-9-30", "DH-82", "DHC-1", "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400",
    "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135", "ERJ 145",
    "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000",
    "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70", "Global Express",
    "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76", "L-1011", "MD-11", "MD-80",
    "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000",
    "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
)


def fgvc_features() -> Features:
    """The column schema of the ``Multimodal-Fatima`` FGVC-Aircraft datasets we rely on.

    ``image`` and ``clip_tags_ViT_L_14`` (a list of strings) are the two columns the
    article uses. ``label`` (class label over :data:`FGVC_VARIANTS`), ``id`` (int64) and
    ``blip_caption`` (string) are further columns of the real repos; the real data has
    more generated columns (other CLIP tag sets, LLM descriptions, attributes) that this
    lesson never reads, so the synthetic copy leaves them out. The columns are introduced in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and their tags".
    """
    import datasets

    return datasets.Features(
        {
            IMAGE_COLUMN: datasets.Image(),
            "label": datasets.ClassLabel(names=list(FGVC_VARIANTS)),
            "id": datasets.Value("int64"),
            TAGS_COLUMN: datasets.List(datasets.Value("string")),
            "blip_caption": datasets.Value("string"),
        }
    )


# --------------------------------------------------------------------------------------
# The article's pipeline, as pure functions
# --------------------------------------------------------------------------------------


def has_target_tag(tags: Sequence[str], values: Sequence[str] = FILTER_VALUES) -> bool:
    """True if any of ``values`` is one of ``tags`` (exact, case-sensitive list membership).

    The test of ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and
    their tags" (``"boeing 2707"`` is not a 707).
    """
    return any(value in tags for value in values)


def filter_boeing(
    ds: Dataset, *, values: Sequence[str] = FILTER_VALUES, column: str = TAGS_COLUMN
) -> Dataset:
    """Keep the rows whose ``column`` tag list contains one of ``values`` (the article's filter).

    Only the tag column is handed to the predicate, so images are not decoded while
    filtering. Works on a ``DatasetDict`` too (each split is filtered). Taught in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and their tags".
    """
    values = tuple(values)
    return ds.filter(has_target_tag, input_columns=column, fn_kwargs={"values": values})


def caption_target(row: Mapping[str, Any], *, sep: str = TAG_SEPARATOR) -> str:
    """The caption the model learns to produce: the row's CLIP tags joined by ``sep``.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and
    their tags".
    """
    return sep.join(row[TAGS_COLUMN])


def with_captions(ds, *, prompt: str = AIRCRAFT_PROMPT, sep: str = TAG_SEPARATOR):
    """Add the two text columns a chat collator reads: ``caption`` and ``prompt``.

    ``caption`` is :func:`caption_target` of each row (the tags joined by ``sep``), the text
    the model learns and is scored against; ``prompt`` is the instruction, the same for every
    row. With them a row is a (prompt, image, caption) triple that
    :func:`vlm_helpers.data.validation.clean_dataset` can check
    (``question_key=PROMPT_COLUMN, answer_key=CAPTION_COLUMN, answers_may_be_str=True``).
    Only the tag column is read, so images are not decoded. Existing columns of these names
    are replaced. Works on a ``Dataset`` or on each split of a ``DatasetDict``. Taught in
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and their tags".
    """
    if isinstance(ds, Mapping):  # DatasetDict
        return type(ds)({name: with_captions(split, prompt=prompt, sep=sep) for name, split in ds.items()})
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    captions = [sep.join(tags) for tags in ds[TAGS_COLUMN]]
    ds = ds.remove_columns([c for c in (CAPTION_COLUMN, PROMPT_COLUMN) if c in ds.column_names])
    return ds.add_column(CAPTION_COLUMN, captions).add_column(PROMPT_COLUMN, [prompt] * len(captions))


def split_train_val(ds: Dataset, test_size: float = 0.2, seed: int = 42) -> DatasetDict:
    """Shuffle and split ``ds`` into ``train`` and ``validation`` (``ceil(test_size * n)`` rows).

    The 80/20 split of ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft
    photos and their tags".
    """
    from datasets import DatasetDict

    parts = ds.train_test_split(test_size=test_size, seed=seed)
    return DatasetDict({"train": parts["train"], "validation": parts["test"]})


def split_sizes(splits: Mapping[str, Any]) -> dict[str, int]:
    """``{"train": n, "validation": n, "test": n}`` for a ``DatasetDict``.

    Compared with the article's sizes in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data:
    FGVC-Aircraft photos and their tags".
    """
    return {name: len(split) for name, split in splits.items()}


def prepare_splits(
    raw_train: Dataset,
    raw_test: Dataset,
    *,
    test_size: float = 0.2,
    seed: int = 42,
    max_samples: int | None = None,
) -> DatasetDict:
    """Filter both raw datasets, split the train one 80/20, keep the test one as ``test``.

    ``max_samples`` (if given) caps every resulting split *after* filtering and
    splitting, by taking its first rows (for quick runs; the default keeps everything).
    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and
    their tags".
    """
    from datasets import DatasetDict

    splits = split_train_val(filter_boeing(raw_train), test_size=test_size, seed=seed)
    splits["test"] = filter_boeing(raw_test)
    if max_samples is not None:
        splits = DatasetDict(
            {name: ds.select(range(min(max_samples, len(ds)))) for name, ds in splits.items()}
        )
    return splits


def report_splits(splits: Mapping[str, Any], source: str) -> None:
    """Print the split sizes, e.g. ``train=108, validation=28, test=16``, naming the ``source`` (Hub or synthetic).

    The line printed in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft
    photos and their tags".
    """
    sizes = ", ".join(f"{name}={n}" for name, n in split_sizes(splits).items())
    print(f"FGVC-Aircraft Boeing 707/737/777/787 ({source}): {sizes}")


def load_fgvc_aircraft(
    *,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    seed: int = 42,
    verbose: bool = True,
    train_revision: str | None = None,
    test_revision: str | None = None,
) -> DatasetDict:
    """Full mode: download both Hub repos and run :func:`prepare_splits` on them.

    Returns a ``DatasetDict`` with ``train`` / ``validation`` / ``test`` and prints
    their sizes (108 / 28 / 16 in the article). ``train_revision`` / ``test_revision``: the commits to read;
    None reads each repository at its pinned commit (:func:`vlm_helpers.revisions.hub_revision`; README,
    section "Pinned revisions"). Full mode of ``notebooks/04_phi3_aircraft_captioning.ipynb``,
    section "The data: FGVC-Aircraft photos and their tags".
    """
    import datasets

    from vlm_helpers.revisions import revision_kwargs

    raw_train = datasets.load_dataset(TRAIN_DATASET_ID, split="train", cache_dir=cache_dir,
                                      **revision_kwargs(TRAIN_DATASET_ID, train_revision))
    raw_test = datasets.load_dataset(TEST_DATASET_ID, split="test", cache_dir=cache_dir,
                                     **revision_kwargs(TEST_DATASET_ID, test_revision))
    splits = prepare_splits(raw_train, raw_test, seed=seed, max_samples=max_samples)
    if verbose:
        report_splits(splits, "Hub")
    return splits


__all__ = [
    "AIRCRAFT_PROMPT",
    "ARTICLE_SPLIT_SIZES",
    "CAPTION_COLUMN",
    "FGVC_VARIANTS",
    "FILTER_VALUES",
    "IMAGE_COLUMN",
    "PROMPT_COLUMN",
    "TAGS_COLUMN",
    "TAG_SEPARATOR",
    "TARGET_TYPES",
    "TEST_DATASET_ID",
    "TRAIN_DATASET_ID",
    "caption_target",
    "fgvc_features",
    "filter_boeing",
    "has_target_tag",
    "load_fgvc_aircraft",
    "prepare_splits",
    "report_splits",
    "split_sizes",
    "split_train_val",
    "with_captions",
]
