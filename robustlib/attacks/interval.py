"""The interval-gradient attack of the MixTrain paper: PGD, then steps along symbolic interval gradients."""
from __future__ import annotations

import torch

from .. import bounds
from ..checks import check_eps, check_int, default_alpha, eval_mode
from .gradient import attack_loss, check_attack_args, check_attack_values, in_budget, pgd, pgd_steps, project


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
    eps, steps = check_eps(eps), check_int(steps, "steps", 0)
    restarts, interval_steps = check_int(restarts, "restarts", 1), check_int(interval_steps, "interval_steps", 0)
    max_growth = check_int(max_growth, "max_growth", 0)
    if not (box_start > 0 and box_growth > 1):
        raise ValueError(f"need box_start > 0 and box_growth > 1, got {box_start} and {box_growth}")
    alpha = default_alpha(eps, steps) if alpha is None else check_eps(alpha, "alpha")
    check_attack_args(model, x, y, norm="linf", loss="ce")
    y = y.long()
    check_attack_values(model, x, [y])
    x = x.detach()
    best = x.clone()
    if x.shape[0] == 0 or eps == 0:
        return best

    def wrong(xs, ys):
        with torch.no_grad():
            return model(xs).argmax(1) != ys

    with eval_mode(model):
        done = wrong(x, y)
        for _ in range(restarts):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x_adv = pgd(model, x, y, eps, alpha, steps)[todo]   # the same random draw as a plain pgd call
            xs, ys = x[todo], y[todo]

            def ce(logits, _ys=ys):
                return attack_loss(logits, _ys, "ce", False)

            for _ in range(interval_steps):
                hit = wrong(x_adv, ys)
                if hit.all():
                    break
                step = _interval_step(bounds, model, x_adv, ys, ~hit, eps, box_start, box_growth, max_growth,
                                      memory_budget)
                moved = project(x_adv + step, xs, eps, "linf")
                with torch.enable_grad():
                    moved = pgd_steps(model, xs, moved, ce, eps, alpha, steps, "linf")
                x_adv = torch.where(hit.view(-1, *([1] * (x.dim() - 1))), x_adv, moved)
            hit = wrong(x_adv, ys)
            best[todo[hit]] = x_adv[hit]
            done[todo[hit]] = True
    return in_budget(best, x, eps, "linf")


def _interval_step(bounds, model, x_adv, y, open_mask, eps, box_start, box_growth, max_growth, memory_budget):
    """The interval attack's move for the points in ``open_mask``: grow a box until it may hold a violation.

    Per point: ``w = box_start·ε``; while no wrong-class margin ``z_j − z_y`` has a positive symbolic
    upper bound on ``[x' − w, x' + w] ∩ [0, 1]`` (and fewer than ``max_growth`` growths),
    ``w ← min(box_growth·w, ε)``. The step is ``w · sign(A_j)`` for the margin j with the largest upper
    bound, ``A_j`` its symbolic input coefficients. Points outside ``open_mask`` get a zero step.
    """
    view = (-1,) + (1,) * (x_adv.dim() - 1)
    w = torch.full((len(x_adv),), box_start * eps, device=x_adv.device, dtype=x_adv.dtype)
    step = torch.zeros_like(x_adv)
    open_ = open_mask.nonzero().squeeze(1)            # points still searching for a box
    for g in range(max_growth + 1):
        wv = w[open_].view(view)
        lo, hi = (x_adv[open_] - wv).clamp(0, 1), (x_adv[open_] + wv).clamp(0, 1)
        with torch.no_grad():
            _, upper, coef = bounds.margin_coefficients(model, lo, hi, y[open_], memory_budget=memory_budget)
        best_u, j = upper.scatter(1, y[open_, None], float("-inf")).max(1)
        take = (best_u > 0) | (g == max_growth)      # a violation may be inside, or the cap is reached
        pick = coef[torch.arange(len(open_), device=x_adv.device), j]
        step[open_[take]] = pick[take].sign() * wv[take]
        open_ = open_[~take]
        if len(open_) == 0:
            break
        w[open_] = (w[open_] * box_growth).clamp(max=eps)
    return step
