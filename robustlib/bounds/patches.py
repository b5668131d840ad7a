r"""Symbolic coefficients of a convolutional layer kept as one window of the input per neuron ("patches").

After convolutions, neuron ``(c, y, x)`` depends only on the input pixels of its receptive field: a
``K1 × K2`` window of every input channel, at ``(y·S1 − P1, x·S2 − P2)``, the same window size for every neuron
of a layer. So the coefficients ``A`` of the input noise, ``d`` numbers per neuron when dense, are held as

    P[i, j, b, y, x, cg, c] = A[b, (cg, y·S1 − P1 + i, x·S2 − P2 + j), c, y, x]

(zero where the window leaves the input). The window's position leads and the neurons' channels come last, so that
placing shifted windows into a wider one (through a convolution, or onto the input grid after a Linear) adds long
contiguous runs of numbers; with the window last it added rows of ``K2`` numbers. Through a convolution
``(k, s, p)`` the window grows to ``K + (k − 1)·S``, its stride to ``S·s`` and its offset to ``P + p·S``; each of
the ``k²`` kernel offsets is one channel contraction of the neurons it reads, added into the shifted part of the
wider window. A ReLU scales
``P`` by neuron, the radius sums ``|P|`` over the window, and a Linear on the flattened neurons contracts the
channels position by position and adds each position's windows onto the input grid, which leaves the dense
coefficients of its outputs. A convolution costs ``(window)/d`` of the dense pass of ``d + 1`` columns:
on MNIST_Small's second layer a 10 × 10 window against d = 784 pixels.

The windows are worth keeping while they are smaller than the input; the propagation materialises them
(:func:`dense`) before a layer that would make them larger, and before any layer other than a convolution, an
elementwise affine map, a reshape or a Linear.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ops import derived


@dataclass
class Patches:
    P: torch.Tensor   # (K1, K2, B, H, W, Cg, C): each neuron's window of the generators' grid, window position first
    grid: tuple       # (Cg, Hg, Wg): the per-sample shape of the generators (the input)
    stride: tuple     # (S1, S2): window step from one neuron to the next
    padding: tuple    # (P1, P2): the window of neuron (0, 0) starts at (−P1, −P2)

    def like(self, P: torch.Tensor, stride=None, padding=None) -> "Patches":
        return Patches(P, self.grid, self.stride if stride is None else stride,
                       self.padding if padding is None else padding)

    @property
    def window(self) -> tuple:
        return tuple(self.P.shape[:2])

    @property
    def neurons(self) -> tuple:
        """(C, H, W)."""
        return (self.P.shape[6], *self.P.shape[3:5])


@functools.lru_cache(maxsize=256)
def _placement(n1: int, n2: int, K1: int, K2: int, s1: int, s2: int) -> torch.Tensor:
    """Row ``(a·s1 + i)·W + b·s2 + j`` of the output grid for every ``(a, b, i, j)``, in R's order (cached per
    shape)."""
    W = (n2 - 1) * s2 + K2
    rows = torch.arange(n1).view(n1, 1, 1, 1) * s1 + torch.arange(K1).view(1, 1, K1, 1)
    cols = torch.arange(n2).view(1, n2, 1, 1) * s2 + torch.arange(K2).view(1, 1, 1, K2)
    return (rows * W + cols).reshape(-1)


def _shift_sum_loop(R: torch.Tensor, step: tuple) -> torch.Tensor:
    """The additions of :func:`_shift_sum`. On a CPU, one ``index_add_`` of every window row into its output row
    (the placement cached per shape): 1.3–2× faster than the strided additions below at MNIST_Small's sizes, and a
    whole symbolic bound at batch 1 1.02× faster on MNIST_Small and MNIST_Large and 1.11× on CIFAR_Small, level at
    batch 16 (one A/B process on the 2-core Intel Xeon, 2026-11-27). Elsewhere grouped by the offset within the
    step: window rows ``q·s ≤ i < (q + 1)·s`` of every window land on output rows ``(a + q)·s + (i − q·s)``, so one
    strided addition per ``(q1, q2)`` places them all (⌈K1/s1⌉·⌈K2/s2⌉ additions instead of one per window; no
    atomics on a GPU)."""
    n1, n2, K1, K2 = R.shape[:4]
    if R.device.type == "cpu":
        index = _placement(n1, n2, K1, K2, *step)
        H, W = (n1 - 1) * step[0] + K1, (n2 - 1) * step[1] + K2
        out = R.new_zeros(H * W, math.prod(R.shape[4:]))
        return out.index_add_(0, index, R.reshape(len(index), -1)).view(H, W, *R.shape[4:])
    s1, s2 = step
    Q1, Q2 = -(-K1 // s1), -(-K2 // s2)
    rest = R.shape[4:]
    out = R.new_zeros(n1 + Q1 - 1, s1, n2 + Q2 - 1, s2, *rest)
    for q1 in range(Q1):
        m1 = min(s1, K1 - q1 * s1)
        for q2 in range(Q2):
            m2 = min(s2, K2 - q2 * s2)
            src = R[:, :, q1 * s1:q1 * s1 + m1, q2 * s2:q2 * s2 + m2].transpose(1, 2)   # (n1, m1, n2, m2, ...)
            out[q1:q1 + n1, :m1, q2:q2 + n2, :m2] += src
    out = out.reshape((n1 + Q1 - 1) * s1, (n2 + Q2 - 1) * s2, *rest)
    return out[:(n1 - 1) * s1 + K1, :(n2 - 1) * s2 + K2]


class _ShiftSum(torch.autograd.Function):
    """The additions into slices as one autograd node: its backward cuts the gradient back into the windows (one
    strided view). (Autograd through the in-place additions themselves would copy the whole output per addition.)"""

    @staticmethod
    def forward(ctx, R, step):
        ctx.shape, ctx.step = R.shape, step
        return _shift_sum_loop(R, step)

    @staticmethod
    def backward(ctx, g):
        n1, n2, K1, K2 = ctx.shape[:4]
        g = g.unfold(0, K1, ctx.step[0]).unfold(1, K2, ctx.step[1])             # (n1, n2, ..., K1, K2)
        return g.movedim((-2, -1), (2, 3)), None


def _shift_sum(R: torch.Tensor, step: tuple) -> torch.Tensor:
    """``out[a·step1 + i, b·step2 + j] = Σ_{a, b} R[a, b, i, j]``: windows (K1, K2, ...) placed on a grid with the
    given step and added, ((n1 − 1)·step1 + K1, (n2 − 1)·step2 + K2, ...) for R of shape (n1, n2, K1, K2, ...); the
    same additions in the same order with and without autograd."""
    if torch.is_grad_enabled() and R.requires_grad:
        return _ShiftSum.apply(R, tuple(step))
    return _shift_sum_loop(R, step)


def from_diag(s: torch.Tensor, grid: tuple, weight: torch.Tensor, stride: tuple, padding: tuple,
              out_shape: tuple) -> Patches:
    """The windows after the first convolution of coefficients that are diagonal, ``A = diag(s)``: the kernel
    times the input half-widths it reads. ``s``: (B, D) in the flat order of ``grid``."""
    B = s.shape[0]
    Cg, Hg, Wg = grid
    C, H, W = out_shape
    k1, k2 = weight.shape[2:]
    # pad (or crop) so that exactly H × W windows fit, then cut them out
    after = [(n - 1) * st + k - g - p for n, st, k, g, p in zip((H, W), stride, (k1, k2), (Hg, Wg), padding)]
    src = F.pad(s.reshape(B, Cg, Hg, Wg), (padding[1], after[1], padding[0], after[0]))
    cols = F.unfold(src, (k1, k2), stride=stride)                                     # (B, Cg·k1·k2, H·W)
    cols = cols.reshape(B, Cg, k1, k2, H, W, 1).permute(2, 3, 0, 4, 5, 1, 6)         # (k1, k2, B, H, W, Cg, 1)
    w = weight.to(s.dtype).permute(2, 3, 1, 0).reshape(k1, k2, 1, 1, 1, Cg, C)
    return Patches(cols * w, grid, tuple(stride), tuple(padding))


def grown(window: tuple, stride: tuple, kernel: tuple) -> tuple:
    """The window after a convolution with this kernel: ``K + (k − 1)·S`` per dimension."""
    return tuple(K + (k - 1) * S for K, k, S in zip(window, kernel, stride))


def smaller_than_input(channels: int, window: tuple, grid: tuple) -> bool:
    """Whether windows of this size hold fewer numbers than the dense coefficients (one per input entry)."""
    return channels * math.prod(window) < math.prod(grid)


def worth_a_conv(p: Patches, weight: torch.Tensor) -> bool:
    """Whether the windows after this convolution stay smaller than the input (else: materialise first)."""
    return smaller_than_input(p.grid[0], grown(p.window, p.stride, tuple(weight.shape[2:])), p.grid)


def _placed(t: torch.Tensor, rows: int, cols: int, top: int, left: int) -> torch.Tensor:
    """``t`` (h, w, ...) with its rows and columns shifted by ``(top, left)`` onto a zero (rows, cols, ...) grid:
    ``out[r, c] = t[r − top, c − left]`` where that exists, zero elsewhere (a pad or a crop of the first two dims)."""
    out = t.new_zeros(rows, cols, *t.shape[2:])
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(rows, t.shape[0] + top), min(cols, t.shape[1] + left)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = t[r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def conv(p: Patches, weight: torch.Tensor, stride: tuple, padding: tuple, out_shape: tuple) -> Patches:
    """The windows of a zero-padded convolution's outputs (no bias): ``Σ_{c, ky, kx} W[:, c, ky, kx] ·`` (the
    window of the input neuron that offset reads, shifted by ``(ky·S1, kx·S2)``). The input neurons each kernel
    offset reads are strided views of the zero-padded neuron grid; one batched product over the ``k1·k2`` offsets
    contracts their channels, and :func:`_shift_sum` adds the shifted windows."""
    P = p.P
    K1, K2, B, H, W, Cg, C = P.shape
    Co, Ho, Wo = out_shape
    k1, k2 = weight.shape[2:]
    S1, S2 = p.stride
    Hp, Wp = (Ho - 1) * stride[0] + k1, (Wo - 1) * stride[1] + k2      # the rows / columns the outputs read
    X = _placed(P.permute(3, 4, 0, 1, 2, 5, 6), Hp, Wp, padding[0], padding[1])   # (Hp, Wp, K1, K2, B, Cg, C)
    X = X.unfold(0, k1, stride[0]).unfold(1, k2, stride[1])                         # (Ho, Wo, K1, K2, B, Cg, C, k1, k2)
    X = X.permute(7, 8, 2, 3, 4, 0, 1, 5, 6).reshape(k1 * k2, K1 * K2 * B * Ho * Wo * Cg, C)
    # contiguous: on the 2-core Intel Xeon the product of MNIST_Small's second layer took 122 us with the permuted
    # view of the weight and 41 us with a contiguous copy (2026-11-27)
    wq = derived(weight, "(k1·k2, C, Co)",
                 lambda w: w.to(P.dtype).permute(2, 3, 1, 0).reshape(k1 * k2, C, Co).contiguous(), P.dtype)
    R = torch.bmm(X, wq).reshape(k1, k2, K1, K2, B * Ho * Wo * Cg * Co)
    new = _shift_sum(R, (S1, S2))
    return p.like(new.reshape(*new.shape[:2], B, Ho, Wo, Cg, Co), (S1 * stride[0], S2 * stride[1]),
                  (p.padding[0] + padding[0] * S1, p.padding[1] + padding[1] * S2))


def _by_neuron(k: torch.Tensor, p: Patches) -> torch.Tensor:
    """Factors per neuron, broadcastable to (B, C, H, W), laid out to broadcast against ``p.P``."""
    C, H, W = p.neurons
    k = k.reshape(k.shape[0], C, H, W).permute(0, 2, 3, 1)
    return k.reshape(1, 1, k.shape[0], H, W, 1, C)


def scale(p: Patches, k: torch.Tensor, in_place: bool = False) -> Patches:
    """Every neuron's window times ``k`` (broadcastable to (B, C, H, W)): a ReLU's slopes, an elementwise map."""
    k = _by_neuron(k, p) if k.numel() > 1 else k
    return p.like(p.P.mul_(k) if in_place else p.P * k)


def radius(p: Patches, l2: bool = False) -> torch.Tensor:
    """Σ over each window of |P| (its L2 norm for an L2 ball): (B, C, H, W)."""
    r = torch.linalg.vector_norm(p.P, 2, dim=(0, 1, 5)) if l2 else p.P.abs().sum((0, 1, 5))   # (B, H, W, C)
    return r.permute(0, 3, 1, 2)


def _by_position(weight: torch.Tensor, C: int, L: int, dtype) -> torch.Tensor:
    """``weight`` (n, C·L) as (L, C, n), contiguous: one (C × n) matrix per neuron position."""
    return derived(weight, ("by position", L),
                   lambda w: w.to(dtype).reshape(-1, C, L).permute(2, 1, 0).contiguous(), dtype)


def linear(p: Patches, weight: torch.Tensor) -> torch.Tensor:
    """A Linear on the flattened neurons: ``(B, D, n_out)`` dense coefficients. One batched product over the
    neuron positions contracts the channels; each position's windows are then added onto the input grid."""
    P = p.P
    K1, K2, B, H, W, Cg, C = P.shape
    n = weight.shape[0]
    _, Hg, Wg = p.grid
    T = torch.bmm(P.permute(3, 4, 0, 1, 2, 5, 6).reshape(H * W, K1 * K2 * B * Cg, C),
                  _by_position(weight, C, H * W, P.dtype))                          # (H·W, K1·K2·B·Cg, n)
    out = _shift_sum(T.reshape(H, W, K1, K2, B * Cg * n), p.stride)               # windows of neuron (0, 0) at 0
    out = _placed(out, Hg, Wg, -p.padding[0], -p.padding[1])                        # (Hg, Wg, B·Cg·n)
    return out.reshape(Hg, Wg, B, Cg, n).permute(2, 3, 0, 1, 4).reshape(B, Cg * Hg * Wg, n)


