"""The Cauldron: many vision-language datasets in one chat format, turned into DocVQA-style rows.

Used by the command line (``vlm-train --dataset cauldron``, see :mod:`vlm_helpers.cli`),
following the florence2-finetuning repository, which trains Florence-2 on DocVQA *or*
on The Cauldron (``HuggingFaceM4/the_cauldron``).

The real data. The Cauldron has one config per source dataset (``"docvqa"``, ``"ai2d"``,
``"chartqa"``, ... 50 in all, :data:`CAULDRON_SUBSETS`), each with a single ``train``
split and the same two columns (:data:`CAULDRON_FEATURES`):

* ``images``: a *list* of images (most subsets have exactly one per row; a few, such as
  ``nlvr2``, ``spot_the_diff`` or ``mimic_cgd``, have two or more);
* ``texts``: a list of turns ``{"user": str, "assistant": str, "source": str}``, all
  about the same image(s): the DocVQA subset groups every question about one page in one row.

What this module does with it:

1. :func:`load_cauldron` calls ``datasets.load_dataset`` once per subset config and
   returns a ``DatasetDict`` keyed by *subset name* (not by split), each part with the
   real schema untouched.
2. :func:`flatten_cauldron` turns every turn into one DocVQA-style row: ``questionId``
   (a string ``"<subset>/<row>/<turn>"``), ``question`` (the user text), ``answers``
   (``[assistant text]``), ``image`` (the row's image), plus ``subset`` and ``source``.
   Everything downstream (validation, :class:`~vlm_helpers.florence2.Florence2Collator`,
   evaluation) then works unchanged.

   * **Rows with several images are skipped** by default (``multi_image="skip"``):
     Florence-2 reads one image, and the questions of such rows ("what differs between
     the two pictures?") cannot be answered from the first image alone. Pass
     ``multi_image="first"`` to keep them with their first image anyway. Rows without
     any image are always skipped. The counts are logged.
   * **Brevity instructions are stripped** (``strip_instructions=True``): a last line
     such as ``"Give a very brief answer."`` or ``"Answer briefly."``
     (:data:`BREVITY_INSTRUCTIONS`, matched case-insensitively) is removed, because
     DocVQA's own questions (which we evaluate on) carry no such line and Florence-2's
     ``<DocVQA>`` task token already asks for a short answer. Instructions that change
     *what* the answer is, such as ``"Answer with the letter."`` after multiple-choice
     options, are kept. The phrase list was written from the style of instruction data
     of that era; it could not be checked against the real Cauldron here (no Hub
     access), and a suffix missing from the list is simply kept, which is harmless.
   * Answers are kept verbatim (only surrounding whitespace is removed).

Offline (tests, ``--tiny``) :func:`vlm_helpers.tiny.synthetic_cauldron.make_synthetic_cauldron`
builds the same structure, with exactly the real columns, from the synthetic DocVQA pages and
questions; :func:`vlm_helpers.data.sources.cauldron_dataset` picks real or synthetic data and
returns flattened rows either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import datasets
from datasets import Features, Image, List, Value

from vlm_helpers.data.hub import first_rows
from vlm_helpers.revisions import revision_kwargs

__all__ = [
    "BREVITY_INSTRUCTIONS",
    "CAULDRON_DATASET_ID",
    "CAULDRON_FEATURES",
    "CAULDRON_SUBSETS",
    "DEFAULT_SUBSETS",
    "FLAT_FEATURES",
    "check_subsets",
    "flatten_cauldron",
    "load_cauldron",
    "strip_instruction",
]

logger = logging.getLogger(__name__)

CAULDRON_DATASET_ID = "HuggingFaceM4/the_cauldron"

#: The subsets the command line uses unless told otherwise: the document-style ones.
DEFAULT_SUBSETS: tuple[str, ...] = ("docvqa", "ai2d", "chartqa")

#: Every config of ``HuggingFaceM4/the_cauldron`` (its dataset viewer lists these 50).
CAULDRON_SUBSETS: tuple[str, ...] = (
    "ai2d", "aokvqa", "chart2text", "chartqa", "clevr", "clevr_math", "cocoqa", "datikz",
    "diagram_image_to_text", "docvqa", "dvqa", "figureqa", "finqa", "geomverse", "hateful_memes",
    "hitab", "iam", "iconqa", "infographic_vqa", "intergps", "localized_narratives", "mapqa",
    "mimic_cgd", "multihiertt", "nlvr2", "ocrvqa", "okvqa", "plotqa", "raven", "rendered_text",
    "robut_sqa", "robut_wikisql", "robut_wtq", "scienceqa", "screen2words", "spot_the_diff",
    "st_vqa", "tabmwp", "tallyqa", "tat_qa", "textcaps", "textvqa", "tqa", "vistext", "visual7w",
    "visualmrc", "vqarad", "vqav2", "vsr", "websight",
)

#: Columns and types of every Cauldron config (from the dataset card).
CAULDRON_FEATURES = Features(
    {
        "images": List(Image()),
        "texts": List({"user": Value("string"), "assistant": Value("string"), "source": Value("string")}),
    }
)

#: Columns of :func:`flatten_cauldron`'s output: DocVQA's names for what the collator reads.
FLAT_FEATURES = Features(
    {
        "questionId": Value("string"),
        "question": Value("string"),
        "answers": List(Value("string")),
        "image": Image(),
        "subset": Value("string"),
        "source": Value("string"),
    }
)

#: Trailing lines that only ask for brevity; :func:`strip_instruction` removes them.
BREVITY_INSTRUCTIONS: tuple[str, ...] = (
    "Give a very brief answer.",
    "Answer briefly.",
    "Short answer required.",
    "Concise answer only.",
    "Keep it brief.",
    "Be succinct.",
    "Write a very short answer.",
    "Provide a short answer.",
    "Provide a succinct answer.",
    "Make the answer very short.",
    "Answer the question using a single word or phrase.",
    "Answer with a brief word or phrase.",
)
_BREVITY = {phrase.lower().rstrip(".") for phrase in BREVITY_INSTRUCTIONS}


def strip_instruction(user_text: str) -> str:
    """Remove a trailing brevity instruction line (:data:`BREVITY_INSTRUCTIONS`), if any.

    Only a whole last line is removed, and only when something is left before it::

        >>> strip_instruction("What is the date?\\nGive a very brief answer.")
        'What is the date?'
        >>> strip_instruction("Which part?\\nA. root\\nB. leaf\\nAnswer with the letter.")
        'Which part?\\nA. root\\nB. leaf\\nAnswer with the letter.'

    Part of ``vlm-train --dataset cauldron`` (README, section "Scaling out: from one GPU to several machines").
    """
    text = user_text.strip()
    head, sep, last = text.rpartition("\n")
    if sep and head.strip() and last.strip().lower().rstrip(".") in _BREVITY:
        return head.rstrip()
    return text


def check_subsets(subsets: Iterable[str]) -> tuple[str, ...]:
    """Return ``subsets`` as a tuple, or raise ``ValueError`` naming unknown or repeated names.

    Checks ``vlm-train --dataset cauldron``'s subsets (README, section "Scaling out: from one GPU to several
    machines").
    """
    subsets = tuple(s.strip() for s in subsets)
    if not subsets or any(not s for s in subsets):
        raise ValueError(f"give at least one Cauldron subset (empty names are not allowed), got {subsets!r}")
    unknown = [s for s in subsets if s not in CAULDRON_SUBSETS]
    if unknown:
        raise ValueError(f"unknown Cauldron subset(s) {unknown}; the configs are: {', '.join(CAULDRON_SUBSETS)}")
    if len(set(subsets)) != len(subsets):
        raise ValueError(f"Cauldron subsets repeat a name: {subsets!r}")
    return subsets


# ------------------------------------------------------------------ real data


def load_cauldron(
    subsets: Sequence[str] = DEFAULT_SUBSETS,
    *,
    split: str = "train",
    max_samples: int | None = None,
    dataset_id: str = CAULDRON_DATASET_ID,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> datasets.DatasetDict:
    """Load Cauldron subsets from the Hub (needs internet): one ``load_dataset`` call per config.

    Returns a ``DatasetDict`` keyed by subset name, each with the real columns
    (:data:`CAULDRON_FEATURES`). ``max_samples`` keeps the first rows *of each subset*
    (raw rows, i.e. images; each usually carries several questions), read by streaming
    (:func:`vlm_helpers.data.hub.first_rows`) so that only the files holding them are
    downloaded. Every config has only a ``train`` split. ``revision``: the commit to read; None reads The
    Cauldron at its pinned commit (README, section "Pinned revisions"). Used by ``vlm-train --dataset
    cauldron`` (README, section "Scaling out: from one GPU to several machines").
    """
    subsets = check_subsets(subsets)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    hub_kwargs = revision_kwargs(dataset_id, revision)  # {"revision": <pin>} for a Hub id, {} for a folder
    return datasets.DatasetDict(
        {name: first_rows(dataset_id, split, max_samples, name=name, cache_dir=cache_dir, hub_kwargs=hub_kwargs)
         for name in subsets}
    )


def flatten_cauldron(
    data: datasets.Dataset | Mapping[str, datasets.Dataset],
    *,
    subset: str | None = None,
    multi_image: str = "skip",
    strip_instructions: bool = True,
) -> datasets.Dataset:
    """One DocVQA-style row per (user, assistant) turn; see the module docstring for the rules.

    ``data`` is one subset's ``Dataset`` (name it with ``subset``) or a mapping
    ``{subset: Dataset}`` such as :func:`load_cauldron` returns; parts are flattened in
    order and concatenated. Output columns: :data:`FLAT_FEATURES`. Used by ``vlm-train --dataset cauldron``
    (README, section "Scaling out: from one GPU to several machines").
    """
    if multi_image not in ("skip", "first"):
        raise ValueError(f"multi_image must be 'skip' or 'first', got {multi_image!r}")
    if isinstance(data, Mapping):
        parts = [flatten_cauldron(part, subset=name, multi_image=multi_image, strip_instructions=strip_instructions)
                 for name, part in data.items()]
        if not parts:
            return datasets.Dataset.from_dict({name: [] for name in FLAT_FEATURES}, features=FLAT_FEATURES)
        return datasets.concatenate_datasets(parts)

    missing = {"images", "texts"} - set(data.column_names)
    if missing:
        raise ValueError(f"not Cauldron-shaped: missing column(s) {sorted(missing)} (have {data.column_names})")
    name = subset or "cauldron"
    # Read images undecoded: we only move their bytes, so decoding would waste time.
    if isinstance(data.features["images"], List) and isinstance(data.features["images"].feature, Image):
        data = data.cast_column("images", List(Image(decode=False)))
    counts = {"rows": 0, "multi_image": 0, "no_image": 0, "turns": 0}

    def explode(batch: dict, indices: list[int]) -> dict:
        out: dict[str, list] = {column: [] for column in FLAT_FEATURES}
        for index, images, texts in zip(indices, batch["images"], batch["texts"]):
            counts["rows"] += 1
            images = list(images or [])
            if not images:
                counts["no_image"] += 1
                continue
            if len(images) > 1:
                counts["multi_image"] += 1
                if multi_image == "skip":
                    continue
            for turn, text in enumerate(texts or []):
                user = text.get("user") or ""
                out["questionId"].append(f"{name}/{index}/{turn}")
                out["question"].append(strip_instruction(user) if strip_instructions else user.strip())
                out["answers"].append([(text.get("assistant") or "").strip()])
                out["image"].append(images[0])
                out["subset"].append(name)
                out["source"].append(text.get("source") or name)
                counts["turns"] += 1
        return out

    flat = data.map(explode, batched=True, with_indices=True, remove_columns=data.column_names,
                    features=Features({**FLAT_FEATURES, "image": Image(decode=False)}),
                    desc=f"flattening {name}")
    flat = flat.cast_column("image", Image())
    if counts["rows"]:  # the map ran in this process (not served from a cache)
        skipped = counts["no_image"] + (counts["multi_image"] if multi_image == "skip" else 0)
        logger.info("Cauldron %s: %d rows -> %d questions; skipped %d rows (%d without image, %d multi-image%s)",
                    name, counts["rows"], counts["turns"], skipped, counts["no_image"], counts["multi_image"],
                    "" if multi_image == "skip" else ", kept with their first image")
    return flat
