"""Perturbation memories: training writes exactly what its attack found for exactly the examples it attacked, and
a selection reads them instead of attacking afresh."""
import copy

import pytest
import torch
import torch.nn.functional as F

import robustlib as rl
from robustlib import pruning_study as study
from robustlib.memory import PerturbationMemory
from robustlib.objectives.bullet_train import OUTLIER
from robustlib.pruning import DynamicSelector, last_layer_grads

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    train, _ = rl.data.load("digits", n_train=300, n_test=10)
    torch.manual_seed(0)
    model = rl.models.build("small_cnn", like=train)
    rl.train.fit(model, train, rl.objectives.PGDAT(eps=0.1, steps=2), epochs=2, batch_size=64, lr=0.05,
                 progress=False)
    return train, model


def _direct_grads(model, x, y):
    """(p − e_y) ⊗ [h, 1] from the network's layers, without robustlib's hook."""
    with torch.no_grad():
        model.eval()
        h = model[:-1](x).flatten(1)
        err = model[-1](h).softmax(1) - F.one_hot(y, 10).float()
        model.train()
    return (err[:, :, None] * torch.cat([h, torch.ones_like(h[:, :1])], 1)[:, None, :]).flatten(1)


def test_loader_names_the_examples_of_each_batch(setup):
    train, _ = setup
    loader = rl.data.Loader(train, 64, seed=3, indices=torch.arange(0, 300, 2))
    for x, y, _ in loader:
        assert torch.equal(x, train.x(loader.batch_indices)) and torch.equal(y, train.labels[loader.batch_indices])


def test_objective_writes_what_its_attack_found_for_the_batch(setup):
    train, model = setup
    obj = rl.objectives.PGDAT(eps=0.1, steps=3)
    memory = PerturbationMemory.attach(obj, train)
    idx = torch.tensor([5, 17, 40, 41, 299])
    x, y = train.x(idx), train.labels[idx]
    obj(model, x, y)                     # outside fit: no indices, nothing written
    assert not memory.known.any()
    obj.batch_indices = idx
    torch.manual_seed(7)
    obj(model, x, y)
    torch.manual_seed(7)
    x_adv = obj.attack(model, x, y)
    assert memory.known.nonzero().squeeze(1).tolist() == idx.tolist()
    torch.testing.assert_close(memory.delta[idx].float(), x_adv - x, atol=1e-3, rtol=0)   # float16 storage
    torch.testing.assert_close(memory.apply(idx, x), x_adv, atol=1e-3, rtol=0)
    rows = torch.tensor([True, False, True, False, False])   # a masked write leaves the other rows as they were
    before = memory.delta[idx].clone()
    memory.write(idx, x, x, rows)
    assert (memory.delta[idx[rows]] == 0).all() and torch.equal(memory.delta[idx[~rows]], before[~rows])


def test_fit_remembers_only_the_examples_it_trained_on(setup):
    train, model = setup
    obj = rl.objectives.PGDAT(eps=0.1, steps=2)
    memory = PerturbationMemory.attach(obj, train)
    sel = DynamicSelector("random", 0.3, R=5)
    rl.train.fit(copy.deepcopy(model), train, obj, epochs=1, batch_size=64, lr=0.01, selector=sel, progress=False)
    assert torch.equal(memory.known.nonzero().squeeze(1), sel.indices)
    delta = memory.delta[sel.indices].float()
    assert delta.abs().max() <= 0.1 + 1e-3 and (delta.flatten(1).abs().amax(1) > 0.05).float().mean() > 0.9
    assert obj.batch_indices is None     # reset after the epoch


def test_bullet_train_remembers_only_the_examples_it_attacked(setup):
    train, model = setup
    bt = rl.objectives.BulletTrain(rl.objectives.PGDAT(eps=0.1, steps=2), robust_margin=float("inf"))
    memory = PerturbationMemory.attach(bt, train)
    assert bt.base.memory is memory
    bt.batch_indices = torch.arange(100)
    x, y = train.x(slice(0, 100)), train.labels[:100]
    bt(model, x, y)
    outliers = bt.groups(model, x, y) == OUTLIER
    assert 0 < int(outliers.sum()) < 100
    assert torch.equal(memory.known[:100], ~outliers) and not memory.known[100:].any()


