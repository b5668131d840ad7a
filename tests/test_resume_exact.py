"""A stopped run resumes as if it had never stopped, and a checkpoint or keyed run of another run is never taken for
this one: the callback's random draws and state, a NaN epoch's roll-back, an objective used twice, and what the
keys compare (the selector, a Loader's seed and subset, MixTrain's validation split)."""
import pytest
import torch

import robustlib as rl
from robustlib import runs
from robustlib.objectives import PGDAT, MixTrain, Standard
from robustlib.pruning import DynamicSelector
from robustlib.scores import ForgettingCounter
from robustlib.train import fit


class Stop(Exception):
    pass


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return rl.models.build("small_cnn", **kw)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def data():
    train, _ = rl.data.load("digits")
    return train.head(160)


def test_a_callback_that_draws_random_numbers_resumes_exactly_and_keeps_its_state(data, tmp_path):
    kw = dict(epochs=4, batch_size=64, lr=0.05, progress=False)
    adv = {"eps": 0.1, "steps": 1}               # PGD with a random start: draws from the global stream
    m1 = _net()
    c1 = ForgettingCounter(m1, data, adversarial=adv)
    fit(m1, data, PGDAT(0.1, steps=1), callback=c1, **kw)

    m2 = _net()
    c2 = ForgettingCounter(m2, data, adversarial=adv)

    class Stopping(ForgettingCounter):
        def __call__(self, record):
            super().__call__(record)
            if record["epoch"] == 2:
                raise Stop
    stopping = Stopping(m2, data, adversarial=adv)
    with pytest.raises(Stop):
        fit(m2, data, PGDAT(0.1, steps=1), checkpoint=tmp_path / "r.pt", callback=stopping, **kw)
    m3 = _net()
    c3 = ForgettingCounter(m3, data, adversarial=adv)
    h = fit(m3, data, PGDAT(0.1, steps=1), checkpoint=tmp_path / "r.pt", callback=c3, **kw)
    assert h.resumed_epochs == 2                 # the epoch its callback stopped was kept
    assert _same(m1, m3)
    assert c3.epochs == c1.epochs == 4 and torch.equal(c3.counts, c1.counts)
    assert c2.epochs == 0                        # (c2 was never passed to fit)


def test_a_nan_epoch_rolls_back_the_objectives_state_too(tmp_path):
    small, _ = rl.data.load("digits", size=14)
    train, val = small.head(120), small.subset(torch.arange(1200, 1260))

    class Exploding(MixTrain):
        def losses(self, model, x, y):
            out = super().losses(model, x, y)
            return out * float("nan") if self.state["eps"] > 0.02 else out
    objective = Exploding(0.03, k=2, validation=val, n_val=60, eps_warmup=2)   # ε: 0, 0.015, then 0.03 → NaN
    after = []
    with pytest.raises(FloatingPointError, match="objective's and the selector's state .* keeps epoch 2"):
        fit(rl.models.build("mnist_small", input_size=14), train, objective, epochs=3, batch_size=40, lr=0.05,
            progress=False, checkpoint=tmp_path / "nan.pt", callback=lambda r: after.append(
                {k: list(v) if isinstance(v, list) else v for k, v in objective.state.items()}))
    assert len(after) == 2 and objective.state == after[-1]   # epoch 3's ε, α move and validation entry undone
    assert objective.state["eps"] == pytest.approx(0.015)


def test_an_objective_used_for_a_second_run_starts_afresh(data):
    small, _ = rl.data.load("digits", size=14)
    train, val = small.head(120), small.subset(torch.arange(1200, 1260))
    kw = dict(epochs=3, batch_size=40, lr=0.05, progress=False)
    objective = MixTrain(0.03, k=2, validation=val, n_val=60, eps_warmup=1)
    torch.manual_seed(0)
    first = rl.models.build("mnist_small", input_size=14)
    h1 = fit(first, train, objective, **kw)
    torch.manual_seed(0)
    second = rl.models.build("mnist_small", input_size=14)
    h2 = fit(second, train, objective, **kw)        # the same object: α and the validation record start over
    untimed = [[{k: v for k, v in r.items() if not k.endswith("_s")} for r in h] for h in (h1, h2)]
    assert untimed[0] == untimed[1] and [r["alpha"] for r in h1][0] == 0.5   # α, ε, losses, validation: the same
    # the weights to float rounding: oneDNN's kernels may round differently at other memory addresses
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(first.state_dict().values(),
                                                                         second.state_dict().values()))


