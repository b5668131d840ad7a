r"""Sound output bounds for a network on an input region: interval (IBP) and symbolic intervals.

The input region is the box ``x ∈ [lower, upper]`` (for verification
``[x₀ − ε, x₀ + ε] ∩ [0, 1]``), or an L2 ball ``‖x − x₀‖₂ ≤ ε``.

Naive interval propagation (IBP), :func:`interval`
    Every neuron is held as a centre ``c`` and a radius ``r``. An affine layer
    ``z ↦ Wz + b`` maps ``c' = Wc + b`` and ``r' = |W| r``; a ReLU maps
    ``[l, u] ↦ [relu(l), relu(u)]``. Costs about two forward passes.

Symbolic intervals (ReluVal / Neurify, as used by MixTrain), :func:`symbolic`
    Write the input as ``x = x̂ + e ⊙ δ`` with centre ``x̂``, half-width ``e``
    and noise ``δ ∈ [−1, 1]^d``. Every neuron is held as an affine form

    .. math:: z = c + \sum_i A_i δ_i + \sum_j E_j η_j ,\qquad δ_i, η_j ∈ [−1, 1]

    (``A`` already includes the half-width ``e``). Affine layers map ``c``,
    ``A`` and ``E`` linearly (``A`` and ``E`` without the bias). Concretising
    gives ``radius = Σ_i |A_i| + Σ_j |E_j|``, ``l = c − radius``,
    ``u = c + radius``. A ReLU whose input is stable is the identity
    (``l ≥ 0``, slope λ = 1) or zero (``u ≤ 0``, λ = 0). For an unstable neuron
    (``l < 0 < u``) the relaxation is the band between two parallel lines of
    slope ``λ = u / (u − l)``:

    .. math:: λ z ≤ \mathrm{relu}(z) ≤ λ (z − l),

    i.e. ``relu(z) ∈ λz − λl/2 ± (−λl/2)``: scale ``c``, ``A`` and ``E`` by λ,
    add ``−λl/2`` to ``c`` and append one fresh error term ``η`` of size
    ``−λl/2`` for that neuron. Every error term belongs to the ReLU node that
    created it, so when two branches of a residual network meet (``x + f(x)``)
    the coefficients of the same error term add, exactly as the input terms do.
    This is the relaxation that auto_LiRPA calls CROWN with
    ``relu='same-slope'``; because forward propagation of affine forms over
    independent noise symbols is exact, the bounds equal that backward
    computation (checked against auto_LiRPA's reference data in the tests).

    For an L2 ball the input term is ``x = x₀ + ε δ`` with ``‖δ‖₂ ≤ 1`` and
    concretises with the dual norm: ``radius = ε ‖A_row‖₂ + Σ_j |E_j|``.

    Cost: ``A`` holds ``d × n`` numbers per sample for a layer of ``n``
    neurons (``d`` = input dimension), so the batch is processed in chunks
    that fit ``memory_budget`` bytes.

    Note (checked in the tests): with this relaxation the symbolic bound is
    *not* always tighter than IBP; e.g. ``z ∈ [−1, 1]``, ``out = −relu(z)``
    gives IBP ``[−1, 0]`` but symbolic ``[−1, 0.5]``. ``intersect_interval=True``
    runs IBP alongside, relaxes every ReLU with the intersected ``[l, u]`` and
    intersects the final bounds: never looser than IBP. (It is not always
    tighter than the pure symbolic bound either: tighter ``[l, u]`` raise the
    slope ``λ``, and the lower line ``λz`` then drops for ``z < 0``.)

Verification specification, :func:`margin_bounds` / :func:`verify`
    Bounds of the margins ``z_j − z_y`` are computed with the specification
    ``C = e_j − e_y`` applied *before* concretising: for symbolic intervals
    ``C`` is applied to the affine forms of the logits (the same as folding it
    into the last linear layer), for IBP it is folded into the last linear
    layer's weights when the network ends with one. A sample is verified iff
    the upper bound of every ``z_j − z_y`` (``j ≠ y``) is ``< 0``.

Robust loss, :func:`robust_loss`
    ``CE(u, y)`` with ``u_y = 0``: ``log(1 + Σ_{j≠y} exp(u_j))``, differentiable
    in the model parameters (MixTrain trains through it).

Supported networks
    Any ``nn.Module`` that ``torch.fx`` traces into: Linear, Conv1d/Conv2d,
    ReLU (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``), BatchNorm1d/2d in
    eval mode, average pooling (AvgPool1d/2d, AdaptiveAvgPool1d/2d,
    ``F.avg_pool2d``, ``F.adaptive_avg_pool2d``), flatten / view / reshape /
    Unflatten, addition and subtraction of two traced tensors (residual
    connections), addition of constants and multiplication / division by
    constants (e.g. an input normalisation), Identity and Dropout in eval mode.
    Anything else raises :class:`UnsupportedOperation` before any bound is
    computed: never a silently unsound bound.
"""
from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_eps_per_sample, check_model_input

__all__ = [
    "UnsupportedOperation", "SUPPORTED_OPERATIONS", "input_box", "interval", "symbolic",
    "margin_bounds", "margin_coefficients", "verify", "robust_loss", "default_memory_budget", "estimate_sample_bytes",
]

SUPPORTED_OPERATIONS = (
    "Linear, Conv1d/Conv2d, ReLU (nn.ReLU, F.relu, torch.relu, Tensor.relu), BatchNorm1d/2d in eval mode, "
    "AvgPool1d/2d, AdaptiveAvgPool1d/2d (and F.avg_pool2d, F.adaptive_avg_pool2d), Flatten / Unflatten / "
    "view / reshape / flatten, addition or subtraction of two traced tensors (residual connections), "
    "adding constants, multiplying or dividing by constants, Identity, Dropout in eval mode"
)


class UnsupportedOperation(TypeError):
    """The network contains an operation that the bound propagation cannot handle soundly."""


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------

def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.is_tensor(t):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a 0-d tensor")
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise ValueError(f"{name} contains {bad} values; bounds need finite inputs")


def _check_box(lower: torch.Tensor, upper: torch.Tensor) -> None:
    _check_finite("lower", lower)
    _check_finite("upper", upper)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    if lower.dtype != upper.dtype or lower.device != upper.device:
        raise ValueError(f"lower and upper must share dtype and device, got {lower.dtype}/{lower.device} "
                         f"and {upper.dtype}/{upper.device}")
    if bool((lower > upper).any()):
        n = int((lower > upper).sum())
        raise ValueError(f"lower > upper in {n} entries: the box is empty")


