"""Networks whose traced graph would not be the network itself are refused with a clear error rather than bounded
wrongly (found by an audit that sampled the ε-ball): broadcasting sums of input-dependent tensors, in-place changes
of tensors read again, values read from a tensor's data, forward hooks; and a Python value that ``forward`` reads
is traced anew when it changes; a caller's autocast does not lower the bounds' precision."""
import pytest
import torch
import torch.nn as nn

import robustlib.bounds as rb
from robustlib.bounds import UnsupportedOperation


def _box(x, eps=0.3):
    return rb.input_box(x, eps)


def _sound(model, x, eps=0.3, n=2000):
    """Both methods' bounds hold at sampled points and corners of the box."""
    lo_in, hi_in = _box(x, eps)
    pts = torch.cat([torch.rand(n, *x.shape[1:], dtype=x.dtype), (torch.rand(n, *x.shape[1:]) > 0.5).to(x.dtype)])
    pts = pts * (hi_in[0] - lo_in[0]) + lo_in[0]
    with torch.no_grad():
        out = model(pts)
        for method in (rb.interval, rb.symbolic):
            lo, hi = method(model, lo_in, hi_in)
            assert (out >= lo[0] - 1e-9).all() and (out <= hi[0] + 1e-9).all(), method.__name__


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 2)

    def forward(self, x):
        return self.b(x) + torch.relu(self.a(x))       # (B, 2) + (B, 1)


class InplaceReused(nn.Module):
    def __init__(self, augmented: bool):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 4), nn.Linear(4, 3), nn.Linear(4, 3)
        self.act, self.augmented = nn.ReLU(inplace=True), augmented

    def forward(self, x):
        h = self.fc1(x)
        if self.augmented:
            z = h
            z += 5.0                                   # traced as an out-of-place add; h changes too
            return self.fc2(z) + self.fc3(h)
        return self.fc2(self.act(h)) + self.fc3(h)     # ReLU(inplace=True) changes h, read again


class DataCentred(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x - x.data.mean())


class Tempered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.temperature = nn.Linear(3, 2), 1.0

    def forward(self, x):
        return self.fc(x) / self.temperature


@pytest.mark.parametrize("make, d, message", [
    (Broadcast, 2, "by broadcasting"),
    (lambda: InplaceReused(False), 2, "in place"),
    (lambda: InplaceReused(True), 2, "does not reproduce its output"),
    (DataCentred, 3, "getattr"),
])
def test_a_network_the_graph_misrepresents_is_refused(make, d, message):
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.rand(1, d, dtype=torch.double)
    lo, hi = _box(x)
    for method in (rb.interval, rb.symbolic, rb.interval):   # refused again on the second call (no cached trace)
        with pytest.raises(UnsupportedOperation, match=message):
            method(model, lo, hi)


def test_a_forward_hook_is_refused_unless_it_keeps_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).double().eval()
    x = torch.rand(1, 2, dtype=torch.double)
    handle = net[0].register_forward_hook(lambda m, i, o: o * 3 + 1)
    with pytest.raises(UnsupportedOperation, match="forward hook"):
        rb.symbolic(net, *_box(x))
    handle.remove()

    def same(module, args):
        return None
    same.keeps_values = True
    net[2].register_forward_pre_hook(same)
    _sound(net, x)


def test_a_value_that_forward_reads_is_traced_anew():
    torch.manual_seed(0)
    model = Tempered().double().eval()
    x = torch.rand(1, 3, dtype=torch.double)
    _sound(model, x)
    model.temperature = 0.1                            # the cached trace had 1.0 baked in
    _sound(model, x)


def test_weights_changed_without_a_new_version_make_a_new_plan():
    """A fused optimizer step (like DDP's broadcast or a write through .data) changes values but no version: the
    reused plan, with BatchNorm's scale and shift folded in, must not outlive it."""
    net = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1), nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0), net[0].bias.zero_(), net[1].weight.fill_(1.0), net[1].bias.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[1.0], [0.0]])), net[2].bias.zero_()      # logits [x + 1, 0]
    x, y = torch.tensor([[0.5]], dtype=torch.double), torch.tensor([0])
    with torch.no_grad():
        assert rb.verify(net, x, y, 0.1).tolist() == [True]
    version = net[1].bias._version
    net[1].bias.data.fill_(-2.0)                         # logits [x − 2, 0]: class 1, with no new version
    assert net[1].bias._version == version and net(x).argmax(1).item() == 1
    with torch.no_grad():
        assert rb.verify(net, x, y, 0.1).tolist() == [False]


def test_a_callers_autocast_does_not_lower_the_bounds_precision():
    """Under the caller's bf16 autocast the bounds are those of fp32 (bf16 rounding could make them unsound)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10)).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    lo_in, hi_in = _box(x, 0.05)

    def everything(autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = [*rb.interval(model, lo_in, hi_in), *rb.symbolic(model, lo_in, hi_in),
                   *rb.margin_bounds(model, lo_in, hi_in, y, "interval"),
                   *rb.margin_coefficients(model, lo_in, hi_in, y)]
            loss = rb.robust_loss(model, x, y, 0.05, checkpoint=True).sum()
        model.zero_grad()
        loss.backward()              # outside autocast, as torch advises (and fit does)
        return out + [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    for a, b in zip(everything(False), everything(True)):
        assert b.dtype == torch.float32 and torch.equal(a, b)
