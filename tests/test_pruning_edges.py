"""Data pruning where the common path does not go (found by an audit): a fraction of 1, GLISTER's exact refresh on a
confidently wrong validation example, per-class budgets that float32 rounds differently, per_batch groups larger
than the budget, a memory without an attack, and settings that would only fail at the first selection."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib.greedy import OuterRows, glister_greedy
from robustlib.pruning import DynamicSelector, StaticSelector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    train, _ = rl.data.load("digits", size=8, n_train=120, n_test=10)
    torch.manual_seed(0)
    return train, nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("method, extra", [("gradmatch", {}), ("gradmatch", {"variant": "per_example"}),
                                           ("glister", {"valid": "valid"})])
def test_a_fraction_of_one_keeps_every_example_with_weight_one(small, method, extra):
    train, model = small
    extra = {k: (train.head(20) if v == "valid" else v) for k, v in extra.items()}
    idx, w = DynamicSelector(method, 1.0, R=1, **extra)(0, model, train)
    assert torch.equal(idx, torch.arange(len(train))) and torch.equal(w, torch.ones(len(train)))


def test_glister_exact_refresh_keeps_a_confidently_wrong_validation_example():
    """log p_y = −24 of a validation example: rebuilt from P = p − e_y in fp32 it became log 1e-30, and the
    refreshed validation gradient, hence the second pick, went wrong."""
    C, d, n = 3, 4, 40
    g = torch.Generator().manual_seed(0)
    Hv = torch.cat([torch.rand(2, d - 1, generator=g), torch.ones(2, 1)], 1)
    yv, z = torch.tensor([0, 1]), torch.tensor([[-12.0, 12.0, 0.0], [0.0, 3.0, 1.0]])
    onehot = F.one_hot(yv, C).float()
    P = torch.randn(n, C, generator=g)
    P[0] = torch.tensor([-5.0, 5.0, 0.0])           # the first pick: it moves example 0's logits
    H = torch.rand(n, d, generator=g)
    H[:, -1] = 1
    G = OuterRows(P, H)
    valid = OuterRows(z.softmax(1) - onehot, Hv)
    picked = glister_greedy(G, valid.rows_sum() / 2, 2, eta=6.0,
                            valid=OuterRows(valid.P, Hv, z.log_softmax(1)), valid_labels=yv)

    def second_pick(log_p):   # the gain of each row against the validation gradient after the first pick
        moved = log_p - 6.0 * Hv @ torch.outer(P[0], H[0]).T
        gain = G.mv(((moved.softmax(1) - onehot).T @ Hv).flatten() / 2)
        gain[0] = -float("inf")
        return int(gain.argmax())
    rebuilt = (valid.P + onehot).clamp_min(1e-30).log()
    assert second_pick(rebuilt) != second_pick(z.log_softmax(1))   # the case tells the two apart
    assert picked.tolist() == [0, second_pick(z.log_softmax(1))]


def test_last_layer_grads_carry_exact_log_probabilities(small):
    train, model = small
    model[-1].weight.data.mul_(100)   # confident predictions: p_y far below fp32's resolution at 1
    try:
        G = rl.pruning.last_layer_grads(model, train, factored=True)
        with torch.no_grad():
            want = model.eval()(train.x()).float().log_softmax(1)
        assert torch.allclose(G.log_p, want, atol=1e-4) and want.min() < -30
    finally:
        model[-1].weight.data.div_(100)


def test_stratified_budgets_round_in_float64():
    data = rl.data.ImageData(torch.zeros(95, 1, 8, 8, dtype=torch.uint8), torch.zeros(95), "t", ("a",))  # one class
    idx, _ = StaticSelector(torch.rand(95), 0.3, keep="stratified")(0, None, data)
    assert len(idx) == round(0.3 * 95) == 28                # float32 made 28.5000…01 of it: 29


def test_per_batch_warns_when_a_group_exceeds_the_budget(small):
    train, model = small
    with pytest.warns(UserWarning, match="whole groups"):
        idx, _ = DynamicSelector("gradmatch", 0.05, R=1, variant="per_batch", group_size=32)(0, model, train)
    assert len(idx) > 2 * round(0.05 * len(train))   # one group (the last holds 24), not 6 examples


def test_settings_that_would_fail_late_are_refused_at_once(small):
    train, _ = small
    memory = rl.memory.PerturbationMemory.like(train)
    bad = [dict(method="gradmatch", memory=memory),                     # a memory, but clean selection
           dict(method="glister", valid=train.head(10), chunk=0),
           dict(method="gradmatch", batch_size=0),
           dict(method="glister", valid=train.head(10).x()),          # a tensor, not an ImageData
           dict(method="glister", valid=train.head(10), eta=float("inf")),
           dict(method="glister", valid=train.head(10), variant="per_batch")]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            DynamicSelector(kw.pop("method"), 0.3, **kw)
