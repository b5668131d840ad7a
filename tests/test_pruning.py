"""Data pruning kernels: scores against per-example references, OMP against scikit-learn and planted
solutions, GLISTER's greedy gain, selectors' schedule/resume, and a short pruned training run."""
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib.greedy import OuterRows
from robustlib.pruning import (DynamicSelector, ForgettingCounter, StaticSelector, glister_greedy, last_layer_grads,
                               omp, score)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    """200 digits at 8×8 and a tiny network with a BatchNorm and a Dropout (so eval mode matters)."""
    train, test = rl.data.load("digits", size=8, n_train=200, n_test=60)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    with torch.no_grad():  # non-trivial running statistics
        model.train()(train.x())
    model[-1].weight.data.mul_(4)  # spread the predictions out
    return train, test, model


def _cpu_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- OMP

def test_omp_recovers_planted_nonnegative_combination():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(200, 50, generator=g, dtype=torch.float64)
    planted = torch.tensor([3, 17, 42, 99, 150])
    w_true = torch.tensor([0.5, 1.0, 2.0, 0.7, 1.3], dtype=torch.float64)
    target = w_true @ G[planted]
    for positive in (True, False):
        idx, w = omp(G, target, budget=10, positive=positive)
        order = idx.argsort()
        assert idx[order].tolist() == planted.tolist()  # stops early: residual 0 after 5 picks
        torch.testing.assert_close(w[order], w_true, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_omp_unsigned_picks_the_rows_scikit_learn_picks(seed):
    from sklearn.linear_model import OrthogonalMatchingPursuit

    g = torch.Generator().manual_seed(seed)
    n, d, budget = 80, 40, 3 + seed
    G = torch.randn(n, d, generator=g, dtype=torch.float64)
    target = torch.randn(d, generator=g, dtype=torch.float64)
    idx, w = omp(G, target, budget, positive=False)
    ref = OrthogonalMatchingPursuit(n_nonzero_coefs=budget, fit_intercept=False).fit(G.T.numpy(), target.numpy())
    assert sorted(idx.tolist()) == np.flatnonzero(ref.coef_).tolist()
    np.testing.assert_allclose(w.numpy(), ref.coef_[idx.numpy()], rtol=1e-7, atol=1e-9)


def test_omp_positive_weights_solve_nnls_and_ridge_weights_solve_ridge():
    from scipy.optimize import nnls

    g = torch.Generator().manual_seed(1)
    G = torch.randn(120, 30, generator=g, dtype=torch.float64)
    target = torch.randn(30, generator=g, dtype=torch.float64)  # not a positive combination: NNLS is active
    idx, w = omp(G, target, 12)
    assert len(idx) == len(set(idx.tolist())) and (w > 0).all()
    ref, _ = nnls(G[idx].T.numpy(), target.numpy())
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6, atol=1e-9)
    # positive: a large anti-correlated row is never picked; nothing to pick when all rows oppose the target
    rows = torch.stack([-5 * target, target, torch.randn(30, generator=g, dtype=torch.float64)])
    idx, w = omp(rows, target, 1)
    assert idx.tolist() == [1] and w.tolist() == pytest.approx([1.0])
    assert len(omp(-rows[1:2].abs() * target.sign(), target, 1)[0]) == 0
    lam = 3.0
    idx, w = omp(G, target, 6, positive=False, lam=lam)
    A = G[idx]
    ridge = torch.linalg.solve(A @ A.T + lam * torch.eye(len(idx), dtype=A.dtype), A @ target)
    torch.testing.assert_close(w, ridge)


@pytest.mark.parametrize("positive", [True, False])
def test_omp_matching_error_does_not_grow_with_budget(positive):
    g = torch.Generator().manual_seed(2)
    G = torch.randn(150, 25, generator=g, dtype=torch.float64)
    target = G[:60].sum(0) + 0.5 * torch.randn(25, generator=g, dtype=torch.float64)
    errors = []
    for budget in range(1, 31):
        idx, w = omp(G, target, budget, positive=positive)
        assert len(idx) <= budget
        errors.append(float((w @ G[idx] - target).norm()))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.2 * errors[0]


# ----------------------------------------------------------------------------- GLISTER

def test_glister_prefers_aligned_examples_and_refreshes_the_validation_gradient():
    g_val = torch.tensor([1.0, 1.0])
    G = torch.tensor([[1.0, 0.0], [0.99, 0.0], [0.0, 0.9], [-1.0, -1.0], [0.1, 0.0]])
    # without the refresh (η→0) the two near-copies of the most aligned row come first
    assert glister_greedy(G, g_val, 2, eta=1e-9).tolist() == [0, 1]
    # with η = 0.5: g_val ← (0.5, 1) after the first pick, so the row along the other axis wins
    assert glister_greedy(G, g_val, 2, eta=0.5).tolist() == [0, 2]
    assert 3 not in glister_greedy(G, g_val, 4, eta=0.1).tolist()  # opposed to g_val: never worth it
    # stochastic greedy whose samples cover every row is the deterministic greedy
    gen = torch.Generator().manual_seed(0)
    assert glister_greedy(G, g_val, 2, eta=0.5, stochastic=True, delta=1e-9, generator=gen).tolist() == [0, 2]
    picks = glister_greedy(torch.randn(100, 4), torch.randn(4), 30, stochastic=True, chunk=7, generator=gen)
    assert len(set(picks.tolist())) == 30


