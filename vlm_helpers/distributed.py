"""Running the same training on several processes: ranks, reductions, DDP and FSDP2 details.

Used by :mod:`vlm_helpers.loop` and :mod:`vlm_helpers.checkpoints`; the command line
(:mod:`vlm_helpers.cli`, README, section "Scaling out: from one GPU to several machines") sets the process
group up. On one process every function here is a no-op or returns the obvious value, so notebooks never
notice it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless torch.distributed is initialised.

    What each rank does: the README, section "Several GPUs on one machine".
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself).

    The wrapper is explained in the README, section "Several GPUs on one machine" (step 2).
    """
    return model.module if hasattr(model, "module") else model


def all_reduce_sum(value: float, device: str) -> float:
    """``value`` summed over all processes (itself on one process); every rank must call it.

    Counts the global batch's supervised tokens, as the README, section "Several GPUs on one machine"
    (step 3), explains.
    """
    if world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


@contextmanager
def no_gradient_sync(model: nn.Module):
    """Skip the gradient all-reduce for a micro-batch that is not the last of its step.

    DDP spells it ``model.no_sync()``; an FSDP2 module ``set_requires_gradient_sync(False)``.
    Gradient averaging under DDP: the README, section "Several GPUs on one machine"; accumulation windows:
    ``notebooks/02_florence2_docvqa.ipynb``, section "Training".
    """
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield

def is_dtensor(value) -> bool:
    """True for the sharded ``DTensor`` parameters and states that FSDP2 creates.

    FSDP2 is explained in the README, section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """
    return type(value).__name__ == "DTensor" and hasattr(value, "full_tensor")


def full_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of ``tensor``; for a DTensor shard this all-gathers (every rank must call it).

    Why checkpoints hold full tensors: the README, section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """
    tensor = tensor.detach()
    return (tensor.full_tensor() if is_dtensor(tensor) else tensor).cpu().clone()


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 sharded ``model``'s parameters (each rank holds only a slice).

    See the README, section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """
    return any(is_dtensor(p) for p in model.parameters())


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's slice of ``full`` laid out as ``param`` (a DTensor), without communication.

    How a full checkpoint resumes under FSDP: the README, section "When DDP is not enough: FSDP or DeepSpeed
    ZeRO".
    """
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                             src_data_rank=None)  # every rank read the same file: no broadcast needed
