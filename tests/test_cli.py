"""The ``vlm-train`` command line: real 2-process DDP and FSDP2 on CPU (torchrun + gloo), resume, errors.

Every run uses tiny models (Florence-2; Idefics2 and LLaVA-Phi-3 for the HF Trainer recipes) and
synthetic data, one torch thread per process (two threads per process on a busy 2-core machine
were measured up to 100x slower).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_helpers import cli as train, launch
from vlm_helpers.checkpoints import checkpoint_dirs
from vlm_helpers.checkpoints import trainer_checkpoint_dirs
from vlm_helpers.loop import load_history

REPO = Path(__file__).resolve().parents[1]
# small data so each run takes seconds: 48 training questions, 4 to evaluate on
SMALL = ["--tiny", "--max-train-samples", "48", "--max-eval-samples", "4", "--logging-steps", "100"]


def _env(tiny_cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", VLM_CACHE=str(tiny_cache),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.pop("VLM_TINY", None)
    return env


def _torchrun(args: list[str], env: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "vlm_helpers.cli", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _max_weight_difference(model_dir: Path, other_dir: Path) -> float:
    """Largest absolute difference between two saved models' weights.

    ``k_proj.bias`` is left out: softmax ignores a constant added to every key, so its true
    gradient is 0 and what it gets is rounding noise, which Adam blows up to full-size steps.
    """
    from safetensors.torch import load_file

    ours, theirs = load_file(model_dir / "model.safetensors"), load_file(other_dir / "model.safetensors")
    assert ours.keys() == theirs.keys()
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours if not k.endswith("k_proj.bias"))


def _losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in load_history(output_dir / "history.json")]


@pytest.fixture(scope="module")
def cli_env(no_dropout_cache):
    return _env(no_dropout_cache)


@pytest.fixture(scope="module")
def ddp_run(cli_env, tmp_path_factory):
    """torchrun, 2 processes x batch 2, 6 steps, evaluation (rank 0) at steps 3 and 6."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = _torchrun([*SMALL, "--recipe", "florence2-docvqa", "--max-steps", "6", "--batch-size", "2",
                        "--eval-steps", "3", "--output-dir", str(out), "--results-dir", str(out / "results"),
                        "--write-weight-digests"], cli_env)
    return out, result


