"""Attacks: agreement with torchattacks, budgets, restarts, targeted/CW modes, side effects, validation."""
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import attacks, evaluate
from robustlib.attacks import attack_loss, cw_margin, fgsm, kl_attack, pgd

EPS = 0.1
TOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained for about a second on the digits (≈ 97% clean accuracy)."""
    train, _ = digits
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    rl.train.fit(model, train, rl.objectives.Standard(), epochs=6, lr=0.05, batch_size=32,
                 schedule="cosine", progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.x(), test.labels


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def bn_net():
    """A tiny conv net with BatchNorm (and dropout) for the side-effect checks."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))


# ----------------------------------------------------------------------------- correctness

def test_model_is_trained(trained, batch):
    assert acc(trained, *batch) > 0.9


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_agrees_with_torchattacks(trained, batch, eps):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    steps = 10
    alpha = 2.5 * eps / steps
    ours, theirs = [], []
    for seed in range(3):  # different seeds for the two: a statistical comparison, not a replay
        torch.manual_seed(seed)
        ours.append(acc(trained, pgd(trained, x, y, eps, alpha, steps, random_start=True), y))
        torch.manual_seed(1000 + seed)
        atk = torchattacks.PGD(trained, eps=eps, alpha=alpha, steps=steps, random_start=True)
        theirs.append(acc(trained, atk(x, y), y))
    ours_mean, theirs_mean = sum(ours) / 3, sum(theirs) / 3
    print(f"eps={eps}: robustlib PGD-10 {ours} mean {ours_mean:.4f}; torchattacks {theirs} mean {theirs_mean:.4f}")
    assert theirs_mean < acc(trained, x, y) - 0.1  # the attack does something, so agreement means something
    assert abs(ours_mean - theirs_mean) <= 0.015


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_box_clamp_step_is_the_projection(trained, batch, eps, monkeypatch):
    """A step clamped into [max(x − ε, 0), min(x + ε, 1)] is the projected step, up to the rounding of x + (x' − x):
    from the same start and gradient (one step), and over ten steps the attacks hurt the model alike."""
    x, y = batch[0][:200], batch[1][:200]
    out = {}
    for box in (True, False):
        monkeypatch.setattr(attacks.gradient, "BOX_CLAMP", box)
        torch.manual_seed(1)
        one = pgd(trained, x, y, eps, alpha=eps / 4, steps=1)
        torch.manual_seed(1)
        out[box] = one, acc(trained, pgd(trained, x, y, eps, alpha=eps / 4, steps=10), y)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-6)
    assert ((out[True][0] - x).abs() <= eps + TOL).all() and 0 <= out[True][0].min() <= out[True][0].max() <= 1
    assert abs(out[True][1] - out[False][1]) <= 0.01


def test_pgd_never_weaker_than_fgsm(trained, batch):
    x, y = batch
    for eps in (0.05, 0.1):
        a_fgsm = acc(trained, fgsm(trained, x, y, eps), y)
        a_pgd = acc(trained, pgd(trained, x, y, eps, steps=20), y)
        assert a_pgd <= a_fgsm + 0.005, (eps, a_pgd, a_fgsm)
        assert a_fgsm < acc(trained, x, y) - 0.1


def test_eps_zero_gives_clean_accuracy(trained, batch):
    x, y = batch
    clean = acc(trained, x, y)
    for x_adv in (pgd(trained, x, y, 0.0), pgd(trained, x, y, 0, norm="l2", restarts=2),
                  fgsm(trained, x, y, 0.0), fgsm(trained, x, y, 0.0, random_start=True),
                  kl_attack(trained, x, 0.0, steps=2)):
        assert torch.equal(x_adv, x)
        assert acc(trained, x_adv, y) == clean
    rec = evaluate.robustness(trained, rl.data.ImageData((x * 255).round().to(torch.uint8), y),
                              eps=0.0, attacks=("pgd-5", "fgsm"))
    assert rec["pgd-5_acc"] == rec["fgsm_acc"] == rec["clean_acc"] == pytest.approx(clean)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_adversarial_examples_stay_in_budget_and_box(trained, batch, norm, eps, loss, restarts):
    x, y = batch[0][:128], batch[1][:128]
    x_adv = pgd(trained, x, y, eps, steps=5, norm=norm, loss=loss, restarts=restarts)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + TOL * (1 if norm == "linf" else 10)).all()
    assert size.max() > 0.5 * eps  # it moved
    assert acc(trained, x_adv, y) < acc(trained, x, y) - 0.2