def _check_labels(y, batch: int, num_classes: int, device) -> torch.Tensor:
    y = torch.as_tensor(y, device=device)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels y must be an integer tensor, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
    if batch and (bool((y < 0).any()) or bool((y >= num_classes).any())):
        raise ValueError(f"labels y out of range: the model has {num_classes} outputs, got labels in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y.long()


def input_box(x: torch.Tensor, eps, clamp: Optional[tuple] = (0.0, 1.0)):
    """The L∞ box ``[x − ε, x + ε] ∩ [clamp]`` as ``(lower, upper)``.

    ``eps`` is a number or a per-sample tensor of shape ``(N,)``. ``clamp`` is the
    input domain (pixels in [0, 1]); ``x`` must lie inside it, else the box
    would be cut to a region that need not contain ``x`` and a certificate
    would be about other points. ``clamp=None`` means an unbounded domain.
    """
    _check_finite("x", x)
    if clamp is not None:
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


# --------------------------------------------------------------------------------------------------
# graph: trace, validate, describe each input-dependent node
# --------------------------------------------------------------------------------------------------

# model → (structure signature, traced graph). The signature lists every submodule (name, object, class),
# so replacing a layer (``net[3] = nn.Linear(8, 3)``) re-traces instead of bounding a stale copy.
_TRACE_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

_RELU_FUNCS = {F.relu, torch.relu, F.relu_, torch.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_SUB_FUNCS = {operator.sub, operator.isub, torch.sub}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCS = {operator.truediv, operator.itruediv, torch.div}
_NEG_FUNCS = {operator.neg, torch.neg}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_POOL_FUNCS = {F.avg_pool2d, F.adaptive_avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool1d}
_LINEAR_FUNCS = {F.linear}
_CONV_FUNCS = {F.conv1d, F.conv2d}
_IDENTITY_FUNCS = {F.dropout}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous"}
_CONCRETE_OK_FUNCS = {operator.getitem, getattr}
_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d,
            nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Identity,
            nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def _signature(model: nn.Module) -> tuple:
    return tuple((name, id(m), type(m)) for name, m in model.named_modules()) + (type(model).forward,)


def _trace(model: nn.Module) -> fx.GraphModule:
    sig = _signature(model)
    cached = _TRACE_CACHE.get(model)
    gm = cached[1] if cached is not None and cached[0] == sig else None
    if gm is None:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means we cannot analyse the graph
            raise UnsupportedOperation(
                f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); bounds need a "
                f"traceable network made of: {SUPPORTED_OPERATIONS}") from exc
        _TRACE_CACHE[model] = (sig, gm)
    return gm


def _fn_name(target) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


def _unsupported(node: fx.Node, what: str, why: str = "") -> UnsupportedOperation:
    extra = f" ({why})" if why else ""
    return UnsupportedOperation(
        f"unsupported operation {what} at graph node {node.name!r}{extra}; bounds support only: "
        f"{SUPPORTED_OPERATIONS}")


def _validate(gm: fx.GraphModule) -> set:
    """Check every input-dependent node is supported; return the set of dependent node names.

    Runs on the graph and module attributes only (no tensors), before any bound is computed.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOperation(f"bounds need a network with exactly one input, got "
                                   f"{len(placeholders)} ({[p.name for p in placeholders]})")
    dep: set = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            dep.add(node.name)
            continue
        inputs = node.all_input_nodes
        if not any(a.name in dep for a in inputs):
            if node.op == "output":
                raise UnsupportedOperation("the network's output does not depend on its input")
            continue
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise UnsupportedOperation(f"the network must return a single tensor, got "
                                           f"{type(node.args[0]).__name__} at graph node {node.name!r}")
            continue
        if (node.op == "call_method" and node.target in ("size", "dim")) or \
                (node.op == "call_function" and node.target is getattr):
            continue  # shape queries: concrete, not input-dependent values
        dep.add(node.name)
        ndep = sum(a.name in dep for a in inputs)
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            what = f"{type(mod).__name__} (module {node.target!r})"
            if not isinstance(mod, _MODULES):
                raise _unsupported(node, what)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if mod.training or not mod.track_running_stats or mod.running_mean is None:
                    raise _unsupported(node, what, "BatchNorm must be in eval mode with running statistics: "
                                       "call model.eval() first")
            if isinstance(mod, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) and mod.training and mod.p > 0:
                raise _unsupported(node, what, "Dropout in training mode is random: call model.eval() first")
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.padding_mode != "zeros":
                pass  # _conv_forward handles every padding mode; all are linear
        elif node.op == "call_function":
            t = node.target
            what = f"function {_fn_name(t)}"
            if t in _RELU_FUNCS or t in _ADD_FUNCS or t in _SUB_FUNCS or t in _RESHAPE_FUNCS \
                    or t in _POOL_FUNCS or t in _NEG_FUNCS or t in _CONCRETE_OK_FUNCS:
                if t is torch.add or t is torch.sub:
                    alpha = node.kwargs.get("alpha", 1)
                    if alpha != 1:
                        raise _unsupported(node, what, "alpha != 1")
                if t in _POOL_FUNCS and isinstance(node.args[0], fx.Node) and node.args[0].name not in dep:
                    raise _unsupported(node, what, "only the pooled tensor may depend on the input")
                if t is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0].name in dep:
                    raise _unsupported(node, "indexing / slicing (operator.getitem)",
                                       "slicing an input-dependent tensor is not supported")
                continue
            if t in _MUL_FUNCS or t in _DIV_FUNCS:
                if ndep > 1 or (t in _DIV_FUNCS and not (isinstance(node.args[0], fx.Node)
                                                        and node.args[0].name in dep)):
                    raise _unsupported(node, what, "products / quotients of input-dependent tensors are not "
                                       "linear")
                continue
            if t in _LINEAR_FUNCS or t in _CONV_FUNCS:
                a0 = node.args[0] if node.args else node.kwargs.get("input")
                if ndep > 1 or not (isinstance(a0, fx.Node) and a0.name in dep):
                    raise _unsupported(node, what, "weights must not depend on the input")
                continue
            if t in _IDENTITY_FUNCS:
                training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
                if training:
                    raise _unsupported(node, what, "dropout with training=True is random")
                continue
            raise _unsupported(node, what)
        elif node.op == "call_method":
            what = f"Tensor.{node.target}"
            if node.target in _RESHAPE_METHODS or node.target in ("size", "dim", "relu", "relu_", "neg"):
                continue
            if node.target in ("add", "sub"):
                if node.kwargs.get("alpha", 1) != 1:
                    raise _unsupported(node, what, "alpha != 1")
                continue
            if node.target in ("mul", "div"):
                if ndep > 1 or node.args[0].name not in dep:
                    raise _unsupported(node, what, "products / quotients of input-dependent tensors are not "
                                       "linear")
                continue
            raise _unsupported(node, what)
        elif node.op == "get_attr":
            continue
        else:  # pragma: no cover - fx has no other ops
            raise _unsupported(node, node.op)
    return dep


@dataclass
class _Affine:
    """An affine node ``t ↦ lin(t) + shift`` applied to a tensor with a leading (folded) batch dim."""

    lin: Callable           # linear part (no bias)
    full: Callable          # the affine map itself (for centres)
    abs_lin: Callable       # |linear part| (for IBP radii)
    diag: Optional[torch.Tensor] = None    # elementwise multiplier (per-sample shape) when the op is diagonal
    reshape: bool = False   # pure reshape: flat order of a sample is unchanged
    l2sq: Optional[Callable] = None        # k2 → Σ_i W_ni² k2_i: squared L2 row norms of W·diag(√k2)
    fold: Optional[tuple] = None           # (W, b) of a final nn.Linear, for folding the margin spec


@dataclass
class _Node:
    name: str
    kind: str                   # "affine" | "relu" | "add" | "sub"
    inputs: tuple               # names of dependent input nodes
    op: Optional[_Affine] = None
    shape: tuple = ()           # per-sample output shape


@dataclass
class _Plan:
    nodes: list
    input_name: str
    output_name: str
    in_shape: tuple
    out_shape: tuple
    last_use: dict = field(default_factory=dict)
    max_numel: int = 1


def _elementwise(k: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Bring a constant to a per-sample broadcastable shape (drop a leading batch dim of size 1)."""
    k = torch.as_tensor(k)
    if k.ndim > len(shape):
        if k.ndim == len(shape) + 1 and k.shape[0] == 1:
            k = k[0]
        else:
            raise UnsupportedOperation(f"a constant of shape {tuple(k.shape)} cannot act per sample on "
                                       f"a tensor of per-sample shape {shape}")
    return k


def _diag_affine(k, shape: tuple, shift=None) -> _Affine:
    """The elementwise affine map ``t ↦ k ⊙ t + shift``."""
    if torch.is_tensor(k):
        k = _elementwise(k, shape)
        kk = k
    else:
        kk = torch.tensor(float(k))
    if shift is not None and torch.is_tensor(shift):
        shift = _elementwise(shift, shape)
    absk = kk.abs()

    def lin(t):
        return t * kk.to(t) if kk.ndim else t * float(kk)

    def full(t):
        out = lin(t)
        return out + (shift.to(t) if torch.is_tensor(shift) else shift) if shift is not None else out

    def abs_lin(t):
        return t * absk.to(t) if absk.ndim else t * float(absk)

    return _Affine(lin, full, abs_lin, diag=kk)


def _reshape_affine(shape: tuple) -> _Affine:
    def f(t):
        return t.reshape(t.shape[0], *shape)
    return _Affine(f, f, f, reshape=True)


def _conv_affine(conv: Callable, weight: torch.Tensor, bias, in_shape: tuple, zeros_padding: bool) -> _Affine:
    def lin(t):
        return conv(t, weight, None)

    def full(t):
        return conv(t, weight, bias)

    def abs_lin(t):
        return conv(t, weight.abs(), None)

    def l2sq(k2):  # zero padding: each output sees each input pixel at most once, row norm² = conv(k2, W²)
        return conv(k2.unsqueeze(0), weight * weight, None)[0]

    return _Affine(lin, full, abs_lin, l2sq=l2sq if zeros_padding else None)


def _linear_affine(weight: torch.Tensor, bias) -> _Affine:
    def lin(t):
        return F.linear(t, weight)

    def full(t):
        return F.linear(t, weight, bias)

    def abs_lin(t):
        return F.linear(t, weight.abs())

    def l2sq(k2):
        return F.linear(k2, weight * weight)

    return _Affine(lin, full, abs_lin, l2sq=l2sq, fold=(weight, bias) if weight.ndim == 2 else None)


def _pool_affine(fn: Callable) -> _Affine:
    # Average pooling has non-negative weights: |P| = P.
    return _Affine(fn, fn, fn)


def _arg(node_args, node_kwargs, i, name, default=None):
    if len(node_args) > i:
        return node_args[i]
    return node_kwargs.get(name, default)


def _build_plan(gm: fx.GraphModule, dep: set, probe: torch.Tensor) -> _Plan:
    """Run the graph once on a small probe batch, record shapes, and describe each dependent node."""
    PB = probe.shape[0]
    values: dict = {}
    shapes: dict = {}
    nodes: list = []
    input_name = output_name = None

    def val(a):
        return fx.node.map_arg(a, lambda n: values[n.name])

    def psh(n: fx.Node) -> tuple:
        return shapes[n.name]

    def is_dep(a):
        return isinstance(a, fx.Node) and a.name in dep

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = probe
            shapes[node.name] = tuple(probe.shape[1:])
            input_name = node.name
            continue
        if node.op == "output":
            output_name = node.args[0].name
            continue
        # concrete evaluation of the node on the probe (shape recording, constants)
        args, kwargs = val(node.args), val(node.kwargs)
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            out = obj
        elif node.op == "call_module":
            out = gm.get_submodule(node.target)(*args, **kwargs)
        elif node.op == "call_function":
            out = node.target(*args, **kwargs)
        else:
            self_obj, *rest = args
            out = getattr(self_obj, node.target)(*rest, **kwargs)
        values[node.name] = out
        if node.name not in dep:
            continue
        if not torch.is_tensor(out):
            if node.op == "call_method" and node.target in ("size", "dim"):
                continue
            if node.op == "call_function" and node.target in _CONCRETE_OK_FUNCS:
                continue
            raise _unsupported(node, str(node.target), "it does not return a tensor")
        if out.ndim == 0 or out.shape[0] != PB:
            raise _unsupported(node, str(node.target), f"it mixes the batch dimension (output shape "
                               f"{tuple(out.shape)} for a batch of {PB})")
        shape = tuple(out.shape[1:])
        shapes[node.name] = shape
        deps = [a for a in node.all_input_nodes if a.name in dep and torch.is_tensor(values[a.name])]
        x = deps[0] if deps else None
        in_shape = psh(x) if x is not None else None

        def add(kind, inputs, op=None):
            nodes.append(_Node(node.name, kind, tuple(i.name for i in inputs), op, shape))

        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.ReLU):
                add("relu", [x])
            elif isinstance(mod, nn.Linear):
                add("affine", [x], _linear_affine(mod.weight, mod.bias))
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                add("affine", [x], _conv_affine(mod._conv_forward, mod.weight, mod.bias, in_shape,
                                                mod.padding_mode == "zeros"))
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                scale = torch.rsqrt(mod.running_var + mod.eps)
                if mod.weight is not None:
                    scale = scale * mod.weight
                shift = -mod.running_mean * scale
                if mod.bias is not None:
                    shift = shift + mod.bias
                view = (-1,) + (1,) * (len(in_shape) - 1)
                add("affine", [x], _diag_affine(scale.view(view), in_shape, shift.view(view)))
            elif isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                add("affine", [x], _pool_affine(mod))
            elif isinstance(mod, (nn.Flatten, nn.Unflatten)):
                add("affine", [x], _reshape_affine(shape))
            else:  # Identity, Dropout (eval)
                add("affine", [x], _reshape_affine(shape))
        elif node.op == "call_method":
            m = node.target
            if m in _RESHAPE_METHODS:
                add("affine", [x], _reshape_affine(shape))
            elif m in ("relu", "relu_"):
                add("relu", [x])
            elif m == "neg":
                add("affine", [x], _diag_affine(-1.0, shape))
            else:
                _binary(node, m, args, deps, shape, add)
        else:
            t = node.target
            if t in _RELU_FUNCS:
                add("relu", [x])
            elif t in _RESHAPE_FUNCS or t in _IDENTITY_FUNCS:
                add("affine", [x], _reshape_affine(shape))
            elif t in _NEG_FUNCS:
                add("affine", [x], _diag_affine(-1.0, shape))
            elif t in _POOL_FUNCS:
                rest_args, rest_kwargs = args[1:], {k: v for k, v in kwargs.items() if k != "input"}
                add("affine", [x], _pool_affine(lambda u, _f=t, _a=rest_args, _k=rest_kwargs: _f(u, *_a, **_k)))
            elif t in _LINEAR_FUNCS:
                w = _arg(args, kwargs, 1, "weight")
                b = _arg(args, kwargs, 2, "bias")
                add("affine", [x], _linear_affine(w, b))
            elif t in _CONV_FUNCS:
                w = _arg(args, kwargs, 1, "weight")
                b = _arg(args, kwargs, 2, "bias")
                names = ("stride", "padding", "dilation", "groups")
                extra = {k: _arg(args, kwargs, 3 + i, k) for i, k in enumerate(names)}
                extra = {k: v for k, v in extra.items() if v is not None}

                def conv(u, ww, bb, _t=t, _e=extra):
                    return _t(u, ww, bb, **_e)
                add("affine", [x], _conv_affine(conv, w, b, in_shape, True))  # F.conv* pads with zeros
            else:
                name = {**{f: "add" for f in _ADD_FUNCS}, **{f: "sub" for f in _SUB_FUNCS},
                        **{f: "mul" for f in _MUL_FUNCS}, **{f: "div" for f in _DIV_FUNCS}}[t]
                _binary(node, name, args, deps, shape, add)
        if nodes and nodes[-1].name == node.name and nodes[-1].kind == "affine" and not nodes[-1].op.reshape \
                and nodes[-1].op.diag is not None and in_shape is not None and tuple(in_shape) != shape:
            raise _unsupported(node, str(node.target), f"an elementwise operation changed the shape "
                               f"{in_shape} → {shape} by broadcasting")

    plan = _Plan(nodes, input_name, output_name, tuple(probe.shape[1:]), shapes[output_name])
    for i, n in enumerate(nodes):
        for a in n.inputs:
            plan.last_use[a] = i
        plan.max_numel = max(plan.max_numel, math.prod(n.shape))
    plan.last_use[output_name] = len(nodes)
    plan.max_numel = max(plan.max_numel, math.prod(plan.in_shape))
    return plan


