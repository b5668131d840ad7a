"""Runs repeated with several seeds, read together: how far a measurement moves from seed to seed, and whether the
seeds decide a comparison or leave it within their noise.

A chapter trains most of its runs once. Where a conclusion rests on a small difference — a pruned run 1.6 points
below full data, one sampling rule 2 points above another — it trains the runs that matter again with other seeds
and reads them with two functions:

* :func:`spread` groups runs that differ only in their seed and gives each group's mean, sample standard deviation
  (n − 1 in the denominator), minimum and maximum of the named values;
* :func:`gap` compares two such groups: the difference of their means with a Welch t interval (standard error
  √(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite degrees of freedom), whether the difference passes a threshold
  (gap ≥ −tolerance), and whether the whole interval lies on one side of it — the seeds *decide* the comparison;
* :func:`against` compares every group with one reference group that way, and their mean times as a speed-up.

With two or three seeds the standard deviations are rough and the intervals wide; a comparison that is not decided
is within the seeds' noise, not shown to be equal.
"""
from __future__ import annotations

import math


def _mean_sd(values) -> tuple:
    """Mean and sample standard deviation (n − 1 in the denominator; None for a single value)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None)


def spread(rows, group, values: dict, seed: str = "seed") -> list:
    """One dict per group of ``rows`` (dicts) that share the keys ``group`` and differ in ``seed``, in order of
    first appearance: the group's keys, ``n``, ``seeds`` (sorted) and, for each ``alias: column`` of ``values``,
    ``<alias>_mean``, ``<alias>_sd`` (None for one seed), ``<alias>_min`` and ``<alias>_max``. Two runs of one group
    with the same seed are refused (one run per seed)."""
    group, groups = tuple(group), {}
    for r in rows:
        missing = [k for k in (*group, seed, *values.values()) if k not in r]
        if missing:
            raise ValueError(f"a run lacks {missing}: reading seeds needs {', '.join((*group, seed))} and "
                             f"{', '.join(values.values())} per run")
        key = tuple(r[k].item() if hasattr(r[k], "item") else r[k] for k in group)   # numpy scalars as Python ones
        runs = groups.setdefault(key, {})
        if r[seed] in runs:
            raise ValueError(f"two runs of {dict(zip(group, key))} with seed {r[seed]}: one run per seed")
        runs[r[seed]] = r
    out = []
    for key, runs in groups.items():
        row = dict(zip(group, key), n=len(runs), seeds=sorted(runs))
        for alias, column in values.items():
            xs = [float(r[column]) for r in runs.values()]
            row[f"{alias}_mean"], row[f"{alias}_sd"] = _mean_sd(xs)
            row[f"{alias}_min"], row[f"{alias}_max"] = min(xs), max(xs)
        out.append(row)
    return out


def check_confidence(confidence: float) -> float:
    """``confidence`` if it lies in (0, 1), else a ValueError that says so (0.95, not 95)."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}")
    return float(confidence)


def gap(a: dict, b: dict, value: str, tolerance: float = 0.0, confidence: float = 0.95) -> dict:
    """Group ``a`` against group ``b`` (rows of :func:`spread`) on ``<value>_mean``: ``gap`` = a's mean − b's,
    ``gap_low`` / ``gap_high`` its Welch t interval at ``confidence`` (None with fewer than two seeds on either
    side), ``rule`` = gap ≥ −``tolerance`` on the means, and ``decided``: whether the interval lies wholly on one
    side of −``tolerance`` (None without an interval)."""
    from scipy import stats

    confidence = check_confidence(confidence)
    g = a[f"{value}_mean"] - b[f"{value}_mean"]
    out = dict(gap=g, gap_low=None, gap_high=None, rule=g >= -tolerance, decided=None)
    if a["n"] > 1 and b["n"] > 1:
        va, vb = a[f"{value}_sd"] ** 2 / a["n"], b[f"{value}_sd"] ** 2 / b["n"]
        se = math.sqrt(va + vb)
        if se > 0:
            dof = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
            half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
        else:   # every seed gave the same value on both sides
            half = 0.0
        out.update(gap_low=g - half, gap_high=g + half)
        out["decided"] = out["gap_low"] >= -tolerance or out["gap_high"] < -tolerance
    return out


def against(groups, reference: dict, value: str, *, tolerance: float = 0.0, confidence: float = 0.95,
            time: str | None = None) -> list:
    """Every group of ``groups`` (rows of :func:`spread`) against ``reference`` (one of them): the reference's
    ``<time>_mean`` over the group's as ``speedup`` when ``time`` is given, and for every other group its
    :func:`gap` on ``value``. Updates the groups in place and returns them."""
    for g in groups:
        if time is not None:
            g["speedup"] = reference[f"{time}_mean"] / g[f"{time}_mean"]
        if g is not reference:
            g.update(gap(g, reference, value, tolerance, confidence))
    return groups
