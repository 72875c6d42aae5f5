"""Florence-2 on the tiny model: freezing, label masking, exact resume, accumulation."""

from __future__ import annotations

import pytest
import torch

from vlm_helpers import checkpoints, florence2, freezing, loop, supervision
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa


@pytest.fixture(scope="module")
def rows():
    return [dict(r) for r in make_synthetic_docvqa(24, seed=3)]


@pytest.fixture()
def model_and_processor(tiny_florence2_path):
    return florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)


def test_blog_freezing_freezes_nothing_and_requires_grad_does(model_and_processor):
    model, _ = model_and_processor
    before = freezing.count_parameters(model)
    vision = florence2.florence2_vision_modules(model)[0]
    for param in vision.parameters():
        param.is_trainable = False  # the blog's line: a new attribute that nobody reads
    assert freezing.count_parameters(model).trainable == before.trainable
    frozen = freezing.freeze(vision)
    after = freezing.count_parameters(model)
    assert frozen == sum(p.numel() for p in vision.parameters()) > 0
    assert after.trainable == before.trainable - frozen


def test_frozen_vision_tower_gets_no_gradient_and_does_not_move(model_and_processor, rows):
    model, processor = model_and_processor
    vision = florence2.florence2_vision_modules(model)[0]
    freezing.freeze(vision)
    vision_before = {n: p.detach().clone() for n, p in vision.named_parameters()}
    decoder = model.model.language_model.decoder
    decoder_before = {n: p.detach().clone() for n, p in decoder.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = florence2.Florence2Collator(processor)(rows[:4])
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is None for p in vision.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    optimizer.step()
    assert all(torch.equal(p, vision_before[n]) for n, p in vision.named_parameters())
    changed = [n for n, p in decoder.named_parameters() if not torch.equal(p, decoder_before[n])]
    assert len(changed) > len(decoder_before) // 2


def test_labels_mask_padding_and_supervise_start_answer_and_end_token(model_and_processor, rows):
    _, processor = model_and_processor
    collate = florence2.Florence2Collator(processor)
    batch = collate(rows[:6])
    tokenizer = processor.tokenizer
    lengths = set()
    for row, labels in zip(rows[:6], batch["labels"]):
        supervised = labels[labels != supervision.IGNORE_INDEX]
        lengths.add(len(supervised))
        # every supervised position comes first, the rest is -100 (right padding)
        assert torch.all(labels[: len(supervised)] != supervision.IGNORE_INDEX)
        assert torch.all(labels[len(supervised):] == supervision.IGNORE_INDEX)
        assert tokenizer.pad_token_id not in supervised.tolist()
        assert supervision.supervised_text(labels, tokenizer) == tokenizer.bos_token + row["answers"][0] + tokenizer.eos_token
    assert len(lengths) > 1, "the sample should mix answer lengths so that padding exists"
    shown = supervision.format_supervision(batch["labels"][0], batch["labels"][0], tokenizer)
    assert "[</s>]" in shown and shown.startswith("[<s>]")


def test_training_decoder_prefix_is_the_one_generation_forces(model_and_processor, rows):
    """The decoder reads shift_right(labels) in training and [decoder_start, forced_bos, ...] when
    generating (the real generation config forces <s>): the first answer token must sit at the same
    position in both. Labels without <s> (the old collator) put it one position earlier."""
    from transformers.models.bart.modeling_bart import shift_tokens_right

    model, processor = model_and_processor
    real = {"forced_bos_token_id": 0}  # florence-community/Florence-2-base-ft's generation_config.json
    assert real["forced_bos_token_id"] == processor.tokenizer.bos_token_id
    # the tiny checkpoint generates with the real generation config
    assert model.generation_config.forced_bos_token_id == real["forced_bos_token_id"]
    labels = florence2.Florence2Collator(processor)(rows[:2])["labels"]
    start = model.config.text_config.decoder_start_token_id
    decoder_inputs = shift_tokens_right(labels, model.config.text_config.pad_token_id, start)
    assert decoder_inputs[:, :2].tolist() == [[start, real["forced_bos_token_id"]]] * 2
    # and generation really starts that way
    inputs = florence2.Florence2Collator(processor).generation_inputs(rows[:1])
    generated = model.generate(**inputs, max_new_tokens=3, num_beams=1, do_sample=False)
    assert generated[0, :2].tolist() == [start, real["forced_bos_token_id"]]


def test_collator_refuses_a_row_without_answers(model_and_processor, rows):
    _, processor = model_and_processor
    broken = dict(rows[0], answers=[], questionId=4242)
    with pytest.raises(ValueError, match="4242"):
        florence2.Florence2Collator(processor)([rows[1], broken])


def _run(path, rows, output_dir, *, max_steps, resume=None, batch_size=4, grad_accum=1, checkpoint_every=2,
         dtype="float32"):
    model, processor = florence2.load_florence2(path, dtype=torch.float32)
    freezing.freeze(*florence2.florence2_vision_modules(model))
    config = loop.TrainConfig(output_dir=str(output_dir), learning_rate=2e-3, max_steps=max_steps,
                                  batch_size=batch_size, grad_accum=grad_accum, warmup_steps=2,
                                  checkpoint_every=checkpoint_every, keep_checkpoints=10, progress=False, dtype=dtype)
    state = loop.train(model, rows, florence2.Florence2Collator(processor, answer_choice="random"), config,
                           resume_from=resume)
    return model, [h["loss"] for h in state.history]


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # float16: autocast + GradScaler state (CPU autocast)
def test_resume_continues_the_same_loss_curve(tiny_florence2_path, rows, tmp_path, dtype):
    # 24 rows / batch 4 = 6 batches per epoch: 8 steps cross an epoch boundary
    _, straight = _run(tiny_florence2_path, rows, tmp_path / "straight", max_steps=8, dtype=dtype)
    _run(tiny_florence2_path, rows, tmp_path / "interrupted", max_steps=8, checkpoint_every=3, dtype=dtype)
    # pretend the run died after step 3: keep only that checkpoint, then resume from it
    for ckpt in checkpoints.checkpoint_dirs(tmp_path / "interrupted"):
        if ckpt.name != "checkpoint-3":
            import shutil
            shutil.rmtree(ckpt)
    _, resumed = _run(tiny_florence2_path, rows, tmp_path / "interrupted", max_steps=8,
                      resume=tmp_path / "interrupted" / "checkpoint-3", dtype=dtype)
    assert len(resumed) == 8  # history restored from the checkpoint, then continued
    assert resumed[:3] == pytest.approx(straight[:3], rel=1e-6)
    assert resumed[3:] == pytest.approx(straight[3:], rel=1e-5)
    assert straight[-1] < straight[0]


def test_fresh_run_refuses_to_overwrite_existing_checkpoints(tiny_florence2_path, rows, tmp_path):
    _run(tiny_florence2_path, rows, tmp_path / "run", max_steps=2)
    with pytest.raises(FileExistsError, match="resume_from='latest'"):
        _run(tiny_florence2_path, rows, tmp_path / "run", max_steps=2)


def test_accumulation_equals_one_big_batch(no_dropout_cache, rows, tmp_path):
    path = no_dropout_cache / "tiny-florence2"  # dropout would draw other masks for 2 x 2 than for 1 x 4
    big, big_losses = _run(path, rows, tmp_path / "big", max_steps=3, batch_size=4, checkpoint_every=None)
    acc, acc_losses = _run(path, rows, tmp_path / "acc", max_steps=3, batch_size=2, grad_accum=2,
                           checkpoint_every=None)
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)
    for (name, p), q in zip(big.named_parameters(), acc.parameters()):
        if name.endswith("k_proj.bias"):
            # softmax ignores a constant added to every key, so this bias's true gradient is 0:
            # what it gets is rounding noise, which Adam's normalisation blows up to full steps
            continue
        assert torch.allclose(p, q, atol=1e-5), name


