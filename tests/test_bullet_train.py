"""Bullet-Train: grouping, zero steps on outliers, honest pass and step counts, equality with the base, fit records."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import robustlib as rl
from robustlib.objectives import (BOUNDARY, MART, OUTLIER, PGDAT, ROBUST, TRADES, BulletTrain, FastAT, Standard)

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, K = 0.1, 4
BASES = {"pgd-at": lambda: PGDAT(EPS, steps=K), "trades": lambda: TRADES(EPS, steps=K),
         "mart": lambda: MART(EPS, steps=K)}


class Counted(nn.Module):
    """The wrapped network, counting the examples of every forward pass and of every backward pass through it."""

    def __init__(self, net):
        super().__init__()
        self.net, self.fwd, self.bwd = net, 0, 0

    def forward(self, x):
        out = self.net(x)
        self.fwd += x.shape[0]
        if out.requires_grad:  # an attack step or a training pass; the grouping runs without gradients
            out.register_hook(self._backward)
        return out

    def _backward(self, grad):
        self.bwd += grad.shape[0]


def batch(digits, n=24, seed=0):
    """A small CNN with BatchNorm and a batch on which it misclassifies every third example (eval mode)."""
    _, test = digits
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).train()
    x = test.x(torch.arange(n))
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    net.train()
    y = pred.clone()
    y[::3] = (pred[::3] + 1) % 10  # wrong labels: these examples are misclassified even on the clean input
    return net, x, y


def margins(net, x, y):
    with torch.no_grad(), rl.checks.eval_mode(net):
        return -rl.attacks.cw_margin(net(x), y)  # z_y − max_{j≠y} z_j


@pytest.mark.parametrize("name", BASES)
def test_misclassified_examples_get_no_attack_steps(digits, name):
    net, x, y = batch(digits)
    bt = BulletTrain(BASES[name](), robust_margin=float("inf"))  # the correct ones all go to "boundary"
    x_adv, group, sizes = bt.adversarial(net, x, y)
    wrong = margins(net, x, y) < 0
    assert wrong[::3].all() and not wrong[1::3].any() and not wrong[2::3].any()
    assert torch.equal(group == OUTLIER, wrong) and torch.equal(group == BOUNDARY, ~wrong)
    assert sizes == (8, 0, 16)
    assert torch.equal(x_adv[wrong], x[wrong])  # 0 steps: x' = x exactly
    moved = (x_adv - x).flatten(1).abs().amax(1)
    assert (moved[~wrong] > 0).all() and (moved <= EPS + 1e-6).all()
    # the loss of an outlier is the base's formula with x' = x (eval mode: no batch statistics)
    net.eval()
    losses = bt(net, x, y)
    with torch.no_grad():
        z = net(x)
        clean = bt.base.loss_from(z, z, y)
    assert torch.allclose(losses[wrong], clean[wrong], atol=1e-6)
    assert bt.summarize(bt.reset_spent())["bt_outlier"] == pytest.approx(1 / 3)


def test_robust_needs_every_probe_above_the_margin_and_a_correct_clean_prediction():
    # a linear model whose margin z_0 − z_1 = Σ_d x_d − 8 + κ + 0.001 is just above κ at x = 0.5
    kappa, n = 1.0, 16
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([torch.ones(16), torch.zeros(16)]))
        net[1].bias.copy_(torch.tensor([kappa - 8 + 1e-3, 0.0]))
    x, y = torch.full((n, 1, 4, 4), 0.5), torch.zeros(n, dtype=torch.long)
    assert (margins(net, x, y) > kappa).all()
    steady = BulletTrain(PGDAT(EPS, steps=K), probes=16, sigma=0.0, robust_margin=kappa)
    assert (steady.groups(net, x, y) == ROBUST).all()
    # probes of size σ push Σ_d x_d below 8 for some probe (each with probability ≈ 1/2): the worst one counts
    shaken = BulletTrain(PGDAT(EPS, steps=K), probes=16, sigma=0.05, robust_margin=kappa)
    assert (shaken.groups(net, x, y) == BOUNDARY).all()
    # a misclassified example is never robust, whatever the margin threshold; without the outlier rule it is "boundary"
    lenient = BulletTrain(PGDAT(EPS, steps=K), sigma=0.0, outlier=None, robust_margin=-1e6)
    assert torch.equal(lenient.groups(net, x, 1 - y), torch.full_like(y, BOUNDARY))
    assert (lenient.groups(net, x, y) == ROBUST).all()


@pytest.mark.parametrize("name", BASES)
def test_pass_and_step_counts_add_up(digits, name):
    net, x, y = batch(digits)
    m = margins(net, x, y)
    correct = m.sort().values[m.sort().values > 0]
    gaps = correct[1:] - correct[:-1]
    k = int(gaps[len(gaps) // 4: 3 * len(gaps) // 4].argmax()) + len(gaps) // 4
    kappa = float(correct[k] + correct[k + 1]) / 2  # between two margins: no tie with the threshold
    L = 1
    # σ = 0: every probe is the clean input, so the groups follow from the clean margins
    bt = BulletTrain(BASES[name](), probes=2, sigma=0.0, robust_margin=kappa, light_steps=L)
    want = torch.full_like(y, BOUNDARY)
    want[m >= kappa] = ROBUST
    want[m < 0] = OUTLIER
    assert torch.equal(bt.groups(net, x, y), want)
    n_o, n_r, n_b = [int((want == g).sum()) for g in (OUTLIER, ROBUST, BOUNDARY)]
    assert min(n_o, n_r, n_b) > 0

    calls, attack = [], bt.base.attack

    def spy(model, xs, ys, steps, alpha):  # the base's own attack, called once per attacked group
        calls.append((len(ys), steps, alpha))
        return attack(model, xs, ys, steps, alpha)

    bt.base.attack = spy
    counted = Counted(net)
    with rl.checks.trusted_inputs():  # as in fit's steps: no value-check pass (no objective counts that one)
        losses = bt(counted, x, y)
    assert calls == [(n_b, K, bt.base.alpha), (n_r, L, 2.5 * EPS / L)]
    losses.mean().backward()
    spent = bt.summarize(bt.reset_spent())
    n, (f_t, b_t) = len(y), bt.base.train_cost()
    # every pass the network actually ran is counted: grouping (1 + P), attacks per group, training passes
    assert spent["forward"] == counted.fwd and spent["backward"] == counted.bwd
    assert spent["examples"] == n
    assert spent["bt_steps"] == n_o * 0 + n_r * L + n_b * K
    assert counted.bwd - n * b_t == spent["bt_steps"]  # one backward pass per attack step
    assert spent["bt_steps_saved"] == K * n - spent["bt_steps"] > 0
    assert (spent["bt_outlier"], spent["bt_robust"], spent["bt_boundary"]) == (n_o / n, n_r / n, n_b / n)
    assert spent["forward"] == n * (1 + 2 + f_t) + n_r * bt.base.attack_cost(L)[0] + n_b * bt.base.attack_cost(K)[0]
    assert bt.spent["forward"] == 0  # reset


@pytest.mark.parametrize("name", BASES)
def test_all_boundary_equals_base(digits, name):
    net, x, y = batch(digits)
    base = BASES[name]()
    # groups switched off: no grouping pass at all, exactly the base under the same seed
    off = BulletTrain(base, outlier=None, robust_margin=float("inf"))
    torch.manual_seed(1)
    got = off(copy.deepcopy(net), x, y)
    torch.manual_seed(1)
    want = base(copy.deepcopy(net), x, y)
    assert torch.equal(got, want)
    assert {k: off.spent[k] for k in ("examples", "forward", "backward")} == base.spent
    assert off.summarize(off.reset_spent())["bt_steps_saved"] == 0
    # finite thresholds no example meets: the probes run (and draw random numbers), then every example gets K steps
    far = BulletTrain(base, outlier=None, robust_margin=1e6, probes=2)
    torch.manual_seed(2)
    got = far(copy.deepcopy(net), x, y)
    torch.manual_seed(2)
    assert (far.groups(net, x, y) == BOUNDARY).all()  # the same draws as inside the call
    want = base(copy.deepcopy(net), x, y)
    assert torch.equal(got, want)
    spent = far.summarize(far.reset_spent())
    assert spent["bt_boundary"] == 1.0 and spent["bt_steps_saved"] == 0


def test_weights_config_and_autocast(digits):
    net, x, y = batch(digits, n=8)
    bt = BulletTrain(TRADES(EPS, steps=2), probes=1, robust_margin=0.5)
    w = torch.linspace(0.0, 2.0, 8)
    torch.manual_seed(3)
    plain = bt(copy.deepcopy(net), x, y)
    torch.manual_seed(3)
    assert torch.allclose(bt(copy.deepcopy(net), x, y, w), plain * w)
    with pytest.raises(ValueError, match="one per example"):
        bt(net, x, y, w[:4])
    cfg = bt.config()
    assert cfg == {"name": "bullet-train", "base": TRADES(EPS, steps=2).config(), "probes": 1, "sigma": EPS / 2,
                   "outlier": "misclassified", "robust_margin": 0.5, "light_steps": 1, "light_alpha": 2.5 * EPS}
    assert BulletTrain(TRADES(EPS, steps=2), bucket=8).config()["bucket"] == 8
    json.dumps(cfg)
    assert repr(bt).startswith("BulletTrain(TRADES(eps=0.1")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = bt(net, x, y)
    assert losses.dtype == torch.float32 and losses.shape == (8,) and torch.isfinite(losses).all()


def test_fit_records_fractions_and_spends_fewer_passes_than_pgd_at(digits):
    train, _ = digits
    fit = dict(epochs=2, optimizer="adam", lr=2e-3, batch_size=64, schedule="constant", progress=False)
    steps = 5
    runs = {}
    for name, objective in (("bt", BulletTrain(PGDAT(EPS, steps=steps), probes=1, robust_margin=1.0)),
                            ("pgd", PGDAT(EPS, steps=steps))):
        torch.manual_seed(0)
        runs[name] = rl.train.fit(rl.models.build("mnist_small"), train, objective, **fit)
    bt, pgd = runs["bt"], runs["pgd"]
    for r in bt:
        fractions = (r["bt_outlier"], r["bt_robust"], r["bt_boundary"])
        assert all(0 <= f <= 1 for f in fractions) and sum(fractions) == pytest.approx(1.0, abs=1e-12)
        assert r["bt_steps"] + r["bt_steps_saved"] == steps * r["seen"] == steps * len(train)
    assert bt[-1]["loss"] < bt[0]["loss"] and all(math.isfinite(r["loss"]) for r in bt)
    assert bt[-1]["bt_robust"] > 0 and bt[-1]["bt_outlier"] < bt[0]["bt_outlier"]  # it learns: fewer outliers
    assert sum(r["forward"] for r in bt) < sum(r["forward"] for r in pgd)  # measured ratio ≈ 0.78–0.81, seeds 0–2
    assert sum(r["backward"] for r in bt) < sum(r["backward"] for r in pgd)


def test_fit_with_a_selector(digits):
    train, _ = digits
    data = train.head(128)
    bt = BulletTrain(MART(EPS, steps=2), probes=1)
    selector = rl.pruning.DynamicSelector("gradmatch", 0.5, R=1, adversarial=bt)  # ε, α, K of the base
    history = rl.train.fit(rl.models.build("small_cnn"), data, bt, epochs=1, batch_size=32, lr=0.05,
                           selector=selector, progress=False)
    r = history[0]
    assert r["seen"] == r["examples"] == 64
    assert r["bt_outlier"] + r["bt_robust"] + r["bt_boundary"] == pytest.approx(1.0)


def test_sub_batches_are_padded_to_the_bucket_and_the_padding_is_discarded(digits):
    net, x, y = batch(digits, n=24)
    with torch.no_grad():
        z = net.eval()(x)
    net.train()
    others = z.clone().scatter_(1, y[:, None], float("-inf"))
    margin = z.gather(1, y[:, None]).squeeze(1) - others.amax(1)
    kappa = margin[margin > 0].median().item()   # splits the correctly classified ones into robust and boundary
    sizes = []

    def row_by_row(model, xs, ys, steps, alpha):   # deterministic and per example: padding must not show
        sizes.append(len(xs))
        return (xs + steps * alpha * (2 * (ys % 2) - 1).float().view(-1, 1, 1, 1)).clamp(0, 1)

    results = {}
    for bucket in (1, 5):
        base = PGDAT(EPS, steps=K)
        base.attack = row_by_row
        sizes.clear()
        bt = BulletTrain(base, probes=1, sigma=0.0, robust_margin=kappa, bucket=bucket)
        results[bucket] = bt.adversarial(net, x, y) + (list(sizes),)
    (x1, g1, n1, s1), (x5, g5, n5, s5) = results[1], results[5]
    assert n1 == n5 and n1[1] > 0 and n1[2] > 0 and torch.equal(g1, g5)
    assert s1 == [n1[2], n1[1]]                               # boundary, then robust, unpadded
    assert s5 == [-(-n1[2] // 5) * 5, -(-n1[1] // 5) * 5]     # each rounded up to a multiple of 5
    assert s5 != s1 and torch.equal(x5, x1)                   # the padding rows are discarded
    assert BulletTrain(PGDAT(EPS)).bucket_for("cpu") == 1 and BulletTrain(PGDAT(EPS)).bucket_for("cuda") == 32
    assert BulletTrain(PGDAT(EPS), bucket=8).bucket_for("cuda") == 8


def test_bad_input_is_rejected_with_clear_messages(digits):
    base = PGDAT(EPS, steps=K)
    for bad, match in ((lambda: BulletTrain(Standard()), "PGDAT, TRADES or MART"),
                       (lambda: BulletTrain(FastAT(EPS)), "got FastAT"),
                       (lambda: BulletTrain(lambda m, x, y: x), "PGDAT, TRADES or MART"),
                       (lambda: BulletTrain(base, probes=0), "probes must be an integer ≥ 1"),
                       (lambda: BulletTrain(base, probes=1.5), "probes"),
                       (lambda: BulletTrain(base, sigma=-0.01), "sigma must be ≥ 0"),
                       (lambda: BulletTrain(base, light_steps=-1), "light_steps must be an integer ≥ 0"),
                       (lambda: BulletTrain(base, light_steps=K + 1), r"light_steps must lie in 0…K = 0…4"),
                       (lambda: BulletTrain(base, robust_margin=float("nan")), "robust_margin"),
                       (lambda: BulletTrain(base, outlier="loss"), "unknown outlier rule"),
                       (lambda: BulletTrain(base, light_alpha=-1.0), "light_alpha"),
                       (lambda: BulletTrain(base, bucket=0), "bucket must be an integer ≥ 1"),
                       (lambda: BulletTrain(base, bucket=2.5), "rounded up to"),
                       (lambda: BulletTrain(base, bucket="big"), "'auto'")):
        with pytest.raises(ValueError, match=match):
            bad()
    net, x, y = batch(digits, n=4)
    with pytest.raises(ValueError, match="out of range"):
        BulletTrain(base)(net, x, y + 10)
