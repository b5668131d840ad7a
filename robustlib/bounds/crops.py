r"""Error terms through convolutions as small crops of the neuron grid, one per term.

A fresh error term of an unstable ReLU acts on one neuron ``(c, y, x)``; after a convolution ``(k, s, p)`` it
reaches only the outputs whose receptive field holds ``(y, x)`` — at most ``⌈k/s⌉`` rows and columns — and after
the next convolution a few more. Dense, each term is a whole image of the layer (``C × H × W`` numbers, through
every later convolution a full pass); here each is a crop ``(C, h, w)`` at its own corner ``(oy, ox)``, entries
outside the grid kept at zero:

    E[b, j, c, oy_j + i, ox_j + i'] = T[b, j, c, i, i'].

A convolution of stride ``s`` maps a crop of ``h`` rows to one of ``(h + k − 2)//s + 1``: the crops run through
the convolution at stride 1 with full padding (one batched ``F.conv2d``; ``s²`` times the outputs needed, each
crop being small), then every term keeps the rows of its own stride phase. A ReLU or an elementwise map scales
each crop by its neurons' factors (a gather); the radius adds ``|T|`` onto the grid (a scatter-add). A Linear on
the flattened grid reads only the weight columns of each crop's entries: one weighted sum of gathered columns per
term (``F.embedding_bag``), ``C·h·w`` of them where the dense image takes the product of all ``C·H·W``; its
outputs are dense. Before any other layer, or when a crop would cover half the grid, the crops become dense images
again (:func:`dense`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .ops import derived

# The kernel slices of fresh error terms (:func:`from_sparse`) read by one flat index_select (whose backward is an
# index_add_) rather than by advanced indexing (an index_put_ with accumulate in the backward); False: the latter.
# On the 2-core AMD EPYC (2026-11-28, one A/B process, three interleaved rounds on 500 Fashion-MNIST images) a
# symbolic-training epoch of MNIST_Small ran 1.24x faster and a MixTrain epoch 1.07x; on a GPU see from_sparse.
INDEX_SELECT = True


@dataclass
class Crops:
    T: torch.Tensor    # (B, K, C, h, w): each term's values on its crop
    oy: torch.Tensor   # (B, K) the crop's first row in the grid (may be negative: those rows hold zeros)
    ox: torch.Tensor   # (B, K) its first column
    grid: tuple        # (C, H, W): the layer's per-sample shape
    pos: Optional[torch.Tensor] = None   # _positions, made once for the crops' corners and shared by their copies

    def like(self, T: torch.Tensor) -> "Crops":
        return Crops(T, self.oy, self.ox, self.grid, self.pos)


def _out_size(n: int, k: int, s: int) -> int:
    """Rows of the outputs a crop of ``n`` rows reaches through a kernel ``k`` at stride ``s`` (at most)."""
    return (n + k - 2) // s + 1


def worth_a_conv(cr_hw: tuple, weight: torch.Tensor, stride: tuple, out_shape: tuple) -> bool:
    """Whether crops of ``cr_hw`` rows × columns stay below half the output grid after this convolution."""
    h, w = (_out_size(n, k, s) for n, k, s in zip(cr_hw, weight.shape[2:], stride))
    return 2 * h * w <= out_shape[1] * out_shape[2]


def _first(o: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    """The first output row whose window reaches input row ``o``: ⌈(o + p − k + 1) / s⌉."""
    return -torch.div(-(o + p - k + 1), s, rounding_mode="floor")


def _inside(first: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """(B, K, n): whether rows ``first + i`` lie in ``[0, size)``."""
    rows = first.unsqueeze(-1) + torch.arange(n, device=first.device)
    return (rows >= 0) & (rows < size)


def from_sparse(idx: torch.Tensor, vals: torch.Tensor, in_shape: tuple, weight: torch.Tensor, stride: tuple,
                padding: tuple, out_shape: tuple) -> Crops:
    """The crops of one-hot terms ``vals ⊙ onehot(idx)`` (flat neuron indices of ``in_shape``) after a zero-padded
    convolution (no bias): each term's kernel slice, read off the weights."""
    B, K = idx.shape
    C, H, W = in_shape
    k1, k2 = weight.shape[2:]
    c, y, x = idx // (H * W), idx // W % H, idx % W
    r0, c0 = _first(y, k1, stride[0], padding[0]), _first(x, k2, stride[1], padding[1])
    h, w = _out_size(1, k1, stride[0]), _out_size(1, k2, stride[1])
    dev = idx.device
    # kernel offsets a = y + p − r·s of rows r = r0 + i; a sentinel k (a zero) where out of range or off the grid
    a = y.unsqueeze(-1) + padding[0] - (r0.unsqueeze(-1) + torch.arange(h, device=dev)) * stride[0]
    b = x.unsqueeze(-1) + padding[1] - (c0.unsqueeze(-1) + torch.arange(w, device=dev)) * stride[1]
    a = torch.where((a >= 0) & (a < k1) & _inside(r0, h, out_shape[1]), a, k1)
    b = torch.where((b >= 0) & (b < k2) & _inside(c0, w, out_shape[2]), b, k2)
    Wz = F.pad(weight.to(vals.dtype).permute(1, 2, 3, 0), (0, 0, 0, 1, 0, 1))        # (C, k1 + 1, k2 + 1, Co)
    # one flat row index per (term, i, i'): index_select's backward adds the rows' gradients with index_add_, where
    # advanced indexing (Wz[c, a, b]) backpropagates through index_put_(accumulate=True), which on CUDA sorts its
    # tens of thousands of repeated indices: 16-26 ms a call, 72% of a symbolic-training step of MNIST_Small on an
    # H200 (benchmarks/results/profile-certified-cuda.json, 2026-11-28)
    if INDEX_SELECT:
        rows = (c.reshape(B, K, 1, 1) * (k1 + 1) + a.unsqueeze(-1)) * (k2 + 1) + b.unsqueeze(-2)   # (B, K, h, w)
        T = Wz.reshape(-1, Wz.shape[-1]).index_select(0, rows.reshape(-1)).reshape(B, K, h, w, -1)
    else:   # the before, for the benchmarks
        T = Wz[c.reshape(B, K, 1, 1), a.unsqueeze(-1), b.unsqueeze(-2)]              # (B, K, h, w, Co)
    return Crops(T.permute(0, 1, 4, 2, 3) * vals.reshape(B, K, 1, 1, 1), r0, c0, tuple(out_shape))


