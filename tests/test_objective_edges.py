"""Objectives where the common path does not go (found by an audit): Bullet-Train's fractions from counts summed
over processes, IBP's cost when no bound runs, the memory after an interrupted epoch, float64 models, int32
labels, BatchNorm networks in certified training."""
import pytest
import torch
import torch.nn as nn

import robustlib as rl
from robustlib.objectives import MART, PGDAT, TRADES, BulletTrain, FastAT, IBPTraining, MixTrain, Standard

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(dtype=torch.float32, batchnorm=False):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(64, 32)] + ([nn.BatchNorm1d(32)] if batchnorm else []) + \
        [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers).to(dtype)


def _batch(n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g)


def test_bullet_train_fractions_come_from_summed_counts():
    """Under torchrun the processes' counts are summed before the fractions are taken (summing fractions gave 1.5
    and int() made it 1)."""
    model, (x, y) = _net(), _batch(32)
    bt = BulletTrain(PGDAT(0.1, steps=3))
    torch.manual_seed(0)
    bt(model, x, y)
    whole = bt.summarize(bt.reset_spent())
    torch.manual_seed(0)
    bt(model, x, y)
    counts = bt.reset_spent()
    halves = {k: 2 * v for k, v in counts.items()}        # two processes that counted alike
    assert bt.summarize(halves)["bt_outlier"] == whole["bt_outlier"]
    assert sum(whole[f"bt_{g}"] for g in ("outlier", "robust", "boundary")) == pytest.approx(1)
    assert bt.summarize(halves)["bt_steps_saved"] == 2 * whole["bt_steps_saved"]


def test_ibp_counts_only_the_clean_pass_when_no_bound_runs():
    model, (x, y) = _net(), _batch(8)
    obj = IBPTraining(0.1, kappa=(1.0, 1.0))
    obj(model, x, y)
    assert obj.reset_spent() == {"examples": 8, "forward": 8, "backward": 8, "symbolic": 0}
    obj = IBPTraining(0.1, kappa=(0.5, 0.5))
    obj(model, x, y)
    assert obj.reset_spent() == {"examples": 8, "forward": 24, "backward": 24, "symbolic": 0}


def test_an_interrupted_epoch_leaves_no_batch_indices_behind(digits):
    train, _ = digits
    memory_obj = PGDAT(0.1, steps=1)
    memory = rl.memory.PerturbationMemory.attach(memory_obj, train.head(64))

    class Boom(Exception):
        pass
    calls = []

    def stop_second_batch(model, x, y):
        calls.append(1)
        if len(calls) == 2:
            raise Boom
        return memory_obj(model, x, y)
    custom = rl.objectives.Custom(stop_second_batch)
    custom.memory, custom.writes_memory = memory, True
    with pytest.raises(Boom):
        rl.train.fit(rl.models.build("small_cnn", like=train), train.head(64), custom, epochs=1, batch_size=16,
                     progress=False)
    assert custom.batch_indices is None


@pytest.mark.parametrize("make", [lambda: PGDAT(0.1, steps=2), lambda: TRADES(0.1, steps=2),
                                  lambda: MART(0.1, steps=2), lambda: FastAT(0.1),
                                  lambda: BulletTrain(PGDAT(0.1, steps=2))])
def test_a_float64_model_trains_in_float64(make):
    x, y = _batch(8, torch.float64)
    assert make()(_net(torch.float64), x, y).dtype == torch.float64


@pytest.mark.parametrize("make", [Standard, lambda: PGDAT(0.1, steps=2), lambda: TRADES(0.1, steps=2),
                                  lambda: FastAT(0.1), lambda: IBPTraining(0.1, kappa=(0.5, 0.5)),
                                  lambda: MixTrain(0.1, k=2, rule="fixed")])
def test_int32_labels_give_the_int64_losses(make):
    model, (x, y) = _net(), _batch(8)
    torch.manual_seed(0)
    want = make()(model, x, y)
    torch.manual_seed(0)
    assert torch.equal(make()(model, x, y.int()), want)


@pytest.mark.parametrize("make", [lambda: IBPTraining(0.1, kappa=(0.5, 0.5)), lambda: MixTrain(0.1, k=2, rule="fixed")])
def test_certified_training_refuses_batchnorm_before_any_pass(make):
    model, (x, y) = _net(batchnorm=True), _batch(8)
    model.train()
    before = model[2].running_mean.clone()
    with pytest.raises(ValueError, match="without BatchNorm"):
        make()(model, x, y)
    assert torch.equal(model[2].running_mean, before)
