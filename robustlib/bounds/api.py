"""The public bounds API: input regions, output and margin bounds, certificates, the robust loss."""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_box, check_eps_per_sample, check_finite, check_labels, values_checked
from . import interval as _interval
from . import chunks as _chunks
from .plans import prepare
from .interval import Box, L2Ball


def _in_input_precision(fn):
    """Run ``fn`` with any autocast of the caller switched off: bounds are computed in the inputs' dtype.

    Under a caller's bf16 autocast every affine map would round its result to 8 bits of mantissa, and a lower
    bound could rise above the network's true minimum: the bounds would no longer be sound.
    """
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for kind in ("cpu", "cuda"):
                if torch.is_autocast_enabled(kind):
                    stack.enter_context(torch.autocast(kind, enabled=False))
            return fn(*args, **kwargs)
    return wrapped


def input_box(x: torch.Tensor, eps, clamp: Optional[tuple] = (0.0, 1.0)):
    """The L∞ box ``[x − ε, x + ε] ∩ [clamp]`` as ``(lower, upper)``.

    ``eps`` is a number or a per-sample tensor of shape ``(N,)``. ``clamp`` is the
    input domain (pixels in [0, 1]); ``x`` must lie inside it, else the box
    would be cut to a region that need not contain ``x`` and a certificate
    would be about other points. ``clamp=None`` means an unbounded domain.
    """
    check_finite("x", x)
    if clamp is not None and values_checked():   # skipped inside fit's steps (trusted_inputs): no host sync
        outside = (x < clamp[0]) | (x > clamp[1])
        if bool(outside.any()):
            raise ValueError(f"x lies outside the input domain [{clamp[0]:g}, {clamp[1]:g}] in {int(outside.sum())} "
                             f"entries (values in [{float(x.min()):.4g}, {float(x.max()):.4g}]); give un-normalised "
                             f"images (put any normalisation inside the model), or pass clamp=(lo, hi) for another "
                             f"domain or clamp=None for an unbounded one")
    e = check_eps_per_sample(eps, x.shape[0], x).reshape(-1, *([1] * (x.ndim - 1)))
    lo, hi = x - e, x + e
    if clamp is not None:
        lo, hi = lo.clamp(clamp[0], clamp[1]), hi.clamp(clamp[0], clamp[1])
    return lo, hi


def _resolve_region(lower, upper, eps_l2, center):
    """Validate the two ways of giving the input region; return (mode, a, b, example)."""
    if eps_l2 is not None or center is not None:
        if lower is not None or upper is not None:
            raise ValueError("give either a box (lower, upper) or an L2 ball (center=, eps_l2=), not both")
        if eps_l2 is None or center is None:
            raise ValueError("an L2 ball needs both center= and eps_l2=")
        check_finite("center", center)
        e = check_eps_per_sample(eps_l2, center.shape[0], center)
        return "l2", center, e, center
    if lower is None or upper is None:
        raise ValueError("give the input box as lower and upper tensors (or center= and eps_l2= for an L2 ball)")
    check_box(lower, upper)
    return "box", lower, upper, lower


@_in_input_precision
def interval(model: nn.Module, lower: Optional[torch.Tensor] = None, upper: Optional[torch.Tensor] = None, *,
             eps_l2=None, center: Optional[torch.Tensor] = None):
    r"""Output bounds by naive interval propagation (IBP).

    Centre/radius form: an affine layer maps ``c' = W c + b``, ``r' = |W| r``;
    a ReLU maps ``[l, u] ↦ [relu(l), relu(u)]``.

    Args:
        model: any supported ``nn.Module`` (see the module docstring), in eval mode.
        lower, upper: the input box, tensors of shape ``(N, *input_shape)``.
        eps_l2, center: instead of a box, the L2 ball ``‖x − center‖₂ ≤ eps_l2``.
            Its first affine consumer (Linear / Conv / elementwise) gets the exact
            dual-norm radius ``ε ‖W_row‖₂``; any other consumer sees the
            enclosing box ``center ± ε``.

    Returns:
        ``(lo, hi)`` of shape ``(N, *output_shape)`` with ``lo ≤ model(x) ≤ hi``
        for every ``x`` in the region. Differentiable in the model parameters.
    """
    mode, a, b, example = _resolve_region(lower, upper, eps_l2, center)
    plan = prepare(model, example)
    state = L2Ball(a, b) if mode == "l2" else Box.from_bounds(a, b)
    return _interval.run(plan, state)


