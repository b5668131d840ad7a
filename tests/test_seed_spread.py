"""Runs repeated with several seeds, read together (pruning_study.seed_spread): means and spreads against numpy, the
gap's interval against scipy's Welch t-test, and the verdict of the claim rule against the seeds' noise."""
import numpy as np
import pytest
from scipy import stats

from robustlib import pruning_study as study


def _runs(method, accs, train_s, fraction=None, bt=False, objective="pgd-at", dataset="d", clean=0.9):
    fraction = 1.0 if method == "full" else (fraction or 0.3)
    return [dict(dataset=dataset, objective=objective, method=method, bt=bt, fraction=fraction, seed=s,
                 clean_acc=clean - 0.01 * s, pgd_acc=a, train_s=t, run=f"{method}-{s}")
            for s, (a, t) in enumerate(zip(accs, train_s))]


def test_means_spreads_and_speedup_of_each_group_against_numpy():
    full = _runs("full", [0.70, 0.72, 0.71], [100.0, 104.0, 96.0])
    gm = _runs("gradmatch", [0.60, 0.63, 0.59], [30.0, 34.0, 35.0])
    out = {g["method"]: g for g in study.seed_spread(full + gm)}
    assert set(out) == {"full", "gradmatch"}
    for method, runs in (("full", full), ("gradmatch", gm)):
        g, accs = out[method], np.array([r["pgd_acc"] for r in runs])
        assert g["n"] == 3 and g["seeds"] == [0, 1, 2]
        assert g["acc_mean"] == pytest.approx(accs.mean()) and g["acc_sd"] == pytest.approx(accs.std(ddof=1))
        assert (g["acc_min"], g["acc_max"]) == (accs.min(), accs.max())
        assert g["clean_mean"] == pytest.approx(np.mean([r["clean_acc"] for r in runs]))
        assert g["train_s_sd"] == pytest.approx(np.std([r["train_s"] for r in runs], ddof=1))
    assert out["full"]["speedup"] == 1.0
    assert out["gradmatch"]["speedup"] == pytest.approx(100.0 / 33.0)
    assert "gap" not in out["full"]


def test_the_gap_interval_is_welchs_t_interval():
    full = _runs("full", [0.70, 0.72, 0.71, 0.74], [1.0] * 4)
    gm = _runs("gradmatch", [0.60, 0.66, 0.59], [1.0] * 3)
    g = [g for g in study.seed_spread(full + gm, confidence=0.9) if g["method"] == "gradmatch"][0]
    ref = stats.ttest_ind([0.60, 0.66, 0.59], [0.70, 0.72, 0.71, 0.74], equal_var=False)
    low, high = ref.confidence_interval(confidence_level=0.9)
    assert g["gap"] == pytest.approx(np.mean([0.60, 0.66, 0.59]) - np.mean([0.70, 0.72, 0.71, 0.74]))
    assert (g["gap_low"], g["gap_high"]) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("pruned, rule, decided", [
    ([0.60, 0.61, 0.62], False, True),      # ten points below, seeds agree: the rule fails, and clearly
    ([0.73, 0.731, 0.732], True, True),     # two points above full data: the rule holds, and clearly
    ([0.66, 0.72, 0.69], False, False),     # 2 points below on the mean, spread wide: within the seeds' noise
])
def test_the_claim_rule_on_the_means_and_whether_the_seeds_decide_it(pruned, rule, decided):
    rows = _runs("full", [0.70, 0.72, 0.71], [1.0] * 3) + _runs("random", pruned, [1.0] * 3)
    g = study.seed_spread(rows, tolerance=0.015)[1]
    assert g["rule"] is rule and g["decided"] is decided
    assert g["gap_low"] <= g["gap"] <= g["gap_high"]


def test_one_seed_gives_no_spread_and_no_verdict_and_groups_stay_apart():
    rows = (_runs("full", [0.70, 0.72], [1.0, 1.0]) + _runs("gradmatch", [0.65], [0.5], fraction=0.2)
            + _runs("gradmatch", [0.66, 0.67], [0.7, 0.7], fraction=0.4)
            + _runs("gradmatch", [0.64, 0.63], [0.4, 0.4], fraction=0.4, bt=True))
    out = study.seed_spread(rows)
    assert [(g["method"], g["fraction"], g["bt"], g["n"]) for g in out] == [
        ("full", 1.0, False, 2), ("gradmatch", 0.2, False, 1), ("gradmatch", 0.4, False, 2),
        ("gradmatch", 0.4, True, 2)]
    single = out[1]
    assert single["acc_sd"] is None and single["gap_low"] is None and single["decided"] is None
    assert single["rule"] is False and single["gap"] == pytest.approx(0.65 - 0.71)
    assert out[3]["speedup"] == pytest.approx(1.0 / 0.4)   # Bullet-Train runs are compared with full data too


