"""Benchmark: our Florence-2 training step vs the blog's, same model, same batch.

The blog's loop ("naive"): fp32, the whole model trainable (its freezing line is a no-op),
padding counted in the loss, and the processor run inside the training loop, on the
device, in the main process. Ours: vision tower frozen, padding masked, autocast from
the preset (fp16 + scaler on T4, bf16 on Ampere+, fp32 on CPU), collation in DataLoader
workers. Each variant runs in its own process so peak-memory figures don't mix.

    python bench/bench_florence2_loop.py                 # tiny model on CPU (or GPU if present)
    python bench/bench_florence2_loop.py --size base     # full-size Florence-2-base, random init (GPU)

Prints samples/s, peak memory and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def build_model(size: str, device: str):
    import torch
    from transformers import Florence2ForConditionalGeneration

    from vlm_helpers import florence2
    from vlm_helpers.tiny import tiny_checkpoint
    from vlm_helpers.tiny.florence2 import florence2_base_config

    tiny_path = tiny_checkpoint("florence2")
    # both loops keep fp32 weights (the blog's trains in fp32; ours autocasts); the checkpoint says float16
    model, processor = florence2.load_florence2(tiny_path, device=device, dtype=torch.float32)
    if size == "base":  # same processor pipeline, full-size random weights, 768 px images
        torch.manual_seed(0)
        model = Florence2ForConditionalGeneration(florence2_base_config()).to(device, torch.float32)
        processor.image_processor.size = {"height": 768, "width": 768}
        processor.image_processor.crop_size = {"height": 768, "width": 768}
        processor.num_image_tokens = 577
        processor.tokenizer.model_max_length = 1024
    return model, processor


def run_variant(variant: str, size: str, steps: int, batch_size: int, warmup: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from vlm_helpers import florence2, freezing, loop, runtime
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    profile = runtime.detect_hardware()
    device = profile.device
    preset = runtime.choose_preset(profile, "florence2-docvqa")
    if device == "cpu":
        torch.set_num_threads(1 if size == "tiny" else 2)
    rows = list(make_synthetic_docvqa(batch_size * (steps + warmup), seed=1))
    model, processor = build_model(size, device)
    model.train()
    if variant == "ours":
        freezing.freeze(*florence2.florence2_vision_modules(model))
        loader = DataLoader(rows, batch_size=batch_size, collate_fn=florence2.Florence2Collator(processor),
                            num_workers=2 if device == "cuda" else 0)
        dtype = preset.dtype
    else:
        loader = DataLoader(rows, batch_size=batch_size, collate_fn=lambda b: b, num_workers=0)
        dtype = "float32"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    scaler = torch.amp.GradScaler(device) if dtype == "float16" else None
    autocast = torch.autocast(device, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    timings = []
    start = time.perf_counter()  # each step is timed from the end of the previous one: data loading included
    for step, batch in enumerate(loader):
        if variant == "ours":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast:
                logits = model(**batch, labels=labels).logits
                loss = loop.token_loss_sum(logits, labels) / labels.ne(-100).sum()
        else:  # the blog's way: processor on the device in the loop, pad ids as labels
            from vlm_helpers.supervision import to_rgb

            inputs = processor(text=["<DocVQA>" + r["question"] for r in batch],
                               images=[to_rgb(r["image"]) for r in batch], return_tensors="pt", padding=True).to(device)
            labels = processor.tokenizer(text=[r["answers"][0] for r in batch], return_tensors="pt", padding=True,
                                         return_token_type_ids=False).input_ids.to(device)
            loss = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels).loss
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step >= warmup:
            timings.append(now - start)
        start = now
        if step + 1 >= steps + warmup:
            break
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    total = sum(timings)
    return {"variant": variant, "size": size, "device": profile.gpu_name or "CPU", "dtype": dtype,
            "samples_per_s": len(timings) * batch_size / total, "peak_mib": peak,
            "peak_kind": "GPU allocated" if device == "cuda" else "process RSS",
            "trainable": freezing.count_parameters(model).trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--variant", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.size, args.steps, args.batch_size, args.warmup)))
        return
    import torch

    if args.size == "base" and not torch.cuda.is_available():
        sys.exit("--size base needs a GPU (0.23 B parameters at 768 px would take minutes per step on a CPU)")
    rows = {}
    with tempfile.TemporaryDirectory():
        for variant in ("naive", "ours"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--size", args.size,
                                  "--steps", str(args.steps), "--warmup", str(args.warmup),
                                  "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True).stdout
            rows[variant] = json.loads(out.strip().splitlines()[-1])
    for r in rows.values():
        print(f"{r['variant']:6} {r['size']} on {r['device']}: {r['dtype']:9} trainable {r['trainable']:>12,}  "
              f"{r['samples_per_s']:8.2f} samples/s  peak {r['peak_mib']:8.0f} MiB ({r['peak_kind']})")
    ratio = rows["ours"]["samples_per_s"] / rows["naive"]["samples_per_s"]
    memory = rows["ours"]["peak_mib"] / rows["naive"]["peak_mib"]
    print(f"speed ratio ours/naive: {ratio:.2f}x   peak memory ratio ours/naive: {memory:.2f}x")


if __name__ == "__main__":
    main()