def test_a_checkpoint_of_another_selector_or_loader_is_refused(data, tmp_path):
    kw = dict(epochs=3, batch_size=32, lr=0.05, progress=False)

    def stop(record):
        if record["epoch"] == 1:
            raise Stop
    with pytest.raises(Stop):
        fit(_net(), data, Standard(), selector=DynamicSelector("random", 0.2, R=1), checkpoint=tmp_path / "s.pt",
            callback=stop, **kw)
    with pytest.raises(ValueError, match="selector"):
        fit(_net(), data, Standard(), checkpoint=tmp_path / "s.pt", **kw)
    with pytest.raises(ValueError, match="selector"):
        fit(_net(), data, Standard(), selector=DynamicSelector("random", 0.9, R=1), checkpoint=tmp_path / "s.pt",
            **kw)

    with pytest.raises(Stop):
        fit(_net(), rl.data.Loader(data, 32, seed=1), Standard(), checkpoint=tmp_path / "l.pt", callback=stop, **kw)
    with pytest.raises(ValueError, match="loader"):
        fit(_net(), rl.data.Loader(data, 32, seed=2), Standard(), checkpoint=tmp_path / "l.pt", **kw)


def test_keys_tell_loaders_and_mixtrains_validation_apart(data):
    def key(d, objective):
        return runs.run_key(runs.run_config("r", _net(), d, objective, {"epochs": 2}))
    std = Standard()
    assert key(rl.data.Loader(data, 32, seed=1), std) == key(rl.data.Loader(data, 32, seed=1), std)
    assert key(rl.data.Loader(data, 32, seed=1), std) != key(rl.data.Loader(data, 32, seed=2), std)
    assert key(rl.data.Loader(data, 32), std) != key(rl.data.Loader(data, 64), std)
    assert key(rl.data.Loader(data, 32), std) != key(rl.data.Loader(data, 32, indices=torch.arange(50)), std)

    val_a, val_b = data.head(40), data.subset(torch.arange(40, 80))
    mix = dict(k=2, validation=val_a, n_val=40)
    assert key(data, MixTrain(0.05, **mix)) == key(data, MixTrain(0.05, **mix))
    assert key(data, MixTrain(0.05, **mix)) != key(data, MixTrain(0.05, **{**mix, "alpha_range": (0.5, 0.5)}))
    assert key(data, MixTrain(0.05, **mix)) != key(data, MixTrain(0.05, **{**mix, "validation": val_b}))
    assert key(data, MixTrain(0.05, **mix)) != key(data, MixTrain(0.05, **{**mix, "n_val": 20}))


def test_bad_checkpoint_arguments_say_what_to_do(data, tmp_path):
    with pytest.raises(ValueError, match="another name"):
        runs.fit_run(tmp_path, "r", _net(), data, Standard(), epochs=1, resume=False, progress=False)
    with pytest.raises(ValueError, match="empty string"):
        fit(_net(), data, Standard(), epochs=1, checkpoint="", progress=False)


def test_a_checkpoint_written_before_the_loader_and_selector_were_recorded_still_resumes(data, tmp_path):
    """Runs recorded before 2026-11-28 kept batch_size, augment and drop_last at the top and no selector."""
    from robustlib.run_state import differences as _differences
    now = {"lr": 0.1, "loader": {"batch_size": 32, "shuffle": True, "seed": 0, "augment": None, "drop_last": False,
                                 "subset": None}, "selector": None}
    old = {"lr": 0.1, "batch_size": 32, "augment": None, "drop_last": False}
    assert _differences(old, now) == []
    assert _differences({**old, "batch_size": 64}, now) == [
        "loader: {'batch_size': 64, 'shuffle': True, 'seed': 0, 'augment': None, 'drop_last': False, 'subset': None}"
        " → {'batch_size': 32, 'shuffle': True, 'seed': 0, 'augment': None, 'drop_last': False, 'subset': None}"]
