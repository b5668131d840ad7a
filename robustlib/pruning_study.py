"""Pruned adversarial training as a study: the methods by name, their schedule, and how a grid of runs is read.

Every pruned method follows one schedule, so that they differ only in *which* examples they keep: full data for
the warm-up T_w = round(f·κ·E) epochs (:func:`robustlib.pruning.warmup_epochs`, κ = 0.5 by default), then
k = round(f·n) examples per epoch. The methods (:data:`METHODS`, built by :func:`selector`):

  ``full``            all n examples every epoch (no selector): the reference of every speed-up;
  ``random``          a fresh seeded random subset every R epochs;
  ``random-static``   one random subset drawn after the warm-up and kept;
  ``el2n``, ``grand`` EL2N / GraNd (last layer, closed form) of the warm model on clean examples, top k kept;
  ``el2n-adv``, ``grand-adv``  the same scores on PGD examples of the warm model (static, :class:`ScoreSelector`);
  ``gradmatch``       Adv-GRAD-MATCH every R epochs (:class:`robustlib.pruning.DynamicSelector`);
  ``glister``         Adv-GLISTER every R epochs, against a validation split held out of training (:func:`holdout`);
  ``glister-balanced``  Adv-GLISTER within each class (budget ∝ class size, the class's validation gradient) — ours,
                      as public GLISTER code selects per class: over the whole data its gains leave classes out;
  ``glister-exact``  Adv-GLISTER whose validation gradient is refreshed exactly for the last layer after each
                      step (:func:`robustlib.greedy.glister_greedy` with ``valid``), as CORDS does, instead of by
                      the linear g_val − η·Σ g_i of ``glister``;
  ``gradmatch-memory``, ``glister-memory``  the same selections with their gradients taken at the perturbations
                      training found last (:mod:`robustlib.memory`: one forward pass per example instead of a
                      K_s-step attack) — ours, not the paper's.

Any method may be combined with Bullet-Train (a ``+bt`` suffix in a grid, see :func:`parse_grid`).

Reading the runs: the speed-up of a run is the training wall-clock of full-data training with the same objective
(without Bullet-Train) over the run's own, selection included; the ideal speed-up of the schedule is
E / (T_w + (E − T_w)·f) (:func:`ideal_speedup`); :func:`matched_schedules` gives the two controls of a pruned
schedule (full data at the same example budget, and pruning with as many updates as full data). :func:`pareto_front` marks the runs no other run beats on both
speed-up and robust accuracy, and :func:`headline` turns a grid into the paper's six headline numbers with one
rule: the best speed-up whose robust accuracy stays within ``tolerance`` (1.5 points) of full-data training.
:func:`seed_spread` reads runs repeated with other seeds: how far each method's accuracy moves from seed to seed,
and whether the seeds decide the claim rule or leave it within their noise.
"""
from __future__ import annotations

import math
import numbers
import time

import torch
import torch.nn as nn

from . import seeds
from .data import ImageData
from .memory import PerturbationMemory
from .pruning import DynamicSelector, StaticSelector, budget_of, score, warmup_epochs

METHODS = {
    "full": "all n examples every epoch",
    "random": "a random subset, re-drawn every R epochs",
    "random-static": "a random subset drawn once, after the warm-up",
    "el2n": "top-k EL2N of the warm model, clean examples (static)",
    "el2n-adv": "top-k EL2N of the warm model, PGD examples (static)",
    "grand": "top-k GraNd (last layer) of the warm model, clean examples (static)",
    "grand-adv": "top-k GraNd (last layer) of the warm model, PGD examples (static)",
    "gradmatch": "Adv-GRAD-MATCH: OMP on adversarial last-layer gradients, every R epochs",
    "glister": "Adv-GLISTER: greedy validation-gradient gain on adversarial gradients, every R epochs",
    "glister-balanced": "Adv-GLISTER within each class, budget ∝ class size, against that class's validation "
                        "gradient (ours)",
    "glister-exact": "Adv-GLISTER with the validation gradient refreshed exactly for the last layer (as CORDS "
                     "does) instead of linearly",
    "gradmatch-memory": "Adv-GRAD-MATCH on gradients at the perturbations training remembered (ours)",
    "glister-memory": "Adv-GLISTER on gradients at the perturbations training remembered (ours)",
}
_SCORE_METHODS = {"random-static": ("random", False), "el2n": ("el2n", False), "el2n-adv": ("el2n", True),
                  "grand": ("grand", False), "grand-adv": ("grand", True)}