def conv(cr: Crops, weight: torch.Tensor, stride: tuple, padding: tuple, out_shape: tuple) -> Crops:
    """The crops after a zero-padded convolution (no bias)."""
    B, K, C, h, w = cr.T.shape
    k1, k2 = weight.shape[2:]
    (s1, s2), (p1, p2) = stride, padding
    ho, wo = _out_size(h, k1, s1), _out_size(w, k2, s2)
    full = F.conv2d(cr.T.reshape(B * K, C, h, w), weight.to(cr.T.dtype), padding=(k1 - 1, k2 - 1))
    r0, c0 = _first(cr.oy, k1, s1, p1), _first(cr.ox, k2, s2, p2)
    # full[u] is the output whose window starts at the crop's row u − (k − 1): row r = r0 + i is u = u0 + i·s
    full = F.pad(full, (0, wo * s2 - full.shape[3], 0, ho * s1 - full.shape[2]))
    Co = full.shape[1]
    if s1 > 1:
        u0 = (r0 * s1 - p1 - cr.oy + k1 - 1).reshape(B * K, 1, 1, 1, 1)
        full = full.reshape(B * K, Co, ho, s1, -1).gather(3, u0.expand(-1, Co, ho, 1, full.shape[3])).squeeze(3)
    else:
        full = full[:, :, :ho]
    if s2 > 1:
        v0 = (c0 * s2 - p2 - cr.ox + k2 - 1).reshape(B * K, 1, 1, 1, 1)
        full = full.reshape(B * K, Co, ho, wo, s2).gather(4, v0.expand(-1, Co, ho, wo, 1)).squeeze(4)
    else:
        full = full[..., :wo]
    inside = _inside(r0, ho, out_shape[1]).unsqueeze(-1) & _inside(c0, wo, out_shape[2]).unsqueeze(-2)
    T = full.reshape(B, K, Co, ho, wo) * inside.unsqueeze(2).to(full.dtype)
    return Crops(T, r0, c0, tuple(out_shape))


