"""Windowed input coefficients (``robustlib.bounds.patches``) and cropped error terms (``robustlib.bounds.crops``)
of convolutions against the dense propagation.

Each operation on windows is compared in float64 with the same operation on the dense coefficients (a convolution
of the d one-hot input images, ``F.linear`` on them), over many geometries; then the symbolic bounds and their
gradients with windows against the same propagation with ``bounds.symbolic.PATCHES`` off, on networks that keep
the windows to the end, that fall back to dense coefficients half-way (a pooling layer, a window that would
outgrow the input, a grouped convolution) and on an L2 ball. The same for error terms as crops.
"""
from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlib import bounds
from robustlib.bounds import patches

sym = importlib.import_module("robustlib.bounds.symbolic")
pytestmark = pytest.mark.usefixtures("one_thread")

# (grid (Cg, Hg, Wg), first conv (C, k, stride, padding), second conv (C, k, stride, padding))
GEOMETRIES = [
    ((1, 28, 28), (16, 4, 2, 1), (32, 4, 2, 1)),      # MixTrain's MNIST_Small
    ((3, 9, 8), (4, 3, 1, 1), (5, 4, 2, 1)),
    ((2, 7, 7), (3, 2, 1, 0), (4, 3, 2, 2)),          # padding wider than the kernel's reach at the border
    ((1, 8, 8), (2, 3, 2, 1), (3, 3, 3, 0)),          # stride 3: rows of the input nobody reads
    ((2, 6, 9), (3, (2, 3), (1, 2), (0, 1)), (2, (3, 2), (2, 1), (1, 0))),   # rectangular kernels and strides
]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_windows_equal_the_dense_coefficients_through_conv_relu_conv_linear(geometry):
    grid, (c1, k1, s1, p1), (c2, k2, s2, p2) = geometry
    g = torch.Generator().manual_seed(len(str(geometry)))
    B, D = 2, grid[0] * grid[1] * grid[2]
    s = torch.rand(B, D, generator=g, dtype=torch.float64)
    w1 = torch.randn(c1, grid[0], *_pair(k1), generator=g, dtype=torch.float64)
    w2 = torch.randn(c2, c1, *_pair(k2), generator=g, dtype=torch.float64)
    A = F.conv2d(torch.diag_embed(s).reshape(B * D, *grid), w1, None, _pair(s1), _pair(p1))
    shape1 = tuple(A.shape[1:])
    P = patches.from_diag(s, grid, w1, _pair(s1), _pair(p1), shape1)
    assert torch.equal(patches.dense(P), A.reshape(B, D, *shape1))
    assert torch.allclose(patches.radius(P), A.reshape(B, D, *shape1).abs().sum(1), atol=1e-12)
    lam = torch.rand(B, *shape1, generator=g, dtype=torch.float64)      # a ReLU's slopes, per sample and neuron
    P = patches.scale(P, lam)
    A = (A.reshape(B, D, *shape1) * lam.unsqueeze(1)).reshape(B * D, *shape1)
    A = F.conv2d(A, w2, None, _pair(s2), _pair(p2))
    shape2 = tuple(A.shape[1:])
    P = patches.conv(P, w2, _pair(s2), _pair(p2), shape2)
    dense = A.reshape(B, D, *shape2)
    assert torch.allclose(patches.dense(P), dense, atol=1e-12)
    assert torch.allclose(patches.radius(P, l2=True), torch.linalg.vector_norm(dense, 2, dim=1), atol=1e-12)
    w3 = torch.randn(7, dense[0, 0].numel(), generator=g, dtype=torch.float64)
    assert torch.allclose(patches.linear(P, w3), F.linear(dense.reshape(B, D, -1), w3), atol=1e-12)


