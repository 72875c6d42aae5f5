"""Pinned revisions: the commit each default Hub checkpoint and dataset is loaded at in full mode.

A Hub repository's ``main`` branch moves: a new chat template, a processor change or a renamed file changes a
notebook's results, or breaks it, without any change here. So every loader of the series loads a default id at
the commit recorded in ``vlm_helpers/tiny/real_configs/revisions.json``, next to the vendored configurations
(each hash read from a stored copy of a Hub page; the page is named there), unless it is given another revision.
The rule, in :func:`hub_revision`:

- a local folder (tiny mode, a saved adapter, your own copy) gets no revision;
- a ``revision`` you pass wins (``"main"`` for the newest files, at your own risk, or a commit hash);
- otherwise a default id gets its pin, and any other id (your own data or model) is loaded unpinned.

One line per repository and revision says which (``... at revision <hash> (pinned)``, or ``... unpinned``), once
per process. The README, section "Pinned revisions", lists the pins and how to change one.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

__all__ = ["REVISIONS_FILE", "hub_revision", "pinned_revision", "pinned_revisions", "revision_kwargs"]

#: The table of pins (id -> revision, kind, source page, date), beside the vendored configurations.
REVISIONS_FILE = Path(__file__).resolve().parent / "tiny" / "real_configs" / "revisions.json"

_SAID: set[tuple[str, str | None]] = set()  # (repository, revision) already announced in this process


@functools.cache
def pinned_revisions() -> dict[str, dict]:
    """The table: Hub id -> its entry (``kind``, ``revision``, ``source``, ``page_date``, ``read``, ``checked``).

    ``revision`` is a 40-character commit hash, or None where no stored Hub page showed a commit of the
    repository (it is then loaded unpinned). README, section "Pinned revisions".
    """
    table = json.loads(REVISIONS_FILE.read_text(encoding="utf-8"))
    return {repo_id: entry for repo_id, entry in table.items() if not repo_id.startswith("_")}


def pinned_revision(repo_id: str) -> str | None:
    """The commit the series loads ``repo_id`` at, or None (not a default id, or no commit of it was found).

    Shown in the parameters cell of ``notebooks/02_florence2_docvqa.ipynb``, section "Parameters"; README,
    section "Pinned revisions".
    """
    entry = pinned_revisions().get(str(repo_id))
    return entry["revision"] if entry else None


def _is_local(source: str | os.PathLike) -> bool:
    return isinstance(source, os.PathLike) or os.path.exists(os.fspath(source))


def hub_revision(source: str | os.PathLike, revision: str | None = None) -> str | None:
    """The revision to load ``source`` at: None for a local folder or file; ``revision`` when given; else the
    pinned one of a default id; else None (unpinned: the repository's newest files).

    The first time a Hub id is loaded at a revision in this process, one line says which: ``<id> at revision
    <hash> (pinned)``, ``(yours)`` for one you chose, or ``<id>: unpinned, ...``. Local folders print nothing
    (tiny mode stays quiet). Used by every loader (``florence2.load_florence2``, ``lora.load_chat_vlm``, the
    dataset loaders of ``vlm_helpers.data``); README, section "Pinned revisions".
    """
    if _is_local(source):
        return None
    repo_id = os.fspath(source)
    pin = pinned_revision(repo_id)
    chosen = revision if revision is not None else pin
    if (repo_id, chosen) not in _SAID:
        _SAID.add((repo_id, chosen))
        if chosen is None:
            print(f"{repo_id}: unpinned, its newest files are loaded (pass revision=<commit hash> to pin it)")
        else:
            print(f"{repo_id} at revision {chosen} ({'pinned' if chosen == pin else 'yours'})")
    return chosen


def revision_kwargs(source: str | os.PathLike, revision: str | None = None) -> dict[str, str]:
    """``{"revision": ...}`` for a ``from_pretrained`` / ``load_dataset`` call on ``source``, or ``{}`` where
    there is none to pass (a local folder, an unpinned id): see :func:`hub_revision`. README, section "Pinned
    revisions".
    """
    chosen = hub_revision(source, revision)
    return {} if chosen is None else {"revision": chosen}
