"""Affine maps of the supported layers, in the three forms the propagations need.

Every input-dependent node that is not a ReLU or a sum of two traced tensors is
an affine map ``t ↦ W t + b``; :class:`Affine` holds it as ``lin`` (``W t``),
``full`` (``W t + b``, for centres) and ``abs_lin`` (``|W| t``, for IBP radii),
plus what lets the propagations take shortcuts: the diagonal of an elementwise
map, whether it is a pure reshape, the squared row norms for L2 balls, and the
(W, b) of a final Linear for folding the margin specification.
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

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
    rows: Optional[Callable] = None        # (idx (B, K), vals (B, K)) → (B, K, *out): vals ⊙ W[:, idx]ᵀ,
    #                                        the images of one-hot inputs, without a pass over dense ones
    rows_fan_in: int = 0                   # multiply-adds per output of the dense pass that ``rows`` replaces
    conv: Optional[tuple] = None           # (weight, stride, padding before) of a 2-D zero-padded convolution
    #                                        with groups = dilation = 1: what ``bounds.patches`` maps windows by
    matrix: Optional[torch.Tensor] = None  # the weight of a Linear acting on a flat input


# (weight id, storage, device, version, tag, dtype) → (weak reference to the weight, a layout of it): without autograd a
# layer's weight is rearranged once, not at every call (on MNIST_Large's 3136 → 512 Linear the permutation by position
# costs more than the product it feeds). The storage and device make a moved model (``model.cpu()``, which swaps each
# parameter's data without a version bump) a miss: keyed by identity and version alone, bounds on the CPU of a model
# certified before on a GPU read the GPU copy (found on an H200, 2026-11-28). A handful of entries; cleared when it
# grows past 64.
_DERIVED: dict = {}


def forget_derived() -> None:
    """Drop every kept copy (:mod:`robustlib.bounds.plans` calls it when weights changed without a new version)."""
    _DERIVED.clear()


def derived(weight: torch.Tensor, tag, make: Callable, dtype) -> torch.Tensor:
    """``make(weight)`` (a rearranged copy of a layer's weight, in ``dtype``), kept between calls without autograd and
    keyed by the weight's storage and version, so that an in-place update (an optimizer step) or new data (a move to
    another device) makes it anew; under autograd made at each call, so that gradients reach the weight. A change
    that bumps no version (``weight.data``, a fused optimizer, a collective) is caught by the checksum of
    :mod:`robustlib.bounds.plans`, which then drops every copy (:func:`forget_derived`)."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return make(weight)
    key = (id(weight), weight.data_ptr(), weight.device, weight._version, tag, dtype)
    hit = _DERIVED.get(key)
    if hit is None or hit[0]() is not weight:
        if len(_DERIVED) >= 64:
            _DERIVED.clear()
        hit = _DERIVED[key] = (weakref.ref(weight), make(weight.detach()))
    return hit[1]


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


