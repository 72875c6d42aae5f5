"""Run by tests/test_best_checkpoint.py under torchrun (2 processes, gloo): keep_best with an eval_fn that
scores on rank 0 only, as vlm-train's does. Each rank writes ``rank<N>.json`` next to the output folder:
its last step, the best step, and digests of its LoRA weights (at the end, and rank 0's at step 4)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def digest(weights: dict) -> str:
    return hashlib.sha256(b"".join(weights[k].detach().cpu().numpy().tobytes() for k in sorted(weights))).hexdigest()


def main(checkpoint: str, output_dir: str) -> None:
    from peft import get_peft_model_state_dict

    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, load_chat_vlm
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    torch.set_num_threads(1)
    model, processor = load_chat_vlm(checkpoint, dtype="float32", attn_implementation="eager", quantize_4bit=False)
    model = add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, dropout=0.0, quantized=False)
    args = make_training_arguments(output_dir=output_dir, batch_size=2, grad_accum=1, dtype="float32",
                                   learning_rate=1e-2, max_steps=12, logging_steps=100, seed=0, disable_tqdm=True)
    values = {2: 0.2, 4: 0.6, 6: 0.5, 8: 0.6, 10: 0.9, 12: 1.0}
    step4 = {}

    def eval_fn(step: int) -> dict:
        if dist.get_rank() != 0:
            return {}
        if step == 4:
            step4["sha256"] = digest(get_peft_model_state_dict(model))
        return {"val_anls": values[step]}

    rows = [dict(row) for row in make_synthetic_docvqa(8, seed=1)]
    trainer, history = train_with_trainer(model, rows, ChatVLMCollator(processor, instruction="Answer briefly."),
                                          args, eval_fn=eval_fn, eval_every=2, keep_best="val_anls", patience=2,
                                          processor=processor)
    best = [record["step"] for record in history if record.get("best")]
    report = {"global_step": trainer.state.global_step, "best_step": best[0] if best else None,
              "weights_sha256": digest(get_peft_model_state_dict(model)), "step4_sha256": step4.get("sha256")}
    (Path(output_dir).parent / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