def test_a_same_padded_even_kernel_pads_more_after_than_before():
    """``padding="same"`` with an even kernel pads one zero less before than after: the windows start where the
    padding before says."""
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(2, 3, 4, padding="same").double()
    s = torch.rand(1, 2 * 6 * 5, generator=g, dtype=torch.float64)
    A = F.conv2d(torch.diag_embed(s).reshape(-1, 2, 6, 5), conv.weight, None, 1, "same")
    P = patches.from_diag(s, (2, 6, 5), conv.weight, (1, 1), (1, 1), (3, 6, 5))
    assert torch.equal(patches.dense(P), A.reshape(1, -1, 3, 6, 5))


def _nets():
    torch.manual_seed(5)
    return {
        # windows to the end: conv · relu · conv · relu · flatten · linear
        "windows": (nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 4, stride=2,
                                  padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 20), nn.ReLU(),
                                  nn.Linear(20, 5)), (1, 16, 16)),
        # BatchNorm and a second convolution with no ReLU in between, then a pooling layer: dense from there
        "pool": (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, stride=2),
                               nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 8), nn.ReLU(),
                               nn.Linear(8, 5)), (2, 10, 10)),
        # the third convolution would make the windows larger than the 7 × 7 input: dense from there
        "outgrown": (nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(3, 3, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 49, 4)),
                     (1, 7, 7)),
    }


def _spy(monkeypatch, what=lambda s: type(s.A).__name__) -> list:
    """``what`` of the symbolic state each ReLU receives (default: the kind of its input coefficients)."""
    seen = []
    relu = sym.SymbolicRunner.relu
    monkeypatch.setattr(sym.SymbolicRunner, "relu",
                        lambda self, s, *a, **k: seen.append(what(s)) or relu(self, s, *a, **k))
    return seen


def _margins_and_grads(net, x, y, width: float) -> list:
    """Margin bounds over the box ``x ± width`` and every parameter's gradient of ``Σ hi − 2 Σ lo``."""
    net.zero_grad()
    lo, hi = bounds.margin_bounds(net, x - width, x + width, y)
    (hi.sum() - 2 * lo.sum()).backward()
    return [lo, hi] + [p.grad.clone() for p in net.parameters()]


def _assert_equal_runs(fast: list, dense: list) -> None:
    for a, b in zip(fast, dense, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11), (a - b).abs().max()


@pytest.mark.parametrize("name", ["windows", "pool", "outgrown"])
@pytest.mark.parametrize("mode", ["box", "l2"])
def test_bounds_and_gradients_with_windows_equal_the_dense_propagation(name, mode, monkeypatch):
    net, shape = _nets()[name]
    net = net.double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5 if name != "outgrown" else 4, (3,), generator=g)

    def run():
        if mode == "box":
            return _margins_and_grads(net, x, y, 0.05)
        net.zero_grad()
        lo, hi = bounds.symbolic(net, eps_l2=0.3, center=x)
        (hi.sum() - 2 * lo.sum()).backward()
        return [lo, hi] + [p.grad.clone() for p in net.parameters()]

    with monkeypatch.context() as m:
        seen = _spy(m)
        fast = run()
    assert seen[0] == "Patches"
    if name == "windows":
        assert seen == ["Patches", "Patches", "Tensor"]
    else:   # windows first, dense coefficients after the layer that ends them
        assert "Tensor" in seen
    with monkeypatch.context() as m:
        m.setattr(sym, "PATCHES", False)
        seen = _spy(m)
        dense = run()
    assert "Patches" not in seen
    _assert_equal_runs(fast, dense)
    assert (fast[1] - fast[0]).max() > 0


def test_windows_only_for_chunks_large_enough_on_a_device_listed(monkeypatch):
    """``PATCHES_MIN_DENSE``: on a device type it lists, a chunk with fewer dense coefficients (chunk × d × the widest
    layer's neurons) than its threshold takes the dense path, a larger one the windows; the bounds are the same."""
    net, shape = _nets()["windows"]
    net = net.double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=g)
    per_sample = 16 * 16 * max(4 * 8 * 8, 6 * 4 * 4, 20, 5)     # d × the widest layer (the first convolution)
    runs = {}
    for batch in (1, 2, 4):
        with monkeypatch.context() as m:
            m.setattr(sym, "PATCHES_MIN_DENSE", {"cpu": 2 * per_sample})
            seen = _spy(m)
            runs[batch] = _margins_and_grads(net, x[:batch], y[:batch], 0.05)
        assert (seen[0] == "Patches") == (batch >= 2), (batch, seen)
        with monkeypatch.context() as m:
            m.setattr(sym, "PATCHES_MIN_DENSE", {})
            _assert_equal_runs(runs[batch], _margins_and_grads(net, x[:batch], y[:batch], 0.05))
    assert sym.PATCHES_MIN_DENSE.get("cpu", 0) == 0     # on a CPU the windows are always taken


