"""Data-parallel training under ``torchrun``: process group, batch sharding, gradient all-reduce.

``tierwise train`` run as ``torchrun --nproc_per_node N -m classifier.cli train ...`` (or any
launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) trains
with N processes: :func:`setup` joins the process group (gloo on CPU, nccl on GPU), each optimiser
step's batch of ``batch_size`` rows (the *global* batch, as in a single-process run) is split
between the ranks (:meth:`DistContext.shard`), and the gradients are averaged over the ranks
(:meth:`DistContext.all_reduce_grads`) before clipping and the optimiser step. So N processes take
the same optimiser steps over the same samples as one process, only faster: raise ``batch_size``
with N to keep each rank's share of a batch large.

Rank 0 alone talks to MLflow, writes checkpoints and the model directory and registers the model;
every rank resumes from the same checkpoint (a directory every rank can read). Parameters are
broadcast from rank 0 at the start so every rank starts from the same weights.

What it leaves out: model parallelism, gradient accumulation, and DDP's bucketed overlap of
communication with the backward pass (one flat all-reduce per step is enough for encoders of this
size on a few processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's rows of one global batch (interleaved: lengths stay balanced)."""
        return idx[self.rank::self.world_size] if self.enabled else idx

    def broadcast_parameters(self, model: Any) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)

    def all_reduce_grads(self, params: list[Any], weight: float) -> float:
        """Average the gradients over ranks, each rank's weighted by ``weight`` (its share of the
        global batch's labelled rows); returns the total weight (0: no rank had a loss).

        A rank whose batch share trained no head has ``weight`` 0 and contributes zeros, so that
        every rank takes part in the same collective.
        """
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) * weight for g in grads] + [torch.tensor([weight], dtype=grads[0].dtype,
                                                                                   device=grads[0].device)])
        dist.all_reduce(flat)
        total = float(flat[-1])
        if total > 0:
            flat /= total
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).clone()
            offset += n
        return total

    def mean(self, value: float, weight: float) -> tuple[float, float]:
        """(weighted mean over ranks, total weight) of a scalar."""
        if not self.enabled:
            return value, weight
        import torch
        import torch.distributed as dist

        t = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        total = float(t[1])
        return (float(t[0]) / total if total > 0 else float("nan")), total

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one of them."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def setup() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    logger.info("distributed training: rank %d of %d (%s, %s)", rank, world, dist.get_backend(), device)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
