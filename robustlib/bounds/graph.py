"""A traced network as a plan for bound propagation: one table of supported operations, the plan, the walker.

:func:`validate` checks every input-dependent node of a traced graph against :data:`the handler table
<_MODULES>` before any tensor work; :func:`build_plan` runs the graph once on a two-sample probe to record
shapes and constants and turns each input-dependent node into a plan node: ``affine`` (with its
:class:`~.ops.Affine` map), ``relu``, ``add`` or ``sub``. Each supported operation has one :class:`Handler`
holding both its check and its plan builder. :func:`walk` runs a plan forward for any propagation (interval or
symbolic), freeing each intermediate state after its last use. Tracing and the reuse of plans live in
:mod:`robustlib.bounds.plans`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnsupportedOperation, unsupported
from .ops import Affine, conv_affine, conv_geometry, conv_rows, diag_affine, linear_affine, pool_affine, reshape_affine


@dataclass
class Node:
    name: str
    kind: str                   # "affine" | "relu" | "add" | "sub"
    inputs: tuple               # names of dependent input nodes
    op: Optional[Affine] = None
    shape: tuple = ()           # per-sample output shape


@dataclass
class Plan:
    nodes: list
    input_name: str
    output_name: str
    in_shape: tuple
    out_shape: tuple
    last_use: dict = field(default_factory=dict)
    max_numel: int = 1


@dataclass
class Ctx:
    """What a handler's ``build`` sees of one input-dependent node after the probe run."""
    node: fx.Node
    args: tuple                 # concrete argument values
    kwargs: dict
    deps: list                  # input-dependent argument nodes
    shape: tuple                # per-sample output shape
    in_shape: Optional[tuple]   # per-sample shape of the first dependent argument
    module: Optional[nn.Module]
    add: Callable               # add(kind, input nodes, Affine | None)

    @property
    def x(self):
        return self.deps[0]

    def arg(self, i: int, name: str, default=None):
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)


def _no_check(node, dep, what, module):
    return None


@dataclass(frozen=True)
class Handler:
    build: Callable[[Ctx], None]
    check: Callable = _no_check     # check(node, dep, what, module): raise before any tensor work


def _is_dep(a, dep) -> bool:
    return isinstance(a, fx.Node) and a.name in dep


def _check_alpha(node, dep, what, module):
    if node.kwargs.get("alpha", 1) != 1:
        raise unsupported(node, what, "alpha != 1")


def _check_linear_in_input(name):
    def check(node, dep, what, module):
        ndep = sum(_is_dep(a, dep) for a in node.all_input_nodes)
        if ndep > 1 or (name == "div" and not _is_dep(node.args[0], dep)):
            raise unsupported(node, what, "products / quotients of input-dependent tensors are not linear")
    return check


def _check_first_only(why):
    def check(node, dep, what, module):
        a0 = node.args[0] if node.args else node.kwargs.get("input")
        if sum(_is_dep(a, dep) for a in node.all_input_nodes) > 1 or not _is_dep(a0, dep):
            raise unsupported(node, what, why)
    return check


def _check_eval_bn(node, dep, what, mod):
    if mod.training or not mod.track_running_stats or mod.running_mean is None:
        raise unsupported(node, what, "BatchNorm must be in eval mode with running statistics: call model.eval() "
                          "first")


def _check_dropout(node, dep, what, mod):
    training = mod.training and mod.p > 0 if mod is not None else \
        node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
    if training:
        raise unsupported(node, what, "dropout in training mode is random: call model.eval() first")


def _check_getitem(node, dep, what, module):
    raise unsupported(node, "indexing / slicing (operator.getitem)", "slicing an input-dependent tensor is not "
                      "supported")


