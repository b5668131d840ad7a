"""Convolutions computed by whichever of four equivalent kernels this machine runs fastest, per direction.

On a CPU, PyTorch hands convolutions to oneDNN, whose algorithm depends on the tensors' memory layout and dtype,
and the fastest choice differs from layer to layer *and* between the forward pass, the input gradient and the weight
gradient. Adversarial training spends most of its time on input gradients (K of them per training step), and for
the strided convolutions of the MixTrain networks oneDNN's default input-gradient kernel is a slow one. On the
2-core CPU of our benchmarks, for a batch of 128: the input gradient of MNIST_Small's first convolution (1 → 16
channels, 4×4, stride 2) takes 1.8 ms with the default kernel and 0.65 ms through space-to-depth; under bf16
autocast the weight gradient of its second convolution takes 2.3 ms with oneDNN's bf16 kernel and 0.9 ms computed
in fp32 (``timings``; the end-to-end gain is in ``benchmarks/bench_training.py``, variants ``tuned`` and
``bf16+tuned``).

Four ways to compute the same convolution, each taking and returning contiguous (NCHW) tensors:

* ``nchw``: PyTorch's own call on the tensors as they are;
* ``nhwc``: the same call on channels-last copies, the result copied back;
* ``s2d`` (space-to-depth): a stride-s convolution whose kernel size is a multiple of s equals a stride-1
  convolution with an s-times smaller kernel over the padded input rearranged by ``pixel_unshuffle(s)`` into
  s² times as many channels (the weight rearranged alike), cropped to the output size;
* ``s2d-nhwc``: the same in channels-last.

:func:`tune` swaps every eligible ``nn.Conv2d`` of a model for :class:`TunedConv2d` (same parameters, same
``state_dict`` keys; :func:`untune` swaps back). Inside :func:`active` a tuned convolution times the four
variants of each direction on random operands of its input's shape and dtype the first time it meets that shape
(batch sizes rounded up to a power of two),
and from then on computes each direction with the fastest: ``nchw`` unless another is at least ``MARGIN`` faster.
Outside :func:`active` (evaluation), inside ``torch.func`` transforms and under ``torch.fx`` tracing it is a
plain ``nn.Conv2d``. The choice for a shape is remembered for the process (:data:`_CACHE`), so every run of a process
uses the same kernels, and :func:`plans` / :func:`install` carry it through a checkpoint: a resumed run computes
with the kernels it started with. The variants differ only in float rounding (tests compare each with autograd
through ``F.conv2d``). Tuning draws its operands from its own generator: it never moves the global random state.
Below fp32 (bf16 autocast) the two direct variants computed in fp32 are candidates too. Without a fixed allocator
the timings do not repeat: :func:`tune` and :func:`timings` call :func:`robustlib.allocator.steady` first.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import allocator

VARIANTS = ("nchw", "nhwc", "s2d", "s2d-nhwc")
DIRECTIONS = ("forward", "input_grad", "weight_grad")
MARGIN = 1.1          # another variant replaces nchw only when it is at least this much faster
# A direction whose slowest variant takes longer than this per call is timed in ``SLOW_ROUNDS`` rounds of one call
# each (the last warm-up call the first of them) instead of ``rounds`` × ``calls``: such a call is far above the
# timer's resolution. With the full effort (17 calls of every variant) tuning PreAct-ResNet-18 at batch 256 took
# 65-76 s on the 2-core AMD EPYC (2026-11-28), its epoch 4-5 s; with this rule 18 s, its plans differing from a
# full-effort tuning's in 4 of 11 convolutions, as often as two full-effort tunings differed (near-ties).
# MNIST_Small's convolutions (about 1 ms a call at batch 128) keep the full effort.
SLOW_CALL_S = 0.02
SLOW_ROUNDS = 2
_DEFAULT = ("nchw",) * 3
_CL = torch.channels_last
_backward = torch.ops.aten.convolution_backward
_CACHE: dict[str, tuple] = {}   # (conv geometry, input shape, dtype) → plan, for the whole process
_ACTIVE = [False]


def eligible(conv: nn.Module) -> bool:
    """A plain 2-d convolution: groups 1, dilation 1, zero padding given as numbers."""
    return (isinstance(conv, nn.Conv2d) and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _s2d_ok(conv: nn.Conv2d) -> bool:
    s, (kh, kw) = conv.stride, conv.kernel_size
    return s[0] == s[1] > 1 and kh % s[0] == 0 and kw % s[0] == 0


def nhwc_weight_grad_broken(conv: nn.Module) -> bool:
    """Whether oneDNN's channels-last weight gradient of this convolution is unsafe on an x86 CPU: a 1×1 kernel with
    a stride above 1 and fewer input channels than oneDNN's channel block (8 with AVX2, 16 with AVX-512) writes past
    a workspace (uxlfoundation/oneDNN issue 6035, open in the oneDNN 3.12 of torch 2.14): wrong weight gradients,
    then a segmentation fault or a hang. On the 2-core AMD EPYC (AVX2) of 2026-11-28 the gradients of 2 to 6 input
    channels were off by 23-220 % of their largest entry and some calls never returned; 1 and 8 or more channels,
    stride 1 and the contiguous (NCHW) layout were exact. Such a convolution never computes its weight gradient
    channels-last here: :func:`_variants` leaves those variants out and :func:`nchw_where_nhwc_breaks` keeps it in
    NCHW while ``fit`` trains channels-last."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and max(conv.stride) > 1
            and conv.in_channels < 16)


