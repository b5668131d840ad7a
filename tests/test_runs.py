"""Keyed, resumable training runs (results/<preset>/runs/): reuse, resume, never a stale run."""
from __future__ import annotations

import pytest
import torch

import robustlib as rl
from robustlib.objectives import PGDAT, Standard
from robustlib.reproduce import Record

pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed=0):
    torch.manual_seed(seed)
    return rl.models.build("small_cnn")


def test_finished_run_is_reloaded_with_its_original_wall_clock(digits, tmp_path):
    train, _ = digits
    data = train.head(128)
    rec = Record("ch", "smoke", tmp_path)
    first = rec.fit("std", net(), data, Standard(), epochs=2, batch_size=64, progress=False)
    model = net()
    again = Record("ch", "smoke", tmp_path)
    second = again.fit("std", model, data, Standard(), epochs=2, batch_size=64, progress=False)
    assert second.resumed_epochs == 2 and [r["wall_s"] for r in second] == [r["wall_s"] for r in first]
    assert again.runs[0]["reused_epochs"] == 2 and again.train_wall_s == pytest.approx(first.wall_s, abs=1e-3)
    again.fit("std", net(), data, Standard(), epochs=2, batch_size=64, progress=False)  # a second cell reuses it
    assert len(again.runs) == 2 and again.train_wall_s == pytest.approx(first.wall_s, abs=1e-3)
    trained = net()
    Record("ch", "smoke", tmp_path / "other").fit("std", trained, data, Standard(), epochs=2, batch_size=64,
                                                  progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert len(list((tmp_path / "runs").glob("*.pt"))) == 1
    assert rec.to_dict()["runs"][0]["key"] == again.to_dict()["runs"][0]["key"]


def test_changed_configuration_is_a_new_run(digits, tmp_path):
    train, _ = digits
    data = train.head(128)
    rec = Record("ch", "smoke", tmp_path)
    rec.fit("m", net(), data, Standard(), epochs=1, batch_size=64, progress=False)
    for change in (dict(objective=PGDAT(0.1, steps=1)), dict(lr=0.05), dict(model=net(seed=1)),
                   dict(data=train.head(96)), dict(epochs=2)):
        args = dict(model=net(), data=data, objective=Standard(), epochs=1, lr=0.1, **{})
        args.update(change)
        h = rec.fit("m", args.pop("model"), args.pop("data"), args.pop("objective"), batch_size=64, progress=False,
                    **args)
        assert h.resumed_epochs == 0, change        # trained afresh, not reloaded
    assert len({r["key"] for r in rec.runs}) == 6 == len(list((tmp_path / "runs").glob("*.pt")))


def test_interrupted_run_resumes_after_its_last_epoch(digits, tmp_path):
    train, _ = digits
    data = train.head(128)

    class Stop(Exception):
        pass

    def stop(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        Record("ch", "smoke", tmp_path).fit("r", net(), data, Standard(), epochs=3, batch_size=64, progress=False,
                                            callback=stop)
    model = net()
    h = Record("ch", "smoke", tmp_path).fit("r", model, data, Standard(), epochs=3, batch_size=64, progress=False)
    assert h.resumed_epochs == 2 and len(h) == 3
    uninterrupted = net()
    rl.train.fit(uninterrupted, data, Standard(), epochs=3, batch_size=64, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), uninterrupted.state_dict().values()))
    with pytest.raises(ValueError, match="checkpoint"):
        Record("ch", "smoke", tmp_path).fit("r", net(), data, Standard(), epochs=1, checkpoint=tmp_path / "x.pt")


