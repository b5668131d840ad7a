"""The one-hot images that symbolic bounds build from the weights (``Affine.rows``) and the factored first layer.

``rows`` replaces a convolution (or a Linear) of one-hot inputs by a gather from the weights; these tests compare it
with the convolution itself in float64 over many geometries, and the symbolic bounds that use it (and the factored
input coefficients ``s ⊗ J``) with the same propagation through dense passes, values and gradients.
"""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlib import bounds
from robustlib.bounds.ops import conv_rows

sym = importlib.import_module("robustlib.bounds.symbolic")
api = importlib.import_module("robustlib.bounds.api")
pytestmark = pytest.mark.usefixtures("one_thread")

GEOMETRIES = [   # (dims, c_in, c_out, groups, kernel, stride, padding, dilation, spatial)
    (2, 1, 4, 1, 4, 2, 1, 1, (9, 8)), (2, 3, 6, 1, 3, 1, 1, 1, (7, 6)), (2, 4, 6, 2, 3, 2, 0, 2, (9, 9)),
    (2, 4, 4, 4, 3, 1, "same", 1, (6, 5)), (2, 3, 5, 1, 2, 1, "same", 3, (7, 7)), (2, 2, 4, 1, 1, 3, 2, 1, (5, 7)),
    (2, 2, 3, 1, (2, 3), (1, 2), (0, 1), (2, 1), (8, 7)), (2, 3, 3, 1, 5, 1, "valid", 1, (6, 6)),
    (1, 2, 4, 2, 3, 2, 1, 1, (11,)), (1, 3, 2, 1, 4, 1, "same", 2, (9,)), (1, 1, 3, 1, 2, 3, 0, 1, (10,)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}d-k{g[4]}-s{g[5]}-p{g[6]}-d{g[7]}-g{g[3]}")
def test_conv_rows_equal_the_convolution_of_one_hot_inputs(geometry):
    dims, c_in, c_out, groups, k, s, p, d, spatial = geometry
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, k, stride=s, padding=p, dilation=d,
                                                    groups=groups).double()
    fn = F.conv1d if dims == 1 else F.conv2d
    in_shape = (c_in, *spatial)
    out_shape = tuple(conv(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    rows = conv_rows(conv.weight, in_shape, out_shape, conv.stride, conv.padding, conv.dilation, conv.groups)
    n = c_in * torch.Size(spatial).numel()
    g = torch.Generator().manual_seed(dims * 100 + c_in)
    idx = torch.randint(0, n, (3, 7), generator=g)
    vals = torch.randn(3, 7, generator=g, dtype=torch.float64)
    one_hot = torch.zeros(21, n, dtype=torch.float64).scatter(1, idx.reshape(-1, 1), vals.reshape(-1, 1))
    expect = fn(one_hot.reshape(21, *in_shape), conv.weight, None, conv.stride, conv.padding, conv.dilation,
                conv.groups).reshape(3, 7, *out_shape)
    assert torch.equal(rows(idx, vals), expect)
    # every input at once: the layer's Jacobian, row by row
    eye = fn(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape), conv.weight, None, conv.stride,
             conv.padding, conv.dilation, conv.groups)
    assert torch.equal(rows(torch.arange(n).unsqueeze(0), torch.ones(1, n, dtype=torch.float64))[0], eye)


def _net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3), nn.ReLU(),
                         nn.Conv2d(6, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).double()


def _net_and_batch(n: int, seed: int):
    """``_net()`` in eval mode with non-trivial BatchNorm statistics, and a batch of ``n`` inputs with labels."""
    net = _net()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 8, 8, generator=g, dtype=torch.float64)
    return net.eval(), x, torch.randint(0, 5, (n,), generator=g)


def _count_rows(monkeypatch) -> list:
    """The calls of the plans' ``rows``: "gather" for error terms, "jacobian" for a whole layer's Jacobian."""
    calls = []
    prepare = api.prepare

    def spy(model, example):
        plan = prepare(model, example)
        for node in plan.nodes:
            if node.op is not None and node.op.rows is not None:
                node.op.rows = lambda i, v, _r=node.op.rows: calls.append(
                    "jacobian" if i.shape[0] == 1 and torch.equal(i[0], torch.arange(i.shape[1])) else "gather"
                ) or _r(i, v)
        return plan
    monkeypatch.setattr(api, "prepare", spy)
    return calls


