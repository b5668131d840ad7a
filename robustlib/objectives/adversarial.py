"""Adversarial training objectives: PGD-AT, TRADES, MART and Fast-AT, and their loss formulas."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attacks
from ..checks import NORMS, check_choice, check_eps, check_int, check_real, default_alpha, fgsm_rs_alpha
from .base import Objective, at_least_fp32


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float = 6.0) -> torch.Tensor:
    """Per-example TRADES loss (Zhang et al. 2019), computed in fp32 (fp64 logits: in fp64).

        ℓ_i = CE(f(x_i), y_i) + β · Σ_c p_c(x_i) · (log p_c(x_i) − log p_c(x'_i))

    with p = softmax of the logits; gradients flow through both logits.
    """
    zc, za = at_least_fp32(logits_clean), at_least_fp32(logits_adv)
    log_p, log_q = F.log_softmax(zc, dim=1), F.log_softmax(za, dim=1)
    return F.cross_entropy(zc, y, reduction="none") + beta * _kl_rows(log_p, log_q)


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
              beta: float = 6.0) -> torch.Tensor:
    """Per-example MART loss (Wang et al. 2020), computed in fp32 (fp64 logits: in fp64).

        ℓ_i = BCE(f(x'_i), y_i) + β · KL(p(x_i) ‖ p(x'_i)) · (1 − p_y(x_i)),
        BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')).

    log(1 − p_k*) is evaluated as logsumexp_{j≠k*} z_j − logsumexp_j z_j (no
    1e-12 fudge needed); gradients flow through both logits, including the
    weight 1 − p_y(x).
    """
    zc, za = at_least_fp32(logits_clean), at_least_fp32(logits_adv)
    log_p, log_q = F.log_softmax(zc, dim=1), F.log_softmax(za, dim=1)
    classes = torch.arange(za.shape[1], device=za.device)   # masks by comparison: F.one_hot reads y on a CPU
    k_star = za.masked_fill(classes == y[:, None], float("-inf")).argmax(1)
    not_k = za.masked_fill(classes == k_star[:, None], float("-inf"))
    log_one_minus_pk = torch.logsumexp(not_k, dim=1) - torch.logsumexp(za, dim=1)
    bce = -log_q.gather(1, y[:, None]).squeeze(1) - log_one_minus_pk
    p_y = log_p.gather(1, y[:, None]).squeeze(1).exp()
    return bce + beta * _kl_rows(log_p, log_q) * (1.0 - p_y)


class AdversarialObjective(Objective):
    """Settings every multi-step adversarial objective shares: ε, α (default 2.5·ε/K) and K.

    A subclass splits its loss into two parts that can be called separately
    (what :class:`BulletTrain` needs to spend a different number of attack
    steps on each example and still apply the same formula):

    * :meth:`attack` ``(model, x, y, steps=K, alpha=α) -> x'``, the inner
      maximisation (eval mode, no parameter gradients), costing
      :meth:`attack_cost` passes per example;
    * :meth:`loss_on` ``(model, x, x', y)``, the training forward passes in
      the caller's mode (f(x') and, when the formula needs it, f(x)) followed
      by the per-example formula :meth:`loss_from` ``(logits_clean, logits_adv, y)``,
      costing :meth:`train_cost` passes per example.

    :meth:`losses` is attack → count → loss_on.
    """

    uses_clean = True  # the formula needs f(x) in the caller's mode besides f(x')
    writes_memory = True

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10):
        super().__init__()
        self.eps = check_eps(eps)
        self.steps = check_int(steps, "steps", 1)
        self.alpha = default_alpha(self.eps, self.steps) if alpha is None else check_eps(alpha, "alpha")

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int | None = None,
               alpha: float | None = None) -> torch.Tensor:
        """x' from ``steps`` (default K) ascent steps of size ``alpha`` (default α); counts nothing."""
        raise NotImplementedError

    def loss_from(self, logits_clean: torch.Tensor | None, logits_adv: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
        """The per-example loss formula, fp32; ``logits_clean`` is None when :attr:`uses_clean` is False."""
        raise NotImplementedError

    def attack_cost(self, steps: int | None = None) -> tuple[int, int]:
        """(forward, backward) passes per example of :meth:`attack` with ``steps`` (default K) steps."""
        steps = self.steps if steps is None else steps
        return steps, steps

    def train_cost(self) -> tuple[int, int]:
        """(forward, backward) passes per example of :meth:`loss_on`."""
        return (2, 2) if self.uses_clean else (1, 1)

    def loss_on(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training passes in the caller's mode — f(x) first when needed, then f(x') — and the formula."""
        logits_clean = model(x) if self.uses_clean else None
        return self.loss_from(logits_clean, model(x_adv), y)

    def losses(self, model, x, y):
        x_adv = self.attack(model, x, y)
        self.remember(x, x_adv)
        (fa, ba), (ft, bt) = self.attack_cost(), self.train_cost()
        self.count(len(y), forward=fa + ft, backward=ba + bt)
        return self.loss_on(model, x, x_adv, y)


class PGDAT(AdversarialObjective):
    """PGD adversarial training (Madry et al. 2018): ℓ_i = CE(f(x'_i), y_i).

    x' = L∞ (or L2) PGD-K on CE with a uniform random start in the ε-ball,
    step α (default 2.5·ε/K; the CIFAR recipe is ε = 8/255, α = 2/255, K = 10),
    crafted with the model in eval mode; the loss is then computed in the
    caller's mode (train mode inside ``fit``). Cost per example: K + 1
    forward and K + 1 backward passes.
    """

    name = "pgd-at"
    uses_clean = False

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, norm: str = "linf"):
        super().__init__(eps, alpha, steps)
        self.norm = check_choice(norm, NORMS, "norm")

    def attack(self, model, x, y, steps=None, alpha=None):
        return attacks.pgd(model, x, y, self.eps, self.alpha if alpha is None else alpha,
                           self.steps if steps is None else steps, norm=self.norm, random_start=True)

    def loss_from(self, logits_clean, logits_adv, y):
        return F.cross_entropy(at_least_fp32(logits_adv), y, reduction="none")


class TRADES(AdversarialObjective):
    """TRADES (Zhang et al. 2019): ℓ_i = CE(f(x_i), y_i) + β·KL(f(x_i) ‖ f(x'_i)), see :func:`trades_loss`.

    x' maximises the KL term: start x + 0.001·N(0, I), then K L∞ steps of
    size α (default 2.5·ε/K) in eval mode (:func:`robustlib.attacks.kl_attack`);
    the loss uses the caller's mode. β = 6 on CIFAR-10 (ε = 8/255, α = 2/255,
    K = 10). Cost per example: K + 3 forward (clean target, K steps, clean
    and adversarial training passes) and K + 2 backward passes.
    """

    name = "trades"

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, beta: float = 6.0):
        super().__init__(eps, alpha, steps)
        self.beta = check_real(beta, "beta", minimum=0.0)

    def attack(self, model, x, y, steps=None, alpha=None):
        return attacks.kl_attack(model, x, self.eps, self.alpha if alpha is None else alpha,
                                 self.steps if steps is None else steps, y=y)

    def attack_cost(self, steps=None):
        steps = self.steps if steps is None else steps
        return steps + 1, steps  # + the clean forward pass that fixes the KL target p(x)

    def loss_from(self, logits_clean, logits_adv, y):
        return trades_loss(logits_clean, logits_adv, y, self.beta)


class MART(AdversarialObjective):
    """MART (Wang et al. 2020): BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)), see :func:`mart_loss`.

    x' = L∞ PGD-K on CE from x + 0.001·N(0, I) (the MART reference start),
    step α (default 2.5·ε/K), crafted in eval mode; the loss uses the
    caller's mode. λ = β = 5–6 in the paper. Cost per example: K + 2 forward
    and K + 2 backward passes.
    """

    name = "mart"

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, beta: float = 6.0):
        super().__init__(eps, alpha, steps)
        self.beta = check_real(beta, "beta", minimum=0.0)

    def attack(self, model, x, y, steps=None, alpha=None):
        return attacks.pgd(model, x, y, self.eps, self.alpha if alpha is None else alpha,
                           self.steps if steps is None else steps, random_start="gaussian")

    def loss_from(self, logits_clean, logits_adv, y):
        return mart_loss(logits_clean, logits_adv, y, self.beta)


class FastAT(Objective):
    """Fast AT / FGSM-RS (Wong et al. 2020): ℓ_i = CE(f(x'_i), y_i) with one FGSM step.

    δ₀ ~ U[−ε, ε]^d, x' = clip_[0,1](x + clamp_[−ε,ε](δ₀ + α·sign(∇_x CE(f(x + δ₀), y))))
    with α = 1.25·ε by default, crafted in eval mode; the loss uses the
    caller's mode. It is meant to be paired with the cyclic learning rate of
    the paper: ``fit(model, data, FastAT(eps), epochs=..., lr=0.2,
    schedule="onecycle")`` (linear warm-up to ``lr`` over the first 40% of
    the run, then linear decay to 0). Cost per example: 2 forward and 2
    backward passes.
    """

    name = "fast-at"

    def __init__(self, eps: float, alpha: float | None = None):
        super().__init__()
        self.eps = check_eps(eps)
        self.alpha = fgsm_rs_alpha(self.eps) if alpha is None else check_eps(alpha, "alpha")

    def losses(self, model, x, y):
        x_adv = attacks.fgsm(model, x, y, self.eps, random_start=True, alpha=self.alpha)
        self.count(len(y), forward=2, backward=2)
        return F.cross_entropy(at_least_fp32(model(x_adv)), y, reduction="none")
