r"""Certified (verifiably robust) training through sound bounds: IBP training, symbolic training, MixTrain.

All three minimise a robust cross-entropy on the upper bounds ``u_j`` of the
margins ``z_j − z_y`` over ``[x − ε, x + ε] ∩ [0, 1]``:
``R(x, y) = log(1 + Σ_{j≠y} exp(u_j))`` (:func:`robustlib.bounds.robust_loss`),
an upper bound of the worst-case CE in the box, so driving it down drives up
the verified robust accuracy (VRA).

* :class:`IBPTraining` (Gowal et al. 2019): ``κ·CE(x) + (1 − κ)·R_IBP(x)`` on
  every example, κ ramped from ``kappa[0]`` to ``kappa[1]`` as ε ramps up.
* :class:`SymbolicTraining`: ``R_sym(x)`` on every example — the expensive
  verifiable-training baseline of MixTrain (symbolic bounds cost about d + 1
  forward passes per sample, d the input dimension).
* :class:`MixTrain` (Wang et al. 2018): clean CE on the batch plus the
  symbolic ``R`` on only ``k`` points drawn from it (stochastic robust
  approximation), mixed per epoch (dynamic mixed training):

  - ``rule="adaptive"`` (our reading; the paper's exact rule is not available):
    ``α·CE + (1 − α)·R̂`` and after each epoch, from a held-out validation
    split, α ← α + δ if the clean accuracy fell more than ``tol`` below its
    best so far, else α ← α − δ, clamped to ``alpha_range``;
  - ``rule="schedule"`` (the authors' later public trainer): per batch, with
    probability ``p = 0.8``, ``CE + w(e)·R̂`` with the k points drawn
    uniformly with replacement and ``w(e) = min(50, 0.1·2.5^⌊max(e − L, 0)/5⌋)``;
  - ``rule="fixed"``: α stays as given.

  ``R̂`` is the mean of R over the k points, spread over the batch as per-example
  losses ``(N/k)·R_s`` on the sampled examples so that the batch mean is exact
  (and pruning weights apply to the sampled points).

  Which k points (``sampling``, beyond the paper: ours): ``"uniform"`` (the paper's);
  ``"worst-ibp"``, the k largest IBP margin violations (biased on purpose); ``"ibp-weighted"``,
  k draws with replacement with probability ``p_i = ½·R_IBP(x_i)/Σ R_IBP + ½/N`` and losses
  ``R_s/(k·p_s)``, so that the spread losses are an unbiased estimate of every example's
  robust loss (importance sampling; the uniform half keeps ``1/p`` at most ``2N``).

ε warm-up (all three): in epoch e (0-based) ε_e = ε·min(1, e / L), L =
``eps_warmup`` — ε reaches its target in epoch L. :func:`robustlib.train.fit`
drives the per-epoch state through ``start_epoch(epoch, epochs, history) ->
dict`` (recorded in the history) and checkpoints it through ``state_dict``.

Bounds are computed in fp32 with autocast off; a network with BatchNorm must
be bounded in eval mode, so these objectives support BatchNorm-free networks
(the MixTrain/Wong networks) and raise a clear error otherwise.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import bounds
from ..digests import tensor_digest
from ..checks import check_choice, check_eps, check_int, check_real, eval_mode
from .base import Objective, at_least_fp32

RULES = ("adaptive", "schedule", "fixed")
SAMPLING = ("uniform", "worst-ibp", "ibp-weighted")


def importance_draw(score: torch.Tensor, k: int, mix: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """k indices drawn with replacement with p_i = (1 − mix)·s_i/Σs + mix/N (s ≥ 0: a proxy of each example's
    loss), and each draw's scale 1/(k·p_i): Σ_draws scale·f(i) is an unbiased estimate of Σ_i f_i for any f."""
    n = len(score)
    s = score.detach().float().clamp_min(0)
    total = s.sum()
    share = torch.where(total > 0, s / total.clamp_min(torch.finfo(s.dtype).tiny), torch.full_like(s, 1.0 / n))
    p = (1 - mix) * share + mix / n
    idx = torch.multinomial(p, k, replacement=True)
    return idx, 1.0 / (k * p[idx])


