"""Bad inputs fail clearly (issue 11): EXIF-rotated photos, None in metric inputs,
corrupt results files, and runs that must not silently replace other runs."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_helpers import results
from vlm_helpers.supervision import to_rgb
from vlm_helpers.metrics import (
    anls,
    anls_per_sample,
    levenshtein_similarity,
    levenshtein_similarity_per_sample,
    normalize_answer,
    normalized_levenshtein_distance,
    parse_tags,
    rouge,
    tag_f1_per_sample,
    tag_scores,
)

# ---------------------------------------------------------------------------
# 1. EXIF orientation
# ---------------------------------------------------------------------------

ORIENTATION_TAG = 0x0112
UPRIGHT_W, UPRIGHT_H = 48, 64  # a portrait page
MARK = 12  # side of the red square painted in the upright top-left corner

# How a camera stores an upright picture for each EXIF orientation, written from the
# EXIF definition (not from Pillow): 3 = stored upside down; 6 = stored row 0 is the
# visual right side and column 0 the visual top; 8 = row 0 is the visual left side
# and column 0 the visual bottom.
STORE = {
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, 1),
    8: lambda a: np.rot90(a, -1),
}


def _upright_page() -> np.ndarray:
    """A white portrait page (H x W x 3) with a red square in its top-left corner."""
    page = np.full((UPRIGHT_H, UPRIGHT_W, 3), 255, dtype=np.uint8)
    page[:MARK, :MARK] = (255, 0, 0)
    return page


def _encode(pixels: np.ndarray, *, orientation: int | None, fmt: str = "JPEG") -> bytes:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    options = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _is_red(pixel) -> bool:
    r, g, b = pixel[:3]
    return r > 200 and g < 70 and b < 70


def _is_white(pixel) -> bool:
    return all(channel > 200 for channel in pixel[:3])


def _assert_upright(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert image.size == (UPRIGHT_W, UPRIGHT_H)
    inside = MARK // 2
    assert _is_red(image.getpixel((inside, inside))), "the red mark belongs in the top-left corner"
    for corner in ((UPRIGHT_W - 1 - inside, inside), (inside, UPRIGHT_H - 1 - inside),
                   (UPRIGHT_W - 1 - inside, UPRIGHT_H - 1 - inside)):
        assert _is_white(image.getpixel(corner)), corner


def _sources(data: bytes, tmp_path: Path):
    """Every input kind to_rgb accepts, all holding ``data``."""
    path = tmp_path / "photo.img"
    path.write_bytes(data)
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "str path": str(path),
        "Path": path,
        "dict bytes": {"bytes": data, "path": None},
        "dict path": {"bytes": None, "path": str(path)},
        "PIL opened": Image.open(io.BytesIO(data)),
    }


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_rotated_jpeg_comes_back_upright_for_every_input_kind(orientation, tmp_path):
    stored = STORE[orientation](_upright_page())
    data = _encode(stored, orientation=orientation)
    if orientation in (6, 8):  # the file really is stored sideways
        assert Image.open(io.BytesIO(data)).size == (UPRIGHT_H, UPRIGHT_W)
    for kind, source in _sources(data, tmp_path).items():
        try:
            _assert_upright(to_rgb(source))
        except AssertionError as error:
            raise AssertionError(f"input kind {kind!r}: {error}") from error


def test_exif_orientation_is_applied_once_and_removed():
    data = _encode(STORE[6](_upright_page()), orientation=6)
    once = to_rgb(data)
    assert once.getexif().get(ORIENTATION_TAG) in (None, 1)
    _assert_upright(to_rgb(once))  # a second pass must not turn it again


def test_exif_rotation_keeps_transparency_compositing():
    """A transparent PNG stored sideways: rotated, and transparent pixels still become white."""
    stored = np.zeros((UPRIGHT_W, UPRIGHT_H, 4), dtype=np.uint8)  # fully transparent
    upright_mark = np.zeros((UPRIGHT_H, UPRIGHT_W, 4), dtype=np.uint8)
    upright_mark[:MARK, :MARK] = (255, 0, 0, 255)
    stored = STORE[6](upright_mark)
    rgb = to_rgb(_encode(stored, orientation=6, fmt="PNG"))
    _assert_upright(rgb)
    assert rgb.getpixel((UPRIGHT_W - 1, UPRIGHT_H - 1)) == (255, 255, 255)


def test_exif_rotation_of_a_grey_scan():
    grey = np.asarray(Image.fromarray(_upright_page()).convert("L"))
    data = _encode(STORE[8](grey), orientation=8)
    rgb = to_rgb(data)
    assert rgb.size == (UPRIGHT_W, UPRIGHT_H)
    dark, light = rgb.getpixel((2, 2)), rgb.getpixel((UPRIGHT_W - 3, UPRIGHT_H - 3))
    assert max(dark) < 120 and min(light) > 200, "the darker mark belongs in the top-left corner"


@pytest.mark.parametrize("orientation", [None, 1])
def test_image_without_rotation_is_unchanged(orientation, tmp_path):
    data = _encode(_upright_page(), orientation=orientation)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for kind, source in _sources(data, tmp_path).items():
        out = to_rgb(source)
        assert out.size == (UPRIGHT_W, UPRIGHT_H), kind
        assert np.array_equal(np.asarray(out), expected), kind
    already_rgb = Image.fromarray(_upright_page())
    assert to_rgb(already_rgb) is already_rgb  # an RGB image without EXIF is returned as is


# ---------------------------------------------------------------------------
# 2. Metrics with None (or non-string) inputs
# ---------------------------------------------------------------------------

LIST_REFERENCE_METRICS = [anls, anls_per_sample, levenshtein_similarity, levenshtein_similarity_per_sample, rouge]
SINGLE_REFERENCE_METRICS = [tag_scores, tag_f1_per_sample]
ALL_METRICS = LIST_REFERENCE_METRICS + SINGLE_REFERENCE_METRICS


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda f: f.__name__)
def test_none_prediction_names_its_index(metric):
    with pytest.raises(ValueError, match=r"^predictions\[2\] is None \(expected a string\)$"):
        metric(["a", "b", None, "d"], ["a", "b", "c", "d"])


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("value, shown", [(42, "42 of type int"), (math.nan, "nan of type float")])
def test_non_string_prediction_names_index_and_value(metric, value, shown):
    with pytest.raises(ValueError, match=rf"^predictions\[1\] is {shown} \(expected a string\)$"):
        metric(["a", value], ["a", "b"])


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda f: f.__name__)
def test_none_reference_names_its_index(metric):
    with pytest.raises(ValueError, match=r"^references\[1\] is None \(expected a string"):
        metric(["a", "b", "c"], ["a", None, "c"])


@pytest.mark.parametrize("metric", LIST_REFERENCE_METRICS, ids=lambda f: f.__name__)
def test_none_inside_a_reference_list_names_index_and_position(metric):
    with pytest.raises(ValueError, match=r"^references\[1\]\[2\] is None \(expected a string\)$"):
        metric(["a", "b"], [["a"], ["b", "bee", None]])
    with pytest.raises(ValueError, match=r"^references\[0\]\[0\] is 7 of type int"):
        metric(["a"], [[7]])


@pytest.mark.parametrize("metric", LIST_REFERENCE_METRICS, ids=lambda f: f.__name__)
def test_number_as_reference_list_names_its_index(metric):
    with pytest.raises(ValueError, match=r"^references\[0\] is 3\.5 of type float \(expected a string or a list"):
        metric(["a"], [3.5])


@pytest.mark.parametrize("metric", SINGLE_REFERENCE_METRICS, ids=lambda f: f.__name__)
def test_tag_metrics_want_one_reference_string(metric):
    with pytest.raises(ValueError, match=r"^references\[0\] is \['a'\] of type list \(expected a string\)$"):
        metric(["a"], [["a"]])


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda f: f.__name__)
def test_none_instead_of_a_list(metric):
    with pytest.raises(ValueError, match=r"^predictions is None"):
        metric(None, ["a"])
    with pytest.raises(ValueError, match=r"^references is None"):
        metric(["a"], None)


def test_single_string_functions_name_the_argument():
    with pytest.raises(ValueError, match=r"^prediction is None \(expected a string\)$"):
        normalized_levenshtein_distance(None, "a")
    with pytest.raises(ValueError, match=r"^reference is 5 of type int \(expected a string\)$"):
        normalized_levenshtein_distance("a", 5)
    with pytest.raises(ValueError, match=r"^text is None"):
        normalize_answer(None)
    with pytest.raises(ValueError, match=r"^text is None"):
        parse_tags(None)


def test_first_bad_entry_is_reported_before_any_scoring():
    """rouge validates everything up front: a bad last entry fails before ROUGE is computed."""
    with pytest.raises(ValueError, match=r"predictions\[3\]"):
        rouge(["a b", "c d", "e f", None], ["a b", "c d", "e f", "g"])


def test_valid_inputs_still_score():
    assert anls(["Invoice"], [["invoice", "bill"]]) == 1.0
    assert tag_f1_per_sample(["a, b"], ["b, a"]) == [1.0]


def test_evaluation_entry_points_pass_none_to_the_clear_error():
    from vlm_helpers.evaluation import sample_score, score_captions

    with pytest.raises(ValueError, match=r"references\[1\] is None"):
        score_captions([{"prediction": "a", "references": ["a"]}, {"prediction": "b", "references": None}])
    with pytest.raises(ValueError, match=r"predictions\[0\] is None"):
        sample_score("docvqa", None, ["a"])
    with pytest.raises(ValueError, match=r"references\[0\] is None"):
        sample_score("captioning", "a", None)
    assert sample_score("captioning", "a, b", "a, b") == 1.0  # a bare string is one reference


# ---------------------------------------------------------------------------
# 3. Results reader errors
# ---------------------------------------------------------------------------

RUN = "docvqa__florence2__finetuned"


def _record(i, prediction="x", references=("x",)):
    return {"id": str(i), "question": f"q{i}", "references": list(references), "prediction": prediction,
            "model": "m", "mode": "tiny"}


def _write(tmp_path, **overrides):
    kwargs = dict(task="docvqa", model="florence2", stage="finetuned", mode="tiny", notebook="02",
                  metrics={"anls": 0.5}, records=[_record(0), _record(1)], history=[{"step": 1, "loss": 2.0}])
    kwargs.update(overrides)
    return results.write_run(tmp_path, **kwargs)


def test_truncated_metrics_file_names_the_file(tmp_path):
    path = _write(tmp_path)
    path.write_text(path.read_text()[:25])
    with pytest.raises(ValueError, match=rf"{RUN}\.metrics\.json: not valid JSON .*truncated"):
        results.find_runs(tmp_path)


@pytest.mark.parametrize("key", ["task", "model", "stage", "mode", "metrics"])
def test_metrics_file_missing_a_key_names_file_and_key(tmp_path, key):
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{RUN}\.metrics\.json: missing required key '{key}'"):
        results.find_runs(tmp_path)


def test_metrics_file_with_bad_values_names_the_file(tmp_path):
    path = _write(tmp_path)
    for key, value, shown in [("stage", "after", "'stage' is 'after'"), ("mode", None, "'mode' is None"),
                              ("metrics", None, "'metrics' is null"), ("samples", None, "'samples' is null")]:
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, key: value}))
        with pytest.raises(ValueError, match=rf"{RUN}\.metrics\.json: {shown}"):
            results.find_runs(tmp_path)
        path.write_text(json.dumps(data))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{RUN}\.metrics\.json: expected a JSON object"):
        results.find_runs(tmp_path)


def test_truncated_history_names_the_file(tmp_path):
    _write(tmp_path)
    history = tmp_path / f"{RUN}.history.json"
    history.write_text(history.read_text()[:-4])
    (run,) = results.find_runs(tmp_path)
    with pytest.raises(ValueError, match=rf"{RUN}\.history\.json: not valid JSON"):
        run.history()
    history.write_text('{"step": 1}')
    with pytest.raises(ValueError, match=rf"{RUN}\.history\.json: expected a JSON list"):
        run.history()


def _predictions_file(tmp_path, lines: list[dict]) -> Path:
    path = tmp_path / "x.predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"prediction": None}, "'prediction' is null (expected a string)"),
    ({"prediction": 3}, "'prediction' is 3 of type int (expected a string)"),
    ({"id": None}, "'id' is null (expected a string or an integer)"),
    ({"references": None}, "'references' is null (expected a non-empty list of strings)"),
    ({"references": []}, "'references' is [] of type list (expected a non-empty list of strings)"),
    ({"references": "x"}, "'references' is 'x' of type str (expected a non-empty list of strings)"),
    ({"references": ["x", None]}, "'references'[1] is null (expected a string)"),
])
def test_bad_prediction_line_names_file_line_and_field(tmp_path, bad, message):
    path = _predictions_file(tmp_path, [_record(0), _record(1), {**_record(2), **bad}])
    with pytest.raises(ValueError) as caught:
        results.read_predictions(path)
    assert str(caught.value) == f"{path}, line 3: {message}"


@pytest.mark.parametrize("key", ["id", "prediction", "references"])
def test_prediction_line_missing_a_key_names_file_line_and_key(tmp_path, key):
    broken = _record(1)
    del broken[key]
    path = _predictions_file(tmp_path, [_record(0), broken])
    with pytest.raises(ValueError, match=rf"x\.predictions\.jsonl, line 2: missing required key '{key}'"):
        results.read_predictions(path)


def test_prediction_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "x.predictions.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"x\.predictions\.jsonl, line 3: expected a JSON object"):
        results.read_predictions(path)


def test_run_predictions_with_null_prediction_names_file_and_line(tmp_path):
    _write(tmp_path)
    path = tmp_path / f"{RUN}.predictions.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "prediction": None})
    path.write_text("\n".join(lines) + "\n")
    (run,) = results.find_runs(tmp_path)
    with pytest.raises(ValueError, match=rf"{RUN}\.predictions\.jsonl, line 2: 'prediction' is null"):
        run.predictions()


def test_pair_predictions_names_the_record_with_a_null_prediction():
    before = [_record(0), _record(1), _record(2)]
    after = [_record(0), _record(1, prediction=None), _record(2)]
    with pytest.raises(ValueError, match=r"^after\[1\] \(record id '1'\): 'prediction' is None"):
        results.pair_predictions(before, after, task="docvqa")
    without_id = {k: v for k, v in _record(5).items() if k != "id"}
    with pytest.raises(ValueError, match=r"^before\[1\] \(record id None\): missing required key 'id'"):
        results.pair_predictions([_record(0), without_id], after, task="captioning")


# ---------------------------------------------------------------------------
# 4. Never replace another producer's results silently
# ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _untouched_images():
    """An images iterable that fails the test if anything reads it."""
    def generate():
        raise AssertionError("write_run read the images although it refused to write")
        yield  # pragma: no cover

    return generate()


def test_cli_finetuned_run_does_not_replace_notebook_02(tmp_path):
    _write(tmp_path, notebook="02", mode="full", images=[Image.new("RGB", (8, 8))] * 2)
    before = _snapshot(tmp_path)
    problem = results.replace_problem(tmp_path, task="docvqa", model="florence2", stage="finetuned",
                                      mode="full", notebook="vlm-train")
    assert problem is not None
    for expected in (f"{RUN}.metrics.json", "notebook 02", "mode full", "the vlm-train CLI",
                     "different fine-tuned model", "replace=True", "--replace-results", "another results folder"):
        assert expected in problem, expected
    new_records = [_record(7), _record(8)]
    with pytest.raises(FileExistsError) as caught:
        _write(tmp_path, notebook="vlm-train", mode="full", records=new_records, images=_untouched_images())
    assert str(caught.value) == problem
    assert _snapshot(tmp_path) == before, "a refused write must not touch any file, thumbnails included"

    _write(tmp_path, notebook="vlm-train", mode="full", metrics={"anls": 0.9}, records=new_records, replace=True)
    (run,) = results.find_runs(tmp_path)
    assert (run.notebook, run.metrics["anls"]) == ("vlm-train", 0.9)
    assert [r["id"] for r in run.predictions()] == ["7", "8"]


@pytest.mark.parametrize("stage", ["baseline", "finetuned"])
def test_tiny_never_replaces_full(tmp_path, stage):
    _write(tmp_path, stage=stage, mode="full")
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError) as caught:
        _write(tmp_path, stage=stage, mode="tiny")  # same producer, still refused
    message = str(caught.value)
    assert f"docvqa__florence2__{stage}.metrics.json" in message
    assert "full-mode" in message and "notebook 02, mode full" in message and "--replace-results" in message
    assert _snapshot(tmp_path) == before
    _write(tmp_path, stage=stage, mode="tiny", replace=True)
    assert results.find_runs(tmp_path)[0].mode == "tiny"


@pytest.mark.parametrize("stage", ["baseline", "finetuned"])
def test_full_replaces_tiny_and_a_producer_may_rerun(tmp_path, stage):
    _write(tmp_path, stage=stage, mode="tiny")
    _write(tmp_path, stage=stage, mode="tiny", metrics={"anls": 0.1})  # same producer, same mode
    _write(tmp_path, stage=stage, mode="full", metrics={"anls": 0.2})
    _write(tmp_path, stage=stage, mode="full", metrics={"anls": 0.3})
    (run,) = results.find_runs(tmp_path)
    assert (run.mode, run.metrics["anls"]) == ("full", 0.3)


def test_baselines_from_different_notebooks_replace_each_other(tmp_path):
    for notebook in ("01", "02", "vlm-train", "01"):
        assert results.replace_problem(tmp_path, task="docvqa", model="florence2", stage="baseline",
                                       mode="tiny", notebook=notebook) is None
        _write(tmp_path, stage="baseline", notebook=notebook)
    (run,) = results.find_runs(tmp_path)
    assert run.notebook == "01"


def test_unreadable_existing_metrics_file_is_not_replaced(tmp_path):
    path = _write(tmp_path, stage="baseline")
    path.write_text("{")
    problem = results.replace_problem(tmp_path, task="docvqa", model="florence2", stage="baseline",
                                      mode="tiny", notebook="02")
    assert problem is not None and str(path) in problem and "cannot be read" in problem
    with pytest.raises(FileExistsError, match="cannot be read"):
        _write(tmp_path, stage="baseline")
    assert path.read_text() == "{"
    _write(tmp_path, stage="baseline", replace=True)
    assert results.find_runs(tmp_path)[0].stage == "baseline"


def test_series_order_writes_without_refusal(tmp_path):
    """01 writes every baseline, then 02, 03 and 04 write their baseline and fine-tuned runs."""
    for task, model in (("docvqa", "florence2"), ("docvqa", "idefics2"), ("captioning", "phi3")):
        _write(tmp_path, task=task, model=model, stage="baseline", notebook="01")
    for notebook, task, model in (("02", "docvqa", "florence2"), ("03", "docvqa", "idefics2"),
                                  ("04", "captioning", "phi3")):
        _write(tmp_path, task=task, model=model, stage="baseline", notebook=notebook)
        _write(tmp_path, task=task, model=model, stage="finetuned", notebook=notebook)
    assert len(results.find_runs(tmp_path)) == 6