def dense(p: Patches) -> torch.Tensor:
    """The coefficients as a dense (B, D, C, H, W) tensor: one gather, each (generator, neuron) pair reading its
    window entry, or a zero where the generator lies outside the window."""
    P = p.P.permute(2, 6, 3, 4, 5, 0, 1)                                            # (B, C, H, W, Cg, K1, K2)
    B, C, H, W = P.shape[:4]
    Cg, K1, K2 = P.shape[4:]
    _, Hg, Wg = p.grid
    dev = P.device
    K = math.prod(p.grid)
    g = torch.arange(K, device=dev)                                                   # every generator, flat
    wy = (g // Wg % Hg).unsqueeze(1) - (torch.arange(H, device=dev) * p.stride[0] - p.padding[0])     # (K, H)
    wx = (g % Wg).unsqueeze(1) - (torch.arange(W, device=dev) * p.stride[1] - p.padding[1])            # (K, W)
    flat = ((g // (Hg * Wg)).reshape(K, 1, 1) * K1 + wy.unsqueeze(2)) * K2 + wx.unsqueeze(1)        # (K, H, W)
    inside = ((wy >= 0) & (wy < K1)).unsqueeze(2) & ((wx >= 0) & (wx < K2)).unsqueeze(1)
    flat = torch.where(inside, flat, Cg * K1 * K2).reshape(K, H * W).t()               # (HW, K)
    Pz = F.pad(P.reshape(B, C, H * W, Cg * K1 * K2), (0, 1))                     # a zero after every window
    out = Pz.gather(3, flat.expand(B, C, H * W, K))                                  # (B, C, HW, K)
    return out.permute(0, 3, 1, 2).reshape(B, K, C, H, W)