def _variants(conv: nn.Conv2d, dtype=torch.float32, direction: str = "forward") -> tuple:
    """The variants that apply to a direction; below fp32 also the two direct ones computed in fp32 (``nchw/fp32``,
    ``nhwc/fp32``: oneDNN's bf16 kernel is not always the faster one). No channels-last weight gradient where
    :func:`nhwc_weight_grad_broken`."""
    names = VARIANTS if _s2d_ok(conv) else VARIANTS[:2]
    names += ("nchw/fp32", "nhwc/fp32") if dtype in _BELOW_FP32 else ()   # never for float64: that would lose bits
    if direction == "weight_grad" and nhwc_weight_grad_broken(conv):
        names = tuple(v for v in names if not _parse(v)[0])
    return names


def _parse(variant: str) -> tuple:
    """variant → (channels-last?, space-to-depth?, compute in fp32?)"""
    layout, _, up = variant.partition("/")
    return layout.endswith("nhwc"), layout.startswith("s2d"), up == "fp32"


# ----------------------------------------------------------------------------- the four variants

def _fmt(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.contiguous(memory_format=_CL) if nhwc else t.contiguous()


def _s2d_pads(conv, h: int, w: int) -> tuple:
    """(left, right, top, bottom) zero padding that makes the padded size a multiple of the stride."""
    s, (ph, pw) = conv.stride[0], conv.padding
    return pw, pw + (-(w + 2 * pw)) % s, ph, ph + (-(h + 2 * ph)) % s


def _s2d_input(conv, x: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(F.pad(x, _s2d_pads(conv, *x.shape[-2:])), conv.stride[0])


def _s2d_weight(conv, w: torch.Tensor) -> torch.Tensor:
    """w[o, c, s·a + p, s·b + q] → w'[o, c·s² + p·s + q, a, b]: pixel_unshuffle's channel order."""
    s = conv.stride[0]
    o, c, kh, kw = w.shape
    return w.reshape(o, c, kh // s, s, kw // s, s).permute(0, 1, 3, 5, 2, 4).reshape(o, c * s * s, kh // s, kw // s)


def _s2d_weight_back(conv, w: torch.Tensor) -> torch.Tensor:
    s = conv.stride[0]
    o, cs, a, b = w.shape
    return w.reshape(o, cs // (s * s), s, s, a, b).permute(0, 1, 4, 2, 5, 3).reshape(o, cs // (s * s), a * s, b * s)


def _out_size(conv, h: int, w: int) -> tuple:
    return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip((h, w), conv.padding, conv.kernel_size, conv.stride))


def _geometry(conv, variant: str, x_shape) -> tuple:
    """(stride, padding, the s2d output's extra rows/columns beyond the true output) of a variant."""
    if not variant.startswith("s2d"):
        return list(conv.stride), list(conv.padding), (0, 0)
    s = conv.stride[0]
    left, right, top, bottom = _s2d_pads(conv, *x_shape[-2:])
    hs, ws = (x_shape[-2] + top + bottom) // s, (x_shape[-1] + left + right) // s
    ho, wo = _out_size(conv, *x_shape[-2:])
    return [1, 1], [0, 0], (hs - conv.kernel_size[0] // s + 1 - ho, ws - conv.kernel_size[1] // s + 1 - wo)


def forward_variant(conv, variant: str, x, w, b):
    nhwc, s2d, up = _parse(variant)
    if up:
        return forward_variant(conv, variant.partition("/")[0], x.float(), w.float(),
                               None if b is None else b.float()).to(x.dtype)
    if not s2d:
        return F.conv2d(_fmt(x, nhwc), _fmt(w, nhwc), b, conv.stride, conv.padding).contiguous()
    y = F.conv2d(_fmt(_s2d_input(conv, x), nhwc), _fmt(_s2d_weight(conv, w), nhwc), b)
    ho, wo = _out_size(conv, *x.shape[-2:])
    return y[..., :ho, :wo].contiguous()


def input_grad_variant(conv, variant: str, g, x_shape, w):
    nhwc, s2d, up = _parse(variant)
    if up:
        return input_grad_variant(conv, variant.partition("/")[0], g.float(), x_shape, w.float()).to(g.dtype)
    stride, padding, (eh, ew) = _geometry(conv, variant, x_shape)
    fmt = _CL if nhwc else torch.contiguous_format
    if not s2d:
        shape = x_shape
    else:
        s = conv.stride[0]
        left, right, top, bottom = _s2d_pads(conv, *x_shape[-2:])
        shape = (x_shape[0], x_shape[1] * s * s, (x_shape[2] + top + bottom) // s, (x_shape[3] + left + right) // s)
        g, w = F.pad(g, (0, ew, 0, eh)), _s2d_weight(conv, w)
    like = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=fmt)   # only its shape is read
    gx = _backward(_fmt(g, nhwc), like, _fmt(w, nhwc), None, stride, padding, [1, 1], False, [0, 0], 1,
                   [True, False, False])[0]
    if s2d:
        gx = F.pixel_shuffle(gx.contiguous(), conv.stride[0])[..., top:top + x_shape[2], left:left + x_shape[3]]
    return gx.contiguous()


def weight_grad_variant(conv, variant: str, g, x, w, bias: bool):
    nhwc, s2d, up = _parse(variant)
    if up:
        gw, gb = weight_grad_variant(conv, variant.partition("/")[0], g.float(), x.float(), w.float(), bias)
        return gw.to(w.dtype), None if gb is None else gb.to(w.dtype)
    stride, padding, (eh, ew) = _geometry(conv, variant, x.shape)
    if s2d:
        g, x, w = F.pad(g, (0, ew, 0, eh)), _s2d_input(conv, x), _s2d_weight(conv, w)
    _, gw, gb = _backward(_fmt(g, nhwc), _fmt(x, nhwc), _fmt(w, nhwc), [w.shape[0]] if bias else None, stride,
                          padding, [1, 1], False, [0, 0], 1, [False, True, bias])
    if s2d:
        gw = _s2d_weight_back(conv, gw)
    return gw.contiguous(), gb


# ----------------------------------------------------------------------------- the autograd function

class _TunedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, conv, plan):
        dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        kind = x.device.type
        with torch.autocast(kind, enabled=False):   # the operands come cast already (TunedConv2d.forward)
            y = forward_variant(conv, plan[0], x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.plan, ctx.dtypes = conv, plan, dtypes
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        conv, plan, (dx, dw, db) = ctx.conv, ctx.plan, ctx.dtypes
        g = g.to(x.dtype).contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = input_grad_variant(conv, plan[1], g, x.shape, w).to(dx)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw, gb = weight_grad_variant(conv, plan[2], g, x, w, db is not None)
            gw = gw.to(dw) if ctx.needs_input_grad[1] else None
            gb = gb.to(db) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class TunedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that, inside :func:`active`, computes each direction with its measured-fastest variant."""

    def forward(self, x):
        if not _ACTIVE[0] or _transformed() or x.dim() != 4 or x.device.type != "cpu" or x.shape[0] == 0:
            return super().forward(x)
        key = _key(self, x)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _CACHE.get(key) or _CACHE.setdefault(key, choose(self, x))
        if plan == _DEFAULT:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if _autocast_applies(x):   # compute in autocast's dtype, as F.conv2d would; cast here, so that autograd
            dt = torch.get_autocast_dtype(x.device.type)   # records the casts (a double backward reaches the weights)
            x, weight, bias = x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)
        return _TunedConv.apply(x, weight, bias, self, plan)


def _transformed() -> bool:
    """Traced by torch.fx (the bounds' graph) or inside a torch.func transform (vmap, grad): plain convolution."""
    functorch = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing() or functorch()


_BELOW_FP32 = (torch.bfloat16, torch.float16)


def _autocast_applies(x) -> bool:
    """Whether autocast casts a convolution on ``x``: it is on for x's device, and x is not float64 (never cast)."""
    return torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64


def _compute_dtype(x) -> torch.dtype:
    """The dtype F.conv2d computes in: autocast's where it applies, else x's."""
    return torch.get_autocast_dtype(x.device.type) if _autocast_applies(x) else x.dtype


def _key(conv, x) -> str:
    """The tuning key: the convolution's geometry, the input's shape with the batch size rounded up to a power of
    two, and the compute dtype. The best kernel for a batch of one is not the best for a batch of 128, but batches
    of 100 and 128 share theirs: Bullet-Train's sub-batches, of a new size almost every step, would otherwise
    each pay a measurement."""
    n = x.shape[0]
    bucket = 1 << max(n - 1, 0).bit_length()
    return (f"{conv.in_channels}>{conv.out_channels} k{tuple(conv.kernel_size)} s{tuple(conv.stride)} "
            f"p{tuple(conv.padding)} b{conv.bias is not None} in{(bucket, *x.shape[1:])} {_compute_dtype(x)}")


# ----------------------------------------------------------------------------- tuning

def timings(conv: nn.Conv2d, x_shape, dtype=torch.float32, rounds: int = 5, calls: int = 3) -> dict:
    """Seconds per call of every variant of every direction, on random operands of this shape and dtype: the best
    of ``rounds`` rounds, each timing ``calls`` calls of every variant in turn (so that a change in the machine's
    speed during the measurement hits every variant alike); ``SLOW_ROUNDS`` rounds of one call for a direction
    whose slowest variant took over ``SLOW_CALL_S`` in its last warm-up call."""
    allocator.steady()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(tuple(x_shape), generator=gen).to(dtype)
    w = (torch.randn(tuple(conv.weight.shape), generator=gen) * 0.1).to(dtype)
    b = None if conv.bias is None else torch.zeros(conv.out_channels, dtype=dtype)
    g = torch.randn((x.shape[0], conv.out_channels, *_out_size(conv, *x.shape[-2:])), generator=gen).to(dtype)
    runs = {"forward": lambda v: forward_variant(conv, v, x, w, b),
            "input_grad": lambda v: input_grad_variant(conv, v, g, x.shape, w),
            "weight_grad": lambda v: weight_grad_variant(conv, v, g, x, w, b is not None)}
    variants = {d: _variants(conv, dtype, d) for d in runs}
    best = {d: dict.fromkeys(variants[d], float("inf")) for d in runs}
    effort = {}
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for d, fn in runs.items():   # oneDNN builds its primitives on the first call; the allocator settles on the next
            for v in variants[d]:
                fn(v)
            probe = {}
            for v in variants[d]:
                t0 = time.perf_counter()
                fn(v)
                probe[v] = time.perf_counter() - t0
            effort[d] = (rounds, calls)
            if max(probe.values()) > SLOW_CALL_S:   # the probe is the first of the slow direction's rounds
                best[d], effort[d] = probe, (min(rounds, SLOW_ROUNDS) - 1, 1)
        for r in range(rounds):
            for d, fn in runs.items():
                n_rounds, n_calls = effort[d]
                for v in variants[d] if r < n_rounds else ():
                    t0 = time.perf_counter()
                    for _ in range(n_calls):
                        fn(v)
                    best[d][v] = min(best[d][v], (time.perf_counter() - t0) / n_calls)
    return best


def choose(conv: nn.Conv2d, x: torch.Tensor) -> tuple:
    """The plan (forward, input-gradient, weight-gradient variant) for this input: nchw unless beaten by MARGIN."""
    plan = []
    for direction, t in timings(conv, x.shape, _compute_dtype(x)).items():
        best = min(t, key=t.get)
        plan.append(best if t[best] * MARGIN <= t["nchw"] else "nchw")
    return tuple(plan)


def tune(model: nn.Module) -> int:
    """Swap every eligible convolution of ``model`` for :class:`TunedConv2d`; return how many were swapped.
    Also fixes glibc's allocator thresholds (:func:`robustlib.allocator.steady`) so that timings repeat."""
    allocator.steady()
    n = 0
    for m in model.modules():
        if type(m) in (nn.Conv2d, TunedConv2d) and eligible(m):
            m.__class__ = TunedConv2d
            m._plans = {}
            n += 1
    return n


def untune(model: nn.Module) -> None:
    """Undo :func:`tune`: the convolutions are plain ``nn.Conv2d`` again."""
    for m in model.modules():
        if type(m) is TunedConv2d:
            m.__class__ = nn.Conv2d
            del m._plans


def plans(model: nn.Module) -> dict:
    """{module name: {tuning key: plan}} of a tuned model, for a checkpoint."""
    return {name: {k: list(p) for k, p in m._plans.items()} for name, m in model.named_modules()
            if type(m) is TunedConv2d and m._plans}


def install(model: nn.Module, saved: dict) -> None:
    """Give a tuned model's convolutions the plans of :func:`plans` (a resumed run keeps its kernels)."""
    modules = dict(model.named_modules())
    for name, entries in (saved or {}).items():
        m = modules.get(name)
        if type(m) is TunedConv2d:
            plans = {k: tuple(p) for k, p in entries.items()}
            if nhwc_weight_grad_broken(m):   # a plan saved before the oneDNN bug was known: weight grad in NCHW
                plans = {k: (f, i, "nchw" if _parse(w)[0] else w) for k, (f, i, w) in plans.items()}
            m._plans.update(plans)


def _nchw_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None


_nchw_input.keeps_values = True   # a layout change only: bounds may be computed while it is installed


@contextmanager
def nchw_where_nhwc_breaks(model: nn.Module):
    """Inside the block, every convolution of ``model`` whose channels-last weight gradient is broken
    (:func:`nhwc_weight_grad_broken`) computes in NCHW although the model is channels-last: its 1×1 weight gets
    row-major strides (the same memory: a view) and its input is made contiguous, so that oneDNN takes the NCHW
    kernels for all three directions. Its output is NCHW; the next layers accept either layout. The hooks are
    removed on leaving."""
    handles = []
    for m in model.modules():
        if nhwc_weight_grad_broken(m):
            w = m.weight
            w.data = w.data.reshape(w.shape[0], -1).view(w.shape)
            handles.append(m.register_forward_pre_hook(_nchw_input))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@contextmanager
def active(enabled: bool = True):
    """Tuned convolutions use their plans inside this block (``fit`` wraps its training step in it)."""
    before = _ACTIVE[0]
    _ACTIVE[0] = bool(enabled)
    try:
        yield
    finally:
        _ACTIVE[0] = before
