"""What training picks by itself on a device: bf16 autocast and the channels-last layout, or neither.

``fit(amp="auto", channels_last="auto")`` and the pruning scores' ``amp="auto"`` ask :func:`auto_bf16` and
:func:`auto_channels_last`. Both are on

* on CUDA, whose tensor cores multiply bf16 matrices at several times the fp32 rate;
* on a CPU that multiplies bf16 matrices in hardware (Intel AMX, found by :func:`native_bf16`). On the 2-core
  Intel Xeon with AMX of our benchmarks (committed ``benchmarks/results/training-cpu.json``, 2026-11-27: PGD-10 AT
  of MNIST_Small on 10,000 Fashion-MNIST images, five interleaved rounds), bf16 + channels-last trained at 4,240
  images/s, 1.61× the textbook loop, where fp32 with tuned convolutions (the default before) reached 1.11×. In the
  same run, trained 8 epochs from the same initial weights with two seeds, the bf16 models ended 0.48 points
  below the fp32 ones in clean accuracy and 0.22 points in PGD-20 accuracy on average (2,000 test images); the two
  fp32 seeds differ from each other by 0.35 and 0.65 points.

Elsewhere (a CPU without AMX) training stays fp32 with contiguous tensors and convolution kernels tuned per
direction (:mod:`robustlib.conv_kernels`): on the 2-core AMD EPYC of earlier benchmarks that was 1.17× the
textbook loop and bf16 + channels-last 1.30×, which we did not make the default without the accuracy check above
on that machine. Certified-training objectives compute their bounds in fp32 either way (autocast off).
``ROBUSTLIB_CPU_BF16=off`` keeps a CPU with AMX in fp32 (to compare with records trained that way), ``on`` forces
bf16 on any CPU.
"""
from __future__ import annotations

import os

import torch


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
