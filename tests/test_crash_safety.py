"""Hours of training never lost: kills mid-checkpoint, NaN/inf steps, text the model reserves,
and nothing a user made overwritten.

Each test reproduces a failure found by trying the helpers and ``vlm-train`` as a careful user
would (a real SIGKILL while a checkpoint is being written, a gradient that turns NaN, a question
holding ``<image>``) and checks what happens now.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_checks import trainer_values

from vlm_helpers import checkpoints, florence2, freezing, loop, supervision
from vlm_helpers import cli as train
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa
from vlm_helpers.data.validation import DataValidationError, validate_dataset
from vlm_helpers.supervision import reserved_text
from vlm_helpers.checkpoints import latest_trainer_checkpoint, trainer_checkpoint_problem
from vlm_helpers.runtime import HardwareProfile, choose_preset, override

CPU = HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False)

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--tiny", "--max-train-samples", "16", "--max-eval-samples", "2", "--logging-steps", "100",
         "--batch-size", "4"]

# A vlm-train run whose N-th checkpoint write stops half-way (the file cut in two, as a kill leaves
# it) and then waits to be killed; MARKER is created when that point is reached.
_KILLED_MID_WRITE = r"""
import sys, time
from pathlib import Path
target, marker = sys.argv[1], Path(sys.argv[2])