def test_outer_rows_act_as_the_matrix_they_factor():
    gen = torch.Generator().manual_seed(1)
    P, H = torch.randn(300, 10, generator=gen), torch.randn(300, 33, generator=gen)
    G = OuterRows(P, H)
    dense = torch.stack([torch.outer(P[i], H[i]).flatten() for i in range(300)])
    v, idx = torch.randn(330, generator=gen), torch.tensor([4, 17, 17, 250])
    torch.testing.assert_close(G.dense(), dense)
    torch.testing.assert_close(G.mv(v), dense @ v, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(G.rows_sum(idx), dense[idx].sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G.rows_sum(), dense.sum(0), rtol=1e-5, atol=1e-4)
    g_val = torch.randn(330, generator=gen)
    for chunk in (1, 9):   # the same greedy picks from the factors as from the matrix
        assert glister_greedy(G, g_val, 60, eta=0.01, chunk=chunk).tolist() == \
            glister_greedy(dense, g_val, 60, eta=0.01, chunk=chunk).tolist()
    with pytest.raises(ValueError, match="same n"):
        OuterRows(P, H[:5])


def test_per_batch_groups_sum_the_gradients_of_their_members(small, monkeypatch):
    """The selector's batched group sums (P_qᵀ H_q over padded groups) equal index_add over the dense rows."""
    train, _, model = small
    seen = {}
    real = rl.pruning.omp
    monkeypatch.setattr(rl.pruning, "omp", lambda Gb, target, *a, **kw: seen.update(Gb=Gb, t=target) or
                        real(Gb, target, *a, **kw))
    sel = DynamicSelector("gradmatch", 0.3, R=1, variant="per_batch", group_size=16, seed=3)
    idx, w = sel(5, model, train)
    g = torch.Generator(device=train.device).manual_seed(3 * 1_000_003 + 5)
    group = torch.empty(200, dtype=torch.long)
    group[torch.randperm(200, generator=g)] = torch.arange(200) // 16
    G = last_layer_grads(model, train)
    torch.testing.assert_close(seen["Gb"], torch.zeros(13, G.shape[1]).index_add_(0, group, G), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["t"], G.sum(0), rtol=1e-5, atol=1e-5)
    assert len(idx) >= 16 and all(   # whole groups only: every member of a chosen group is selected
        int((group == q).sum()) == int((group[idx] == q).sum()) for q in torch.unique(group[idx]))
    torch.testing.assert_close(last_layer_grads(model, train, factored=True).dense(), G)


# ----------------------------------------------------------------------------- scores

def _reference_scores(model, x, y):
    lin = model[-1]
    el2n, loss, g_full, g_last = [], [], [], []
    for i in range(len(y)):
        logits = model(x[i:i + 1])
        ce = F.cross_entropy(logits, y[i:i + 1])
        el2n.append(float((logits.softmax(1)[0] - F.one_hot(y[i], 10).float()).norm().detach()))
        loss.append(float(ce.detach()))
        grads = torch.autograd.grad(ce, list(model.parameters()), retain_graph=True)
        g_full.append(float(torch.cat([t.flatten() for t in grads]).norm()))
        gw, gb = torch.autograd.grad(ce, [lin.weight, lin.bias])
        g_last.append(float(torch.cat([gw.flatten(), gb]).norm()))
    return {k: torch.tensor(v) for k, v in
            dict(el2n=el2n, loss=loss, grand_full=g_full, grand_last=g_last).items()}


@pytest.mark.usefixtures("fp32_default")
def test_scores_equal_per_example_computation_and_leave_the_model_untouched(small):
    train, _, model = small
    data = train.head(40)
    model.train()
    before = _cpu_state(model)
    got = {"el2n": score("el2n", model, data, batch_size=16), "loss": score("loss", model, data, batch_size=16),
           "grand_full": score("grand", model, data, mode="full", batch_size=16),
           "grand_last": score("grand", model, data, mode="last", batch_size=16)}
    assert model.training and all(m.training for m in model.modules())  # flags restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # BatchNorm statistics not updated
    model.eval()
    try:
        ref = _reference_scores(model, data.x(), data.labels)
    finally:
        model.zero_grad(set_to_none=True)
        model.train()
    for key in ref:
        assert got[key].shape == (40,) and got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    assert got["grand_last"].std() > 0 and not torch.allclose(got["grand_full"], got["grand_last"])


@pytest.mark.usefixtures("fp32_default")
def test_adversarial_scores_are_scores_on_pgd_examples(small):
    train, _, model = small
    data = train.head(32)
    attack = {"eps": 0.1, "steps": 3}
    torch.manual_seed(5)
    adv = score("el2n", model, data, adversarial=attack, batch_size=64)
    torch.manual_seed(5)
    x_adv = rl.attacks.pgd(model, data.x(), data.labels, eps=0.1, steps=3)
    with torch.no_grad():
        p = model.eval()(x_adv).softmax(1)
    model.train()
    torch.testing.assert_close(adv, (p - F.one_hot(data.labels, 10).float()).norm(dim=1))
    assert (adv.mean() > score("el2n", model, data).mean())  # the attack makes examples harder
    G = last_layer_grads(model, data, adversarial=attack)
    assert G.shape == (32, 10 * 17) and all(p.grad is None for p in model.parameters())
    r1, r2 = score("random", model, data, seed=1), score("random", model, data, seed=1)
    assert torch.equal(r1, r2) and not torch.equal(r1, score("random", model, data, seed=2))


def test_bf16_network_passes_give_float32_scores_close_to_fp32(small, monkeypatch):
    train, _, model = small
    data = train.head(64)
    G32 = last_layer_grads(model, data, amp=False)
    G16 = last_layer_grads(model, data, amp=True)        # what "auto" does on CUDA and AMX CPUs, here on this CPU
    assert G16.dtype == torch.float32 and G16.shape == G32.shape and not torch.equal(G16, G32)
    assert (G16 - G32).norm() <= 0.05 * G32.norm()        # bf16 keeps ~3 significant digits
    for mode, expected in (("off", G32), ("on", G16)):   # "auto" follows fit's precision (robustlib.precision)
        monkeypatch.setenv("ROBUSTLIB_CPU_BF16", mode)
        assert torch.equal(last_layer_grads(model, data), expected), mode
    monkeypatch.delenv("ROBUSTLIB_CPU_BF16")
    # GraNd over all parameters stays float32 under autocast (torch.func's per-example gradients)
    torch.testing.assert_close(score("grand", model, data, mode="full", amp=True, batch_size=16),
                               score("grand", model, data, mode="full", amp=False, batch_size=16))
    e16 = score("el2n", model, data, amp=True)
    assert e16.dtype == torch.float32
    torch.testing.assert_close(e16, score("el2n", model, data, amp=False), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="amp must be True, False or 'auto'"):
        last_layer_grads(model, data, amp="bf16")


def test_forgetting_counter_counts_correct_to_incorrect_transitions():
    n = 5
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # the image encodes its own index
    data = rl.data.ImageData(images, torch.zeros(n, dtype=torch.long), classes=("a", "b"))

    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.correct = torch.ones(n, dtype=torch.bool)

        def forward(self, x):
            idx = (x[:, 0, 0, 0] * 255).round().long()
            return torch.stack([self.correct[idx].float(), (~self.correct[idx]).float()], 1)

    model = Table()
    counter = ForgettingCounter(model, data, batch_size=2)
    history = [[1, 1, 1, 0, 1], [1, 0, 1, 0, 0], [1, 1, 0, 0, 1], [1, 0, 1, 0, 0]]
    for row in history:
        model.correct = torch.tensor(row, dtype=torch.bool)
        counter({"epoch": 0})  # the fit(..., callback=counter) form
    assert counter.scores().tolist() == [0, 2, 1, 4, 2]  # never learned: the number of epochs
    restored = ForgettingCounter()
    buf = io.BytesIO()
    torch.save(counter.state_dict(), buf)
    buf.seek(0)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(score("forgetting", model, data, counter=restored), counter.scores())


# ----------------------------------------------------------------------------- selectors

def test_static_selector_keeps_top_bottom_and_per_class_top(small):
    train, _, model = small
    s = score("random", model, train, seed=4)
    top, w = StaticSelector(s, 0.25)(0, model, train)
    assert len(top) == 50 and torch.equal(w, torch.ones(50))
    assert s[top].min() >= s.sort(descending=True).values[49]
    bottom, _ = StaticSelector(s, 0.25, keep="bottom")(0, model, train)
    assert s[bottom].max() <= s.sort().values[49]
    sel = StaticSelector(s, 0.3, keep="stratified")
    strat, _ = sel(0, model, train)
    for c in range(10):
        members = (train.labels == c).nonzero().squeeze(1)
        kept = strat[train.labels[strat] == c]
        assert len(kept) == max(1, round(0.3 * len(members)))
        assert s[kept].min() >= s[members].max() if len(kept) == len(members) else \
            s[kept].min() > s[members][~torch.isin(members, kept)].max()
    assert torch.equal(sel(7, model, train)[0], strat)  # chosen once


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_dynamic_selector_schedule_fraction_and_resume(small):
    train, _, model = small
    kw = dict(fraction=0.2, R=3, warmup=2, seed=1)
    full = DynamicSelector("random", **kw)
    out = [full(e, model, train) for e in range(10)]
    assert out[0] is None and out[1] is None  # warm-up: full data
    chosen = [o[0] for o in out[2:]]
    assert all(len(c) == 40 and len(set(c.tolist())) == 40 for c in chosen)
    # re-selected at epochs 2, 5, 8 only
    same = [torch.equal(chosen[i], chosen[i + 1]) for i in range(len(chosen) - 1)]
    assert same == [True, True, False, True, True, False, True]
    assert full.selections == 3 and full.last_epoch == 8 and full.last_seconds > 0
    first = DynamicSelector("random", **kw)
    for e in range(4):
        first(e, model, train)
    resumed = DynamicSelector("random", **kw)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    for e in range(4, 10):
        got, ref = resumed(e, model, train), out[e]
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("variant", ["per_class", "per_batch", "per_example"])
def test_gradmatch_selects_the_budget_with_mean_one_weights(small, variant):
    train, _, model = small
    sel = DynamicSelector("gradmatch", 0.3, R=1, variant=variant, group_size=10,
                          adversarial={"eps": 0.1, "steps": 2})
    idx, w = sel(0, model, train)
    assert len(set(idx.tolist())) == len(idx) == 60  # 200·0.3; per batch: 6 groups of 10
    assert (w >= 0).all() and w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert all(p.grad is None for p in model.parameters()) and model.training
    if variant == "per_class":
        counts = torch.bincount(train.labels[idx], minlength=10).float()
        expected = 0.3 * torch.bincount(train.labels, minlength=10).float()
        assert (counts - expected).abs().max() <= 1
    if variant == "per_batch":  # members of one group share one weight: at most 6 distinct values
        assert len(torch.unique(w)) <= 6
    # the weighted subset's gradient points closer to the full gradient than random subsets' do
    G = last_layer_grads(model, train)
    idx, w = DynamicSelector("gradmatch", 0.3, R=1, variant=variant, group_size=10)(0, model, train)
    full = G.sum(0)
    cos = F.cosine_similarity(w @ G[idx], full, dim=0)
    rand = [F.cosine_similarity(G[torch.randperm(200)[:60]].sum(0), full, dim=0) for _ in range(20)]
    assert cos > max(rand)


def test_glister_selector_uses_the_validation_split(small):
    train, test, model = small
    sel = DynamicSelector("glister", 0.25, R=2, valid=test, adversarial={"eps": 0.05, "steps": 1}, eta=0.01)
    idx, w = sel(0, model, train)
    assert len(set(idx.tolist())) == 50 and torch.equal(w, torch.ones(50))
    G, gv = last_layer_grads(model, train), last_layer_grads(model, test).mean(0)
    # clean gains of the adversarially chosen examples beat those of the rest on average
    gain = G @ gv
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert gain[idx].mean() > gain[rest].mean()
    st = DynamicSelector("glister", 0.25, valid=test, stochastic=True)(0, model, train)[0]
    assert len(set(st.tolist())) == 50


def test_balanced_glister_selects_within_each_class_against_its_validation_gradient(small):
    from robustlib.greedy import glister_greedy
    from robustlib.pruning import class_budgets
    from robustlib.pruning_study import class_shares
    train, test, model = small
    k = 50
    ks = class_budgets(train.labels, k, 10)
    counts = torch.bincount(train.labels, minlength=10)
    assert sum(ks) == k and all(0 <= kc <= n for kc, n in zip(ks, counts.tolist()))
    assert all(abs(kc - k * n / 200) < 1 for kc, n in zip(ks, counts.tolist()))   # proportional, rounded
    sel = DynamicSelector("glister", 0.25, R=2, valid=test, eta=0.01, balanced=True)
    idx, w = sel(0, model, train)
    assert torch.bincount(train.labels[idx], minlength=10).tolist() == ks and torch.equal(w, torch.ones(k))
    # each class's picks are plain GLISTER on that class's rows against its own validation examples' gradient
    G, Gv = last_layer_grads(model, train), last_layer_grads(model, test)
    for c in range(10):
        members = (train.labels == c).nonzero().squeeze(1)
        if ks[c]:
            ref = members[glister_greedy(G[members], Gv[test.labels == c].mean(0), ks[c], eta=0.01)]
            assert set(idx[train.labels[idx] == c].tolist()) == set(ref.tolist())
    shares = class_shares(sel, train)
    assert shares == pytest.approx([kc / k for kc in ks]) and class_shares(DynamicSelector("random", 0.5), train) is None
    # the unbalanced selector's key stays what it was; the balanced one has its own
    assert "balanced" not in DynamicSelector("glister", 0.25, valid=test).config()
    assert sel.config()["balanced"] is True
    with pytest.raises(ValueError, match="variant='per_class'"):
        DynamicSelector("gradmatch", 0.25, balanced=True)


def test_fit_trains_on_the_selected_count(digits):
    train, _ = digits
    train = train.head(300)
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    sel = DynamicSelector("gradmatch", 0.3, R=2, warmup=1, adversarial={"eps": 0.1, "steps": 2})
    counter = ForgettingCounter(model, train)
    history = rl.train.fit(model, train, rl.objectives.Standard(), epochs=4, batch_size=64, lr=0.05,
                           selector=sel, callback=counter, progress=False)
    assert [r["examples"] for r in history] == [300, 90, 90, 90]
    assert sel.selections == 2 and sel.last_epoch == 3 and history[3]["select_s"] >= sel.last_seconds > 0
    assert counter.epochs == 4 and score("forgetting", model, train, counter=counter).shape == (300,)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, message", [
    (lambda d: DynamicSelector("random", 0.0), "fraction must be a number in \\(0, 1\\]"),
    (lambda d: DynamicSelector("random", 1.5), "fraction"),
    (lambda d: StaticSelector(torch.ones(3), float("nan")), "fraction"),
    (lambda d: DynamicSelector("random", 0.5, R=0), "R must be an integer ≥ 1"),
    (lambda d: DynamicSelector("random", 0.5, warmup=-1), "warmup must be an integer ≥ 0"),
    (lambda d: omp(torch.randn(5, 3), torch.randn(3), 6), "budget 6 is larger than the number of rows n=5"),
    (lambda d: glister_greedy(torch.randn(5, 3), torch.randn(3), 9), "budget 9 is larger"),
    (lambda d: DynamicSelector("glister", 0.5, valid=d.head(0)), "non-empty validation split"),
    (lambda d: DynamicSelector("glister", 0.5), "non-empty validation split"),
    (lambda d: StaticSelector(torch.tensor([1.0, float("nan")]), 0.5), "without NaN"),
    (lambda d: omp(torch.full((4, 2), float("nan")), torch.ones(2), 2), "must be finite"),
    (lambda d: DynamicSelector("gradmatch", 0.5, adversarial={"steps": 3}), "needs at least eps"),
    (lambda d: DynamicSelector("bogus", 0.5), "unknown method"),
    (lambda d: score("bogus", None, d), "unknown score"),
    (lambda d: score("forgetting", None, d), "needs counter"),
    (lambda d: score("el2n", nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU()), d), "not produce its logits"),
    (lambda d: score("grand", nn.Sequential(nn.Flatten()), d), "has no nn.Linear"),
])
def test_bad_input_raises_a_helpful_value_error(small, make, message):
    train, _, _ = small
    with pytest.raises(ValueError, match=message):
        make(train)


