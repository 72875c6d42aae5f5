"""A frozen vision tower is not back-propagated through (issue 24, finding 2).

With LoRA and gradient checkpointing, PEFT calls transformers' ``enable_input_require_grads()``, which marks
the output of every sub-model's input embeddings, the vision tower's patch embeddings included, as requiring
a gradient. The tower's weights stay frozen, yet autograd would keep its activations and run its whole
backward pass. ``add_lora`` runs the frozen tower without autograd
(``freezing.forward_without_autograd``). Checked with forward hooks on every model choice's tiny twin (LoRA
and the 4-bit QLoRA path), with checkpointing on, as on a GPU preset: the tower's output requires no grad,
the text embeddings' output still does (checkpointing needs it), and every LoRA weight gets a gradient.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lora_checks import nonzero
from vlm_helpers import florence2, lora, model_choices
from vlm_helpers.freezing import forward_without_autograd
from vlm_helpers.tiny import tiny_checkpoint

pytest.importorskip("peft")

ROWS = [{"id": f"row-{i}", "question": q, "answers": [a], "image": Image.new("RGB", (96 + 32 * i, 80), c)}
        for i, (q, a, c) in enumerate([("What is the total?", "12.50", (200, 40, 40)),
                                       ("Who signed it?", "Dr. Ada Lovelace", (40, 200, 40))])]


def load(choice, path, quantize: bool):
    if choice.kind == "florence2":
        return florence2.load_florence2(path, dtype=torch.float32)
    return lora.load_chat_vlm(path, dtype="float32", attn_implementation="sdpa", quantize_4bit=quantize)


def requires_grad_of(output) -> bool:
    tensor = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
    if not torch.is_tensor(tensor):
        tensor = next(v for v in output.values() if torch.is_tensor(v))
    return tensor.requires_grad


@pytest.mark.parametrize("key", sorted(model_choices.MODEL_CHOICES))
def test_the_frozen_tower_is_not_back_propagated_under_lora_and_checkpointing(tiny_cache, key):
    choice = model_choices.get_model_choice(key)
    quantize = choice.method("tiny") == "qlora"
    model, processor = load(choice, tiny_checkpoint(choice.tiny_name, tiny_cache), quantize)
    model = lora.add_lora(model, target_modules=choice.lora_targets, quantized=quantize, gradient_checkpointing=True)
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())

    seen: dict[str, list[bool]] = {"tower": [], "text embeddings": []}
    for _, encoder in lora.vision_encoders(model):
        encoder.register_forward_hook(lambda m, a, out: seen["tower"].append(requires_grad_of(out)))
    model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: seen["text embeddings"].append(out.requires_grad))

    batch = choice.collator(processor, task="qa", instruction="Answer briefly.", seed=0)(ROWS)
    model.train()
    model(**batch).loss.backward()

    assert seen["tower"] and not any(seen["tower"]), f"{key}: the frozen tower's output requires grad"
    assert seen["text embeddings"] and all(seen["text embeddings"]), "checkpointing needs the text embeddings' grad"
    lora_b = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(nonzero(g) for g in lora_b.values()), f"{key}: a LoRA weight got no gradient"
    assert torch.is_grad_enabled()


def test_forward_without_autograd_restores_grad_mode_after_an_error():
    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    forward_without_autograd(layer)
    with pytest.raises(RuntimeError):
        layer(torch.zeros(3, 5))
    assert torch.is_grad_enabled()
    out = layer(torch.zeros(2, 4, requires_grad=True))
    assert not out.requires_grad
    with torch.no_grad():
        layer(torch.zeros(2, 4))
    assert torch.is_grad_enabled()


def test_forward_without_autograd_refuses_a_module_that_trains():
    with pytest.raises(ValueError, match="trainable"):
        forward_without_autograd(torch.nn.Linear(4, 4))


def test_a_layer_unfrozen_later_is_refused_until_autograd_is_given_back():
    """Stage-2 training unfreezes part of the tower: silently getting no gradient would be the worst outcome."""
    from vlm_helpers.freezing import forward_with_autograd

    tower = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).requires_grad_(False)
    forward_without_autograd(tower)
    tower[1].requires_grad_(True)
    with pytest.raises(ValueError, match="forward_with_autograd"):
        tower(torch.zeros(2, 4))
    assert torch.is_grad_enabled()
    forward_with_autograd(tower)
    tower(torch.ones(2, 4)).sum().backward()
    assert tower[1].weight.grad is not None and tower[0].weight.grad is None