def test_claims_rows_and_verdicts(tmp_path):
    from robustlib import claims
    rec = Record("ch", "cpu", tmp_path)
    row = rec.claim("p1-at-cost", 7.5, dataset="fashion-mnist", network="mnist_small")
    assert row == {"section": "claim", "claim": "p1-at-cost", "measured": 7.5, "dataset": "fashion-mnist",
                   "network": "mnist_small"}
    with pytest.raises(ValueError, match="unknown claim"):
        rec.claim("p9-nothing", 1.0)
    assert claims.verdict("p1-at-cost", 7.5) == "reproduced"
    assert claims.verdict("p1-at-cost", 12.0) == "partly" and claims.verdict("p1-at-cost", 30) == "not reproduced"
    assert claims.verdict("p1-speedup-cifar10", 3.2) == "reproduced"       # within 10% of 3.44
    assert claims.verdict("p1-speedup-cifar10", 2.0) == "partly"
    assert claims.verdict("p1-speedup-cifar10", 1.2) == "not reproduced"
    assert claims.verdict("p2-interval-attack", 0) == "not reproduced"
    assert claims.verdict("p2-interval-attack", 3) == "reproduced"
    assert claims.verdict("p2-vra", 0.99, preset="smoke") == "pipeline check only"
    assert claims.verdict("p2-vra", None) == "not yet run"


def test_run_key_of_a_network_with_batchnorm(digits, tmp_path):
    """BatchNorm's 0-d `num_batches_tracked` buffer is part of the initial-weights digest."""
    train, _ = digits
    torch.manual_seed(0)
    model = rl.models.PreActResNet(blocks=(1, 1), widths=(4, 8), in_channels=1)
    h = Record("ch", "smoke", tmp_path).fit("bn", model, train.head(32), Standard(), epochs=1, batch_size=16,
                                           progress=False)
    assert len(h) == 1 and len(list((tmp_path / "runs").glob("bn-*.pt"))) == 1


def _key(objective, **kwargs):
    return rl.runs.run_key(rl.runs.run_config("r", net(), rl.data.load("digits", n_train=64)[0], objective, kwargs))


_SCALE = 1.0


def _reads_a_global(m, x, y):
    return _SCALE * m(x).sum(1)


def test_functions_are_keyed_by_what_they_compute():
    """Two lambdas (a custom objective, an eval_fn) are two runs; the same code and values give the same key."""
    import torch.nn.functional as F
    from robustlib.digests import function_digest

    def ce():
        return lambda m, x, y: F.cross_entropy(m(x), y, reduction="none")

    def scaled(s):
        return lambda m, x, y: s * F.cross_entropy(m(x), y, reduction="none")

    def hinge(m, x, y):
        return F.multi_margin_loss(m(x), y, reduction="none")

    assert function_digest(ce()) == function_digest(ce())
    assert function_digest(scaled(2.0)) != function_digest(scaled(3.0))          # a closure's value
    assert function_digest(scaled(torch.ones(2))) != function_digest(scaled(torch.zeros(2)))   # a tensor's bytes
    assert _key(rl.objectives.Custom(ce())) == _key(rl.objectives.Custom(ce()))
    assert len({_key(rl.objectives.Custom(f)) for f in (ce(), scaled(2.0), hinge)}) == 3
    assert _key(Standard(), eval_fn=lambda m: {"a": 1}) != _key(Standard(), eval_fn=lambda m: {"a": 2})
    global _SCALE
    _SCALE, before = 1.0, function_digest(_reads_a_global)
    _SCALE = 2.0                                                                 # a global it reads
    assert function_digest(_reads_a_global) != before
    log = []
    first = function_digest(lambda: log.append(1))
    log.append(0)                                                                # a list it fills: the same run
    assert function_digest(lambda: log.append(1)) == first


def test_a_resumed_custom_objective_must_be_the_same_function(digits, tmp_path):
    import torch.nn.functional as F
    train, _ = digits
    ck = tmp_path / "c.pt"
    rl.train.fit(net(), train.head(64), lambda m, x, y: F.cross_entropy(m(x), y, reduction="none"), epochs=1,
                 batch_size=32, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="objective"):
        rl.train.fit(net(), train.head(64), lambda m, x, y: 2 * F.cross_entropy(m(x), y, reduction="none"),
                     epochs=2, batch_size=32, progress=False, checkpoint=ck)