# ----------------------------------------------------------------------------- selectors as keyed runs, and the study

def test_selector_config_names_what_changes_the_selection_and_not_its_state(small):
    train, test, model = small
    kw = dict(R=2, warmup=1, adversarial={"eps": 0.1, "steps": 2})
    a = DynamicSelector("gradmatch", 0.3, **kw)
    before = a.config()
    a(1, model, train)
    assert a.config() == before and before["adversarial"] == {"eps": 0.1, "steps": 2}
    assert DynamicSelector("gradmatch", 0.3, R=2, warmup=1, adversarial={"eps": 0.1, "steps": 3}).config() != before
    g1, g2 = (DynamicSelector("glister", 0.3, valid=v).config() for v in (test.head(20), test.head(21)))
    assert g1["valid"]["n"] == 20 and g1 != g2
    s = score("random", model, train, seed=1)
    assert StaticSelector(s, 0.5).config() != StaticSelector(s.flip(0), 0.5).config()
    # the run key digests the selector's config: another selection attack is another run
    from robustlib.runs import run_config, run_key
    net = rl.models.build("small_cnn", like=train)
    keys = {run_key(run_config("r", net, train, rl.objectives.Standard(), {"selector": sel}))
            for sel in (DynamicSelector("gradmatch", 0.3, **kw), DynamicSelector("gradmatch", 0.3, R=2, warmup=1,
                                                                                 adversarial={"eps": 0.1, "steps": 3}))}
    assert len(keys) == 2