@pytest.mark.parametrize("width", [0.02, 0.3])
def test_symbolic_bounds_and_gradients_equal_the_dense_propagation(width, monkeypatch):
    net, x, y = _net_and_batch(5, seed=0)

    def run():
        net.zero_grad()
        lo, hi = bounds.symbolic(net, x - width, x + width)
        m_lo, m_hi = bounds.margin_bounds(net, x - width, x + width, y)
        (m_hi.sum() - m_lo.sum() + hi.sum()).backward()
        return [lo, hi, m_lo, m_hi] + [p.grad.clone() for p in net.parameters()]

    with monkeypatch.context() as m:
        calls = _count_rows(m)
        fast = run()
    assert calls.count("gather") >= 4   # the error terms of three ReLU layers went through gathers (two passes)
    with monkeypatch.context() as m:   # the plain passes: first layer materialised, error terms dense
        m.setattr(sym, "SHORTCUTS", False)
        m.setattr(sym, "PATCHES", False)
        calls = _count_rows(m)
        dense = run()
    assert "gather" not in calls
    for a, b in zip(fast, dense):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a - b).abs().max()
    lo, hi = fast[:2]
    assert (hi - lo).min() >= 0 and (hi - lo).max() > 0


def test_the_first_layer_stays_factored_until_a_relu(monkeypatch):
    """After the first affine layers the input coefficients are ``s ⊗ J`` (when no convolution keeps them as
    windows, ``bounds.patches``); the ReLU gets its radius as one product ``|s| @ |J|`` and materialises them once."""
    monkeypatch.setattr(sym, "PATCHES", False)
    seen = []
    relu = sym.SymbolicRunner.relu
    monkeypatch.setattr(sym.SymbolicRunner, "relu",
                        lambda self, s, *a, **k: seen.append(type(s.A).__name__) or relu(self, s, *a, **k))
    net = _net().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    bounds.symbolic(net, x - 0.1, x + 0.1)
    assert seen[0] == "_Outer" and set(seen[1:]) == {"Tensor"}


def test_batchnorm_parameters_get_the_gradient_of_the_bounds():
    """BatchNorm (eval mode) enters the bounds as a scale and shift made from its parameters when the plan is
    built; they keep their gradient (before 2026-11-26 the plan was built without it: no gradient reached them)."""
    net, x, y = _net_and_batch(3, seed=1)

    def loss():
        return bounds.robust_loss(net, x, y, 0.05).sum()

    loss().backward()
    bn = net[1]
    for p in (bn.weight, bn.bias):
        assert p.grad is not None and p.grad.abs().max() > 0
        for j in range(p.numel()):
            with torch.no_grad():
                p[j] += 1e-6
                up = loss()
                p[j] -= 2e-6
                down = loss()
                p[j] += 1e-6
            assert abs((up - down).item() / 2e-6 - p.grad[j].item()) <= 1e-5 * max(1.0, abs(p.grad[j].item()))


def test_checkpointed_bounds_keep_no_coefficients_for_the_backward_pass():
    """``checkpoint=True`` gives the same robust loss and gradients, while the autograd graph keeps (almost) nothing
    of the symbolic propagation between the forward and the backward pass: each chunk is recomputed there."""
    net, x, y = _net_and_batch(6, seed=2)
    budget = 2 * bounds.estimate_sample_bytes(net, x[:1])      # chunks of two samples

    def run(checkpoint):
        kept = []

        def pack(t):
            kept.append(t.numel() * t.element_size())
            return t
        net.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = bounds.robust_loss(net, x, y, 0.1, memory_budget=budget, checkpoint=checkpoint)
        loss.sum().backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()], sum(kept)

    plain, ckpt = run(False), run(True)
    assert torch.allclose(plain[0], ckpt[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(plain[1], ckpt[1]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert ckpt[2] < plain[2] / 20, (ckpt[2], plain[2])      # bytes the graph holds for the backward pass
    with torch.no_grad():                                       # without autograd there is nothing to recompute
        assert torch.equal(bounds.robust_loss(net, x, y, 0.1, checkpoint=True),
                           bounds.robust_loss(net, x, y, 0.1))


def test_both_radius_forms_agree():
    """The symbolic radius Σ_k |A[:, k]| is taken by abs-sum on a CPU and by vector_norm on CUDA: same values."""
    symbolic = importlib.import_module("robustlib.bounds.symbolic")   # the module (bounds.symbolic is the function)
    t = torch.randn(3, 50, 4, 5, 5, dtype=torch.float64)
    forms = symbolic.L1_FORMS
    assert torch.allclose(forms["abs-sum"](t), forms["vector_norm"](t))
    assert torch.equal(symbolic._l1(t), forms["abs-sum"](t))      # the CPU's form
