"""Tests of robustlib.bounds: reference values, soundness properties, errors, a published checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustlib import bounds
from robustlib.bounds import UnsupportedOperation

from conftest import REFERENCE as REF
PROP = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("one_thread")


def _tol(dtype):
    return 1e-9 if dtype == torch.float64 else 2e-4


# --------------------------------------------------------------------------------------------------
# 1. auto_LiRPA's reference bounds (tests/data/vision_test_data of Verified-Intelligence/auto_LiRPA)
# --------------------------------------------------------------------------------------------------

class VisionTestNet(nn.Module):
    """The residual CNN of auto_LiRPA's vision test (the reference uses ``x += ...``; same graph)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.shortcut = nn.Conv2d(3, 3, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(192, 10)

    def forward(self, x):
        x_ = x
        x = F.relu(self.conv1(self.bn(x)))
        x = x + self.shortcut(x_)
        x = F.relu(self.conv2(x))
        x = x.view(x.size(0), -1)
        return self.fc1(x)


@pytest.fixture(scope="module")
def vision_ref():
    path = REF / "auto_lirpa-vision_test_data"
    if not path.exists():
        pytest.skip(f"auto_LiRPA reference file not found at {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    model = VisionTestNet().eval()
    model.load_state_dict(data["model"])
    return model, data


def _close(ours, ref, what):
    # The reference is float32 (auto_LiRPA's own test allows rtol 1e-4); we ask ~1e-6.
    err = (ours - ref.to(ours)).abs().max().item()
    assert torch.allclose(ours, ref.to(ours), rtol=1e-5, atol=1e-6), f"{what}: max abs error {err:.3g}"
    return err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_linf_interval_and_symbolic(vision_ref, dtype):
    model, data = vision_ref
    model = model.to(dtype)
    x, eps = data["data"].to(dtype), 0.01
    lo, hi = bounds.interval(model, x - eps, x + eps)
    _close(lo, data["l_inf_IBP_lb"], "IBP lower")
    _close(hi, data["l_inf_IBP_ub"], "IBP upper")
    lo, hi = bounds.symbolic(model, x - eps, x + eps)
    _close(lo, data["l_inf_CROWN-same-slope_lb"], "symbolic lower")
    _close(hi, data["l_inf_CROWN-same-slope_ub"], "symbolic upper")
    # and it is not merely some other method's numbers: full CROWN (adaptive lower slope) differs
    assert (lo - data["l_inf_CROWN_lb"].to(dtype)).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_l2_symbolic(vision_ref, dtype):
    model, data = vision_ref
    model = model.to(dtype)
    x = data["data"].to(dtype)
    lo, hi = bounds.symbolic(model, center=x, eps_l2=0.01)
    _close(lo, data["l_2_CROWN-same-slope_lb"], "L2 symbolic lower")
    _close(hi, data["l_2_CROWN-same-slope_ub"], "L2 symbolic upper")


def test_reference_l2_interval(vision_ref):
    """auto_LiRPA's L2 IBP: the first affine map of each input branch gets the dual norm.

    Investigated: the reference treats BN→conv1 as one affine map whose rows get
    ``ε‖W₁·diag(k_bn)‖₂`` and the shortcut conv ``ε‖W_s‖₂`` — both *padding-blind*
    (the whole kernel's norm, also at the image border) — then plain IBP. We reproduce
    that to float precision with our ``interval`` on the tail of the network. Our own L2
    IBP keeps the ball through BN and uses the exact, padding-aware row norms
    (``conv(k², W²)``), so it is contained in the reference bounds and strictly tighter
    at the border neurons.
    """
    model, data = vision_ref
    model = model.double()
    x, eps = data["data"].double(), 0.01
    ref_lo, ref_hi = data["l_2_IBP_lb"].double(), data["l_2_IBP_ub"].double()
    with torch.no_grad():
        k = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
        w1 = model.conv1.weight * k.view(1, -1, 1, 1)
        dev1 = eps * w1.pow(2).sum((1, 2, 3)).sqrt().view(1, -1, 1, 1)
        c1 = model.conv1(model.bn(x))
        ds = eps * model.shortcut.weight.pow(2).sum((1, 2, 3)).sqrt().view(1, -1, 1, 1)
        s = model.shortcut(x)
        h_lo, h_hi = F.relu(c1 - dev1) + s - ds, F.relu(c1 + dev1) + s + ds
    tail = nn.Sequential(model.conv2, nn.ReLU(), nn.Flatten(), model.fc1)
    lo, hi = bounds.interval(tail, h_lo, h_hi)
    _close(lo, ref_lo, "reconstructed L2 IBP lower")
    _close(hi, ref_hi, "reconstructed L2 IBP upper")

    ours_lo, ours_hi = bounds.interval(model, center=x, eps_l2=eps)
    assert (ours_lo >= ref_lo - 1e-6).all() and (ours_hi <= ref_hi + 1e-6).all()
    assert ((ours_hi - ours_lo) < (ref_hi - ref_lo) - 1e-4).any()   # the padding-aware norms do help


def test_l2_bounds_sound_on_sampled_points(vision_ref):
    model, data = vision_ref
    model = model.double()
    x, eps = data["data"][:2].double(), 0.5
    g = torch.Generator().manual_seed(0)
    d = torch.randn(64, *x.shape, generator=g, dtype=x.dtype)
    d = d / d.flatten(2).norm(dim=2).view(64, 2, 1, 1, 1) * eps * torch.rand(64, 2, 1, 1, 1, generator=g,
                                                                                dtype=x.dtype) ** (1 / 3072)
    with torch.no_grad():
        out = model((x.unsqueeze(0) + d).flatten(0, 1)).view(64, 2, -1)
    for lo, hi in (bounds.interval(model, center=x, eps_l2=eps), bounds.symbolic(model, center=x, eps_l2=eps)):
        assert (out >= lo - 1e-9).all() and (out <= hi + 1e-9).all()


# --------------------------------------------------------------------------------------------------
# 2. soundness properties on random small networks
# --------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, ch, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(ch) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(F.relu(self.bn(self.conv1(x)))))


def _random_bn(bn: nn.Module, g: torch.Generator):
    if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(n, generator=g))
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def make_net(kind: str, seed: int, use_bn: bool, use_pool: bool, relu: bool = True):
    """A small random network of the given kind; returns (model, per-sample input shape)."""
    torch.manual_seed(seed)
    act = [nn.ReLU()] if relu else []
    if kind == "mlp":
        layers = [nn.Linear(5, 8), *act]
        if use_bn:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.Linear(8, 7), *act, nn.Linear(7, 4)]
        model, shape = nn.Sequential(*layers), (5,)
    elif kind == "cnn":
        layers = [nn.Conv2d(2, 4, 3, padding=1)]
        if use_bn:
            layers.append(nn.BatchNorm2d(4))
        layers += act + [nn.Conv2d(4, 4, 3, stride=2, padding=1), *act]
        layers.append(nn.AvgPool2d(2) if use_pool else nn.Identity())
        n = 4 * (2 * 2 if use_pool else 4 * 4)
        layers += [nn.Flatten(), nn.Linear(n, 6), *act, nn.Linear(6, 3)]
        model, shape = nn.Sequential(*layers), (2, 8, 8)
    else:  # residual
        if relu:
            block = ResBlock(3, use_bn)
        else:
            block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3) if use_bn else nn.Identity())
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), *act, _Residual(block, relu),
                              nn.AdaptiveAvgPool2d(2) if use_pool else nn.Identity(), nn.Flatten(),
                              nn.Linear(3 * (4 if use_pool else 36), 3))
        shape = (2, 6, 6)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        _random_bn(m, g)
    return model.eval(), shape