@pytest.fixture(scope="module")
def single_run(tiny_florence2_path, tmp_path_factory, monkeypatch_module):
    """The same 6 steps in one process with batch 4 (= the same global batch), in this process."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert train.main([*SMALL, "--max-steps", "6", "--batch-size", "4", "--output-dir", str(out),
                       "--results-dir", str(out / "results"), "--write-weight-digests"]) == 0
    return out


@pytest.fixture(scope="module")
def single_resumed(single_run, tmp_path_factory, monkeypatch_module):
    """``single_run`` continued in one process from its checkpoint-6 to step 8."""
    out = tmp_path_factory.mktemp("single-resumed") / "run"
    shutil.copytree(single_run, out)
    assert train.main([*SMALL, "--max-steps", "8", "--batch-size", "4", "--output-dir", str(out),
                       "--results-dir", str(out / "results"), "--resume"]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module(no_dropout_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("VLM_CACHE", str(no_dropout_cache))
    mp.delenv("VLM_TINY", raising=False)
    yield mp
    mp.undo()


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_two_process_run_completes_with_in_sync_replicas_and_one_checkpoint(ddp_run):
    out, result = ddp_run
    assert "2 process(es), backend gloo" in result.stdout
    digests = [json.loads((out / f"weights-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert digests[0]["step"] == digests[1]["step"] == 6
    assert digests[0]["tensors"] > 0
    assert digests[0]["sha256"] == digests[1]["sha256"], "DDP replicas ended with different weights"
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-6"]  # rank 0 alone wrote exactly one
    history = load_history(out / "history.json")
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert "eval_anls" in history[2] and "eval_anls" in history[5] and "eval_anls" not in history[0]
    assert json.loads((out / "run_settings.json").read_text())["world_size"] == 2
    metrics = json.loads((out / "results" / "docvqa__florence2__finetuned.metrics.json").read_text())
    assert metrics["mode"] == "tiny" and metrics["samples"] == 4
    assert (out / "final" / "config.json").exists()
    assert result.stdout.count("after fine-tuning: anls") == 1  # evaluation printed by rank 0 only


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_two_processes_match_one_process_with_the_same_global_batch(ddp_run, single_run):
    out, _ = ddp_run
    ddp, one = load_history(out / "history.json"), load_history(single_run / "history.json")
    assert [r["tokens"] for r in ddp] == [r["tokens"] for r in one]  # same rows in every step
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["grad_norm"] for r in ddp] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    assert _max_weight_difference(out / "final", single_run / "final") < 1e-5
    assert one[-1]["loss"] < one[0]["loss"]


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_resume_continues_a_two_process_run(ddp_run, single_resumed, cli_env, tmp_path):
    out, _ = ddp_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out, resumed_dir)
    _torchrun([*SMALL, "--max-steps", "8", "--batch-size", "2", "--output-dir", str(resumed_dir),
               "--results-dir", str(resumed_dir / "results"), "--resume"], cli_env)
    before, after = _losses(out), _losses(resumed_dir)
    assert len(after) == 8
    assert after[:6] == before  # restored from checkpoint-6, not recomputed
    assert [p.name for p in checkpoint_dirs(resumed_dir)] == ["checkpoint-6", "checkpoint-8"]
    # the same resume in one process (batch 4) continues identically
    assert after[6:] == pytest.approx(_losses(single_resumed)[6:], rel=1e-4)


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_fsdp_two_processes_match_one_process_and_resume_anywhere(cli_env, single_run, single_resumed,
                                                                   monkeypatch_module, tmp_path):
    out = tmp_path / "fsdp"
    result = _torchrun([*SMALL, "--fsdp", "--max-steps", "6", "--batch-size", "2", "--eval-steps", "3",
                        "--output-dir", str(out), "--results-dir", str(out / "results"), "--write-weight-digests"],
                       cli_env)
    assert "backend gloo, FSDP2" in result.stdout and "sharded over 2 processes" in result.stdout
    digests = [json.loads((out / f"weights-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert digests[0]["sha256"] == digests[1]["sha256"]
    assert _max_weight_difference(out / "final", single_run / "final") < 1e-5  # gathered from the shards
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-6"]
    fsdp, one = load_history(out / "history.json"), load_history(single_run / "history.json")
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    # the checkpoint holds full tensors: it resumes in ONE process (batch 4 = the same global batch)
    assert train.main([*SMALL, "--max-steps", "8", "--batch-size", "4", "--output-dir", str(out),
                       "--results-dir", str(out / "results"), "--resume"]) == 0
    assert _losses(out) == pytest.approx(_losses(single_resumed), rel=1e-4)


def test_fsdp_settings_from_accelerate_environment():
    assert launch.fsdp_from_environment({}) is None
    assert launch.fsdp_from_environment({"ACCELERATE_USE_FSDP": "false"}) is None
    exported = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
                "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_OFFLOAD_PARAMS": "false",
                "FSDP_TRANSFORMER_CLS_TO_WRAP": "BartEncoderLayer,BartDecoderLayer"}
    settings = launch.fsdp_from_environment(exported)
    assert settings == launch.FSDPSettings(True, False, ("BartEncoderLayer", "BartDecoderLayer"))
    v1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP", "FSDP_OFFLOAD_PARAMS": "true"}
    assert launch.fsdp_from_environment(v1) == launch.FSDPSettings(False, True, ())
    with pytest.raises(ValueError, match="HYBRID_SHARD is not supported"):
        launch.fsdp_from_environment({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"})


def test_cauldron_dataset_trains(monkeypatch_module, tmp_path, capsys):
    out = tmp_path / "cauldron"
    assert train.main([*SMALL, "--dataset", "cauldron", "--cauldron-subsets", "docvqa,chartqa", "--max-steps", "3",
                       "--output-dir", str(out), "--results-dir", str(out / "results")]) == 0
    printed = capsys.readouterr().out
    assert "recipe florence2-docvqa on cauldron (docvqa,chartqa)" in printed
    assert len(_losses(out)) == 3
    assert (out / "results" / "docvqa__florence2-cauldron__finetuned.metrics.json").exists()


def test_idefics2_qlora_recipe_trains_with_the_hf_trainer(monkeypatch_module, tmp_path):
    # one process here to keep the suite short; under torchrun the HF Trainer joins the same
    # process group (checked by hand: 2 processes, identical LoRA weights on both ranks)
    out = tmp_path / "idefics2"
    assert train.main([*SMALL, "--recipe", "idefics2-qlora-docvqa", "--max-steps", "4", "--logging-steps", "1",
                       "--output-dir", str(out), "--results-dir", str(out / "results")]) == 0
    history = load_history(out / "history.json")
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "results" / "docvqa__idefics2__finetuned.metrics.json").read_text())["samples"] == 4


def test_phi3_aircraft_recipe_trains_and_scores_captions(monkeypatch_module, tmp_path):
    out = tmp_path / "phi3"
    assert train.main(["--recipe", "phi3-aircraft", "--tiny", "--max-steps", "3", "--max-eval-samples", "4",
                       "--output-dir", str(out), "--results-dir", str(out / "results")]) == 0
    metrics = json.loads((out / "results" / "captioning__phi3__finetuned.metrics.json").read_text())
    assert {"rouge1", "tag_f1"} <= set(metrics["metrics"]) and metrics["samples"] == 4
    assert (out / "adapter" / "adapter_config.json").exists()


def _digests(output_dir: Path) -> list[dict]:
    return [json.loads((output_dir / f"weights-rank{rank}.json").read_text()) for rank in (0, 1)]


# the HF Trainer recipes: 16 rows = 2 steps of 2 processes x batch 4 per epoch, one question to evaluate
CHAT_SMALL = ["--tiny", "--max-train-samples", "16", "--max-eval-samples", "1", "--logging-steps", "1"]


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_hf_trainer_recipe_two_processes_one_checkpoint_and_resume(cli_env, tmp_path, capsys):
    """QLoRA under torchrun: each process loads its own 4-bit copy. The other HF Trainer recipes share this code
    path (_run_chat_recipe); LoRA on 16/32-bit weights under torchrun is run by the custom recipe's test below."""
    recipe, metrics_file = "idefics2-qlora-docvqa", "docvqa__idefics2__finetuned"
    out = tmp_path / "run"
    common = [*CHAT_SMALL, "--recipe", recipe, "--output-dir", str(out), "--results-dir", str(out / "results"),
              "--write-weight-digests"]
    result = _torchrun([*common, "--max-steps", "6"], cli_env)
    assert "2 process(es), backend gloo" in result.stdout
    digests = _digests(out)
    assert digests[0]["step"] == digests[1]["step"] == 6 and digests[0]["tensors"] > 0
    assert digests[0]["sha256"] == digests[1]["sha256"], "the Trainer's DDP replicas ended with different weights"
    assert [p.name for p in trainer_checkpoint_dirs(out)] == ["checkpoint-6"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {p.name for p in (out / "checkpoint-6").iterdir()}
    before = load_history(out / "history.json")
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "results" / f"{metrics_file}.metrics.json").read_text())["samples"] == 1
    assert (out / "adapter" / "adapter_config.json").exists()

    # mistakes are refused before any model loads
    assert "already holds checkpoint-6: pass --resume" in _usage_error([*common, "--max-steps", "8"], capsys)
    assert "already at step 6" in _usage_error([*common, "--resume", "--max-steps", "6"], capsys)
    assert "no trainer_state.json in that folder" in _usage_error([*common, "--resume", str(out / "adapter")], capsys)

    result = _torchrun([*common, "--max-steps", "8", "--resume"], cli_env)
    assert "resuming from" in result.stdout and str(out / "checkpoint-6") in result.stdout
    after = load_history(out / "history.json")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert after[:6] == before  # restored from checkpoint-6's trainer_state.json, not recomputed
    resumed = _digests(out)
    assert resumed[0]["step"] == 8 and resumed[0]["sha256"] == resumed[1]["sha256"] != digests[0]["sha256"]
    assert [p.name for p in trainer_checkpoint_dirs(out)] == ["checkpoint-6", "checkpoint-8"]


