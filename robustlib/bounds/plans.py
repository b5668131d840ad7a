"""A network as a plan, made once and reused: fx tracing (cached per model and its structure), the checks, the
probe that builds the plan (:mod:`robustlib.bounds.graph`), and, without autograd, the plan of an unchanged
network reused between calls."""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..checks import check_model_input
from . import ops
from .errors import SUPPORTED_OPERATIONS, UnsupportedOperation
from .graph import Plan, build_plan, validate


# ----------------------------------------------------------------------------- tracing

# model → (structure signature, traced graph). The signature lists every submodule (name, object, class),
# so replacing a layer (``net[3] = nn.Linear(8, 3)``) re-traces instead of bounding a stale copy.
_TRACE_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    """Every submodule (name, object, class) and its plain settings, and the identities of tensors kept as plain
    attributes: tracing bakes Python values that ``forward`` reads (``x / self.temperature``) into the graph, so a
    changed value re-traces."""
    return tuple((name, id(m), type(m), _plain_settings(m),
                  tuple((k, id(v)) for k, v in m.__dict__.items() if isinstance(v, torch.Tensor)),
                  tuple(map(id, m._forward_hooks.values())), tuple(map(id, m._forward_pre_hooks.values())))
                 for name, m in model.named_modules()) + (type(model).forward,)


def _plain_settings(m: nn.Module) -> tuple:
    return tuple((k, v) for k, v in m.__dict__.items()
                 if type(v) in _PLAIN or (type(v) is tuple and all(type(e) in _PLAIN for e in v)))


def trace(model: nn.Module, sig: Optional[tuple] = None) -> fx.GraphModule:
    sig = _signature(model) if sig is None else sig
    cached = _TRACE_CACHE.get(model)
    if cached is not None and cached[0] == sig:
        return cached[1]
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means we cannot analyse the graph
        raise UnsupportedOperation(
            f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); bounds need a "
            f"traceable network made of: {SUPPORTED_OPERATIONS}") from exc
    _TRACE_CACHE[model] = (sig, gm)
    return gm


def _check_hooks(model: nn.Module) -> None:
    """Refuse forward hooks that may change values (the plan is built from the layers' weights and never runs them);
    hooks marked ``keeps_values = True`` (robustlib's own layout hooks during ``fit``) pass."""
    for name, m in model.named_modules():
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
            if getattr(hook, "keeps_values", False) is not True:
                raise UnsupportedOperation(
                    f"module {name or type(model).__name__!r} has a forward hook ({getattr(hook, '__name__', hook)!r}) "
                    f"that may change its values, which bounds cannot see; remove it while computing bounds, or mark "
                    f"a hook that leaves values unchanged with `hook.keeps_values = True`")


def _check_fidelity(model: nn.Module, gm: fx.GraphModule, probe: torch.Tensor) -> None:
    """Refuse a network whose traced graph computes something else than the network itself: an in-place change
    that the tracer records as an out-of-place one (``z = h; z += c`` while ``h`` is read again), a forward hook
    that changes values, a value read from a tensor's data. Bounds of the graph would not be bounds of the model."""
    with torch.autocast(probe.device.type, enabled=False):
        ours, theirs = gm(probe.clone()), model(probe.clone())
    if not (torch.is_tensor(theirs) and ours.shape == theirs.shape
            and torch.allclose(ours.float(), theirs.float(), rtol=1e-3, atol=1e-4)):
        raise UnsupportedOperation(
            f"the traced graph of {type(model).__name__} does not reproduce its output (an in-place change of a tensor "
            f"that is read again, a forward hook that changes values, or a value read from a tensor's data, which "
            f"tracing cannot follow): bounds of the graph would not bound the network; bounds support only: "
            f"{SUPPORTED_OPERATIONS}")


# ----------------------------------------------------------------------------- reused plans