class _Residual(nn.Module):
    def __init__(self, block, relu):
        super().__init__()
        self.block, self.relu = block, relu

    def forward(self, x):
        return self.block(x) if self.relu else x + self.block(x)


def _random_box(shape, batch, seed, dtype, max_width=0.5):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(batch, *shape, generator=g, dtype=dtype) * 2 - 1
    r = torch.rand(batch, *shape, generator=g, dtype=dtype) * max_width
    r = r * (torch.rand(batch, *shape, generator=g, dtype=dtype) > 0.1)   # some zero-width inputs
    return c - r, c + r


def _probe_points(model, lower, upper, n_uniform=48, n_corners=32, steps=5, seed=0):
    """Model outputs at uniform points, random corners, and sign-gradient ascent/descent on each output."""
    g = torch.Generator().manual_seed(seed)
    B = lower.shape[0]
    outs = []
    with torch.no_grad():
        u = torch.rand(n_uniform, *lower.shape, generator=g, dtype=lower.dtype)
        outs.append(model((lower + u * (upper - lower)).flatten(0, 1)).view(n_uniform, B, -1))
        cm = (torch.rand(n_corners, *lower.shape, generator=g, dtype=lower.dtype) > 0.5).to(lower.dtype)
        outs.append(model((lower + cm * (upper - lower)).flatten(0, 1)).view(n_corners, B, -1))
    K = outs[0].shape[-1]
    mid = (lower + upper) / 2
    step = (upper - lower) / 4
    for j in range(K):
        for sign in (1.0, -1.0):
            x = mid.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                out = model(x)
                grad, = torch.autograd.grad(sign * out[:, j].sum(), x)
                x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lower), upper)
            with torch.no_grad():
                outs.append(model(x).view(1, B, -1))
    return torch.cat(outs)