def test_a_grouped_convolution_keeps_the_dense_path():
    """Only convolutions with groups = dilation = 1 carry windows; others take the dense passes, same bounds."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)).double().eval()
    plan = importlib.import_module("robustlib.bounds.plans").prepare(net, torch.zeros(1, 2, 6, 6, dtype=torch.float64))
    assert plan.nodes[0].op.conv is None and plan.nodes[0].op.rows is not None
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    lo, hi = bounds.symbolic(net, x - 0.1, x + 0.1)
    lo_i, hi_i = bounds.interval(net, x - 0.1, x + 0.1)
    assert (lo >= lo_i - 1e-12).all() and (hi <= hi_i + 1e-12).all()


@pytest.mark.parametrize("n, K, step", [((4, 4), (4, 4), (2, 2)), ((7, 7), (10, 10), (4, 4)), ((3, 2), (2, 5), (3, 1)),
                                         ((2, 3), (3, 3), (1, 2))])
def test_the_shift_sum_places_every_window_once(n, K, step):
    """The grouped additions of the windows (one per offset within the step, including a stride wider than the
    window) against one addition per window, and its backward against autograd's gradient check."""
    g = torch.Generator().manual_seed(sum(n) + sum(K))
    R = torch.randn(*n, *K, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = R.new_zeros((n[0] - 1) * step[0] + K[0], (n[1] - 1) * step[1] + K[1], 3)
    for a in range(n[0]):
        for b in range(n[1]):
            ref[a * step[0]:a * step[0] + K[0], b * step[1]:b * step[1] + K[1]] += R[a, b].detach()
    with torch.no_grad():
        assert torch.allclose(patches._shift_sum(R, step), ref, atol=1e-12)
    assert torch.allclose(patches._shift_sum(R, step), ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: patches._shift_sum(t, step), (R,), fast_mode=True)


def test_the_by_position_weight_follows_in_place_updates():
    """Without autograd a Linear's weight laid out by position is kept between calls, keyed by its version: an
    in-place update (an optimizer step) must not leave the bounds on the old weight."""
    torch.manual_seed(4)
    net = _nets()["windows"][0].double().eval()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = bounds.symbolic(net, x - 0.05, x + 0.05)
        net[5].weight.mul_(2.0)
        after = bounds.symbolic(net, x - 0.05, x + 0.05)
    with pytest.MonkeyPatch.context() as m, torch.no_grad():
        m.setattr(sym, "PATCHES", False)
        dense = bounds.symbolic(net, x - 0.05, x + 0.05)
    assert not torch.allclose(before[1], after[1])
    assert torch.allclose(after[0], dense[0], atol=1e-12) and torch.allclose(after[1], dense[1], atol=1e-12)


def test_the_kept_weight_layouts_follow_new_data_as_a_device_move_swaps_it():
    """``model.to(device)`` gives each parameter new data without a version bump. The layouts kept between calls
    must follow (on an H200 a CPU bound after a GPU one read the GPU copy); here the same swap on one device, with
    new values, against a fresh copy of the network that never had a bound taken."""
    torch.manual_seed(5)
    net = _nets()["windows"][0].double().eval()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = bounds.symbolic(net, x - 0.05, x + 0.05)
        for p in net.parameters():
            p.data = p.data * 1.5                       # what .to() does: new storage, same Parameter, same version
        after = bounds.symbolic(net, x - 0.05, x + 0.05)
        fresh = bounds.symbolic(copy.deepcopy(net), x - 0.05, x + 0.05)
    assert not torch.allclose(before[1], after[1])
    assert torch.equal(after[0], fresh[0]) and torch.equal(after[1], fresh[1])


# --------------------------------------------------------------------------------------------- cropped error terms

CROP_GEOMETRIES = [   # (in_shape, conv (C, k, stride, padding), conv (C, k, stride, padding))
    ((3, 14, 14), (4, 4, 2, 1), (5, 3, 1, 1)),        # MNIST_Large's second and third layers, narrower
    ((2, 9, 11), (3, 3, 1, 1), (4, 4, 2, 1)),
    ((2, 10, 10), (3, 3, 2, 0), (2, 3, 3, 2)),
    ((1, 12, 9), (2, (3, 2), (2, 1), (1, 0)), (3, (2, 3), (1, 2), (0, 1))),
]


@pytest.mark.parametrize("geometry", CROP_GEOMETRIES, ids=range(len(CROP_GEOMETRIES)))
def test_crops_equal_the_dense_error_terms_through_conv_relu_conv(geometry):
    from robustlib.bounds import crops
    in_shape, (c1, k1, s1, p1), (c2, k2, s2, p2) = geometry
    g = torch.Generator().manual_seed(len(str(geometry)))
    B, K, n = 2, 9, in_shape[0] * in_shape[1] * in_shape[2]
    idx = torch.stack([torch.randperm(n, generator=g)[:K] for _ in range(B)])
    idx[:, 0] = 0                                     # a corner
    idx[:, 1] = n - 1                                 # the opposite corner
    vals = torch.randn(B, K, generator=g, dtype=torch.float64)
    w1 = torch.randn(c1, in_shape[0], *_pair(k1), generator=g, dtype=torch.float64)
    w2 = torch.randn(c2, c1, *_pair(k2), generator=g, dtype=torch.float64)
    one_hot = torch.zeros(B * K, n, dtype=torch.float64).scatter(1, idx.reshape(-1, 1), vals.reshape(-1, 1))
    E = F.conv2d(one_hot.reshape(B * K, *in_shape), w1, None, _pair(s1), _pair(p1))
    shape1 = tuple(E.shape[1:])
    cr = crops.from_sparse(idx, vals, in_shape, w1, _pair(s1), _pair(p1), shape1)
    assert torch.equal(crops.dense(cr), E.reshape(B, K, *shape1))
    assert torch.allclose(crops.radius(cr), E.reshape(B, K, *shape1).abs().sum(1), atol=1e-12)
    lam = torch.rand(B, *shape1, generator=g, dtype=torch.float64)
    cr = crops.scale(cr, lam)
    E = (E.reshape(B, K, *shape1) * lam.unsqueeze(1)).reshape(B * K, *shape1)
    E = F.conv2d(E, w2, None, _pair(s2), _pair(p2))
    shape2 = tuple(E.shape[1:])
    cr = crops.conv(cr, w2, _pair(s2), _pair(p2), shape2)
    assert torch.allclose(crops.dense(cr), E.reshape(B, K, *shape2), atol=1e-12)
    assert torch.allclose(crops.radius(cr), E.reshape(B, K, *shape2).abs().sum(1), atol=1e-12)
    # a Linear on the flattened grid reads each crop's weight columns
    wl = torch.randn(7, E[0].numel(), generator=g, dtype=torch.float64)
    assert torch.allclose(crops.linear(cr, wl), F.linear(E.reshape(B, K, -1), wl), atol=1e-12)


@pytest.mark.parametrize("geometry", CROP_GEOMETRIES[:2], ids=range(2))
def test_kernel_slices_by_index_select_equal_advanced_indexing_with_their_gradients(geometry, monkeypatch):
    """``crops.INDEX_SELECT`` (one flat index_select, the default) against advanced indexing (its before): the same
    crops and the same weight and value gradients, with repeated terms among the indices."""
    from robustlib.bounds import crops
    in_shape, (c1, k1, s1, p1), _ = geometry
    g = torch.Generator().manual_seed(7)
    n = in_shape[0] * in_shape[1] * in_shape[2]
    idx = torch.randint(0, n, (3, 40), generator=g)   # 40 terms' kernel slices share the C·(k+1)² rows of the weight
    out = tuple(F.conv2d(torch.zeros(1, *in_shape), torch.zeros(c1, in_shape[0], *_pair(k1)), None, _pair(s1),
                         _pair(p1)).shape[1:])

    def run(index_select: bool):
        monkeypatch.setattr(crops, "INDEX_SELECT", index_select)
        w = torch.randn(c1, in_shape[0], *_pair(k1), generator=torch.Generator().manual_seed(8),
                        dtype=torch.float64, requires_grad=True)
        vals = torch.randn(3, 40, generator=torch.Generator().manual_seed(9), dtype=torch.float64,
                           requires_grad=True)
        cr = crops.from_sparse(idx, vals, in_shape, w, _pair(s1), _pair(p1), out)
        probe = torch.randn(1, 1, *out, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
        (crops.dense(cr) * probe).sum().backward()
        return cr.T.detach(), w.grad, vals.grad

    new, old = run(True), run(False)
    for a, b in zip(new, old):
        assert torch.allclose(a, b, atol=1e-12)
    assert new[1].abs().sum() > 0


def _three_convolutions():
    """Three convolutions with BatchNorm between (eval mode), and three inputs with labels."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 4, stride=2, padding=1),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    net[3].running_mean.uniform_(-0.3, 0.3)
    net[3].running_var.uniform_(0.5, 2.0)
    net.eval()
    g = torch.Generator().manual_seed(8)
    return net, torch.rand(3, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 4, (3,), generator=g)


def test_bounds_and_gradients_with_cropped_error_terms_equal_the_dense_propagation(monkeypatch):
    """Three convolutions with BatchNorm between: the first two ReLUs' error terms cross later convolutions as
    crops; margins and every parameter's gradient equal those of dense error images."""
    net, x, y = _three_convolutions()
    with monkeypatch.context() as m:
        kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))   # the error terms' kinds
        fast = _margins_and_grads(net, x, y, 0.05)
    assert "Crops" in kinds[2]        # the first ReLU's terms reach the third ReLU as crops
    with monkeypatch.context() as m:
        m.setattr(sym, "CROPS", False)
        dense = _margins_and_grads(net, x, y, 0.05)
    _assert_equal_runs(fast, dense)
    assert (fast[1] - fast[0]).min() >= 0 and (fast[1] - fast[0]).max() > 0


