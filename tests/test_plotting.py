"""The figures' honesty: loss curves smoothed over optimizer steps, and galleries that draw
every character they show (no empty boxes, no "Glyph missing from font" warnings)."""

from __future__ import annotations

import math
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")

from PIL import Image  # noqa: E402

from vlm_helpers import plotting  # noqa: E402


def _irregular_history() -> list[dict]:
    """A falling loss logged every step for 30 steps, then every 10 steps up to 300 (as a run that
    changes its logging interval, or an old Trainer history logged every ``logging_steps``), with
    an evaluation-only record and a skipped step mixed in."""
    steps = list(range(1, 31)) + list(range(40, 301, 10))
    history = [{"step": s, "loss": 1 + 10 * math.exp(-s / 40) + (0.3 if s % 2 else -0.3)} for s in steps]
    history.insert(33, {"step": 55, "val_anls": 0.4})  # no loss: not part of the curve
    history.insert(35, {"step": 65, "loss": None, "skipped": "non-finite loss (nan)"})
    return history


def _lines(fig, label):
    return {line.get_gid(): line for line in fig.axes[0].lines if line.get_gid() and line.get_gid().startswith(label)}


def test_smoothing_is_a_window_in_steps_that_stays_within_the_raw_curve():
    history = _irregular_history()
    window = 25
    fig = plotting.plot_loss({"run": history}, smooth=window)
    lines = _lines(fig, "run")
    raw_x, raw_y = (list(values) for values in lines["run raw"].get_data())
    smooth_x, smooth_y = (list(values) for values in lines["run smoothed"].get_data())
    finite = [h for h in history if isinstance(h.get("loss"), float)]
    assert raw_x == [h["step"] for h in finite] and raw_y == [h["loss"] for h in finite]
    assert smooth_x == raw_x
    for x, y in zip(smooth_x, smooth_y):
        inside = [ry for rx, ry in zip(raw_x, raw_y) if abs(rx - x) <= window / 2]
        assert min(inside) - 1e-9 <= y <= max(inside) + 1e-9, (x, y, inside)
    # late, sparse steps are not pulled up by records from a hundred steps earlier
    assert smooth_y[-1] == pytest.approx(sum(raw_y[-2:]) / 2)  # steps 290 and 300 only
    assert "run (mean over 25 steps)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(line.get_xdata()[0] == 65 for line in fig.axes[0].lines if line.get_color() == "red")


def test_smooth_by_steps_is_a_centred_mean_over_steps():
    steps, means = plotting.smooth_by_steps([3, 1, 2, 10], [3.0, 1.0, 2.0, 10.0], 2)
    assert steps == [1, 2, 3, 10]
    assert means == [1.5, 2.0, 2.5, 10.0]  # step 10 has no neighbour within one step
    assert plotting.smooth_by_steps([1, 2, 3], [5.0, 6.0, 7.0], 1)[1] == [5.0, 6.0, 7.0]


def test_gallery_draws_garbage_predictions_without_missing_glyphs(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 50), (200, 200, 255)).save(tmp_path / "images" / "page.jpg")
    garbage = "cub usual刚 confessady넣刚 cub\x82 cub\x13\x13 钥 ガ\n" * 5
    example = {"id": "1", "question": "What is the date?", "references": ["01/02/1990"], "image": "images/page.jpg",
               "before": garbage, "after": "01/02/1990", "score_before": 0.0, "score_after": 1.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plotting.gallery({"improved": [example], "unchanged": [], "regressed": []}, tmp_path,
                               title="tiny", save_to=tmp_path / "gallery.png")
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught]
    drawn = "\n".join(text.get_text() for ax in fig.axes for text in ax.texts)
    assert "\\u5c4b" not in drawn  # 屋 is not in the garbage; 刚 is, and is escaped
    assert "\\u521a" in drawn and "\\x13" in drawn and "刚" not in drawn
    assert "What is the date?" in drawn and "'01/02/1990'" in drawn
    assert (tmp_path / "gallery.png").stat().st_size > 1000
    assert fig.axes[0].images, "the page is drawn beside the text"


def test_font_can_draw_knows_the_fonts_glyphs():
    can_draw = plotting.font_can_draw("monospace")
    assert can_draw("a") and can_draw("…")
    assert not can_draw("\U0010fffd")  # a private-use character no font bundled with matplotlib has
