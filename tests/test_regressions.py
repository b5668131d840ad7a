"""Regression tests of the "Correctness first" issue: each failed on the code before its fix.

(The critical unsound-certificate item and its property searches are in test_soundness.py.)
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import bounds, evaluate
from robustlib.objectives import PGDAT, Standard
from robustlib.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(digits):
    train, test = digits
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    fit(model, train.head(400), Standard(), epochs=2, batch_size=64, lr=0.1, progress=False)
    return model.eval(), train.head(400), test.head(60)


# ----------------------------------------------------------------------------- high

def test_interval_attack_and_ibp_certificate_are_two_numbers(small):
    model, _, test = small
    rec = evaluate.robustness(model, test, eps=0.0, attacks=("interval-attack",), certify=("interval",),
                              progress=False)
    assert 0 <= rec["interval-attack_acc"] <= 1 and 0 <= rec["interval_verified_acc"] <= 1
    # ε = 0: the attack changes nothing and the certificate proves every correct point
    assert rec["interval-attack_acc"] == rec["clean_acc"] == rec["interval_verified_acc"]
    rec = evaluate.robustness(model, test, eps=0.3, attacks=("interval-attack",), certify=("interval",),
                              progress=False)
    assert rec["interval_verified_acc"] == 0.0 < rec["clean_acc"]
    assert rec["interval_verified_acc"] <= rec["interval-attack_acc"] <= rec["clean_acc"]
    with pytest.raises(ValueError, match="certifier"):
        evaluate.register_attack("symbolic", lambda m, x, y, eps: x)
    with pytest.raises(ValueError, match="attack"):
        evaluate.register_certifier("pgd-7", lambda m, x, y, eps: torch.ones(len(y), dtype=torch.bool))
    with pytest.raises(ValueError, match="that is a certifier"):
        evaluate.robustness(model, test, eps=0.1, attacks=("symbolic",))


def test_boolean_mask_selector_trains_on_the_masked_examples(digits):
    train, _ = digits
    data = train.head(300)
    h = fit(rl.models.build("small_cnn"), data, Standard(), epochs=1, batch_size=64, progress=False,
            selector=lambda e, m, d: torch.arange(len(d)) < 100)
    assert h[-1]["examples"] == 100 and h[-1]["seen"] == 100
    loader = rl.data.Loader(data, 64)
    loader.set_subset(torch.arange(len(data)) < 100)
    assert torch.equal(loader.indices, torch.arange(100))
    with pytest.raises(ValueError, match="integers"):
        loader.set_subset(torch.tensor([0.0, 1.5, 2.0]))
    loader.set_subset(torch.tensor([3, 3, 3, 4]))       # repeats are drawn, but counted once
    assert loader.num_examples == 4 and loader.distinct_examples == 2


# ----------------------------------------------------------------------------- medium

def test_bounds_reject_inputs_outside_the_domain():
    m = nn.Linear(1, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        m.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[-1.0]])
    assert m(x).argmax(1).item() == 1
    with pytest.raises(ValueError, match="outside the input domain"):
        bounds.verify(m, x, torch.tensor([0]), 0.1)
    with pytest.raises(ValueError, match="outside the input domain"):
        bounds.robust_loss(m, x, torch.tensor([0]), 0.1)
    # with the domain made explicit the box contains x, and the false class is not certified
    assert not bool(bounds.verify(m, x, torch.tensor([0]), 0.1, clamp=None)[0])
    assert bool(bounds.verify(m, x, torch.tensor([1]), 0.1, clamp=None)[0])


def test_finished_checkpoint_of_another_run_is_refused(digits, tmp_path):
    train, _ = digits
    data = train.head(128)
    ck = tmp_path / "done.pt"
    fit(rl.models.build("small_cnn"), data, Standard(), epochs=1, batch_size=64, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="another run.*lr: 0.1 → 0.5.*objective"):
        fit(rl.models.build("small_cnn"), data, PGDAT(0.3, steps=1), epochs=1, batch_size=64, lr=0.5,
            checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="data"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, batch_size=64, checkpoint=ck,
            progress=False)
    # another architecture: refused before a single weight of the new model changes
    other = rl.models.build("mnist_small")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="model"):
        fit(other, data, Standard(), epochs=1, batch_size=64, checkpoint=ck, progress=False)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    # the same run resumes (nothing left to do)
    h = fit(rl.models.build("small_cnn"), data, Standard(), epochs=1, batch_size=64, checkpoint=ck, progress=False)
    assert len(h) == 1


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x80\x02garbage"])
def test_broken_checkpoint_files_give_a_clear_message(digits, tmp_path, content):
    train, _ = digits
    ck = tmp_path / "broken.pt"
    ck.write_bytes(content)
    with pytest.raises(ValueError, match="empty, truncated") as info:
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, checkpoint=ck, progress=False)
    assert "weights_only=False" not in str(info.value)


def test_checkpoint_missing_keys(digits, tmp_path):
    train, _ = digits
    ck = tmp_path / "partial.pt"
    torch.save({"model": {}, "epoch": 1}, ck)
    with pytest.raises(ValueError, match="lacks optimizer"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, checkpoint=ck, progress=False)


def test_reproduce_marks_failures_and_ignores_stale_records(tmp_path):
    from robustlib import reproduce
    nbformat = pytest.importorskip("nbformat")
    root = tmp_path
    (root / "notebooks").mkdir()
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: notebooks/silent\n"
                                   "- file: notebooks/failing\n")

    def notebook(name, *cells):
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell("preset = 'smoke'\nresults_dir = '.'")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")

    notebook("silent", "x = 1")   # writes no record
    notebook("failing", "import robustlib as rl\nrec = rl.reproduce.Record('failing', preset, results_dir)\n"
                        "rec.add(a=1); rec.save()", "raise ZeroDivisionError('the cause')")
    results = root / "results" / "smoke"
    results.mkdir(parents=True)
    (results / "silent.json").write_text(json.dumps({"notebook": "silent", "rows": []}))   # stale
    outcome = reproduce.run("smoke", root=root, results=results, log=lambda *a: None)
    assert outcome["silent"] is not None and "no results record" in outcome["silent"]
    assert outcome["failing"] == "ZeroDivisionError: the cause"
    rec = json.loads((results / "failing.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == "ZeroDivisionError: the cause" and rec["rows"] == [{"a": 1}]
    assert json.loads((results / "silent.json").read_text())["status"] == "failed"
    with pytest.raises(ValueError, match="non-empty"):
        reproduce.run("smoke", only=[], root=root, results=results, log=lambda *a: None)
    with pytest.raises(SystemExit):
        reproduce.main(["reproduce", "--only"])


def test_bounds_follow_a_changed_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)).eval()
    x = torch.rand(3, 4)
    bounds.interval(net, x, x)                 # traced and cached
    net[3] = nn.Linear(8, 3)
    lo, hi = bounds.interval(net, x, x)
    with torch.no_grad():
        assert torch.allclose(lo, net(x), atol=1e-6) and torch.allclose(hi, net(x), atol=1e-6)
    lo, hi = bounds.symbolic(net, x, x)
    with torch.no_grad():
        assert torch.allclose(lo, net(x), atol=1e-6)
    net[2] = nn.Sigmoid()
    with pytest.raises(bounds.UnsupportedOperation, match="Sigmoid"):
        bounds.interval(net, x, x)


def test_a_reused_plan_follows_weights_statistics_and_settings():
    """Without autograd the plan of an unchanged network is reused; an in-place weight update, new BatchNorm
    running statistics, a changed layer setting or a new weight tensor each make a new plan, so that no bound is
    computed on a stale copy. Under autograd every call builds its own plan."""
    from robustlib.bounds.plans import prepare
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 6 * 6, 4)).eval()
    x = torch.rand(2, 1, 6, 6)

    def check():   # bounds of the point box are the network's output, up to float rounding
        with torch.no_grad():
            for method in (bounds.interval, bounds.symbolic):
                lo, hi = method(net, x, x)
                assert torch.allclose(lo, net(x), atol=1e-5) and torch.allclose(hi, net(x), atol=1e-5)

    with torch.no_grad():
        first = prepare(net, x)
        assert prepare(net, x) is first                    # reused
        assert prepare(net, x[:1]) is first                # the batch size is not part of the plan
    assert prepare(net, x) is not first                    # autograd: a plan of its own
    check()
    with torch.no_grad():
        net[0].weight.mul_(-2.0)                           # an optimizer step
    check()
    net[1].train()
    net(torch.rand(8, 1, 6, 6))                            # running statistics move
    net[1].eval()
    check()
    net[1].eps = 0.5                                       # a setting that keeps every shape
    check()
    net[0].padding = (2, 2)                                # a setting: the output grid grows to 8 × 8
    net[4] = nn.Linear(3 * 8 * 8, 4)
    check()
    net[4].weight = nn.Parameter(torch.randn(4, 3 * 8 * 8))   # a new tensor in place of the old
    check()


# ----------------------------------------------------------------------------- low

def test_architecture_mismatch_leaves_model_untouched(digits, tmp_path):
    train, _ = digits
    ck = tmp_path / "c.pt"
    fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=True)
    state["run"]["model"] = None      # even when the settings do not say so, shapes are checked first
    torch.save(state, ck)
    other = rl.models.build("mnist_small")
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(ValueError, match="model"):
        fit(other, train.head(64), Standard(), epochs=1, checkpoint=ck, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


def test_nan_loss_restores_the_last_good_state(digits):
    train, _ = digits
    model = rl.models.build("small_cnn")
    fit(model, train.head(128), Standard(), epochs=1, batch_size=64, progress=False)
    good = [p.clone() for p in model.parameters()]

    def exploding(m, x, y):
        return F.cross_entropy(m(x), y, reduction="none") * float("nan")

    with pytest.raises(FloatingPointError, match="restored"):
        fit(model, train.head(128), exploding, epochs=1, batch_size=64, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(good, model.parameters()))


def test_interval_attack_checks_inputs_even_when_all_points_are_wrong(small):
    model, _, test = small
    x, y = test.x(torch.arange(8)), test.labels[:8]
    wrong = (rl.evaluate.predict(model, x) + 1) % 10      # every point already misclassified
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rl.attacks.interval_attack(model, x * 3, wrong, 0.1)
    with pytest.raises(ValueError, match="out of range"):
        rl.attacks.interval_attack(model, x, wrong + 20, 0.1)


def test_attack_input_mistakes_get_clear_messages(small):
    model, _, test = small
    x, y = test.x(torch.arange(4)), test.labels[:4]

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, t):
            return self.net(t), t

    with pytest.raises(ValueError, match="logits tensor"):
        rl.attacks.pgd(Pair(), x, y, 0.1, steps=2)
    with pytest.raises(ValueError, match="float64"):
        rl.attacks.pgd(model, x.double(), y, 0.1, steps=2)
    with pytest.raises(ValueError, match="unsqueeze"):
        rl.attacks.pgd(model, x[0], y[:1], 0.1, steps=2)        # one image without its batch dimension
    with pytest.raises(ValueError, match="per-sample"):
        rl.attacks.pgd(model, x, y, torch.full((4,), 0.1), steps=2)
    with pytest.raises(ValueError, match="per-sample"):
        PGDAT(torch.full((4,), 0.1))


def test_api_misuse_gets_clear_messages(small, digits, monkeypatch):
    model, train, test = small
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.robustness(model, test, eps=0.1, batch_size=0)
    rec = evaluate.robustness(model, test, eps=0.1, attacks="pgd-2", progress=False)   # one name as a string
    assert "pgd-2_acc" in rec
    with pytest.raises(ValueError, match="epochs must be an integer"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=2.5)
    with pytest.raises(ValueError, match="momentum"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, momentum=float("nan"))
    with pytest.raises(ValueError, match="dataset name"):
        rl.data.load(None)
    with pytest.raises(ValueError, match="n_train"):
        rl.data.load("digits", n_train=-5)
    with pytest.raises(ValueError, match="3-tuple"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, progress=False,
            selector=lambda e, m, d: (torch.arange(10), None, None))
    with pytest.raises(ValueError, match="list"):
        fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, progress=False,
            selector=lambda e, m, d: [torch.arange(10), torch.ones(10)])
    h = fit(rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, progress=False,
            selector=lambda e, m, d: list(range(20)))
    assert h[-1]["examples"] == 20
    monkeypatch.setenv("ROBUSTLIB_DATA", "")
    assert rl.data.cache_dir() != rl.data.Path("") and rl.data.cache_dir().is_absolute()


def test_plain_function_objective(digits):
    train, _ = digits
    model = rl.models.build("small_cnn")
    h = fit(model, train.head(128), lambda m, x, y: F.cross_entropy(m(x), y, reduction="none"), epochs=2,
            batch_size=64, progress=False)
    assert len(h) == 2 and h[-1]["loss"] < h[0]["loss"] * 1.5
    with pytest.raises(ValueError, match="one loss per example"):
        fit(rl.models.build("small_cnn"), train.head(64), lambda m, x, y: F.cross_entropy(m(x), y), epochs=1,
            progress=False)
    with pytest.raises(ValueError, match="objective must be"):
        fit(rl.models.build("small_cnn"), train.head(64), "pgd", epochs=1, progress=False)