def test_crops_only_for_blocks_large_enough_on_a_device_listed(monkeypatch):
    """``CROPS_MIN_DENSE``: on a device type it lists, a block of fresh error terms whose dense images at the
    convolution's output (the chunk's terms × that layer's neurons) number fewer than its threshold goes on as dense
    images, a larger one as crops; margins and gradients are the same either way."""
    crops = importlib.import_module("robustlib.bounds.crops")
    net, x, y = _three_convolutions()
    blocks, from_sparse = {}, crops.from_sparse
    for batch in (1, 3):   # the first block's size at each batch size, with crops at every size (a CPU's default)
        with monkeypatch.context() as m:
            sizes = []
            m.setattr(crops, "from_sparse", lambda idx, *a: sizes.append(idx.numel() * math.prod(a[-1])) or
                      from_sparse(idx, *a))
            _margins_and_grads(net, x[:batch], y[:batch], 0.05)
        blocks[batch] = sizes[0]
    assert blocks[1] < blocks[3]
    for batch in (1, 3):
        with monkeypatch.context() as m:
            m.setattr(sym, "CROPS_MIN_DENSE", {"cpu": blocks[3]})
            kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))
            fast = _margins_and_grads(net, x[:batch], y[:batch], 0.05)
        assert ("Crops" in kinds[2]) == (batch == 3), (batch, kinds)
        with monkeypatch.context() as m:
            m.setattr(sym, "CROPS", False)
            _assert_equal_runs(fast, _margins_and_grads(net, x[:batch], y[:batch], 0.05))
    assert sym.CROPS_MIN_DENSE.get("cpu", 0) == 0     # on a CPU the crops are always taken


