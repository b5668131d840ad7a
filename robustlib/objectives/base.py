"""The objective protocol (per-example losses, weights, cost counts) and the plain objectives."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..digests import function_digest


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or in its own dtype where that is wider (fp64 stays fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Objective:
    """Base class: subclasses implement :meth:`losses` and call :meth:`count`."""

    name = "objective"
    memory = None          # a robustlib.memory.PerturbationMemory that training writes x' − x into
    writes_memory = False  # True where losses() calls remember() with the x' it trained on
    batch_indices = None   # set by fit before each step: the dataset indices of the batch's examples

    def __init__(self):
        self.spent = {"examples": 0, "forward": 0, "backward": 0}

    def remember(self, x: torch.Tensor, x_adv: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Write x' − x of this batch (only the ``rows`` mask of it, when given) into :attr:`memory`, when a memory
        is attached and fit said which examples the batch holds; otherwise do nothing."""
        memory, idx = self.memory, self.batch_indices
        if memory is not None and idx is not None and len(idx) == len(x):
            memory.write(idx, x, x_adv, rows)

    def count(self, n: int, forward: int, backward: int) -> None:
        """Record n examples that each cost ``forward``/``backward`` network passes."""
        self.spent["examples"] += n
        self.spent["forward"] += n * forward
        self.spent["backward"] += n * backward

    def reset_spent(self) -> dict:
        """Return the counts since the last reset and start again from zero."""
        out, self.spent = self.spent, {k: 0 for k in self.spent}
        return out

    def summarize(self, counts: dict) -> dict:
        """An epoch's record entries from its counts, summed over the processes of a data-parallel run first
        (figures derived from counts, such as fractions, are computed here and not summed)."""
        return counts

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example losses w_i·ℓ_i (ℓ_i when ``weights`` is None), in float32 (float64 stays float64)."""
        losses = at_least_fp32(self.losses(model, x, y.long()))   # labels of any integer dtype
        if weights is None:
            return losses
        if weights.shape != losses.shape:
            raise ValueError(f"weights must have shape {tuple(losses.shape)} (one per example), "
                             f"got {tuple(weights.shape)}")
        return losses * weights

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
        return F.cross_entropy(at_least_fp32(model(x)), y, reduction="none")


class Custom(Objective):
    """Any function ``fn(model, x, y) -> per-example losses (N,)`` as an objective (counts examples only).

    ``fit`` wraps a plain function passed as the objective in this class.
    """

    def __init__(self, fn, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise ValueError(f"Custom needs a function fn(model, x, y) -> per-example losses, got {fn!r}")
        self.fn, self.name = fn, name or getattr(fn, "__name__", "custom")

    def config(self) -> dict:
        """The name and a digest of the function (two lambdas are two objectives: another run, another key)."""
        return {**super().config(), "function": function_digest(self.fn)}

    def losses(self, model, x, y):
        out = self.fn(model, x, y)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the objective {self.name!r} must return one loss per example, shape "
                             f"({len(y)},), got {shape}; use reduction='none' in the loss function")
        self.count(len(y), forward=0, backward=0)
        return out
