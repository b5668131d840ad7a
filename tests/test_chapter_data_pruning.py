"""The data-pruning chapter at the smoke preset: what its results record must hold."""
import pytest

from conftest import chapter_record
from robustlib.pruning import budget_of
from robustlib.pruning_study import METHODS

P1 = {f"{p}-{d}" for p in ("p1-speedup", "p1-bt-trades", "p1-bt-mart") for d in ("cifar10", "cifar100")}


@pytest.fixture(scope="module")
def record(smoke_book):
    return chapter_record(smoke_book, "data_pruning")


def _runs(rec):
    return [r for r in rec["rows"] if r["section"] == "run"]


def test_every_method_and_objective_ran(record):
    runs = _runs(record)
    assert {r["objective"] for r in runs} == {"pgd-at", "trades", "mart"}
    pgd = [r for r in runs if r["objective"] == "pgd-at"]
    assert {r["method"] for r in pgd if not r["bt"]} == set(METHODS)
    assert {r["method"] for r in pgd if r["bt"]} >= {"full", "gradmatch", "glister"}
    for objective in ("trades", "mart"):
        assert {(r["method"], r["bt"]) for r in runs if r["objective"] == objective} >= {
            ("full", False), ("full", True), ("gradmatch", False), ("gradmatch", True)}
    assert len({r["fraction"] for r in runs if r["method"] != "full"}) >= 2
    others = [r for r in record["rows"] if r["section"] in ("schedule", "seeds", "long")]
    assert len({r["run"] for r in runs}) == len(runs) == len(record["runs"]) - len(others)


def test_schedule_controls_match_the_pruned_and_the_full_example_budgets(record):
    from robustlib.pruning_study import matched_schedules
    cfg = record["config"]
    E, f = cfg["epochs"], cfg["schedule_fraction"] or cfg["fractions"][0]
    t_w = round(f * cfg["kappa"] * E)
    ctl = matched_schedules(E, t_w, f, cfg["R"])
    controls = {r["method"]: r for r in record["rows"] if r["section"] == "schedule"}
    assert set(controls) == {"full", *cfg["schedule_methods"]}
    budget = controls.pop("full")
    assert budget["epochs"] == ctl["budget_epochs"] and budget["examples"] == pytest.approx(ctl["budget_epochs"])
    for r in controls.values():   # as many examples as full data's E epochs (whole groups of examples add a little)
        assert r["epochs"] == ctl["update_epochs"] and r["R"] == ctl["update_R"] and r["fraction"] == f
        assert E - 0.5 <= r["examples"] <= E + f + 0.1, r
        assert r["select_s"] > 0 or r["method"] == "random"
    for r in [budget, *controls.values()]:
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] <= 1 and r["train_s"] > 0
        assert r["run"] in {run["name"] for run in record["runs"]}


def test_pruned_runs_train_on_the_kept_fraction_after_the_warm_up(record):
    cfg = record["config"]
    for r in _runs(record):
        seen, n = r["seen_per_epoch"], r["n_train"]
        assert len(seen) == cfg["epochs"]
        if r["method"] == "full":
            assert seen == [n] * cfg["epochs"]
            continue
        k = budget_of(r["fraction"], n)
        assert r["warmup"] == round(r["fraction"] * cfg["kappa"] * cfg["epochs"]) >= 1
        assert seen[:r["warmup"]] == [n] * r["warmup"]
        # k = round(f·n) examples per epoch after the warm-up; Adv-GRAD-MATCH per batch keeps whole groups
        group = cfg.get("gradmatch_group_size") or cfg["batch_size"]
        slack = group if r["method"].startswith("gradmatch") and cfg["gradmatch_variant"] == "per_batch" else 0
        assert all(abs(s - k) <= slack for s in seen[r["warmup"]:]), (r["run"], seen, k)
        assert abs(r["seen_after_warmup"] - r["fraction"] * n) <= slack + 1
        dynamic = r["method"].removesuffix("-memory") in ("random", "gradmatch", "glister", "glister-balanced",
                                                          "glister-exact")
        assert r["selections"] == (len(range(r["warmup"], cfg["epochs"], cfg["R"])) if dynamic else 1)