def test_score_selector_scores_the_warm_model_once_after_the_warm_up(small):
    from robustlib.pruning_study import ScoreSelector
    train, _, model = small
    sel = ScoreSelector("el2n", 0.25, warmup=2)
    assert sel(0, model, train) is None and sel(1, model, train) is None
    idx, w = sel(2, model, train)
    ref, _ = StaticSelector(score("el2n", model, train), 0.25)(0, model, train)
    assert torch.equal(idx, ref) and torch.equal(w, torch.ones(50)) and sel.selections == 1 and sel.last_seconds > 0
    with torch.no_grad():
        model[-1].bias.add_(1.0)   # a changed model no longer changes the choice
    assert torch.equal(sel(5, model, train)[0], idx)
    model[-1].bias.data.sub_(1.0)
    resumed = ScoreSelector("el2n", 0.25, warmup=2)
    resumed.load_state_dict(_roundtrip(sel.state_dict()))
    assert torch.equal(resumed(3, model, train)[0], idx)
    adv = {"eps": 0.1, "steps": 2}
    torch.manual_seed(5)
    got = ScoreSelector("grand", 0.25, adversarial=adv)(0, model, train)[0]
    torch.manual_seed(5)
    want = StaticSelector(score("grand", model, train, adversarial=adv), 0.25)(0, model, train)[0]
    assert torch.equal(got, want)
    assert ScoreSelector("el2n", 0.25, adversarial=adv).config()["adversarial"] == adv
    for bad, message in ((dict(name="forgetting"), "needs a counter"), (dict(warmup=-1), "warmup"),
                         (dict(fraction=0.0), "fraction"), (dict(keep="middle"), "keep")):
        with pytest.raises(ValueError, match=message):
            ScoreSelector(**{"name": "el2n", "fraction": 0.5, **bad})


