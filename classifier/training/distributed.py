"""Data-parallel training under ``torchrun``: process group, batch sharding, gradient all-reduce.

``tierwise train`` run as ``torchrun --nproc_per_node N -m classifier.cli train ...`` (or any
launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) trains
with N processes: :func:`setup` joins the process group (gloo on CPU, nccl on GPU), each optimiser
step's batch of ``batch_size`` rows (the *global* batch, as in a single-process run) is split
between the ranks (:meth:`DistContext.shard`), each rank backpropagates its exact share of the
global batch's loss and the gradients are summed over the ranks (:meth:`DistContext.backward`)
before clipping and the optimiser step. So N processes take the same optimiser steps over the
same samples as one process, only faster: raise ``batch_size`` with N to keep each rank's share
of a batch large. Dropout masks are drawn per rank (another random stream than one process):
with dropout on, the runs agree in distribution, not bit for bit.

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

    def backward(self, logits: dict[str, Any], batch: dict[str, Any], params: list[Any], *, loss_fn: Any,
                 class_weights: dict[str, Any], head_weights: dict[str, float], soft_weight: float) -> Any:
        """Backward of this rank's share of the *global* batch loss, gradients summed over ranks;
        returns the global loss (a tensor, the same on every rank) or None when no rank's rows
        train any head.

        ``loss_fn`` is ``trainer.multitask_loss``: per head a mean over the labelled rows (class
        weighted) mixed with a mean KL over the soft-labelled rows. A mean over a rank's own rows
        is not a share of the global mean (the ranks hold different numbers of labelled rows per
        head), so the ranks first add up every head's denominators (sum of class weights of the
        labelled rows, number of soft rows), then each rank scales its own per-head means by its
        share of those totals. The sum over ranks is then exactly the single-process loss of the
        whole batch, and so is its gradient (up to float rounding).
        """
        import torch
        import torch.distributed as dist

        from classifier.training.dataset import IGNORE_INDEX

        heads = [h for h in logits if float(head_weights.get(h, 1.0)) != 0.0]
        local: list[float] = []
        for h in heads:
            y = batch["labels"].get(h)
            hard = 0.0
            if y is not None:
                valid = y != IGNORE_INDEX
                cw = class_weights.get(h)
                hard = float(valid.sum()) if cw is None else float(cw[y[valid]].sum())
            mask = batch["soft_mask"].get(h)
            soft = float(mask.sum()) if mask is not None and soft_weight > 0 else 0.0
            local += [hard, soft]
        totals = torch.tensor(local, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(totals)
        totals = totals.tolist()
        if not any(t > 0 for t in totals):
            return None  # the same on every rank: no collective is left waiting
        loss = None
        for i, h in enumerate(heads):
            d, m, big_d, big_m = local[2 * i], local[2 * i + 1], totals[2 * i], totals[2 * i + 1]
            # the single-process mix: hard and soft parts both present globally -> (1-s, s)
            hard_c = 0.0 if big_d <= 0 else (1.0 - soft_weight if big_m > 0 else 1.0)
            soft_c = 0.0 if big_m <= 0 else (soft_weight if big_d > 0 else 1.0)
            for share, coef, sw in ((d / big_d if big_d > 0 else 0.0, hard_c, 0.0),
                                    (m / big_m if big_m > 0 else 0.0, soft_c, 1.0)):
                if share > 0 and coef > 0:
                    # soft_weight 0: the head's hard mean alone; 1 (with soft rows): its soft mean alone
                    part, _ = loss_fn({h: logits[h]}, batch, class_weights=class_weights,
                                      head_weights=head_weights, soft_weight=sw)
                    term = part * (coef * share)
                    loss = term if loss is None else loss + term
        if loss is not None:
            loss.backward()
        value = float(loss.detach()) if loss is not None else 0.0
        if self.enabled:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads]
                             + [torch.tensor([value], dtype=grads[0].dtype, device=grads[0].device)])
            dist.all_reduce(flat)
            offset = 0
            for p, g in zip(params, grads, strict=True):
                p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
                offset += g.numel()
            value = float(flat[-1])
        return torch.tensor(value)

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