def _binary(node, name, args, deps, shape, add):
    """add / sub / mul / div where at least one operand is input-dependent."""
    a, b = args[0], args[1] if len(args) > 1 else node.kwargs.get("other")
    a_dep = isinstance(node.args[0], fx.Node) and any(d.name == node.args[0].name for d in deps)
    other_arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    b_dep = isinstance(other_arg, fx.Node) and any(d.name == other_arg.name for d in deps)
    if a_dep and b_dep:
        if name in ("add", "sub"):
            add(name, [node.args[0], other_arg])
            return
        raise _unsupported(node, name, "products / quotients of input-dependent tensors are not linear")
    x = node.args[0] if a_dep else other_arg
    const = b if a_dep else a
    if name == "add":
        add("affine", [x], _diag_affine(1.0, shape, const))
    elif name == "sub":
        if a_dep:
            add("affine", [x], _diag_affine(1.0, shape, -const if torch.is_tensor(const) else -float(const)))
        else:
            add("affine", [x], _diag_affine(-1.0, shape, const))
    elif name == "mul":
        add("affine", [x], _diag_affine(const, shape))
    elif name == "div" and a_dep:
        add("affine", [x], _diag_affine(1.0 / const if not torch.is_tensor(const) else const.reciprocal(), shape))
    else:
        raise _unsupported(node, name, "dividing by an input-dependent tensor is not linear")


