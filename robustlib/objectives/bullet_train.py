"""Bullet-Train: attack steps spent per example by its distance to the decision boundary."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn

from .. import attacks
from ..checks import (check_eps, check_int, check_model_input, check_values, check_x, check_y, default_alpha,
                     eval_mode)
from .adversarial import MART, PGDAT, TRADES
from .base import Objective


OUTLIER, ROBUST, BOUNDARY = 0, 1, 2
GROUPS = ("outlier", "robust", "boundary")   # names of the group ids 0, 1, 2
OUTLIER_RULES = ("misclassified", None)


class BulletTrain(Objective):
    r"""Bullet-Train (Hua et al., NeurIPS 2021): spend attack steps per example by its distance to the boundary.

    Wraps a :class:`PGDAT`, :class:`TRADES` or :class:`MART` objective ``base``
    (ε, α, K and the loss formula are the base's). Per batch, with the model
    in eval mode and no gradients, every example gets a group from the CW
    margin m(x, y) = z_y − max_{j≠y} z_j, z = f(x) (m > 0 iff f classifies
    x as y):

    * **outlier** (``outlier="misclassified"``): argmax_j f(x_i)_j ≠ y_i —
      misclassified even on the clean input;
    * **robust**: classified correctly and
      min_{p=1…P} m(clip_[0,1](x_i + δ_p), y_i) ≥ κ, with P = ``probes``
      random perturbations δ_p of size σ = ``sigma`` (default ε/2): uniform in
      [−σ, σ]^d for an L∞ base, uniform on the sphere ‖δ‖₂ = σ for an L2 one,
      and κ = ``robust_margin`` (a logit margin; κ = 2 means the true class
      stays e² ≈ 7.4× more likely than any other at every probe);
    * **boundary**: the rest.

    It then spends k_i attack steps on example i — 0 on outliers, L =
    ``light_steps`` on robust ones (step size ``light_alpha``, default
    2.5·ε/L: for L = 1 the single step crosses the ball, an FGSM step from the
    base's start), the base's full K on boundary ones — and returns the base's
    formula on the assembled batch:

        x'_i = x_i (k_i = 0),   x'_i = base.attack(x_i, k_i) (k_i > 0),
        ℓ_i = base.loss_from(f(x_i), f(x'_i), y_i)   (CE(f(x'_i), y_i) for PGD-AT,
              TRADES: CE(f(x_i), y_i) + β·KL(f(x_i) ‖ f(x'_i)), MART: see :func:`mart_loss`).

    An outlier thus trains on its clean input (TRADES: KL term 0; MART: BCE
    on f(x)). The loss's forward passes run over the whole batch in the
    caller's mode, as in the base.

    **Our choices.** The paper splits examples with a "signed prediction
    variance" over a few randomly perturbed copies; its exact statistic and
    thresholds are not available to us. The grouping proxy above (clean
    misclassification; the worst margin under P uniform probes against κ),
    the defaults P = 2, σ = ε/2, κ = 2, L = 1 and the step size of the light
    attack are ours; they are parameters so they can be changed. Thresholds
    can switch groups off: ``outlier=None`` sends misclassified examples to
    "boundary" and ``robust_margin=float("inf")`` empties "robust"; the
    forward passes a disabled group would need are then not run (both off:
    the objective is exactly the base).

    Cost per example (counted in :attr:`spent`): 1 + P forward passes for the
    grouping (1 without the robust group, 0 with both groups off), the base's
    attack cost with k_i steps (none for k_i = 0), and the base's training
    passes. Attack steps spent S = L·n_robust + K·n_boundary. Backward
    passes never exceed the base's; forward passes are fewer only when
    K·n_outlier + (K − L)·n_robust > (1 + P)·n (TRADES: (K + 1)·n_outlier,
    as an outlier also skips the clean pass that fixes the KL target): with
    K = 10, P = 2 the grouping pays for itself once about a third of the
    examples are outliers or robust; with K = 5 it needs P = 1 or most
    examples outside "boundary". The split
    needs the group sizes on the host: one synchronisation per batch
    (``torch.bincount(...).tolist()``), the rest runs on the device with masks
    and index tensors, without a loop over examples.

    **Shape buckets.** The robust and boundary sub-batches change size from
    batch to batch. On CUDA every new input shape costs cuDNN a new
    execution plan per convolution, forward and backward, which can cost
    more than the attack steps saved. ``bucket`` = b rounds each sub-batch up
    to a multiple of b by repeating some of its own examples; the attack runs
    in eval mode, example by example independent, and the extra rows are
    discarded, so x' is unchanged in distribution and only a few shapes ever
    occur. ``"auto"``: 32 on CUDA, 1 (no padding) elsewhere. The padding
    rows are extra work that :attr:`spent` does not count.

    :meth:`summarize` (what :func:`robustlib.train.fit` records per epoch)
    adds to ``examples``/``forward``/``backward`` the group fractions
    ``bt_outlier``, ``bt_robust``, ``bt_boundary`` (summing to 1), the attack
    steps ``bt_steps`` = S and ``bt_steps_saved`` = K·n − S relative to the base.
    """

    name = "bullet-train"
    writes_memory = True

    def __init__(self, base: Objective, *, probes: int = 2, sigma: float | None = None,
                 outlier: str | None = "misclassified", robust_margin: float = 2.0, light_steps: int = 1,
                 light_alpha: float | None = None, bucket: int | str = "auto"):
        super().__init__()
        if not isinstance(base, (PGDAT, TRADES, MART)):
            raise ValueError(f"BulletTrain wraps a PGDAT, TRADES or MART objective, e.g. "
                             f"BulletTrain(TRADES(eps=8/255)); got {type(base).__name__} (Bullet-Train allocates the "
                             f"steps of a multi-step attack)")
        self.base = base
        self.probes = check_int(probes, "probes", 1)
        self.sigma = base.eps / 2 if sigma is None else check_eps(sigma, "sigma")
        if outlier not in OUTLIER_RULES:
            raise ValueError(f"unknown outlier rule {outlier!r}; valid: 'misclassified' (outliers are the examples "
                             f"misclassified on the clean input) or None (no outlier group)")
        self.outlier = outlier
        if isinstance(robust_margin, bool) or not isinstance(robust_margin, numbers.Real) or math.isnan(robust_margin):
            raise ValueError(f"robust_margin must be a number (a logit margin z_y − max_j≠y z_j; float('inf') "
                             f"disables the robust group), got {robust_margin!r}")
        self.robust_margin = float(robust_margin)
        self.light_steps = check_int(light_steps, "light_steps", 0)
        if self.light_steps > base.steps:
            raise ValueError(f"light_steps must lie in 0…K = 0…{base.steps} (the base objective's steps), "
                             f"got {light_steps}")
        self.light_alpha = (default_alpha(base.eps, self.light_steps) if light_alpha is None
                            else check_eps(light_alpha, "light_alpha"))
        if bucket != "auto":
            bucket = check_int(bucket, "bucket", 1, hint="it is the multiple that sub-batch sizes are rounded up to "
                               "(1: no padding), or 'auto' (32 on CUDA, 1 elsewhere)")
        self.bucket = bucket
        self.spent = self._zero()

    # ------------------------------------------------------------------ bookkeeping

    @staticmethod
    def _zero() -> dict:
        return {"examples": 0, "forward": 0, "backward": 0, "bt_outlier_n": 0, "bt_robust_n": 0,
                "bt_boundary_n": 0, "bt_steps": 0}

    def summarize(self, counts: dict) -> dict:
        """The group counts as fractions of the examples, and the steps saved (after a data-parallel run has
        summed the counts over its processes)."""
        out, n = dict(counts), counts["examples"]
        fractions = {f"bt_{g}": (out.pop(f"bt_{g}_n") / n if n else 0.0) for g in GROUPS}
        return {**out, **fractions, "bt_steps_saved": self.base.steps * n - out["bt_steps"]}

    def config(self) -> dict:
        return {"name": self.name, "base": self.base.config(), "probes": self.probes, "sigma": self.sigma,
                "outlier": self.outlier, "robust_margin": self.robust_margin, "light_steps": self.light_steps,
                "light_alpha": self.light_alpha,
                # the default "auto" is left out, so that runs recorded before buckets existed keep their keys
                # (off CUDA it pads nothing; on CUDA the record's device says it meant 32)
                **({} if self.bucket == "auto" else {"bucket": self.bucket})}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "base"))
        return f"{type(self).__name__}({self.base!r}, {args})"

    # ε, α, K and norm of the base, so that the objective can stand for its attack (a selector's ``adversarial``)
    eps = property(lambda self: self.base.eps)
    alpha = property(lambda self: self.base.alpha)
    steps = property(lambda self: self.base.steps)
    norm = property(lambda self: getattr(self.base, "norm", "linf"))
    # one perturbation memory for the pair: attached to either, written by Bullet-Train for the examples it attacks
    memory = property(lambda self: self.base.memory, lambda self, m: setattr(self.base, "memory", m))

    @property
    def _robust_on(self) -> bool:
        return self.robust_margin < math.inf

    def grouping_cost(self) -> int:
        """Forward passes per example spent on the grouping: 1 + P, 1 (outliers only) or 0 (both groups off)."""
        if self._robust_on:
            return 1 + self.probes
        return 1 if self.outlier is not None else 0

    def _attack_cost(self, steps: int) -> tuple[int, int]:
        return self.base.attack_cost(steps) if steps > 0 else (0, 0)

    # ------------------------------------------------------------------ the method

    def _probe(self, x: torch.Tensor) -> torch.Tensor:
        """clip_[0,1](x + δ), δ uniform in [−σ, σ]^d (L∞ base) or on the sphere of radius σ (L2 base)."""
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.sigma, self.sigma)
        else:
            g = torch.randn_like(x)
            delta = g * (self.sigma / g.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0.0, 1.0)

    def groups(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Group id per example (``OUTLIER`` = 0, ``ROBUST`` = 1, ``BOUNDARY`` = 2), int64 on y's device.

        One forward pass of the (1 + P)·N clean and probed images in eval mode
        without gradients (fewer when a group is off); no host synchronisation
        except the value check of x and y outside ``trusted_inputs``.
        """
        check_x(x)
        check_y(x, y)
        check_model_input(model, x)
        n = len(y)
        group = torch.full((n,), BOUNDARY, dtype=torch.long, device=y.device)
        if n == 0 or self.grouping_cost() == 0:
            return group
        x = x.detach()
        with torch.no_grad(), eval_mode(model):
            batch = torch.cat([x] + [self._probe(x) for _ in range(self.probes)]) if self._robust_on else x
            logits = model(batch)
            check_values(x, [y], logits.shape[-1])
            correct = logits[:n].argmax(1) == y
            if self.outlier == "misclassified":
                group = torch.where(correct, group, OUTLIER)
            if self._robust_on:
                margin = -attacks.cw_margin(logits[n:], y.repeat(self.probes))   # z_y − max_{j≠y} z_j
                robust = correct & (margin.view(self.probes, n).amin(0) >= self.robust_margin)
                group = torch.where(robust, ROBUST, group)
        return group

    def bucket_for(self, device) -> int:
        """The sub-batch size multiple on ``device``: ``bucket``, or for "auto" 32 on CUDA and 1 elsewhere."""
        if self.bucket == "auto":
            return 32 if torch.device(device).type == "cuda" else 1
        return self.bucket

    def _padded(self, idx: torch.Tensor, bucket: int) -> torch.Tensor:
        """``idx`` followed by repeats of its own entries up to the next multiple of ``bucket``."""
        pad = -len(idx) % bucket
        if pad == 0:
            return idx
        return torch.cat([idx, idx.repeat(-(-pad // len(idx)))[:pad]])

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """``(x', group, (n_outlier, n_robust, n_boundary))``: x' assembled group by group, counting nothing.

        x'_i = x_i for outliers (and for robust ones when L = 0); the base's
        attack with L steps (step ``light_alpha``) for robust ones and with K
        steps (its own α) for boundary ones, each group attacked as one
        sub-batch (boundary first), padded to a multiple of :meth:`bucket_for`.
        One host synchronisation for the group sizes.
        """
        group = self.groups(model, x, y)
        sizes = torch.bincount(group, minlength=len(GROUPS)).tolist()   # the one host synchronisation
        _, idx_robust, idx_boundary = torch.argsort(group, stable=True).split(sizes)
        x = x.detach()
        x_adv = x.clone()
        bucket = self.bucket_for(x.device)
        for idx, steps, alpha in ((idx_boundary, self.base.steps, self.base.alpha),
                                  (idx_robust, self.light_steps, self.light_alpha)):
            if steps > 0 and len(idx) > 0:
                run = self._padded(idx, bucket)
                x_adv[idx] = self.base.attack(model, x[run], y[run], steps, alpha)[:len(idx)]
        return x_adv, group, tuple(sizes)

    def losses(self, model, x, y):
        x_adv, group, (n_out, n_rob, n_bnd) = self.adversarial(model, x, y)
        if self.memory is not None:   # only what was attacked: x' = x says nothing about an outlier's δ
            self.remember(x, x_adv, rows=(group == BOUNDARY) | ((group == ROBUST) & (self.light_steps > 0)))
        n, K, L = len(y), self.base.steps, self.light_steps
        (f_t, b_t), (f_r, b_r), (f_b, b_b) = self.base.train_cost(), self._attack_cost(L), self._attack_cost(K)
        self.count(n, forward=self.grouping_cost() + f_t, backward=b_t)
        s = self.spent
        s["forward"] += n_rob * f_r + n_bnd * f_b
        s["backward"] += n_rob * b_r + n_bnd * b_b
        s["bt_outlier_n"] += n_out
        s["bt_robust_n"] += n_rob
        s["bt_boundary_n"] += n_bnd
        s["bt_steps"] += n_rob * L + n_bnd * K
        return self.base.loss_on(model, x, x_adv, y)
