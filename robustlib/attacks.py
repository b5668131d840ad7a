"""White-box attacks on batched images: FGSM, PGD (L∞ and L2) and AutoAttack glue.

Notation: x ∈ [0, 1]^d a clean image with label y, f the network, z = f(x)
its logits, ε the perturbation budget, α the step size and K the number of
steps. An attack returns x' with ‖x' − x‖_p ≤ ε and x' ∈ [0, 1]^d that tries
to maximise a loss L(f(x'), y):

* ``"ce"``: cross-entropy, L = −log softmax(z)_y;
* ``"cw"``: Carlini–Wagner margin, L = max_{j≠y} z_j − z_y
  (> 0 exactly when x' is misclassified).

Targeted attacks (target class t) maximise −CE(z, t), resp. the margin
z_t − max_{j≠t} z_j.

Conventions shared by every attack here:

* gradients are taken with :func:`torch.autograd.grad` with respect to the
  input only, so no parameter's ``.grad`` is created or changed;
* the network runs in eval mode while the attack is crafted (BatchNorm uses,
  and never updates, its running statistics; dropout is off) and every
  module's train/eval flag is restored afterwards — the Madry/TRADES
  practice for adversarial training is to craft x' in eval mode and compute
  the training loss in train mode, which is what :mod:`robustlib.objectives`
  does;
* an attack runs in the caller's autocast state (bf16 on CUDA inside
  :func:`robustlib.train.fit`, fp32 otherwise); losses are computed in fp32
  and the returned x' has the dtype of x;
* the step loop never synchronises with the host; inputs are validated once,
  after the first forward pass (one synchronisation per call).

Importing this module registers ``"fgsm"``, the family ``"pgd-K"`` and
``"autoattack"`` in :data:`robustlib.evaluate.ATTACKS`.
"""
from __future__ import annotations

import contextvars
import math
import numbers
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .evaluate import register_attack, register_attack_family

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
_TINY = 1e-12

__all__ = ["fgsm", "pgd", "interval_attack", "trusted_inputs", "autoattack", "kl_attack", "attack_loss", "cw_margin", "eval_mode",
           "check_inputs", "NORMS", "LOSSES"]


# ----------------------------------------------------------------------------- helpers

@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode inside the block, then restore every module's own flag.

    Flags are saved per module, so a model whose parts were deliberately in
    different modes (e.g. frozen BatchNorm inside a training model) comes
    back exactly as it was.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _check_eps(eps, name: str = "eps") -> float:
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = float(eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {eps!r}")
    if eps < 0:
        raise ValueError(f"{name} must be ≥ 0 (a perturbation budget), got {eps}")
    return float(eps)


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N×…, e.g. N×C×H×W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
                         f"(uint8 images: use ImageData.x(), which divides by 255)")


def _check_y(x: torch.Tensor, y, what: str = "y") -> None:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"batch size mismatch: x has {x.shape[0]} examples (shape {tuple(x.shape)}) "
                         f"but {what} has shape {tuple(y.shape)}; expected shape ({x.shape[0]},)")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{what} must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but {what} is on {y.device}; put both on the model's device")


def _check_static(x: torch.Tensor, y: torch.Tensor | None, *, norm: str | None = None,
                  loss: str | None = None) -> None:
    """Checks that need no look at tensor values (no host synchronisation)."""
    _check_x(x)
    if y is not None:
        _check_y(x, y)
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(repr(n) for n in NORMS)}")
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(repr(n) for n in LOSSES)}")


_VALIDATE = contextvars.ContextVar("robustlib_attack_value_checks", default=True)


@contextmanager
def trusted_inputs():
    """Skip the per-call value checks (one host synchronisation each) inside the block.

    :func:`robustlib.train.fit` uses it after its first batch: its images come
    from uint8 data (finite, in [0, 1]) and the first batch has checked the labels.
    """
    token = _VALIDATE.set(False)
    try:
        yield
    finally:
        _VALIDATE.reset(token)


