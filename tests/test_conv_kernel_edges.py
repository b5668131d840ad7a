"""Tuned convolutions where the common path does not go (found by an audit): float64 operands, autocast around
float64, double backward under autocast, an empty batch, and a fit that fails before its first epoch."""
import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import conv_kernels as ck


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 2, stride=2), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3)).to(dtype)


def _plan_everywhere(model, x, plan, ctx=contextlib.nullcontext):
    """Every tuned convolution gets ``plan`` for the input it meets in ``model(x)`` under ``ctx`` (no timing)."""
    keys = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: keys.__setitem__(m, ck._key(m, a[0])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(), ctx():
        model(x)
    for h in hooks:
        h.remove()
    for m, key in keys.items():
        m._plans[key] = plan


def test_float64_stays_float64():
    conv = nn.Conv2d(3, 8, 3)
    assert not any(v.endswith("/fp32") for v in ck._variants(conv, torch.float64))
    assert any(v.endswith("/fp32") for v in ck._variants(conv, torch.bfloat16))
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast never casts float64, and neither do the kernels
        assert ck._compute_dtype(x) == torch.float64


def test_double_backward_under_autocast_reaches_the_weights():
    """An input-gradient penalty: the casts to bf16 are recorded by autograd, so the second backward reaches the
    fp32 parameters as through a plain convolution."""
    plain, x = _net(), torch.rand(4, 3, 10, 10)
    tuned = copy.deepcopy(plain)
    ck.tune(tuned)
    ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)   # noqa: E731
    with ck.active():
        _plan_everywhere(tuned, x, ("nchw", "nchw", "nchw/fp32"), ctx)   # a plan that is not the default

    def penalty_grads(net, active):
        xa = x.clone().requires_grad_(True)
        with active, ctx():
            out = net(xa).float().logsumexp(1).sum()
        g, = torch.autograd.grad(out, xa, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), list(net.parameters()))
    for a, b in zip(penalty_grads(plain, ck.active(False)), penalty_grads(tuned, ck.active())):
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.02)


def test_an_empty_batch_passes_through():
    tuned = _net()
    ck.tune(tuned)
    with ck.active():
        _plan_everywhere(tuned, torch.rand(2, 3, 10, 10), ("s2d", "s2d", "s2d"))
        assert tuned[:3](torch.rand(0, 3, 10, 10)).shape == (0, 4, 5, 5)


@pytest.mark.parametrize("bad", [dict(optimizer="nope"), dict(checkpoint="  ")])
def test_a_fit_that_fails_before_training_leaves_plain_convolutions(digits, bad):
    train, _ = digits
    model = rl.models.build("small_cnn", like=train)
    with pytest.raises(ValueError):
        rl.train.fit(model, train.head(32), rl.objectives.Standard(), epochs=1, batch_size=16, progress=False,
                     tune_convs=True, **bad)
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