def stop_here(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    marker.touch()
    time.sleep(600)

if sys.argv[3] == "loop":
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if str(f).replace("\\", "/").endswith(target):
            stop_here(f)
    torch.save = save
else:
    from transformers.trainer_callback import TrainerState
    real_save_to_json = TrainerState.save_to_json
    def save_to_json(self, json_path):
        real_save_to_json(self, json_path)
        if str(json_path).replace("\\", "/").endswith(target):
            stop_here(json_path)
    TrainerState.save_to_json = save_to_json

from vlm_helpers.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _env(cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", VLM_CACHE=str(cache),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.pop("VLM_TINY", None)
    return env


def _kill_during_checkpoint(kind: str, target: str, argv: list[str], env: dict, tmp_path: Path) -> None:
    """Start vlm-train, wait until it is inside the checkpoint write, then SIGKILL it."""
    marker = tmp_path / "inside-checkpoint-write"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_MID_WRITE, target, str(marker), kind, *argv],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"never reached the checkpoint write:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def _cli(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm_helpers.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ kills while writing a checkpoint


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_sigkill_during_a_loop_checkpoint_then_fresh_run_refuses_and_resume_continues(tiny_cache, tmp_path):
    env = _env(tiny_cache)
    out = tmp_path / "run"
    argv = [*SMALL, "--max-steps", "3", "--checkpoint-every", "1", "--output-dir", str(out),
            "--results-dir", str(tmp_path / "results")]
    _kill_during_checkpoint("loop", "checkpoint-2.tmp/training_state.pt", argv, env, tmp_path)
    assert (out / "checkpoint-2.tmp").is_dir()  # the staging folder the kill left behind
    assert [p.name for p in checkpoints.checkpoint_dirs(out)] == ["checkpoint-1"]

    before = _tree(out)
    fresh = _cli(argv, env)
    assert fresh.returncode == 2, fresh.stderr[-2000:]
    assert "Traceback" not in fresh.stderr and "invalid literal" not in fresh.stderr
    assert "checkpoint-1" in fresh.stderr and "--resume" in fresh.stderr
    assert _tree(out) == before  # nothing touched

    resumed = _cli([*argv, "--resume"], env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "checkpoint-2.tmp" in resumed.stdout + resumed.stderr  # reported when it was removed
    assert not (out / "checkpoint-2.tmp").exists()
    assert [p.name for p in checkpoints.checkpoint_dirs(out)] == ["checkpoint-2", "checkpoint-3"]
    history = loop.load_history(out / "history.json")
    assert [r["step"] for r in history] == [1, 2, 3]


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_sigkill_before_the_first_checkpoint_completes_refuses_a_fresh_run_cleanly(tiny_cache, tmp_path):
    env = _env(tiny_cache)
    out = tmp_path / "run"
    argv = [*SMALL, "--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(out),
            "--results-dir", str(tmp_path / "results")]
    _kill_during_checkpoint("loop", "checkpoint-1.tmp/training_state.pt", argv, env, tmp_path)
    for extra in ([], ["--resume"]):
        result = _cli([*argv, *extra], env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "checkpoint-1.tmp" in result.stderr and "complete checkpoint" in result.stderr
    assert (out / "checkpoint-1.tmp").is_dir()


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_sigkill_during_a_trainer_checkpoint_resumes_from_the_previous_complete_one(tiny_cache, tmp_path):
    env = _env(tiny_cache)
    out = tmp_path / "run"
    argv = ["--recipe", "phi3-aircraft", "--tiny", "--max-train-samples", "8", "--max-eval-samples", "2",
            "--batch-size", "2", "--checkpoint-every", "2", "--keep-checkpoints", "3", "--logging-steps", "100",
            "--output-dir", str(out), "--results-dir", str(tmp_path / "results")]
    _kill_during_checkpoint("trainer", "checkpoint-4/trainer_state.json", [*argv, "--max-steps", "4"], env,
                            tmp_path)
    assert "cut short" in trainer_checkpoint_problem(out / "checkpoint-4")
    assert latest_trainer_checkpoint(out).name == "checkpoint-2"

    resumed = _cli([*argv, "--max-steps", "4", "--resume"], env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "checkpoint-2" in resumed.stdout
    assert (out / "incomplete-checkpoint-4" / "trainer_state.json").is_file()  # kept for inspection
    assert latest_trainer_checkpoint(out).name == "checkpoint-4"
    history = loop.load_history(out / "history.json")
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in history)


# ------------------------------------------------------------------ non-finite steps, explicit loop


@pytest.fixture(scope="module")
def rows():
    return [dict(r) for r in make_synthetic_docvqa(16, seed=5)]


def _poison(model, *, at_calls: set[int], where: str):
    """From now on, the n-th backward (n in ``at_calls``) gets a NaN gradient (``where="grad"``),
    or the n-th forward a NaN loss (``where="loss"``: the logits become NaN)."""
    calls = {"n": 0}
    if where == "grad":
        param = next(p for p in model.parameters() if p.requires_grad)

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] in at_calls else grad

        param.register_hook(hook)
    else:
        head = model.get_output_embeddings()

        def forward_hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] in at_calls:
                    return output * float("nan")
            return output

        head.register_forward_hook(forward_hook)


def _loop_run(path, rows, out, *, dtype="float32", at_calls, where, max_skipped=10, max_steps=4):
    model, processor = florence2.load_florence2(path, dtype=torch.float32)
    freezing.freeze(*florence2.florence2_vision_modules(model))
    _poison(model, at_calls=at_calls, where=where)
    config = loop.TrainConfig(output_dir=str(out), learning_rate=1e-3, max_steps=max_steps, batch_size=4,
                                  checkpoint_every=1, keep_checkpoints=10, progress=False, dtype=dtype,
                                  max_skipped_steps=max_skipped)
    collator = florence2.Florence2Collator(processor)
    return model, loop.train(model, rows, collator, config)


def _saved_trainable(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / checkpoints.CHECKPOINT_FILE, map_location="cpu", weights_only=False)["trainable"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nan_gradient_is_skipped_before_the_update(tiny_florence2_path, rows, tmp_path, dtype):
    model, state = _loop_run(tiny_florence2_path, rows, tmp_path, dtype=dtype, at_calls={2}, where="grad")
    assert state.step == 4 and state.skipped_steps == [2]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = {p.name: _saved_trainable(p) for p in checkpoints.checkpoint_dirs(tmp_path)}
    assert list(saved) == [f"checkpoint-{n}" for n in range(1, 5)]
    assert all(torch.isfinite(t).all() for weights in saved.values() for t in weights.values())
    # step 2 was not applied: its checkpoint holds exactly the weights of step 1
    assert all(torch.equal(saved["checkpoint-1"][k], saved["checkpoint-2"][k]) for k in saved["checkpoint-1"])
    assert any(not torch.equal(saved["checkpoint-2"][k], saved["checkpoint-3"][k]) for k in saved["checkpoint-2"])
    history = json.loads((tmp_path / "history.json").read_text())  # strict JSON: no NaN literal
    skipped = [r for r in history if "skipped" in r]
    assert [r["step"] for r in skipped] == [2]
    assert "gradient norm" in skipped[0]["skipped"] and skipped[0]["grad_norm"] is None
    assert math.isfinite(skipped[0]["loss"])  # the loss itself was fine


def test_nan_loss_is_skipped_and_too_many_stop_training(tiny_florence2_path, rows, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError,
                       match=r"steps had a NaN/inf loss .*steps 2, 3\b.*checkpoint-2\) holds finite"):
        _loop_run(tiny_florence2_path, rows, out, at_calls={2, 3, 4}, where="loss", max_skipped=1)
    history = json.loads((out / "history.json").read_text())
    assert [(r["step"], r["loss"] is None, "non-finite loss" in r.get("skipped", "")) for r in history] == [
        (1, False, False), (2, True, True), (3, True, True)]
    for checkpoint in checkpoints.checkpoint_dirs(out):
        assert all(torch.isfinite(t).all() for t in _saved_trainable(checkpoint).values())


# ------------------------------------------------------------------ non-finite steps, HF Trainer


def test_trainer_nan_loss_is_skipped_and_the_adapter_stays_finite(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, load_chat_vlm
    from vlm_helpers.adapters import save_adapter
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer
    from vlm_helpers.tiny import tiny_checkpoint

    preset = override(choose_preset(CPU, "phi3-aircraft", tiny=True), batch_size=4, grad_accum=1)
    model, processor = load_chat_vlm(tiny_checkpoint("llava-phi3", tiny_cache), dtype=preset.dtype, attn_implementation=preset.attn_implementation, quantize_4bit=False)
    model = add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, dropout=0.0, quantized=False)
    _poison(model, at_calls={2}, where="loss")
    collator = ChatVLMCollator(processor, instruction="Answer briefly.")
    train_rows = [dict(r) for r in make_synthetic_docvqa(8, seed=1)]
    args = make_training_arguments(**trainer_values(preset), output_dir=str(tmp_path / "run"), learning_rate=1e-3, max_steps=4,
                                   logging_steps=2, save_steps=1, save_total_limit=10, seed=0, disable_tqdm=True)
    _, history = train_with_trainer(model, train_rows, collator, args)

    loop.save_history(history, tmp_path / "history.json")  # what vlm-train and results/ store
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert history[1]["loss"] is None and "non-finite loss" in history[1]["skipped"]
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(history) if i != 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for step in range(1, 5):
        weights = load_file(tmp_path / "run" / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert weights and all(torch.isfinite(t).all() for t in weights.values())
    adapter = save_adapter(model, processor, tmp_path / "adapter")
    assert all(torch.isfinite(t).all() for t in load_file(adapter / "adapter_model.safetensors").values())
    # step 2 was not applied: the adapters of checkpoints 1 and 2 are the same
    one, two = (load_file(tmp_path / "run" / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert all(torch.equal(one[k], two[k]) for k in one)


# ------------------------------------------------------------------ text the model reserves


def _image() -> Image.Image:
    return Image.new("RGB", (32, 24), (250, 250, 250))


@pytest.mark.parametrize("family,question_token,answer_token", [
    ("florence2", "<OCR>", "</s>"),
    ("idefics2", "<image>", "<end_of_utterance>"),
    ("llava-phi3", "<image>", "<|end|>"),
])
def test_reserved_tokens_are_refused_before_training_and_by_the_collator(tiny_cache, family, question_token,
                                                                         answer_token):
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.tiny import tiny_checkpoint

    path = tiny_checkpoint(family, tiny_cache)
    processor = florence2.load_florence2(path, dtype=torch.float32)[1] if family == "florence2" else load_chat_processor(path)
    assert question_token in reserved_text(processor).kinds and answer_token in reserved_text(processor).kinds
    good = {"questionId": 1, "question": "What is the total?", "answers": ["12"], "image": _image()}
    bad_question = dict(good, questionId=2, question=f"What does {question_token} show?")
    bad_answer = dict(good, questionId=3, answers=[f"12{answer_token} and more"])
    data = [good, bad_question, bad_answer]

    with pytest.raises(DataValidationError, match=rf"split='train', row 1, questionId=2\] question .*"
                                                  rf"{__import__('re').escape(repr(question_token))}"):
        validate_dataset(data, split="train", processor=processor)
    kept, report = validate_dataset(data, split="train", on_bad="skip", processor=processor)
    assert [r["questionId"] for r in kept] == [1]
    assert [(row.index, row.id) for row in report.skipped_rows] == [(1, 2), (2, 3)]
    assert "answers[0] contains" in report.skipped_rows[1].reason and "row 2 (questionId=3)" in str(report)
    assert validate_dataset(data[:1], split="train", processor=processor)[1].kept == 1  # plain text passes

    collator = (florence2.Florence2Collator(processor) if family == "florence2"
                else ChatVLMCollator(processor, instruction="Answer briefly."))
    collator([good])  # builds
    for row in (bad_question, bad_answer):
        with pytest.raises(ValueError, match=rf"row 1 of the batch \(questionId={row['questionId']}\)"):
            collator([good, row])


def test_florence2_collator_refuses_an_answer_too_long_instead_of_cutting_it(tiny_florence2_path):
    _, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    row = {"questionId": 7, "question": "What is written?", "answers": ["word " * 80], "image": _image()}
    with pytest.raises(ValueError, match=r"questionId=7.*max_answer_tokens=64"):
        florence2.Florence2Collator(processor)([row])


# ------------------------------------------------------------------ nothing the user made is overwritten


def test_fresh_loop_run_refuses_a_folder_holding_a_final_model(tiny_florence2_path, rows, tmp_path):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_bytes(b"the user's fine-tuned model")
    (out / "history.json").write_text("[]")
    model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    config = loop.TrainConfig(output_dir=str(out), max_steps=1, batch_size=4, progress=False)
    with pytest.raises(FileExistsError, match=r"holds final from an earlier run; nothing was changed"):
        loop.train(model, rows, florence2.Florence2Collator(processor), config)
    assert (out / "final" / "model.safetensors").read_bytes() == b"the user's fine-tuned model"
    assert (out / "history.json").read_text() == "[]"


@pytest.mark.parametrize("recipe,result", [("florence2-docvqa", "final"), ("phi3-aircraft", "adapter")])
def test_cli_refuses_an_output_dir_holding_a_finished_run(recipe, result, tmp_path, capsys):
    out = tmp_path / "run"
    (out / result).mkdir(parents=True)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--recipe", recipe, "--tiny", "--output-dir", str(out), "--results-dir", str(tmp_path / "r")])
    assert stopped.value.code == 2
    assert f"{result}/" in capsys.readouterr().err
    assert not (out / "run_settings.json").exists()


def test_trainer_refuses_a_folder_holding_an_adapter(tmp_path):
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer

    (tmp_path / "adapter").mkdir()
    args = make_training_arguments(**trainer_values(choose_preset(CPU, "phi3-aircraft", tiny=True)),
                                   output_dir=str(tmp_path), max_steps=1)
    with pytest.raises(FileExistsError, match="holds adapter from an earlier run"):
        train_with_trainer(None, [], None, args)


def test_cli_refuses_to_replace_a_notebooks_fine_tuned_results_before_training(tmp_path, capsys):
    from vlm_helpers import results

    results.write_run(tmp_path / "results", task="docvqa", model="florence2", stage="finetuned", mode="tiny",
                      notebook="02", metrics={"anls": 0.5}, records=[])
    before = _tree(tmp_path / "results")
    with pytest.raises(SystemExit) as stopped:
        train.main(["--tiny", "--output-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "docvqa__florence2__finetuned" in error and "--replace-results" in error
    assert _tree(tmp_path / "results") == before and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ found by review


def test_florence2_collator_draws_only_among_answers_that_fit(tiny_florence2_path):
    _, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    row = {"questionId": 9, "question": "What is the total?", "answers": ["12", "word " * 80], "image": _image()}
    for seed in range(6):  # a random draw of the long alternative would stop a run at this batch
        batch = florence2.Florence2Collator(processor, answer_choice="random", seed=seed)([row])
        assert supervision.supervised_text(batch["labels"][0], processor.tokenizer) == "<s>12</s>"


def test_trainer_history_is_strict_json_and_skips_count_across_a_resume():
    from types import SimpleNamespace

    from vlm_helpers.hf_trainer import _NonFiniteGuard
    from vlm_helpers.history import history_from_log

    log = [{"step": 1, "step_loss": 2.0}, {"step": 2, "step_loss": None, "skipped": "non-finite loss (nan): x"},
           {"step": 2, "loss": 1.5, "grad_norm": float("nan"), "learning_rate": 0.1},
           {"step": 3, "step_loss": 1.0, "skipped": "fp16 overflow (non-finite gradient norm): y"}]
    history = history_from_log(log)
    assert history[1] == {"step": 2, "loss": None, "skipped": "non-finite loss (nan): x", "grad_norm": None,
                          "lr": 0.1}
    json.dumps(history, allow_nan=False)
    guard = _NonFiniteGuard(max_skipped=1, fp16=True)
    guard.callback().on_train_begin(None, SimpleNamespace(log_history=log), None)
    assert guard.skipped_steps == [2]  # the earlier run's skip counts; the fp16 overflow does not


def test_results_history_with_nan_is_written_as_null(tmp_path):
    from vlm_helpers import results

    results.write_run(tmp_path, task="docvqa", model="m", stage="finetuned", mode="tiny", notebook="02",
                      metrics={"anls": 0.1}, records=[], history=[{"step": 1, "loss": float("nan")}])
    assert json.loads((tmp_path / "docvqa__m__finetuned.history.json").read_text()) == [{"step": 1, "loss": None}]


def test_resume_names_a_corrupt_checkpoint_and_accepts_the_state_file(tiny_florence2_path, rows, tmp_path):
    _loop_run(tiny_florence2_path, rows, tmp_path, at_calls=set(), where="grad", max_steps=2)
    state_file = tmp_path / "checkpoint-2" / checkpoints.CHECKPOINT_FILE
    state_file.write_bytes(state_file.read_bytes()[:1000])  # a disk that filled up
    model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    freezing.freeze(*florence2.florence2_vision_modules(model))  # as the run that wrote the checkpoints
    config = loop.TrainConfig(output_dir=str(tmp_path), max_steps=3, batch_size=4, progress=False)
    collator = florence2.Florence2Collator(processor)
    with pytest.raises(ValueError, match=r"checkpoint-2/training_state.pt cannot be read.*older checkpoint"):
        loop.train(model, rows, collator, config, resume_from="latest")
    state = loop.train(model, rows, collator, config,
                           resume_from=tmp_path / "checkpoint-1" / checkpoints.CHECKPOINT_FILE)
    assert state.step == 3


def test_fp16_overflow_every_step_is_counted_once_the_scale_reaches_one(tiny_florence2_path, rows, tmp_path):
    # a NaN gradient with a finite loss is a routine overflow for the GradScaler, but not forever:
    # from 65536 the scale halves to 1 after 16 overflows; from then on the steps count
    with pytest.raises(FloatingPointError, match="2 steps had a NaN/inf loss or gradient"):
        _loop_run(tiny_florence2_path, rows, tmp_path, dtype="float16", at_calls=set(range(1, 40)), where="grad",
                  max_skipped=1, max_steps=30)
    history = json.loads((tmp_path / "history.json").read_text())
    overflows = [r for r in history if r.get("skipped", "").startswith("fp16 overflow")]
    assert len(overflows) == 16 and len(history) == 18
