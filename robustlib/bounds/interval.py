r"""Naive interval propagation (IBP): every neuron as a centre ``c`` and a radius ``r ≥ 0``.

An affine layer ``z ↦ Wz + b`` maps ``c' = Wc + b``, ``r' = |W| r``; a ReLU maps
``[l, u] ↦ [relu(l), relu(u)]``; a sum of two traced tensors adds centres and
radii (a difference subtracts centres, adds radii). About two forward passes.

An L2 ball ``‖x − x₀‖₂ ≤ ε`` is kept exact through reshapes and elementwise
maps (:class:`L2Ball`); its first Linear / Conv consumer gets the dual-norm
radius ``ε‖W_row‖₂``, any other consumer the enclosing box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .graph import Plan, margin_spec, walk
from .ops import Affine


@dataclass
class Box:
    c: torch.Tensor  # centre (B, *shape)
    r: torch.Tensor  # radius (B, *shape), >= 0

    @classmethod
    def from_bounds(cls, lower: torch.Tensor, upper: torch.Tensor) -> "Box":
        return cls((upper + lower) / 2, (upper - lower) / 2)


@dataclass
class L2Ball:
    """The ellipsoid ``{c + √k2 ⊙ δ : ‖δ‖₂ ≤ eps}`` (per sample): an L2 ball after elementwise scalings."""
    c: torch.Tensor
    eps: torch.Tensor                      # (B,)
    k2: Optional[torch.Tensor] = None      # per-sample shape; None = ones

    def scales(self) -> torch.Tensor:
        return torch.ones(self.c.shape[1:], dtype=self.c.dtype, device=self.c.device) if self.k2 is None \
            else self.k2

    def box(self) -> Box:
        view = (-1,) + (1,) * (self.c.ndim - 1)
        r = self.eps.view(view) * (1.0 if self.k2 is None else self.k2.sqrt().unsqueeze(0))
        return Box(self.c, r.expand_as(self.c))


def affine(op: Affine, s: Box) -> Box:
    """IBP's affine rule: ``c' = W c + b``, ``r' = |W| r``."""
    return Box(op.full(s.c), op.abs_lin(s.r))


def relu(s: Box) -> Box:
    """IBP's ReLU rule: ``[l, u] ↦ [relu(l), relu(u)]``."""
    lo, hi = F.relu(s.c - s.r), F.relu(s.c + s.r)
    return Box((hi + lo) / 2, (hi - lo) / 2)


def _margin_fold(op: Affine, s: Box, y: torch.Tensor):
    """IBP through a final Linear with the specification C = e_j − e_y folded into its weights."""
    w, b = op.fold
    wc = w.unsqueeze(0) - w[y].unsqueeze(1)            # (B, K, in)
    c = torch.einsum("bki,bi->bk", wc, s.c)
    if b is not None:
        c = c + (b.unsqueeze(0) - b[y].unsqueeze(1))
    r = torch.einsum("bki,bi->bk", wc.abs(), s.r)
    return c - r, c + r


def _l2_affine(op: Affine, s: L2Ball, shape: tuple):
    """An affine map of an L2 ball: stays a ball through reshapes and diagonal maps, else becomes a box."""
    if op.reshape:
        return L2Ball(op.full(s.c), s.eps, None if s.k2 is None else s.k2.reshape(shape))
    if op.diag is not None:
        d = op.diag.to(s.c)
        return L2Ball(op.full(s.c), s.eps, (s.scales() * d * d).expand(shape))
    if op.l2sq is not None:   # the exact dual-norm radius ε‖W diag(√k2)‖₂ per output
        rad = op.l2sq(s.scales()).clamp_min(0).sqrt()
        view = (-1,) + (1,) * len(shape)
        return Box(op.full(s.c), s.eps.view(view) * rad.expand(shape).unsqueeze(0))
    return affine(op, s.box())


def run(plan: Plan, state, y: Optional[torch.Tensor] = None):
    """``(lo, hi)`` of the outputs, or of the margins ``z_j − z_y`` when ``y`` is given."""
    def step(n, ins, env):
        s = ins[0]
        if n.kind == "affine":
            if isinstance(s, L2Ball):
                return _l2_affine(n.op, s, n.shape)
            if y is not None and n.name == plan.output_name and n.op.fold is not None:
                return _margin_fold(n.op, s, y)     # the output, already as margin bounds
            return affine(n.op, s)
        ins = [t.box() if isinstance(t, L2Ball) else t for t in ins]
        if n.kind == "relu":
            return relu(ins[0])
        a, b = ins
        return Box(a.c + b.c if n.kind == "add" else a.c - b.c, a.r + b.r)

    s = walk(plan, state, step)
    if isinstance(s, tuple):
        return s
    if isinstance(s, L2Ball):
        s = s.box()
    if y is not None:   # C = e_j − e_y on the output box: [l_j − u_y, u_j − l_y], 0 for j = y
        c = margin_spec(s.c.reshape(s.c.shape[0], -1), y)
        r = s.r.reshape(s.r.shape[0], -1)
        r = (r + r.gather(1, y.view(-1, 1))).scatter(1, y.view(-1, 1), 0.0)
        return c - r, c + r
    return s.c - s.r, s.c + s.r
