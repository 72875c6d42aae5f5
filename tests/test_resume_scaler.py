"""A resumed fp16 run continues with the gradient scaler's state, not a fresh 65,536.

On a T4 the series trains in fp16 with a ``GradScaler``. A run that has already lowered its scale
(its gradients overflow fp16 at the starting 65,536) and is then resumed without the scaler's state
starts again at 65,536, and skips its first updates for overflow until the scale is low again; its
losses and weights part from the uninterrupted run's, and nothing tells the user.

Here both training paths run fp16 for real on the CPU (autocast in float16, a ``GradScaler("cpu")``),
with two stand-ins, both *simulated*:

- the overflow: a gradient hook makes one trainable weight's gradient infinite whenever the loss scale
  is above 8,192, as the fp16 range would for a model whose largest gradient is about 8; so the first
  three steps overflow (65,536 -> 32,768 -> 16,384 -> 8,192), and every growth back to 16,384 does too;
- the growth interval: the scaler doubles its scale after 3 steps without overflow instead of 2,000, so
  that its growth tracker (steps since the last overflow) decides a step within a short run.

The HF Trainer path needs one more: accelerate gives a ``GradScaler`` only on accelerators (its
``Accelerator`` skips fp16 on ``cpu``), so the test builds the same scaler accelerate would (its
``get_grad_scaler``, on ``cpu``) and turns on its autocast, *simulating* a GPU's fp16 set-up.
The Trainer saves that scaler as ``scaler.pt`` in each checkpoint and restores it on resume
(``Trainer._save_scaler`` / ``_load_scaler``); the package's part is resuming through it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vlm_helpers import checkpoints, florence2, freezing, loop

pytestmark = pytest.mark.slow  # the simulated-GPU tier: a T4's fp16 grad scaler across a resume (README, "Run the tests"): `python -m pytest -m slow`

OVERFLOW_ABOVE = 8192.0  # simulated: gradients overflow fp16 at any loss scale above this
GROWTH_INTERVAL = 3  # simulated: the scaler grows after 3 good steps (torch's default: 2000)
_RealGradScaler = torch.amp.GradScaler


class _RecordedScaler(_RealGradScaler):
    """The GradScaler the code under test builds, with a short growth interval, remembered for the hook."""

    made: list = []

    def __init__(self, device: str = "cuda", **kwargs):
        kwargs.setdefault("growth_interval", GROWTH_INTERVAL)
        super().__init__(device, **kwargs)
        _RecordedScaler.made.append(self)


def _simulate_overflow(model, seen: list[float]) -> None:
    """Make the first trainable weight's gradient infinite while the current scale is above OVERFLOW_ABOVE;
    record the scale of every backward pass."""
    param = next(p for p in model.parameters() if p.requires_grad)

    def hook(grad):
        scale = _RecordedScaler.made[-1].get_scale()
        seen.append(scale)
        return torch.full_like(grad, float("inf")) if scale > OVERFLOW_ABOVE else grad

    param.register_hook(hook)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _skipped(history: list[dict]) -> list[int]:
    return [record["step"] for record in history if str(record.get("skipped", "")).startswith("fp16 overflow")]


# ------------------------------------------------------------------ the explicit loop (notebook 02, vlm-train)


@pytest.fixture()
def recorded_scaler(monkeypatch):
    _RecordedScaler.made = []
    monkeypatch.setattr(torch.amp, "GradScaler", _RecordedScaler)
    return _RecordedScaler


def _loop_run(path, rows, out: Path, *, max_steps: int, resume=None):
    model, processor = florence2.load_florence2(path, dtype=torch.float32)  # fp32 weights, fp16 autocast
    freezing.freeze(*florence2.florence2_vision_modules(model))
    seen: list[float] = []
    _simulate_overflow(model, seen)
    config = loop.TrainConfig(output_dir=str(out), learning_rate=2e-3, max_steps=max_steps, batch_size=4,
                              warmup_steps=2, checkpoint_every=5, keep_checkpoints=10, dtype="float16",
                              progress=False)
    state = loop.train(model, rows, florence2.Florence2Collator(processor, answer_choice="random"), config,
                       resume_from=resume)
    return model, state, seen, _RecordedScaler.made[-1].state_dict()


def test_loop_resume_keeps_the_lowered_fp16_scale_and_repeats_the_uninterrupted_run(
        tiny_florence2_path, recorded_scaler, tmp_path):
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    rows = [dict(r) for r in make_synthetic_docvqa(16, seed=7)]  # 4 steps per epoch: step 5 is in epoch 2
    straight_model, straight, straight_seen, straight_scaler = _loop_run(tiny_florence2_path, rows,
                                                                         tmp_path / "straight", max_steps=9)
    assert straight_seen == [65536.0, 32768.0, 16384.0, 8192.0, 8192.0, 8192.0, 16384.0, 8192.0, 8192.0]
    assert _skipped(straight.history) == [1, 2, 3, 7]

    # the checkpoint of step 5 holds the lowered scale and 2 steps without overflow
    saved = torch.load(tmp_path / "straight" / "checkpoint-5" / checkpoints.CHECKPOINT_FILE, weights_only=False)
    assert (saved["scaler"]["scale"], saved["scaler"]["_growth_tracker"]) == (8192.0, 2)

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-5", resumed_dir / "checkpoint-5")
    resumed_model, resumed, resumed_seen, resumed_scaler = _loop_run(tiny_florence2_path, rows, resumed_dir,
                                                                     max_steps=9, resume="latest")
    # the same scale at every resumed step (step 6 at 8192; growth after 3 good steps; overflow at step 7)
    assert resumed_seen == straight_seen[5:]
    assert resumed_scaler == straight_scaler  # scale and growth tracker
    assert _skipped(resumed.history) == _skipped(straight.history)
    losses = [record["loss"] for record in straight.history]
    assert [record["loss"] for record in resumed.history] == pytest.approx(losses, rel=1e-5)
    weights, again = _trainable(straight_model), _trainable(resumed_model)
    assert weights.keys() == again.keys()
    assert all(torch.allclose(weights[name], again[name], rtol=0, atol=1e-6) for name in weights)


# ------------------------------------------------------------------ the HF Trainer (notebooks 03, 04, 06)


@pytest.fixture()
def simulated_gpu_scaler(monkeypatch):
    """accelerate's fp16 set-up on a GPU, on the CPU (simulated): autocast in float16 and the GradScaler
    accelerate's ``get_grad_scaler`` would build, here for ``cpu``, with the short growth interval."""
    from transformers import Trainer

    _RecordedScaler.made = []
    build = Trainer.create_accelerator_and_postprocess

    def with_scaler(self):
        build(self)
        if self.args.fp16 and self.accelerator.scaler is None:  # None on cpu: accelerate skips fp16 there
            self.accelerator.native_amp = True  # prepare_model then wraps forward in fp16 autocast
            self.accelerator.scaler = _RecordedScaler("cpu")

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", with_scaler)