# model → {state key → plan}: without autograd the plan of an unchanged model is reused (building it runs the
# probe and makes every layer's maps: 0.8 ms of the 7.5 ms that MixTrain's MNIST_Small took for one sample's
# symbolic bounds at ε = 0.1 on the 2-core CPU, 2026-11-27). The key holds every parameter's and buffer's
# identity, storage and version (an optimizer step or a running-statistics update makes a new plan), every
# module's plain settings (stride, padding, eps, ...) and the input's per-sample shape, dtype and device. Under
# autograd a fresh plan is built: its constants (BatchNorm's scale) carry the graph of the call that
# backpropagates through them.
_PLAN_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_PLAIN = {int, float, bool, str, type(None)}


# model → (state key, content checksum) of its last reused plan: some in-place writes change values without a new
# version (fused optimizers, collectives such as DDP's broadcast, writes through .data), so a plan is reused only while
# a checksum of the weights is unchanged too; a change the versions missed also drops the derived weight copies.
_CONTENT: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _checksum(model: nn.Module) -> tuple:
    """Σt and Σt² of every floating-point parameter and buffer (in its dtype, no copies), read in one transfer."""
    sums = []
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and t.is_floating_point():
                flat = t.detach().reshape(-1)
                sums += [flat.sum(), torch.dot(flat, flat)]
    return tuple(torch.stack(sums).tolist()) if sums else ()


def _forget_if_changed_unseen(model: nn.Module, key: tuple) -> None:
    content = _checksum(model)
    seen = _CONTENT.get(model)
    if seen is not None and seen[0] == key and seen[1] != content:
        _PLAN_CACHE.pop(model, None)
        ops.forget_derived()
    _CONTENT[model] = (key, content)


def _state_key(model: nn.Module, example: torch.Tensor, sig: tuple) -> tuple:
    key = [sig, tuple(example.shape[1:]), example.dtype, example.device]
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                key.append((id(t), t.data_ptr(), t._version))
        key.append(_plain_settings(m))
    return tuple(key)


def prepare(model: nn.Module, example: torch.Tensor) -> Plan:
    """Trace + validate (no tensors), then a light probe forward on 2 samples for shapes; without autograd the
    plan of the same model in the same state and input shape is reused (the checks passed for that state)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sig = _signature(model)
    key = None
    if not torch.is_grad_enabled():
        key = _state_key(model, example, sig)
        _forget_if_changed_unseen(model, key)
        plan = _PLAN_CACHE.get(model, {}).get(key)
        if plan is not None:
            check_model_input(model, example)
            return plan
    _check_hooks(model)
    cached = _TRACE_CACHE.get(model)
    fresh = cached is None or cached[0] != sig
    gm = trace(model, sig)
    try:
        dep = validate(gm)
        check_model_input(model, example)
        plan = _build(model, gm, dep, example, check=fresh)
    except (UnsupportedOperation, ValueError):
        if fresh:   # checked again at the next call, not taken for a trace that passed
            _TRACE_CACHE.pop(model, None)
        raise
    if key is not None:
        plans = _PLAN_CACHE.setdefault(model, {})
        if len(plans) >= 4:
            plans.clear()
        plans[key] = plan
    return plan


def _build(model: nn.Module, gm: fx.GraphModule, dep: set, example: torch.Tensor, check: bool = False) -> Plan:
    """The plan, from a probe of the example's first sample; ``check`` (a new trace): the traced graph must compute
    what the model computes on that probe."""
    probe = example[:1].detach()
    if probe.shape[0] == 0:
        probe = torch.zeros((1, *example.shape[1:]), dtype=example.dtype, device=example.device)
    probe = probe.expand(2, *probe.shape[1:]).contiguous()
    try:
        with torch.no_grad():
            plan = build_plan(gm, dep, probe)
            if check:
                _check_fidelity(model, gm, probe)
            return plan
    except UnsupportedOperation:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(f"an input of per-sample shape {tuple(example.shape[1:])} does not fit the model "
                         f"{type(model).__name__}: {exc}") from exc