def _pair(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _padding_before(padding, kernel: tuple, dilation: tuple) -> tuple:
    """The zeros a convolution pads before each spatial dimension: ``padding`` is ints, ``"valid"`` or ``"same"``."""
    n = len(kernel)
    if padding == "valid":
        return (0,) * n
    if padding == "same":   # PyTorch pads total // 2 before, the rest after
        return tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return _pair(padding, n)


def conv_geometry(weight: torch.Tensor, stride, padding, dilation, groups: int) -> Optional[tuple]:
    """``(stride, padding before)`` of a 2-D convolution that ``bounds.patches`` can follow window by window
    (groups = dilation = 1), else None."""
    if weight.ndim != 4 or groups != 1 or _pair(dilation, 2) != (1, 1):
        return None
    return _pair(stride, 2), _padding_before(padding, tuple(weight.shape[2:]), (1, 1))


@functools.lru_cache(maxsize=64)
def _offsets(in_shape: tuple, out_shape: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
             device: torch.device) -> torch.Tensor:
    """``offset[i, o]``: the flat kernel offset joining input pixel ``i`` to output pixel ``o`` of a convolution,
    ``prod(kernel)`` where none does (made once per geometry: a few ms for a 32 × 32 layer)."""
    offset = torch.zeros((), dtype=torch.long, device=device)
    ok = torch.ones((), dtype=torch.bool, device=device)
    for j, (n_in, n_out, k) in enumerate(zip(in_shape, out_shape, kernel)):
        i = torch.arange(n_in, device=device).reshape(-1, 1)
        o = torch.arange(n_out, device=device).reshape(1, -1)
        t = i + padding[j] - o * stride[j]                                   # = a · dilation
        a = torch.div(t, dilation[j], rounding_mode="floor")
        good = (a * dilation[j] == t) & (a >= 0) & (a < k)
        view = (*([1] * j), n_in, *([1] * j), n_out)   # (in_1..in_j, out_1..out_j) laid out as (in..., out...)
        offset = offset.unsqueeze(-1).unsqueeze(j) * k + a.clamp(0, k - 1).reshape(view)
        ok = ok.unsqueeze(-1).unsqueeze(j) & good.reshape(view)
    return torch.where(ok, offset, torch.full_like(offset, math.prod(kernel))).reshape(
        math.prod(in_shape), math.prod(out_shape))


def conv_rows(weight: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int], stride, padding, dilation,
              groups: int) -> Callable:
    """The images under a zero-padded convolution (no bias) of one-hot inputs, built from the weight alone.

    An input pixel ``i`` reaches output pixel ``o`` through at most one kernel offset ``a``, the one with
    ``i + pad = o·stride + a·dilation`` (per spatial dimension). A table of that offset for every (input pixel,
    output pixel) pair (:func:`_offsets`, cached per geometry) turns the image of ``vals · onehot(c, i)`` into one
    gather from ``vals · W[:, c, :]``: the cost of writing the output, where running the convolution on one-hot
    images costs a full convolution per column. ``padding`` is a tuple of ints, ``"valid"`` or ``"same"``.
    """
    n = len(in_shape) - 1
    kernel = tuple(weight.shape[2:])
    stride, dilation = _pair(stride, n), _pair(dilation, n)
    padding = _padding_before(padding, kernel, dilation)
    c_in, c_out = in_shape[0], out_shape[0]
    n_sp_in, n_sp_out, n_k = math.prod(in_shape[1:]), math.prod(out_shape[1:]), math.prod(kernel)
    g_in, g_out = c_in // groups, c_out // groups
    geometry = (tuple(in_shape[1:]), tuple(out_shape[1:]), kernel, stride, padding, dilation)

    def by_input_channel(weight_: torch.Tensor, dtype) -> torch.Tensor:
        # wc[c, m, a] = W[m, c mod g_in, a] for output channels m of c's group, 0 for the others and at a = n_k
        w = weight_.to(dtype).reshape(groups, g_out, g_in, n_k).permute(0, 2, 1, 3)   # (g, g_in, g_out, n_k)
        if groups == 1:
            wc = w.reshape(c_in, c_out, n_k)
        else:
            mine = torch.eye(groups, dtype=dtype, device=w.device).reshape(groups, 1, groups, 1, 1)
            wc = (w.unsqueeze(2) * mine).reshape(c_in, c_out, n_k)
        return torch.cat([wc, wc.new_zeros(c_in, c_out, 1)], dim=2)

    def rows(idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        B, K = idx.shape
        offset = _offsets(*geometry, idx.device)
        wc = derived(weight, ("by input channel", groups), lambda w: by_input_channel(w, vals.dtype), vals.dtype)
        sel = wc[idx // n_sp_in] * vals.reshape(B, K, 1, 1)                  # (B, K, C_out, n_k + 1)
        where = offset[idx % n_sp_in].unsqueeze(2).expand(B, K, c_out, n_sp_out)
        return torch.gather(sel, 3, where).reshape(B, K, *out_shape)
    return rows


# Images in a batch up to which a CPU convolution runs PyTorch's own kernel (im2col and one product per image)
# instead of oneDNN's: the centre of a one-sample chunk goes through every convolution of the network alone. On the
# 2-core Intel Xeon (2026-11-27) oneDNN took 44 / 59 us for MNIST_Small's two convolutions of one image and the own
# kernel 9 / 25 us; at two images 62 against 31 us for the second, at four 70 against 56 us, at sixteen 98 against
# 740 us; 3 × 3 convolutions at stride 1 ran alike (27 against 27 us for 3 → 32 channels on 32 × 32).
SMALL_CONV_BATCH = 2


def _small_batch_kernel(conv: Callable) -> Callable:
    """``conv`` that runs PyTorch's own CPU kernel (oneDNN off for the call) on batches of at most
    :data:`SMALL_CONV_BATCH` images, unchanged on other batches and devices. The switch is process-wide, so the
    bounds of one network are not to be computed from two threads at once."""
    mkldnn = torch.backends.mkldnn

    def run(t, w, b):
        if t.shape[0] > SMALL_CONV_BATCH or t.device.type != "cpu" or not mkldnn.enabled:
            return conv(t, w, b)
        mkldnn.enabled = False
        try:
            return conv(t, w, b)
        finally:
            mkldnn.enabled = True
    return run


def conv_affine(conv: Callable, weight: torch.Tensor, bias, zeros_padding: bool,
                rows: Optional[Callable] = None, geometry: Optional[tuple] = None) -> Affine:
    conv = _small_batch_kernel(conv)

    def lin(t):
        return conv(t, weight, None)

    def full(t):
        return conv(t, weight, bias)

    def abs_lin(t):
        return conv(t, weight.abs(), None)

    def l2sq(k2):  # zero padding: each output sees each input pixel at most once, row norm² = conv(k2, W²)
        return conv(k2.unsqueeze(0), weight * weight, None)[0]

    return Affine(lin, full, abs_lin, l2sq=l2sq if zeros_padding else None, rows=rows if zeros_padding else None,
                  rows_fan_in=weight[0].numel(),
                  conv=(weight, *geometry) if zeros_padding and geometry is not None else None)


def linear_affine(weight: torch.Tensor, bias, in_shape: tuple = ()) -> Affine:
    def lin(t):
        return F.linear(t, weight)

    def full(t):
        return F.linear(t, weight, bias)

    def abs_lin(t):
        return F.linear(t, weight.abs())

    def l2sq(k2):
        return F.linear(k2, weight * weight)

    def rows(idx, vals):   # one-hot inputs pick columns of W
        B, K = idx.shape
        cols = weight.index_select(1, idx.reshape(-1)).t().to(vals.dtype)
        return cols.reshape(B, K, -1) * vals.unsqueeze(-1)

    flat = weight.ndim == 2 and len(in_shape) == 1
    return Affine(lin, full, abs_lin, l2sq=l2sq, fold=(weight, bias) if weight.ndim == 2 else None,
                  rows=rows if flat else None, rows_fan_in=weight.shape[-1], matrix=weight if flat else None)


def pool_affine(fn: Callable) -> Affine:
    # Average pooling has non-negative weights: |P| = P.
    return Affine(fn, fn, fn)