def test_crops_into_a_linear_equal_the_dense_propagation(monkeypatch):
    """MixTrain's MNIST_Small layout (convolution, ReLU, strided convolution, ReLU, Linear): the first ReLU's
    terms cross the second convolution as crops and the Linear as one weighted sum of weight columns per term
    (``CROP_LINEAR``); margins and every parameter's gradient (through the sums' own backward pass) equal those of
    dense error images, also after an in-place change of the Linear's weight (its transposed copy is kept between
    calls without autograd)."""
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 4, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 12), nn.ReLU(), nn.Linear(12, 5)).double()
    g = torch.Generator().manual_seed(10)
    x = torch.rand(3, 1, 20, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3,), generator=g)

    def run():
        out = _margins_and_grads(net, x, y, 0.08)
        with torch.no_grad():
            before = bounds.symbolic(net, x - 0.08, x + 0.08)
            net[5].weight.mul_(-1.5)
            after = bounds.symbolic(net, x - 0.08, x + 0.08)
            net[5].weight.div_(-1.5)
        return out + [*before, *after]

    with monkeypatch.context() as m:
        m.setattr(sym, "CROP_LINEAR_TERMS", 1)     # this small network's few terms: crops all the same
        kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))
        fast = run()
    # ReLUs 1–3 of the autograd call, then of the two calls without it: crops at ReLU 2, dense after the Linear
    assert kinds[1] == kinds[4] == ["Crops"] and kinds[2] == kinds[5] == ["Tensor", "Tensor"]
    with monkeypatch.context() as m:
        m.setattr(sym, "CROP_LINEAR", False)
        kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))
        dense = run()
    assert kinds[1] == kinds[4] == ["Tensor"]
    with monkeypatch.context() as m:   # a device type outside CROP_LINEAR_DEVICES (CUDA's rule, here on the CPU)
        m.setattr(sym, "CROP_LINEAR_TERMS", 1)
        m.setattr(sym, "CROP_LINEAR_DEVICES", ("cuda",))
        kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))
        elsewhere = run()
    assert kinds[1] == kinds[4] == ["Tensor"]
    _assert_equal_runs(elsewhere, dense)
    assert sym.CROP_LINEAR_DEVICES == ("cpu",)   # a GPU does without them (bounds-cuda.json: dense was faster)
    with monkeypatch.context() as m:   # the default: below CROP_LINEAR_TERMS terms in the chunk, dense images
        kinds = _spy(m, lambda s: sorted(type(e).__name__ for e in s.E.values()))
        with torch.no_grad():
            bounds.symbolic(net, x[:1] - 0.08, x[:1] + 0.08)
    assert kinds[1] == ["Tensor"]
    _assert_equal_runs(fast, dense)
    assert (fast[1] - fast[0]).min() >= 0 and (fast[1] - fast[0]).max() > 0
    assert not torch.allclose(fast[-3], fast[-1])   # the weight change moved the bounds


def test_chunks_are_sized_by_the_windows(monkeypatch):
    """The per-sample memory estimate follows the windows: on MixTrain's MNIST_Small the largest input coefficients
    are the second convolution's 32·7·7 neurons × a 10 × 10 window (then the first Linear's 100 × 784 dense ones);
    with the windows off, d · n_max as before."""
    from robustlib import models
    net = models.build("mnist_small").eval()
    x = torch.zeros(1, 1, 28, 28)
    assert bounds.estimate_sample_bytes(net, x) == 4 * (32 * 7 * 7 * 10 * 10) * 4
    monkeypatch.setattr(sym, "PATCHES", False)
    assert bounds.estimate_sample_bytes(net, x) == 4 * 784 * (16 * 14 * 14) * 4
