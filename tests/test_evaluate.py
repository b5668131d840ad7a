import pytest
import torch

import robustlib as rl
from robustlib import evaluate


@pytest.fixture(scope="module")
def trained(digits):
    train, test = digits
    model = rl.models.build("small_cnn")
    rl.train.fit(model, train, rl.objectives.Standard(), epochs=4, batch_size=64, lr=0.1, schedule="onecycle")
    return model, test


def test_accuracy_matches_a_direct_count(trained):
    model, test = trained
    with torch.no_grad():
        direct = (model(test.x()).argmax(1) == test.labels).float().mean().item()
    assert evaluate.accuracy(model, test) == pytest.approx(direct)
    assert evaluate.accuracy(model, test, n=50) == pytest.approx(
        (model(test.x(torch.arange(50))).argmax(1) == test.labels[:50]).float().mean().item())


def test_robustness_record_with_registered_attack_and_certifier(trained, monkeypatch):
    model, test = trained
    monkeypatch.setitem(evaluate.ATTACKS, "identity", lambda m, x, y, eps: x)
    monkeypatch.setitem(evaluate.ATTACKS, "invert", lambda m, x, y, eps: 1 - x)
    monkeypatch.setitem(evaluate.CERTIFIERS, "nothing", lambda m, x, y, eps: torch.zeros(len(y), dtype=torch.bool))
    model.train()
    rec = evaluate.robustness(model, test, eps=0.1, attacks=("identity", "invert"), certify=("nothing",), n=200)
    assert model.training  # mode restored
    assert rec["n"] == 200 and rec["eps"] == 0.1
    assert rec["identity_acc"] == rec["clean_acc"] > 0.5
    assert rec["invert_acc"] <= rec["clean_acc"]
    assert rec["nothing_verified_acc"] == 0.0
    assert set(rec["seconds"]) == {"clean", "attack", "certify"}
    assert set(rec["seconds"]["attack"]) == {"identity", "invert"} and set(rec["seconds"]["certify"]) == {"nothing"}


def test_unknown_names_and_negative_eps(trained):
    model, test = trained
    with pytest.raises(ValueError, match="unknown attack 'zoo'"):
        evaluate.robustness(model, test, eps=0.1, attacks=("zoo",))
    with pytest.raises(ValueError, match="unknown certification method"):
        evaluate.robustness(model, test, eps=0.1, certify=("magic",))
    with pytest.raises(ValueError, match="eps"):
        evaluate.robustness(model, test, eps=-0.1)


def test_attack_family_names_resolve(monkeypatch):
    monkeypatch.setitem(evaluate.FAMILIES, "toy", lambda k: (lambda m, x, y, eps: x * k))
    assert evaluate.attack_fn("toy-3")(None, torch.ones(1), None, 0).item() == 3


def test_certifiers_skip_points_an_attack_refuted_inside_the_box(trained, monkeypatch):
    """Certifiers run only where they could still prove robustness: the verified accuracy is the same as with every
    correct point certified, on fewer points; a counterexample outside the certified box refutes nothing."""
    model, test = trained
    seen = []

    def spy(name):
        fn = evaluate.certifier_fn(name)
        return lambda m, x, y, eps: seen.append(len(y)) or fn(m, x, y, eps)

    cert = {"interval": spy("interval"), "symbolic": spy("symbolic")}
    kw = dict(eps=0.1, attacks=("pgd-10",), certify=cert, n=150, per_example=True, progress=False)
    fast = evaluate.robustness(model, test, **kw)
    checked, seen_fast = fast["certify_checked"], sum(seen)
    seen.clear()
    full = evaluate.robustness(model, test, skip_refuted=False, **kw)
    pe_fast, pe_full = fast["per_example"], full["per_example"]
    assert torch.equal(pe_fast["certify"]["symbolic"], pe_full["certify"]["symbolic"])
    assert torch.equal(pe_fast["certify"]["interval"], pe_full["certify"]["interval"])
    assert fast["symbolic_verified_acc"] == full["symbolic_verified_acc"]
    # every certifier saw the correct points that PGD did not break, and only those
    assert checked == int(pe_fast["attack"]["pgd-10"].sum()) and seen_fast == 2 * checked
    assert full["certify_checked"] == int(pe_full["clean"].sum()) > checked    # PGD breaks some points at ε = 0.1
    # an "attack" far outside the ε-box (a grey image) refutes nothing: certifiers see every correct point
    monkeypatch.setitem(evaluate.ATTACKS, "grey", lambda m, x, y, eps: torch.full_like(x, 0.5))
    grey = evaluate.robustness(model, test, eps=0.1, attacks=("grey",), certify=("interval",), n=150,
                               progress=False)
    assert grey["certify_checked"] == round(grey["clean_acc"] * grey["n"]) and grey["grey_acc"] < grey["clean_acc"]
