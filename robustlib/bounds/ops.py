"""Affine maps of the supported layers, in the three forms the propagations need.

Every input-dependent node that is not a ReLU or a sum of two traced tensors is
an affine map ``t ↦ W t + b``; :class:`Affine` holds it as ``lin`` (``W t``),
``full`` (``W t + b``, for centres) and ``abs_lin`` (``|W| t``, for IBP radii),
plus what lets the propagations take shortcuts: the diagonal of an elementwise
map, whether it is a pure reshape, the squared row norms for L2 balls, and the
(W, b) of a final Linear for folding the margin specification.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .errors import UnsupportedOperation


@dataclass
class Affine:
    """An affine node ``t ↦ lin(t) + shift`` applied to a tensor with a leading (folded) batch dim."""

    lin: Callable           # linear part (no bias)
    full: Callable          # the affine map itself (for centres)
    abs_lin: Callable       # |linear part| (for IBP radii)
    diag: Optional[torch.Tensor] = None    # elementwise multiplier (per-sample shape) when the op is diagonal
    reshape: bool = False   # pure reshape: flat order of a sample is unchanged
    l2sq: Optional[Callable] = None        # k2 → Σ_i W_ni² k2_i: squared L2 row norms of W·diag(√k2)
    fold: Optional[tuple] = None           # (W, b) of a final nn.Linear, for folding the margin spec


def elementwise(k: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Bring a constant to a per-sample broadcastable shape (drop a leading batch dim of size 1)."""
    k = torch.as_tensor(k)
    if k.ndim > len(shape):
        if k.ndim == len(shape) + 1 and k.shape[0] == 1:
            k = k[0]
        else:
            raise UnsupportedOperation(f"a constant of shape {tuple(k.shape)} cannot act per sample on "
                                       f"a tensor of per-sample shape {shape}")
    return k


def diag_affine(k, shape: tuple, shift=None) -> Affine:
    """The elementwise affine map ``t ↦ k ⊙ t + shift``."""
    if torch.is_tensor(k):
        k = elementwise(k, shape)
        kk = k
    else:
        kk = torch.tensor(float(k))
    if shift is not None and torch.is_tensor(shift):
        shift = elementwise(shift, shape)
    absk = kk.abs()

    def lin(t):
        return t * kk.to(t) if kk.ndim else t * float(kk)

    def full(t):
        out = lin(t)
        return out + (shift.to(t) if torch.is_tensor(shift) else shift) if shift is not None else out

    def abs_lin(t):
        return t * absk.to(t) if absk.ndim else t * float(absk)

    return Affine(lin, full, abs_lin, diag=kk)


def reshape_affine(shape: tuple) -> Affine:
    def f(t):
        return t.reshape(t.shape[0], *shape)
    return Affine(f, f, f, reshape=True)


def conv_affine(conv: Callable, weight: torch.Tensor, bias, zeros_padding: bool) -> Affine:
    def lin(t):
        return conv(t, weight, None)

    def full(t):
        return conv(t, weight, bias)

    def abs_lin(t):
        return conv(t, weight.abs(), None)

    def l2sq(k2):  # zero padding: each output sees each input pixel at most once, row norm² = conv(k2, W²)
        return conv(k2.unsqueeze(0), weight * weight, None)[0]

    return Affine(lin, full, abs_lin, l2sq=l2sq if zeros_padding else None)


def linear_affine(weight: torch.Tensor, bias) -> Affine:
    def lin(t):
        return F.linear(t, weight)

    def full(t):
        return F.linear(t, weight, bias)

    def abs_lin(t):
        return F.linear(t, weight.abs())

    def l2sq(k2):
        return F.linear(k2, weight * weight)

    return Affine(lin, full, abs_lin, l2sq=l2sq, fold=(weight, bias) if weight.ndim == 2 else None)


def pool_affine(fn: Callable) -> Affine:
    # Average pooling has non-negative weights: |P| = P.
    return Affine(fn, fn, fn)