def test_hf_trainer_resume_repeats_the_uninterrupted_run(monkeypatch_module, tmp_path):
    """One process: steps 4-6 resumed from checkpoint-3 are those of the run that went straight on."""
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    # one process x batch 4 over 16 rows: 4 steps per epoch, so checkpoint-3 is mid-epoch and 4-6 cross into epoch 2
    common = [*CHAT_SMALL, "--recipe", "idefics2-qlora-docvqa", "--max-steps", "6", "--write-weight-digests"]
    assert train.main([*common, "--checkpoint-every", "3", "--output-dir", str(run),
                       "--results-dir", str(run / "results")]) == 0
    assert [p.name for p in trainer_checkpoint_dirs(run)] == ["checkpoint-3", "checkpoint-6"]
    resumed.mkdir()
    shutil.copytree(run / "checkpoint-3", resumed / "checkpoint-3")
    assert train.main([*common, "--output-dir", str(resumed), "--results-dir", str(resumed / "results"),
                       "--resume", str(resumed / "checkpoint-3")]) == 0
    assert _losses(resumed) == _losses(run)  # bit for bit: weights, optimizer, data position and RNG came back
    assert _digests_one(resumed) == _digests_one(run)


def _digests_one(output_dir: Path) -> str:
    return json.loads((output_dir / "weights-rank0.json").read_text())["sha256"]


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _one_line_error(argv: list[str], capsys) -> str:
    """A problem with files or data: exit status 2 and one line on stderr, no usage, no traceback."""
    err = _usage_error(argv, capsys)
    assert err.startswith("vlm-train: error: ") and err.count("\n") == 1, err
    assert "usage:" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "phi3-aircraft", "--dataset", "cauldron"], "phi3-aircraft trains on aircraft, not --dataset cauldron"),
    (["--recipe", "florence2-docvqa", "--dataset", "aircraft"], "trains on docvqa or cauldron"),
    (["--max-steps", "0"], "--max-steps: must be a positive whole number"),
    (["--max-steps", "-5"], "--max-steps: must be a positive whole number"),
    (["--batch-size", "two"], "--batch-size: expected a whole number"),
    (["--lr", "0"], "--lr: must be greater than 0"),
    (["--cauldron-subsets", "docvqa"], "--cauldron-subsets only applies to --dataset cauldron"),
    (["--dataset", "cauldron", "--cauldron-subsets", "docvqa,nope"], "unknown Cauldron subset"),
    (["--report-to", "mlflow"], "--report-to: unknown tracker"),
    (["--recipe", "llava"], "invalid choice: 'llava'"),
    (["--recipe", "phi3-aircraft", "--fsdp"], "--fsdp shards the florence2-docvqa recipe's own training loop"),
    (["--recipe", "custom", "--tiny", "--model", "qwen2.5-vl"],
     "--model: MODEL = 'qwen2.5-vl' is not a supported choice; choose one of ['florence2', 'gemma3-4b', "),
    (["--recipe", "custom", "--data", "org/dataset", "--model", "llava"], "is not a supported choice"),
    (["--recipe", "custom", "--data", "org/dataset", "--task", "captioning"], "needs --prompt"),
    (["--recipe", "phi3-aircraft", "--data", "x.jsonl"], "--data only apply to --recipe custom"),
    (["--recipe", "florence2-docvqa", "--keep-best"], "apply to the HF Trainer recipes"),
    (["--recipe", "phi3-aircraft", "--patience", "2"], "--patience needs --keep-best"),
    (["--recipe", "custom", "--tiny", "--validation-fraction", "1.5"], "must be between 0 and 1"),
    (["--recipe", "custom", "--data", "org/dataset", "--task", "captioning", "--prompt", "P",
      "--question-column", "q"], "not both"),
    (["--recipe", "phi3-aircraft", "--task", "captioning"], "--task only apply to --recipe custom"),
])
def test_impossible_combinations_are_usage_errors(argv, message, tmp_path, capsys):
    # its own results folder: a results/ left in the checkout by a notebook run must not answer first
    err = _usage_error(["--tiny", "--output-dir", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results"),
                        *argv], capsys)
    assert message in err
    assert "usage: vlm-train" in err


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_resume_needs_a_checkpoint_and_fresh_runs_refuse_to_overwrite(ddp_run, tmp_path, capsys):
    out, _ = ddp_run
    err = _usage_error(["--tiny", "--output-dir", str(tmp_path / "empty"), "--resume"], capsys)
    assert "holds no complete checkpoint" in err
    err = _usage_error(["--tiny", "--output-dir", str(tmp_path), "--resume", str(tmp_path / "checkpoint-3")], capsys)
    assert "no training_state.pt in that folder" in err
    err = _usage_error(["--tiny", "--output-dir", str(out), "--max-steps", "10"], capsys)
    assert "already holds checkpoint-6: pass --resume" in err
    err = _usage_error(["--tiny", "--output-dir", str(out), "--resume", "--max-steps", "6"], capsys)
    assert "already at step 6" in err