def test_identical_seeds_give_a_zero_width_interval():
    rows = _runs("full", [0.70, 0.70], [1.0, 1.0]) + _runs("random", [0.68, 0.68], [0.5, 0.5])
    g = study.seed_spread(rows, tolerance=0.015)[1]
    assert g["gap_low"] == g["gap_high"] == pytest.approx(-0.02) and g["decided"] is True and g["rule"] is False


@pytest.mark.parametrize("rows, message", [
    (_runs("gradmatch", [0.6, 0.7], [1.0, 1.0]), "no full-data runs for d / pgd-at"),
    (_runs("full", [0.7], [1.0]) * 2, "two runs of .* with seed 0"),
    ([{k: v for k, v in r.items() if k != "seed"} for r in _runs("full", [0.7], [1.0])], "lacks \\['seed'\\]"),
])
def test_bad_input_says_what_is_wrong(rows, message):
    with pytest.raises(ValueError, match=message):
        study.seed_spread(rows)


def test_confidence_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="confidence must lie in"):
        study.seed_spread(_runs("full", [0.7, 0.71], [1.0, 1.0]), confidence=95)


def test_the_seed_figure_draws_a_dot_per_run_and_the_full_data_lines():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from robustlib import plot
    rows = (_runs("full", [0.70, 0.72, 0.71], [1.0] * 3) + _runs("gradmatch", [0.6, 0.62, 0.61], [0.4] * 3)
            + _runs("random", [0.64, 0.65], [0.4] * 2))
    fig = plot.seed_strip(pd.DataFrame(rows), reference="full", tolerance=0.02, caption="caption line")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "gradmatch", "random"]   # order of appearance
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(rows)
    vertical = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]
                      and line.get_ydata()[0] != line.get_ydata()[1] and line.get_linestyle() in (":", "-")
                      and line.get_color() == "k")
    assert vertical == [pytest.approx(0.69), pytest.approx(0.71)]
    assert any(t.get_text() == "caption line" for t in fig.texts)
    plt.close("all")


def test_generic_spread_and_gap_read_any_grouping():
    """robustlib.seeds on its own: groups by any keys, names its columns by alias, compares against zero."""
    from robustlib import seeds
    rows = [dict(variant=v, seed=s, vra=a, t=1.0 + s) for v, accs in (("k=5", [0.50, 0.52, 0.51]),
                                                                     ("k=1", [0.40, 0.46, 0.43]),
                                                                     ("k=10", [0.51, 0.49, 0.53]))
            for s, a in enumerate(accs)]
    out = {g["variant"]: g for g in seeds.spread(rows, ("variant",), {"vra": "vra", "time": "t"})}
    assert out["k=1"]["vra_mean"] == pytest.approx(0.43) and out["k=1"]["vra_sd"] == pytest.approx(0.03)
    assert out["k=5"]["time_mean"] == pytest.approx(2.0) and out["k=5"]["seeds"] == [0, 1, 2]
    worse, same = seeds.gap(out["k=1"], out["k=5"], "vra"), seeds.gap(out["k=10"], out["k=5"], "vra")
    assert worse["rule"] is False and worse["decided"] is True and worse["gap_high"] < 0   # the seeds agree
    assert same["decided"] is False and same["gap_low"] < 0 < same["gap_high"]             # within their noise
    compared = {g["variant"]: g for g in seeds.against(list(out.values()), out["k=5"], "vra", time="time")}
    assert "gap" not in compared["k=5"] and compared["k=1"]["gap"] == worse["gap"]
    assert compared["k=10"]["speedup"] == pytest.approx(1.0)   # the same times per seed
    with pytest.raises(ValueError, match=r"e.g. 0.95; got 95"):
        seeds.gap(out["k=1"], out["k=5"], "vra", confidence=95)


def test_numpy_scalars_group_with_python_values():
    """Rows built from numpy arrays (a frame's ``.values``, ``itertuples``) group and report as Python values."""
    import numpy as np

    from robustlib import seeds
    bt = np.array([False, False, True])
    rows = [dict(method="full", bt=b, seed=s, acc=a) for b, s, a in zip(bt, [0, 1, 0], [0.7, 0.72, 0.69])]
    assert type(rows[0]["bt"]) is np.bool_
    out = seeds.spread(rows, ("method", "bt"), {"acc": "acc"})
    assert [(g["bt"], g["n"]) for g in out] == [(False, 2), (True, 1)]
    assert all(type(g["bt"]) is bool for g in out)   # JSON-ready in a results record