net_kinds = st.sampled_from(["mlp", "cnn", "res"])
dtypes = st.sampled_from([torch.float32, torch.float64])


@PROP
@given(kind=net_kinds, seed=st.integers(0, 10_000), use_bn=st.booleans(), use_pool=st.booleans(), dtype=dtypes,
       width=st.sampled_from([0.01, 0.1, 0.5]))
def test_bounds_contain_model_outputs(kind, seed, use_bn, use_pool, dtype, width):
    model, shape = make_net(kind, seed, use_bn, use_pool)
    model = model.to(dtype)
    lower, upper = _random_box(shape, 3, seed, dtype, width)
    pts = _probe_points(model, lower, upper, seed=seed)
    tol = _tol(dtype) * (1 + pts.abs().max().item())
    for name, (lo, hi) in {"interval": bounds.interval(model, lower, upper),
                           "symbolic": bounds.symbolic(model, lower, upper),
                           "symbolic+interval": bounds.symbolic(model, lower, upper, intersect_interval=True),
                           "symbolic-chunked": bounds.symbolic(model, lower, upper, memory_budget=1)}.items():
        assert lo.dtype == dtype and lo.shape == pts.shape[1:]
        assert (lo <= hi).all(), name
        assert (pts >= lo - tol).all(), f"{name}: an output below the lower bound by {(lo - pts).max():.3g}"
        assert (pts <= hi + tol).all(), f"{name}: an output above the upper bound by {(pts - hi).max():.3g}"


NET_AND_BOX = dict(kind=net_kinds, seed=st.integers(0, 10_000), use_bn=st.booleans(), use_pool=st.booleans(),
                   width=st.sampled_from([0.01, 0.1, 0.5]))


def _double_net_and_box(kind, seed, use_bn, use_pool, width):
    """A random float64 network and a box of 3 samples around random centres."""
    model, shape = make_net(kind, seed, use_bn, use_pool)
    lower, upper = _random_box(shape, 3, seed, torch.float64, width)
    return model.double(), lower, upper


@PROP
@given(**NET_AND_BOX)
def test_margin_bounds_contain_true_margins(kind, seed, use_bn, use_pool, width):
    model, lower, upper = _double_net_and_box(kind, seed, use_bn, use_pool, width)
    y = torch.tensor([0, 1, 2])
    pts = _probe_points(model, lower, upper, seed=seed)                       # (P, B, K)
    margins = pts - pts.gather(2, y.view(1, -1, 1).expand(pts.shape[0], -1, 1))
    for method in ("interval", "symbolic"):
        lo, hi = bounds.margin_bounds(model, lower, upper, y, method)
        assert (lo.gather(1, y.view(-1, 1)) == 0).all() and (hi.gather(1, y.view(-1, 1)) == 0).all()
        assert (margins >= lo - 1e-9).all() and (margins <= hi + 1e-9).all(), method
        # the margin bound (C folded in before concretising) beats subtracting output bounds
        olo, ohi = (bounds.interval if method == "interval" else bounds.symbolic)(model, lower, upper)
        naive_hi = ohi - olo.gather(1, y.view(-1, 1))
        assert (hi <= naive_hi + 1e-9).all(), method