def schedule_weight(epoch: int, warmup: int, start: float = 0.1, factor: float = 2.5, every: int = 5,
                    cap: float = 50.0) -> float:
    """w(e) = min(cap, start·factor^⌊max(e − L, 0)/every⌋): the robust-loss weight of the authors' later trainer."""
    return min(cap, start * factor ** (max(epoch - warmup, 0) // every))


def adaptive_alpha(alpha: float, val_clean: list, delta: float, tol: float, lo: float, hi: float) -> float:
    """Our documented α rule: raise α by δ when clean accuracy fell more than ``tol`` below its best, else lower it."""
    if not val_clean:
        return alpha
    fell = val_clean[-1] < max(val_clean) - tol
    return min(hi, max(lo, alpha + delta if fell else alpha - delta))


@torch.no_grad()
def _clean_and_verified(model: nn.Module, data, eps: float) -> tuple:
    """Clean accuracy and symbolic VRA of ``model`` on ``data`` (eval mode, flags restored)."""
    with eval_mode(model):
        x, y = data.x(), data.labels
        ok = model(x).argmax(1) == y
        verified = ok & bounds.verify(model, x, y, eps, method="symbolic")
    return float(ok.float().mean()), float(verified.float().mean())


class CertifiedObjective(Objective):
    """ε warm-up, per-epoch state and cost counts (``symbolic``: samples bounded symbolically) shared by all three."""

    def __init__(self, eps: float, eps_warmup: int = 0, memory_budget: int | None = None, checkpoint: bool = False):
        super().__init__()
        self.spent["symbolic"] = 0
        self.eps_target = check_eps(eps)
        self.eps_warmup = check_int(eps_warmup, "eps_warmup", 0)
        self.memory_budget = memory_budget
        self.checkpoint = bool(checkpoint)   # recompute the bounds' graph in the backward pass (bounds.margin_bounds)
        CertifiedObjective.reset_state(self)   # a subclass completes its own state once its settings are set

    def reset_state(self) -> None:
        """The per-epoch state before epoch 0: ``fit`` calls it when a run starts, so that an objective used for
        an earlier run does not carry its α, w or validation record into the next."""
        self.state = {"eps": self.eps_at(0)}

    def eps_at(self, epoch: int) -> float:
        """ε_e = ε·min(1, e / L): 0 in the first epoch of a warm-up, the target from epoch L on."""
        if self.eps_warmup == 0:
            return self.eps_target
        return self.eps_target * min(1.0, epoch / self.eps_warmup)

    @property
    def eps(self) -> float:
        return self.state["eps"]

    def start_epoch(self, epoch: int, epochs: int, history, model: nn.Module | None = None) -> dict:
        """Set this epoch's ε (and the rule's α or w); the returned dict joins the epoch's history record."""
        self.state["eps"] = self.eps_at(epoch)
        return dict(self.state)

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state.update(state)

    def config(self) -> dict:
        return {"name": self.name, "eps": self.eps_target, "eps_warmup": self.eps_warmup,
                **{k: v for k, v in self.settings().items()}}

    def settings(self) -> dict:
        return {}

    def _robust(self, model, x, y, method: str) -> torch.Tensor:
        """Per-example robust CE on bounds of the ε-box, in the inputs' precision (autocast off)."""
        with torch.autocast(x.device.type, enabled=False):
            return bounds.robust_loss(model, x, y, self.eps, method, memory_budget=self.memory_budget,
                                      checkpoint=self.checkpoint and method == "symbolic")


def _check_batchnorm(model: nn.Module) -> None:
    """Bounds need BatchNorm in eval mode, and fit trains in train mode: refuse before any pass changes its
    statistics."""
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("certified training bounds the network with fixed BatchNorm statistics, but fit trains it "
                         "in train mode: use a network without BatchNorm (mnist_small, mnist_large, cifar_small, "
                         "cifar_large) for IBPTraining, SymbolicTraining and MixTrain")


class IBPTraining(CertifiedObjective):
    """κ·CE(f(x), y) + (1 − κ)·R_IBP(x, y) (Gowal et al. 2019), κ ramped with ε from kappa[0] to kappa[1]."""

    name = "ibp"

    def __init__(self, eps: float, kappa=(1.0, 0.5), eps_warmup: int = 0):
        super().__init__(eps, eps_warmup)
        if len(kappa) != 2 or not all(0 <= check_real(k, "kappa") <= 1 for k in kappa):
            raise ValueError(f"kappa must be a pair (start, end) of numbers in [0, 1], got {kappa!r}")
        self.kappa = (float(kappa[0]), float(kappa[1]))

    def settings(self) -> dict:
        return {"kappa_start": self.kappa[0], "kappa_end": self.kappa[1]}

    def kappa_now(self) -> float:
        ramp = 1.0 if self.eps_target == 0 else self.eps / self.eps_target
        return self.kappa[0] + (self.kappa[1] - self.kappa[0]) * ramp

    def start_epoch(self, epoch, epochs, history, model=None):
        out = super().start_epoch(epoch, epochs, history, model)
        return {**out, "kappa": self.kappa_now()}

    def losses(self, model, x, y):
        kappa = self.kappa_now()
        _check_batchnorm(model)
        clean = F.cross_entropy(at_least_fp32(model(x)), y, reduction="none")
        if kappa == 1.0:   # no bound: the clean pass only (the warm-up's first epoch, kappa=(1, 1))
            self.count(len(y), forward=1, backward=1)
            return clean
        self.count(len(y), forward=3, backward=3)    # clean pass + IBP (centre and radius passes)
        return kappa * clean + (1 - kappa) * self._robust(model, x, y, "interval")


class SymbolicTraining(CertifiedObjective):
    """R_sym(x, y) on every example: training through symbolic-interval bounds of the whole batch."""

    name = "symbolic"

    def __init__(self, eps: float, eps_warmup: int = 0, memory_budget: int | None = None, checkpoint: bool = False):
        super().__init__(eps, eps_warmup, memory_budget, checkpoint)

    def losses(self, model, x, y):
        _check_batchnorm(model)
        self.count(len(y), forward=1, backward=1)    # plus the symbolic bound of every sample:
        self.spent["symbolic"] += len(y)
        return self._robust(model, x, y, "symbolic")


class MixTrain(CertifiedObjective):
    """Clean CE on the batch + symbolic robust CE on k sampled points, mixed per epoch (see the module docstring).

    ``checkpoint`` (recompute the bounds' graph in the backward) is rarely needed here: the graph of k points is
    small where full symbolic training's is not. On MNIST_Large at ε = 0.1 (initial weights, Fashion-MNIST) five
    points' graph brought the process to a peak of about 6 GB (2.3 GB recomputing), so fifty would need some 55 GB,
    and a k = 5 step without recomputation ran 1.14× faster (2-core AMD EPYC, 2026-11-28, one process, three
    batches in two interleaved rounds)."""

    name = "mixtrain"

    def __init__(self, eps: float, k: int = 5, rule: str = "adaptive", *, alpha: float = 0.5,
                 delta: float = 0.05, tol: float = 0.01, alpha_range=(0.1, 0.9), validation=None,
                 n_val: int = 200, p: float = 0.8, eps_warmup: int = 0, sampling: str = "uniform",
                 memory_budget: int | None = None, checkpoint: bool = False):
        super().__init__(eps, eps_warmup, memory_budget, checkpoint)
        self.k = check_int(k, "k", 1)
        self.rule = check_choice(rule, RULES, "rule")
        self.sampling = check_choice(sampling, SAMPLING, "sampling")
        self.alpha0 = check_real(alpha, "alpha", minimum=0.0)
        if self.alpha0 > 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.delta, self.tol = check_real(delta, "delta", minimum=0.0), check_real(tol, "tol", minimum=0.0)
        lo, hi = (check_real(a, "alpha_range") for a in alpha_range)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"alpha_range must satisfy 0 ≤ lo ≤ hi ≤ 1, got {alpha_range!r}")
        self.alpha_range = (lo, hi)
        self.p = check_real(p, "p", minimum=0.0)
        if self.p > 1:
            raise ValueError(f"p (the probability of a robust term per batch) must lie in [0, 1], got {p}")
        if rule == "adaptive":
            if validation is None or len(validation) == 0:
                raise ValueError("rule='adaptive' moves α from validation accuracy and VRA: pass validation= a "
                                 "held-out ImageData (e.g. the last 10% of the training set), or use rule='fixed'")
        self.validation, self.n_val = validation, check_int(n_val, "n_val", 1)
        self.reset_state()

    def reset_state(self) -> None:
        super().reset_state()
        self.state.update(alpha=self.alpha0, weight=schedule_weight(0, self.eps_warmup), val_clean=[])

    def settings(self) -> dict:
        out = {"k": self.k, "rule": self.rule, "alpha": self.alpha0, "delta": self.delta, "tol": self.tol,
               "p": self.p, "sampling": self.sampling}
        if self.rule == "adaptive":   # what moves α: its range and the validation split it is measured on
            v = self.validation
            out.update(alpha_range=list(self.alpha_range), n_val=self.n_val,
                       validation={"n": len(v), "digest": tensor_digest(v.images, v.labels)})
        return out

    @property
    def alpha(self) -> float:
        return self.state["alpha"]

    def start_epoch(self, epoch, epochs, history, model=None):
        out = super().start_epoch(epoch, epochs, history, model)
        if self.rule == "schedule":
            self.state["weight"] = schedule_weight(epoch, self.eps_warmup)
            return {"eps": out["eps"], "weight": self.state["weight"]}
        if self.rule == "fixed" or epoch == 0:
            return {"eps": out["eps"], "alpha": self.alpha}
        clean, vra = _clean_and_verified(model, self.validation.head(self.n_val), self.eps_target)
        self.state["val_clean"] = [*self.state["val_clean"], clean]
        self.state["alpha"] = adaptive_alpha(self.alpha, self.state["val_clean"], self.delta, self.tol,
                                             *self.alpha_range)
        return {"eps": out["eps"], "alpha": self.alpha, "val_clean_acc": clean, "val_vra": vra}

    def _sample(self, model, x, y) -> tuple[torch.Tensor, torch.Tensor | float]:
        """The k sampled indices and the scale of each one's robust loss in the spread per-example losses."""
        n = len(y)
        if self.k > n:
            raise ValueError(f"k = {self.k} points per batch but the batch has only {n} examples; use k ≤ the batch "
                             f"size (drop_last=True avoids a short last batch)")
        if self.sampling in ("worst-ibp", "ibp-weighted"):
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                lo, hi = bounds.input_box(x, self.eps)
                _, u = bounds.margin_bounds(model, lo, hi, y, "interval")
            self.spent["forward"] += 2 * len(y)          # the IBP pass over the batch (centre and radius)
            if self.sampling == "worst-ibp":   # the k points with the largest IBP margin violation (biased: ours)
                return u.amax(1).topk(self.k).indices, n / self.k
            # IBP's robust CE log(1 + Σ_j exp(u_j)) (u_y = 0 is the 1) as the proxy of the symbolic one
            return importance_draw(torch.logsumexp(u, 1), self.k)
        if self.rule == "schedule":        # uniformly with replacement, as the authors' trainer
            return torch.randint(n, (self.k,), device=x.device), n / self.k
        return torch.randperm(n, device=x.device)[:self.k], n / self.k

    def losses(self, model, x, y):
        _check_batchnorm(model)
        clean = F.cross_entropy(at_least_fp32(model(x)), y, reduction="none")
        self.count(len(y), forward=1, backward=1)
        if self.rule == "schedule":
            if float(torch.rand(())) >= self.p:          # CPU draw from the seeded global RNG: no device sync
                return clean
            a, b = 1.0, self.state["weight"]
        else:
            a, b = self.alpha, 1.0 - self.alpha
            if b == 0:
                return clean
        idx, scale = self._sample(model, x, y)
        robust = self._robust(model, x[idx], y[idx], "symbolic")
        self.spent["symbolic"] += len(idx)
        spread = robust.new_zeros(clean.shape).index_add(0, idx, robust * scale)
        return a * clean + b * spread