def _batchnorm(c: Ctx):
    mod = c.module
    scale = torch.rsqrt(mod.running_var + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight
    shift = -mod.running_mean * scale
    if mod.bias is not None:
        shift = shift + mod.bias
    view = (-1,) + (1,) * (len(c.in_shape) - 1)
    c.add("affine", [c.x], diag_affine(scale.view(view), c.in_shape, shift.view(view)))


def _conv_function(c: Ctx):
    names = ("stride", "padding", "dilation", "groups")
    extra = {k: c.arg(3 + i, k) for i, k in enumerate(names)}
    extra = {k: v for k, v in extra.items() if v is not None}
    fn = c.node.target

    def conv(u, w, b):
        return fn(u, w, b, **extra)
    w = c.arg(1, "weight")
    rows = conv_rows(w, c.in_shape, c.shape, extra.get("stride", 1), extra.get("padding", 0),
                     extra.get("dilation", 1), extra.get("groups", 1))
    geometry = conv_geometry(w, extra.get("stride", 1), extra.get("padding", 0), extra.get("dilation", 1),
                             extra.get("groups", 1))
    c.add("affine", [c.x], conv_affine(conv, w, c.arg(2, "bias"), True, rows, geometry))  # F.conv* pads zeros


def _conv_module(c: Ctx):
    m = c.module
    rows = conv_rows(m.weight, c.in_shape, c.shape, m.stride, m.padding, m.dilation, m.groups)
    geometry = conv_geometry(m.weight, m.stride, m.padding, m.dilation, m.groups)
    c.add("affine", [c.x], conv_affine(m._conv_forward, m.weight, m.bias, m.padding_mode == "zeros", rows, geometry))


def _pool_function(c: Ctx):
    fn, rest, kw = c.node.target, c.args[1:], {k: v for k, v in c.kwargs.items() if k != "input"}
    c.add("affine", [c.x], pool_affine(lambda u: fn(u, *rest, **kw)))


def _binary(name: str) -> Handler:
    """add / sub / mul / div where at least one operand is input-dependent."""
    def build(c: Ctx):
        node = c.node
        other_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        a_dep, b_dep = (any(isinstance(n, fx.Node) and d.name == n.name for d in c.deps)
                        for n in (node.args[0], other_node))
        if a_dep and b_dep:
            if name not in ("add", "sub"):
                raise unsupported(node, name, "products / quotients of input-dependent tensors are not linear")
            c.add(name, [node.args[0], other_node])
            return
        x = node.args[0] if a_dep else other_node
        const = c.arg(1, "other") if a_dep else c.args[0]
        if name == "add":
            op = diag_affine(1.0, c.shape, const)
        elif name == "sub":
            op = diag_affine(1.0, c.shape, -const if torch.is_tensor(const) else -float(const)) if a_dep \
                else diag_affine(-1.0, c.shape, const)
        elif name == "mul":
            op = diag_affine(const, c.shape)
        else:   # div with the dividend input-dependent (checked)
            op = diag_affine(const.reciprocal() if torch.is_tensor(const) else 1.0 / const, c.shape)
        c.add("affine", [x], op)
    checks = {"add": _check_alpha, "sub": _check_alpha}
    return Handler(build, checks.get(name, _check_linear_in_input(name)))


RELU = Handler(lambda c: c.add("relu", [c.x]))
RESHAPE = Handler(lambda c: c.add("affine", [c.x], reshape_affine(c.shape)))
NEG = Handler(lambda c: c.add("affine", [c.x], diag_affine(-1.0, c.shape)))

_MODULES = (   # (module classes, handler): the first match wins
    ((nn.ReLU,), RELU),
    ((nn.Linear,), Handler(lambda c: c.add("affine", [c.x], linear_affine(c.module.weight, c.module.bias,
                                                                          c.in_shape)))),
    ((nn.Conv1d, nn.Conv2d), Handler(_conv_module)),
    ((nn.BatchNorm1d, nn.BatchNorm2d), Handler(_batchnorm, _check_eval_bn)),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
     Handler(lambda c: c.add("affine", [c.x], pool_affine(c.module)))),
    ((nn.Flatten, nn.Unflatten, nn.Identity), RESHAPE),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d), Handler(RESHAPE.build, _check_dropout)),
)
_FUNCTIONS = {
    **{f: RELU for f in (F.relu, torch.relu, F.relu_, torch.relu_)},
    **{f: RESHAPE for f in (torch.flatten, torch.reshape)},
    F.dropout: Handler(RESHAPE.build, _check_dropout),
    **{f: NEG for f in (operator.neg, torch.neg)},
    **{f: Handler(_pool_function, _check_first_only("only the pooled tensor may depend on the input"))
       for f in (F.avg_pool2d, F.adaptive_avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool1d)},
    F.linear: Handler(lambda c: c.add("affine", [c.x], linear_affine(c.arg(1, "weight"), c.arg(2, "bias"),
                                                                     c.in_shape)),
                      _check_first_only("weights must not depend on the input")),
    **{f: Handler(_conv_function, _check_first_only("weights must not depend on the input"))
       for f in (F.conv1d, F.conv2d)},
    **{f: _binary("add") for f in (operator.add, operator.iadd, torch.add)},
    **{f: _binary("sub") for f in (operator.sub, operator.isub, torch.sub)},
    **{f: _binary("mul") for f in (operator.mul, operator.imul, torch.mul)},
    **{f: _binary("div") for f in (operator.truediv, operator.itruediv, torch.div)},
    operator.getitem: Handler(RESHAPE.build, _check_getitem),
}
_METHODS = {
    **{m: RESHAPE for m in ("view", "reshape", "flatten", "contiguous")},
    "relu": RELU, "relu_": RELU, "neg": NEG,
    **{m: _binary(m) for m in ("add", "sub", "mul", "div")},
}
_SHAPE_QUERIES = {("call_method", "size"), ("call_method", "dim")}
# attributes of an input-dependent tensor that do not depend on its values; any other (x.data, x.T, …) is refused,
# since what is computed from it would be taken for a constant
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}


