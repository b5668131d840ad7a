"""Remembered adversarial perturbations: training writes them, data-pruning selections read them.

A re-selection of Adv-GRAD-MATCH or Adv-GLISTER needs a gradient of the adversarial loss for every training
example. Attacking all n examples afresh with K_s steps costs about (2·K_s + 1)/(2·K + 3) of a PGD-K training
epoch in network passes: 0.30 at K_s = 3 and K = 10 (0.25–0.46 measured on a CPU), below a tenth only without an attack
(1/(2·K + 3) = 0.04). But training has just attacked those examples: adversarial perturbations transfer from one
epoch's model to the next (Zheng et al., "Efficient Adversarial Training with Transferable Adversarial Examples",
CVPR 2020). A :class:`PerturbationMemory` keeps the latest δ_i = x'_i − x_i of each example that training attacked;
a selection given the memory takes its gradients at x_i + δ_i, one forward pass per example, and attacks afresh only
the examples training never reached (the memory learns those too). Adv-GLISTER's validation split is never
trained on, so its selector keeps a memory of its own: the split is attacked in full at the first selection and
moved one step on from what it remembers at each later one (``pgd(..., start=x + δ)``, as ATTA does), so that its
perturbations follow the model. This is our choice, not the paper's: the book compares its subsets with fresh ones.

How it is fed: :func:`robustlib.train.fit` tells the objective which dataset indices each batch holds
(``objective.batch_indices``); an adversarial objective (or Bullet-Train, for the examples it attacked) whose
``memory`` is set writes x' − x for them. Attach one with :meth:`PerturbationMemory.attach`. Limits, stated:
with augmentation δ was found for the augmented image and is applied to the plain one (an approximation); under
torchrun each rank would see only its shard, so ``fit`` does not feed a memory there and selections attack
afresh; a checkpoint does not hold the memory (it is as large as the images), so after a resume the examples not
yet trained again are attacked afresh at the next selection.
"""
from __future__ import annotations

import torch

__all__ = ["PerturbationMemory"]


class PerturbationMemory:
    """δ_i = x'_i − x_i per training example (``dtype``, default float16: ε-sized values need no more), and
    whether example i has one yet (``known``), on the data's device."""

    def __init__(self, n: int, shape, device="cpu", dtype: torch.dtype = torch.float16):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"a memory needs the number of training examples n ≥ 1, got {n!r}")
        self.delta = torch.zeros((n, *tuple(shape)), dtype=dtype, device=device)
        self.known = torch.zeros(n, dtype=torch.bool, device=device)

    @classmethod
    def like(cls, data, dtype: torch.dtype = torch.float16) -> "PerturbationMemory":
        """An empty memory for every example of ``data`` (an :class:`robustlib.data.ImageData`)."""
        return cls(len(data), tuple(data.shape), data.device, dtype)

    @classmethod
    def attach(cls, objective, data, dtype: torch.dtype = torch.float16) -> "PerturbationMemory":
        """A memory for ``data`` that ``objective`` writes into during :func:`robustlib.train.fit`; pass the
        same memory to the selector (``DynamicSelector(..., memory=mem)``)."""
        if not getattr(objective, "writes_memory", False):
            raise TypeError(f"{type(objective).__name__} does not write the perturbations it trains on; attach a "
                            f"memory to PGDAT, TRADES, MART or BulletTrain (multi-step adversarial objectives)")
        memory = cls.like(data, dtype)
        objective.memory = memory
        return memory

    def __len__(self) -> int:
        return self.delta.shape[0]

    def write(self, indices: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor,
              rows: torch.Tensor | None = None) -> None:
        """Remember x' − x for the examples at ``indices`` (rows of x and x' in the same order); with a boolean
        ``rows`` mask, only for the rows it marks (the others keep what they had: no host synchronisation)."""
        if x.shape != x_adv.shape or len(indices) != len(x) or x.shape[1:] != self.delta.shape[1:]:
            raise ValueError(f"write needs one index per row and x, x' of shape (N, {tuple(self.delta.shape[1:])}); "
                             f"got {len(indices)} indices, x {tuple(x.shape)} and x' {tuple(x_adv.shape)}")
        indices = indices.to(self.delta.device)
        delta = (x_adv.detach() - x.detach()).to(self.delta)
        if rows is None:
            self.delta[indices], self.known[indices] = delta, True
        else:
            keep = rows.view(-1, *[1] * (delta.dim() - 1))
            self.delta[indices] = torch.where(keep, delta, self.delta[indices])
            self.known[indices] = self.known[indices] | rows

    def apply(self, indices, x: torch.Tensor) -> torch.Tensor:
        """clip_[0,1](x + δ) for the examples at ``indices`` (δ = 0 for those not known yet)."""
        return (x + self.delta[indices].to(x.dtype)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"PerturbationMemory(n={len(self)}, known={int(self.known.sum())}, dtype={self.delta.dtype})"
