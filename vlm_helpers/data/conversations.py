"""Chat-style JSONL (one ``messages`` conversation per line) read into the series' rows.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Each line holds one question
about one image, in either layout::

    {"id": "r1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "images/a.png"},
                                     {"type": "text", "text": "What is the total?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "12.50"}]}]}

    {"images": ["images/a.png"], "messages": [
        {"role": "user", "content": "<image>What is the total?"},
        {"role": "assistant", "content": "12.50"}]}

The second is the layout of TRL / LLaVA-style datasets: the images are listed at the top and the user text
marks where with ``<image>``, which is removed here (the collator places the image itself). An image item may
name its file under ``"image"`` or ``"path"``; ``content`` may be a string or a list of text and image items.

The rules: exactly one image per row, and one user turn followed by one assistant turn. A system turn at
the start is allowed and not used: the series gives every row the same instruction through the collator's
``instruction=``, so the load report notes how many rows had one and quotes the first. Anything else (two
images, two rounds of questions, an image in the answer) is an error naming the file and line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import datasets

from vlm_helpers.data.canonical import LoadReport, OnBad, RowCollector, own_row_id, read_jsonl, resolve_image_path

__all__ = ["IMAGE_PLACEHOLDER", "load_conversations"]

#: The marker LLaVA-style datasets put in the user text where the image goes.
IMAGE_PLACEHOLDER = "<image>"


class _Bad(Exception):
    """What is wrong with one conversation (the loader adds the file and line)."""


def _content(content: Any, role: str) -> tuple[list[str], list[str | None]]:
    """The texts of one turn and its image items (each a path, or None for a bare ``{"type": "image"}``)."""
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise _Bad(f"the {role} turn's content must be a string or a list of items, got {type(content).__name__}")
    texts, images = [], []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif kind == "image":
            images.append(item.get("image", item.get("path", item.get("url"))))
        else:
            raise _Bad(f"unsupported item in the {role} turn: {item!r} (expected {{'type': 'text', 'text': ...}} "
                       "or {'type': 'image', 'image': path})")
    return texts, images


def _turns(record: dict) -> tuple[str | None, dict, dict]:
    """``(system text or None, user turn, assistant turn)``; any other sequence of turns is refused."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Bad(f"no 'messages' list; this row has {list(record)}")
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise _Bad("every message must be an object with 'role' and 'content'")
    roles = [m["role"] for m in messages]
    system = None
    if roles[0] == "system":
        texts, images = _content(messages[0]["content"], "system")
        if images:
            raise _Bad("the system turn holds an image")
        system, messages = "\n".join(texts), messages[1:]
    if [m["role"] for m in messages] != ["user", "assistant"]:
        hint = "; split a multi-turn conversation into one row per question" if len(messages) > 2 else ""
        raise _Bad(f"expected one user turn then one assistant turn (after an optional system turn), got roles "
                   f"{roles}{hint}")
    return system, messages[0], messages[1]


def _row(record: dict, *, base: Path) -> tuple[str | None, dict]:
    """``(system text, values for RowCollector.add without the id)`` for one conversation."""
    system, user, assistant = _turns(record)
    texts, items = _content(user["content"], "user")
    answers, answer_images = _content(assistant["content"], "assistant")
    if answer_images:
        raise _Bad("the assistant turn holds an image; the image belongs to the user turn")
    listed = record.get("images", [])
    if isinstance(listed, str) or not isinstance(listed, list):
        raise _Bad(f"'images' must be a list of paths, got {listed!r}")
    paths = list(listed) + [path for path in items if path is not None]
    text = "\n".join(texts)
    markers = max(text.count(IMAGE_PLACEHOLDER), len(items))  # a bare image item and <image> mark the same one
    where = "give it in the user turn as {'type': 'image', 'image': path} or as \"images\": [path]"
    if not paths:
        raise _Bad(f"the row marks an image ({'<image>' if text.count(IMAGE_PLACEHOLDER) else 'an image item'}) "
                   f"but names no image file: {where}" if markers else f"the row has no image: {where}")
    if len(paths) != 1 or markers > 1:
        raise _Bad(f"the row has {max(len(paths), markers)} images; this format takes exactly one image per row")
    image, problem = resolve_image_path(paths[0], base)
    if problem:
        raise _Bad(problem)
    question = re.sub(rf"\s*{re.escape(IMAGE_PLACEHOLDER)}\s*", " ", text).strip()
    return system, {"image": image, "question": question, "answers": ["\n".join(answers)]}


def load_conversations(path: str | os.PathLike, *, on_bad: OnBad = "raise",
                       image_root: str | os.PathLike | None = None, split: str = "train",
                       id_key: str = "id") -> tuple[datasets.Dataset, LoadReport]:
    """Read a chat-style JSONL into canonical rows; return ``(dataset, report)``.

    Each line is one conversation (see the module docstring for both layouts). The question is the user
    turn's text without the ``<image>`` placeholder, the answer the assistant's text. ``id_key`` names an
    optional id field (default id: ``"<file name>:<line>"``); image paths are resolved as in
    :func:`vlm_helpers.data.formats.load_jsonl_or_csv`. Problems are named by file and line; ``on_bad`` as
    there. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (looked in {os.path.abspath(path)})")
    base = Path(os.path.abspath(image_root if image_root is not None else path.parent))
    rows = RowCollector(path, format="conversations", on_bad=on_bad, split=split)
    systems: list[str] = []
    for line, record, problem in read_jsonl(path):
        if problem:
            rows.fail(line, problem)
            continue
        row_id, problem = own_row_id(record[id_key], id_key) if id_key in record else (rows.default_id(line), None)
        if problem:
            rows.fail(line, problem)
            continue
        try:
            system, values = _row(record, base=base)
        except _Bad as err:
            rows.fail(line, str(err), row_id=row_id)
            continue
        kept = len(rows.columns["id"])
        rows.add(line, row_id=row_id, **values)
        if system is not None and len(rows.columns["id"]) > kept:  # a repeated id is skipped, not kept
            systems.append(system)
    dataset, report = rows.finish()
    if systems:
        report.notes.append(f"{len(systems)} rows have a system turn, which is not used (the collator's "
                            f"instruction= is the same for every row); the first says {systems[0]!r}")
    return dataset, report
