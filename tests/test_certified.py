"""Certified training objectives: IBP training, symbolic training and MixTrain (paper 2)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import bounds
from robustlib.objectives import (IBPTraining, MixTrain, Standard, SymbolicTraining, adaptive_alpha,
                                  schedule_weight)
from robustlib.objectives.certified import importance_draw
from robustlib.train import fit

from conftest import HostReads

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, 3)).to(dtype)


def batch(n=12, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def test_mixtrain_limits_equal_symbolic_and_clean():
    model, (x, y) = tiny(), batch()
    sym = SymbolicTraining(0.05)(model, x, y)
    mix0 = MixTrain(0.05, k=len(y), rule="fixed", alpha=0.0)(model, x, y)       # k = batch, α = 0
    assert torch.allclose(mix0, sym, atol=1e-6)
    mix1 = MixTrain(0.05, k=3, rule="fixed", alpha=1.0)
    assert torch.allclose(mix1(model, x, y), F.cross_entropy(model(x), y, reduction="none"))
    assert mix1.spent["symbolic"] == 0                                          # α = 1 computes no bound


def test_exactly_k_points_get_symbolic_bounds(monkeypatch):
    model, (x, y) = tiny(), batch(20)
    seen = []
    real = bounds.robust_loss

    def counting(m, xs, ys, eps, method="symbolic", **kw):
        seen.append((len(xs), method))
        return real(m, xs, ys, eps, method, **kw)

    monkeypatch.setattr(bounds, "robust_loss", counting)
    obj = MixTrain(0.05, k=5, rule="fixed", alpha=0.5)
    for _ in range(3):
        out = obj(model, x, y)
    assert seen == [(5, "symbolic")] * 3 and obj.spent["symbolic"] == 15
    # the batch mean is exactly α·mean(CE) + (1 − α)·mean of R over the k points
    torch.manual_seed(1)
    out = obj(model, x, y)
    torch.manual_seed(1)
    idx = torch.randperm(20)[:5]
    want = 0.5 * F.cross_entropy(model(x), y).detach() + 0.5 * real(model, x[idx], y[idx], 0.05).mean().detach()
    assert torch.allclose(out.mean(), want, atol=1e-6)


def test_importance_draw_is_unbiased_and_follows_its_probabilities():
    score = torch.tensor([0.0, 1.0, 3.0, 0.5, 0.0, 2.5])
    f = torch.tensor([2.0, -1.0, 0.5, 4.0, 1.0, 3.0])
    torch.manual_seed(0)
    draws = [importance_draw(score, 4) for _ in range(20000)]
    est = torch.stack([(scale * f[idx]).sum() for idx, scale in draws])
    assert abs(float(est.mean()) - float(f.sum())) < 0.05 * float(f.sum())     # E[Σ scale·f(i)] = Σ f
    p = 0.5 * score / score.sum() + 0.5 / 6                                     # the documented probabilities
    freq = torch.bincount(torch.cat([idx for idx, _ in draws]), minlength=6) / (4 * 20000)
    assert torch.allclose(freq, p, atol=0.01) and bool((freq[score == 0] > 0).all())   # zero score: still drawn
    idx, scale = importance_draw(torch.zeros(5), 3)                             # no signal: uniform, scale N/k
    assert torch.allclose(scale, torch.full((3,), 5 / 3))


def test_importance_sampled_mixtrain_estimates_every_robust_loss():
    model, (x, y) = tiny(), batch(6)
    want = SymbolicTraining(0.05)(model, x, y).detach()
    obj = MixTrain(0.05, k=3, rule="fixed", alpha=0.0, sampling="ibp-weighted")
    torch.manual_seed(0)
    with torch.no_grad():
        mean = torch.stack([obj(model, x, y) for _ in range(2000)]).mean(0)
    assert torch.allclose(mean, want, rtol=0.1), (mean, want)     # unbiased per example, unlike uniform's N/k·R_s
    assert obj.spent["symbolic"] == 3 * 2000 and obj.spent["forward"] == (1 + 2) * 6 * 2000   # clean + IBP pass
    worst = MixTrain(0.05, k=2, rule="fixed", alpha=0.0, sampling="worst-ibp")
    _, u = bounds.margin_bounds(model, *bounds.input_box(x, 0.05), y, "interval")
    picked = worst(model, x, y).nonzero().flatten()
    assert set(picked.tolist()) == set(u.amax(1).topk(2).indices.tolist())     # the two largest IBP violations


def test_schedule_rule_weight_probability_and_replacement():
    assert [schedule_weight(e, 10) for e in (0, 10, 14, 15, 20, 25, 100)] == \
        [0.1, 0.1, 0.1, pytest.approx(0.25), pytest.approx(0.625), pytest.approx(1.5625), 50.0]
    model, (x, y) = tiny(), batch(8)
    obj = MixTrain(0.05, k=8, rule="schedule", eps_warmup=0)
    torch.manual_seed(0)
    applied = sum(obj.spent["symbolic"] < (obj(model, x, y), obj.spent["symbolic"])[1] for _ in range(200))
    assert 0.7 < applied / 200 < 0.9                                            # robust term with p = 0.8


def test_adaptive_rule_moves_alpha_in_its_documented_direction():
    # clean accuracy fell more than tol below its best: α rises (more weight on clean)
    assert adaptive_alpha(0.5, [0.90, 0.95, 0.90], 0.05, 0.01, 0.1, 0.9) == pytest.approx(0.55)
    # clean accuracy holds up: α falls (more weight on robustness)
    assert adaptive_alpha(0.5, [0.90, 0.95, 0.946], 0.05, 0.01, 0.1, 0.9) == pytest.approx(0.45)
    assert adaptive_alpha(0.12, [0.9, 0.95], 0.05, 0.01, 0.1, 0.9) == pytest.approx(0.1)   # clamped
    assert adaptive_alpha(0.88, [0.95, 0.5], 0.05, 0.01, 0.1, 0.9) == pytest.approx(0.9)


def test_eps_ramp_reaches_target_at_the_stated_epoch():
    obj = IBPTraining(0.2, eps_warmup=4)
    eps = [obj.start_epoch(e, 10, [])["eps"] for e in range(6)]
    assert eps == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    kappa = [obj.start_epoch(e, 10, [])["kappa"] for e in (0, 2, 4)]
    assert kappa == pytest.approx([1.0, 0.75, 0.5])                            # κ ramps with ε


@pytest.mark.parametrize("make", [lambda: IBPTraining(0.05, kappa=(0.5, 0.5)), lambda: SymbolicTraining(0.05),
                                  lambda: MixTrain(0.05, k=4, rule="fixed", alpha=0.3)])
def test_robust_losses_match_finite_differences(make):
    model, (x, y) = tiny(3, torch.float64), batch(6, torch.float64, 3)
    obj = make()
    w = model[3].weight

    def loss(weight):
        with torch.no_grad():
            w.copy_(weight)
        torch.manual_seed(0)
        return obj(model, x, y).mean()

    w0 = w.detach().clone()
    torch.manual_seed(0)
    grad, = torch.autograd.grad(obj(model, x, y).mean(), w)
    h, num = 1e-6, torch.zeros_like(w0)
    for i in range(w0.numel()):
        e = torch.zeros_like(w0).view(-1)
        e[i] = h
        num.view(-1)[i] = (loss(w0 + e.view_as(w0)) - loss(w0 - e.view_as(w0))) / (2 * h)
    with torch.no_grad():
        w.copy_(w0)
    assert torch.allclose(grad, num, atol=1e-5, rtol=1e-4)


def test_resumed_run_continues_the_schedule(digits, tmp_path):
    train, _ = digits
    data = train.head(120)
    kw = dict(epochs=4, batch_size=40, lr=0.05, progress=False, drop_last=True)

    def net():
        torch.manual_seed(0)
        return rl.models.build("small_cnn")

    full = fit(net(), data, MixTrain(0.05, k=2, rule="schedule", eps_warmup=2), **kw)
    ck = tmp_path / "m.pt"

    class Stop(Exception):   # interrupt after epoch 2 (its checkpoint is written), then resume
        pass

    def stop(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(net(), data, MixTrain(0.05, k=2, rule="schedule", eps_warmup=2), checkpoint=ck, callback=stop, **kw)
    resumed = fit(net(), data, MixTrain(0.05, k=2, rule="schedule", eps_warmup=2),
                  checkpoint=ck, **kw)
    assert [r["eps"] for r in resumed] == [r["eps"] for r in full] == pytest.approx([0.0, 0.025, 0.05, 0.05])
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], rel=1e-5)
    assert [r["symbolic"] for r in resumed] == [r["symbolic"] for r in full]


def test_adaptive_rule_in_fit_records_validation_and_survives_resume(digits, tmp_path):
    train, _ = digits
    data, val = train.head(120), train.subset(torch.arange(1200, 1260))
    make = lambda: MixTrain(0.03, k=2, rule="adaptive", validation=val, n_val=60)   # noqa: E731
    h = fit(rl.models.build("small_cnn"), data, make(), epochs=3, batch_size=40, lr=0.05, progress=False,
            checkpoint=tmp_path / "a.pt")
    assert "val_clean_acc" not in h[0] and {"val_clean_acc", "val_vra", "alpha"} <= set(h[2])
    assert all(abs(h[e]["alpha"] - h[e - 1]["alpha"]) == pytest.approx(0.05) for e in (1, 2))
    state = torch.load(tmp_path / "a.pt", weights_only=True)["objective"]
    assert state["alpha"] == h[2]["alpha"] and len(state["val_clean"]) == 2


def test_mixtrain_raises_verified_accuracy_over_standard_training():
    """14×14 digits keep the symbolic bounds cheap; at ε = 0.1 a standard model is verified almost nowhere."""
    train, test = rl.data.load("digits", size=14)
    eps, results = 0.1, {}
    for name, obj in (("standard", Standard()),
                      ("mixtrain", MixTrain(eps, k=10, rule="fixed", alpha=0.5, eps_warmup=2))):
        torch.manual_seed(0)
        model = rl.models.build("small_cnn", like=train)
        h = fit(model, train, obj, epochs=6, batch_size=50, lr=0.05, progress=False, drop_last=True)
        results[name] = rl.evaluate.robustness(model, test.head(150), eps=eps, certify=("symbolic",), progress=False)
    assert h[-1]["symbolic"] == 10 * (len(train) // 50)          # k points per batch, every batch
    assert results["mixtrain"]["clean_acc"] > 0.8
    assert results["standard"]["symbolic_verified_acc"] < 0.1
    assert results["mixtrain"]["symbolic_verified_acc"] > results["standard"]["symbolic_verified_acc"] + 0.3, results


def test_bad_input():
    with pytest.raises(ValueError, match="k must be an integer ≥ 1"):
        MixTrain(0.1, k=0, rule="fixed")
    with pytest.raises(ValueError, match="eps_warmup"):
        SymbolicTraining(0.1, eps_warmup=-1)
    with pytest.raises(ValueError, match="unknown rule"):
        MixTrain(0.1, rule="cosine")
    with pytest.raises(ValueError, match="validation"):
        MixTrain(0.1, rule="adaptive")
    with pytest.raises(ValueError, match="kappa"):
        IBPTraining(0.1, kappa=(1.5, 0.5))
    model, (x, y) = tiny(), batch(4)
    with pytest.raises(ValueError, match="k = 5 points per batch but the batch has only 4"):
        MixTrain(0.1, k=5, rule="fixed")(model, x, y)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="without BatchNorm"):   # fit trains in train mode: refused at once
        SymbolicTraining(0.1)(bn.train(), x, y)


@pytest.mark.parametrize("make", [lambda: SymbolicTraining(0.05), lambda: MixTrain(0.05, k=5, rule="fixed")])
def test_a_certified_step_reads_one_value_per_relu_inside_trusted_inputs(make):
    """In fit's steps (trusted_inputs) the value checks are off: the only host reads left are the sizes of the
    fresh error terms, one per ReLU layer (``tiny`` has two); outside, the checks read the inputs too."""
    model, (x, y) = tiny(), batch(20)
    obj = make()
    with rl.checks.trusted_inputs(), HostReads() as trusted:
        obj(model, x, y).mean().backward()
    with HostReads() as checked:
        obj(model, x, y).mean().backward()
    assert trusted.n == 2, trusted.n
    assert checked.n > trusted.n
    with pytest.raises(ValueError, match="NaN"):       # the checks are back after the block
        obj(model, x * float("nan"), y)