def test_collator_runs_in_dataloader_worker_processes(model_and_processor, rows):
    from torch.utils.data import DataLoader

    _, processor = model_and_processor
    collate = florence2.Florence2Collator(processor)
    in_workers = list(DataLoader(rows[:8], batch_size=4, collate_fn=collate, num_workers=2))
    in_process = [collate(rows[i:i + 4]) for i in (0, 4)]
    assert len(in_workers) == 2
    for got, expected in zip(in_workers, in_process):
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
            assert got[key].device.type == "cpu"


def test_frozen_vision_tower_stays_in_eval_mode_during_training(tiny_florence2_path, rows, tmp_path):
    model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    vision = florence2.florence2_vision_modules(model)[0]
    freezing.freeze(vision)
    model.train()
    assert freezing.frozen_to_eval(model) == ["model.vision_tower"]
    assert not vision.training and model.model.language_model.training
    modes = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        modes.append((model.training, vision.training))
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    config = loop.TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-3, max_steps=2, batch_size=4,
                                  progress=False)
    loop.train(model, rows, florence2.Florence2Collator(processor), config)
    assert modes and all(m == (True, False) for m in modes)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0"])
def test_the_loop_pins_batches_on_a_gpu_only(monkeypatch, device):
    """On a GPU the loop's ``.to(device, non_blocking=True)`` copies asynchronously only from pinned memory; on a
    CPU pinning is refused. The DataLoader the loop builds is asked to pin exactly when the device is CUDA."""
    seen = {}

    class Built(Exception):
        pass

    class Recording:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise Built

    monkeypatch.setattr(loop, "DataLoader", Recording)
    config = loop.TrainConfig(output_dir="unused", batch_size=2, device=device)
    with pytest.raises(Built):
        next(loop._micro_batches(list(range(4)), lambda rows: rows, config, loop.TrainState(), rank=0, world_size=1))
    assert seen["pin_memory"] is device.startswith("cuda")


def test_a_run_resumed_to_more_steps_continues_on_its_own_schedule(tiny_florence2_path, rows, tmp_path):
    """A run of 3 steps resumed with max_steps=6: steps 4-6 take the learning rates of a 6-step run (the
    optimizer came back with the 3-step plan's rate for step 4: 0, the end of its decay)."""
    def learning_rates(output_dir, max_steps, resume=None):
        model, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
        freezing.freeze(*florence2.florence2_vision_modules(model))
        config = loop.TrainConfig(output_dir=str(output_dir), learning_rate=2e-3, max_steps=max_steps, batch_size=4,
                                  warmup_steps=1, checkpoint_every=3, progress=False)
        state = loop.train(model, rows, florence2.Florence2Collator(processor), config, resume_from=resume)
        return [record["lr"] for record in state.history]

    straight = learning_rates(tmp_path / "straight", 6)
    learning_rates(tmp_path / "short", 3)
    resumed = learning_rates(tmp_path / "short", 6, resume=tmp_path / "short" / "checkpoint-3")
    assert resumed[3:] == pytest.approx(straight[3:], rel=1e-9) and resumed[3] > 0
