"""Gradient attacks: FGSM, PGD (L∞ and L2, restarts, CE/CW, targeted) and the TRADES inner maximisation, with the
projection, the steps and the input checks that the other attacks share (conventions: :mod:`robustlib.attacks`)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import (LOSSES, NORMS, check_choice, check_eps, check_finite, check_int, check_model_input,
                      check_values, check_x, check_y, default_alpha, eval_mode, fgsm_rs_alpha, input_gradients_only,
                      logits_of, values_checked)

_TINY = 1e-12
# L∞ steps clamp x' + α·sign(g) into the box [max(x − ε, 0), min(x + ε, 1)], computed once per attack: three
# elementwise operations a step (sign, add, clamp) where the projection Π of `project` takes seven. The same set, so
# the same x' up to the rounding of x + (x' − x); False restores the projection (the before, for the benchmarks).
BOX_CLAMP = True



def check_attack_args(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, norm: str | None = None,
                  loss: str | None = None) -> None:
    """Checks that need no look at tensor values (no host synchronisation)."""
    check_x(x)
    if y is not None:
        check_y(x, y)
    check_model_input(model, x)
    check_grad_mode()
    if norm is not None:
        check_choice(norm, NORMS, "norm")
    if loss is not None:
        check_choice(loss, LOSSES, "loss")


def check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise ValueError("attacks need input gradients, which torch.inference_mode() forbids; call the attack "
                         "outside inference_mode (torch.no_grad() around it is fine)")


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def in_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """x' in x's dtype, inside the ε-ball around x and [0, 1] exactly.

    In bf16 or fp16 the nearest value to x + δ can lie outside the ball (bf16, ε = 0.01: |δ| up to 0.0117), so
    there the projection is computed in fp64 and every coordinate is rounded towards x: |δ'ᵢ| ≤ |δᵢ|.
    """
    x_adv = x_adv.to(x.dtype)
    if x.dtype not in _LOW_PRECISION:
        return x_adv
    x64 = x.double()
    v = project(x_adv.double(), x64, eps, norm)
    r = v.to(x.dtype)
    away = (r.double() - x64).abs() > (v - x64).abs()   # rounded away from x: the neighbour towards x is inside
    return torch.where(away, torch.nextafter(r, x), r)


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``max_{j≠y} z_j − z_y`` (positive iff the prediction is not y)."""
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.masked_fill(torch.arange(z.shape[1], device=z.device) == y[:, None], float("-inf"))   # no host read
    return others.amax(1) - z_y


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False) -> torch.Tensor:
    """The per-example fp32 quantity an attack MAXIMISES.

    untargeted: CE(z, y) or max_{j≠y} z_j − z_y; targeted (y = target t):
    −CE(z, t) or z_t − max_{j≠t} z_j.
    """
    z = logits.float()
    if loss == "ce":
        ce = F.cross_entropy(z, y, reduction="none")
        return -ce if targeted else ce
    if loss == "cw":
        m = cw_margin(z, y)
        return -m if targeted else m
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(repr(n) for n in LOSSES)}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto {x' : ‖x' − x‖ ≤ ε} and then clip to [0, 1].

    Clipping only moves coordinates towards x (x ∈ [0, 1]), so the result
    stays inside the ε-ball.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / (_flat_norm(delta) + _TINY)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform random point of the ε-ball around x, clipped to [0, 1].

    L∞: δ ~ U[−ε, ε]^d. L2: δ = ε·u^{1/d}·g/‖g‖ with g ~ N(0, I), u ~ U[0, 1]
    (uniform in the ball's volume).
    """
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        g = torch.randn_like(x)
        d = x[0].numel()
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = g / (_flat_norm(g) + _TINY) * (eps * r)
    return (x + delta).clamp(0.0, 1.0)


def _ascent(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """One steepest-ascent step: L∞ x' + α·sign(g); L2 x' + α·g/‖g‖₂."""
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / (_flat_norm(grad) + _TINY)


def pgd_steps(model, x, x_adv, objective, eps, alpha, steps, norm):
    """K steps of projected gradient ascent from ``x_adv`` on ``objective(logits)`` (per-example values):

        x'_{k+1} = Π_{B_ε(x) ∩ [0,1]^d}( x'_k + α · ascent(∇_{x'} objective(f(x'_k))) )
    """
    if steps == 0:  # a start outside the ball (small-noise start with tiny ε) still comes back inside
        return project(x_adv.detach(), x, eps, norm)
    box = ((x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)) if norm == "linf" and BOX_CLAMP else None
    with input_gradients_only(model):
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            grad, = torch.autograd.grad(objective(model(x_adv)).sum(), x_adv)
            if box is not None:
                x_adv = torch.add(x_adv.detach(), grad.sign(), alpha=alpha).clamp_(*box)
            else:
                x_adv = project(_ascent(x_adv.detach(), grad, alpha, norm), x, eps, norm)
    return x_adv.detach()


def _stronger(best, x_adv, model, objective, success):
    """Keep, per example, the stronger of two adversarial batches: a success beats a failure, then the higher loss.

    ``best`` is ``None`` or ``(x', loss, success)``; returns the updated triple.
    """
    with torch.no_grad():
        logits = model(x_adv)
    cand = (x_adv, objective(logits), success(logits))
    if best is None:
        return cand
    better = (cand[2] & ~best[2]) | ((cand[2] == best[2]) & (cand[1] > best[1]))
    pick = better.view(-1, *([1] * (x_adv.dim() - 1)))
    return torch.where(pick, cand[0], best[0]), torch.where(better, cand[1], best[1]), best[2] | cand[2]


def _start(x: torch.Tensor, eps: float, norm: str, random_start) -> torch.Tensor:
    """x'_0: uniform in the ε-ball (True), x itself (False), or clip(x + 0.001·N(0, I)) ("gaussian")."""
    if random_start == "gaussian":
        return (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
    return _random_start(x, eps, norm) if random_start else x.clone()


# ----------------------------------------------------------------------------- attacks

def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
        steps: int = 10, *, norm: str = "linf", restarts: int = 1, random_start: bool | str = True,
        loss: str = "ce", targeted: bool = False, y_target: torch.Tensor | None = None,
        start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) on a batch; returns x' (detached).

    Starting from x'_0 — uniform in the ε-ball around x when ``random_start``
    is True, x itself when False, and clip_[0,1](x + 0.001·N(0, I)) when it is
    ``"gaussian"`` (the start of the TRADES/MART reference code) — K = ``steps``
    iterations of

        L∞:  x'_{k+1} = Π( x'_k + α · sign(∇_{x'} L(f(x'_k), y)) )
        L2:  x'_{k+1} = Π( x'_k + α · ∇L / ‖∇L‖₂ )

    where Π projects onto the ε-ball (clamp for L∞, rescale to radius ε for
    L2) and then clips to [0, 1]. ``alpha`` defaults to α = 2.5·ε/K.

    ``restarts`` > 1 repeats the attack from fresh random starts and keeps,
    PER EXAMPLE, the worst case: a successful x' (misclassified, or classified
    as the target when targeted) beats an unsuccessful one, and among equally
    successful ones the higher loss wins. The first restart uses the same
    random draw a single-restart call would, so with the same seed restarts
    are never weaker than one restart. Each extra restart costs K forward and
    backward passes plus one forward pass to score it; without
    ``random_start`` all restarts would be identical, so only one is run.

    ``start``: a given x'_0 instead (e.g. a perturbation remembered from an earlier attack, as in Zheng et
    al.'s ATTA: a few steps from it reach what many steps from scratch do), projected onto the ball; one run,
    ``random_start`` and ``restarts`` unused.

    ``loss``: ``"ce"`` or ``"cw"`` (margin max_{j≠y} z_j − z_y).
    ``targeted``: move towards the target class instead of away from y —
    the target is ``y_target`` if given, else ``y`` itself is read as the target.

    Cost: restarts·K forward+backward passes (+ restarts forward passes when
    restarts > 1). Raises ValueError for ε < 0, non-finite x, x outside
    [0, 1], labels outside the model's classes, mismatched batch sizes and
    unknown ``norm``/``loss``.
    """
    eps = check_eps(eps)
    check_attack_args(model, x, y, norm=norm, loss=loss)
    steps, restarts = check_int(steps, "steps", 0), check_int(restarts, "restarts", 1)
    alpha = default_alpha(eps, steps) if alpha is None else check_eps(alpha, "alpha")
    if random_start not in (True, False, "gaussian"):
        raise ValueError(f"random_start must be True, False or 'gaussian', got {random_start!r}")
    if y_target is not None:
        if not targeted:
            raise ValueError("y_target was given but targeted=False; pass targeted=True for a targeted attack")
        check_y(x, y_target, "y_target")
    y = y.long()   # any integer dtype: int64 for the losses' gathers
    goal = (y_target.long() if y_target is not None else y) if targeted else y
    check_attack_values(model, x, [y] + ([goal] if targeted else []))
    x = x.detach()
    if start is not None and (not isinstance(start, torch.Tensor) or start.shape != x.shape):
        raise ValueError(f"start must be a tensor x'_0 of x's shape {tuple(x.shape)}, got "
                         f"{tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__}")
    if start is not None:
        check_finite("start", start)
    if x.shape[0] == 0:
        return x.clone()

    def objective(logits):
        return attack_loss(logits, goal, loss, targeted)

    def success(logits):
        pred = logits.argmax(1)
        return pred == goal if targeted else pred != goal

    runs = restarts if random_start and start is None else 1   # else every restart would be the same
    best = None
    with torch.enable_grad(), eval_mode(model):
        for _ in range(runs):
            x0 = _start(x, eps, norm, random_start) if start is None else project(start.detach().to(x), x, eps, norm)
            x_adv = pgd_steps(model, x, x0, objective, eps, alpha, steps, norm)
            if runs == 1:
                return in_budget(x_adv, x, eps, norm)
            best = _stronger(best, x_adv, model, objective, success)
    return in_budget(best[0], x, eps, norm)


def check_attack_values(model: nn.Module, x: torch.Tensor, labels: list) -> None:
    """Value checks of x and the labels (one forward pass on one example, one host sync); off in fit's steps."""
    if not values_checked() or x.shape[0] == 0:
        return
    with torch.no_grad(), eval_mode(model):
        num_classes = logits_of(model, x[:1]).shape[-1]
    check_values(x, labels, num_classes)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, random_start: bool = False,
         alpha: float | None = None, loss: str = "ce", targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015); returns x' (detached).

        x' = clip_[0,1]( x + ε · sign(∇_x L(f(x), y)) )

    With ``random_start`` (FGSM-RS, Wong et al. 2020): δ₀ ~ U[−ε, ε]^d,
    x' = Π( x + δ₀ + α · sign(∇L(f(x + δ₀), y)) ) with α defaulting to 1.25·ε
    and Π the clamp to the ε-ball and to [0, 1]. Without a random start α
    defaults to ε. ``targeted``: ``y`` is read as the target class and the
    step decreases CE to it (or increases its CW margin). One forward and
    one backward pass.
    """
    if alpha is None:
        alpha = fgsm_rs_alpha(check_eps(eps)) if random_start else check_eps(eps)
    return pgd(model, x, y, eps, alpha, 1, norm="linf", restarts=1, random_start=random_start,
               loss=loss, targeted=targeted)


def kl_attack(model: nn.Module, x: torch.Tensor, eps: float, alpha: float | None = None, steps: int = 10,
              *, norm: str = "linf", y: torch.Tensor | None = None) -> torch.Tensor:
    """The TRADES inner maximisation: x' ≈ argmax_{‖x'−x‖≤ε} KL(f(x) ‖ f(x')).

    Start x'₀ = clip_[0,1](x + 0.001·N(0, I)) as in the TRADES reference
    procedure, then K steps of L∞ (or L2) projected ascent with step α
    (default 2.5·ε/K) on Σ_c p_c(x)·(log p_c(x) − log p_c(x')), with p(x)
    computed once (eval mode, no gradient). Cost: K + 1 forward and K
    backward passes. ``y`` (optional) is only validated against the number of
    classes.
    """
    eps, steps = check_eps(eps), check_int(steps, "steps", 0)
    alpha = default_alpha(eps, steps) if alpha is None else check_eps(alpha, "alpha")
    check_attack_args(model, x, y, norm=norm)
    x = x.detach()
    if x.shape[0] == 0:
        return x.clone()
    with torch.enable_grad(), eval_mode(model):
        with torch.no_grad():
            logits_clean = logits_of(model, x)
        check_values(x, [y] if y is not None else [], logits_clean.shape[-1])
        log_p = F.log_softmax(logits_clean.float(), dim=1)

        def objective(logits):
            return F.kl_div(F.log_softmax(logits.float(), dim=1), log_p, reduction="none",
                            log_target=True).sum(1)

        x_adv = pgd_steps(model, x, _start(x, eps, norm, "gaussian"), objective, eps, alpha, steps, norm)
    return in_budget(x_adv, x, eps, norm)