def _trainer_run(path, out: Path, *, max_steps: int, resume=None):
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, load_chat_vlm
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    model, processor = load_chat_vlm(path, dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    # LoRA dropout as in full mode: the resumed steps draw the same masks only if the RNG state comes back
    model = add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, dropout=0.1, quantized=False)
    seen: list[float] = []
    _simulate_overflow(model, seen)
    dtypes = set()
    model.get_output_embeddings().register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    rows = [dict(r) for r in make_synthetic_docvqa(8, seed=1)]
    args = make_training_arguments(output_dir=str(out), batch_size=4, grad_accum=1, dtype="float16",
                                   learning_rate=1e-3, warmup_steps=1, max_steps=max_steps, logging_steps=1,
                                   save_steps=5, save_total_limit=10, seed=0, disable_tqdm=True)
    trainer, history = train_with_trainer(model, rows, ChatVLMCollator(processor, instruction="Answer briefly."),
                                          args, resume_from_checkpoint=resume)
    assert dtypes == {torch.float16}  # the forward ran under fp16 autocast
    return model, history, seen, trainer.accelerator.scaler.state_dict()


def test_trainer_resume_keeps_the_lowered_fp16_scale_and_repeats_the_uninterrupted_run(
        tiny_cache, simulated_gpu_scaler, tmp_path, capsys):
    from vlm_helpers.tiny import tiny_checkpoint

    path = tiny_checkpoint("llava-phi3", tiny_cache)
    straight_model, straight, straight_seen, straight_scaler = _trainer_run(path, tmp_path / "straight", max_steps=9)
    assert straight_seen == [65536.0, 32768.0, 16384.0, 8192.0, 8192.0, 8192.0, 16384.0, 8192.0, 8192.0]
    assert _skipped(straight) == [1, 2, 3, 7]
    saved = torch.load(tmp_path / "straight" / "checkpoint-5" / "scaler.pt", weights_only=True)
    assert (saved["scale"], saved["_growth_tracker"]) == (8192.0, 2)

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-5", resumed_dir / "checkpoint-5")
    resumed_model, resumed, resumed_seen, resumed_scaler = _trainer_run(path, resumed_dir, max_steps=9,
                                                                        resume=True)
    capsys.readouterr()  # the Trainer's log tables
    assert resumed_seen == straight_seen[5:]
    assert resumed_scaler == straight_scaler
    assert _skipped(resumed) == _skipped(straight)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 10))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    weights, again = _trainable(straight_model), _trainable(resumed_model)
    assert weights.keys() == again.keys()
    assert all(torch.allclose(weights[name], again[name], rtol=0, atol=1e-6) for name in weights)
