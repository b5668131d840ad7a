"""A certificate is never wrong: bounds searched for unsoundness on networks that reuse tensors.

Three classes of mistake are searched for here (issue: "Correctness first"):

1. bounds that depend on whether autograd is on — every bound is computed with and without
   gradients and must be bit-identical;
2. tensors reused after a residual addition — random networks in which a ReLU consumes ``u ± v``
   and ``u`` (or ``v``) is read again later;
3. ``verify`` and the bounds checked against a dense grid of the whole input box on 2-D inputs:
   every grid point lies inside the bounds and no verified point has a misclassified grid point.

The grid test covers more than 10⁵ points per run and allows no violation beyond float round-off.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import bounds

pytestmark = pytest.mark.usefixtures("one_thread")


class ReuseNet(nn.Module):
    """A random 2-D → K network where every ReLU sees a sum whose summands are read again later.

    ``h₀ = W₀x``; per block i: ``u = Lᵢ(relu(h))``, ``v = Sᵢ(x)`` or an earlier ``u``/``h``,
    ``h = relu(u ± v)``; the output adds heads on ``h`` *and* on every earlier ``u`` (the reuse
    that once made in-place ReLU scaling corrupt a live node's error terms).
    """

    def __init__(self, seed: int, width: int = 12, depth: int = 3, d_in: int = 2, k: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.inp = nn.Linear(d_in, width)
        self.lin = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.skip = nn.ModuleList(nn.Linear(d_in, width) for _ in range(depth))
        self.heads = nn.ModuleList(nn.Linear(width, k) for _ in range(depth + 1))
        choice = torch.randint(0, 3, (depth,), generator=g).tolist()
        self.source = [("x", "prev_u", "prev_h")[c] for c in choice]
        self.sign = [1.0 if s else -1.0 for s in torch.randint(0, 2, (depth,), generator=g).tolist()]
        with torch.no_grad():   # shift biases so that many ReLUs are unstable on the box
            for m in self.skip:
                m.bias.add_(torch.randn(width, generator=g) * 2.0)
            for m in self.lin:
                m.weight.mul_(2.0)

    def forward(self, x):
        h = self.inp(x)
        us, hs = [h], [h]
        for i in range(len(self.lin)):
            u = self.lin[i](F.relu(h))
            src = self.source[i]
            v = self.skip[i](x) if src == "x" else (us[-1] if src == "prev_u" else hs[-1])
            h = F.relu(u + v) if self.sign[i] > 0 else F.relu(u - v)
            us.append(u)
            hs.append(h)
        out = self.heads[-1](h)
        for j in range(len(us) - 1):
            out = out + self.heads[j](us[j + 1])
        return out


class IssueNet(nn.Module):
    """The network of the bug report: ``relu(a + f3(x))`` while ``a`` is read again by ``f5``."""

    def __init__(self):
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(2, 32), nn.Linear(32, 32), nn.Linear(2, 32)
        self.f4, self.f5 = nn.Linear(32, 2), nn.Linear(32, 2)

    def forward(self, x):
        a = self.f2(F.relu(self.f1(x)))
        return self.f4(F.relu(a + self.f3(x))) + self.f5(a)


def _grid(lower: torch.Tensor, upper: torch.Tensor, n: int) -> torch.Tensor:
    """n × n points spanning the 2-D box [lower, upper] (corners and edges included)."""
    t = torch.linspace(0, 1, n, dtype=lower.dtype)
    a, b = torch.meshgrid(t, t, indexing="ij")
    frac = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    return lower + frac * (upper - lower)


def test_issue_network_is_not_verified():
    torch.manual_seed(14)
    m = IssueNet().eval()
    with torch.no_grad():
        m.f3.bias.fill_(-3.0)
        m.f4.weight.zero_()
    x0 = torch.rand(1, 2)
    with torch.no_grad():
        y = m(x0).argmax(1)
    lo, hi = bounds.input_box(x0, 0.5)
    pts = _grid(lo[0], hi[0], 401)
    with torch.no_grad():
        wrong = (m(pts).argmax(1) != y).sum().item()
    assert wrong > 0                     # the box holds misclassified points …
    assert not bool(bounds.verify(m, x0, y, 0.5)[0])    # … so it must not be certified
    with torch.no_grad():
        a = bounds.margin_bounds(m, lo, hi, y)
    b = bounds.margin_bounds(m, lo, hi, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _all_bounds(model, lo, hi, y):
    """Every bound the library computes for one box, as a dict of tensors."""
    out = {}
    out["interval"] = bounds.interval(model, lo, hi)
    out["symbolic"] = bounds.symbolic(model, lo, hi)
    out["symbolic+interval"] = bounds.symbolic(model, lo, hi, intersect_interval=True)
    out["symbolic-chunked"] = bounds.symbolic(model, lo, hi, memory_budget=1)
    for method in ("interval", "symbolic"):
        out[f"margin-{method}"] = bounds.margin_bounds(model, lo, hi, y, method)
    out["margin-symbolic+interval"] = bounds.margin_bounds(model, lo, hi, y, "symbolic", intersect_interval=True)
    out["coefficients"] = bounds.margin_coefficients(model, lo, hi, y)
    out["robust_loss"] = (bounds.robust_loss(model, (lo + hi) / 2, y, 0.0, clamp=None),)
    return out


NETS = 30
GRID = 61


def test_reuse_networks_sound_on_dense_grids():
    """30 random tensor-reusing networks, each on a random box: ≥ 10⁵ grid points, zero violations."""
    points = violations = verified = differ = 0
    for seed in range(NETS):
        model = ReuseNet(seed).eval()
        g = torch.Generator().manual_seed(1000 + seed)
        x0 = torch.rand(2, 2, generator=g)
        eps = [0.02, 0.1, 0.3][seed % 3]
        with torch.no_grad():
            y = model(x0).argmax(1)
        lo, hi = bounds.input_box(x0, eps)
        with_grad = _all_bounds(model, lo, hi, y)
        with torch.no_grad():
            without = _all_bounds(model, lo, hi, y)
        for name in with_grad:
            for a, b in zip(with_grad[name], without[name]):
                differ += int(not torch.equal(a.detach(), b))
        for method in ("interval", "symbolic"):
            ok = bounds.verify(model, x0, y, eps, method=method)
            for i in range(2):
                pts = _grid(lo[i], hi[i], GRID)
                with torch.no_grad():
                    z = model(pts)
                margins = z - z[:, y[i]].unsqueeze(1)
                points += len(pts)
                olo, ohi = without[method]
                tol = 1e-5 * (1 + z.abs().max().item())
                violations += int(((z < olo[i] - tol) | (z > ohi[i] + tol)).any(1).sum())
                mlo, mhi = without[f"margin-{method}"]
                violations += int(((margins < mlo[i] - tol) | (margins > mhi[i] + tol)).any(1).sum())
                if ok[i]:
                    verified += 1
                    violations += int((margins.scatter(1, y[i].expand(len(pts), 1), -1.0).amax(1) > tol).sum())
    assert differ == 0, f"{differ} bound tensors differ with and without gradients"
    assert violations == 0, f"{violations} grid points violate a bound or a certificate"
    assert points >= 100_000, points
    assert verified > 0, "no box was verified: the certificate check searched nothing"


@pytest.mark.parametrize("kind", ["mlp", "cnn", "res"])
def test_builtin_families_identical_with_and_without_gradients(kind):
    from test_bounds import _random_box, make_net
    for seed in range(4):
        model, shape = make_net(kind, seed, use_bn=seed % 2 == 0, use_pool=seed % 2 == 1)
        lo, hi = _random_box(shape, 3, seed, torch.float32, 0.3)
        y = torch.tensor([0, 1, 2])
        a = _all_bounds(model, lo, hi, y)
        with torch.no_grad():
            b = _all_bounds(model, lo, hi, y)
        for name in a:
            for s, t in zip(a[name], b[name]):
                assert torch.equal(s.detach(), t), (kind, seed, name)


def test_models_identical_with_and_without_gradients():
    """The library's own networks (a residual ResNet included) give the same bounds either way."""
    for name, shape in (("mnist_small", (1, 28, 28)), ("preact_resnet18", (3, 32, 32))):
        model = rl.models.build(name, in_channels=shape[0], input_size=shape[1]).eval()
        if name == "preact_resnet18":   # a slim copy keeps this test fast: same residual structure
            model = rl.models.PreActResNet(blocks=(1, 1), widths=(4, 8), in_channels=3).eval()
        x = torch.rand(2, *shape)
        lo, hi = bounds.input_box(x, 0.01)
        a = bounds.symbolic(model, lo, hi)
        with torch.no_grad():
            b = bounds.symbolic(model, lo, hi)
        assert torch.equal(a[0].detach(), b[0]) and torch.equal(a[1].detach(), b[1]), name