@PROP
@given(**NET_AND_BOX)
def test_symbolic_tightness_vs_interval(kind, seed, use_bn, use_pool, width):
    model, lower, upper = _double_net_and_box(kind, seed, use_bn, use_pool, width)
    ilo, ihi = bounds.interval(model, lower, upper)
    slo, shi = bounds.symbolic(model, lower, upper)
    tlo, thi = bounds.symbolic(model, lower, upper, intersect_interval=True)
    tol = 1e-9 * (1 + ihi.abs().max().item())
    # with intersect_interval=True: never looser than interval. (Not always tighter than the pure
    # symbolic bound: tighter [l, u] raise the slope λ = u/(u − l), which lowers the lower line λz.)
    assert (tlo >= ilo - tol).all() and (thi <= ihi + tol).all()
    # the pure relaxation is exact before the first ReLU, so on a shallow net it wins on average
    assert (shi - slo).sum() <= (ihi - ilo).sum() * (1 + 1e-9) or kind == "res"


class _SkipNet(nn.Module):
    """h = relu(first(x)); out = last(h + branch(h)) — or, with ``fused``, last((I + branch)(h))."""

    def __init__(self, conv: bool, seed: int, fused: bool = False, twice: str = ""):
        super().__init__()
        torch.manual_seed(seed)
        if conv:
            self.first, self.branch = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.last = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
        else:
            self.first, self.branch, self.last = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 4)
        self.fused, self.twice = fused, twice
        if fused:
            with torch.no_grad():
                if conv:
                    for c in range(3):
                        self.branch.weight[c, c, 1, 1] += 1.0
                else:
                    self.branch.weight += torch.eye(6)

    def forward(self, x):
        h = F.relu(self.first(x))
        if self.twice == "sum":              # 2h + h − h/2: the same error symbols three times
            return self.last(h * 2.0 + h - h * 0.5)
        if self.twice == "scaled":
            return self.last(h * 2.5)
        return self.last(self.branch(h) if self.fused else h + self.branch(h))


@PROP
@given(conv=st.booleans(), seed=st.integers(0, 10_000), width=st.sampled_from([0.1, 0.5, 1.0]))
def test_residual_error_terms_are_aligned(conv, seed, width):
    """Affine forms compose exactly, so h + W h and (I + W) h must give the same symbolic bounds.

    Both branches of the residual carry the error symbols of the ReLU that made ``h``; treating
    them as independent (or dropping one side) would change the bounds.
    """
    shape = (2, 5, 5) if conv else (5,)
    lower, upper = _random_box(shape, 3, seed, torch.float64, width)
    res = _SkipNet(conv, seed).double().eval()
    fused = _SkipNet(conv, seed, fused=True).double().eval()
    twice = _SkipNet(conv, seed, twice="sum").double().eval()
    plain = _SkipNet(conv, seed, twice="scaled").double().eval()
    a, b = bounds.symbolic(res, lower, upper), bounds.symbolic(fused, lower, upper)
    assert torch.allclose(a[0], b[0], atol=1e-10) and torch.allclose(a[1], b[1], atol=1e-10)
    c, d = bounds.symbolic(twice, lower, upper), bounds.symbolic(plain, lower, upper)
    assert torch.allclose(c[0], d[0], atol=1e-10) and torch.allclose(c[1], d[1], atol=1e-10)