def test_study_builds_every_method_on_one_schedule(small):
    from robustlib.pruning_study import METHODS, ScoreSelector, selector
    train, test, _ = small
    attack = {"eps": 0.1, "steps": 2}
    objective = rl.objectives.PGDAT(eps=0.1, steps=2)
    built = {m: selector(m, 0.3, 10, R=4, attack=attack, valid=test, objective=objective, train=train) for m in METHODS}
    assert built.pop("full") is None
    assert all(s.warmup == rl.pruning.warmup_epochs(0.3, 10) == 2 and s.fraction == 0.3 for s in built.values())
    assert {m for m, s in built.items() if isinstance(s, ScoreSelector)} == {
        "random-static", "el2n", "el2n-adv", "grand", "grand-adv"}
    assert built["el2n"].adversarial is None and built["grand-adv"].adversarial == attack
    assert built["gradmatch"].method == "gradmatch" and built["glister"].valid is test and built["random"].R == 4
    assert built["glister-memory"].memory is objective.memory is not None and built["glister"].memory is None
    assert selector("gradmatch", 0.5, 10, warmup=0).warmup == 0
    with pytest.raises(ValueError, match="unknown method"):
        selector("coreset", 0.3, 10)
    with pytest.raises(ValueError, match="attack="):
        selector("el2n-adv", 0.3, 10)


