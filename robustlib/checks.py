"""Input checks and small helpers shared by every module: the one place they live.

Every public function of robustlib validates what it is given with these
helpers, so the same mistake gets the same clear message everywhere: what is
wrong, and how to fix it. Checks that need to look at tensor values (one host
synchronisation) are skipped inside :func:`trusted_inputs`, which
:func:`robustlib.train.fit` uses after its first batch.

Also here: :func:`eval_mode` (run a model in eval mode, restore every
module's flag), :func:`progress_bar`, and the default step sizes of the
attacks (α = 2.5·ε/K for K-step PGD, α = 1.25·ε for FGSM-RS).
"""
from __future__ import annotations

import contextvars
import math
import numbers
import os
from contextlib import contextmanager

import torch
import torch.nn as nn

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")


def default_alpha(eps: float, steps: int) -> float:
    """PGD's default step size α = 2.5·ε/K (Madry et al.): K steps can cross the ball and back."""
    return 2.5 * eps / max(steps, 1)


def fgsm_rs_alpha(eps: float) -> float:
    """FGSM-RS's default step size α = 1.25·ε (Wong et al. 2020)."""
    return 1.25 * eps


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


@contextmanager
def input_gradients_only(model: nn.Module):
    """Inside the block the parameters of ``model`` do not require gradients (each flag restored afterwards).

    An attack differentiates with respect to its input only; with the parameters frozen, autograd neither
    records nor saves anything for weight gradients, and a ``torch.compile``-d network traces a backward that
    computes input gradients alone (its compiled backward would otherwise compute every weight gradient too).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def progress_bar(iterable=None, **kwargs):
    """tqdm (notebook or terminal, chosen automatically); ``ROBUSTLIB_PROGRESS=off`` hides it."""
    from tqdm.auto import tqdm
    disable = kwargs.pop("disable", False) or os.environ.get("ROBUSTLIB_PROGRESS", "on") == "off"
    return tqdm(iterable, disable=disable, **kwargs)


_VALIDATE = contextvars.ContextVar("robustlib_value_checks", default=True)


@contextmanager
def trusted_inputs():
    """Skip the value checks (one host synchronisation each) inside the block.

    :func:`robustlib.train.fit` uses it after its first batch: its images come
    from uint8 data (finite, in [0, 1]) and the first batch has checked the labels.
    """
    token = _VALIDATE.set(False)
    try:
        yield
    finally:
        _VALIDATE.reset(token)


def values_checked() -> bool:
    """False inside :func:`trusted_inputs`: value checks are skipped."""
    return _VALIDATE.get()


# ----------------------------------------------------------------------------- numbers

def check_eps(eps, name: str = "eps") -> float:
    """A perturbation budget: one finite number ≥ 0 (a 1-element tensor is accepted)."""
    if isinstance(eps, torch.Tensor):
        if eps.numel() != 1:
            raise ValueError(f"{name} must be one number, got a tensor of shape {tuple(eps.shape)}; a per-sample "
                             f"{name} is supported by robustlib.bounds (verify, input_box), not here")
        eps = float(eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {eps!r}")
    if eps < 0:
        raise ValueError(f"{name} must be ≥ 0 (a perturbation budget), got {eps}")
    return float(eps)


def check_eps_per_sample(eps, batch: int, ref: torch.Tensor) -> torch.Tensor:
    """``eps`` as a tensor of shape ``(batch,)`` on ref's device and dtype: a number or one per sample."""
    if isinstance(eps, numbers.Real) and not isinstance(eps, bool):   # checked on the host: no copy, no sync
        check_eps(eps)
        return torch.full((batch,), float(eps), dtype=ref.dtype, device=ref.device)
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    if e.ndim > 1 or (e.ndim == 1 and e.shape[0] not in (1, batch)):
        raise ValueError(f"eps must be a number or a tensor of shape ({batch},), got shape {tuple(e.shape)}")
    if values_checked():   # a tensor's values: one host sync, skipped inside trusted_inputs
        if not bool(torch.isfinite(e).all()):
            raise ValueError(f"eps must be finite, got {eps}")
        if bool((e < 0).any()):
            raise ValueError(f"eps must be ≥ 0, got {eps if e.numel() == 1 else e.min().item()}")
    return e.reshape(-1).expand(batch) if e.ndim == 1 else e.expand(batch)