def test_pure_symbolic_can_be_looser_than_interval():
    """The same-slope relaxation is not always tighter than IBP: out = −relu(z), z ∈ [−1, 1]."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_(), model[2].weight.fill_(-1.0), model[2].bias.zero_()
    lower, upper = -torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    assert bounds.interval(model, lower, upper)[1].item() == pytest.approx(0.0)
    # λ = 1/2: relu(z) ∈ z/2 + 1/4 ± 1/4, so −relu(z) ≤ 1/2
    assert bounds.symbolic(model, lower, upper)[1].item() == pytest.approx(0.5)
    assert bounds.symbolic(model, lower, upper, intersect_interval=True)[1].item() == pytest.approx(0.0)


@PROP
@given(kind=net_kinds, seed=st.integers(0, 10_000), use_bn=st.booleans(), use_pool=st.booleans(),
       width=st.sampled_from([0.05, 0.5]))
def test_exact_without_relu(kind, seed, use_bn, use_pool, width):
    model, shape = make_net(kind, seed, use_bn, use_pool, relu=False)
    model = model.double()
    lower, upper = _random_box(shape, 2, seed, torch.float64, width)
    c, r = (upper + lower) / 2, (upper - lower) / 2
    J = torch.stack([torch.autograd.functional.jacobian(lambda t: model(t.unsqueeze(0))[0], c[i])
                     for i in range(2)])                                     # (B, K, *shape)
    with torch.no_grad():
        out_c = model(c)
    rad = (J.abs() * r.unsqueeze(1)).flatten(2).sum(2)
    lo, hi = bounds.symbolic(model, lower, upper)
    assert torch.allclose(lo, out_c - rad, atol=1e-10) and torch.allclose(hi, out_c + rad, atol=1e-10)
    ilo, ihi = bounds.interval(model, lower, upper)
    assert (ilo <= lo + 1e-10).all() and (ihi >= hi - 1e-10).all()


@PROP
@given(kind=net_kinds, seed=st.integers(0, 10_000), use_bn=st.booleans())
def test_verified_points_survive_pgd(kind, seed, use_bn):
    model, shape = make_net(kind, seed, use_bn, use_pool=True)
    model = model.double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.02
    ok_s = bounds.verify(model, x, y, eps, method="symbolic")
    ok_i = bounds.verify(model, x, y, eps, method="interval")
    assert ok_s.dtype == torch.bool and ok_s.shape == (8,)
    lo, hi = bounds.input_box(x, eps)
    xa = (lo + hi) / 2
    for step in range(20):                       # PGD on the worst margin max_{j≠y} z_j − z_y
        xa.requires_grad_(True)
        out = model(xa)
        m = (out - out.gather(1, y.view(-1, 1))).scatter(1, y.view(-1, 1), -1e9).max(1).values
        grad, = torch.autograd.grad(m.sum(), xa)
        xa = torch.minimum(torch.maximum(xa.detach() + (hi - lo) / 8 * grad.sign(), lo), hi)
    with torch.no_grad():
        out = model(xa)
        broken = out.argmax(1) != y
    assert not (broken & ok_s).any() and not (broken & ok_i).any()


def test_robust_loss_matches_formula_and_gradcheck():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.rand(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    eps = 0.15
    for method in ("symbolic", "interval"):
        loss = bounds.robust_loss(model, x, y, eps, method)
        lo, hi = bounds.margin_bounds(model, *bounds.input_box(x, eps), y, method)
        others = hi.scatter(1, y.view(-1, 1), float("-inf"))
        assert torch.allclose(loss, torch.log1p(others.exp().sum(1)))
        assert loss.shape == (3,) and loss.requires_grad

    for method in ("symbolic", "interval"):
        for index, attr in ((0, "weight"), (2, "weight"), (4, "bias")):
            def f(w, _i=index, _a=attr, _m=method):
                m = copy.deepcopy(model)
                delattr(m[_i], _a)
                setattr(m[_i], _a, w)          # a plain tensor in place of the parameter
                return bounds.robust_loss(m, x, y, eps, _m)
            w0 = getattr(model[index], attr).detach().clone().requires_grad_(True)
            assert torch.autograd.gradcheck(f, (w0,), eps=1e-6, atol=1e-7), (method, index, attr)


# --------------------------------------------------------------------------------------------------
# 3. errors
# --------------------------------------------------------------------------------------------------

def _box(shape=(1, 8, 8), batch=2):
    x = torch.rand(batch, *shape)
    return x - 0.1, x + 0.1


@pytest.mark.parametrize("method", ["interval", "symbolic"])
def test_unsupported_modules_raise_naming_them(method):
    fn = getattr(bounds, method)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2)).eval()
    with pytest.raises(UnsupportedOperation, match=r"MaxPool2d.*module '1'.*support only: Linear"):
        fn(net, *_box())
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Sigmoid(), nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedOperation, match=r"Sigmoid.*module '2'"):
        fn(net, *_box())

    class Soft(nn.Module):
        def forward(self, x):
            return torch.softmax(x.flatten(1), dim=1)
    with pytest.raises(UnsupportedOperation, match="softmax"):
        fn(Soft(), *_box())
    assert issubclass(UnsupportedOperation, TypeError)


def test_unsupported_is_raised_before_heavy_work():
    # a huge input would take long to bound; the MaxPool is caught from the graph alone
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(UnsupportedOperation, match="MaxPool2d"):
        bounds.symbolic(net, x, x, memory_budget=1)


def test_batchnorm_in_train_mode_raises():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 2))
    net.train()
    with pytest.raises(UnsupportedOperation, match=r"BatchNorm2d.*eval"):
        bounds.interval(net, *_box())
    net.eval()
    bounds.interval(net, *_box())


def test_input_validation_messages():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    lo, hi = _box()
    x = (lo + hi) / 2
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="eps must be ≥ 0"):
        bounds.verify(net, x, y, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        bounds.verify(net, bad, y, 0.1)
    with pytest.raises(ValueError, match="infinite"):
        bounds.interval(net, lo, hi + float("inf"))
    with pytest.raises(ValueError, match="same shape"):
        bounds.symbolic(net, lo, hi[:1])
    with pytest.raises(ValueError, match="lower > upper"):
        bounds.interval(net, hi, lo)
    with pytest.raises(ValueError, match="does not fit the model"):
        bounds.interval(net, torch.zeros(2, 1, 7, 7), torch.ones(2, 1, 7, 7))
    with pytest.raises(ValueError, match="out of range"):
        bounds.verify(net, x, torch.tensor([0, 3]), 0.1)
    with pytest.raises(ValueError, match="method"):
        bounds.verify(net, x, y, 0.1, method="crown")
    with pytest.raises(ValueError, match="float64"):
        bounds.interval(net, lo.double(), hi.double())


def test_graph_features_functional_ops_and_normalisation():
    """F.relu / torch.relu / Tensor.relu, F.avg_pool2d, view/reshape, constant affine maps, dropout eval."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.5, 0.4]).view(1, 2, 1, 1))
            self.register_buffer("std", torch.tensor([0.2, 0.3]).view(1, 2, 1, 1))
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            x = (x - self.mean) / self.std
            x = torch.relu(self.conv(x)).relu()
            x = F.avg_pool2d(F.relu(x * 2.0 - 0.1), 4)
            x = self.drop(x.reshape(x.shape[0], -1))
            return self.fc(x)

    torch.manual_seed(0)
    net = Net().double().eval()
    lower, upper = _random_box((2, 8, 8), 3, 0, torch.float64, 0.2)
    pts = _probe_points(net, lower, upper)
    for lo, hi in (bounds.interval(net, lower, upper), bounds.symbolic(net, lower, upper)):
        assert (pts >= lo - 1e-9).all() and (pts <= hi + 1e-9).all()


