"""Conversations (one question about one image per row) read into the series' rows.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". The file is JSON Lines (one
conversation per line) or one JSON array of conversations (LLaVA's ``llava_instruct_*.json``), and each row
uses one of the layouts other tools write:

* chat-template ``messages`` (transformers, TRL)::

    {"id": "r1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "images/a.png"},
                                     {"type": "text", "text": "What is the total?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "12.50"}]}]}
    {"images": ["images/a.png"], "messages": [
        {"role": "user", "content": "<image>What is the total?"},
        {"role": "assistant", "content": "12.50"}]}

* OpenAI ``messages`` with ``image_url`` parts: the URL is a path, a ``file://`` URL or a ``data:`` URL
  holding the image (``http(s)`` URLs are refused: training reads local files only)::

    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is the total?"},
                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0..."}}]},
                  {"role": "assistant", "content": "12.50"}]}

* ShareGPT / LLaVA ``conversations`` with ``from`` (``human`` / ``gpt``, or ``user`` / ``assistant``) and
  ``value``, the image named by ``image`` (a path) or ``images`` (a list)::

    {"id": "000000033471", "image": "coco/000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\\nWhat is the total?"}, {"from": "gpt", "value": "12.50"}]}

The ``<image>`` marker says where the image goes in the user text; it is removed here (the collator places
the image itself). An image item may name its file under ``"image"``, ``"path"``, ``"url"`` or
``"image_url"``.

The rules: exactly one image per row (the same file named twice, e.g. by ``image`` and by an item, is one
image), and one user turn followed by one assistant turn. A system turn at the start is allowed and not
used: the series gives every row the same instruction through the collator's ``instruction=``, so the load
report notes how many rows had one and quotes the first. Anything else (two images, two rounds of
questions, an image in the answer) is an error naming the file and line (and, in a JSON array, the element).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import datasets

from vlm_helpers.data.canonical import (LoadReport, OnBad, RowCollector, json_container, own_row_id,
                                        read_json_records, resolve_image)

__all__ = ["CONVERSATION_KEYS", "IMAGE_PLACEHOLDER", "LAYOUTS", "load_conversations"]

#: The marker LLaVA-style datasets put in the user text where the image goes.
IMAGE_PLACEHOLDER = "<image>"

#: The keys that hold a conversation: chat-template / OpenAI ``messages``, ShareGPT / LLaVA ``conversations``.
CONVERSATION_KEYS = ("messages", "conversations")

#: The row layouts recognised, by the name the load report gives them.
LAYOUTS = {"messages": "messages (role/content)", "openai": "OpenAI messages (image_url parts)",
           "sharegpt": "ShareGPT/LLaVA (conversations with from/value)"}

#: Speaker names of the layouts, as the series' roles.
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
          "model": "assistant", "chatgpt": "assistant", "system": "system"}
_IMAGE_ITEMS = ("image", "image_url", "input_image")
_TEXT_ITEMS = ("text", "input_text")


class _Bad(Exception):
    """What is wrong with one conversation (the loader adds the file and line)."""


def _item_image(item: dict) -> Any:
    """The image reference of one image item (None for a bare ``{"type": "image"}``)."""
    for key in ("image_url", "image", "path", "url"):
        value = item.get(key)
        if isinstance(value, dict):  # OpenAI: {"type": "image_url", "image_url": {"url": ..., "detail": ...}}
            value = value.get("url")
        if value is not None:
            return value
    return None


def _content(content: Any, role: str) -> tuple[list[str], list[Any], bool]:
    """The texts of one turn, its image items (each a reference, or None for a bare ``{"type": "image"}``) and
    whether one was an OpenAI ``image_url`` part."""
    if isinstance(content, str):
        return [content], [], False
    if not isinstance(content, list):
        raise _Bad(f"the {role} turn's content must be a string or a list of items, got {type(content).__name__}")
    texts, images, openai = [], [], False
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in _TEXT_ITEMS and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif kind in _IMAGE_ITEMS:
            images.append(_item_image(item))
            openai = openai or kind != "image"
        else:
            raise _Bad(f"unsupported item in the {role} turn: {item!r} (expected {{'type': 'text', 'text': ...}}, "
                       "{'type': 'image', 'image': path} or {'type': 'image_url', 'image_url': {'url': ...}})")
    return texts, images, openai


def _messages(record: dict) -> tuple[str, list[tuple[str, Any]]]:
    """``(layout, [(role, content), ...])`` with the speakers mapped to ``system`` / ``user`` / ``assistant``."""
    key = next((key for key in CONVERSATION_KEYS if key in record), None)
    if key is None:
        raise _Bad(f"no 'messages' list (or ShareGPT's 'conversations'); this row has {list(record)}: a row of "
                   "columns is read with Columns(...) and format='jsonl', 'json' or 'csv'")
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise _Bad(f"'{key}' must be a non-empty list of turns, got {turns!r}")
    layout, speaker, text = ("messages", "role", "content") if key == "messages" else ("sharegpt", "from", "value")
    result = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Bad(f"turn {index} of '{key}' must be an object, got {turn!r}")
        role = turn.get(speaker, turn.get("role", turn.get("from")))
        has_text = next((name for name in (text, "content", "value") if name in turn), None)
        if role is None or has_text is None:
            raise _Bad(f"turn {index} of '{key}' must have '{speaker}' and '{text}'; it has {list(turn)}")
        mapped = _ROLES.get(role.lower()) if isinstance(role, str) else None
        if mapped is None:
            raise _Bad(f"turn {index} of '{key}' is from {role!r}; expected user/human, assistant/gpt or system")
        result.append((mapped, turn[has_text]))
    return layout, result


def _turns(record: dict) -> tuple[str, str | None, Any, Any]:
    """``(layout, system text or None, user content, assistant content)``; any other sequence is refused."""
    layout, messages = _messages(record)
    roles = [role for role, _ in messages]
    system = None
    if roles[0] == "system":
        texts, images, _ = _content(messages[0][1], "system")
        if images:
            raise _Bad("the system turn holds an image")
        system, messages = "\n".join(texts), messages[1:]
    if [role for role, _ in messages] != ["user", "assistant"]:
        rounds = sum(role == "user" for role, _ in messages)
        hint = (f"; split a multi-turn conversation into one row per question ({rounds} questions here): the series "
                "trains one question per row" if len(messages) > 2 else "")
        raise _Bad(f"expected one user turn then one assistant turn (after an optional system turn), got roles "
                   f"{roles}{hint}")
    return layout, system, messages[0][1], messages[1][1]


def _listed(record: dict) -> list[Any]:
    """The images named at the top of a row: ``images`` (a list, or one path) and ``image`` (LLaVA)."""
    listed = []
    for key in ("images", "image"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            listed.append(value)
        elif isinstance(value, list):
            listed += value
        else:
            raise _Bad(f"'{key}' must be a path or a list of paths, got {value!r}")
    return listed


def _identity(image: dict) -> str:
    """What makes two references the same image: the resolved path, or the bytes of a data: URL."""
    return image["path"] if image["path"] is not None else hashlib.sha1(image["bytes"]).hexdigest()


def _row(record: dict, *, base: Path) -> tuple[str, str | None, dict]:
    """``(layout, system text, values for RowCollector.add without the id)`` for one conversation."""
    layout, system, user, assistant = _turns(record)
    texts, items, openai = _content(user, "user")
    answers, answer_images, _ = _content(assistant, "assistant")
    if answer_images:
        raise _Bad("the assistant turn holds an image; the image belongs to the user turn")
    references = _listed(record) + [reference for reference in items if reference is not None]
    text = "\n".join(texts)
    markers = max(text.count(IMAGE_PLACEHOLDER), len(items))  # a bare image item and <image> mark the same one
    where = ("give it in the user turn as {'type': 'image', 'image': path} or at the top as \"images\": [path] "
             "(ShareGPT/LLaVA: \"image\": path)")
    if not references:
        raise _Bad(f"the row marks an image ({'<image>' if text.count(IMAGE_PLACEHOLDER) else 'an image item'}) "
                   f"but names no image file: {where}" if markers else f"the row has no image: {where}")
    resolved = {}
    for reference in references:
        image, problem = resolve_image(reference, base)
        if problem:
            raise _Bad(problem)
        resolved.setdefault(_identity(image), image)
    if len(resolved) != 1 or markers > 1:
        count = max(len(resolved), markers)
        raise _Bad(f"the row has {count} images; this format takes exactly one image per row (the series trains "
                   "one image per question): keep one, or make one row per image")
    question = re.sub(rf"\s*{re.escape(IMAGE_PLACEHOLDER)}\s*", " ", text).strip()
    layout = "openai" if openai else layout
    return layout, system, {"image": next(iter(resolved.values())), "question": question,
                            "answers": ["\n".join(answers)]}


def load_conversations(path: str | os.PathLike, *, on_bad: OnBad = "raise",
                       image_root: str | os.PathLike | None = None, split: str = "train",
                       id_key: str = "id") -> tuple[datasets.Dataset, LoadReport]:
    """Read conversations (JSON Lines or one JSON array) into canonical rows; return ``(dataset, report)``.

    Each row is one conversation in any layout of the module docstring (chat-template ``messages``, OpenAI
    ``image_url`` parts, ShareGPT / LLaVA ``conversations``); the layouts found are in ``report.layout``. The
    question is the user turn's text without the ``<image>`` placeholder, the answer the assistant's text.
    ``id_key`` names an optional id field (default id: ``"<file name>:<line>"``, or ``"<file name>[<element>]"``
    in a JSON array); image references are resolved as in :func:`vlm_helpers.data.canonical.resolve_image`.
    Problems are named by file and line; ``on_bad`` as in :func:`vlm_helpers.data.formats.load_jsonl_or_csv`.
    Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (looked in {os.path.abspath(path)})")
    base = Path(os.path.abspath(image_root if image_root is not None else path.parent))
    rows = RowCollector(path, format="conversations", on_bad=on_bad, split=split)
    systems: list[str] = []
    layouts: Counter = Counter()
    for line, element, record, problem in read_json_records(path):
        if problem:
            rows.fail(line, problem, element=element)
            continue
        row_id, problem = (own_row_id(record[id_key], id_key) if id_key in record
                           else (rows.default_id(line, element), None))
        if problem:
            rows.fail(line, problem, element=element)
            continue
        try:
            layout, system, values = _row(record, base=base)
        except _Bad as err:
            rows.fail(line, str(err), row_id=row_id, element=element)
            continue
        kept = len(rows.columns["id"])
        rows.add(line, row_id=row_id, element=element, **values)
        if len(rows.columns["id"]) > kept:  # a repeated id is skipped, not kept
            layouts[layout] += 1
            if system is not None:
                systems.append(system)
    dataset, report = rows.finish()
    container = "JSON array" if json_container(path) == "json" else "JSON Lines"
    report.layout = f"{container}; " + ", ".join(LAYOUTS[name] for name, _ in layouts.most_common())
    if systems:
        report.notes.append(f"{len(systems)} rows have a system turn, which is not used (the collator's "
                            f"instruction= is the same for every row); the first says {systems[0]!r}")
    return dataset, report