CLAIM_FAMILIES = {   # claim id prefix → (objectives it covers, with Bullet-Train)
    "p1-speedup": (None, False), "p1-bt-trades": (("trades",), True), "p1-bt-mart": (("mart",), True)}
CLAIM_DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


class ScoreSelector:
    """Static score-based pruning after a warm-up: full data for ``warmup`` epochs; then, once, every example is
    scored with the current model (:func:`robustlib.pruning.score` ``name``: clean, or on PGD examples with
    ``adversarial``) and the ``keep`` fraction (``"top"``: the highest scores) is trained on for the rest of the run.
    The scoring time is ``last_seconds`` and counts in the epoch that pays it."""

    def __init__(self, name: str, fraction: float, warmup: int = 0, *, keep: str = "top", adversarial=None,
                 mode: str = "last", batch_size: int = 256, seed: int = 0):
        if name not in ("random", "loss", "el2n", "grand"):
            raise ValueError(f"ScoreSelector scores with 'random', 'loss', 'el2n' or 'grand', got {name!r} "
                             f"(forgetting needs a counter over training: StaticSelector(counter.scores(), f))")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"warmup must be an integer ≥ 0 (epochs on full data), got {warmup!r}")
        StaticSelector(torch.zeros(1), fraction, keep)   # validates fraction and keep
        self.name, self.fraction, self.warmup, self.keep = name, float(fraction), int(warmup), keep
        self.adversarial, self.mode, self.batch_size, self.seed = adversarial, mode, batch_size, seed
        self.indices, self.last_seconds, self.selections = None, 0.0, 0

    def __call__(self, epoch: int, model: nn.Module, data: ImageData):
        if epoch < self.warmup:
            return None
        if self.indices is None:
            t0 = time.perf_counter()
            s = score(self.name, model, data, adversarial=self.adversarial, batch_size=self.batch_size,
                      seed=self.seed, mode=self.mode)
            self.indices = StaticSelector(s, self.fraction, self.keep)(epoch, model, data)[0]
            if data.device.type == "cuda":
                torch.cuda.synchronize(data.device)
            self.last_seconds, self.selections = time.perf_counter() - t0, 1
        return self.indices, torch.ones(len(self.indices), device=self.indices.device)

    _STATE = ("indices", "last_seconds", "selections")
    state_dict, load_state_dict = StaticSelector.state_dict, StaticSelector.load_state_dict
    config = StaticSelector.config