def test_empty_batch_and_zero_width():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    z = torch.zeros(0, 1, 8, 8, dtype=torch.float64)
    lo, hi = bounds.symbolic(net, z, z)
    assert lo.shape == (0, 3)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
    for lo, hi in (bounds.interval(net, x, x), bounds.symbolic(net, x, x)):
        assert torch.allclose(lo, out) and torch.allclose(hi, out)


# --------------------------------------------------------------------------------------------------
# 4. the MixTrain authors' released MNIST_Small checkpoint
# --------------------------------------------------------------------------------------------------

def test_published_mixtrain_checkpoint_verified_accuracy():
    from robustlib import data, models
    ckpt = REF / "mixtrain-mnist_small_mixtrain_0.3.pth"
    images, labels = REF / "mnist-t10k-images-idx3-ubyte.gz", REF / "mnist-t10k-labels-idx1-ubyte.gz"
    if not (ckpt.exists() and images.exists() and labels.exists()):
        pytest.skip("MixTrain checkpoint or MNIST test set not available")
    model = models.build("mnist_small")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    model.eval()
    n = 200
    x = torch.from_numpy(data.read_idx(images)[:n].copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(data.read_idx(labels)[:n].copy()).long()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    vi = bounds.verify(model, x, y, 0.1, method="interval")
    vs = bounds.verify(model, x, y, 0.1, method="symbolic")
    print(f"MixTrain MNIST_Small, {n} test images, eps=0.1: clean {clean:.3f}, "
          f"interval-verified {vi.float().mean():.3f}, symbolic-verified {vs.float().mean():.3f}")
    assert clean > 0.9
    assert vs.float().mean() >= vi.float().mean()
    assert vs.float().mean() > 0.85            # observed 0.945 (IBP: 0.135): MixTrain trains symbolic bounds
    assert not (vs & ~(model(x).argmax(1) == y)).any()   # never verifies a misclassified point


# --------------------------------------------------------------------------------------------------
# 5. PreAct-ResNet-18 from robustlib.models goes through without a wrapper
# --------------------------------------------------------------------------------------------------

def test_preact_resnet18_runs_and_is_sound():
    from robustlib import models
    torch.manual_seed(0)
    model = models.build("preact_resnet18", num_classes=10, in_channels=3).eval()
    x = torch.rand(1, 3, 8, 8)
    eps = 1e-3
    lower, upper = x - eps, x + eps
    ilo, ihi = bounds.interval(model, lower, upper)
    slo, shi = bounds.symbolic(model, lower, upper)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pts = model(lower + torch.rand(16, 3, 8, 8, generator=g) * (upper - lower))
    tol = 1e-4 * (1 + pts.abs().max().item())
    for lo, hi in ((ilo, ihi), (slo, shi)):
        assert lo.shape == (1, 10)
        assert (pts >= lo - tol).all() and (pts <= hi + tol).all()
    assert (shi - slo).mean() < (ihi - ilo).mean()   # IBP blows up through 18 layers; symbolic does not


def test_certifiers_registered_for_evaluate():
    from robustlib import evaluate
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for name in ("interval", "symbolic"):
        ok = evaluate.certifier_fn(name)(net, x, y, 0.0)
        assert ok.dtype == torch.bool and torch.equal(ok, net(x).argmax(1) == y)


def test_default_chunk_is_cache_sized_on_cpu_and_respects_an_explicit_budget(monkeypatch):
    import importlib
    sym = importlib.import_module("robustlib.bounds.symbolic")   # the module (bounds.symbolic is the function)
    chunks = importlib.import_module("robustlib.bounds.chunks")
    per = 10 << 20   # 10 MiB per sample
    assert bounds.default_chunk(per, "cpu") == chunks.CPU_CHUNK_BYTES // per == 3
    assert bounds.default_chunk(chunks.CPU_CHUNK_BYTES * 2, "cpu") == 1          # never below one sample
    assert bounds.default_chunk(per, "cpu", memory_budget=1 << 30) == 102      # an explicit budget is the cap
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        bounds.default_chunk(per, "cpu", memory_budget=0)
    # and run_chunked follows it: a tiny cache budget splits the batch, with the same bounds as one chunk
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(5, 1, 8, 8)
    lower, upper = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    whole = bounds.symbolic(net, lower, upper, memory_budget=1 << 30)
    calls = []
    run = sym.SymbolicRunner.run
    monkeypatch.setattr(sym.SymbolicRunner, "run", lambda self, s, y: calls.append(s.c.shape[0]) or run(self, s, y))
    monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", 2 * bounds.estimate_sample_bytes(net, x[:1]))
    split = bounds.symbolic(net, lower, upper)
    assert calls == [2, 2, 1]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, split))


def test_small_batch_convolutions_use_the_own_kernel_and_give_the_same_numbers(monkeypatch):
    from robustlib.bounds import ops
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, stride=2, padding=1)
    seen = []

    def spy(t, w, b):
        seen.append((t.shape[0], torch.backends.mkldnn.enabled))
        return conv._conv_forward(t, w, b)

    op = ops.conv_affine(spy, conv.weight, conv.bias, True)
    with torch.no_grad():
        for n in (1, 2, 5):
            x = torch.rand(n, 3, 12, 12)
            got = (op.full(x), op.lin(x), op.abs_lin(x))
            monkeypatch.setattr(ops, "SMALL_CONV_BATCH", 0)      # oneDNN for every batch: the before
            want = (op.full(x), op.lin(x), op.abs_lin(x))
            monkeypatch.undo()
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert torch.backends.mkldnn.enabled                        # restored after every call
    own = {n for n, on in seen if not on}
    assert own == {1, 2} and {n for n, on in seen if on} == {1, 2, 5}

    def failing(t, w, b):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        ops.conv_affine(failing, conv.weight, conv.bias, True).full(torch.rand(1, 3, 12, 12))
    assert torch.backends.mkldnn.enabled                        # restored after a failure too
