"""Distributed setup for ``vlm-train``: which process this is, and how it joins the others.

``torchrun --nproc_per_node N -m vlm_helpers.cli ...`` (or ``accelerate launch --multi_gpu``)
starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`init_distributed` reads them and joins the process group (NCCL on
GPUs, gloo on CPUs); :class:`Distributed` is what a recipe receives as ``env``; without those
variables it describes one ordinary process. See :mod:`vlm_helpers.cli` for the whole story.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Distributed", "FSDPSettings", "fsdp_from_environment", "init_distributed", "shutdown_distributed"]


@dataclass
class Distributed:
    """Where this process stands in a (possibly) distributed run.

    What each process does with it is listed in the README, section "Several GPUs on one machine".
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # "cuda" means this process's own GPU (set from LOCAL_RANK)
    backend: str | None = None  # "nccl", "gloo", or None when not distributed
    fsdp: FSDPSettings | None = None  # shard with FSDP2 instead of replicating with DDP

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in a single process)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_process_first(self):
        """Run the block on each machine's local rank 0 first, then on the other ranks.

        For downloads and cache writes (datasets, model weights, tiny models): the
        first process fills the cache, the others then read it.
        """
        if self.enabled and self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.enabled and self.local_rank == 0:
                self.barrier()

    def wrap(self, model, *, shard: tuple[str, ...] = (), shard_methods: tuple[str, ...] = ()):
        """Prepare ``model`` for data-parallel training; a single process gets it unchanged.

        DDP (default): ``DistributedDataParallel(model)``, a full replica per process.
        FSDP2 (``self.fsdp``): ``fully_shard`` on every submodule whose class name is in
        ``shard`` (or in ``FSDP_TRANSFORMER_CLS_TO_WRAP``), then on the whole model, so each
        process keeps 1/N of the weights, gradients and optimizer state. ``shard_methods``
        (e.g. ``"generate"``) are methods that run the model outside ``forward``.
        """
        if not self.enabled:
            return model
        if self.fsdp is None:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = self.device.startswith("cuda")
            return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

        names = set(self.fsdp.layer_classes or shard)
        found = [m for m in model.modules() if type(m).__name__ in names]
        if not found:
            raise ValueError(f"FSDP: no submodule of class {sorted(names)} in {type(model).__name__}")
        options = dict(reshard_after_forward=self.fsdp.reshard_after_forward,
                       offload_policy=CPUOffloadPolicy() if self.fsdp.offload_params else OffloadPolicy())
        for module in found:
            fully_shard(module, **options)
        fully_shard(model, **options)
        for method in shard_methods:
            register_fsdp_forward_method(model, method)
        self.log(f"FSDP2: {len(found)} blocks + the root sharded over {self.world_size} processes "
                 f"(reshard after forward: {self.fsdp.reshard_after_forward}, CPU offload: {self.fsdp.offload_params})")
        return model

    def broadcast(self, value):
        """``value`` from rank 0 on every rank (any picklable object; unchanged in a single process)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def full_state_dict(self, model) -> dict:
        """The full (unsharded) weights on rank 0, an empty dict elsewhere (a collective for FSDP).

        Tied weights appear once, under the name ``named_parameters()`` gives them (as
        ``save_pretrained`` would write them from an unsharded model).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        keep = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        return {name: tensor for name, tensor in full.items() if name in keep}

    @contextmanager
    def quiet_unless_main(self):
        """Silence ``print`` on ranks other than 0 (for helpers that print results)."""
        if self.is_main:
            yield
            return
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            yield

    def log(self, message: str) -> None:
        """Print on rank 0 only, prefixed so the line is easy to find in launcher output."""
        if self.is_main:
            print(f"[vlm-train] {message}", flush=True)


@dataclass(frozen=True)
class FSDPSettings:
    """How to shard with FSDP2 (from ``--fsdp`` or from ``accelerate launch``'s FSDP config).

    Explained in the README, section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """

    reshard_after_forward: bool = True  # FULL_SHARD; False = SHARD_GRAD_OP (keeps weights gathered until backward)
    offload_params: bool = False  # keep shards in CPU memory (slow; for models that do not fit otherwise)
    layer_classes: tuple[str, ...] = ()  # blocks to shard separately; empty = the recipe's choice


def fsdp_from_environment(environ: dict | None = None) -> FSDPSettings | None:
    """Read the FSDP settings ``accelerate launch --config_file configs/accelerate_fsdp.yaml`` exports.

    ``ACCELERATE_USE_FSDP=true`` switches FSDP on; ``FSDP_RESHARD_AFTER_FORWARD`` (FSDP2
    configs) or ``FSDP_SHARDING_STRATEGY`` (FSDP1 configs: FULL_SHARD / SHARD_GRAD_OP) say
    whether weights are resharded after forward; ``FSDP_OFFLOAD_PARAMS`` and
    ``FSDP_TRANSFORMER_CLS_TO_WRAP`` are honoured; other FSDP options are not used here. The config
    file is described in the README, section "When DDP is not enough: FSDP or DeepSpeed ZeRO".
    """
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return None
    strategy = environ.get("FSDP_SHARDING_STRATEGY", "").upper()
    if strategy in ("3", "NO_SHARD", "4", "HYBRID_SHARD", "5", "_HYBRID_SHARD_ZERO2"):
        raise ValueError(f"FSDP_SHARDING_STRATEGY={strategy} is not supported by vlm-train: use FULL_SHARD or "
                         "SHARD_GRAD_OP (or no FSDP at all: plain DDP is the default under torchrun)")
    reshard = environ.get("FSDP_RESHARD_AFTER_FORWARD")
    if reshard is not None and reshard.lower() in ("true", "false"):
        reshard_after_forward = reshard.lower() == "true"
    else:
        reshard_after_forward = strategy not in ("2", "SHARD_GRAD_OP")
    classes = tuple(c.strip() for c in environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return FSDPSettings(reshard_after_forward=reshard_after_forward,
                        offload_params=environ.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true",
                        layer_classes=classes)


def init_distributed(*, timeout_minutes: float = 60.0, environ: dict | None = None,
                     fsdp: FSDPSettings | None = None) -> Distributed:
    """Join the process group if a launcher (torchrun, accelerate launch) started us.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; picks NCCL with one GPU per process when
    CUDA is available, gloo on CPU. The timeout covers rank 0 evaluating while the other
    ranks wait. Explained in the README, section "Several GPUs on one machine" (steps 1 and 4), and the
    README, section "Several machines".
    """
    import torch

    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return Distributed(device="cuda" if torch.cuda.is_available() else "cpu")
    from datetime import timedelta

    import torch.distributed as dist

    rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    timeout = timedelta(minutes=timeout_minutes)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
        return Distributed(rank, world_size, local_rank, "cuda", "nccl", fsdp)
    dist.init_process_group("gloo", timeout=timeout)
    return Distributed(rank, world_size, local_rank, "cpu", "gloo", fsdp)


def shutdown_distributed(env: Distributed, *, ok: bool) -> None:
    """Barrier (after success only: a failed rank never arrives) and destroy the process group.

    Step 5 of the README, section "Several GPUs on one machine".
    """
    if not env.enabled:
        return
    import torch.distributed as dist

    if ok:
        dist.barrier()
    dist.destroy_process_group()
