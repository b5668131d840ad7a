"""Training objectives: callables that turn a batch into per-example losses.

An objective is called as ``objective(model, x, y)`` and returns a tensor of
N per-example losses; :func:`robustlib.train.fit` weights them with the
loader's per-example weights w (what a pruning selector chooses) as
``Σ_i w_i ℓ_i / N``. Objectives that attack generate their own adversarial
examples inside the call. Each objective counts what it spent in
``objective.spent`` (examples seen, forward and backward passes through the
network per example — attack steps included); ``fit`` records it per epoch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks


class Objective:
    """Base class: subclasses implement :meth:`losses` and call :meth:`count`."""

    name = "objective"

    def __init__(self):
        self.spent = {"examples": 0, "forward": 0, "backward": 0}

    def count(self, n: int, forward: int, backward: int) -> None:
        """Record n examples that each cost ``forward``/``backward`` network passes."""
        self.spent["examples"] += n
        self.spent["forward"] += n * forward
        self.spent["backward"] += n * backward

    def reset_spent(self) -> dict:
        """Return the counts since the last reset and start again from zero."""
        out, self.spent = self.spent, {k: 0 for k in self.spent}
        return out

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.losses(model, x, y)

    def config(self) -> dict:
        """The objective's settings, for results records."""
        return {"name": self.name, **{k: v for k, v in vars(self).items()
                                      if k != "spent" and isinstance(v, (int, float, str, bool))}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Standard(Objective):
    """Standard training: ℓ_i = CE(f(x_i), y_i)."""

    name = "standard"

    def losses(self, model, x, y):
        self.count(len(y), forward=1, backward=1)
        return F.cross_entropy(model(x), y, reduction="none")


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Σ_i w_i ℓ_i / N (plain mean when w is None)."""
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / losses.numel()
