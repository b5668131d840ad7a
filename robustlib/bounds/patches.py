r"""Symbolic coefficients of a convolutional layer kept as one window of the input per neuron ("patches").

After convolutions, neuron ``(c, y, x)`` depends only on the input pixels of its receptive field: a
``K1 × K2`` window of every input channel, at ``(y·S1 − P1, x·S2 − P2)``, the same window size for every neuron
of a layer. So the coefficients ``A`` of the input noise, ``d`` numbers per neuron when dense, are held as

    P[b, c, y, x, cg, i, j] = A[b, (cg, y·S1 − P1 + i, x·S2 − P2 + j), c, y, x]

(zero where the window leaves the input). Through a convolution ``(k, s, p)`` the window grows to
``K + (k − 1)·S``, its stride to ``S·s`` and its offset to ``P + p·S``; each of the ``k²`` kernel offsets is one
channel contraction of the neurons it reads, written into the shifted part of the wider window. A ReLU scales
``P`` by neuron, the radius sums ``|P|`` over the window, and a Linear on the flattened neurons contracts the
channels position by position and adds each position's windows onto the input grid, which leaves the dense
coefficients of its outputs. A convolution costs ``(window)/d`` of the dense pass of ``d + 1`` columns:
on MNIST_Small's second layer a 10 × 10 window against d = 784 pixels.

The windows are worth keeping while they are smaller than the input; the propagation materialises them
(:func:`dense`) before a layer that would make them larger, and before any layer other than a convolution, an
elementwise affine map, a reshape or a Linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ops import derived


@dataclass
class Patches:
    P: torch.Tensor   # (B, C, H, W, Cg, K1, K2): each neuron's window of the generators' grid
    grid: tuple       # (Cg, Hg, Wg): the per-sample shape of the generators (the input)
    stride: tuple     # (S1, S2): window step from one neuron to the next
    padding: tuple    # (P1, P2): the window of neuron (0, 0) starts at (−P1, −P2)

    def like(self, P: torch.Tensor, stride=None, padding=None) -> "Patches":
        return Patches(P, self.grid, self.stride if stride is None else stride,
                       self.padding if padding is None else padding)

    @property
    def window(self) -> tuple:
        return tuple(self.P.shape[-2:])

    @property
    def neurons(self) -> tuple:
        return tuple(self.P.shape[1:4])


def _shift_sum_loop(R: torch.Tensor, step: tuple) -> torch.Tensor:
    n1, n2, N, K1, K2 = R.shape
    out = R.new_zeros(N, (n1 - 1) * step[0] + K1, (n2 - 1) * step[1] + K2)
    for a in range(n1):
        for b in range(n2):
            out[:, a * step[0]:a * step[0] + K1, b * step[1]:b * step[1] + K2] += R[a, b]
    return out


class _ShiftSum(torch.autograd.Function):
    """The additions into slices as one autograd node: its backward cuts the gradient back into the slices.
    (Autograd through the in-place additions themselves would copy the whole output once per slice.)"""

    @staticmethod
    def forward(ctx, R, step):
        ctx.shape, ctx.step = R.shape, step
        return _shift_sum_loop(R, step)

    @staticmethod
    def backward(ctx, g):
        n1, n2, _, K1, K2 = ctx.shape
        s1, s2 = ctx.step
        return torch.stack([torch.stack([g[:, a * s1:a * s1 + K1, b * s2:b * s2 + K2] for b in range(n2)])
                            for a in range(n1)]), None


def _shift_sum(R: torch.Tensor, step: tuple) -> torch.Tensor:
    """``out[:, a·step1 + i, b·step2 + j] = Σ_{a, b} R[a, b, :, i, j]``: windows (N, K1, K2) placed on a grid with the
    given step and added, (N, (n1 − 1)·step1 + K1, (n2 − 1)·step2 + K2) for R of shape (n1, n2, N, K1, K2); the
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
    cols = cols.reshape(B, 1, Cg, k1, k2, H, W).permute(0, 1, 5, 6, 2, 3, 4)         # (B, 1, H, W, Cg, k1, k2)
    return Patches(cols * weight.to(s.dtype).reshape(1, C, 1, 1, Cg, k1, k2), grid, tuple(stride), tuple(padding))


def grown(window: tuple, stride: tuple, kernel: tuple) -> tuple:
    """The window after a convolution with this kernel: ``K + (k − 1)·S`` per dimension."""
    return tuple(K + (k - 1) * S for K, k, S in zip(window, kernel, stride))


def smaller_than_input(channels: int, window: tuple, grid: tuple) -> bool:
    """Whether windows of this size hold fewer numbers than the dense coefficients (one per input entry)."""
    return channels * math.prod(window) < math.prod(grid)


def worth_a_conv(p: Patches, weight: torch.Tensor) -> bool:
    """Whether the windows after this convolution stay smaller than the input (else: materialise first)."""
    return smaller_than_input(p.grid[0], grown(p.window, p.stride, tuple(weight.shape[2:])), p.grid)