def test_help_explains_recipes_defaults_and_launchers():
    result = subprocess.run([sys.executable, "-m", "vlm_helpers.cli", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0
    text = result.stdout
    for expected in ("usage: vlm-train", "--recipe", "--cauldron-subsets", "--resume", "florence2-docvqa",
                     "idefics2-qlora-docvqa", "phi3-aircraft", "torchrun --nproc_per_node",
                     "accelerate launch --multi_gpu", "lr 1e-06", "lr 0.003", "--max-steps, when given, overrides"):
        assert expected in text, expected


def test_validation_stops_at_or_skips_a_bad_row(capsys):
    from types import SimpleNamespace

    import datasets

    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa
    from vlm_helpers.recipes.common import validated as _validated

    rows = make_synthetic_docvqa(4, seed=0).to_list()
    rows[2]["answers"] = []  # what DocVQA's test split looks like
    data = datasets.Dataset.from_list(rows, features=make_synthetic_docvqa(1, seed=0).features)
    env = launch.Distributed()
    with pytest.raises(ValueError, match="row 2.*empty list"):
        _validated(data, "train", SimpleNamespace(skip_bad_rows=False), env)
    kept = _validated(data, "train", SimpleNamespace(skip_bad_rows=True), env)
    assert kept.num_rows == 3 and "skipped 1" in capsys.readouterr().out


def test_phi3_recipe_prompts_and_quantizes_like_notebook_04():
    """The CLI recipe and notebook 04 build the same chat (image first, then the prompt) and store the
    frozen weights in 4-bit on a T4 only (the recipe once put the instruction first and never quantized)."""
    from PIL import Image

    from vlm_helpers import runtime
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.llava_phi3 import default_4bit
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT
    from vlm_helpers.recipes.phi3_aircraft import phi3_aircraft_spec
    from vlm_helpers.tiny import tiny_checkpoint

    spec = phi3_aircraft_spec()
    assert spec.quantize_4bit is None  # -> default_4bit(preset.name), the notebook's rule
    t4 = runtime.choose_preset(runtime.HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True,
                                                       flash_attn_installed=False), "phi3-aircraft")
    a100 = runtime.choose_preset(runtime.HardwareProfile("cuda", "A100", (8, 0), 40.0, on_colab=True,
                                                         flash_attn_installed=False), "phi3-aircraft")
    assert default_4bit(t4.name) and not default_4bit(a100.name)

    processor = load_chat_processor(tiny_checkpoint("llava-phi3"))
    row = {"id": "1", "question": AIRCRAFT_PROMPT, "caption": "boeing 707", "image": Image.new("RGB", (40, 30))}
    recipe = ChatVLMCollator(processor, instruction=spec.instruction, question_key=spec.question_key,
                             answer_key=spec.answer_key, id_key=spec.id_key)
    notebook = ChatVLMCollator(processor, instruction="", question_key="prompt", answer_key="caption", id_key="id")
    assert recipe.prompt_text(row) == notebook.prompt_text({**row, "prompt": AIRCRAFT_PROMPT})
    assert recipe.prompt_text(row).startswith("<|user|>\n<image>\n" + AIRCRAFT_PROMPT)


@pytest.mark.parametrize("argv,batch", [(["--recipe", "florence2-docvqa", "--tiny"], "batch 8 x accumulation 1"),
                                        (["--recipe", "phi3-aircraft", "--tiny", "--batch-size", "3",
                                          "--grad-accum", "2"], "batch 3 x accumulation 2")])
def test_the_preset_line_printed_names_the_batch_that_is_trained(argv, batch, tmp_path):
    """vlm-train once printed the GPU preset's batch 4 and then trained the recipe's batch 8."""
    from vlm_helpers import runtime
    from vlm_helpers.cli import build_parser, resolve_settings

    parser = build_parser()
    settings = resolve_settings(parser.parse_args(argv + ["--output-dir", str(tmp_path / "out"),
                                                          "--results-dir", str(tmp_path / "results")]), parser)
    assert (settings.preset.batch_size, settings.preset.grad_accum) == (settings.batch_size, settings.grad_accum)
    assert batch in runtime.describe(runtime.detect_hardware(), settings.preset)



def test_custom_recipe_in_full_mode_needs_data(monkeypatch_module, tmp_path, capsys):
    err = _usage_error(["--recipe", "custom", "--output-dir", str(tmp_path / "out")], capsys)
    assert "--recipe custom needs --data" in err and "usage: vlm-train" in err


@pytest.mark.parametrize("model", ["llava-phi3", "florence2"])
def test_custom_recipe_trains_on_your_folder_keeps_the_best_and_writes_the_card(model, monkeypatch_module, tmp_path,
                                                                                 capsys):
    """notebook 06 from the command line: captioning on an image folder + JSONL, with a chat model and with
    Florence-2 (its own collator: the prompt alone before the image, no instruction)."""
    from vlm_helpers import model_card
    from vlm_helpers.data.aircraft import AIRCRAFT_PROMPT
    from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

    data = write_synthetic_image_folder(tmp_path / "my data", rows=60, task="captioning")
    out = tmp_path / "custom"
    assert train.main(["--recipe", "custom", "--tiny", "--data", str(data.jsonl), "--task", "captioning",
                       "--model", model, "--image-column", "file_name", "--answer-column", "caption",
                       "--prompt", AIRCRAFT_PROMPT, "--max-steps", "6", "--eval-steps", "2",
                       "--output-dir", str(out), "--results-dir", str(out / "results")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "results" / f"captioning__custom-{model}__finetuned.metrics.json").read_text())
    card = model_card.read_model_card(out / "adapter")
    assert card["metrics_after"]["rouge1"] == pytest.approx(metrics["metrics"]["rouge1"], abs=1e-4)
    assert card["data"]["counts"] == {"train": 48, "validation": 6, "test": 6} and card["data"]["split_seed"] == 42
    assert card["best"]["metric"] == "eval_rouge1" and f"best checkpoint: step {card['best']['step']} of 6" in printed
    assert (out / "best-adapter" / "adapter_config.json").exists()
    assert "no test split given: held out 6 of 60 rows (seed 42)" in printed
    prompt = {"llava-phi3": {"instruction": ""}, "florence2": {"task_prompt": ""}}[model]
    assert {k: card["hyperparameters"].get(k) for k in prompt} == prompt
    from vlm_helpers.model_choices import MODEL_CHOICES

    assert card["front_matter"]["base_model"] == MODEL_CHOICES[model].model_id
    if model == "florence2":  # LoRA on the BART decoder's cross-attention too: the Florence-2 targets were used
        assert "model.language_model.decoder.layers.*.encoder_attn.q_proj" in printed


def test_custom_recipe_names_a_broken_row_by_file_and_line_before_training(monkeypatch_module, tmp_path, capsys):
    """One line naming file:line, exit status 2, no traceback (it was a DataFormatError traceback, exit status 1);
    --debug adds the traceback."""
    from vlm_helpers.tiny.synthetic_your_data import write_synthetic_image_folder

    data = write_synthetic_image_folder(tmp_path / "d", rows=20, broken=("missing_image",))
    (line,) = data.broken["data.jsonl"]
    argv = ["--recipe", "custom", "--tiny", "--data", str(data.jsonl), "--image-column", "file_name",
            "--answer-column", "answers", "--max-steps", "2", "--output-dir", str(tmp_path / "out"),
            "--results-dir", str(tmp_path / "results")]
    err = _one_line_error(argv, capsys)
    assert re.search(rf"data\.jsonl:{line}\] image file not found", err), err
    assert not (tmp_path / "out" / "checkpoint-1").exists()  # stopped before any training step
    err = _usage_error([*argv, "--debug"], capsys)
    assert "Traceback" in err and "DataFormatError" in err
    assert err.splitlines()[-1].startswith("vlm-train: error: [") and f"data.jsonl:{line}]" in err.splitlines()[-1]


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_custom_recipe_under_torchrun_two_processes_agree_on_the_best_checkpoint(cli_env, tmp_path):
    """LLaVA-Phi-3 (LoRA on unquantized weights) captioning under torchrun: the replicas agree, rank 0 keeps
    the best adapter."""
    from vlm_helpers import model_card

    out = tmp_path / "custom-ddp"
    result = _torchrun(["--recipe", "custom", "--tiny", "--model", "llava-phi3", "--task", "captioning",
                        "--max-train-samples", "16", "--max-eval-samples", "2",
                        "--max-steps", "4", "--eval-steps", "2", "--logging-steps", "1", "--write-weight-digests",
                        "--output-dir", str(out), "--results-dir", str(out / "results")], cli_env)
    assert "2 process(es), backend gloo" in result.stdout
    digests = _digests(out)
    assert digests[0]["sha256"] == digests[1]["sha256"], "the replicas ended with different weights"
    card = model_card.read_model_card(out / "adapter")
    assert card["best"]["step"] in (2, 4) and (out / "best-adapter" / "best_checkpoint.json").exists()
    assert card["best"]["metric"] == "eval_rouge1" and card["front_matter"]["base_model"] == "xtuner/llava-phi-3-mini-hf"
