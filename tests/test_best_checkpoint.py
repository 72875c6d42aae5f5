"""Keeping the best checkpoint by the task metric (``train_with_trainer(..., keep_best=..., patience=...)``).

Every run really trains the tiny LLaVA-Phi-3 with LoRA (a few steps, CPU); only the validation metric is
scripted, step by step, so the choice is known in advance: a metric that peaks before the last evaluation,
ties, NaN, early stopping, a resume, two processes. Each evaluation also records the LoRA weights of that
step, so the tests compare the weights loaded at the end with those saved at the winning step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_checks import trainer_values

from vlm_helpers.best_checkpoint import (
    BEST_ADAPTER_DIR,
    CHECKPOINT_COPY,
    METADATA_FILE,
    best_evaluation,
    evaluations_without_improvement,
    is_improvement,
    read_best_metadata,
)
from vlm_helpers.runtime import HardwareProfile, choose_preset

pytest.importorskip("peft")

from peft import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vlm_helpers.checkpoints import latest_trainer_checkpoint  # noqa: E402
from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer  # noqa: E402

CPU = HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False)
PRESET = choose_preset(CPU, "phi3-aircraft", tiny=True)
METRIC = "val_anls"
NAN = float("nan")


@pytest.fixture(scope="session")
def llava_path(tiny_cache):
    from vlm_helpers.tiny import tiny_checkpoint

    return tiny_checkpoint("llava-phi3", tiny_cache)


@pytest.fixture(scope="module")
def train_rows():
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    return [dict(row) for row in make_synthetic_docvqa(8, seed=1)]


def lora_model(path, modules_to_save=None):
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, load_chat_vlm

    model, processor = load_chat_vlm(path, dtype=PRESET.dtype, attn_implementation=PRESET.attn_implementation,
                                     quantize_4bit=False)
    return add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, dropout=0.0, quantized=False,
                    modules_to_save=modules_to_save), processor


class ScriptedMetric:
    """An ``eval_fn`` whose ``val_anls`` at each step is given in advance; it keeps each step's LoRA weights
    (in the format ``adapter_model.safetensors`` stores them)."""

    def __init__(self, model, values: dict[int, float]):
        self.model, self.values, self.weights = model, values, {}

    def __call__(self, step: int) -> dict:
        self.weights[step] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        return {METRIC: self.values[step], "val_levenshtein_similarity": 0.5}


def run(path, rows, output_dir, values, *, max_steps, resume=None, modules_to_save=None, **keep):
    """Train with a scripted metric every 2 steps; return (trainer, history, metric, printed text)."""
    from vlm_helpers.chat_collator import ChatVLMCollator

    model, processor = lora_model(path, modules_to_save)
    metric = ScriptedMetric(model, values)
    save = keep.pop("save_steps", None)
    args = make_training_arguments(**trainer_values(PRESET), output_dir=str(output_dir), learning_rate=1e-2,
                                   max_steps=max_steps, logging_steps=1, save_steps=save, save_total_limit=10,
                                   seed=0, disable_tqdm=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer, history = train_with_trainer(
            model, rows, ChatVLMCollator(processor, instruction="Answer briefly."), args, eval_fn=metric,
            eval_every=2, resume_from_checkpoint=resume, keep_best=METRIC, processor=processor, **keep)
    return trainer, history, metric, printed.getvalue()


def current_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- the rule


def test_the_rule_ties_keep_the_earlier_step_and_nan_never_wins():
    assert is_improvement(0.5, None, greater_is_better=True)
    assert is_improvement(0.6, 0.5, greater_is_better=True) and not is_improvement(0.5, 0.5, greater_is_better=True)
    assert is_improvement(0.4, 0.5, greater_is_better=False) and not is_improvement(0.6, 0.5, greater_is_better=False)
    for bad in (NAN, float("inf"), float("-inf")):
        assert not is_improvement(bad, None, greater_is_better=True)
        assert not is_improvement(bad, 0.1, greater_is_better=False)

    log = [{"step": 1, "loss": 2.0}, {"step": 2, METRIC: NAN}, {"step": 4, METRIC: 0.3}, {"step": 6, METRIC: 0.3},
           {"step": 8, METRIC: NAN}, {"step": 10, METRIC: 0.1}, {"step": 10, "loss": 1.0}]
    assert best_evaluation(log, METRIC, greater_is_better=True) == (4, 0.3)
    assert best_evaluation(log, METRIC, greater_is_better=False) == (10, 0.1)
    assert evaluations_without_improvement(log, METRIC, greater_is_better=True) == 3  # 6 (tie), 8 (NaN), 10
    all_nan = [{"step": 2, METRIC: NAN}, {"step": 4, METRIC: None}]
    assert best_evaluation(all_nan, METRIC, greater_is_better=True) is None
    assert evaluations_without_improvement(all_nan, METRIC, greater_is_better=True) == 2


def test_arguments_that_cannot_work_are_refused_before_training(tmp_path, llava_path):
    args = make_training_arguments(**trainer_values(PRESET), output_dir=str(tmp_path / "run"), max_steps=2)
    model, _ = lora_model(llava_path)
    with pytest.raises(ValueError, match="pass eval_fn and eval_every"):
        train_with_trainer(model, [], None, args, keep_best=METRIC)
    with pytest.raises(ValueError, match="pass keep_best too"):
        train_with_trainer(model, [], None, args, eval_fn=lambda step: {}, eval_every=1, patience=2)
    with pytest.raises(ValueError, match="PEFT model"):
        train_with_trainer(torch.nn.Linear(2, 2), [], None, args, eval_fn=lambda step: {}, eval_every=1,
                           keep_best=METRIC)
    with pytest.raises(ValueError, match="patience must be a whole number >= 1"):
        train_with_trainer(model, [], None, args, eval_fn=lambda step: {}, eval_every=1, keep_best=METRIC,
                           patience=0)
    assert not (tmp_path / "run").exists()


def test_a_fresh_run_into_a_folder_holding_a_best_adapter_is_refused(tmp_path):
    for name in (BEST_ADAPTER_DIR, BEST_ADAPTER_DIR + ".old"):  # .old: a run stopped while swapping the best
        folder = tmp_path / name.replace(".", "-")
        (folder / name).mkdir(parents=True)
        args = make_training_arguments(**trainer_values(PRESET), output_dir=str(folder), max_steps=1)
        with pytest.raises(FileExistsError, match=f"holds {name} from an earlier run"):
            train_with_trainer(None, [], None, args)


# ---------------------------------------------------------------------------------------------- a metric that peaks early


@pytest.fixture(scope="module")
def peaked(llava_path, train_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("peaked") / "run"
    trainer, history, metric, printed = run(llava_path, train_rows, out, {2: 0.2, 4: 0.7, 6: 0.5, 8: 0.4},
                                            max_steps=8)
    return {"out": out, "trainer": trainer, "history": history, "metric": metric, "printed": printed}


def test_the_best_step_is_chosen_by_the_metric_not_the_last_step(peaked):
    history, trainer = peaked["history"], peaked["trainer"]
    assert [r["step"] for r in history] == list(range(1, 9))  # no early stopping asked: all 8 steps
    assert [r["step"] for r in history if METRIC in r] == [2, 4, 6, 8]
    assert [r["step"] for r in history if r.get("best")] == [4]
    assert (trainer.state.best_global_step, trainer.state.best_metric) == (4, 0.7)
    assert trainer.state.best_model_checkpoint == str(peaked["out"] / BEST_ADAPTER_DIR)
    assert "best checkpoint: step 4 of 8, val_anls 0.7000 (best of 4 evaluations)" in peaked["printed"]
    assert "early stopping" not in peaked["printed"]
    assert read_best_metadata(peaked["out"] / BEST_ADAPTER_DIR) == {
        "metric": METRIC, "step": 4, "value": 0.7, "greater_is_better": True}


def test_the_weights_loaded_at_the_end_are_those_saved_at_the_best_step(peaked):
    weights = peaked["metric"].weights
    assert not same(weights[4], weights[8])  # training moved the adapter after the best step
    saved = load_file(peaked["out"] / BEST_ADAPTER_DIR / "adapter_model.safetensors")
    assert same(saved, weights[4])
    assert same(current_weights(peaked["trainer"].model), weights[4])
    folder = peaked["out"] / BEST_ADAPTER_DIR
    assert (folder / "adapter_config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not any(peaked["out"].glob(f"{BEST_ADAPTER_DIR}.*"))  # no staging folder, no old copy left


# ---------------------------------------------------------------------------------------------- early stopping, ties, NaN


def test_early_stopping_after_exactly_patience_evaluations_without_improvement(llava_path, train_rows, tmp_path):
    # 2: best; 4: worse (1); 6: best again, the count starts over; 8: worse (1); 10: a tie, not better (2): stop
    values = {2: 0.3, 4: 0.2, 6: 0.5, 8: 0.4, 10: 0.5, 12: 0.9, 14: 0.95, 16: 1.0}
    trainer, history, metric, printed = run(llava_path, train_rows, tmp_path / "run", values, max_steps=16,
                                            patience=2, save_steps=100)
    assert trainer.state.global_step == 10 and history[-1]["step"] == 10
    assert sorted(metric.weights) == [2, 4, 6, 8, 10]
    assert [r["step"] for r in history if r.get("best")] == [6]
    assert ("early stopping at step 10: val_anls has not improved for 2 evaluations (patience 2); "
            "best: step 6, val_anls 0.5000") in printed
    assert "best checkpoint: step 6 of 10, val_anls 0.5000" in printed
    assert same(current_weights(trainer.model), metric.weights[6])
    assert not same(metric.weights[6], metric.weights[10])
    # the stop writes the run's last checkpoint, which carries the best adapter so far
    checkpoint = latest_trainer_checkpoint(tmp_path / "run")
    assert checkpoint.name == "checkpoint-10"
    assert read_best_metadata(checkpoint.joinpath(*CHECKPOINT_COPY))["step"] == 6


def test_a_nan_metric_never_wins_even_first(llava_path, train_rows, tmp_path):
    # a trained lm_head (modules_to_save, as tiny mode trains) comes back with the LoRA weights
    trainer, history, metric, printed = run(llava_path, train_rows, tmp_path / "run",
                                            {2: NAN, 4: 0.1, 6: NAN, 8: 0.05}, max_steps=8,
                                            modules_to_save=["lm_head"])
    assert [r["step"] for r in history if r.get("best")] == [4]
    assert "best checkpoint: step 4 of 8, val_anls 0.1000" in printed
    assert any("lm_head" in name for name in metric.weights[4])
    assert same(current_weights(trainer.model), metric.weights[4])
    assert not same(metric.weights[4], metric.weights[8])


def test_only_nan_means_no_best_and_patience_still_stops(llava_path, train_rows, tmp_path):
    trainer, history, metric, printed = run(llava_path, train_rows, tmp_path / "run", {2: NAN, 4: NAN, 6: 0.9},
                                            max_steps=6, patience=2)
    assert trainer.state.global_step == 4
    assert "early stopping at step 4: val_anls has not improved for 2 evaluations (patience 2); " \
           "best: none had a finite value" in printed
    assert ("no evaluation gave a finite val_anls (2 evaluations): no best checkpoint, the model keeps the weights "
            "of step 4") in printed
    assert not any(r.get("best") for r in history) and trainer.state.best_global_step is None
    assert not (tmp_path / "run" / BEST_ADAPTER_DIR).exists()
    assert same(current_weights(trainer.model), metric.weights[4])  # the last step's weights, kept
    assert not same(metric.weights[4], metric.weights[2])


def test_an_eval_fn_without_the_metric_is_named(llava_path, train_rows, tmp_path):
    with pytest.raises(KeyError, match=r"keep_best='val_anls', but eval_fn returned \['val_rouge1'\]"):
        from vlm_helpers.chat_collator import ChatVLMCollator

        model, processor = lora_model(llava_path)
        args = make_training_arguments(**trainer_values(PRESET), output_dir=str(tmp_path / "run"), max_steps=2,
                                       disable_tqdm=True)
        train_with_trainer(model, train_rows, ChatVLMCollator(processor, instruction="Answer briefly."), args,
                           eval_fn=lambda step: {"val_rouge1": 0.5}, eval_every=2, keep_best=METRIC)


# ---------------------------------------------------------------------------------------------- resume


def test_a_resumed_run_remembers_the_best_and_the_patience_of_its_checkpoint(llava_path, train_rows, tmp_path):
    out = tmp_path / "run"
    # first run: 2 is best; 4 does not improve (patience count 1, then checkpoint-4); 6 is a new best
    _, _, first, _ = run(llava_path, train_rows, out, {2: 0.6, 4: 0.1, 6: 0.9}, max_steps=6, patience=2,
                         save_steps=4)
    assert read_best_metadata(out / "checkpoint-4" / Path(*CHECKPOINT_COPY))["step"] == 2
    assert read_best_metadata(out / BEST_ADAPTER_DIR)["step"] == 6
    # a crash before checkpoint-6 was complete: best-adapter/ holds step 6, newer than the checkpoint resumed
    shutil.rmtree(out / "checkpoint-6")

    trainer, history, second, printed = run(llava_path, train_rows, out, {6: 0.3, 8: 0.95}, max_steps=12,
                                            patience=2, save_steps=4, resume=True)
    # the checkpoint's best (step 2) and its count (1) came back: step 6 makes 2 without improvement
    assert trainer.state.global_step == 6 and sorted(second.weights) == [6]
    assert "set aside best-adapter/ as best-adapter-step-6-set-aside/" in printed
    assert "best so far: step 2, val_anls 0.6000 (restored from" in printed
    assert "early stopping at step 6" in printed and "best checkpoint: step 2 of 6, val_anls 0.6000" in printed
    assert [r["step"] for r in history if r.get("best")] == [2]
    assert [r["step"] for r in history if METRIC in r] == [2, 4, 6]
    assert same(current_weights(trainer.model), first.weights[2])
    assert same(load_file(out / BEST_ADAPTER_DIR / "adapter_model.safetensors"), first.weights[2])
    # nothing lost: the interrupted run's later best is kept, under another name
    aside = out / "best-adapter-step-6-set-aside"
    assert read_best_metadata(aside)["step"] == 6
    assert same(load_file(aside / "adapter_model.safetensors"), first.weights[6])
    assert read_best_metadata(out / "checkpoint-6" / Path(*CHECKPOINT_COPY))["step"] == 2


# ---------------------------------------------------------------------------------------------- torchrun


DDP_SCRIPT = Path(__file__).with_name("best_checkpoint_ddp.py")


@pytest.mark.slow  # several processes: the multi-process tier (README, "Run the tests")
def test_two_processes_stop_together_and_load_rank_zeros_best(llava_path, tmp_path):
    """torchrun, 2 processes (gloo): eval_fn scores on rank 0 only (as vlm-train's does), both ranks stop at the
    same step, only rank 0 prints, and both end with the weights rank 0 saved at the best step."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(DDP_SCRIPT), str(llava_path), str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["global_step"] for r in ranks] == [8, 8]  # best 4, then 6 and 8 without improvement: stop
    assert [r["best_step"] for r in ranks] == [4, 4]
    saved = load_file(tmp_path / "run" / BEST_ADAPTER_DIR / "adapter_model.safetensors")
    digest = hashlib.sha256(b"".join(saved[k].numpy().tobytes() for k in sorted(saved))).hexdigest()
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == digest == ranks[0]["step4_sha256"]
    assert result.stdout.count("early stopping at step 8") == 1
    assert result.stdout.count("best checkpoint: step 4 of 8") == 1
    assert math.isclose(json.loads((tmp_path / "run" / BEST_ADAPTER_DIR / METADATA_FILE).read_text())["value"], 0.6)


def test_the_last_step_is_evaluated_even_off_the_evaluation_grid(llava_path, train_rows, tmp_path):
    """5 steps, an evaluation every 2: steps 2, 4 and the final 5 are scored, and the final weights can win."""
    trainer, history, metric, printed = run(llava_path, train_rows, tmp_path / "run", {2: 0.1, 4: 0.2, 5: 0.3},
                                            max_steps=5)
    assert sorted(metric.weights) == [2, 4, 5]
    assert "best checkpoint: step 5 of 5" in printed
    assert same(current_weights(trainer.model), metric.weights[5])