def test_fgsm_budget_with_random_start(trained, batch):
    x, y = batch
    x_adv = fgsm(trained, x, y, EPS, random_start=True)  # α = 1.25 ε overshoots and must be clamped back
    assert ((x_adv - x).abs() <= EPS + TOL).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    # without a random start FGSM moves every non-clipped pixel by exactly ±ε (where the gradient is nonzero)
    x_adv = fgsm(trained, x, y, EPS)
    d = (x_adv - x).abs()
    interior = (x > EPS) & (x < 1 - EPS) & (d > 0)
    assert torch.allclose(d[interior], torch.full_like(d[interior], EPS), atol=TOL)


def test_l2_random_start_is_inside_ball():
    x = torch.rand(64, 1, 8, 8) * 0.5 + 0.25
    x0 = attacks.gradient._random_start(x, 0.7, "l2")
    r = (x0 - x).flatten(1).norm(dim=1)
    assert (r <= 0.7 + 1e-5).all() and r.min() > 0


def test_restarts_never_weaker_per_example(trained, batch):
    x, y = batch
    eps = 0.05

    def score(x_adv):
        with torch.no_grad():
            logits = trained(x_adv)
        return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")

    torch.manual_seed(7)
    ok1, loss1 = score(pgd(trained, x, y, eps, steps=5, restarts=1))
    torch.manual_seed(7)
    okr, lossr = score(pgd(trained, x, y, eps, steps=5, restarts=4))
    # per example, lexicographically (fooled, loss) never decreases
    assert (okr >= ok1).all()
    same = okr == ok1
    assert (lossr[same] >= loss1[same] - 1e-5).all()
    assert okr.sum() >= ok1.sum()
    # and restarts do find something one run did not (loss strictly higher somewhere)
    assert (lossr > loss1 + 1e-4).any()


def test_cw_margin_values_and_attack(trained, batch):
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    assert torch.allclose(cw_margin(logits, torch.tensor([1, 0])), torch.tensor([-1.0, 2.0]))
    assert torch.allclose(attack_loss(logits, torch.tensor([2, 2]), "cw", targeted=True), torch.tensor([-1.0, -1.0]))
    x, y = batch
    x_adv = pgd(trained, x, y, EPS, steps=10, loss="cw")
    a_cw = acc(trained, x_adv, y)
    assert a_cw < acc(trained, x, y) - 0.3
    with torch.no_grad():
        assert cw_margin(trained(x_adv), y).mean() > cw_margin(trained(x), y).mean() + 1.0


def test_targeted_moves_towards_target(trained, batch):
    x, y = batch
    target = (y + 1) % 10

    def hit_rate(x_):
        with torch.no_grad():
            return (trained(x_).argmax(1) == target).float().mean().item()

    def target_ce(x_):
        with torch.no_grad():
            return F.cross_entropy(trained(x_), target)

    before = hit_rate(x)
    for loss in ("ce", "cw"):
        x_adv = pgd(trained, x, y, 0.15, steps=20, loss=loss, targeted=True, y_target=target)
        assert hit_rate(x_adv) > before + 0.3, loss
        assert target_ce(x_adv) < target_ce(x)
    # without y_target, y itself is read as the target
    x_adv = pgd(trained, x, target, 0.15, steps=20, targeted=True)
    assert hit_rate(x_adv) > before + 0.3
    assert target_ce(fgsm(trained, x, target, 0.1, targeted=True)) < target_ce(x)


def test_more_steps_and_restarts_do_not_hurt(trained, batch):
    x, y = batch
    torch.manual_seed(0)
    a5 = acc(trained, pgd(trained, x, y, 0.05, steps=5), y)
    a20r = acc(trained, pgd(trained, x, y, 0.05, steps=20, restarts=2), y)
    assert a20r <= a5 + 0.01