def _check_values(x: torch.Tensor, labels: list[torch.Tensor], num_classes: int) -> None:
    """Value checks (NaN/inf, range of x, label range), with a single host synchronisation."""
    if not _VALIDATE.get():
        return
    flags = [~torch.isfinite(x).all(), x.amin() < 0, x.amax() > 1]
    for lab in labels:
        flags += [(lab < 0).any(), (lab >= num_classes).any()]
    flags = torch.stack(flags).tolist()
    if flags[0]:
        raise ValueError("x contains NaN or inf values; attacks need finite images in [0, 1]")
    if flags[1] or flags[2]:
        lo, hi = float(x.amin()), float(x.amax())
        raise ValueError(f"x must lie in [0, 1] (un-normalised images), but its values span "
                         f"[{lo:.4g}, {hi:.4g}]; put any normalisation inside the model")
    for i, lab in enumerate(labels):
        if flags[3 + 2 * i] or flags[4 + 2 * i]:
            what = "labels" if i == 0 else "target labels"
            raise ValueError(f"{what} out of range: the model has {num_classes} outputs (classes "
                             f"0…{num_classes - 1}), but got values in [{int(lab.min())}, {int(lab.max())}]")


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> None:
    """Validate an attack's inputs (runs one forward pass to learn the number of classes)."""
    _check_eps(eps)
    _check_static(x, y)
    with torch.no_grad(), eval_mode(model):
        num_classes = model(x[:1]).shape[-1]
    _check_values(x, [y], num_classes)


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``max_{j≠y} z_j − z_y`` (positive iff the prediction is not y)."""
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
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


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
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


def _iterate(model, x, x_adv, objective, eps, alpha, steps, norm, first_logits=None):
    """K steps of projected gradient ascent on ``objective(logits) -> per-example values``.

    ``first_logits`` may hold the (graph-carrying) logits of the initial
    ``x_adv`` (already computed for validation) so that pass is not repeated.
    """
    if steps == 0:  # a start outside the ball (small-noise start with tiny ε) still comes back inside
        return _project(x_adv.detach(), x, eps, norm)
    for k in range(steps):
        if k == 0 and first_logits is not None:
            logits = first_logits
        else:
            x_adv = x_adv.detach().requires_grad_(True)
            logits = model(x_adv)
        grad, = torch.autograd.grad(objective(logits).sum(), x_adv)
        x_adv = _project(_ascent(x_adv.detach(), grad, alpha, norm), x, eps, norm)
    return x_adv.detach()


def _default_alpha(eps: float, steps: int) -> float:
    return 2.5 * eps / max(steps, 1)


# ----------------------------------------------------------------------------- attacks

def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
        steps: int = 10, *, norm: str = "linf", restarts: int = 1, random_start: bool | str = True,
        loss: str = "ce", targeted: bool = False, y_target: torch.Tensor | None = None) -> torch.Tensor:
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

    ``loss``: ``"ce"`` or ``"cw"`` (margin max_{j≠y} z_j − z_y).
    ``targeted``: move towards the target class instead of away from y —
    the target is ``y_target`` if given, else ``y`` itself is read as the target.

    Cost: restarts·K forward+backward passes (+ restarts forward passes when
    restarts > 1). Raises ValueError for ε < 0, non-finite x, x outside
    [0, 1], labels outside the model's classes, mismatched batch sizes and
    unknown ``norm``/``loss``.
    """
    eps = _check_eps(eps)
    _check_static(x, y, norm=norm, loss=loss)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an integer ≥ 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise ValueError(f"restarts must be an integer ≥ 1, got {restarts!r}")
    alpha = _default_alpha(eps, steps) if alpha is None else _check_eps(alpha, "alpha")
    if random_start not in (True, False, "gaussian"):
        raise ValueError(f"random_start must be True, False or 'gaussian', got {random_start!r}")
    if y_target is not None:
        if not targeted:
            raise ValueError("y_target was given but targeted=False; pass targeted=True for a targeted attack")
        _check_y(x, y_target, "y_target")
    target = y_target if y_target is not None else y
    goal = target if targeted else y
    x = x.detach()
    if x.shape[0] == 0:
        return x.clone()

    def objective(logits):
        return attack_loss(logits, goal, loss, targeted)

    def success(logits):
        pred = logits.argmax(1)
        return pred == goal if targeted else pred != goal

    n_runs = restarts if random_start else 1
    best = best_loss = best_ok = None
    with torch.enable_grad(), eval_mode(model):
        for r in range(n_runs):
            if random_start == "gaussian":
                x0 = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
            elif random_start:
                x0 = _random_start(x, eps, norm)
            else:
                x0 = x.clone()
            x0.requires_grad_(True)
            first = model(x0)
            if r == 0:
                _check_values(x, [y] + ([target] if targeted else []), first.shape[-1])
            if steps == 0:
                first = None
            x_adv = _iterate(model, x, x0, objective, eps, alpha, steps, norm, first_logits=first)
            if n_runs == 1:
                return x_adv.to(x.dtype)
            with torch.no_grad():
                logits = model(x_adv)
                cur_loss, cur_ok = objective(logits), success(logits)
            if best is None:
                best, best_loss, best_ok = x_adv, cur_loss, cur_ok
                continue
            better = (cur_ok & ~best_ok) | ((cur_ok == best_ok) & (cur_loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(better, cur_loss, best_loss)
            best_ok = best_ok | cur_ok
    return best.to(x.dtype)


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
        alpha = 1.25 * _check_eps(eps) if random_start else _check_eps(eps)
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
    eps = _check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an integer ≥ 0, got {steps!r}")
    alpha = _default_alpha(eps, steps) if alpha is None else _check_eps(alpha, "alpha")
    _check_static(x, y, norm=norm)
    x = x.detach()
    if x.shape[0] == 0:
        return x.clone()
    with torch.enable_grad(), eval_mode(model):
        with torch.no_grad():
            logits_clean = model(x)
        _check_values(x, [y] if y is not None else [], logits_clean.shape[-1])
        log_p = F.log_softmax(logits_clean.float(), dim=1)

        def objective(logits):
            return F.kl_div(F.log_softmax(logits.float(), dim=1), log_p, reduction="none",
                            log_target=True).sum(1)

        x0 = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
        x_adv = _iterate(model, x, x0, objective, eps, alpha, steps, norm)
    return x_adv.to(x.dtype)


# ----------------------------------------------------------------------------- AutoAttack glue

def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "Linf",
               version: str = "standard", seed: int = 0) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through torchattacks' maintained implementation.

    Runs ``torchattacks.AutoAttack(model, norm, eps, version, n_classes, seed)``
    (standard: APGD-CE, APGD-T, FAB-T, Square) with the model in eval mode,
    in fp32 (autocast off), on the model's device; returns x' on x's device.
    torchattacks reseeds the global RNG and FAB calls ``.backward()``: here
    the caller's RNG state is preserved and parameters are excluded from
    gradients during the call, so no ``.grad`` changes. Cost is high (about
    0.7 s per image for a small CNN on a CPU).
    """
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError("AutoAttack needs torchattacks: pip install --no-deps torchattacks==3.5.1") from e
    eps = _check_eps(eps)
    _check_static(x, y)
    x = x.detach()
    if x.shape[0] == 0:
        return x.clone()
    params = list(model.parameters())
    device = params[0].device if params else x.device
    with torch.no_grad(), eval_mode(model):
        num_classes = model(x[:1].to(device)).shape[-1]
    _check_values(x, [y], num_classes)
    if eps == 0 or len(x) == 0:
        return x.clone()
    rng_devices = [device] if device.type == "cuda" else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=rng_devices), eval_mode(model), \
                torch.autocast(device.type, enabled=False):
            atk = torchattacks.AutoAttack(model, norm=norm, eps=eps, version=version,
                                          n_classes=num_classes, seed=seed)
            x_adv = atk(x.float().to(device), y.to(device))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return x_adv.detach().to(device=x.device, dtype=x.dtype)


def interval_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
                    steps: int = 20, *, restarts: int = 1, interval_steps: int = 5, box_start: float = 0.01,
                    box_growth: float = 3.0, max_growth: int = 5, memory_budget: int | None = None) -> torch.Tensor:
    """Interval-gradient attack (MixTrain paper; L∞); returns x' (detached).

    Per restart: PGD-K from a random start (the same draw as :func:`pgd`).
    Then, for every point still classified correctly, ``interval_steps`` times:

    1. take the box ``[x' − w, x' + w] ∩ [0, 1]`` with ``w = box_start·ε`` and
       grow it (``w ← box_growth·w``, at most ``max_growth`` times, never past ε)
       until the symbolic upper bound of some wrong-class margin ``z_j − z_y``
       is positive — a violation may lie in the box;
    2. step ``x' ← x' + w · sign(A_j)``, where ``A_j`` are that margin's
       symbolic input coefficients (:func:`robustlib.bounds.margin_coefficients`):
       the slope of the margin's linear form over the whole box, an
       "interval gradient" that sees past the local gradient;
    3. project onto the ε-ball around x and [0, 1], then run PGD-K from x'
       (no random start).

    Each point keeps the first misclassified x' found (PGD's own result
    included, so the attack is never weaker than PGD from the same seed).
    Cost per interval step: up to ``max_growth + 1`` symbolic bound
    computations plus K forward/backward passes, on unbroken points only.
    """
    from . import bounds  # bounds does not import attacks; imported here to keep module import light

    eps = _check_eps(eps)
    _check_static(x, y, norm="linf", loss="ce")
    if interval_steps < 0 or max_growth < 0 or box_start <= 0 or box_growth <= 1:
        raise ValueError("need interval_steps ≥ 0, max_growth ≥ 0, box_start > 0 and box_growth > 1")
    alpha = _default_alpha(eps, steps) if alpha is None else _check_eps(alpha, "alpha")
    x = x.detach()
    best = x.clone()
    if x.shape[0] == 0 or eps == 0:
        return best

    def wrong(xs, ys):
        with torch.no_grad():
            return model(xs).argmax(1) != ys

    def ce(ys):
        return lambda logits: attack_loss(logits, ys, "ce", False)

    view = (-1,) + (1,) * (x.dim() - 1)
    with eval_mode(model):
        done = wrong(x, y)
        for _ in range(restarts):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x_adv = pgd(model, x, y, eps, alpha, steps)[todo]   # the same random draw as a plain pgd call
            xs, ys = x[todo], y[todo]
            for _ in range(interval_steps):
                hit = wrong(x_adv, ys)
                if hit.all():
                    break
                w = torch.full((len(todo),), box_start * eps, device=x.device, dtype=x.dtype)
                step = torch.zeros_like(xs)
                open_ = (~hit).nonzero().squeeze(1)       # points still searching for a box
                for g in range(max_growth + 1):
                    wv = w[open_].view(view)
                    lo = (x_adv[open_] - wv).clamp(0, 1)
                    hi = (x_adv[open_] + wv).clamp(0, 1)
                    with torch.no_grad():
                        _, upper, coef = bounds.margin_coefficients(model, lo, hi, ys[open_],
                                                                    memory_budget=memory_budget)
                    upper = upper.scatter(1, ys[open_, None], float("-inf"))
                    best_u, j = upper.max(1)
                    take = (best_u > 0) | (g == max_growth)   # a violation may be inside, or the cap is reached
                    pick = coef[torch.arange(len(open_), device=x.device), j]
                    step[open_[take]] = pick[take].sign() * wv[take]
                    open_ = open_[~take]
                    if len(open_) == 0:
                        break
                    w[open_] = (w[open_] * box_growth).clamp(max=eps)
                moved = _project(x_adv + step, xs, eps, "linf")
                with torch.enable_grad():
                    moved = _iterate(model, xs, moved, ce(ys), eps, alpha, steps, "linf")
                x_adv = torch.where(hit.view(view), x_adv, moved)
            hit = wrong(x_adv, ys)
            best[todo[hit]] = x_adv[hit]
            done[todo[hit]] = True
    return best


# ----------------------------------------------------------------------------- registry

def _fgsm_attack(model, x, y, eps):
    return fgsm(model, x, y, eps)


def _pgd_family(steps: int):
    """``pgd-K``: L∞ PGD, K steps, α = 2.5·ε/K, one random restart, CE loss."""
    if steps < 1:
        raise ValueError(f"pgd-K needs K ≥ 1 steps, got pgd-{steps}")

    def attack(model, x, y, eps):
        return pgd(model, x, y, eps, alpha=2.5 * eps / steps, steps=steps, norm="linf", restarts=1,
                   random_start=True, loss="ce")

    attack.__name__ = f"pgd_{steps}"
    return attack


def _autoattack(model, x, y, eps):
    return autoattack(model, x, y, eps)


register_attack("fgsm", _fgsm_attack)
register_attack_family("pgd", _pgd_family)
register_attack("autoattack", _autoattack)
register_attack("interval", lambda model, x, y, eps: interval_attack(model, x, y, eps))
