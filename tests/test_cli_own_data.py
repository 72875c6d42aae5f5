"""``vlm-train --recipe custom`` on other people's data: what the user sees when something is wrong, a resumed
run that reports the run it continues, and saved adapters without this machine's paths (issue 25, findings 7,
10 and 11).

The data are made here in layouts of their own (receipts with German column names, Japanese questions, the
user's own ids, a CSV with a byte-order mark), not the synthetic set's format. Tiny models, few steps, one
torch thread per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlm_helpers import cli as train
from vlm_helpers.loop import load_history

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_env(tiny_cache):
    """Tiny models from the session's cache, tiny mode only when asked for (in this process and in subprocesses)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VLM_CACHE", str(tiny_cache))
    mp.delenv("VLM_TINY", raising=False)
    yield dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO))
    mp.undo()


def _receipt_images(folder: Path, count: int) -> list[str]:
    """``count`` small receipt-like images of different sizes (a tall strip, a wide one, a square)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        size = [(48, 160), (200, 64), (96, 96)][i % 3]
        Image.new("RGB", size, (250 - 7 * i, 240, 230)).save(folder / f"beleg_{i:02d}.jpg")
        names.append(f"scans/beleg_{i:02d}.jpg")
    return names


def write_receipts_jsonl(folder: Path, rows: int = 24, *, broken_line: int | None = None) -> Path:
    """``belege.jsonl``: German column names, the user's own ids, Japanese questions, lists of valid answers; with
    ``broken_line`` (1-based) that line is cut short (malformed JSON), as a half-saved export would be."""
    images = _receipt_images(folder / "scans", rows)
    lines = []
    for i, image in enumerate(images):
        total = f"{12 + i},50"
        lines.append(json.dumps({"beleg_id": f"R-{1000 + i}", "bild": image, "frage": f"合計金額は？ ({i})",
                                 "antworten": [f"{total} €", total]}, ensure_ascii=False))
    if broken_line is not None:
        lines[broken_line - 1] = lines[broken_line - 1][:-12]
    path = folder / "belege.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


RECEIPT_COLUMNS = ["--image-column", "bild", "--question-column", "frage", "--answer-column", "antworten",
                   "--id-column", "beleg_id"]


def _run_cli(args: list[str], env: dict, *, torchrun: int = 0, cwd: Path = REPO) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
                if torchrun else [sys.executable])
    return subprocess.run([*launcher, "-m", "vlm_helpers.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------ finding 7: one line, exit status 2


def test_a_broken_data_file_stops_with_one_line_naming_file_and_line(cache_env, tmp_path):
    """Before: a DataFormatError traceback and exit status 1. Now: one line on stderr naming file:line, exit
    status 2, before any model loads or anything trains; --debug adds the traceback."""
    data = write_receipts_jsonl(tmp_path / "meine daten", broken_line=7)
    out = tmp_path / "out"
    args = ["--recipe", "custom", "--tiny", "--data", str(data), *RECEIPT_COLUMNS, "--max-steps", "2",
            "--output-dir", str(out), "--results-dir", str(tmp_path / "results")]
    result = _run_cli(args, cache_env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert line.startswith("vlm-train: error: [") and "belege.jsonl:7" in line and "malformed JSON" in line, line
    assert "--debug" in line  # how to see more
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter").exists()
    assert "LoRA on" not in result.stdout  # stopped before the model was loaded

    result = _run_cli([*args, "--debug"], cache_env)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "DataFormatError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vlm-train: error: [")


@pytest.mark.parametrize("problem", ["missing file", "column named twice", "unknown extension",
                                     "column not in the file", "best adapter of an earlier run"])
def test_problems_with_files_and_columns_are_one_line(problem, cache_env, tmp_path, capsys):
    """Usage problems that concern the user's files print one line and exit 2: no 24-line usage text above it,
    no traceback (a column missing from the file was a traceback; an output folder holding only an earlier
    run's best-adapter/ was refused only after the model had loaded)."""
    data = write_receipts_jsonl(tmp_path / "d", rows=8)
    out = tmp_path / "out"
    args = {"missing file": lambda: ["--data", str(tmp_path / "nowhere" / "belege.jsonl"), *RECEIPT_COLUMNS],
            "column named twice": lambda: ["--data", str(data), "--image-column", "bild", "--question-column", "frage",
                                           "--answer-column", "frage"],
            "unknown extension": lambda: ["--data", str(data.rename(data.with_suffix(".txt")))],
            "column not in the file": lambda: ["--data", str(data), *RECEIPT_COLUMNS[:-2], "--id-column", "quittung"],
            "best adapter of an earlier run": lambda: ["--data", str(data), *RECEIPT_COLUMNS]}[problem]()
    expected = {"missing file": "--data: no such file or folder", "column named twice": "one part only",
                "unknown extension": "--data", "column not in the file": "quittung",
                "best adapter of an earlier run": "already holds best-adapter/"}[problem]
    if problem == "best adapter of an earlier run":
        (out / "best-adapter").mkdir(parents=True)
        (out / "best-adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        train.main(["--recipe", "custom", "--tiny", *args, "--max-steps", "1", "--output-dir", str(out),
                    "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("vlm-train: error: ") and err.count("\n") == 1, err
    assert expected in err and "usage:" not in err and "Traceback" not in err
    if problem == "best adapter of an earlier run":
        assert (out / "best-adapter" / "adapter_config.json").read_text() == "{}"  # untouched


def test_full_mode_without_a_gpu_stops_at_once(cache_env, tmp_path, capsys, monkeypatch):
    """Before: full mode on a CPU went on to load the real model (an 8B download in the worst case). Now one
    line and exit status 2, and the recipe never starts."""
    import torch

    from vlm_helpers.cli import RECIPES

    started = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(RECIPES, "custom", dataclasses.replace(RECIPES["custom"],
                                                               run=lambda settings, env: started.append(1) or {}))
    data = write_receipts_jsonl(tmp_path / "d", rows=8)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        train.main(["--recipe", "custom", "--data", str(data), *RECEIPT_COLUMNS, "--output-dir", str(out),
                    "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and not started and not out.exists()
    assert err.count("\n") == 1 and "no GPU" in err and "--tiny" in err, err


@pytest.mark.parametrize("writer", ["broken_jsonl", "broken_json_array"])
def test_other_peoples_broken_files_stop_the_cli_with_one_line(writer, cache_env, tmp_path, capsys):
    """The shared writers of other people's data (tests/other_data.py): the first broken line is named, once."""
    import other_data

    data = getattr(other_data, writer)(tmp_path / "d")
    first = min(data.bad)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--recipe", "custom", "--tiny", *data.cli_args(), "--output-dir", str(tmp_path / "out"),
                    "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{data.path.name}:{first}" in err and data.bad[first] in err, err


def test_answer_separator_reaches_the_loader(cache_env, tmp_path):
    """--answer-separator (new with the CSV list answers of finding 9) splits 'a|b' cells as Columns does."""
    from other_data import receipts_csv

    from vlm_helpers.cli import build_parser, resolve_settings
    from vlm_helpers.recipes import options
    from vlm_helpers.recipes.custom import YourDataLoader

    data = receipts_csv(tmp_path / "d", delimiter="\t", answers="pipe")
    assert "--answer-separator" in data.cli_args()
    parser = build_parser()
    settings = resolve_settings(parser.parse_args(["--recipe", "custom", "--tiny", *data.cli_args(), "--output-dir",
                                                   str(tmp_path / "out"), "--results-dir", str(tmp_path / "r")]),
                                parser)
    assert options.columns(settings.your_data).answer_separator == "|"
    read = {row["id"]: row["answers"] for split in YourDataLoader()(settings) for row in split}
    assert read == dict(zip(data.ids, data.answers))


@pytest.mark.parametrize("error", [KeyError("collator"), ValueError("a shape the program got wrong")])
def test_a_program_error_keeps_its_traceback(error, cache_env, tmp_path, monkeypatch):
    """Only the user's problems become one line: an error raised while training (not while reading the data)
    propagates with its traceback, a ValueError included."""
    from vlm_helpers.cli import RECIPES

    def run(settings, env):
        raise error

    monkeypatch.setitem(RECIPES, "custom", dataclasses.replace(RECIPES["custom"], run=run))
    data = write_receipts_jsonl(tmp_path / "d", rows=8)
    with pytest.raises(type(error)):
        train.main(["--recipe", "custom", "--tiny", "--data", str(data), *RECEIPT_COLUMNS,
                    "--output-dir", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results")])


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_under_torchrun_a_bad_row_is_one_line_from_rank_0_and_every_rank_exits(cache_env, tmp_path):
    """A row that fails the checks (its question holds the processor's <image>) is found by rank 0, which sends
    the verdict to the others: one line, printed once; both processes end with status 2, none hangs (torchrun
    itself then reports the failed processes and exits 1)."""
    folder = tmp_path / "csv"
    images = _receipt_images(folder / "scans", 12)
    rows = [f"{image},Was kostet das? ({i}),{10 + i} €" for i, image in enumerate(images)]
    rows[5] = f"{images[5]},Was steht hier <image>?,nichts"
    (folder / "belege.csv").write_text("\ufeffbild,frage,antwort\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = _run_cli(["--recipe", "custom", "--tiny", "--data", str(folder / "belege.csv"), "--image-column", "bild",
                       "--question-column", "frage", "--answer-column", "antwort", "--max-steps", "2",
                       "--output-dir", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results")],
                      cache_env, torchrun=2)
    assert result.returncode != 0
    assert result.stderr.count("vlm-train: error:") == 1, result.stderr[-4000:]
    line = next(line for line in result.stderr.splitlines() if line.startswith("vlm-train: error:"))
    assert "belege.csv:7" in line and "<image>" in line, line
    # rank 0 ends with status 2 (a user error, not a crash); torchrun stops rank 1 if it is still running
    assert "exitcode  : 2" in result.stderr, result.stderr[-4000:]
    assert "rank 0 found a bad row" not in result.stderr  # rank 1 knows, but says nothing
    assert not list((tmp_path / "out").glob("checkpoint-*"))


# ------------------------------------------- finding 10: a resumed run reports the run it continues


@pytest.fixture(scope="module")
def resumed_runs(cache_env, tmp_path_factory):
    """In one folder of relative paths (so every absolute path found in a saved file is a leak): the same data
    trained 6 steps straight on (checkpoint every 3), and 3 steps then resumed with --max-steps 6 (train longer)."""
    root = tmp_path_factory.mktemp("resume")
    write_receipts_jsonl(root / "belege", rows=24)
    common = ["--recipe", "custom", "--tiny", "--data", "belege/belege.jsonl", *RECEIPT_COLUMNS, "--eval-steps", "3",
              "--max-eval-samples", "2", "--logging-steps", "1", "--replace-results"]
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert train.main([*common, "--max-steps", "6", "--checkpoint-every", "3", "--output-dir", "straight",
                           "--results-dir", "results-straight"]) == 0
        assert train.main([*common, "--max-steps", "3", "--output-dir", "longer", "--results-dir",
                           "results-longer"]) == 0
        first = load_history(root / "longer" / "history.json")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert train.main([*common, "--max-steps", "6", "--resume", "--output-dir", "longer", "--results-dir",
                               "results-longer"]) == 0
    finally:
        os.chdir(cwd)
    return root, first, printed.getvalue()


def test_a_resumed_run_continues_its_steps_and_learning_rate(resumed_runs):
    """The learning rate of every step after the checkpoint is the straight run's: the step after a resume once
    trained at the earlier plan's last rate (0: the end of its linear decay) instead of 0.006."""
    root, first, printed = resumed_runs
    straight, resumed = load_history(root / "straight" / "history.json"), load_history(root / "longer" / "history.json")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[:3] == first  # restored from checkpoint-3, not recomputed
    assert [r["lr"] for r in resumed[3:]] == pytest.approx([r["lr"] for r in straight[3:]], rel=1e-9)
    assert resumed[3]["lr"] > 0
    assert "trained steps 4-6 (3 steps, resumed at step 3)" in printed  # it once said "trained 6 steps"
    assert "resumed at step 3 of a run planned for 3 steps, now planned for 6" in printed
    assert json.loads(printed[printed.rindex("\n{"):])["resumed_from_step"] == 3


def test_the_card_of_a_resumed_run_counts_the_whole_run(resumed_runs):
    from vlm_helpers import model_card

    root, _, _ = resumed_runs
    card = model_card.read_model_card(root / "longer" / "adapter")
    assert card["hyperparameters"]["steps"].startswith("6")
    assert "at step 3 (checkpoint-3)" in card["hyperparameters"]["resumed"]
    assert "counts every session" in card["hyperparameters"]["resumed"]
    recorded = json.loads((root / "longer" / "checkpoint-3" / "training_time.json").read_text())
    assert recorded["step"] == 3 and card["run_seconds"] >= round(recorded["seconds"], 1)  # earlier session included
    assert "resumed" not in model_card.read_model_card(root / "straight" / "adapter")["hyperparameters"]


# ---------------------------------------------- finding 11: no path of this machine in saved adapters


def test_saved_adapters_and_checkpoints_name_the_hub_model_not_a_local_path(resumed_runs, tiny_cache):
    """adapter/, best-adapter/ and every checkpoint (with its best-so-far copy): adapter_config.json and README name
    the Hub id; no file holds the tiny model's folder or any other absolute path of the run (before: the tiny
    twin's absolute path in adapter_config.json and in PEFT's README)."""
    from vlm_helpers.model_choices import MODEL_CHOICES

    root, _, _ = resumed_runs
    hub_id = MODEL_CHOICES["idefics2"].model_id
    folders = [root / run / name for run in ("straight", "longer") for name in ("adapter", "best-adapter")]
    folders += [c for run in ("straight", "longer") for c in (root / run).glob("checkpoint-*")]
    folders += [c / "best-so-far" / "best-adapter" for c in folders if (c / "best-so-far").exists()]
    assert len(folders) == 12  # 2 runs x (adapter, best-adapter, 2 checkpoints, their 2 best-so-far copies)
    for folder in folders:
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id, folder
        readme = (folder / "README.md").read_text()
        assert f"base_model: {hub_id}" in readme and "tiny-random-not-a-real-result" in readme, folder
        for file in folder.rglob("*"):
            if file.is_file():
                content = file.read_bytes()
                for path in (str(Path(tiny_cache).resolve()), str(Path(tiny_cache)), str(root.resolve()), str(root)):
                    assert path.encode() not in content, f"{file} holds {path}"


def test_save_adapter_names_the_hub_id_and_load_adapter_still_takes_the_tiny_twin(tiny_cache, tmp_path):
    import torch

    from vlm_helpers import adapters, lora
    from vlm_helpers.model_choices import MODEL_CHOICES
    from vlm_helpers.tiny import tiny_checkpoint

    choice = MODEL_CHOICES["llava-phi3"]
    twin = tiny_checkpoint(choice.tiny_name, tiny_cache)
    model, processor = lora.load_chat_vlm(twin, dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    model = lora.add_lora(model, target_modules=choice.lora_targets, r=4, alpha=8, dropout=0.0, quantized=False,
                          gradient_checkpointing=False)
    for name, param in model.named_parameters():  # a trained-looking adapter: B is no longer 0
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    named = adapters.save_adapter(model, processor, tmp_path / "named", base_model=choice.model_id)
    unnamed = adapters.save_adapter(model, processor, tmp_path / "unnamed")
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == choice.model_id
    assert json.loads((unnamed / "adapter_config.json").read_text())["base_model_name_or_path"] == twin.name
    for folder in (named, unnamed):
        for file in folder.iterdir():
            assert str(twin).encode() not in file.read_bytes(), file
    assert model.peft_config["default"].base_model_name_or_path == str(twin)  # the model in memory is unchanged

    reloaded, _ = lora.load_adapter(twin, named, dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    ours = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("loaded_from, expected", [
    ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"),
    ("/home/ana/.cache/huggingface/hub/models--Qwen--Qwen2-VL-2B-Instruct/snapshots/895c3a4",
     "Qwen/Qwen2-VL-2B-Instruct"),
    ("/content/drive/MyDrive/models/my-smolvlm", "my-smolvlm"),
    ("/tmp/cache/tiny-idefics2", "tiny-idefics2"),
])
def test_portable_base_name_never_keeps_a_path(loaded_from, expected):
    from vlm_helpers.adapters import portable_base_name

    assert portable_base_name(loaded_from) == expected
    given = "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert portable_base_name(loaded_from, given) == given


def test_push_to_hub_refuses_an_adapter_that_names_a_local_base(tmp_path):
    """An adapter saved without save_adapter (PEFT's save_pretrained alone) is refused before any network call."""
    from vlm_helpers import model_card, sharing

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "tiny-x")}))
    (folder / "adapter_model.safetensors").write_bytes(b"0")
    (folder / "README.md").write_text(f"---\nbase_model: x\n---\n{model_card.CARD_MARKER}\n\n# a card\n")

    class NoNetwork:
        def __getattr__(self, name):
            raise AssertionError("the Hub was called")

    with pytest.raises(ValueError, match="path of this machine"):
        sharing.push_to_hub(folder, "someone/adapter", token="hf_x", api=NoNetwork())
