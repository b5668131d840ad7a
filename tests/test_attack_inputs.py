"""Attacks and evaluation on inputs the common path does not see (found by an audit): bf16/fp16 images, labels of
other integer dtypes, float64 models under AutoAttack, names that would overwrite a record's figure, labels outside
the model's classes, a NaN start, inference mode."""
import pytest
import torch
import torch.nn as nn

import robustlib as rl
from robustlib import attacks, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype).eval()


def _batch(n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm, eps", [("linf", 0.01), ("linf", 0.3), ("l2", 0.5)])
def test_low_precision_perturbations_stay_inside_the_ball(dtype, norm, eps):
    model, (x, y) = _net(dtype), _batch(dtype=dtype)
    outs = [attacks.pgd(model, x, y, eps, steps=3, norm=norm, restarts=2),
            attacks.kl_attack(model, x, eps, steps=3, norm=norm)]
    if norm == "linf":
        outs.append(attacks.fgsm(model, x, y, eps, random_start=True))
    for x_adv in outs:
        assert x_adv.dtype == dtype
        d = (x_adv.double() - x.double()).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps).all(), float(size.max())           # exactly: rounding goes towards x
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (size > 0.5 * eps).any()                          # and the attack still moved


def test_labels_of_any_integer_dtype_give_the_int64_result():
    model, (x, y) = _net(), _batch()
    for attack in (lambda yy: attacks.pgd(model, x, yy, 0.1, steps=2, random_start=False),
                   lambda yy: attacks.pgd(model, x, yy, 0.1, steps=2, random_start=False, loss="cw"),
                   lambda yy: attacks.interval_attack(model, x, yy, 0.1, steps=2, interval_steps=1)):
        torch.manual_seed(0)
        want = attack(y)
        for dtype in (torch.int32, torch.uint8):
            torch.manual_seed(0)
            assert torch.equal(attack(y.to(dtype)), want)


def test_autoattack_norms_and_a_float64_model():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="norm"):
        attacks.autoattack(_net(), x, y, 0.1, norm="l1")
    a = attacks.autoattack(_net(), x, y, 0.1, norm="linf", version="rand")
    assert torch.equal(a, attacks.autoattack(_net(), x, y, 0.1, norm="Linf", version="rand"))
    x64 = x.double()
    b = attacks.autoattack(_net(torch.float64), x64, y, 0.1, version="rand")
    assert b.dtype == torch.float64 and (b - x64).abs().max() <= 0.1 and b.min() >= 0 and b.max() <= 1


def test_autoattack_keeps_every_cuda_generator(monkeypatch):
    """torchattacks reseeds every CUDA device (manual_seed_all), so every one's state is forked, not only the
    model's device."""
    seen = []
    real_fork = torch.random.fork_rng

    def fork(devices=None, **kw):
        seen.append(list(devices))
        return real_fork(devices=[], **kw)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.random, "fork_rng", fork)
    x, y = _batch(1)
    attacks.autoattack(_net(), x, y, 0.1, version="rand")
    assert seen == [[0, 1]]


def test_bad_inputs_are_refused_clearly():
    model, (x, y) = _net(), _batch(4)
    with pytest.raises(ValueError, match="start contains NaN"):
        attacks.pgd(model, x, y, 0.1, start=torch.full_like(x, float("nan")))
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        attacks.pgd(model, x, y, 0.1)
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate.attack_fn("pgd-²")


def test_evaluation_names_and_labels(digits, monkeypatch):
    _, test = digits
    model = rl.models.build("small_cnn", like=test)
    for attacks_, certify in ((("clean",), ()), (("symbolic_verified",), ("symbolic",)), (("a_verified",), ())):
        with pytest.raises(ValueError, match="would write the record"):
            evaluate.robustness(model, test, 0.1, attacks={a: lambda m, x, y, e: x for a in attacks_},
                                certify=certify, n=4, progress=False)
    monkeypatch.setattr(evaluate, "ATTACKS", dict(evaluate.ATTACKS))
    with pytest.raises(ValueError, match="would write the record"):
        evaluate.register_attack("clean", lambda m, x, y, e: x)
    assert evaluate.predict(model, test.x(torch.arange(0))).shape == (0,)
    shifted = test.head(8)
    shifted.labels = shifted.labels + 10
    for run in (lambda: evaluate.accuracy(model, shifted),
                lambda: evaluate.robustness(model, shifted, 0.1, certify=("interval",), progress=False)):
        with pytest.raises(ValueError, match="the model has 10 classes"):
            run()
