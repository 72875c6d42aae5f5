"""Reading the first rows of a Hub dataset without downloading all of it.

Used by the real loaders of :mod:`vlm_helpers.data.docvqa` and :mod:`vlm_helpers.data.cauldron`
(full mode of notebooks 01-03). ``load_dataset(id, split="validation[:100]")`` looks
harmless, but ``datasets`` downloads and prepares *every split* of the repository before it
takes the slice: for ``HuggingFaceM4/DocumentVQA`` about 9.6 GB of parquet and 10.7 GB on disk
to score 100 questions. Streaming reads the parquet files of the split one after the other and
stops as soon as it has the rows it needs, so a small sample costs a small download.
"""

from __future__ import annotations

import datasets

__all__ = ["first_rows"]


def _split_size(stream: datasets.IterableDataset, split: str) -> int | None:
    """The split's row count from the dataset card's metadata, when the card has it."""
    splits = getattr(stream.info, "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return getattr(info, "num_examples", None) or None


def first_rows(dataset_id: str, split: str, max_samples: int | None, *, name: str | None = None,
               cache_dir: str | None = None, verbose: bool = True, hub_kwargs: dict | None = None) -> datasets.Dataset:
    """The first ``max_samples`` rows of ``split`` as an ordinary ``Dataset``; all rows when None.

    With a limit the rows are *streamed* (only the files that hold them are read) and
    collected into an in-memory ``Dataset`` with the original features; images stay encoded
    (their bytes are copied, not decoded and re-encoded). The line printed says how many rows
    of the split were read, with the split's size when the dataset card records it. ``hub_kwargs``: what
    ``load_dataset`` gets besides, e.g. ``{"revision": <commit>}`` from :func:`vlm_helpers.revisions.revision_kwargs`
    (the callers pin the series' datasets; README, section "Pinned revisions"). Behind full mode's
    ``docvqa_dataset`` in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents".
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    hub = dict(hub_kwargs or {})
    if max_samples is None:
        return datasets.load_dataset(dataset_id, name, split=split, cache_dir=cache_dir, **hub)
    stream = datasets.load_dataset(dataset_id, name, split=split, streaming=True, cache_dir=cache_dir, **hub)
    features = stream.features
    if features is not None:
        # keep images as {"bytes", "path"}: no decoding while streaming, no re-encoding below
        for column, feature in features.items():
            if isinstance(feature, datasets.Image):
                stream = stream.cast_column(column, datasets.Image(decode=False))
    rows = list(stream.take(max_samples))
    dataset = datasets.Dataset.from_list(rows, features=features)
    if verbose:
        total = _split_size(stream, split)
        where = f"{dataset_id}" + (f" ({name})" if name else "")
        print(f"{where} {split}: read the first {len(dataset):,} rows"
              + (f" of {total:,}" if total else "") + " by streaming")
    return dataset
