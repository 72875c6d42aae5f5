"""Notebook smoke runs: the five notebooks execute top to bottom in tiny mode, in order, and
what they claim holds (fine-tuning improves every task). Also: notebooks are committed clean."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from vlm_helpers import comparison
from vlm_helpers.results import find_runs

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SERIES = ("01_baseline_inference.ipynb", "02_florence2_docvqa.ipynb", "03_idefics2_qlora_docvqa.ipynb",
          "04_phi3_aircraft_captioning.ipynb", "05_before_after_comparison.ipynb")
TINY_LABEL = "TINY mode: tiny random model — not a real result"


def run_notebook(name: str, results_dir: Path, cache_dir: Path, timeout: int = 600,
                 tiny: bool = True) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` (in tiny mode unless ``tiny=False``) with its own results and cache folders.

    The settings go to the kernel's own environment, not to this process's, so two notebooks can run at
    once from two threads (:func:`run_stages`).
    """
    env = dict(os.environ, VLM_TINY="1" if tiny else "0", VLM_RESULTS_DIR=str(results_dir),
               VLM_CACHE=str(cache_dir), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(env=env)
    return notebook


def run_stages(stages: list[list[str]], run, *, workers: int = 2) -> tuple[dict, dict]:
    """Run ``run(name)`` for every name, stage after stage; the names of one stage run side by side.

    A tiny-mode kernel uses one thread (``runtime.setup``), so on CI's two cores two notebooks at once take
    about the time of the longer one. Returns ``(outputs by name, errors by name)``: a failure is kept, not
    raised, so later tests say which notebook broke.
    """
    from concurrent.futures import ThreadPoolExecutor

    executed, errors = {}, {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for stage in stages:
            futures = {name: pool.submit(run, name) for name in stage}
            for name, future in futures.items():
                try:
                    executed[name] = future.result()
                except Exception as error:
                    errors[name] = error
    return executed, errors


def outputs_text(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
            texts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(texts)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, path.name


def test_the_series_has_six_notebooks():
    """01-05 run in order into one results folder (here); 06, on your own data, stands alone
    (tests/test_notebook_06.py)."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [*SERIES, "06_your_data_your_model.ipynb"]


#: The order the series needs: 01's baselines first (02-04 replace them with their own), 05 last (it compares
#: 02-04's runs); 02, 03 and 04 write different runs, so they run side by side (03, the longest, first).
SERIES_STAGES = [[SERIES[0]], [SERIES[2], SERIES[1], SERIES[3]], [SERIES[4]]]


@pytest.fixture(scope="module")
def series(tmp_path_factory, tiny_cache):
    """Run 01 -> 05 into one results folder (SERIES_STAGES); keep each notebook's outputs or error."""
    results_dir = tmp_path_factory.mktemp("results")
    executed, errors = run_stages(SERIES_STAGES, lambda name: run_notebook(name, results_dir, tiny_cache))
    return results_dir, executed, errors


@pytest.mark.parametrize("name", SERIES)
def test_each_notebook_runs_in_tiny_mode_and_labels_its_numbers(series, name):
    _, executed, errors = series
    assert name not in errors, f"{name} failed: {errors.get(name)}"
    assert TINY_LABEL in outputs_text(executed[name])


def test_idefics2_notebook_really_takes_the_4bit_path(series):
    _, executed, errors = series
    assert "03_idefics2_qlora_docvqa.ipynb" not in errors
    text = outputs_text(executed["03_idefics2_qlora_docvqa.ipynb"])
    line = next(line for line in text.splitlines() if "linear layers stored in 4-bit NF4" in line)
    assert int(line.split()[0]) > 0 and "not quantized: lm_head" in line


PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\||\d+/\d+ \[\d\d:\d\d|(it|examples)/s\]")
WARNING = re.compile(r"\b\w*Warning\b|^WARNING\b|Failed to load|should be in a", re.MULTILINE)


def output_problems(notebook) -> list[str]:
    """What a learner should not see in a tiny-mode run: library progress bars, warnings of any
    category, raw Trainer log dicts, and control characters (other than newline and tab)."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"cell {index}: error {output.get('ename')}")
                continue
            text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            found = [("progress bar", PROGRESS_BAR.search(text)), ("warning", WARNING.search(text)),
                     ("Trainer log dict", re.search(r"\{'(loss|train_runtime)':", text)),
                     ("control character", re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text))]
            problems += [f"cell {index} ({output.get('name', output.get('output_type'))}): {kind} "
                         f"{match.group(0)!r} in {text[max(0, match.start() - 60): match.end() + 60]!r}"
                         for kind, match in found if match]
    return problems


def test_output_check_finds_bars_warnings_dicts_and_control_characters():
    def notebook(text, name="stderr"):
        return nbformat.from_dict({"cells": [{"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": name, "text": text}]}]})

    for noisy in ["Filter: 100%|██████████| 170/170 [00:00<00:00, 30716.91 examples/s]",
                  "Loading weights:   0%|          | 0/199 [00:00<?, ?it/s]",
                  "tqdm/auto.py:21: TqdmWarning: IProgress not found.",
                  "modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is deprecated",
                  "WARNING:bitsandbytes.backends.cpu.ops:Failed to load CPU gemm_4bit_forward",
                  "{'loss': '10.54', 'grad_norm': '3.262'}", "before 'iceice\x13\x13'"]:
        assert output_problems(notebook(noisy)), noisy
    assert not output_problems(notebook("step  loss\n   5  10.5432\nANLS 0.000 -> 0.175 [TINY mode]", "stdout"))


@pytest.mark.parametrize("name", SERIES)
def test_tiny_mode_outputs_are_clean(series, name):
    _, executed, errors = series
    assert name not in errors, f"{name} failed: {errors.get(name)}"
    problems = output_problems(executed[name])
    assert not problems, "\n".join(problems)


MODEL_NOTEBOOKS = [*SERIES[:4], "06_your_data_your_model.ipynb"]


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_every_model_notebook_ends_its_parameters_cell_with_the_gpu_check(name):
    import ast

    cells = [cell for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells
             if cell.cell_type == "code" and "TINY = runtime.is_tiny()" in cell.source]
    assert len(cells) == 1, "one parameters cell"
    last = ast.parse(cells[0].source).body[-1]
    expected = f"runtime.require_gpu_unless_tiny(TINY, notebook={name.removesuffix('.ipynb')!r})"
    assert ast.unparse(last) == expected


@pytest.mark.parametrize("name", ["02_florence2_docvqa.ipynb", "06_your_data_your_model.ipynb"])
def test_full_mode_without_a_gpu_stops_in_the_parameters_cell(name, tmp_path, tiny_cache):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="NeedsGPU") as stopped:
        run_notebook(name, tmp_path / "results", tiny_cache, timeout=120, tiny=False)
    assert "VLM_TINY=1" in str(stopped.value) and "GPU runtime" in str(stopped.value)
    assert "require_gpu_unless_tiny(TINY" in str(stopped.value)  # the parameters cell, before any download
    assert not (tmp_path / "results").exists()


def _table(results_dir: Path) -> dict[tuple[str, str], dict]:
    runs = find_runs(results_dir)
    assert all(run.mode == "tiny" for run in runs)
    return {(row["model"], row["metric"]): row for row in comparison.comparison_table(runs)}


@pytest.mark.parametrize("model,metric", [("florence2", "anls"), ("idefics2", "anls"),
                                          ("phi3", "rouge1"), ("phi3", "tag_f1")])
def test_fine_tuning_improves_every_task_in_tiny_mode(series, model, metric):
    results_dir, _, errors = series
    assert not errors, sorted(errors)
    row = _table(results_dir)[(model, metric)]
    assert row["after"] > row["before"], row
    assert row["samples"] >= 16


def test_comparison_notebook_shows_the_table_and_saves_a_gallery_with_images(series):
    results_dir, executed, _ = series
    text = outputs_text(executed["05_before_after_comparison.ipynb"])
    assert "All expected runs are present." in text
    for line in ("docvqa      florence2  anls", "docvqa      idefics2   anls", "captioning  phi3       tag_f1"):
        assert line in text
    for name in ("gallery_docvqa_florence2.png", "gallery_docvqa_idefics2.png", "gallery_captioning_phi3.png",
                 "before_after.png", "loss_curves.png"):
        assert (results_dir / name).stat().st_size > 10_000, name
    examples = [r for run in find_runs(results_dir) for r in run.predictions()]
    assert examples and all((results_dir / r["image"]).exists() for r in examples)


def test_comparison_notebook_on_empty_results_names_the_notebooks_to_run(tmp_path, tiny_cache):
    notebook = run_notebook("05_before_after_comparison.ipynb", tmp_path / "empty", tiny_cache)
    text = outputs_text(notebook)
    for name in ("02_florence2_docvqa", "03_idefics2_qlora_docvqa", "04_phi3_aircraft_captioning"):
        assert name in text
    assert "No results yet" in text
    assert not any(output.get("output_type") == "error" for cell in notebook.cells for output in cell.get("outputs", []))


def test_notebook_refuses_to_replace_another_producers_results_before_training(tmp_path, tiny_cache):
    from nbclient.exceptions import CellExecutionError

    from vlm_helpers import results

    results.write_run(tmp_path / "results", task="docvqa", model="florence2", stage="finetuned", mode="tiny",
                      notebook="vlm-train", metrics={"anls": 0.5}, records=[])
    with pytest.raises(CellExecutionError, match=r"FileExistsError.*vlm-train") as stopped:
        run_notebook("02_florence2_docvqa.ipynb", tmp_path / "results", tiny_cache, timeout=120)
    assert "check_replaceable(RESULTS_DIR" in str(stopped.value)  # the setup cell, before any training
    assert json.loads((tmp_path / "results" / "docvqa__florence2__finetuned.metrics.json").read_text())[
        "notebook"] == "vlm-train"