def _is_shape_query(node: fx.Node) -> bool:
    if (node.op, node.target) in _SHAPE_QUERIES:
        return True
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] in _SHAPE_ATTRIBUTES


def _fn_name(target) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


def handler(node: fx.Node, gm: fx.GraphModule):
    """``(Handler, module or None, description)`` of a node, or UnsupportedOperation naming it."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        what = f"{type(mod).__name__} (module {node.target!r})"
        for types, h in _MODULES:
            if isinstance(mod, types):
                return h, mod, what
        raise unsupported(node, what)
    if node.op == "call_function":
        h, what = _FUNCTIONS.get(node.target), f"function {_fn_name(node.target)}"
    elif node.op == "call_method":
        h, what = _METHODS.get(node.target), f"Tensor.{node.target}"
    else:  # pragma: no cover - placeholders, outputs and attributes never reach here
        h, what = None, node.op
    if h is None:
        raise unsupported(node, what)
    return h, None, what


_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_, F.relu_}


def _mutates(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether the node changes its first argument in place (``+=``, ``relu_``, ``ReLU(inplace=True)``, …)."""
    if node.op == "call_function":
        return node.target in _IN_PLACE or bool(node.kwargs.get("inplace"))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    return False


def _check_in_place(node: fx.Node, gm: fx.GraphModule, order: dict) -> None:
    """An in-place change of a tensor that a later node reads again: PyTorch's later read sees the changed values,
    while the plan, built from the graph, would bound the unchanged ones."""
    if not (node.args and isinstance(node.args[0], fx.Node) and _mutates(node, gm)):
        return
    later = [u.name for u in node.args[0].users if u is not node and order[u] > order[node]]
    if later:
        raise unsupported(node, str(node.target), f"it changes {node.args[0].name!r} in place, which "
                          f"{', '.join(later)} read(s) again afterwards; use the out-of-place operation "
                          f"(ReLU(inplace=False), x = x + c)")