def _prepare(model: nn.Module, example: torch.Tensor) -> _Plan:
    """Trace + validate (no tensors), then a light probe forward on ≤ 2 samples for shapes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    gm = _trace(model)
    dep = _validate(gm)
    check_model_input(model, example)
    probe = example[:1].detach()
    if probe.shape[0] == 0:
        probe = torch.zeros((1, *example.shape[1:]), dtype=example.dtype, device=example.device)
    probe = probe.expand(2, *probe.shape[1:]).contiguous()
    try:
        with torch.no_grad():
            plan = _build_plan(gm, dep, probe)
    except UnsupportedOperation:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(f"an input of per-sample shape {tuple(example.shape[1:])} does not fit the model "
                         f"{type(model).__name__}: {exc}") from exc
    return plan


# --------------------------------------------------------------------------------------------------
# interval propagation
# --------------------------------------------------------------------------------------------------

@dataclass
class _Box:
    c: torch.Tensor  # centre (B, *shape)
    r: torch.Tensor  # radius (B, *shape), >= 0


@dataclass
class _L2Ball:
    """The ellipsoid ``{c + √k2 ⊙ δ : ‖δ‖₂ ≤ eps}`` (per sample): an L2 ball after elementwise scalings.

    Kept through reshapes and elementwise affine maps (e.g. BatchNorm, a normalisation); its
    first Linear / Conv consumer gets the exact dual-norm radius ``eps · ‖W diag(√k2)‖₂`` per
    output, any other consumer sees the enclosing box ``c ± eps √k2``.
    """
    c: torch.Tensor
    eps: torch.Tensor                      # (B,)
    k2: Optional[torch.Tensor] = None      # per-sample shape; None = ones

    def scales(self) -> torch.Tensor:
        return torch.ones(self.c.shape[1:], dtype=self.c.dtype, device=self.c.device) if self.k2 is None \
            else self.k2

    def box(self) -> _Box:
        view = (-1,) + (1,) * (self.c.ndim - 1)
        r = self.eps.view(view) * (1.0 if self.k2 is None else self.k2.sqrt().unsqueeze(0))
        return _Box(self.c, r.expand_as(self.c))


def _box_affine(op: _Affine, s: _Box) -> _Box:
    return _Box(op.full(s.c), op.abs_lin(s.r))


def _box_relu(s: _Box) -> _Box:
    lo, hi = F.relu(s.c - s.r), F.relu(s.c + s.r)
    return _Box((hi + lo) / 2, (hi - lo) / 2)


def _box_margin_fold(op: _Affine, s: _Box, y: torch.Tensor):
    """IBP through a final Linear with the specification C = e_j − e_y folded into its weights."""
    w, b = op.fold
    wc = w.unsqueeze(0) - w[y].unsqueeze(1)            # (B, K, in)
    c = torch.einsum("bki,bi->bk", wc, s.c)
    if b is not None:
        c = c + (b.unsqueeze(0) - b[y].unsqueeze(1))
    r = torch.einsum("bki,bi->bk", wc.abs(), s.r)
    return c - r, c + r


def _spec(lo_hi_c, y):
    """Gather-subtract helper: t[:, j] − t[:, y] for a (B, K) or (B, k, K) tensor."""
    t = lo_hi_c
    idx = y.view(-1, *([1] * (t.ndim - 1))).expand(*t.shape[:-1], 1)
    return t - t.gather(-1, idx)


def _run_interval(plan: _Plan, state, y: Optional[torch.Tensor] = None):
    env = {plan.input_name: state}
    for i, n in enumerate(plan.nodes):
        ins = [env[a] for a in n.inputs]
        if n.kind == "affine":
            s = ins[0]
            if isinstance(s, _L2Ball):
                if n.op.reshape:
                    out = _L2Ball(n.op.full(s.c), s.eps, None if s.k2 is None else s.k2.reshape(n.shape))
                elif n.op.diag is not None:
                    d = n.op.diag.to(s.c)
                    out = _L2Ball(n.op.full(s.c), s.eps, (s.scales() * d * d).expand(n.shape))
                elif n.op.l2sq is not None:
                    rad = n.op.l2sq(s.scales()).clamp_min(0).sqrt()
                    view = (-1,) + (1,) * len(n.shape)
                    out = _Box(n.op.full(s.c), s.eps.view(view) * rad.expand(n.shape).unsqueeze(0))
                else:
                    out = _box_affine(n.op, s.box())
            elif y is not None and n.name == plan.output_name and n.op.fold is not None:
                return _box_margin_fold(n.op, s, y)
            else:
                out = _box_affine(n.op, s)
        else:
            ins = [s.box() if isinstance(s, _L2Ball) else s for s in ins]
            if n.kind == "relu":
                out = _box_relu(ins[0])
            elif n.kind == "add":
                out = _Box(ins[0].c + ins[1].c, ins[0].r + ins[1].r)
            else:
                out = _Box(ins[0].c - ins[1].c, ins[0].r + ins[1].r)
        env[n.name] = out
        for a in n.inputs:
            if plan.last_use.get(a) == i:
                env.pop(a, None)
    s = env[plan.output_name]
    if isinstance(s, _L2Ball):
        s = s.box()
    if y is not None:
        c = _spec(s.c.reshape(s.c.shape[0], -1), y)
        r = s.r.reshape(s.r.shape[0], -1)
        r = r + r.gather(1, y.view(-1, 1))
        r = r.scatter(1, y.view(-1, 1), 0.0)
        return c - r, c + r
    return s.c - s.r, s.c + s.r


def _input_state_box(lower, upper):
    return _Box((upper + lower) / 2, (upper - lower) / 2)


def _resolve_region(lower, upper, eps_l2, center):
    """Validate the two ways of giving the input region; return (mode, a, b, example)."""
    if eps_l2 is not None or center is not None:
        if lower is not None or upper is not None:
            raise ValueError("give either a box (lower, upper) or an L2 ball (center=, eps_l2=), not both")
        if eps_l2 is None or center is None:
            raise ValueError("an L2 ball needs both center= and eps_l2=")
        _check_finite("center", center)
        e = check_eps_per_sample(eps_l2, center.shape[0], center)
        return "l2", center, e, center
    if lower is None or upper is None:
        raise ValueError("give the input box as lower and upper tensors (or center= and eps_l2= for an L2 ball)")
    _check_box(lower, upper)
    return "box", lower, upper, lower


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
    plan = _prepare(model, example)
    state = _L2Ball(a, b) if mode == "l2" else _input_state_box(a, b)
    return _run_interval(plan, state)


# --------------------------------------------------------------------------------------------------
# symbolic intervals
# --------------------------------------------------------------------------------------------------

@dataclass
class _Diag:
    """Input coefficients that are still diagonal: A[b, d, :] = s[b, d] · onehot(d) (flat order)."""
    s: torch.Tensor   # (B, D)


@dataclass
class _SparseE:
    """A block of error terms that each still act on one neuron: E[b, k] = vals[b, k] · onehot(idx[b, k]).

    A ReLU layer creates its error terms in this form (one per unstable neuron, padded with zeros
    to the largest count in the batch); elementwise layers and reshapes keep it, the next
    Linear / Conv materialises it, by gathering columns of that layer's Jacobian when that is cheaper.
    """
    idx: torch.Tensor   # (B, K) flat neuron index
    vals: torch.Tensor  # (B, K)


@dataclass
class _Sym:
    c: torch.Tensor                       # (B, *shape)
    A: object                             # torch.Tensor (B, D, *shape) or _Diag
    E: dict                               # relu-node name → (B, K, *shape) tensor or _SparseE
    box: Optional[_Box] = None            # IBP state run alongside (intersect_interval=True)


def _fold_apply(fn: Callable, t: torch.Tensor) -> torch.Tensor:
    """Apply a batched linear op to a coefficient tensor (B, k, *shape) by folding k into the batch."""
    B, k = t.shape[:2]
    out = fn(t.reshape(B * k, *t.shape[2:]))
    return out.reshape(B, k, *out.shape[1:])


def _storage_ptrs(s) -> list:
    """Storage addresses of a symbolic state's dense coefficient tensors (views share their base's)."""
    if not isinstance(s, _Sym):
        return []
    ts = [s.A] + list(s.E.values())
    return [t.untyped_storage().data_ptr() for t in ts if isinstance(t, torch.Tensor)]


def _materialize(A, shape: tuple) -> torch.Tensor:
    if isinstance(A, torch.Tensor):
        return A
    s = A.s
    B, D = s.shape
    return torch.diag_embed(s).reshape(B, D, *shape)


def _dense_e(e, shape: tuple) -> torch.Tensor:
    if isinstance(e, torch.Tensor):
        return e
    B, K = e.idx.shape
    n = math.prod(shape)
    block = torch.zeros(B, K, n, dtype=e.vals.dtype, device=e.vals.device).scatter(
        2, e.idx.unsqueeze(-1), e.vals.unsqueeze(-1))
    return block.reshape(B, K, *shape)


class _SymbolicRunner:
    def __init__(self, plan: _Plan, l2: bool, intersect: bool, jac_budget: int, coefficients: bool = False):
        self.plan, self.l2, self.intersect = plan, l2, intersect
        self.coefficients = coefficients  # also return the margins' input coefficients
        self.jac_budget = jac_budget
        self.jac: dict = {}   # node name → Jacobian of its linear part (n_in, *out), shared by all chunks

    def jacobian(self, name: str, op: _Affine, in_shape: tuple, like: torch.Tensor) -> torch.Tensor:
        J = self.jac.get(name)
        if J is None:
            n = math.prod(in_shape)
            eye = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *in_shape)
            J = op.lin(eye)
            self.jac[name] = J
        return J

    # concretisation -----------------------------------------------------------------------------
    def radius(self, s: _Sym, shape: tuple) -> torch.Tensor:
        B = s.c.shape[0]
        if isinstance(s.A, _Diag):
            rad = s.A.s.abs().reshape(B, *shape)
        else:  # ‖A_row‖₁ for the box (δ ∈ [−1, 1]^d), ‖A_row‖₂ for the L2 ball (dual norms)
            rad = torch.linalg.vector_norm(s.A, 2 if self.l2 else 1, dim=1)
        for e in s.E.values():
            if isinstance(e, _SparseE):
                rad = rad.reshape(B, -1).scatter_add(1, e.idx, e.vals.abs()).reshape(B, *shape)
            else:
                rad = rad + torch.linalg.vector_norm(e, 1, dim=1)
        return rad

    def bounds(self, s: _Sym, shape: tuple):
        rad = self.radius(s, shape)
        lo, hi = s.c - rad, s.c + rad
        if s.box is not None:
            lo = torch.maximum(lo, s.box.c - s.box.r)
            hi = torch.minimum(hi, s.box.c + s.box.r)
        return lo, hi

    # layers -------------------------------------------------------------------------------------
    def affine(self, name: str, op: _Affine, s: _Sym, in_shape: tuple) -> _Sym:
        c = op.full(s.c)
        n_in = math.prod(in_shape)
        d_flat = None
        if op.diag is not None:
            d_flat = op.diag.to(s.c)
            d_flat = d_flat.expand(in_shape).reshape(1, -1) if d_flat.ndim else d_flat
        if isinstance(s.A, _Diag):
            if op.reshape:
                A = s.A
            elif d_flat is not None:
                A = _Diag(s.A.s * d_flat)
            else:
                J = self.jacobian(name, op, in_shape, s.c)           # (D, *out), batch independent
                A = s.A.s.reshape(*s.A.s.shape, *([1] * (J.ndim - 1))) * J.unsqueeze(0)
        else:
            A = _fold_apply(op.lin, s.A)
        E = {}
        for k, e in s.E.items():
            if not isinstance(e, _SparseE):
                E[k] = _fold_apply(op.lin, e)
            elif op.reshape:
                E[k] = e
            elif d_flat is not None:
                E[k] = _SparseE(e.idx, e.vals * (d_flat.expand(1, n_in)[0][e.idx] if d_flat.ndim else d_flat))
            else:
                B, K = e.idx.shape
                out_numel = math.prod(self.plan_shape(name))
                if name in self.jac or (n_in <= 2 * B * K and
                                        n_in * out_numel * s.c.element_size() <= self.jac_budget):
                    J = self.jacobian(name, op, in_shape, s.c)
                    cols = J.reshape(n_in, -1).index_select(0, e.idx.reshape(-1)).reshape(B, K, -1)
                    E[k] = (cols * e.vals.unsqueeze(-1)).reshape(B, K, *J.shape[1:])
                else:
                    E[k] = _fold_apply(op.lin, _dense_e(e, in_shape))
        box = _box_affine(op, s.box) if s.box is not None else None
        return _Sym(c, A, E, box)

    def plan_shape(self, name: str) -> tuple:
        return self.shapes[name]

    def relu(self, s: _Sym, shape: tuple, name: str, owned: Callable = lambda t: False) -> _Sym:
        """Relax a ReLU; ``owned(t)`` says a coefficient tensor may be scaled in place (no one else sees it)."""
        B = s.c.shape[0]
        lo, hi = self.bounds(s, shape)
        unstable = (lo < 0) & (hi > 0)
        # λ = u/(u − l) for unstable neurons, 1 for l ≥ 0, 0 for u ≤ 0
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        lam = torch.where(unstable, hi / denom, (lo >= 0).to(hi.dtype))
        mu = torch.where(unstable, -lam * lo / 2, torch.zeros_like(lo))    # −λl/2 ≥ 0
        c = lam * s.c + mu
        lam_b = lam.unsqueeze(1)
        lam_flat = lam.reshape(B, -1)
        if isinstance(s.A, torch.Tensor) and owned(s.A):   # no autograd, no other reader: scale in place
            A = s.A.mul_(lam_b)
        else:
            A = _materialize(s.A, shape) * lam_b
        E = {}
        for k, e in s.E.items():
            if isinstance(e, _SparseE):
                E[k] = _SparseE(e.idx, e.vals * lam_flat.gather(1, e.idx))
            else:
                E[k] = e.mul_(lam_b) if owned(e) else e * lam_b
        # one fresh error term of size −λl/2 per unstable neuron, packed per sample
        flat_u = unstable.reshape(B, -1)
        K = int(flat_u.sum(1).max()) if B else 0
        if K > 0:
            order = torch.argsort(flat_u.to(torch.int8), dim=1, descending=True, stable=True)[:, :K]
            valid = flat_u.gather(1, order).to(mu.dtype)
            E[name] = _SparseE(order, mu.reshape(B, -1).gather(1, order) * valid)
        box = None
        if s.box is not None:
            box = _box_relu(_Box((hi + lo) / 2, (hi - lo) / 2))
        return _Sym(c, A, E, box)

    def add(self, a: _Sym, b: _Sym, shape: tuple, sign: float) -> _Sym:
        c = a.c + b.c if sign > 0 else a.c - b.c
        if isinstance(a.A, _Diag) and isinstance(b.A, _Diag):
            A = _Diag(a.A.s + b.A.s if sign > 0 else a.A.s - b.A.s)
        else:
            A1, A2 = _materialize(a.A, shape), _materialize(b.A, shape)
            A = A1 + A2 if sign > 0 else A1 - A2
        E = dict(a.E)
        for k, v in b.E.items():
            if isinstance(v, _SparseE):
                v = v if sign > 0 else _SparseE(v.idx, -v.vals)
            else:
                v = v if sign > 0 else -v
            if k not in E:
                E[k] = v
            elif isinstance(E[k], _SparseE) and isinstance(v, _SparseE) and E[k].idx is v.idx:
                E[k] = _SparseE(v.idx, E[k].vals + v.vals)   # same error terms (shared history)
            else:
                E[k] = _dense_e(E[k], shape) + _dense_e(v, shape)
        box = None
        if a.box is not None:
            box = _Box(a.box.c + b.box.c if sign > 0 else a.box.c - b.box.c, a.box.r + b.box.r)
        return _Sym(c, A, E, box)

    def run(self, state: _Sym, y: Optional[torch.Tensor]):
        plan = self.plan
        env = {plan.input_name: state}
        self.shapes = shapes = {plan.input_name: plan.in_shape}
        for n in plan.nodes:
            shapes[n.name] = n.shape
        for i, n in enumerate(plan.nodes):
            ins = [env[a] for a in n.inputs]
            if n.kind == "affine":
                out = self.affine(n.name, n.op, ins[0], shapes[n.inputs[0]])
            elif n.kind == "relu":
                src = n.inputs[0]
                owned = lambda t: False  # noqa: E731 - with autograd on, or while src is read later: copy
                if not torch.is_grad_enabled() and plan.last_use.get(src) == i:
                    # Scaling in place is safe only for tensors no other live node shares: an addition
                    # reuses its operands' error-term tensors and a reshape returns views of its input.
                    shared = {p for k, v in env.items() if k != src for p in _storage_ptrs(v)}
                    owned = lambda t, _s=shared: t.untyped_storage().data_ptr() not in _s  # noqa: E731
                out = self.relu(ins[0], n.shape, n.name, owned)
            else:
                out = self.add(ins[0], ins[1], n.shape, 1.0 if n.kind == "add" else -1.0)
            env[n.name] = out
            for a in n.inputs:
                if plan.last_use.get(a) == i:
                    env.pop(a, None)
        s = env[plan.output_name]
        shape = plan.out_shape
        if y is None:
            return self.bounds(s, shape)
        # margin specification z_j − z_y, applied to the affine forms before concretising
        B = s.c.shape[0]
        A = _materialize(s.A, shape).reshape(B, -1, math.prod(shape))
        E = {k: _dense_e(v, shape) for k, v in s.E.items()}
        s2 = _Sym(_spec(s.c.reshape(B, -1), y), _spec(A, y),
                  {k: _spec(v.reshape(B, v.shape[1], -1), y) for k, v in E.items()})
        lo, hi = self.bounds(s2, (math.prod(shape),))
        if self.coefficients:
            return lo, hi, s2.A.transpose(1, 2)  # (B, K, D): ∂(margin_j)/∂δ, half-width included
        return lo, hi


def default_memory_budget(device) -> int:
    """Bytes the symbolic coefficients may use: 1 GiB on CPU, 40 % of free memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 1 << 30


