"""A straightforward per-layer symbolic-interval propagation: the baseline robustlib.bounds.symbolic is timed against.

The same relaxation as :func:`robustlib.bounds.symbolic` (ReluVal / Neurify symbolic intervals with one error
symbol per unstable ReLU), written the plain way a research library does it for an ``nn.Sequential`` of
Conv2d / Linear / ReLU / Flatten: every neuron keeps a dense affine form ``c + A δ + E η`` from the first layer
on (``A`` materialised as a full d × n matrix per sample, the input box as its diagonal), each layer maps ``c``,
``A`` and the list of error blocks one after the other, and a ReLU appends a dense block of new error terms
(one row per unstable neuron, one-hot, padded to the batch's largest count). No chunking, no sparsity, no
in-place updates, no graph tracing. It serves the benchmark and the tests as an independent implementation: its
bounds must equal robustlib's (up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _map(layer: nn.Module, t: torch.Tensor, bias: bool) -> torch.Tensor:
    """Apply an affine layer to a batch of coefficient tensors (B, k, *shape), without the bias unless asked."""
    B, k = t.shape[:2]
    flat = t.reshape(B * k, *t.shape[2:])
    b = layer.bias if bias else None
    if isinstance(layer, nn.Conv2d):
        out = F.conv2d(flat, layer.weight, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        out = F.linear(flat, layer.weight, b)
    return out.reshape(B, k, *out.shape[1:])


def symbolic(model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor):
    """Output bounds ``(lo, hi)`` of ``model`` over the box ``[lower, upper]`` (shape (B, *input_shape))."""
    B = lower.shape[0]
    center, half = (upper + lower) / 2, (upper - lower) / 2
    d = center[0].numel()
    c = center
    A = torch.diag_embed(half.reshape(B, d)).reshape(B, d, *center.shape[1:])
    E = []   # one dense block (B, K_layer, *shape) per ReLU layer
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            c = _map(layer, c.unsqueeze(1), bias=True).squeeze(1)
            A = _map(layer, A, bias=False)
            E = [_map(layer, e, bias=False) for e in E]
        elif isinstance(layer, nn.Flatten):
            c, A = c.flatten(1), A.flatten(2)
            E = [e.flatten(2) for e in E]
        elif isinstance(layer, nn.ReLU):
            radius = A.abs().sum(1) + sum(e.abs().sum(1) for e in E)
            lo, hi = c - radius, c + radius
            unstable = (lo < 0) & (hi > 0)
            lam = torch.where(hi <= 0, torch.zeros_like(c), torch.ones_like(c))
            lam = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), lam)
            shift = torch.where(unstable, -lam * lo / 2, torch.zeros_like(c))
            view = lam.unsqueeze(1)
            c = lam * c + shift
            A = A * view
            E = [e * view for e in E]
            flat_u, flat_s = unstable.reshape(B, -1), shift.reshape(B, -1)
            K = int(flat_u.sum(1).max()) if flat_u.numel() else 0
            if K:   # new error terms: one-hot rows for each sample's unstable neurons, padded with zeros
                order = torch.argsort(flat_u.to(torch.int8), dim=1, descending=True, stable=True)[:, :K]
                vals = torch.gather(flat_s * flat_u, 1, order)
                new = torch.zeros(B, K, flat_u.shape[1], dtype=c.dtype, device=c.device)
                new.scatter_(2, order.unsqueeze(2), vals.unsqueeze(2))
                E.append(new.reshape(B, K, *c.shape[1:]))
        else:
            raise TypeError(f"naive_symbolic handles Conv2d, Linear, ReLU and Flatten, not {type(layer).__name__}")
    radius = A.abs().sum(1) + sum(e.abs().sum(1) for e in E)
    return c - radius, c + radius