def validate(gm: fx.GraphModule) -> set:
    """Check every input-dependent node (graph and module attributes only); return their names."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOperation(f"bounds need a network with exactly one input, got "
                                   f"{len(placeholders)} ({[p.name for p in placeholders]})")
    dep: set = {placeholders[0].name}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        dependent = any(a.name in dep for a in node.all_input_nodes)
        if dependent:
            _check_in_place(node, gm, order)
        if node.op == "placeholder" or not dependent:
            if node.op == "output":
                raise UnsupportedOperation("the network's output does not depend on its input")
            continue
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise UnsupportedOperation(f"the network must return a single tensor, got "
                                           f"{type(node.args[0]).__name__} at graph node {node.name!r}")
            continue
        if _is_shape_query(node):
            continue  # shape queries: concrete, not input-dependent values
        dep.add(node.name)
        h, mod, what = handler(node, gm)
        h.check(node, dep, what, mod)
    return dep


# ----------------------------------------------------------------------------- the plan

def build_plan(gm: fx.GraphModule, dep: set, probe: torch.Tensor) -> Plan:
    """Run the graph once on a small probe batch, record shapes, and describe each dependent node."""
    values: dict = {}
    shapes: dict = {}
    nodes: list = []
    input_name = output_name = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node.name], shapes[node.name], input_name = probe, tuple(probe.shape[1:]), node.name
            continue
        if node.op == "output":
            output_name = node.args[0].name
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n.name])
        if node.op == "get_attr":
            out = gm
            for part in node.target.split("."):
                out = getattr(out, part)
        elif node.op == "call_module":
            out = gm.get_submodule(node.target)(*args, **kwargs)
        elif node.op == "call_function":
            out = node.target(*args, **kwargs)
        else:
            out = getattr(args[0], node.target)(*args[1:], **kwargs)
        values[node.name] = out
        if node.name not in dep:
            continue
        if not torch.is_tensor(out):
            raise unsupported(node, str(node.target), "it does not return a tensor")
        if out.ndim == 0 or out.shape[0] != probe.shape[0]:
            raise unsupported(node, str(node.target), f"it mixes the batch dimension (output shape "
                              f"{tuple(out.shape)} for a batch of {probe.shape[0]})")
        shape = shapes[node.name] = tuple(out.shape[1:])
        deps = [a for a in node.all_input_nodes if a.name in dep]
        in_shape = shapes[deps[0].name] if deps else None

        def add(kind, inputs, op=None, _name=node.name, _shape=shape):
            nodes.append(Node(_name, kind, tuple(i.name for i in inputs), op, _shape))

        h, mod, _ = handler(node, gm)
        with torch.enable_grad():   # constants made from parameters (BatchNorm's scale) keep their gradient
            h.build(Ctx(node, args, kwargs, deps, shape, in_shape, mod, add))
        last = nodes[-1]
        if last.kind in ("add", "sub") and any(shapes[i] != shape for i in last.inputs):
            raise unsupported(node, str(node.target), f"it {last.kind}s input-dependent tensors of shapes "
                              f"{' and '.join(str(shapes[i]) for i in last.inputs)} by broadcasting to {shape}; give "
                              f"both operands the same shape in the network")
        if last.kind == "affine" and not last.op.reshape and last.op.diag is not None \
                and in_shape is not None and tuple(in_shape) != shape:
            raise unsupported(node, str(node.target), f"an elementwise operation changed the shape "
                              f"{in_shape} → {shape} by broadcasting")

    plan = Plan(nodes, input_name, output_name, tuple(probe.shape[1:]), shapes[output_name])
    for i, n in enumerate(nodes):
        for a in n.inputs:
            plan.last_use[a] = i
        plan.max_numel = max(plan.max_numel, math.prod(n.shape))
    plan.last_use[output_name] = len(nodes)
    plan.max_numel = max(plan.max_numel, math.prod(plan.in_shape))
    return plan


def walk(plan: Plan, state, step: Callable):
    """Propagate ``state`` through the plan: ``env[n] = step(n, [env[i] for i in n.inputs], env)``.

    Each state is dropped after its last use (``env`` holds exactly the live ones when ``step``
    runs, the inputs of ``n`` included). Returns the output node's state.
    """
    env = {plan.input_name: state}
    for i, n in enumerate(plan.nodes):
        env[n.name] = step(n, [env[a] for a in n.inputs], env)
        for a in n.inputs:
            if plan.last_use.get(a) == i:
                env.pop(a, None)
    return env[plan.output_name]


def margin_spec(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``t[..., j] − t[..., y]`` for a (B, K) or (B, k, K) tensor: the specification C = e_j − e_y."""
    idx = y.view(-1, *([1] * (t.ndim - 1))).expand(*t.shape[:-1], 1)
    return t - t.gather(-1, idx)