@pytest.mark.usefixtures("fp32_default")
def test_selection_gradients_are_taken_at_the_remembered_perturbations(setup):
    train, model = setup
    data = train.head(80)
    memory = PerturbationMemory.like(data)
    known = torch.arange(0, 80, 2)
    x = data.x(known)
    x_adv = (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)
    memory.write(known, x, x_adv)
    G = last_layer_grads(model, data, memory=memory)      # unknown rows: clean, no attack given
    x_all = data.x()
    x_all[known] = memory.apply(known, x)
    torch.testing.assert_close(G, _direct_grads(model, x_all, data.labels), atol=1e-5, rtol=1e-4)
    # with an attack, the unknown rows are attacked (and learnt); the known ones keep their δ
    attack = {"eps": 0.1, "steps": 2}
    unknown = torch.arange(1, 80, 2)
    torch.manual_seed(3)
    G = last_layer_grads(model, data, adversarial=attack, memory=memory, batch_size=80)
    torch.manual_seed(3)
    x_all[unknown] = rl.attacks.pgd(model, data.x(unknown), data.labels[unknown], **attack)
    torch.testing.assert_close(G, _direct_grads(model, x_all, data.labels), atol=1e-5, rtol=1e-4)
    assert memory.known.all()


def test_selector_with_a_memory_attacks_only_the_unknown_examples_and_keys_its_runs_apart(setup):
    train, model = setup
    attack = {"eps": 0.1, "steps": 2}
    memory = PerturbationMemory.like(train)
    memory.write(torch.arange(200), train.x(slice(0, 200)), train.x(slice(0, 200)))
    sel = DynamicSelector("gradmatch", 0.3, R=2, adversarial=attack, memory=memory)
    idx, w = sel(0, model, train)
    assert sel.last_fresh == 100 and memory.known.all() and len(idx) == 90 and abs(float(w.mean()) - 1) < 1e-5
    sel(2, model, train)
    assert sel.last_fresh == 0
    plain = DynamicSelector("gradmatch", 0.3, R=2, adversarial=attack)
    assert "memory" not in plain.config() and sel.config() == {**plain.config(), "memory": True}
    state = sel.state_dict()
    fresh = DynamicSelector("gradmatch", 0.3, R=2, adversarial=attack, memory=memory)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "last_fresh"})   # an older checkpoint
    assert torch.equal(fresh.indices, sel.indices) and fresh.last_fresh == 0