def _positions(cr: Crops) -> torch.Tensor:
    """(B, K·h·w) flat grid positions (row·W + column) of every crop entry, clamped onto the grid (entries off the
    grid are zeros, so what they read or add there does not matter)."""
    if cr.pos is None:
        B, K, _, h, w = cr.T.shape
        _, H, W = cr.grid
        rows = (cr.oy.unsqueeze(-1) + torch.arange(h, device=cr.oy.device)).clamp(0, H - 1)
        cols = (cr.ox.unsqueeze(-1) + torch.arange(w, device=cr.ox.device)).clamp(0, W - 1)
        cr.pos = (rows.unsqueeze(-1) * W + cols.unsqueeze(-2)).reshape(B, K * h * w)
    return cr.pos


def scale(cr: Crops, k: torch.Tensor) -> Crops:
    """Every entry times its neuron's factor ``k`` (broadcastable to (B, C, H, W)): a ReLU's slopes, a diagonal."""
    B, K, C, h, w = cr.T.shape
    kk = k.reshape(-1, C, cr.grid[1] * cr.grid[2]).expand(B, -1, -1)
    g = kk.gather(2, _positions(cr).unsqueeze(1).expand(-1, C, -1))                 # (B, C, K·h·w)
    return cr.like(cr.T * g.reshape(B, C, K, h, w).transpose(1, 2))


def radius(cr: Crops) -> torch.Tensor:
    """Σ over the terms of |E| at every neuron: (B, C, H, W)."""
    B, K, C, h, w = cr.T.shape
    _, H, W = cr.grid
    src = cr.T.abs().transpose(1, 2).reshape(B, C, K * h * w)
    out = src.new_zeros(B, C, H * W).scatter_add(2, _positions(cr).unsqueeze(1).expand(-1, C, -1), src)
    return out.reshape(B, C, H, W)


def linear(cr: Crops, weight: torch.Tensor) -> torch.Tensor:
    """A Linear (no bias) on the flattened grid, ``weight`` (n, C·H·W): the terms' dense images ``(B, K, n)``,
    ``Σ_e T_e · W[:, index_e]`` over each crop's entries — one bag per term of ``F.embedding_bag`` over the
    transposed weight (made once per weight version without autograd)."""
    B, K, C, h, w = cr.T.shape
    _, H, W = cr.grid
    pos = _positions(cr).reshape(B, K, 1, h * w)
    index = pos + torch.arange(C, device=pos.device).reshape(1, 1, C, 1) * (H * W)        # (B, K, C, h·w)
    Wt = derived(weight, "transposed", lambda w_: w_.t().to(cr.T.dtype).contiguous(), cr.T.dtype)
    out = _ColumnSums.apply(cr.T.reshape(B * K, C * h * w), index.reshape(B * K, C * h * w), Wt)
    return out.reshape(B, K, -1)


class _ColumnSums(torch.autograd.Function):
    """``out[k] = Σ_e T[k, e] · Wt[index[k, e]]`` by ``F.embedding_bag``, the same numbers with and without autograd.
    Its backward runs as two dense products (``g Wtᵀ`` gathered at the indices for ``T``, the terms scattered to
    dense rows times ``g`` for ``Wt``): ``F.embedding_bag``'s own backward made MNIST_Large's symbolic robust loss
    1.36× slower forward + backward than dense images on the 2-core CPU (2026-11-27, batch 4, ε = 0.01)."""

    @staticmethod
    def forward(ctx, T, index, Wt):
        ctx.save_for_backward(T, index, Wt)
        return F.embedding_bag(index, Wt, mode="sum", per_sample_weights=T)

    @staticmethod
    def backward(ctx, g):
        T, index, Wt = ctx.saved_tensors
        dT = dWt = None
        if ctx.needs_input_grad[0]:
            dT = g.mm(Wt.t()).gather(1, index)
        if ctx.needs_input_grad[2]:
            dense = T.new_zeros(T.shape[0], Wt.shape[0]).scatter_add_(1, index, T)
            dWt = dense.t().mm(g)
        return dT, None, dWt


def dense(cr: Crops) -> torch.Tensor:
    """The terms as dense images (B, K, C, H, W)."""
    B, K, C, h, w = cr.T.shape
    _, H, W = cr.grid
    pos = _positions(cr).reshape(B, K, 1, h * w).expand(-1, -1, C, -1)
    out = cr.T.new_zeros(B, K, C, H * W).scatter_add(3, pos, cr.T.reshape(B, K, C, h * w))
    return out.reshape(B, K, C, H, W)
