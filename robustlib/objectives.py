"""Training objectives: callables that turn a batch into per-example losses.

An objective is called as ``objective(model, x, y, weights=None)`` and
returns a tensor of N per-example losses ℓ_i, multiplied by the per-example
weights w_i when they are given (what a pruning selector chooses);
:func:`robustlib.train.fit` minimises their mean ``Σ_i w_i ℓ_i / N``. Objectives that attack generate their own adversarial
examples inside the call. Each objective counts what it spent in
``objective.spent`` (examples seen, forward and backward passes through the
network per example — attack steps included); ``fit`` records it per epoch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks
from .checks import NORMS, check_choice, check_eps, check_int, check_real, default_alpha, fgsm_rs_alpha


class Objective:
    """Base class: subclasses implement :meth:`losses` and call :meth:`count`."""

    name = "objective"

    def __init__(self):
        self.spent = {"examples": 0, "forward": 0, "backward": 0}

    def count(self, n: int, forward: int, backward: int) -> None:
        """Record n examples that each cost ``forward``/``backward`` network passes."""
        self.spent["examples"] += n
        self.spent["forward"] += n * forward
        self.spent["backward"] += n * backward

    def reset_spent(self) -> dict:
        """Return the counts since the last reset and start again from zero."""
        out, self.spent = self.spent, {k: 0 for k in self.spent}
        return out

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example losses w_i·ℓ_i (ℓ_i when ``weights`` is None), in float32."""
        losses = self.losses(model, x, y).float()
        if weights is None:
            return losses
        if weights.shape != losses.shape:
            raise ValueError(f"weights must have shape {tuple(losses.shape)} (one per example), "
                             f"got {tuple(weights.shape)}")
        return losses * weights

    def config(self) -> dict:
        """The objective's settings, for results records."""
        return {"name": self.name, **{k: v for k, v in vars(self).items()
                                      if k != "spent" and isinstance(v, (int, float, str, bool))}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Standard(Objective):
    """Standard training: ℓ_i = CE(f(x_i), y_i)."""

    name = "standard"

    def losses(self, model, x, y):
        self.count(len(y), forward=1, backward=1)
        return F.cross_entropy(model(x), y, reduction="none")


class Custom(Objective):
    """Any function ``fn(model, x, y) -> per-example losses (N,)`` as an objective (counts examples only).

    ``fit`` wraps a plain function passed as the objective in this class.
    """

    def __init__(self, fn, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise ValueError(f"Custom needs a function fn(model, x, y) -> per-example losses, got {fn!r}")
        self.fn, self.name = fn, name or getattr(fn, "__name__", "custom")

    def losses(self, model, x, y):
        out = self.fn(model, x, y)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the objective {self.name!r} must return one loss per example, shape "
                             f"({len(y)},), got {shape}; use reduction='none' in the loss function")
        self.count(len(y), forward=0, backward=0)
        return out


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float = 6.0) -> torch.Tensor:
    """Per-example TRADES loss (Zhang et al. 2019), computed in fp32.

        ℓ_i = CE(f(x_i), y_i) + β · Σ_c p_c(x_i) · (log p_c(x_i) − log p_c(x'_i))

    with p = softmax of the logits; gradients flow through both logits.
    """
    zc, za = logits_clean.float(), logits_adv.float()
    log_p, log_q = F.log_softmax(zc, dim=1), F.log_softmax(za, dim=1)
    return F.cross_entropy(zc, y, reduction="none") + beta * _kl_rows(log_p, log_q)


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
              beta: float = 6.0) -> torch.Tensor:
    """Per-example MART loss (Wang et al. 2020), computed in fp32.

        ℓ_i = BCE(f(x'_i), y_i) + β · KL(p(x_i) ‖ p(x'_i)) · (1 − p_y(x_i)),
        BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')).

    log(1 − p_k*) is evaluated as logsumexp_{j≠k*} z_j − logsumexp_j z_j (no
    1e-12 fudge needed); gradients flow through both logits, including the
    weight 1 − p_y(x).
    """
    zc, za = logits_clean.float(), logits_adv.float()
    log_p, log_q = F.log_softmax(zc, dim=1), F.log_softmax(za, dim=1)
    true = F.one_hot(y, za.shape[1]).bool()
    k_star = za.masked_fill(true, float("-inf")).argmax(1)
    not_k = za.masked_fill(F.one_hot(k_star, za.shape[1]).bool(), float("-inf"))
    log_one_minus_pk = torch.logsumexp(not_k, dim=1) - torch.logsumexp(za, dim=1)
    bce = -log_q.gather(1, y[:, None]).squeeze(1) - log_one_minus_pk
    p_y = log_p.gather(1, y[:, None]).squeeze(1).exp()
    return bce + beta * _kl_rows(log_p, log_q) * (1.0 - p_y)


class _Adversarial(Objective):
    """Settings every multi-step adversarial objective shares: ε, α (default 2.5·ε/K) and K."""

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10):
        super().__init__()
        self.eps = check_eps(eps)
        self.steps = check_int(steps, "steps", 1)
        self.alpha = default_alpha(self.eps, self.steps) if alpha is None else check_eps(alpha, "alpha")


class PGDAT(_Adversarial):
    """PGD adversarial training (Madry et al. 2018): ℓ_i = CE(f(x'_i), y_i).

    x' = L∞ (or L2) PGD-K on CE with a uniform random start in the ε-ball,
    step α (default 2.5·ε/K; the CIFAR recipe is ε = 8/255, α = 2/255, K = 10),
    crafted with the model in eval mode; the loss is then computed in the
    caller's mode (train mode inside ``fit``). Cost per example: K + 1
    forward and K + 1 backward passes.
    """

    name = "pgd-at"

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, norm: str = "linf"):
        super().__init__(eps, alpha, steps)
        self.norm = check_choice(norm, NORMS, "norm")

    def losses(self, model, x, y):
        x_adv = attacks.pgd(model, x, y, self.eps, self.alpha, self.steps, norm=self.norm, random_start=True)
        self.count(len(y), forward=self.steps + 1, backward=self.steps + 1)
        return F.cross_entropy(model(x_adv).float(), y, reduction="none")


class TRADES(_Adversarial):
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

    def losses(self, model, x, y):
        x_adv = attacks.kl_attack(model, x, self.eps, self.alpha, self.steps, y=y)
        self.count(len(y), forward=self.steps + 3, backward=self.steps + 2)
        return trades_loss(model(x), model(x_adv), y, self.beta)


class MART(_Adversarial):
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

    def losses(self, model, x, y):
        x_adv = attacks.pgd(model, x, y, self.eps, self.alpha, self.steps, random_start="gaussian")
        self.count(len(y), forward=self.steps + 2, backward=self.steps + 2)
        return mart_loss(model(x), model(x_adv), y, self.beta)


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
        return F.cross_entropy(model(x_adv).float(), y, reduction="none")
