"""Data-parallel training under ``torchrun``, on PyTorch's own DistributedDataParallel.

A training script needs no distributed code: run it with
``torchrun --nproc_per_node=G script.py`` and :func:`robustlib.train.fit` finds torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), initialises the process group (NCCL on CUDA, gloo on CPU), moves
the data and the model to this rank's device, and trains each rank on its shard of every global batch.

How the pieces fit:

* **The step.** The objective's whole per-batch computation (attack steps, bounds, loss) runs inside one
  ``DistributedDataParallel`` module (:class:`ObjectiveModule`), so an attack's many forward passes and its
  input-gradients happen on the plain network, and only the final loss's parameter gradients are averaged
  across ranks — exactly once per step, as DDP expects.
* **The data.** Every rank draws the same seeded order of (selector-chosen, weighted) indices; rank r takes
  positions r, r + G, r + 2G, … of each global batch of ``G × batch_size`` examples (``batch_size`` is per
  process, the PyTorch convention). A last global batch with fewer than G examples is dropped.
* **The rest.** A pruning selector sees the whole dataset on every rank (and, being seeded, chooses the same
  subset); the history's figures are reduced across ranks (losses and counts summed, times maximised);
  ``eval_fn`` runs on rank 0 and its result is broadcast; only rank 0 writes checkpoints. Each rank's random
  stream is its own (seeded by ``seed`` and the rank, so that the ranks' attack starts differ), and the
  checkpoint keeps every rank's random state: a resumed run continues each rank's stream where it stopped.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def active() -> bool:
    """True when this process is one of several started by torchrun."""
    return world()[1] > 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: torch.device) -> torch.device:
    """Initialise the process group (once) and return this rank's device."""
    rank, size, local = world()
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    return device


class ObjectiveModule(nn.Module):
    """The objective's per-example losses of a batch as one module, so DDP wraps the whole step."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x, y, w):
        return self.objective(self.model, x, y, w)


def wrap(model: nn.Module, objective, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(ObjectiveModule(model, objective),
                                   device_ids=[device.index] if device.type == "cuda" else None)


def reduce(values: list, op: str, device) -> list:
    """All-reduce a list of numbers (``"sum"`` or ``"max"``) across ranks."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def broadcast(obj, device):
    """Rank 0's Python object on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def gather(obj) -> list:
    """Every rank's Python object, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    dist.barrier()
