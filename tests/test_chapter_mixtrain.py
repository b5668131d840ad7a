"""The MixTrain chapter at the smoke preset: every method, ablation, attack and claim row is there and consistent."""
from __future__ import annotations

import pytest
from conftest import chapter_record


def test_mixtrain_chapter(smoke_book):
    rec = chapter_record(smoke_book, "mixtrain")
    cfg, rows = rec["config"], rec["rows"]
    settings = cfg["settings"]
    assert len(settings) == 2 and settings[1]["model"] == "mnist_large"   # both of the paper's MNIST networks
    by_setting = {}
    for r in rows:
        if r["section"] == "methods":
            by_setting.setdefault(r["setting"], {})[r["method"]] = r
    assert len(by_setting) == 2
    first, large = (by_setting[label] for label in sorted(by_setting, key=lambda s: "mnist_large" in s))
    for methods in (first, large):
        assert set(methods) == {"standard", "pgd-at", "ibp", "symbolic", "mixtrain"}
        for r in methods.values():
            assert 0 <= r["symbolic_vra"] <= r["clean_acc"] <= 1 and r["ibp_vra"] <= r["clean_acc"]
            assert r["train_s"] > 0 and r["s_per_example"] > 0
        # stochastic robust approximation: k symbolic bounds per batch, every example for full symbolic training
        batches = methods["mixtrain"]["n_train"] // cfg["batch_size"]
        assert methods["mixtrain"]["symbolic_per_epoch"] == cfg["k"] * batches
        n_sym = methods["symbolic"]["n_train"]       # whole batches only (drop_last)
        assert methods["symbolic"]["symbolic_per_epoch"] == n_sym // cfg["batch_size"] * cfg["batch_size"]
        assert methods["standard"]["symbolic_per_epoch"] == 0 and methods["pgd-at"]["passes_per_example"] == 22
    assert first["symbolic"]["n_train"] == cfg["n_symbolic"]
    assert large["symbolic"]["n_train"] == settings[1]["n_symbolic"] and {r["network"] for r in large.values()} == \
        {"mnist_large"} and {r["epochs"] for r in large.values()} == {settings[1]["epochs"]}
    ks = sorted(r["k"] for r in rows if r["section"] == "k")
    assert ks == [1, 5, 10, cfg["batch_size"]]
    assert {r["rule"] for r in rows if r["section"] == "rule"} == {"fixed", "adaptive", "schedule"}
    assert {r["sampling"] for r in rows if r["section"] == "sampling"} == {"uniform", "worst-ibp", "ibp-weighted"}
    for r in (r for r in rows if r["section"] == "attack"):
        assert r["only_interval"] <= r["interval_broken"] and r["only_pgd"] <= r["pgd_broken"]
        assert r["interval_broken"] + r["verified"] <= r["clean_correct"] <= r["n"]
    claim_rows = [r for r in rows if r["section"] == "claim"]
    claims = {r["claim"]: r for r in claim_rows}    # the last row of each claim: the first setting's
    assert set(claims) == {"p2-vra", "p2-vs-verifiable", "p2-vs-at", "p2-interval-attack"}
    assert sorted(r["network"] for r in claim_rows if r["claim"] == "p2-vra") == ["mnist_large", "mnist_small"]
    assert claims["p2-vra"]["measured"] == first["mixtrain"]["symbolic_vra"]
    assert claims["p2-vra"]["network"] == "mnist_small"
    # the claim compares full symbolic training with MixTrain on the same examples (the same steps from the same
    # weights): a MixTrain run of its own on each setting's symbolic subset, timed, and the claim is their ratio
    speed = {r["network"]: r for r in rows if r["section"] == "speed"}
    assert set(speed) == {"mnist_small", "mnist_large"}
    for methods in (first, large):
        same = speed[methods["symbolic"]["network"]]
        assert same["method"] == "mixtrain" and same["n_train"] == methods["symbolic"]["n_train"]
        claim = next(r for r in claim_rows if r["claim"] == "p2-vs-verifiable" and r["network"] == same["network"])
        assert claim["measured"] == pytest.approx(methods["symbolic"]["s_per_example"] / same["s_per_example"])
        assert "the same steps" in claim["baseline"]
    for r in (r for r in claim_rows if r["claim"] == "p2-vs-verifiable"):
        assert r["measured"] > 1      # sampling k of the batch saves symbolic work, on both networks
    # the identical ablation settings share one keyed run (k = 5, fixed rule, uniform sampling)
    names = [r["name"] for r in rec["runs"]]
    assert names.count(f"ablation-k{cfg['k']}-fixed-uniform") == 3
    assert sum(r["reused_epochs"] > 0 for r in rec["runs"]) >= 2


