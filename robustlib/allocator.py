"""The host allocator: glibc's ``malloc`` thresholds fixed so that large tensors reuse freed memory.

glibc serves a block larger than its *mmap threshold* with fresh pages from ``mmap`` and returns it to the
system when freed; it also trims the top of the heap once more than its *trim threshold* is free there. Both
thresholds start at 128 KiB and move at run time. A CPU training step or a symbolic-bound computation allocates and
frees the same few large tensors over and over (a batch's activations; the coefficient tensors of symbolic
propagation, 10 MB for one MNIST_Small sample and 80 MB for MNIST_Large), so with the moving thresholds a tensor
may cost fresh page faults on one call and none on the next. On the 2-core CPU of our benchmarks:

* the same convolution took 0.65 ms in one measurement and 2.5 ms in the next, so timing-based kernel choices
  (:mod:`robustlib.conv_kernels`) followed the allocator, not the kernels;
* symbolic bounds of a batch of 4 ran at 55, 1.5 and 9.3 samples/s (MNIST_Small, MNIST_Large, CIFAR_Small) with
  the moving thresholds and at 90, 2.7 and 18 with them fixed, timed back to back (``benchmarks/bench_bounds.py``,
  2026-11-26). The straightforward reference implementation gains as much (29 → 82 samples/s on MNIST_Small):
  this is the process's gain, not the algorithm's.

:func:`steady` fixes the mmap threshold at 256 MiB and the trim threshold at 512 MiB (``mallopt``), once per
process: blocks up to 256 MiB then reuse freed heap memory. The cost is memory: the process keeps up to 512 MiB
it has freed instead of returning it to the system. ``fit`` on a CPU, :mod:`robustlib.conv_kernels` and the
symbolic bounds on a CPU call it; with another C library (musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers
_STATE: dict = {}
_DEFERRED = [False]


def steady(mmap_mib: int = 256, trim_mib: int = 512) -> dict:
    """Fix glibc's mmap and trim thresholds (first call of the process only); return what was done."""
    if _STATE or _DEFERRED[0]:
        return _STATE
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            ok = (libc.mallopt(_M_MMAP_THRESHOLD, mmap_mib << 20) == 1
                  and libc.mallopt(_M_TRIM_THRESHOLD, trim_mib << 20) == 1)
        except (OSError, AttributeError):   # no mallopt: not glibc
            ok = False
    _STATE.update({"mmap_threshold_mib": mmap_mib, "trim_threshold_mib": trim_mib} if ok else {"glibc": False})
    return _STATE


def state() -> dict:
    """What :func:`steady` did in this process ({} before its first call)."""
    return dict(_STATE)


@contextmanager
def deferred():
    """Inside the block :func:`steady` does nothing, so a benchmark can time glibc's own behaviour first."""
    if _STATE:
        raise RuntimeError("the allocator thresholds are already fixed in this process: time the default before the "
                           "first fit or symbolic bound")
    _DEFERRED[0] = True
    try:
        yield
    finally:
        _DEFERRED[0] = False