def test_training_time_includes_selection_and_pruning_is_faster(record):
    runs = _runs(record)
    for r in runs:
        walls, selects = r["wall_per_epoch"], r["select_per_epoch"]
        assert r["train_s"] == pytest.approx(sum(walls)) and r["select_s"] == pytest.approx(sum(selects))
        assert all(w >= s >= 0 for w, s in zip(walls, selects))
        if r["method"] != "full":   # selection happened, and was paid inside the epoch that made it
            assert r["select_s"] > 0 and max(selects[r["warmup"]:]) > 0
        assert r["ideal_speedup"] == pytest.approx(
            r["epochs"] / (r["warmup"] + (r["epochs"] - r["warmup"]) * r["fraction"]))
    full = {(r["dataset"], r["objective"]): r["train_s"] for r in runs if r["method"] == "full" and not r["bt"]}
    for r in runs:
        assert r["speedup"] == pytest.approx(full[r["dataset"], r["objective"]] / r["train_s"])
    # training on a fraction f of the data after the warm-up is faster: per fraction, the median pruned run
    # (a median, so that one run slowed by another process on a shared machine does not decide it)
    for f in {r["fraction"] for r in runs if r["method"] != "full"}:
        pruned = sorted(r["speedup"] for r in runs if r["fraction"] == f and not r["bt"])
        assert pruned[len(pruned) // 2] > 1.0, (f, pruned)


def test_accuracies_are_consistent(record):
    runs = _runs(record)
    for r in runs:
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] <= 1 and r["n_eval"] > 0
        if r["autoattack_acc"] is not None:
            assert 0 <= r["autoattack_acc"] <= r["pgd_acc_aa_subset"] + 1e-9 and r["n_autoattack"] > 0
    full = [r for r in runs if r["method"] == "full" and not r["bt"]]
    assert all(r["autoattack_acc"] is not None for r in full)
    pgd_at = [r for r in full if r["objective"] == "pgd-at"][0]
    assert pgd_at["clean_acc"] > 0.5   # trained, not a constant guess
    for r in runs:
        if r["bt"]:
            shares = r["bt_outlier"] + r["bt_robust"] + r["bt_boundary"]
            assert shares == pytest.approx(1.0) and r["bt_steps_saved"] >= 0
            assert r["bt_steps"] + r["bt_steps_saved"] == record["config"]["steps"] * sum(r["seen_per_epoch"])


def test_the_six_headline_claims_follow_the_stated_rule(record):
    claims = [r for r in record["rows"] if r["section"] == "claim"]
    assert {c["claim"] for c in claims} == P1 and len(claims) == 6   # p1-at-cost belongs to adversarial_training
    runs = {r["run"]: r for r in _runs(record)}
    tol = record["config"]["tolerance"]
    for c in claims:
        assert c["dataset"] == "digits" and c["network"] == record["config"]["model"]
        assert "measured on digits, not CIFAR" in c["note"]
        run = runs[c["run"]]
        assert c["measured"] == pytest.approx(run["speedup"] if run["method"] != "full" else 1.0)
        full = [r for r in runs.values() if r["objective"] == run["objective"] and r["method"] == "full"
                and not r["bt"]][0]
        assert run["pgd_acc"] >= full["pgd_acc"] - tol
        assert run["autoattack_acc"] is not None   # the runs behind the headline numbers face AutoAttack
        if c["claim"].startswith("p1-bt") and run["method"] != "full":
            assert run["bt"] and run["objective"] == c["claim"].split("-")[2]


def test_repeated_seeds_are_read_together_with_the_grid_run(record):
    from robustlib.pruning_study import seed_spread
    cfg = record["config"]
    f = cfg["schedule_fraction"] or cfg["fractions"][0]
    repeats = [r for r in record["rows"] if r["section"] == "seeds"]
    assert cfg["repeat_seeds"] and {(r["method"], r["seed"]) for r in repeats} == {
        (m, s) for m in ["full", *cfg["repeat_methods"]] for s in cfg["repeat_seeds"]}
    assert {r["run"] for r in repeats} <= {run["name"] for run in record["runs"]}
    grid = {(r["method"], r["fraction"]): r for r in _runs(record) if r["objective"] == "pgd-at" and not r["bt"]}
    for r in repeats:   # another seed trains another model: the same run settings, other weights and accuracies
        assert r["fraction"] == (1.0 if r["method"] == "full" else f) and r["seed"] != cfg["seed"]
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] <= 1 and r["train_s"] > 0
    first = [dict(grid[m, 1.0 if m == "full" else f], seed=cfg["seed"]) for m in ["full", *cfg["repeat_methods"]]]
    spread = {g["method"]: g for g in (r for r in record["rows"] if r["section"] == "seed_spread")}
    expected = {g["method"]: g for g in seed_spread(first + repeats, tolerance=cfg["tolerance"])}
    assert set(spread) == set(expected)
    for method, g in expected.items():   # the record holds what the library computes from the runs it lists
        assert spread[method]["n"] == 1 + len(cfg["repeat_seeds"])
        assert spread[method]["acc_mean"] == pytest.approx(g["acc_mean"])
        assert spread[method]["speedup"] == pytest.approx(g["speedup"])
        assert spread[method].get("decided") == g.get("decided")


def test_the_longer_schedule_trains_full_data_and_the_long_methods(record):
    cfg = record["config"]
    f, E, L = cfg["schedule_fraction"] or cfg["fractions"][0], cfg["epochs"], cfg["long_epochs"]
    assert L and L > E
    long = {r["method"]: r for r in record["rows"] if r["section"] == "long"}
    assert set(long) == {"full", *cfg["long_methods"]}
    assert long.pop("full")["examples"] == pytest.approx(L)
    R_long = max(1, round(cfg["R"] * L / E))
    for r in long.values():   # the same warm-up rule and selections at the same points of the longer training
        t_w = round(f * cfg["kappa"] * L)
        assert r["epochs"] == L and r["R"] == R_long and r["warmup"] == t_w and r["fraction"] == f
        group = cfg.get("gradmatch_group_size") or cfg["batch_size"]
        slack = group * (L - t_w) / _runs(record)[0]["n_train"] if r["method"] == "gradmatch" else 0.01
        assert abs(r["examples"] - (t_w + (L - t_w) * f)) <= slack + 0.01, r
        assert 0 <= r["pgd_acc"] <= r["clean_acc"] <= 1 and r["train_s"] > 0
        assert r["run"] in {run["name"] for run in record["runs"]}