def test_mixtrain_chapter_prunes_certified_training(smoke_book):
    """Beyond the paper: MixTrain on a re-selected subset against full data and a random subset of the same size."""
    rec = chapter_record(smoke_book, "mixtrain")
    cfg = rec["config"]
    rows = {r["method"]: r for r in rec["rows"] if r["section"] == "outlook"}
    assert set(rows) == {"full data", "random", "gradmatch"}
    assert {r["idea"] for r in rows.values()} == {"pruned-certified"}     # what the outlook page collects
    full = rows["full data"]
    assert full["fraction"] == 1.0 and full["speedup"] == 1.0 and full["select_s"] == 0
    batches = full["n_train"] // cfg["batch_size"]
    assert full["symbolic_bounds"] == cfg["k"] * batches * full["epochs"]     # k bounds per batch, every epoch
    for method in ("random", "gradmatch"):
        r = rows[method]
        assert r["fraction"] < 1 and r["epochs"] == full["epochs"]
        # after the full-data warm-up each epoch trains on about f·n examples: less work, counted, not timed
        assert r["symbolic_bounds"] < full["symbolic_bounds"] and r["passes"] < full["passes"]
        assert 0 <= r["symbolic_vra"] <= r["clean_acc"] <= 1
    assert rows["gradmatch"]["select_s"] > 0      # the selection is paid, and counted in the run's time


def test_mixtrain_ablations_repeat_with_other_seeds(smoke_book):
    """The ablations again with other seeds, read against MixTrain as the paper runs it (robustlib.seeds)."""
    from robustlib import seeds
    rec = chapter_record(smoke_book, "mixtrain")
    cfg, rows = rec["config"], rec["rows"]
    repeats = [r for r in rows if r["section"] == "seeds"]
    assert cfg["repeat_seeds"] and {r["seed"] for r in repeats} == set(cfg["repeat_seeds"])
    if "sampling" in cfg["repeat_sections"]:
        assert {r["sampling"] for r in repeats} >= {"uniform", "worst-ibp", "ibp-weighted"}
    names = {r["name"] for r in rec["runs"]}
    for r in repeats:   # another seed trains another run under its own name
        assert f"ablation-k{r['k']}-{r['rule']}-{r['sampling']}-seed{r['seed']}" in names
        assert 0 <= r["symbolic_vra"] <= r["clean_acc"] <= 1 and r["epoch_s"] > 0
    assert cfg["repeat_sections"] == ["sampling", "pruning"]   # smoke: the seed-0 runs are these sections' own
    base = [dict(variant=f"k = {cfg['k']}, fixed, {r['sampling']}", seed=0, symbolic_vra=r["symbolic_vra"])
            for r in rows if r["section"] == "sampling"]
    groups = {g["variant"]: g for g in seeds.spread(base + repeats, ("variant",), {"vra": "symbolic_vra"})}
    spread = {r["variant"]: r for r in rows if r["section"] == "seed_spread"}
    reference = f"k = {cfg['k']}, fixed, uniform"
    assert reference in spread and "gap" not in spread[reference]
    for v, g in groups.items():   # the record holds what robustlib.seeds computes from the runs it lists
        assert spread[v]["n"] == 1 + len(cfg["repeat_seeds"]) and spread[v]["vra_mean"] == g["vra_mean"]
        if v != reference:
            assert spread[v]["gap"] == seeds.gap(g, groups[reference], "vra")["gap"]

    # the pruning section's three runs again, compared with full data on the means
    prune = [r for r in rows if r["section"] == "seeds_pruning"]
    assert {(r["method"], r["seed"]) for r in prune} == {(m, s) for m in ("full data", "random", "gradmatch")
                                                          for s in cfg["repeat_seeds"]}
    for s in cfg["repeat_seeds"]:   # each its own keyed run, the selector's seed in the name's tail
        for tag in ("full-reference", "random-f", "gradmatch-f"):
            assert any(n.startswith(f"ablation-k{cfg['k']}-fixed-uniform-{tag}") and n.endswith(f"-seed{s}")
                       for n in names), (tag, s)
    base = [dict(method=r["method"], seed=0, symbolic_vra=r["symbolic_vra"], train_s=r["train_s"])
            for r in rows if r["section"] == "outlook"]
    groups = {g["method"]: g for g in seeds.spread(base + prune, ("method",), {"vra": "symbolic_vra",
                                                                              "train_s": "train_s"})}
    recorded = {r["method"]: r for r in rows if r["section"] == "seed_spread_pruning"}
    assert set(recorded) == {"full data", "random", "gradmatch"} and "gap" not in recorded["full data"]
    for method in ("random", "gradmatch"):
        assert recorded[method]["speedup"] == groups["full data"]["train_s_mean"] / groups[method]["train_s_mean"]
        assert recorded[method]["gap"] == seeds.gap(groups[method], groups["full data"], "vra")["gap"]


def test_mixtrain_chapter_trains_pgd_at_and_mixtrain_again_on_a_longer_budget(smoke_book):
    """PGD-AT and MixTrain once more with long_budget (all the smoke data, more epochs): rows of their own, from the
    same initial weights and recipe, evaluated on the same test points as the short runs."""
    rec = chapter_record(smoke_book, "mixtrain")
    cfg = rec["config"]
    long = {r["method"]: r for r in rec["rows"] if r["section"] == "long"}
    short = {r["method"]: r for r in rec["rows"] if r["section"] == "methods" and r["network"] == cfg["model"]}
    assert set(long) == {"pgd-at", "mixtrain"}
    for name, r in long.items():
        assert r["epochs"] == cfg["long_budget"]["epochs"] > short[name]["epochs"]
        assert r["n_train"] > short[name]["n_train"]            # n_train None: every training image, no validation
        assert r["n_eval"] == short[name]["n_eval"] and 0 <= r["symbolic_vra"] <= r["clean_acc"] <= 1
        assert r["train_s"] > 0
    assert {f"long-{m}" for m in long} <= {r["name"] for r in rec["runs"]}