def test_pgd_from_a_given_start_continues_from_its_projection(setup):
    train, model = setup
    x, y = train.x(slice(0, 40)), train.labels[:40]
    far = (x + 0.5 * torch.randn_like(x)).clamp(0, 1)            # outside the ε-ball: projected first
    x0 = (x + (far - x).clamp(-0.1, 0.1)).clamp(0, 1)
    torch.testing.assert_close(rl.attacks.pgd(model, x, y, 0.1, steps=0, start=far), x0)
    # K steps from x'_0 = K − j steps from where j steps from x'_0 stopped (no random start in between)
    two = rl.attacks.pgd(model, x, y, 0.1, alpha=0.02, steps=2, start=far, restarts=3)
    one = rl.attacks.pgd(model, x, y, 0.1, alpha=0.02, steps=1, start=far)
    torch.testing.assert_close(rl.attacks.pgd(model, x, y, 0.1, alpha=0.02, steps=1, start=one), two)
    assert (two - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(two, x0)
    with pytest.raises(ValueError, match="start must be a tensor"):
        rl.attacks.pgd(model, x, y, 0.1, start=x[:3])


@pytest.mark.usefixtures("fp32_default")
def test_refresh_moves_remembered_perturbations_on_and_attacks_the_unknown_in_full(setup):
    train, model = setup
    data = train.head(60)
    memory = PerturbationMemory.like(data)
    known = torch.arange(0, 60, 3)
    x = data.x(known)
    memory.write(known, x, (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1))
    start = memory.apply(known, x)
    attack = {"eps": 0.1, "steps": 4}                            # α = 2.5·ε/4: the refresh step takes it
    unknown = torch.tensor([i for i in range(60) if i % 3])
    torch.manual_seed(5)
    G = last_layer_grads(model, data, adversarial=attack, memory=memory, refresh=1, batch_size=60)
    x_all = data.x()
    x_all[known] = rl.attacks.pgd(model, x, data.labels[known], 0.1, alpha=2.5 * 0.1 / 4, steps=1, start=start)
    torch.manual_seed(5)
    x_all[unknown] = rl.attacks.pgd(model, data.x(unknown), data.labels[unknown], **attack)
    torch.testing.assert_close(G, _direct_grads(model, x_all, data.labels), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(memory.apply(torch.arange(60), data.x()), x_all, atol=1e-3, rtol=0)   # remembered
    with pytest.raises(ValueError, match="needs memory= and adversarial="):
        last_layer_grads(model, data, memory=memory, refresh=1)


def test_glister_remembers_its_validation_split_and_moves_it_one_step_per_selection(setup, monkeypatch):
    train, model = setup
    part, valid = train.head(200), train.subset(torch.arange(200, 300))
    attack = {"eps": 0.1, "steps": 3}
    obj = rl.objectives.PGDAT(**attack)
    sel = DynamicSelector("glister", 0.3, R=1, adversarial=attack, valid=valid,
                          memory=PerturbationMemory.attach(obj, part))
    plain = DynamicSelector("glister", 0.3, R=1, adversarial=attack, valid=valid)
    assert sel.config() == {**plain.config(), "memory": True, "valid_refresh": 1}
    steps = []
    real = rl.scores.pgd
    monkeypatch.setattr(rl.scores, "pgd", lambda *a, **kw: steps.append((len(a[1]), kw["steps"])) or real(*a, **kw))
    sel(0, model, part)                       # nothing known yet: the training part and the split attacked in full
    assert sorted(set(steps)) == [(100, 3), (200, 3)] and bool(sel.valid_memory.known.all())
    steps.clear()
    before = sel.valid_memory.delta.clone()
    sel(1, model, part)                       # everything known: one step for the split, none for the training part
    assert steps == [(100, 1)] and not torch.equal(before, sel.valid_memory.delta)


def test_remembered_gradients_are_closer_to_fresh_adversarial_ones_than_clean_gradients(setup):
    """The measurable effect: after an epoch of PGD-AT, the summed gradient at the remembered x' (GRAD-MATCH's target)
    points where a fresh PGD-10 attack's does, far better than the clean one (measured: 1 − cos 4e-4 against 0.09)."""
    train, model = setup
    model = copy.deepcopy(model)
    obj = rl.objectives.PGDAT(eps=0.1, steps=5)
    memory = PerturbationMemory.attach(obj, train)
    rl.train.fit(model, train, obj, epochs=1, batch_size=64, lr=0.01, progress=False)
    torch.manual_seed(0)
    fresh = last_layer_grads(model, train, adversarial={"eps": 0.1, "steps": 10})
    miss = lambda G: 1 - F.cosine_similarity(G.sum(0), fresh.sum(0), dim=0)   # noqa: E731
    assert miss(last_layer_grads(model, train, memory=memory)) < 0.1 * miss(last_layer_grads(model, train))


def test_study_memory_methods_attach_a_memory_and_never_stand_for_a_claim(setup):
    train, _ = setup
    obj = rl.objectives.BulletTrain(rl.objectives.PGDAT(eps=0.1, steps=2))
    sel = study.selector("gradmatch-memory", 0.3, 6, R=2, attack={"eps": 0.1, "steps": 2}, objective=obj, train=train)
    assert sel.memory is obj.memory and sel.method == "gradmatch" and sel.config()["memory"] is True
    assert study.selector("gradmatch", 0.3, 6, R=2, objective=obj, train=train).memory is None
    with pytest.raises(ValueError, match="pass objective="):
        study.selector("glister-memory", 0.3, 6, valid=train.head(10))
    row = dict(dataset="d", objective="pgd-at", bt=False, fraction=0.3, pgd_acc=0.5)
    rows = [{**row, "method": "full", "fraction": 1.0, "speedup": 1.0},
            {**row, "method": "gradmatch-memory", "speedup": 2.5}, {**row, "method": "gradmatch", "speedup": 2.0}]
    claims = study.headline(rows, ["d"], "net")
    assert [(c["method"], c["measured"]) for c in claims if c["claim"].startswith("p1-speedup")] == \
        [("gradmatch", 2.0), ("gradmatch", 2.0)]


@pytest.mark.parametrize("make, error, message", [
    (lambda d: PerturbationMemory(0, (1, 8, 8)), ValueError, "n ≥ 1"),
    (lambda d: PerturbationMemory.attach(object(), d), TypeError, "does not write the perturbations"),
    (lambda d: PerturbationMemory.attach(rl.objectives.FastAT(eps=0.1), d), TypeError, "attach a memory to PGDAT"),
    (lambda d: PerturbationMemory.attach(rl.objectives.Standard(), d), TypeError, "does not write"),
    (lambda d: DynamicSelector("gradmatch", 0.5, memory="yes"), TypeError, "PerturbationMemory"),
    (lambda d: last_layer_grads(rl.models.build("small_cnn", like=d), d, memory=PerturbationMemory(5, d.shape)),
     ValueError, "the memory holds 5 examples"),
    (lambda d: PerturbationMemory.like(d).write(torch.arange(2), d.x(slice(0, 3)), d.x(slice(0, 3))), ValueError,
     "one index per row"),
])
def test_bad_input_says_what_to_do(setup, make, error, message):
    train, _ = setup
    with pytest.raises(error, match=message):
        make(train)