# ----------------------------------------------------------------------------- side effects

@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_attacks_leave_model_untouched(digits, mode):
    _, test = digits
    x, y = test.x(torch.arange(16)), test.labels[:16]
    torch.manual_seed(0)
    model = bn_net()
    model.train()
    model(torch.rand(32, 1, 28, 28))  # non-trivial running statistics
    if mode == "eval":
        model.eval()
    elif mode == "mixed":
        model[1].eval()  # frozen BatchNorm inside a training model
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    params[0].grad = torch.ones_like(params[0])  # an existing .grad must not change either
    calls = [
        lambda: pgd(model, x, y, EPS, steps=3),
        lambda: pgd(model, x, y, 1.0, steps=3, norm="l2", restarts=2, loss="cw"),
        lambda: pgd(model, x, y, EPS, steps=2, targeted=True, y_target=(y + 1) % 10),
        lambda: fgsm(model, x, y, EPS, random_start=True),
        lambda: kl_attack(model, x, EPS, steps=2),
        lambda: evaluate.attack_fn("pgd-3")(model, x, y, EPS),
    ]
    for call in calls:
        call()
        assert [m.training for m in model.modules()] == flags
        for k, v in model.state_dict().items():
            assert torch.equal(v, buffers[k]), k
        assert torch.equal(params[0].grad, torch.ones_like(params[0]))
        assert all(p.grad is None for p in params[1:])


def test_attack_inside_no_grad_and_bf16_autocast(trained, batch):
    x, y = batch
    with torch.no_grad():
        x_adv = pgd(trained, x, y, EPS, steps=5)
    assert acc(trained, x_adv, y) < acc(trained, x, y) - 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(trained, x, y, EPS, steps=5)
        x_l2 = pgd(trained, x, y, 1.5, steps=5, norm="l2")
    assert x_adv.dtype == torch.float32 and x_l2.dtype == torch.float32
    assert ((x_adv - x).abs() <= EPS + TOL).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert ((x_l2 - x).flatten(1).norm(dim=1) <= 1.5 + 1e-5).all()
    assert acc(trained, x_adv, y) < acc(trained, x, y) - 0.2


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("case,match", [
    ("neg_eps", "eps must be ≥ 0"),
    ("nan_eps", "eps must be a finite number"),
    ("nan_x", "NaN or inf"),
    ("inf_x", "NaN or inf"),
    ("label_high", "out of range.*10 outputs"),
    ("label_neg", "out of range"),
    ("target_high", "target labels out of range"),
    ("shape", "batch size mismatch"),
    ("outside_box", r"\[0, 1\].*normalisation"),
    ("norm", "unknown norm 'l3'"),
    ("loss", "unknown loss 'hinge'"),
    ("float_labels", "integer tensor"),
    ("uint8_x", "floating-point"),
    ("steps", "steps must be"),
    ("restarts", "restarts must be"),
    ("y_target_untargeted", "targeted=True"),
    ("random_start", "random_start must be"),
])
def test_bad_inputs_raise_helpful_errors(trained, batch, case, match):
    x, y = batch[0][:8].clone(), batch[1][:8].clone()
    kw = dict(eps=EPS, steps=2)
    if case == "neg_eps":
        kw["eps"] = -0.1
    elif case == "nan_eps":
        kw["eps"] = float("nan")
    elif case == "nan_x":
        x[3, 0, 5, 5] = float("nan")
    elif case == "inf_x":
        x[0, 0, 0, 0] = float("inf")
    elif case == "label_high":
        y[2] = 10
    elif case == "label_neg":
        y[2] = -1
    elif case == "target_high":
        kw.update(targeted=True, y_target=torch.full_like(y, 12))
    elif case == "shape":
        y = y[:5]
    elif case == "outside_box":
        x = x * 2 - 0.5
    elif case == "norm":
        kw["norm"] = "l3"
    elif case == "loss":
        kw["loss"] = "hinge"
    elif case == "float_labels":
        y = y.float()
    elif case == "uint8_x":
        x = (x * 255).to(torch.uint8)
    elif case == "steps":
        kw["steps"] = -1
    elif case == "restarts":
        kw["restarts"] = 0
    elif case == "y_target_untargeted":
        kw["y_target"] = y
    elif case == "random_start":
        kw["random_start"] = "normal"
    eps = kw.pop("eps")
    with pytest.raises(ValueError, match=match):
        pgd(trained, x, y, eps, **kw)