def test_parse_grid_expands_fractions_bullet_train_and_adds_full_data():
    from robustlib.pruning_study import parse_grid
    runs = parse_grid({"pgd-at": ["gradmatch", "el2n@0.3", "gradmatch+bt@0.5", "full+bt"], "mart": ["full"]},
                      [0.3, 0.5])
    got = [(r["objective"], r["method"], r["bt"], r["fraction"]) for r in runs]
    assert got == [("pgd-at", "full", False, 1.0), ("pgd-at", "gradmatch", False, 0.3),
                   ("pgd-at", "gradmatch", False, 0.5), ("pgd-at", "el2n", False, 0.3),
                   ("pgd-at", "gradmatch", True, 0.5), ("pgd-at", "full", True, 1.0), ("mart", "full", False, 1.0)]
    for grid, message in (({"pgd-at": ["coreset"]}, "unknown method"), ({"pgd-at": "gradmatch"}, "list"),
                          ({"pgd-at": ["random@1.5"]}, "fraction")):
        with pytest.raises(ValueError, match=message):
            parse_grid(grid, [0.3])


def test_holdout_splits_disjointly():
    from robustlib.pruning_study import holdout
    data, _ = rl.data.load("digits", size=8, n_train=100, n_test=10)
    rest, held = holdout(data, 30, seed=1)
    assert len(rest) == 70 and len(held) == 30
    both = torch.cat([rest.images, held.images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == len(torch.unique(data.images.flatten(1), dim=0))
    assert torch.equal(holdout(data, 30, seed=1)[1].images, held.images)
    with pytest.raises(ValueError, match="hold out"):
        holdout(data, 100)


def _runs(**accs):
    rows = []
    for key, (acc, s) in accs.items():
        objective, method, bt, f = key.split("_")
        rows.append(dict(dataset="fashion-mnist", objective=objective, method=method, bt=bt == "bt",
                         fraction=float(f), pgd_acc=acc, train_s=100.0 / s, speedup=s, run=key))
    return rows


def test_matched_schedules_equal_the_examples_of_the_pruned_and_the_full_run():
    from robustlib.pruning_study import matched_schedules
    # the cpu preset: E = 8, T_w = 1, f = 0.2, R = 3 -> 2.4 epochs' worth of examples; 36 epochs for 8
    assert matched_schedules(8, 1, 0.2, 3) == {"budget_epochs": 2, "update_epochs": 36, "update_R": 15}
    for E, t_w, f, R in ((8, 1, 0.4, 3), (100, 15, 0.3, 20), (6, 0, 0.5, 2), (10, 3, 0.25, 1)):
        m = matched_schedules(E, t_w, f, R)
        pruned_examples = t_w + (E - t_w) * f                           # in units of n
        assert abs(m["budget_epochs"] - pruned_examples) <= 0.5 or m["budget_epochs"] == 1
        equal_updates = t_w + (m["update_epochs"] - t_w) * f            # the equal-update run's examples
        assert E <= equal_updates < E + f + 1e-9                        # at least E epochs' worth, by < one epoch
        assert m["update_R"] == max(1, round(R / f))
    for bad, msg in (((0, 0, 0.2, 3), "epochs must be"), ((8, 1, 1.0, 3), r"fraction must lie in \(0, 1\)"),
                     ((8, 8, 0.2, 3), "warmup < epochs"), ((8, 1, 0.2, 0), "R must be")):
        with pytest.raises(ValueError, match=msg):
            matched_schedules(*bad)


def test_speedups_ideal_speedup_pareto_front_and_the_claim_rule():
    from robustlib.pruning_study import best_speedup, headline, ideal_speedup, pareto_front, speedups
    assert ideal_speedup(100, 15, 0.3) == pytest.approx(100 / 40.5) and ideal_speedup(10, 10, 0.2) == 1.0
    assert pareto_front([1, 2, 3, 2.5, 3], [0.5, 0.45, 0.3, 0.45, 0.2]) == [True, False, True, True, False]
    rows = _runs(**{"pgd-at_full_no_1": (0.50, 1.0), "pgd-at_gradmatch_no_0.3": (0.49, 2.5),
                    "pgd-at_random_no_0.2": (0.47, 3.5), "pgd-at_glister_bt_0.2": (0.495, 4.0),
                    "trades_full_no_1": (0.52, 1.0), "trades_gradmatch_bt_0.3": (0.506, 5.0),
                    "trades_gradmatch_no_0.3": (0.51, 2.8), "mart_full_no_1": (0.50, 1.0),
                    "mart_gradmatch_bt_0.3": (0.40, 4.0)})
    assert speedups(rows) == pytest.approx([1.0, 2.5, 3.5, 4.0, 1.0, 5.0, 2.8, 1.0, 4.0])
    assert best_speedup(rows[:3], 0.50)["run"] == "pgd-at_gradmatch_no_0.3"   # 3.5× is 3 points lower
    got = {c["claim"]: c for c in headline(rows, ["fashion-mnist"], "mnist_small")}
    assert set(got) == {f"{p}-{d}" for p in ("p1-speedup", "p1-bt-trades", "p1-bt-mart")
                        for d in ("cifar10", "cifar100")}
    assert got["p1-speedup-cifar10"]["measured"] == 2.8 and got["p1-speedup-cifar10"]["objective"] == "trades"
    assert got["p1-bt-trades-cifar10"]["measured"] == 5.0 and got["p1-bt-trades-cifar10"]["bullet_train"]
    assert got["p1-bt-mart-cifar100"]["measured"] == 1.0 and "no pruned run" in got["p1-bt-mart-cifar100"]["note"]
    assert all("measured on fashion-mnist, not CIFAR" in c["note"] and c["network"] == "mnist_small"
               for c in got.values())
    cifar = [dict(r, dataset="cifar10") for r in rows]
    on_cifar = {c["claim"]: c for c in headline(cifar, ["cifar10"], "x")}
    assert "not CIFAR-10" not in on_cifar["p1-speedup-cifar10"]["note"]
    assert {c["claim"] for c in headline(rows[:3], ["fashion-mnist"], "x")} == {"p1-speedup-cifar10",
                                                                              "p1-speedup-cifar100"}
    with pytest.raises(ValueError, match="no full-data run"):
        speedups(rows[1:3])


def test_pruning_figures_draw_every_run():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from robustlib.pruning_study import speedups
    rows = _runs(**{"pgd-at_full_no_1": (0.50, 1.0), "pgd-at_gradmatch_no_0.3": (0.49, 2.5),
                    "pgd-at_gradmatch_bt_0.3": (0.48, 3.0), "pgd-at_full_bt_1": (0.5, 1.8),
                    "mart_full_no_1": (0.45, 1.0), "mart_el2n_no_0.5": (0.40, 1.7)})
    frame = pd.DataFrame(rows).assign(speedup=speedups(rows))  # the same as the rows' own speed-ups
    fig = rl.plot.speedup_accuracy(frame, caption="caption line")
    assert len(fig.axes) == 2 and sum(len(ax.collections) for ax in fig.axes) == len(rows)
    assert any(t.get_text() == "caption line" for t in fig.texts)
    fig2 = rl.plot.fraction_view(frame, [0.3, 0.5], caption="c")
    assert len(fig2.axes) == 4
    plt.close("all")


def test_nnls_on_a_singular_gram_matrix_stops_at_a_kkt_point():
    """More rows than dimensions (GRAD-MATCH's summed batch gradients near the end of a selection): Q is singular
    and the optimum is not unique. The active set must still stop (no cycling on rounding) at a point that meets
    the KKT conditions to rounding: w ≥ 0, no zero weight with a positive gradient, zero gradient on the support."""
    from robustlib.greedy import _nnls
    g = torch.Generator().manual_seed(0)
    k, d = 300, 200
    A = (torch.randn(d, generator=g) + 0.01 * torch.randn(k, d, generator=g)).double()
    t = A[:150].sum(0)
    Q, b = A @ A.T, A @ t
    w = _nnls(Q, b, torch.zeros(k, dtype=torch.float64))
    grad = b - Q @ w
    scale = float(b.abs().max())
    assert bool((w >= 0).all()) and int((w > 0).sum()) > 0
    assert float(grad[w == 0].max()) <= 1e-6 * scale
    assert float(grad[w > 0].abs().max()) <= 1e-6 * scale
    assert float((t - w @ A).norm()) <= 1e-3 * float(t.norm())   # t lies in the cone of the rows: matched


@pytest.mark.usefixtures("fp32_default")
def test_selector_batches_default_per_device_and_do_not_change_the_gradients(small, monkeypatch):
    # the default batch is the device's (scores.SELECT_BATCH); the rows do not depend on how they are batched
    train, _, model = small
    data = train.head(70)
    assert DynamicSelector("gradmatch", 0.5).batch_size is None
    ref = last_layer_grads(model, data, batch_size=7)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (seen.append(len(x)), forward(x))[1])
    monkeypatch.setitem(rl.scores.SELECT_BATCH, "cpu", 32)
    got = last_layer_grads(model, data)
    assert seen and max(seen) == 32 and sum(s for s in seen if s <= 32) >= 70
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_a_keyed_run_records_the_selectors_batch_for_its_device(small):
    # runs.run_config fixes the default (None) to the data's device, so the key says what the run selects in: on a
    # CPU the same key as an explicit 256 (the default before it depended on the device)
    train, _, model = small
    default, explicit = DynamicSelector("random", 0.5), DynamicSelector("random", 0.5, batch_size=256)
    keys = [rl.runs.run_key(rl.runs.run_config("r", model, train, rl.objectives.Standard(), dict(selector=s)))
            for s in (default, explicit)]
    assert default.batch_size == 256 and keys[0] == keys[1]
    other = DynamicSelector("random", 0.5, batch_size=512)
    config = rl.runs.run_config("r", model, train, rl.objectives.Standard(), dict(selector=other))
    assert rl.runs.run_key(config) != keys[0]


def test_kept_gradient_norms_places_each_selection_among_all_examples(small):
    from robustlib.pruning import StaticSelector
    from robustlib.pruning_study import kept_gradient_norms
    train, _, model = small
    attack = {"eps": 0.05, "steps": 1}
    torch.manual_seed(0)
    norms = score("grand", model, train, adversarial=attack)
    top = StaticSelector(norms, 0.1, keep="top")           # the 20 largest norms of this very scoring
    rows = kept_gradient_norms(model, train, {"top": top, "random": DynamicSelector("random", 0.5, seed=1)},
                               adversarial=attack)
    by = {r["method"]: r for r in rows}
    # with the same attack starts the top-10% selector sits at the top: percentiles 0.9-1, all in the largest tenth
    torch.manual_seed(0)
    again = kept_gradient_norms(model, train, {"top": top}, adversarial=attack)[0]
    assert again["share_in_largest_tenth"] == 1.0 and again["mean_norm_percentile"] > 0.9
    assert by["random"]["kept"] == 100 and 0.35 < by["random"]["mean_norm_percentile"] < 0.65
    assert by["random"]["all_mean_norm"] == pytest.approx(float(norms.mean()), rel=0.2)
    with pytest.raises(ValueError, match="warm-up"):
        kept_gradient_norms(model, train, {"late": DynamicSelector("random", 0.5, warmup=3)}, adversarial=attack)


def test_glister_exact_refresh_is_the_last_layers_validation_gradient_after_the_step():
    """The exact refresh against an independent one: autograd's gradient of the validation CE of a linear last
    layer whose weights took the step −η Σ_{picked} g_i; the linear refresh grows without bound, the exact one not."""
    from robustlib.greedy import OuterRows, glister_greedy
    g = torch.Generator().manual_seed(0)
    C, F_, n, m, eta = 3, 4, 40, 25, 0.5
    W0 = torch.randn(C, F_, generator=g, dtype=torch.float64)
    Ht, Hv = torch.randn(n, F_, generator=g, dtype=torch.float64), torch.randn(m, F_, generator=g, dtype=torch.float64)
    yt, yv = torch.randint(0, C, (n,), generator=g), torch.randint(0, C, (m,), generator=g)

    def rows(H, y):   # last-layer CE gradients at W0: (softmax − onehot) ⊗ H
        return OuterRows(torch.softmax(H @ W0.T, 1) - F.one_hot(y, C).double(), H)
    G, V = rows(Ht, yt), rows(Hv, yv)
    ours = glister_greedy(G, V.rows_sum() / m, 8, eta=eta, valid=V, valid_labels=yv)
    W, used, ref, dense = W0.clone(), torch.zeros(n, dtype=torch.bool), [], G.dense()
    g_val = V.rows_sum() / m
    for _ in range(8):
        i = int((dense @ g_val).masked_fill(used, -float("inf")).argmax())
        used[i] = True
        ref.append(i)
        W = W - eta * dense[i].view(C, F_)
        Wg = W.clone().requires_grad_(True)
        g_val = torch.autograd.grad(F.cross_entropy(Hv @ Wg.T, yv), Wg)[0].flatten()
    assert ours.tolist() == ref
    linear = glister_greedy(G, V.rows_sum() / m, 8, eta=eta)
    assert linear.tolist() != ref   # the two refreshes choose differently here
    with pytest.raises(ValueError, match="one label per validation row"):
        glister_greedy(G, V.rows_sum() / m, 4, valid=V)


def test_selector_with_the_exact_refresh_has_its_own_key(small):
    train, test, model = small
    sel = DynamicSelector("glister", 0.25, valid=test, val_update="exact", balanced=True)
    idx, _ = sel(0, model, train)
    assert len(set(idx.tolist())) == 50 and sel.config()["val_update"] == "exact"
    assert "val_update" not in DynamicSelector("glister", 0.25, valid=test).config()
    with pytest.raises(ValueError, match="val_update"):
        DynamicSelector("glister", 0.25, valid=test, val_update="hessian")
