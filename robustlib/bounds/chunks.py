"""Symbolic propagation of a batch in chunks: how many samples fit a memory budget, and the loop over them.

The coefficient tensors of one sample take ``d × n`` numbers per layer (:func:`estimate_sample_bytes`), so a
batch runs in chunks: on CUDA as many samples as 40 % of the free memory holds (halved and retried on
out-of-memory), on a CPU at most what fits ``CPU_CHUNK_BYTES``; with ``checkpoint=True`` each chunk is recomputed
in the backward pass instead of kept.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.utils.checkpoint

from .. import allocator
from . import patches
from . import symbolic as _symbolic
from .graph import Plan
from .plans import prepare
from .symbolic import SymbolicRunner, initial_state


def default_memory_budget(device) -> int:
    """Bytes the symbolic coefficients may use: 1 GiB on CPU, 40 % of free memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 1 << 30


# On a CPU the coefficient tensors stream through memory several times per layer (the linear map, the
# concretisation, the ReLU scaling), so small chunks beat one large chunk. On the 2-core EPYC here, with glibc's
# allocator thresholds fixed (robustlib.allocator), the bounds of a batch of 16 ran 2.5x (MNIST_Large) and 2.2x
# (CIFAR_Small) faster in these chunks than in one chunk of 16, and MNIST_Small the same (benchmarks/bench_bounds.py,
# 2026-11-26, "symbolic, one chunk"). The 1.05-2.0x measured before the allocator was fixed, with MNIST_Small
# gaining most, partly measured the page faults of the larger tensors. CUDA keeps the memory budget alone.
CPU_CHUNK_BYTES = 32 << 20


def default_chunk(per_sample_bytes: int, device, memory_budget: Optional[int] = None) -> int:
    """Samples per chunk of symbolic propagation: what ``memory_budget`` allows (default
    :func:`default_memory_budget`); on CPU without an explicit budget also at most what fits
    ``CPU_CHUNK_BYTES`` (at least one)."""
    device = torch.device(device)
    budget = default_memory_budget(device) if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    if memory_budget is None and device.type == "cpu":
        budget = min(budget, CPU_CHUNK_BYTES)
    return int(max(1, budget // max(per_sample_bytes, 1)))


def estimate_sample_bytes(plan_or_model, example: Optional[torch.Tensor] = None) -> int:
    """Estimated peak bytes of symbolic propagation for ONE sample.

    ``≈ 4 · max_layer(n · columns) · itemsize``: ``n`` a layer's neurons, ``columns`` the numbers each holds for
    the input noise — ``d`` (the input dimension) when dense, the window size where a convolution keeps them as
    windows (:mod:`robustlib.bounds.patches`): the input coefficients ``A`` before and after a layer plus a
    temporary of the same size. Error terms of unstable ReLUs come on top and depend on the data; the chunking
    leaves them room by the factor 4.
    """
    if isinstance(plan_or_model, Plan):
        plan = plan_or_model
        itemsize = torch.finfo(torch.float32).bits // 8 if example is None else example.element_size()
    else:
        if example is None:
            raise ValueError("estimate_sample_bytes(model, example) needs an example input")
        plan = prepare(plan_or_model, example)
        itemsize = example.element_size()
    return 4 * _coefficient_numel(plan) * itemsize


def _coefficient_numel(plan: Plan) -> int:
    """The most input coefficients one sample holds at a node: the propagation's forms, followed through the plan
    (diagonal until the first non-diagonal affine layer, windows through convolutions, else dense)."""
    d = math.prod(plan.in_shape)
    form = {plan.input_name: "diagonal"}    # node → "diagonal" | "dense" | (Cg, (K1, K2), (S1, S2))
    most = d
    for n in plan.nodes:
        f = form[n.inputs[0]]
        op = n.op
        if n.kind in ("add", "sub"):
            f = "dense"
        elif n.kind == "affine" and not op.reshape and op.diag is None:
            if op.conv is not None and _symbolic.PATCHES and f != "dense":
                kernel = tuple(op.conv[0].shape[2:])
                if f == "diagonal":
                    f = (op.conv[0].shape[1], kernel, op.conv[1])
                else:
                    window = patches.grown(f[1], f[2], kernel)
                    f = (f[0], window, tuple(a * b for a, b in zip(f[2], op.conv[1]))) \
                        if patches.smaller_than_input(f[0], window, plan.in_shape) else "dense"
            else:
                f = "dense"
        form[n.name] = f
        columns = 1 if f == "diagonal" else d if f == "dense" else f[0] * math.prod(f[1])
        most = max(most, math.prod(n.shape) * columns)
    return most


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom) or "out of memory" in str(exc)


def run_chunked(plan: Plan, mode: str, a, b, y, memory_budget, intersect: bool,
                          coefficients: bool = False, checkpoint: bool = False):
    example = a
    B = example.shape[0]
    if B == 0:
        K = math.prod(plan.out_shape)
        shape = (0, K) if y is not None else (0, *plan.out_shape)
        z = torch.zeros(shape, dtype=example.dtype, device=example.device)
        return z, z.clone()
    if example.device.type == "cpu":
        allocator.steady()   # the coefficient tensors are large: reuse freed memory (robustlib.allocator)
    budget = default_memory_budget(example.device) if memory_budget is None else int(memory_budget)
    chunk = min(B, default_chunk(estimate_sample_bytes(plan, example), example.device, memory_budget))
    runner = SymbolicRunner(plan, l2=(mode == "l2"), jac_budget=budget // 4,
                             coefficients=coefficients)
    los, his, coefs = [], [], []
    start = 0
    while start < B:
        stop = min(B, start + chunk)
        try:
            y_c = None if y is None else y[start:stop]
            if checkpoint and torch.is_grad_enabled():
                # keep no chunk's coefficients for the backward pass: recompute them there, one chunk at a time
                # (a runner of its own per chunk, so that no tensor of one chunk's graph feeds another's)
                def one(a_c, b_c, y_c):
                    own = SymbolicRunner(plan, l2=(mode == "l2"), jac_budget=budget // 4, coefficients=coefficients)
                    return own.run(initial_state(mode, a_c, b_c, intersect), y_c)
                out = torch.utils.checkpoint.checkpoint(one, a[start:stop], b[start:stop], y_c, use_reentrant=False)
            else:
                out = runner.run(initial_state(mode, a[start:stop], b[start:stop], intersect), y_c)
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