@_in_input_precision
def symbolic(model: nn.Module, lower: Optional[torch.Tensor] = None, upper: Optional[torch.Tensor] = None, *,
             eps_l2=None, center: Optional[torch.Tensor] = None, memory_budget: Optional[int] = None,
             intersect_interval: bool = False):
    r"""Output bounds by symbolic intervals (ReluVal / Neurify relaxation; auto_LiRPA's CROWN same-slope).

    Each neuron is ``c + Σ_i A_i δ_i + Σ_j E_j η_j`` with input noise ``δ``
    (``x = x̂ + e ⊙ δ``, ``δ ∈ [−1, 1]^d``) and one error symbol ``η_j ∈ [−1, 1]``
    per unstable ReLU; an unstable ReLU with pre-activation bounds ``[l, u]``
    becomes ``λz − λl/2 ± (−λl/2)`` with ``λ = u/(u − l)``.

    Args:
        model: any supported ``nn.Module`` (see the module docstring), in eval mode.
        lower, upper: the input box ``(N, *input_shape)``.
        eps_l2, center: instead of a box, the L2 ball ``‖x − center‖₂ ≤ eps_l2``; the
            input term then concretises with the dual norm ``ε ‖A_row‖₂``.
        memory_budget: bytes the coefficient tensors may use; the batch is processed in
            chunks sized from :func:`estimate_sample_bytes` (default
            :func:`default_memory_budget`). On CUDA an out-of-memory chunk is halved and retried.
        intersect_interval: run IBP alongside and intersect (never looser than
            :func:`interval`; differs from the paper's / auto_LiRPA's pure relaxation).

    Returns:
        ``(lo, hi)`` of shape ``(N, *output_shape)``, differentiable in the model parameters.
    """
    mode, a, b, example = _resolve_region(lower, upper, eps_l2, center)
    plan = prepare(model, example)
    return _chunks.run_chunked(plan, mode, a, b, None, memory_budget, intersect_interval)


# --------------------------------------------------------------------------------------------------
# specification, verification, robust loss
# --------------------------------------------------------------------------------------------------

_METHODS = ("symbolic", "interval")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


@_in_input_precision
def margin_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, y, method: str = "symbolic", *,
                  memory_budget: Optional[int] = None, intersect_interval: bool = False, checkpoint: bool = False):
    r"""Bounds of the margins ``z_j − z_y`` over the box, shape ``(N, K)``; the ``y`` entry is 0.

    The specification ``C = e_j − e_y`` is applied before concretising: for
    ``"symbolic"`` to the affine forms of the logits (equal to folding ``C`` into
    the last linear layer), for ``"interval"`` folded into the weights of the final
    ``nn.Linear`` / ``F.linear`` (``W' = W_j − W_y``, ``b' = b_j − b_y``), or as
    ``[l_j − u_y, u_j − l_y]`` when the network does not end with one.

    ``checkpoint=True`` (symbolic, with autograd): keep no chunk's coefficient tensors for the backward pass but
    recompute each chunk's bounds there (``torch.utils.checkpoint``): the memory of one chunk instead of the whole
    batch, for one more forward pass. Training through the bounds of a large network needs it: with unstable
    ReLUs by the ten thousand, one sample's graph takes gigabytes.
    """
    _check_method(method)
    check_box(lower, upper)
    plan = prepare(model, lower)
    if len(plan.out_shape) != 1:
        raise ValueError(f"margins need a model with (N, K) logits, got per-sample output shape {plan.out_shape}")
    y = check_labels(y, lower.shape[0], plan.out_shape[0], lower.device)
    if method == "interval":
        return _interval.run(plan, Box.from_bounds(lower, upper), y)
    lo, hi = _chunks.run_chunked(plan, "box", lower, upper, y, memory_budget, intersect_interval,
                                   checkpoint=checkpoint)
    if intersect_interval:
        ilo, ihi = _interval.run(plan, Box.from_bounds(lower, upper), y)
        lo, hi = torch.maximum(lo, ilo), torch.minimum(hi, ihi)
    return lo, hi


