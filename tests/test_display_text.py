"""Model text made safe and short to print or draw: ``comparison.display_text`` and ``format_pair``.

Tiny random models answer with garbage: control characters, long runs of tokens, scripts the
figure's font has no glyph for. Printed or drawn as is, that moves the cursor, floods a cell,
or draws empty boxes with a "Glyph ... missing from font" warning.
"""

from __future__ import annotations

import unicodedata

import pytest

from vlm_helpers.comparison import DISPLAY_CHARS, display_text, format_pair

# A text that fits is shown exactly as Python's repr shows it: quotes, backslashes and escapes.
FITTING = ["", "Stark Supply", "a\x00b\x1b[31m\n", "bell\x07 tab\t cr\r del\x7f", "it's", 'say "hi", it\'s',
           "back\\slash", "\u200b\u202e\xa0\x82", "\ud800x", "\U000e0001 tag"]


@pytest.mark.parametrize("text", FITTING)
def test_a_text_that_fits_is_shown_as_repr_shows_it(text):
    assert display_text(text) == repr(text)


@pytest.mark.parametrize("text", FITTING[2:] + ["\x13\x13 report121212", "\x85 next line \u2028 \u2029"])
def test_no_control_or_other_unprintable_character_comes_out(text):
    for quote in (True, False):
        shown = display_text(text, quote=quote)
        assert shown.isprintable(), shown
        assert not any(unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") for char in shown)
    assert display_text("a\x13b", quote=False) == "a\\x13b"


def test_printable_unicode_stays_as_it_is():
    for text in ("Zürich, 12 €", "屋 刚 넣", "Ан aircraft", "😀", "EUR 1,637.50"):
        assert display_text(text, quote=False) == text
        assert display_text(text) == repr(text)


def test_a_long_text_is_cut_to_max_chars_with_an_ellipsis():
    garbage = "cub usual刚 confessady " * 40
    shown = display_text(garbage)
    assert len(shown) == DISPLAY_CHARS and shown.startswith("'cub usual刚 ") and shown.endswith("…'")
    assert len(display_text(garbage, max_chars=20)) == 20
    assert display_text("x" * 30, max_chars=12, quote=False) == "x" * 11 + "…"
    assert display_text("x" * 12, max_chars=12, quote=False) == "x" * 12  # exactly fits: not cut


def test_a_cut_never_splits_an_escape():
    shown = display_text("\x00" * 100, max_chars=20)  # each \x00 takes 4 characters
    assert len(shown) <= 20 and shown.endswith("…'")
    body = shown[1:-2]
    assert body == "\\x00" * (len(body) // 4) and body


def test_characters_the_font_cannot_draw_are_escaped_when_drawing():
    ascii_font = lambda char: ord(char) < 128  # noqa: E731
    assert display_text("屋 ok", drawable=ascii_font) == "'\\u5c4b ok'"
    assert display_text("😀", drawable=ascii_font, quote=False) == "\\U0001f600"
    assert display_text("x" * 50, max_chars=10, drawable=ascii_font, quote=False) == "x" * 7 + "..."
    assert display_text("屋 ok") == "'屋 ok'"  # printing: the character stays


def test_format_pair_shows_every_text_safely_with_the_scores():
    row = {"id": "7", "question": "What is the total\namount?", "references": ["$5.00", "5.00"],
           "before": "garbage\x13" * 30, "after": "$5.00", "score_before": 0.0, "score_after": 1.0}
    text = format_pair(row)
    lines = text.splitlines()
    assert lines[0] == "Q: What is the total\\namount?"
    assert lines[1].endswith("'$5.00' | '5.00'")
    assert "'garbage\\x13garbage" in lines[2] and "…'" in lines[2] and lines[2].endswith("(0.00)")
    assert lines[3].endswith("'$5.00'  (1.00)")
    assert len(lines) == 4 and all(line.isprintable() for line in lines)
    assert all(len(line) < DISPLAY_CHARS + 25 for line in lines)
    captioning = format_pair({**row, "question": ""})
    assert not captioning.startswith("Q:") and len(captioning.splitlines()) == 3