def test_bad_inputs_through_fgsm_and_registry(trained, batch):
    x, y = batch[0][:8], batch[1][:8]
    with pytest.raises(ValueError, match="eps must be ≥ 0"):
        fgsm(trained, x, y, -1.0)
    with pytest.raises(ValueError, match="out of range"):
        evaluate.attack_fn("pgd-3")(trained, x, y + 10, EPS)
    with pytest.raises(ValueError, match="K ≥ 1"):
        evaluate.attack_fn("pgd-0")
    with pytest.raises(ValueError, match="out of range"):
        attacks.autoattack(trained, x, y + 10, EPS)


# ----------------------------------------------------------------------------- registry

def test_registry_names():
    import importlib
    assert "fgsm" in evaluate.ATTACKS and "autoattack" in evaluate.ATTACKS
    fn = evaluate.attack_fn("pgd-50")
    assert callable(fn)
    importlib.import_module("robustlib")  # `import robustlib` registers them: no explicit import needed
    assert sys.modules["robustlib.attacks"] is attacks


def test_robustness_record_with_pgd(trained, digits):
    _, test = digits
    rec = evaluate.robustness(trained, test, eps=EPS, attacks=("pgd-10", "fgsm"))
    assert rec["n"] == len(test)
    assert 0 <= rec["pgd-10_acc"] <= rec["clean_acc"]
    assert rec["pgd-10_acc"] <= rec["fgsm_acc"] + 0.01
    assert rec["pgd-10_acc"] < rec["clean_acc"] - 0.2


@pytest.mark.slow
def test_autoattack_via_registry(trained, digits):
    pytest.importorskip("torchattacks")
    _, test = digits
    rec = evaluate.robustness(trained, test, eps=0.07, attacks=("pgd-10", "autoattack"), n=6)
    print("autoattack on 6 images:", rec)
    assert rec["n"] == 6
    assert rec["autoattack_acc"] <= rec["pgd-10_acc"] <= rec["clean_acc"]
    assert rec["autoattack_acc"] < rec["clean_acc"]  # it does break something at this ε


def test_autoattack_leaves_grads_and_mode(digits):
    pytest.importorskip("torchattacks")
    _, test = digits
    x, y = test.x(torch.arange(2)), test.labels[:2]
    torch.manual_seed(0)
    model = bn_net().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = attacks.autoattack(model, x, y, EPS)
    assert ((x_adv - x).abs() <= EPS + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    # torchattacks reseeds torch's global RNG internally; the caller's RNG stream is preserved
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attacks.autoattack(model, x, y, EPS)
    assert torch.equal(torch.rand(3), expected)


def test_autoattack_missing_dependency_message(trained, batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # makes `import torchattacks` fail
    with pytest.raises(ImportError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        evaluate.attack_fn("autoattack")(trained, batch[0][:2], batch[1][:2], EPS)


def test_trusted_inputs_skips_only_the_value_checks(trained, batch):
    model = trained
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="out of range"):
        pgd(model, x, y + 100, EPS, steps=1)
    with rl.checks.trusted_inputs():
        pgd(model, x, y, EPS, steps=1)  # no synchronising check inside the block
        with pytest.raises(ValueError, match="batch size mismatch"):
            pgd(model, x, y[:2], EPS, steps=1)  # shape checks need no sync and still run
    with pytest.raises(ValueError, match="NaN"):
        pgd(model, x * float("nan"), y, EPS, steps=1)  # checks are back after the block


def test_fit_reports_bad_labels_at_the_first_batch(digits):
    train, _ = digits
    bad = rl.data.ImageData(train.images[:64], train.labels[:64] + 10, "bad")
    with pytest.raises(ValueError, match="out of range"):
        rl.train.fit(rl.models.build("small_cnn"), bad, rl.objectives.PGDAT(eps=0.1, steps=1), epochs=1)
