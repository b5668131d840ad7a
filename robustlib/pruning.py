"""Data pruning for (adversarial) training: importance scores, OMP and every-R-epochs selectors.

Notation as in the papers: n training examples (x_i, y_i), kept fraction f ∈ (0, 1], budget
k = round(f·n), p_i = softmax(f(x_i)), e_y the one-hot label, h_i the input of the last linear layer
(penultimate features), R the number of epochs between two selections. Every quantity is taken on
clean x_i or on PGD examples x'_i (``adversarial={"eps": ε, "steps": K, ...}``, or any object with
those attributes such as an objective): the adversarial versions of the paper.

Scores (``random``, ``loss``, ``el2n``, ``grand``, ``forgetting``) and the last-layer gradients
g_i = (p_i − e_{y_i}) ⊗ [h_i, 1] ∈ R^{C(H+1)} live in :mod:`robustlib.scores` (re-exported here); the gradients feed
  Adv-GRAD-MATCH  min_{|S| ≤ k, w ≥ 0} ‖Σ_{i∈S} w_i g_i − Σ_j g_j‖₂ + λ‖w‖², greedily by orthogonal
                  matching pursuit (:func:`omp`), per class, per mini-batch or per example;
  Adv-GLISTER     max_S log-likelihood of a validation split after a step θ − η Σ_{i∈S} g_i, whose
                  first-order gain for example i is η·g_valᵀ g_i (:func:`glister_greedy`).

With a :class:`robustlib.memory.PerturbationMemory` (``memory=``), the gradients are taken at the perturbations
training found last instead of a fresh attack: one forward pass per example (ours, not the paper's).

Selectors follow :func:`robustlib.train.fit`'s protocol ``selector(epoch, model, data) -> None |
(indices, weights)`` and checkpoint through ``state_dict()`` (tensors and numbers only). The time of
the last selection is ``selector.last_seconds``. Scoring runs the model in eval mode, restores every
module's train/eval flag and leaves no parameter ``.grad`` behind. Tensors stay on the data's device.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings

import torch
import torch.nn as nn

from .checks import check_int
from .data import ImageData
from .digests import tensor_digest
from .greedy import glister_greedy, omp
from .memory import PerturbationMemory
from .scores import SCORES, ForgettingCounter, last_layer_grads, pgd_settings, score, selection_batch_size

METHODS = ("random", "gradmatch", "glister")
VARIANTS = ("per_class", "per_batch", "per_example")

__all__ = ["score", "last_layer_grads", "omp", "glister_greedy", "ForgettingCounter", "StaticSelector",
           "DynamicSelector", "budget_of", "warmup_epochs", "SCORES", "METHODS", "VARIANTS"]


def _seconds_since(t0: float, device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (the share of examples kept), got {fraction!r}; "
                         f"e.g. fraction=0.3 keeps 30% of the data")
    return float(fraction)


def budget_of(fraction: float, n: int) -> int:
    """k = round(f·n), at least 1."""
    return max(1, min(n, round(_check_fraction(fraction) * n)))


def warmup_epochs(fraction: float, epochs: int, kappa: float = 0.5) -> int:
    """T_w = round(f·κ·E), the warm-up rule of adversarial coreset selection (Dolatabadi et al. 2022)."""
    return round(_check_fraction(fraction) * kappa * epochs)


def _selection_config(self) -> dict:
    """What makes a selection this selection (a keyed run's checkpoint name digests it; selection state left out):
    scalar settings, the PGD settings of ``adversarial``, digests of tensors (scores) and of a validation split."""
    out = {}
    for k, v in sorted(vars(self).items()):
        if k == "memory":   # only when set, so that the keys of runs recorded before memories stay the same
            if v is not None:
                out[k] = True
                if getattr(self, "method", None) == "glister":
                    out["valid_refresh"] = self.VALID_REFRESH
        elif k.startswith("_") or k == "valid_memory" or (k == "balanced" and not v) or \
                (k == "val_update" and v == "linear"):
            continue   # balanced and val_update only when set: the keys of older runs stay what they were
        elif k not in self._STATE:
            v = {"n": len(v), "digest": tensor_digest(v.images, v.labels)} if isinstance(v, ImageData) else v
            out[k] = pgd_settings(v) if k == "adversarial" else tensor_digest(v) if isinstance(v, torch.Tensor) else v
    return {k: v for k, v in out.items() if v is None or isinstance(v, (str, int, float, bool, dict))}


# ----------------------------------------------------------------------------- selectors

def class_budgets(labels: torch.Tensor, k: int, num_classes: int) -> list:
    """k split over the classes in proportion to their sizes (largest remainders), Σ_c k_c = k, k_c ≤ n_c."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    share = [k * c / len(labels) for c in counts]
    ks = [int(s) for s in share]
    for c in sorted(range(len(ks)), key=lambda c: ks[c] - share[c])[:k - sum(ks)]:
        ks[c] += 1
    return ks


def _fill(idx, w, pool, k, g):
    """Complete OMP's picks (it may stop early) to k rows of ``pool`` by a seeded random draw; added rows
    take the mean OMP weight (1 when OMP picked none), so they count like the picked ones."""
    free = pool[~torch.isin(pool, idx)]
    extra = free[torch.randperm(len(free), generator=g, device=free.device)[:max(0, k - len(idx))]]
    fill = float(w.mean()) if len(w) else 1.0
    return torch.cat([idx, extra]), torch.cat([w.float(), torch.full((len(extra),), fill, device=pool.device)])


class StaticSelector:
    """Score-based pruning chosen once, at the first call: keep the ``fraction`` with the highest
    (``keep="top"``) or lowest (``"bottom"``) scores, or the top ``fraction`` of each class
    (``"stratified"``: k_c = max(1, round(f·n_c)) per class, labels read from the data)."""

    def __init__(self, scores: torch.Tensor, fraction: float, keep: str = "top"):
        scores = torch.as_tensor(scores).float()
        if scores.dim() != 1 or torch.isnan(scores).any():
            raise ValueError("scores must be a 1-D tensor without NaN (one per training example); NaN usually "
                             "means the model diverged: recompute the scores with a finite model")
        if keep not in ("top", "bottom", "stratified"):
            raise ValueError(f"keep must be 'top', 'bottom' or 'stratified', got {keep!r}")
        self.scores, self.fraction, self.keep = scores, _check_fraction(fraction), keep
        self.indices, self.last_seconds = None, 0.0

    def __call__(self, epoch: int, model: nn.Module, data: ImageData):
        if self.indices is None:
            t0, s, labels = time.perf_counter(), self.scores.to(data.device), data.labels
            if len(s) != len(data):
                raise ValueError(f"{len(s)} scores for {len(data)} examples: score the data you train on")
            if self.keep == "stratified":
                order = s.argsort(descending=True, stable=True)
                order = order[labels[order].argsort(stable=True)]  # by class, best first within each
                counts = torch.bincount(labels, minlength=data.num_classes)
                rank = torch.arange(len(s), device=s.device) - (counts.cumsum(0) - counts)[labels[order]]
                idx = order[rank < (self.fraction * counts.double()).round().clamp_min(1)[labels[order]]]
            else:
                idx = s.topk(budget_of(self.fraction, len(s)), largest=self.keep == "top").indices
            self.indices = idx.sort().values
            self.last_seconds = _seconds_since(t0, data.device)
        return self.indices, torch.ones(len(self.indices), device=self.indices.device)

    state_dict, load_state_dict = ForgettingCounter.state_dict, ForgettingCounter.load_state_dict
    config = _selection_config
    _STATE = ("indices", "last_seconds")


class DynamicSelector:
    """Full data for ``warmup`` epochs, then k = round(f·n) examples re-selected every ``R`` epochs.

    ``method``: ``"random"`` (a fresh seeded draw); ``"gradmatch"`` (Adv-GRAD-MATCH: non-negative
    OMP on last-layer gradients of the (adversarial) loss; ``variant="per_class"``: OMP within each
    class, budget ∝ class size, target the class's summed gradient; ``"per_batch"``: OMP over the
    summed gradients of seeded random groups of ``group_size`` examples, every member of a chosen
    group taking its weight, so that it keeps whole groups: round(k / group_size) of them, at least one (a
    warning says when that is far from k); ``"per_example"``); ``"glister"`` (Adv-GLISTER against the ``valid``
    split, :func:`glister_greedy` with ``chunk`` picks per step, default ceil(k/64); ``balanced=True``: within
    each class, budget ∝ class size as for Adv-GRAD-MATCH per class, against the validation gradient of that
    class's validation examples — ours, as public GLISTER code does per class; over the whole data the greedy gains
    can leave whole classes out). Slots OMP
    leaves empty are filled by a seeded random draw (as CORDS does; here at the mean OMP weight, where CORDS gives
    them weight 1, negligible beside OMP's weights of about n/k): the filled rows train like the picked ones, and
    the weighted gradient matches the full one less closely than OMP's picks alone do. Weights are normalised to
    mean 1 over the selected examples. A fraction of 1 keeps every example with
    weight 1 (GRAD-MATCH's objective is then met exactly; no selection runs). ``adversarial``: the PGD attack
    (eps, steps, ...) whose examples give the gradients; None: clean data. ``batch_size``: the batches of that
    attack and of the gradients (None: :func:`robustlib.scores.selection_batch_size`, 1024 on CUDA, 256 elsewhere).
    ``memory``: a
    :class:`robustlib.memory.PerturbationMemory` that training writes into (``PerturbationMemory.attach``);
    the gradients are then taken at the perturbations training found last, and only examples it never
    attacked are attacked afresh (``last_fresh`` counts them); Adv-GLISTER's validation split, which training
    never attacks, gets its own memory: attacked in full at the first selection, then moved ``VALID_REFRESH``
    step(s) on from where it was at each later one (as in ATTA) — our choice, not the paper's. ``seed`` (with the
    epoch) seeds the selection's own draws (random picks, fills, groups); the selection attack's random starts draw
    from the global random state, which ``fit`` seeds per epoch, so a selector called by hand repeats its choice
    only under the same global seed. Returns None during the warm-up (full data), then (indices, weights) every
    epoch.
    """

    VALID_REFRESH = 1   # with a memory: attack steps that move Adv-GLISTER's remembered validation perturbations

    def __init__(self, method: str, fraction: float, R: int = 20, warmup: int = 0, *, adversarial=None,
                 variant: str = "per_class", lam: float = 0.0, group_size: int = 32, valid: ImageData | None = None,
                 eta: float = 0.1, stochastic: bool = False, delta: float = 0.01, chunk: int | None = None,
                 batch_size: int | None = None, seed: int = 0, memory: PerturbationMemory | None = None,
                 balanced: bool = False, val_update: str = "linear"):
        if method not in METHODS or variant not in VARIANTS:
            raise ValueError(f"unknown method {method!r} or variant {variant!r}; methods: {', '.join(METHODS)}; "
                             f"variants: {', '.join(VARIANTS)}")
        self.fraction = _check_fraction(fraction)
        self.R = check_int(R, "R", 1, "R is the number of epochs between two selections, e.g. R=20")
        self.warmup = check_int(warmup, "warmup", 0, "use 0 for no warm-up, or warmup_epochs(fraction, epochs)")
        self.group_size = check_int(group_size, "group_size", 1, "per_batch groups need at least one example")
        if method != "gradmatch" and variant != "per_class":
            raise ValueError(f"variant={variant!r} is Adv-GRAD-MATCH's; {method!r} does not take it")
        if valid is not None and not isinstance(valid, ImageData):
            raise TypeError(f"valid must be an ImageData (e.g. train.subset(idx)), got {type(valid).__name__}")
        if method == "glister" and (valid is None or len(valid) == 0):
            raise ValueError("glister needs a non-empty validation split: valid=ImageData, e.g. a held-out part "
                             "of the training set (train.subset(idx)) that is not trained on")
        if chunk is not None:
            check_int(chunk, "chunk", 1, "Adv-GLISTER picks at least one example per greedy step; None: ceil(k/64)")
        if batch_size is not None:
            check_int(batch_size, "batch_size", 1, "None takes the device's default")
        if not (lam >= 0 and 0 < eta < math.inf and 0 < delta < 1):
            raise ValueError(f"need lam ≥ 0, eta > 0 and 0 < delta < 1; got lam={lam}, eta={eta}, delta={delta}")
        pgd_settings(adversarial)  # validated now rather than at the first selection
        if memory is not None and not isinstance(memory, PerturbationMemory):
            raise TypeError(f"memory must be a robustlib.memory.PerturbationMemory (PerturbationMemory.attach("
                            f"objective, train)), got {type(memory).__name__}")
        if memory is not None and adversarial is None:
            raise ValueError("a memory holds adversarial perturbations, but adversarial=None selects on clean data; "
                             "pass the selection attack (adversarial=dict(eps=..., steps=...)) or drop the memory")
        if balanced and method != "glister":
            raise ValueError(f"balanced=True is Adv-GLISTER's per-class selection; {method!r} does not take it "
                             f"(Adv-GRAD-MATCH's per-class form is variant='per_class')")
        if val_update not in ("linear", "exact"):
            raise ValueError(f"val_update must be 'linear' (g_val − η·Σ g_i) or 'exact' (the last layer's validation "
                             f"gradient after the step), got {val_update!r}")
        self.memory, self.last_fresh, self.valid_memory, self.balanced = memory, 0, None, bool(balanced)
        self.val_update = val_update
        self.method, self.adversarial, self.variant, self.lam, self.valid = method, adversarial, variant, lam, valid
        self.eta, self.stochastic, self.delta, self.chunk, self.batch_size = eta, stochastic, delta, chunk, batch_size
        self.seed, self.indices, self.weights, self._warned = seed, None, None, False
        self.last_epoch, self.selections, self.last_seconds = -1, 0, 0.0

    def on_device(self, device) -> None:
        """Fix the default batch size (None) to ``device``'s, as :func:`robustlib.runs.run_config` does so that a
        keyed run records the batch size it selects in (with None, :func:`last_layer_grads` takes the device's
        without storing it: selecting does not change :meth:`config`)."""
        if self.batch_size is None:
            self.batch_size = selection_batch_size(device)

    def __call__(self, epoch: int, model: nn.Module, data: ImageData):
        if epoch < self.warmup:
            return None
        if self.indices is None or (epoch - self.warmup) % self.R == 0:
            t0 = time.perf_counter()
            self.last_fresh = len(data) if self.memory is None else int((~self.memory.known).sum())
            g = torch.Generator(device=data.device).manual_seed(self.seed * 1_000_003 + epoch)
            k = budget_of(self.fraction, len(data))
            if k >= len(data):   # every example: the full gradient is matched exactly with weight 1 each
                idx, w = torch.arange(len(data), device=data.device), torch.ones(len(data), device=data.device)
            else:
                idx, w = self._select(model, data, k, g)
            order = idx.argsort()
            self.indices, self.weights = idx[order], (w[order] / w.mean()).float()
            self.last_epoch, self.selections = epoch, self.selections + 1
            self.last_seconds = _seconds_since(t0, data.device)
        return self.indices, self.weights

    def _select(self, model, data, k, g):
        n, dev = len(data), data.device
        if self.method == "random":
            return torch.randperm(n, generator=g, device=dev)[:k], torch.ones(k, device=dev)
        factored = self.method == "glister" or self.variant == "per_batch"   # sums and products of rows only
        G = last_layer_grads(model, data, adversarial=self.adversarial, memory=self.memory, batch_size=self.batch_size,
                             factored=factored)
        if self.method == "glister":
            valid = self.valid.to(dev)
            if self.memory is not None and self.valid_memory is None:
                self.valid_memory = PerturbationMemory.like(valid)
            Gv = last_layer_grads(model, valid, adversarial=self.adversarial, memory=self.valid_memory,
                                  refresh=self.VALID_REFRESH if self.valid_memory is not None else 0,
                                  batch_size=self.batch_size, factored=True)

            def greedy(rows, held, budget):   # held: the validation rows it scores against (None: all)
                v, labels = (Gv, valid.labels) if held is None else (Gv.rows(held), valid.labels[held])
                exact = dict(valid=v, valid_labels=labels) if self.val_update == "exact" else {}
                return glister_greedy(rows, v.rows_sum() / v.P.shape[0], budget, eta=self.eta,
                                      chunk=self.chunk or math.ceil(budget / 64), stochastic=self.stochastic,
                                      delta=self.delta, generator=g, **exact)
            if not self.balanced:
                return greedy(G, None, k), torch.ones(k, device=dev)
            parts = []
            for c, kc in enumerate(class_budgets(data.labels, k, data.num_classes)):   # a loop over classes
                members, held = (data.labels == c).nonzero().squeeze(1), valid.labels == c
                if kc > 0:   # a class without validation examples scores against the whole split's gradient
                    rows = G.rows(members)
                    parts.append(members[greedy(rows, held if bool(held.any()) else None, kc)])
            idx = torch.cat(parts)
            return idx, torch.ones(len(idx), device=dev)
        if self.variant == "per_example":
            return _fill(*omp(G, G.sum(0), k, lam=self.lam), torch.arange(n, device=dev), k, g)
        if self.variant == "per_class":
            parts = []
            for c, kc in enumerate(class_budgets(data.labels, k, data.num_classes)):  # a loop over classes
                members = (data.labels == c).nonzero().squeeze(1)
                if kc > 0:
                    i, wc = omp(G[members], G[members].sum(0), min(kc, len(members)), lam=self.lam)
                    parts.append(_fill(members[i], wc, members, kc, g))
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        # per_batch: seeded random groups, the q-th holding perm[q·s : (q + 1)·s]; a group's summed gradient is
        # P_qᵀ H_q, one batched matrix product over the groups (the last one padded with zero rows)
        gs, perm = self.group_size, torch.randperm(n, generator=g, device=dev)
        group = torch.empty(n, dtype=torch.long, device=dev)
        group[perm] = torch.arange(n, device=dev) // gs
        n_groups = -(-n // gs)

        def grouped(t):
            return torch.cat([t[perm], t.new_zeros(n_groups * gs - n, t.shape[1])]).view(n_groups, gs, -1)
        Gb = torch.bmm(grouped(G.P).transpose(1, 2), grouped(G.H)).flatten(1)
        kb = max(1, min(n_groups, round(k / gs)))
        if kb * gs > 2 * k and not self._warned:
            self._warned = True
            warnings.warn(f"per_batch keeps whole groups of {gs}: a budget of k={k} examples keeps one group; "
                          f"a smaller group_size follows the fraction more closely", stacklevel=3)
        ib, wb = _fill(*omp(Gb, G.rows_sum(), kb, lam=self.lam), torch.arange(n_groups, device=dev), kb, g)
        chosen = torch.zeros(n_groups, device=dev).index_copy_(0, ib, wb)
        idx = (chosen[group] > 0).nonzero().squeeze(1)
        return idx, chosen[group[idx]]

    state_dict, load_state_dict = ForgettingCounter.state_dict, ForgettingCounter.load_state_dict
    config = _selection_config
    _STATE = ("indices", "weights", "last_epoch", "selections", "last_seconds", "last_fresh")