def selector(method: str, fraction: float, epochs: int, *, R: int = 20, kappa: float = 0.5, warmup: int | None = None,
             attack=None, valid: ImageData | None = None, variant: str = "per_class", group_size: int = 32,
             seed: int = 0, objective=None, train: ImageData | None = None):
    """The selector of ``method`` (:data:`METHODS`; None for ``full``) at kept fraction f = ``fraction``.

    ``warmup``: T_w (default round(f·κ·E), E = ``epochs``); ``attack``: the PGD settings (``{"eps": ε, "steps":
    K_s, ...}`` or an objective) of the adversarial scores and gradients; ``valid``: GLISTER's validation split;
    ``variant``: Adv-GRAD-MATCH's OMP variant (``per_class`` for small n, ``per_batch`` for large n), and
    ``group_size`` the examples per group of ``per_batch`` (GRAD-MATCH's own per-batch form: the training batch). A
    ``-memory`` method attaches a perturbation memory of ``train`` to ``objective`` (the one the run trains with):
    pass both. ``attack`` then serves only the examples training has not attacked yet.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "full":
        return None
    if method.endswith("-memory"):
        if objective is None or train is None:
            raise ValueError(f"{method} reads the perturbations that training writes: pass objective= (the run's "
                             f"objective) and train= (its training set)")
        plain = selector(method[:-len("-memory")], fraction, epochs, R=R, kappa=kappa, warmup=warmup,
                         attack=attack, valid=valid, variant=variant, group_size=group_size, seed=seed)
        plain.memory = PerturbationMemory.attach(objective, train)
        return plain
    t_w = warmup_epochs(fraction, epochs, kappa) if warmup is None else warmup
    if method in _SCORE_METHODS:
        name, adversarial = _SCORE_METHODS[method]
        if adversarial and attack is None:
            raise ValueError(f"{method} scores PGD examples: pass attack={{'eps': ..., 'steps': ...}}")
        return ScoreSelector(name, fraction, t_w, adversarial=attack if adversarial else None, seed=seed)
    if method == "random":
        return DynamicSelector("random", fraction, R, t_w, seed=seed)
    if method in ("glister", "glister-balanced", "glister-exact"):
        return DynamicSelector("glister", fraction, R, t_w, adversarial=attack, valid=valid, seed=seed,
                               balanced=method == "glister-balanced",
                               val_update="exact" if method == "glister-exact" else "linear")
    return DynamicSelector("gradmatch", fraction, R, t_w, adversarial=attack, variant=variant, group_size=group_size,
                           seed=seed)


def parse_grid(grid: dict, fractions) -> list:
    """Runs of a grid ``{objective: ["method", "method+bt", "method@0.3", ...]}`` as dicts (objective, method, bt,
    fraction): a plain method runs at every fraction of ``fractions``, ``@f`` at that one only, ``+bt`` with
    Bullet-Train; ``full`` runs once at f = 1 and is added to every objective that lacks it (the speed-up
    reference)."""
    fractions = [float(f) for f in fractions]
    for f in fractions:
        budget_of(f, 1)   # validates f ∈ (0, 1]
    runs, seen = [], set()
    for objective, entries in grid.items():
        if isinstance(entries, str):
            raise ValueError(f"the grid of {objective!r} must be a list of method names, got the string {entries!r}")
        items = list(entries) if any(e.split("@")[0] == "full" for e in entries) else ["full", *entries]
        for entry in items:
            spec, _, at = entry.partition("@")
            method, bt = (spec[:-3], True) if spec.endswith("+bt") else (spec, False)
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r} in {entry!r}; valid: {', '.join(METHODS)} "
                                 f"(add '+bt' for Bullet-Train, '@0.3' for one fraction)")
            fs = [1.0] if method == "full" else ([float(at)] if at else fractions)
            for f in fs:
                budget_of(f, 1)
                key = (objective, method, bt, f)
                if key not in seen:
                    seen.add(key)
                    runs.append(dict(objective=objective, method=method, bt=bt, fraction=f))
    return runs


def class_shares(selector, data: ImageData) -> list | None:
    """The share of each class among the examples ``selector`` trains on now (weights counted), or None for a
    selector that keeps no subset (full data, or before its first selection)."""
    idx = getattr(selector, "indices", None)
    if idx is None:
        return None
    w = getattr(selector, "weights", None)
    w = torch.ones(len(idx), device=idx.device) if w is None else w.to(idx.device).float()
    per_class = torch.zeros(data.num_classes, device=idx.device).index_add_(0, data.labels[idx], w)
    return (per_class / per_class.sum()).tolist()


def kept_gradient_norms(model: nn.Module, data: ImageData, selectors: dict, *, adversarial, epoch: int = 0) -> list:
    """Whether selectors keep the examples with the largest gradients: each selector of ``selectors`` (name →
    selector whose warm-up has passed at ``epoch``) chooses from the same ``model``, and its kept examples are placed
    among all of ``data`` by the norm of their last-layer gradient on PGD examples (GraNd, last layer, on the
    ``adversarial`` attack's examples). One dict per selector: the kept examples' mean percentile of that norm (0.5:
    as a random subset; 1: the largest), the share of them among the 10% largest, and their mean norm against
    the whole data's."""
    norms = score("grand", model, data, adversarial=adversarial)
    percentile = norms.argsort().argsort().float() / max(len(norms) - 1, 1)
    rows = []
    for name, chooser in selectors.items():
        chosen = chooser(epoch, model, data)
        if chosen is None:
            raise ValueError(f"selector {name!r} chose nothing at epoch {epoch}: its warm-up has not passed")
        idx = chosen[0]
        rows.append({"method": name, "kept": len(idx), "mean_norm_percentile": float(percentile[idx].mean()),
                     "share_in_largest_tenth": float((percentile[idx] >= 0.9).float().mean()),
                     "kept_mean_norm": float(norms[idx].mean()), "all_mean_norm": float(norms.mean())})
    return rows


def holdout(data: ImageData, n: int, seed: int = 0) -> tuple:
    """``(rest, held)``: a seeded random split of ``n`` examples held out of ``data`` (GLISTER's validation set)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n < len(data):
        raise ValueError(f"hold out between 1 and {len(data) - 1} examples, got n={n!r}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    return data.subset(perm[n:].sort().values), data.subset(perm[:n].sort().values)


def ideal_speedup(epochs: int, warmup: int, fraction: float) -> float:
    """E / (T_w + (E − T_w)·f): the speed-up of the schedule if an epoch's cost were proportional to its examples
    and selection were free."""
    if not 0 <= warmup <= epochs:
        raise ValueError(f"need 0 ≤ warmup ≤ epochs, got warmup={warmup}, epochs={epochs}")
    return epochs / (warmup + (epochs - warmup) * float(fraction))


def matched_schedules(epochs: int, warmup: int, fraction: float, R: int) -> dict:
    """The two controls of a pruned schedule (E epochs, warm-up T_w, kept fraction f, re-selection every R):

    * ``budget_epochs``: full-data epochs that train as many examples as the pruned run,
      round(T_w + (E − T_w)·f), at least 1 — is pruning better than simply training less?
    * ``update_epochs``, ``update_R``: a pruned run with as many examples as full-data training's E epochs,
      T_w + ⌈(E − T_w)/f⌉ epochs, re-selecting every max(1, round(R/f)) epochs so that selections fall at the
      same points of training — does the subset carry what full data teaches, given the updates?
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer ≥ 1, got {epochs!r}")
    if isinstance(R, bool) or not isinstance(R, numbers.Integral) or R < 1:
        raise ValueError(f"R must be an integer ≥ 1 (epochs between two selections), got {R!r}")
    if not 0 < float(fraction) < 1:
        raise ValueError(f"fraction must lie in (0, 1) for a pruned schedule, got {fraction!r}")
    if not 0 <= warmup < epochs:
        raise ValueError(f"need 0 ≤ warmup < epochs for a pruned schedule, got warmup={warmup}, epochs={epochs}")
    f, rest = float(fraction), epochs - warmup
    return {"budget_epochs": max(1, round(warmup + rest * f)),
            "update_epochs": warmup + math.ceil(rest / f - 1e-9),
            "update_R": max(1, round(R / f))}


def speedups(rows) -> list:
    """Per run: the training wall-clock ``train_s`` of full-data training with the same dataset and objective and
    without Bullet-Train, over the run's own (selection included in both)."""
    rows = list(rows)
    ref = {(r["dataset"], r["objective"]): r["train_s"] for r in rows if r["method"] == "full" and not r["bt"]}
    missing = {(r["dataset"], r["objective"]) for r in rows} - set(ref)
    if missing:
        raise ValueError(f"no full-data run without Bullet-Train for {sorted(missing)}: it is the reference of "
                         f"every speed-up")
    return [ref[r["dataset"], r["objective"]] / r["train_s"] for r in rows]


def pareto_front(speedup, accuracy) -> list:
    """True for every point that no other point beats: none has speed-up and accuracy both ≥ and one >."""
    pts = [(float(s), float(a)) for s, a in zip(speedup, accuracy)]
    return [not any(s2 >= s and a2 >= a and (s2 > s or a2 > a) for s2, a2 in pts) for s, a in pts]


def best_speedup(rows, reference: float, tolerance: float = 0.015, acc: str = "pgd_acc"):
    """The row with the largest ``speedup`` whose ``acc`` ≥ reference − tolerance, or None."""
    ok = [r for r in rows if r[acc] is not None and not math.isnan(r[acc]) and r[acc] >= reference - tolerance]
    return max(ok, key=lambda r: r["speedup"], default=None)


def headline(rows, datasets, network: str, tolerance: float = 0.015, acc: str = "pgd_acc") -> list:
    """The paper's six headline speed-ups measured on a grid of runs, as ``{"claim", "measured", **setting}``.

    Per claim: the best speed-up (:func:`best_speedup`) among the pruned runs of its family — pruning alone, any
    objective (``p1-speedup-*``); pruning + Bullet-Train with TRADES or MART (``p1-bt-*``) — whose ``acc`` stays
    within ``tolerance`` of full-data training with the same objective. When none does, the measured value is
    1.0 (full-data training itself). A ``-cifar10``/``-cifar100`` claim is measured on that dataset when it is in
    ``datasets``, else on the first one, and the row's note says so. Claims whose objective has no run are
    left out. The ``-memory`` methods are ours, not the paper's: they never stand for a claim. ``rows``: dicts with
    dataset, objective, method, bt, fraction, speedup and ``acc``.
    """
    rows = list(rows)
    out = []
    for suffix, paper_name in CLAIM_DATASETS.items():
        dataset = suffix if suffix in datasets else datasets[0]
        here = [r for r in rows if r["dataset"] == dataset]
        full = {r["objective"]: r for r in here if r["method"] == "full" and not r["bt"]}
        for family, (objectives, bt) in CLAIM_FAMILIES.items():
            objs = [o for o in (objectives or full) if o in full]
            if not objs:
                continue
            cands = [r for o in objs for r in _best_within(here, full[o], o, bt, tolerance, acc)]
            best = max(cands, key=lambda r: r["speedup"], default=None)
            where = "" if dataset == suffix else f"measured on {dataset}, not {paper_name}; "
            if best is None:
                ref = full[objs[0]]
                note = (f"{where}no pruned run{' with Bullet-Train' if bt else ''} stayed within "
                        f"{100 * tolerance:.1f} points of full-data {'/'.join(objs)}: 1.0× is full-data training")
                out.append(dict(claim=f"{family}-{suffix}", measured=1.0, dataset=dataset, network=network,
                                objective=ref["objective"], method="full", fraction=1.0, bullet_train=False,
                                robust_drop=0.0, run=ref.get("run"), note=note))
                continue
            drop = full[best["objective"]][acc] - best[acc]
            note = (f"{where}best speed-up within {100 * tolerance:.1f} points of full-data {best['objective']} "
                    f"robust accuracy: {best['method']}{' + Bullet-Train' if best['bt'] else ''} at f = "
                    f"{best['fraction']:g}, robust accuracy {-100 * drop:+.1f} points against full data")
            out.append(dict(claim=f"{family}-{suffix}", measured=float(best["speedup"]), dataset=dataset,
                            network=network, objective=best["objective"], method=best["method"],
                            fraction=best["fraction"], bullet_train=bool(best["bt"]), robust_drop=float(drop),
                            run=best.get("run"), note=note))
    return out


def _best_within(rows, reference: dict, objective: str, bt: bool, tolerance: float = 0.015, acc: str = "pgd_acc"):
    """[the best pruned run of ``objective`` with (``bt``) or without Bullet-Train within tolerance], or []."""
    pruned = [r for r in rows if r["objective"] == objective and r["method"] != "full" and bool(r["bt"]) == bt
              and not r["method"].endswith("-memory")]   # our own selections do not stand for the paper's
    best = best_speedup(pruned, reference[acc], tolerance, acc)
    return [] if best is None else [best]


SEED_GROUP = ("dataset", "objective", "method", "bt", "fraction")   # what the runs of one group share


def seed_spread(rows, tolerance: float = 0.015, acc: str = "pgd_acc", confidence: float = 0.95) -> list:
    """Runs repeated with several seeds, read together (:mod:`robustlib.seeds`): one dict per group of runs that
    differ only in their seed (same :data:`SEED_GROUP`), in order of first appearance.

    Each holds the group's keys, ``n`` (seeds), ``seeds``, the mean and sample standard deviation of ``clean_acc``
    (``clean_mean``, ``clean_sd``), ``acc`` (``acc_mean``, ``acc_sd``, ``acc_min``, ``acc_max``) and ``train_s``,
    and ``speedup``: the mean training wall-clock of full data (same dataset and objective, no Bullet-Train) over
    the group's. Every other group (pruned, or full data with Bullet-Train) adds its comparison with full data
    (:func:`robustlib.seeds.gap`): ``gap`` = mean ``acc`` − full data's mean ``acc`` with a Welch t interval
    ``gap_low``, ``gap_high`` at ``confidence``; ``rule``, the claim rule on the means (gap ≥ −``tolerance``);
    ``decided``, whether the interval lies wholly on one side of −``tolerance`` — the seeds settle the rule; False:
    the verdict is within the seeds' noise.

    A seed moves the initial weights, the order of the batches, the random starts of the training attacks and the
    selector's random choices; the data split and the test images stay the same. ``rows``: dicts with the group
    keys, ``seed``, ``clean_acc``, ``acc`` and ``train_s``; every dataset and objective needs full-data runs.
    """
    seeds.check_confidence(confidence)
    out = seeds.spread(rows, SEED_GROUP, {"clean": "clean_acc", "acc": acc, "train_s": "train_s"})
    for where in dict.fromkeys((g["dataset"], g["objective"]) for g in out):
        here = [g for g in out if (g["dataset"], g["objective"]) == where]
        ref = next((g for g in here if g["method"] == "full" and not g["bt"]), None)
        if ref is None:
            raise ValueError(f"no full-data runs for {where[0]} / {where[1]}: they are the reference of every "
                             f"speed-up and gap")
        seeds.against(here, ref, "acc", tolerance=tolerance, confidence=confidence, time="train_s")
    return out