def conv(p: Patches, weight: torch.Tensor, stride: tuple, padding: tuple, out_shape: tuple) -> Patches:
    """The windows of a zero-padded convolution's outputs (no bias): ``Σ_{c, ky, kx} W[:, c, ky, kx] ·`` (the
    window of the input neuron that offset reads, shifted by ``(ky·S1, kx·S2)``). The input neurons each kernel
    offset reads are strided views of the zero-padded neuron grid; one batched product over the ``k1·k2`` offsets
    contracts their channels, and ``k1·k2`` additions place the shifted windows."""
    P = p.P
    B, C, H, W = P.shape[:4]
    Cg, K1, K2 = P.shape[4:]
    Co, Ho, Wo = out_shape
    k1, k2 = weight.shape[2:]
    S1, S2 = p.stride
    G = Cg * K1 * K2
    Hp, Wp = (Ho - 1) * stride[0] + k1, (Wo - 1) * stride[1] + k2      # the rows / columns the outputs read
    X = F.pad(P.reshape(B, C, H, W, G), (0, 0, padding[1], Wp - W - padding[1], padding[0], Hp - H - padding[0]))
    X = X.unfold(2, k1, stride[0]).unfold(3, k2, stride[1])                       # (B, C, Ho, Wo, G, k1, k2)
    X = X.permute(5, 6, 1, 0, 2, 3, 4).reshape(k1 * k2, C, B * Ho * Wo * G)
    wq = weight.to(P.dtype).permute(2, 3, 0, 1).reshape(k1 * k2, Co, C)
    R = torch.bmm(wq, X).reshape(k1, k2, Co * B * Ho * Wo * Cg, K1, K2)
    new = _shift_sum(R, (S1, S2)).reshape(Co, B, Ho, Wo, Cg, *grown((K1, K2), (S1, S2), (k1, k2)))
    return p.like(new.transpose(0, 1), (S1 * stride[0], S2 * stride[1]),
                  (p.padding[0] + padding[0] * S1, p.padding[1] + padding[1] * S2))


def scale(p: Patches, k: torch.Tensor, in_place: bool = False) -> Patches:
    """Every neuron's window times ``k`` (broadcastable to (B, C, H, W)): a ReLU's slopes, an elementwise map."""
    k = k.reshape(*k.shape[:1], *p.neurons, 1, 1, 1) if k.numel() > 1 else k
    return p.like(p.P.mul_(k) if in_place else p.P * k)


def radius(p: Patches, l2: bool = False) -> torch.Tensor:
    """Σ over each window of |P| (its L2 norm for an L2 ball): (B, C, H, W)."""
    if l2:
        return torch.linalg.vector_norm(p.P, 2, dim=(4, 5, 6))
    return p.P.abs().sum((4, 5, 6))


def _to_grid(t: torch.Tensor, p: Patches) -> torch.Tensor:
    """Crop (B, n, Cg, Hf, Wf), laid out from the first window's corner, to the input grid: (B, n, D)."""
    Cg, Hg, Wg = p.grid
    P1, P2 = p.padding
    Hf, Wf = t.shape[-2:]
    t = F.pad(t, (-P2, P2 + Wg - Wf, -P1, P1 + Hg - Hf))
    return t.reshape(t.shape[0], t.shape[1], Cg * Hg * Wg)


def _by_position(weight: torch.Tensor, C: int, L: int, dtype) -> torch.Tensor:
    """``weight`` (n, C·L) as (L, n, C), contiguous: one (n × C) matrix per neuron position."""
    return derived(weight, ("by position", L),
                   lambda w: w.to(dtype).reshape(-1, C, L).permute(2, 0, 1).contiguous(), dtype)


def linear(p: Patches, weight: torch.Tensor) -> torch.Tensor:
    """A Linear on the flattened neurons: ``(B, D, n_out)`` dense coefficients. One batched product over the
    neuron positions contracts the channels; each position's windows are then added onto the input grid."""
    P = p.P
    B, C, H, W = P.shape[:4]
    Cg, K1, K2 = P.shape[4:]
    n = weight.shape[0]
    S1, S2 = p.stride
    T = torch.bmm(_by_position(weight, C, H * W, P.dtype),
                  P.permute(2, 3, 1, 0, 4, 5, 6).reshape(H * W, C, B * Cg * K1 * K2))
    out = _shift_sum(T.reshape(H, W, n * B * Cg, K1, K2), (S1, S2))
    return _to_grid(out.reshape(n, B, Cg, *out.shape[-2:]).transpose(0, 1), p).transpose(1, 2).contiguous()


def dense(p: Patches) -> torch.Tensor:
    """The coefficients as a dense (B, D, C, H, W) tensor: one gather, each (generator, neuron) pair reading its
    window entry, or a zero where the generator lies outside the window."""
    P = p.P
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