def check_int(value, name: str, minimum: int = 0, hint: str = "") -> int:
    """An integer ≥ ``minimum`` (bools and floats such as 2.5 are refused); ``hint`` ends the error message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}" + (f"; {hint}" if hint else ""))
    return int(value)


def check_real(value, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """A finite real number, optionally ≥ ``minimum`` or > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return float(value)


def check_choice(value, valid: tuple, name: str):
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(repr(v) for v in valid)}")
    return value


# ----------------------------------------------------------------------------- tensors

def check_x(x, what: str = "x") -> None:
    """A floating-point batch ``N×…`` (no value look: no synchronisation)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{what} must be a batch (N×…, e.g. N×C×H×W), got shape {tuple(x.shape)}; "
                         f"for one example use {what}.unsqueeze(0)")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
                         f"(uint8 images: use ImageData.x(), which divides by 255)")


def check_y(x: torch.Tensor, y, what: str = "y") -> None:
    """Integer class indices, one per example of ``x``, on x's device."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"batch size mismatch: x has {x.shape[0]} examples (shape {tuple(x.shape)}) "
                         f"but {what} has shape {tuple(y.shape)}; expected shape ({x.shape[0]},)")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{what} must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but {what} is on {y.device}; put both on the model's device")


def check_model_input(model: nn.Module, x: torch.Tensor) -> None:
    """The model's parameters and x share device (and, in fp32/fp64 models, dtype)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    p = next(iter(model.parameters()), None)
    if p is None:
        return
    if p.device != x.device:
        raise ValueError(f"the model's parameters are on {p.device} but the inputs are on {x.device}; move one "
                         f"(model.to(x.device) or x.to({str(p.device)!r}))")
    if p.is_floating_point() and p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"the model's parameters are {p.dtype} but the inputs are {x.dtype}; cast one to the "
                         f"other (e.g. model.to({x.dtype}) or x.to({p.dtype}))")


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, checked to be an (N, K) logits tensor; a clear message instead of a raw torch error."""
    try:
        out = model(x)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the model cannot run on x of shape {tuple(x.shape)} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); x must be a batch N×C×H×W of the model's input shape — "
                         f"for one image use x.unsqueeze(0)") from exc
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model must return a logits tensor of shape (N, K), got {type(out).__name__}; "
                         f"wrap it so that forward returns the logits only")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits of shape (N, K) = ({x.shape[0]}, K), got "
                         f"{tuple(out.shape)}")
    return out


def check_values(x: torch.Tensor, labels: list, num_classes: int) -> None:
    """Value checks (NaN/inf, x in [0, 1], label range) with one host synchronisation."""
    if not values_checked():
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


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> int:
    """Validate an attack's inputs; returns the number of classes (one forward pass on x[:1])."""
    check_eps(eps)
    check_x(x)
    check_y(x, y)
    check_model_input(model, x)
    with torch.no_grad(), eval_mode(model):
        num_classes = logits_of(model, x[:1]).shape[-1]
    check_values(x, [y], num_classes)
    return num_classes


# ----------------------------------------------------------------------------- boxes (robustlib.bounds)

def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.is_tensor(t):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a 0-d tensor")
    if values_checked() and not bool(torch.isfinite(t).all()):   # one host sync; skipped inside trusted_inputs
        bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise ValueError(f"{name} contains {bad} values; give finite values (bounds and attacks need them)")


def check_box(lower: torch.Tensor, upper: torch.Tensor) -> None:
    check_finite("lower", lower)
    check_finite("upper", upper)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    if lower.dtype != upper.dtype or lower.device != upper.device:
        raise ValueError(f"lower and upper must share dtype and device, got {lower.dtype}/{lower.device} "
                         f"and {upper.dtype}/{upper.device}")
    if values_checked() and bool((lower > upper).any()):
        n = int((lower > upper).sum())
        raise ValueError(f"lower > upper in {n} entries: the box is empty")


def check_labels(y, batch: int, num_classes: int, device) -> torch.Tensor:
    y = torch.as_tensor(y, device=device)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels y must be an integer tensor, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
    if batch and values_checked() and (bool((y < 0).any()) or bool((y >= num_classes).any())):
        raise ValueError(f"labels y out of range: the model has {num_classes} outputs, got labels in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y.long()
