import pytest
import torch

import robustlib as rl


def test_margin_coefficients_are_exact_gradients_for_an_affine_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).double().eval()
    x = torch.rand(3, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 4])
    e = torch.full_like(x, 0.05)
    lo, hi, A = rl.bounds.margin_coefficients(net, x - e, x + e, y)
    W = net[1].weight
    for n in range(3):
        for j in range(5):
            grad = (W[j] - W[y[n]]).reshape(1, 3, 4)
            assert torch.allclose(A[n, j], grad * 0.05, atol=1e-12)
    mlo, mhi = rl.bounds.margin_bounds(net, x - e, x + e, y)
    assert torch.allclose(lo, mlo) and torch.allclose(hi, mhi)


def test_margin_coefficients_match_margin_bounds_on_a_relu_network():
    torch.manual_seed(1)
    net = rl.models.build("small_cnn", input_size=12).double().eval()
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    y = torch.tensor([1, 2, 3, 4])
    lo, hi, A = rl.bounds.margin_coefficients(net, (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1), y)
    mlo, mhi = rl.bounds.margin_bounds(net, (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1), y)
    assert A.shape == (4, 10, 1, 12, 12)
    assert torch.allclose(lo, mlo) and torch.allclose(hi, mhi)
    assert (A[torch.arange(4), y] == 0).all()  # the true class's margin is identically 0


@pytest.fixture(scope="module")
def adv_model(digits):
    train, test = digits
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    rl.train.fit(model, train, rl.objectives.PGDAT(eps=0.1, alpha=0.025, steps=5), epochs=4, batch_size=64,
                 lr=0.1, schedule="onecycle")
    return model.eval(), test


def test_interval_attack_stays_in_the_ball_and_is_never_weaker_than_its_pgd(adv_model):
    model, test = adv_model
    x, y = test.x(torch.arange(60)), test.labels[:60]
    eps = 0.1
    torch.manual_seed(3)
    x_int = rl.attacks.interval_attack(model, x, y, eps=eps, steps=10, interval_steps=2)
    assert (x_int - x).abs().max() <= eps + 1e-6 and x_int.min() >= 0 and x_int.max() <= 1
    torch.manual_seed(3)
    x_pgd = rl.attacks.pgd(model, x, y, eps=eps, steps=10)
    wrong_int = rl.evaluate.predict(model, x_int) != y
    wrong_pgd = rl.evaluate.predict(model, x_pgd) != y
    assert (wrong_pgd & ~wrong_int).sum() == 0  # the interval attack starts from the same PGD result
    assert wrong_int.sum() >= wrong_pgd.sum()


def test_interval_attack_never_breaks_a_verified_point(adv_model):
    model, test = adv_model
    x, y = test.x(torch.arange(60)), test.labels[:60]
    eps = 0.02
    verified = rl.bounds.verify(model, x, y, eps)
    assert verified.any()
    x_int = rl.attacks.interval_attack(model, x, y, eps=eps, steps=10, interval_steps=2)
    assert (rl.evaluate.predict(model, x_int[verified]) == y[verified]).all()


def test_interval_attack_registered_and_validated(adv_model):
    model, test = adv_model
    rec = rl.evaluate.robustness(model, test, eps=0.1, attacks=("pgd-10", "interval-attack"), n=30)
    assert rec["interval-attack_acc"] <= rec["clean_acc"]
    with pytest.raises(ValueError, match="eps"):
        rl.attacks.interval_attack(model, test.x(torch.arange(2)), test.labels[:2], eps=-1)
