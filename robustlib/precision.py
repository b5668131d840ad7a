"""What training picks by itself on a device: bf16 autocast and the channels-last layout, or neither.

``fit(amp="auto", channels_last="auto")`` and the pruning scores' ``amp="auto"`` ask :func:`auto_bf16` and
:func:`auto_channels_last`. Both are on

* on CUDA, whose tensor cores multiply bf16 matrices at several times the fp32 rate;
* on a CPU that multiplies bf16 matrices in hardware (Intel AMX, found by :func:`native_bf16`). On the 2-core
  Intel Xeon with AMX of our benchmarks (committed ``benchmarks/results/training-cpu.json``, 2026-11-27, 14:57
  UTC: PGD-10 AT of MNIST_Small on 10,000 Fashion-MNIST images, five interleaved rounds), bf16 + channels-last
  trained at 4,280 images/s, 1.72× the textbook loop, where fp32 with tuned convolutions (the default before)
  reached 1.13× (1.61× and 1.11× in the first such run, 02:26 UTC, before the two changes below and in
  :mod:`robustlib.attacks`). In the same run, trained 8 epochs from the same initial weights with two seeds, the
  bf16 models ended 0.33 points below the fp32 ones in clean accuracy and 0.15 points above them in PGD-20
  accuracy on average (2,000 test images; 0.48 and 0.22 points below in the first run); the two fp32 seeds differ
  from each other by about half a point.

Elsewhere (a CPU without AMX) training stays fp32 with contiguous tensors and convolution kernels tuned per
direction (:mod:`robustlib.conv_kernels`): on the 2-core AMD EPYC of earlier benchmarks that was 1.17× the
textbook loop and bf16 + channels-last 1.30×, which we did not make the default without the accuracy check above
on that machine. On an AMD EPYC with AVX2 only (2026-11-28) bf16 is no option at all: oneDNN has no bf16
convolution there, and with PyTorch's slow fallback bf16 + channels-last trained MNIST_Small (PGD-10) at 109
images/s against fp32's 662 (``bench_profile.py --quick``, batch 32). Certified-training objectives compute their
bounds in fp32 either way (autocast off).
``ROBUSTLIB_CPU_BF16=off`` keeps a CPU with AMX in fp32 (to compare with records trained that way), ``on`` forces
bf16 on any CPU.

Channels-last has one trap, which :func:`channels_last_gradients` removes while ``fit`` trains in it: ``nn.Flatten``
after a convolution's ReLU copies the channels-last activation into the row-major order of the Linear that follows,
so the gradient that comes back through it is contiguous while the ReLU's saved output is channels-last, and
PyTorch's ReLU backward (``threshold_backward``) over two layouts falls to a strided loop: on the Intel Xeon of our
benchmarks 300–370 µs for MNIST_Small's 128 × 32 × 7 × 7 activation in bf16, where one layout takes about 50 µs
(``benchmarks/bench_profile.py``, which found it). Handing the gradient back channels-last costs one copy and made
the whole training step 1.03–1.04× faster (the median over five interleaved rounds of ``bench_training.py`` in two
runs, variant ``bf16+channels-last, mixed-layout flatten`` its before); in the profile the activations' share of the
step fell from 18% to 9% and the copies' rose from 8% to 11%.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn as nn


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles), as PyTorch's CPU build reports it."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)   # a private probe: absent in some builds
    try:
        return bool(probe()) if probe is not None else False
    except Exception:   # noqa: BLE001 - a probe that fails is no evidence of AMX
        return False


def _cpu_override() -> bool | None:
    forced = os.environ.get("ROBUSTLIB_CPU_BF16", "").strip().lower()
    if not forced:
        return None
    if forced in ("on", "off"):
        return forced == "on"
    raise ValueError(f"ROBUSTLIB_CPU_BF16 must be 'on' or 'off' (or unset: decided by the CPU), got {forced!r}")


def auto_bf16(device) -> bool:
    """bf16 autocast by default on ``device``: on CUDA, and on a CPU with :func:`native_bf16` unless
    ``ROBUSTLIB_CPU_BF16`` says otherwise."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    forced = _cpu_override() if kind == "cpu" else None
    return forced if forced is not None else (kind == "cpu" and native_bf16())


def auto_channels_last(device) -> bool:
    """Channels-last by default on ``device``: with bf16 (in the same run on the AMX CPU, bf16 with tuned contiguous
    convolutions reached 1.34× the textbook, contiguous 1.44×, with channels-last 1.60×)."""
    return auto_bf16(device)


def resolve(device, amp: bool | str = "auto", channels_last: bool | str = "auto") -> tuple[bool, bool]:
    """``fit``'s ``amp`` and ``channels_last`` as they apply on ``device``: "auto" decided here, else as given."""
    for value, what in ((amp, "amp"), (channels_last, "channels_last")):
        if value not in (True, False, "auto"):
            raise ValueError(f"{what} must be True, False or 'auto' (decided by the device), got {value!r}")
    return (auto_bf16(device) if amp == "auto" else bool(amp),
            auto_channels_last(device) if channels_last == "auto" else bool(channels_last))


def label(amp: bool, channels_last: bool) -> str:
    """A training precision in words, for histories, run summaries and captions: "bf16 + channels-last", "fp32"…"""
    return ("bf16" if amp else "fp32") + (" + channels-last" if channels_last else "")


def describe(device) -> str:
    """The precision ``fit`` trains in by default on ``device``."""
    return label(*resolve(device))


def _strictly_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _GradientLike(torch.autograd.Function):
    """The identity, whose backward hands the gradient on in the channels-last layout of its input."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def _channels_last_grad_hook(module, args):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.requires_grad and _strictly_channels_last(x):
        return (_GradientLike.apply(x), *args[1:])
    return None


_channels_last_grad_hook.keeps_values = True   # a layout change only: bounds may be computed while it is installed


@contextmanager
def channels_last_gradients(model: nn.Module):
    """Inside the block, every ``nn.Flatten`` of ``model`` that receives a channels-last activation hands its
    gradient back channels-last (one copy), so that the ReLU before it differentiates over one layout. Values are
    unchanged; the hooks are removed on leaving. ``fit`` uses it whenever it trains channels-last without
    ``torch.compile`` (whose generated kernels take any strides)."""
    handles = [m.register_forward_pre_hook(_channels_last_grad_hook) for m in model.modules()
               if isinstance(m, nn.Flatten)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