@_in_input_precision
def margin_coefficients(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, y, *,
                        memory_budget: Optional[int] = None):
    r"""Symbolic margin bounds and the margins' input coefficients ("interval gradients").

    Returns ``(lo, hi, A)``: ``lo, hi`` of shape ``(N, K)`` as :func:`margin_bounds`
    (method ``"symbolic"``), and ``A`` of shape ``(N, K, *input_shape)`` with
    ``margin_j = c_j + Σ_i A_{j,i} δ_i + Σ_k E_{j,k} η_k`` on the box
    ``x = x̂ + e ⊙ δ``. ``A_{j,i} / e_i`` is the slope of the symbolic form of
    ``z_j − z_y`` in pixel ``i`` over the whole box — the region-averaged gradient
    that the interval attack follows (only its sign is needed, and ``e > 0``).
    """
    check_box(lower, upper)
    plan = prepare(model, lower)
    if len(plan.out_shape) != 1:
        raise ValueError(f"margins need a model with (N, K) logits, got per-sample output shape {plan.out_shape}")
    y = check_labels(y, lower.shape[0], plan.out_shape[0], lower.device)
    lo, hi, A = _chunks.run_chunked(plan, "box", lower, upper, y, memory_budget, False, coefficients=True)
    return lo, hi, A.reshape(*A.shape[:2], *lower.shape[1:])


def verify(model: nn.Module, x: torch.Tensor, y, eps, method: str = "symbolic", *,
           memory_budget: Optional[int] = None, intersect_interval: bool = False,
           clamp: Optional[tuple] = (0.0, 1.0)) -> torch.Tensor:
    r"""Certify L∞ robustness: a bool per sample, True iff ``max_{j≠y} u_j < 0``.

    ``u_j`` is the upper bound of ``z_j − z_y`` over ``[x − ε, x + ε] ∩ [0, 1]``
    (``clamp=None`` drops the pixel-range intersection). Runs without gradients.
    """
    _check_method(method)
    check_finite("x", x)
    lower, upper = input_box(x, eps, clamp)
    with torch.no_grad():
        _, hi = margin_bounds(model, lower, upper, y, method, memory_budget=memory_budget,
                              intersect_interval=intersect_interval)
        y = torch.as_tensor(y, device=x.device).long()
        hi = hi.scatter(1, y.view(-1, 1), float("-inf"))
        return (hi < 0).all(1)


def robust_loss(model: nn.Module, x: torch.Tensor, y, eps, method: str = "symbolic", *,
                memory_budget: Optional[int] = None, intersect_interval: bool = False,
                clamp: Optional[tuple] = (0.0, 1.0), checkpoint: bool = False) -> torch.Tensor:
    r"""Per-example robust cross-entropy ``CE(u, y)`` with ``u_y = 0``: ``log(1 + Σ_{j≠y} exp(u_j))``.

    ``u_j`` is the upper bound of ``z_j − z_y`` over ``[x − ε, x + ε] ∩ [0, 1]``.
    Differentiable w.r.t. the model parameters; shape ``(N,)``. ``checkpoint``: see :func:`margin_bounds`.
    """
    _check_method(method)
    check_finite("x", x)
    lower, upper = input_box(x, eps, clamp)
    _, hi = margin_bounds(model, lower, upper, y, method, memory_budget=memory_budget,
                          intersect_interval=intersect_interval, checkpoint=checkpoint)
    y = torch.as_tensor(y, device=x.device).long()
    return F.cross_entropy(hi, y, reduction="none")