def estimate_sample_bytes(plan_or_model, example: Optional[torch.Tensor] = None) -> int:
    """Estimated peak bytes of symbolic propagation for ONE sample.

    ``≈ 4 · d · n_max · itemsize`` where ``d`` is the input dimension and
    ``n_max`` the largest layer (the input coefficients ``A`` before and after a
    layer plus a temporary of the same size). Error terms of unstable ReLUs come
    on top and depend on the data; the chunking leaves them room by the factor 4.
    """
    if isinstance(plan_or_model, _Plan):
        plan = plan_or_model
        itemsize = torch.finfo(torch.float32).bits // 8 if example is None else example.element_size()
    else:
        if example is None:
            raise ValueError("estimate_sample_bytes(model, example) needs an example input")
        plan = _prepare(plan_or_model, example)
        itemsize = example.element_size()
    d = math.prod(plan.in_shape)
    return 4 * d * plan.max_numel * itemsize


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom) or "out of memory" in str(exc)


def _run_symbolic_chunked(plan: _Plan, mode: str, a, b, y, memory_budget, intersect: bool,
                          coefficients: bool = False):
    example = a
    B = example.shape[0]
    if B == 0:
        K = math.prod(plan.out_shape)
        shape = (0, K) if y is not None else (0, *plan.out_shape)
        z = torch.zeros(shape, dtype=example.dtype, device=example.device)
        return z, z.clone()
    budget = default_memory_budget(example.device) if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    per = estimate_sample_bytes(plan, example)
    chunk = int(max(1, min(B, budget // max(per, 1))))
    runner = _SymbolicRunner(plan, l2=(mode == "l2"), intersect=intersect, jac_budget=budget // 4,
                             coefficients=coefficients)
    los, his, coefs = [], [], []
    start = 0
    while start < B:
        stop = min(B, start + chunk)
        try:
            if mode == "l2":
                c = a[start:stop]
                e = b[start:stop]
                D = math.prod(c.shape[1:])
                state = _Sym(c, _Diag(e.unsqueeze(1).expand(-1, D)), {},
                             _L2Ball(c, e).box() if intersect else None)
            else:
                lo_in, hi_in = a[start:stop], b[start:stop]
                st = _input_state_box(lo_in, hi_in)
                state = _Sym(st.c, _Diag(st.r.reshape(st.r.shape[0], -1)), {}, st if intersect else None)
            out = runner.run(state, None if y is None else y[start:stop])
        except RuntimeError as exc:
            if _is_oom(exc) and chunk > 1:
                del exc
                if example.device.type == "cuda":
                    torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)
                continue
            raise
        los.append(out[0])
        his.append(out[1])
        if coefficients:
            coefs.append(out[2])
        start = stop
    if coefficients:
        return torch.cat(los), torch.cat(his), torch.cat(coefs)
    return torch.cat(los), torch.cat(his)


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
    plan = _prepare(model, example)
    return _run_symbolic_chunked(plan, mode, a, b, None, memory_budget, intersect_interval)


# --------------------------------------------------------------------------------------------------
# specification, verification, robust loss
# --------------------------------------------------------------------------------------------------

_METHODS = ("symbolic", "interval")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def margin_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, y, method: str = "symbolic", *,
                  memory_budget: Optional[int] = None, intersect_interval: bool = False):
    r"""Bounds of the margins ``z_j − z_y`` over the box, shape ``(N, K)``; the ``y`` entry is 0.

    The specification ``C = e_j − e_y`` is applied before concretising: for
    ``"symbolic"`` to the affine forms of the logits (equal to folding ``C`` into
    the last linear layer), for ``"interval"`` folded into the weights of the final
    ``nn.Linear`` / ``F.linear`` (``W' = W_j − W_y``, ``b' = b_j − b_y``), or as
    ``[l_j − u_y, u_j − l_y]`` when the network does not end with one.
    """
    _check_method(method)
    _check_box(lower, upper)
    plan = _prepare(model, lower)
    if len(plan.out_shape) != 1:
        raise ValueError(f"margins need a model with (N, K) logits, got per-sample output shape {plan.out_shape}")
    y = _check_labels(y, lower.shape[0], plan.out_shape[0], lower.device)
    if method == "interval":
        return _run_interval(plan, _input_state_box(lower, upper), y)
    lo, hi = _run_symbolic_chunked(plan, "box", lower, upper, y, memory_budget, intersect_interval)
    if intersect_interval:
        ilo, ihi = _run_interval(plan, _input_state_box(lower, upper), y)
        lo, hi = torch.maximum(lo, ilo), torch.minimum(hi, ihi)
    return lo, hi


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
    _check_box(lower, upper)
    plan = _prepare(model, lower)
    if len(plan.out_shape) != 1:
        raise ValueError(f"margins need a model with (N, K) logits, got per-sample output shape {plan.out_shape}")
    y = _check_labels(y, lower.shape[0], plan.out_shape[0], lower.device)
    lo, hi, A = _run_symbolic_chunked(plan, "box", lower, upper, y, memory_budget, False, coefficients=True)
    return lo, hi, A.reshape(*A.shape[:2], *lower.shape[1:])


def verify(model: nn.Module, x: torch.Tensor, y, eps, method: str = "symbolic", *,
           memory_budget: Optional[int] = None, intersect_interval: bool = False,
           clamp: Optional[tuple] = (0.0, 1.0)) -> torch.Tensor:
    r"""Certify L∞ robustness: a bool per sample, True iff ``max_{j≠y} u_j < 0``.

    ``u_j`` is the upper bound of ``z_j − z_y`` over ``[x − ε, x + ε] ∩ [0, 1]``
    (``clamp=None`` drops the pixel-range intersection). Runs without gradients.
    """
    _check_method(method)
    _check_finite("x", x)
    lower, upper = input_box(x, eps, clamp)
    with torch.no_grad():
        _, hi = margin_bounds(model, lower, upper, y, method, memory_budget=memory_budget,
                              intersect_interval=intersect_interval)
        y = torch.as_tensor(y, device=x.device).long()
        hi = hi.scatter(1, y.view(-1, 1), float("-inf"))
        return (hi < 0).all(1)


def robust_loss(model: nn.Module, x: torch.Tensor, y, eps, method: str = "symbolic", *,
                memory_budget: Optional[int] = None, intersect_interval: bool = False,
                clamp: Optional[tuple] = (0.0, 1.0)) -> torch.Tensor:
    r"""Per-example robust cross-entropy ``CE(u, y)`` with ``u_y = 0``: ``log(1 + Σ_{j≠y} exp(u_j))``.

    ``u_j`` is the upper bound of ``z_j − z_y`` over ``[x − ε, x + ε] ∩ [0, 1]``.
    Differentiable w.r.t. the model parameters; shape ``(N,)``.
    """
    _check_method(method)
    _check_finite("x", x)
    lower, upper = input_box(x, eps, clamp)
    _, hi = margin_bounds(model, lower, upper, y, method, memory_budget=memory_budget,
                          intersect_interval=intersect_interval)
    y = torch.as_tensor(y, device=x.device).long()
    return F.cross_entropy(hi, y, reduction="none")
