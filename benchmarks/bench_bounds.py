"""Speed and memory of robustlib.bounds, as ratios to baselines measured in the same run.

    python benchmarks/bench_bounds.py                      # CPU, batch sizes 1 4 16, a few minutes
    python benchmarks/bench_bounds.py --device cuda --batch-sizes 1 8 32 128
    python benchmarks/bench_bounds.py --quick              # tiny: check that the script runs

For each network (MixTrain's MNIST_Small, MNIST_Large, CIFAR_Small, CIFAR_Large at random initialisation, inputs
uniform in [0, 1], L∞ box of half-width ``--eps`` clamped to [0, 1]) and batch size it times, without gradients
(warm-up, CUDA synchronisation, median of repeats; fewer repeats when one call is slow; every method of one network
and batch size in interleaved rounds, so that the machine's drift — up to 1.5× on the 2-core CPU — moves them
alike and their ratios hold):

* ``forward``: ``model(x)``; ``forward(d+1)``: one forward pass of d + 1 images per sample — the floor of
  symbolic propagation, whose affine forms carry d + 1 columns per neuron, plus one per unstable ReLU after
  that ReLU (``error_columns`` in the symbolic rows: how many per sample, beside ``d``; per ReLU layer in
  ``error_columns_per_relu``); ``forward(d+1+E)``: the floor with those columns counted — the same forward
  pass with, after each ReLU, one more input per error column it adds (``x_width_floor``). Both are
  references, not strict bounds: fresh error columns are one-hot, and robustlib maps them through the next
  layer by gathering weight columns, cheaper than a dense pass;
* ``interval`` (IBP) and ``symbolic`` (robustlib.bounds, its default chunking: on CPU chunks that fit
  ``bounds.chunks.CPU_CHUNK_BYTES``); ``symbolic, one chunk``: the whole batch in one chunk (the default
  before the cache-sized CPU chunks; the ratio of the two is that change's gain, measured in the same run);
  ``symbolic, vector_norm L1`` (CPU) / ``symbolic, abs-sum L1`` (CUDA): the radius Σ_i |A_i| in the form
  robustlib does not pick on that device (``bounds.symbolic._l1``: ``abs().sum()`` on a CPU, since 2026-11-26,
  ``torch.linalg.vector_norm(·, 1)`` on CUDA), the before of that choice; ``symbolic, no crops``: with
  ``bounds.symbolic.CROPS`` off — error terms through convolutions as dense images of their layer instead of
  small crops (``bounds.crops``) — the before of that change (2026-11-26, third; its ratio is taken against "no
  crops into Linear"); ``symbolic, no crops into Linear``: with ``CROP_LINEAR`` off — error terms whose next
  convolution leads to a Linear as dense images of that convolution's outputs, through a dense product with the
  Linear's weight, instead of crops whose weight columns the Linear gathers (``bounds.crops.linear``) — the before
  of the fourth change (2026-11-27), on a CPU; on CUDA, which since the first GPU run does without them
  (``CROP_LINEAR_DEVICES``), ``symbolic, crops into Linear`` forces them on instead; ``symbolic, no windows``: with
  ``PATCHES`` off as well — every convolution's input coefficients as ``d`` dense columns instead of one window of
  the input per neuron (``bounds.patches``) — the before of the change before (second; its ratio is taken against
  "no crops"; on CUDA a chunk with fewer dense coefficients than ``bounds.symbolic.PATCHES_MIN_DENSE`` takes the
  dense path in the default too, and ``symbolic, windows at every size`` times it with windows, the before of that
  choice, 2026-11-27; likewise a block of fresh error terms with fewer dense images than
  ``bounds.symbolic.CROPS_MIN_DENSE`` goes on dense on CUDA, and ``symbolic, crops at every size`` times it with
  crops, the before of that choice, 2026-11-28); ``symbolic, no shortcuts``: with ``SHORTCUTS`` off as well — the first layer's coefficients
  materialised at once instead of kept as ``s ⊗ J``, fresh error terms through dense passes instead of gathers
  from the weights — the before of the first change (its ratio is taken against "no windows");
* ``naive symbolic``: the same relaxation written layer by layer the straightforward way
  (``benchmarks/naive_symbolic.py``: dense coefficients from the first layer on, dense error blocks) — the
  bounds of both are compared, and the speed ratio is robustlib's gain (goal ≥ 3×); skipped where its dense
  coefficients would exceed 2 GiB at once.

On a CPU the run starts with ``symbolic`` and ``naive symbolic`` at the middle batch size under glibc's moving
malloc thresholds and then with the thresholds that robustlib fixes (``robustlib.allocator.steady``, which the
bounds call by themselves), back to back: rows ``…, glibc default allocator``. Everything after runs with the
fixed thresholds, the naive reference included.

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` above the memory held before the call (measured); CPU
*analytic* — the largest coefficient tensor the method holds at once (forward: B·n_max, interval: 2·B·n_max,
symbolic: chunk·d·n_max numbers with dense coefficients, d = input dimension, n_max = largest layer — with windows
through the convolutions chunk·max over layers of (neurons × window), ``bounds.estimate_sample_bytes`` / 4;
error-term blocks on top).
Writes ``benchmarks/results/bounds-<cpu|cuda>.json``.
"""
from __future__ import annotations

import argparse
import importlib
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import naive_symbolic  # noqa: E402
from common import settings, switched_off, write_result  # noqa: E402

from robustlib import allocator as rl_allocator  # noqa: E402
from robustlib import bounds, models  # noqa: E402
from robustlib.reproduce import device_name  # noqa: E402

NAIVE_LIMIT = 2 * 2**30   # bytes of dense coefficients above which the naive baseline is skipped (said in the table)
NETS = {"mnist_small": (1, 28), "mnist_large": (1, 28), "cifar_small": (3, 32), "cifar_large": (3, 32)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_rounds(fns: dict, device, target_s: float, max_repeats: int) -> dict:
    """Median seconds of each of ``fns`` (name → callable), timed in interleaved rounds so that the machine's speed
    drifts alike for all of them: after one warm-up call each, method ``m`` runs once per round in its first
    ``min(max_repeats, target_s // warm-up time)`` rounds (at least one). Each round visits the methods in its own
    order, a permutation seeded by the round: the method that follows the batched forward pass of d + 1 images
    finds the caches emptied by it, and in a fixed (or merely rotated) order that was always ``symbolic``, which then
    read 0.86–0.95× its identical twins, the "no crops into Linear" rows below 512 terms (2026-11-27). Returns
    name → (median, repeats)."""
    warm = {}
    for name, fn in fns.items():
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        warm[name] = time.perf_counter() - t0
    repeats = {name: int(max(1, min(max_repeats, target_s // max(w, 1e-6)))) for name, w in warm.items()}
    times = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        names = list(fns)
        random.Random(r).shuffle(names)
        for name in names:
            fn = fns[name]
            if r < repeats[name]:
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def _peak(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def error_columns(model, lower, upper) -> list:
    """Error-term columns that each unstable ReLU layer adds per sample (mean over the batch), in the order of the
    layers: the part of symbolic propagation's width beyond the d + 1 input columns (one untimed call)."""
    runner_cls = importlib.import_module("robustlib.bounds.symbolic").SymbolicRunner
    relu, count = runner_cls.relu, {}

    def counting(self, s, shape, name, owned):
        out = relu(self, s, shape, name, owned)
        e = out.E.get(name)
        if e is not None and e is not s.E.get(name):
            n = e.vals.ne(0).sum() if hasattr(e, "vals") else e.flatten(2).ne(0).any(2).sum()
            count[name] = count.get(name, 0) + int(n)    # summed over the chunks of the batch
        return out

    runner_cls.relu = counting
    try:
        bounds.symbolic(model, lower, upper)
    finally:
        runner_cls.relu = relu
    return [n / lower.shape[0] for n in count.values()]


def width_floor(model: nn.Sequential, x1: torch.Tensor, per_relu: list):
    """The floor with the error columns counted: the forward pass of ``forward(d+1)`` (d + 1 images, layer after
    layer) with, after each ReLU, as many extra inputs appended as that layer adds error columns per sample
    (``per_relu``, one entry per ReLU in order). With no error columns it is exactly ``forward(d+1)``.
    Returns a function that runs it for one sample, and the largest activation (numbers) it holds."""
    d = x1[0].numel()
    start = torch.rand(d + 1, *x1.shape[1:], device=x1.device, dtype=x1.dtype)
    extra, cols, relus, h, largest = [], d + 1, iter(per_relu), x1, 0
    for layer in model:
        h = layer(h)
        largest = max(largest, cols * h[0].numel())
        add = int(round(next(relus, 0.0))) if isinstance(layer, nn.ReLU) else 0
        extra.append(torch.rand(add, *h.shape[1:], device=x1.device, dtype=x1.dtype) if add else None)
        cols += add

    def run():
        h = start
        for layer, more in zip(model, extra):
            h = layer(h)
            if more is not None:
                h = torch.cat([h, more])
    return run, largest


OTHER_L1 = {False: "symbolic, vector_norm L1", True: "symbolic, abs-sum L1"}   # by device is CUDA


def _with_symbolic(fn, name: str, value):
    """``fn`` with ``robustlib.bounds.symbolic.<name>`` set to ``value`` for the call, restored after: the before (or
    the other choice) of one of its settings, timed in the same run as the default."""
    def run():
        with settings(**{name: value}):
            return fn()
    return run


def _other_l1(fn, device):
    """``fn`` with the symbolic radius Σ|A| taken in the form robustlib does not pick on ``device``: by
    ``torch.linalg.vector_norm(A, 1, dim=1)`` on a CPU (robustlib's form there before 2026-11-26, now
    ``A.abs().sum(1)``), by ``A.abs().sum(1)`` on CUDA (robustlib's form there until the first GPU run showed the
    norm faster). The before of that choice, timed in the same run."""
    forms = importlib.import_module("robustlib.bounds.symbolic").L1_FORMS
    return _with_symbolic(fn, "_l1", forms["abs-sum" if device.type == "cuda" else "vector_norm"])


# the row of the crops into a Linear: switched off where the device uses them (its before), forced on where it
# does not (bounds.symbolic.CROP_LINEAR_DEVICES: a CPU only, since the first GPU run showed them slower there)
CROP_LINEAR_ROW = {True: "symbolic, no crops into Linear", False: "symbolic, crops into Linear"}


def _crop_linear_forced(fn):
    """``fn`` with crops into a Linear on the device that does not use them by default (see CROP_LINEAR_ROW)."""
    return _with_symbolic(fn, "CROP_LINEAR_DEVICES", ("cpu", "cuda"))


def _windows_everywhere(fn):
    """``fn`` with windows for chunks of every size (``PATCHES_MIN_DENSE`` emptied): on a device type that takes the
    dense path below a size (CUDA, since 2026-11-27), the before of that choice, timed in the same run."""
    return _with_symbolic(fn, "PATCHES_MIN_DENSE", {})


def _crops_everywhere(fn):
    """``fn`` with crops for blocks of error terms of every size (``CROPS_MIN_DENSE`` emptied): on a device type that
    keeps small blocks dense (CUDA, since 2026-11-28), the before of that choice, timed in the same run."""
    return _with_symbolic(fn, "CROPS_MIN_DENSE", {})


def _switched_off(fn, *flags):
    """``fn`` with the named switches of ``bounds.symbolic`` off, the before of those changes in the same run:
    ``CROP_LINEAR`` (2026-11-27, fourth change: crops also into a Linear, which reads each crop's weight columns),
    ``CROPS`` (2026-11-26, third change: error terms through convolutions as crops, not dense images), ``PATCHES``
    (2026-11-26, second change: a convolution's input coefficients as one window per neuron, not ``d`` dense
    columns) and ``SHORTCUTS`` (2026-11-26, first change: the first layer's coefficients factored, fresh error terms
    through gathers from the weights instead of dense passes)."""
    def run():
        with switched_off(*flags):
            return fn()
    return run


def bench(name: str, batch: int, device, dtype, eps: float, budget, target_s: float, max_repeats: int,
          naive: bool) -> list:
    ch, size = NETS[name]
    torch.manual_seed(0)
    model = models.build(name, in_channels=ch, input_size=size).to(device=device, dtype=dtype).eval()
    x = torch.rand(batch, ch, size, size, device=device, dtype=dtype)
    lower, upper = bounds.input_box(x, eps)
    plan = bounds.plans.prepare(model, x)                 # shapes for the analytic memory figures
    d, n_max = math.prod(plan.in_shape), plan.max_numel
    item = x.element_size()
    per_sample = bounds.estimate_sample_bytes(plan, x)
    chunk = min(batch, bounds.default_chunk(per_sample, device, budget))
    coef = per_sample // 4                                 # the coefficients one sample holds at most (windows)
    dense = d * n_max * item                               # ... with every layer's coefficients dense
    chunk_dense = min(batch, bounds.default_chunk(4 * dense, device, budget))
    floor_x = torch.rand(d + 1, ch, size, size, device=device, dtype=dtype)

    runs = {
        "forward": (lambda: model(x), batch * n_max * item),
        "forward(d+1)": (lambda: [model(floor_x) for _ in range(batch)], (d + 1) * n_max * item),
        "interval": (lambda: bounds.interval(model, lower, upper), 2 * batch * n_max * item),
        "symbolic": (lambda: bounds.symbolic(model, lower, upper, memory_budget=budget), chunk * coef),
    }
    runs[OTHER_L1[device.type == "cuda"]] = (_other_l1(lambda: bounds.symbolic(model, lower, upper,
                                                                              memory_budget=budget), device),
                                             chunk * coef)
    crop_linear = device.type in importlib.import_module("robustlib.bounds.symbolic").CROP_LINEAR_DEVICES
    default = lambda: bounds.symbolic(model, lower, upper, memory_budget=budget)  # noqa: E731
    runs[CROP_LINEAR_ROW[crop_linear]] = (_switched_off(default, "CROP_LINEAR") if crop_linear
                                          else _crop_linear_forced(default), chunk * coef)
    size_policy = device.type in importlib.import_module("robustlib.bounds.symbolic").PATCHES_MIN_DENSE
    if size_policy:
        runs["symbolic, windows at every size"] = (_windows_everywhere(default), chunk * coef)
    crop_size_policy = device.type in importlib.import_module("robustlib.bounds.symbolic").CROPS_MIN_DENSE
    if crop_size_policy:
        runs["symbolic, crops at every size"] = (_crops_everywhere(default), chunk * coef)
    runs["symbolic, no crops"] = (_switched_off(lambda: bounds.symbolic(model, lower, upper, memory_budget=budget),
                                                "CROPS"), chunk * coef)
    runs["symbolic, no windows"] = (_switched_off(lambda: bounds.symbolic(model, lower, upper, memory_budget=budget),
                                                  "CROPS", "PATCHES"), chunk_dense * dense)
    runs["symbolic, no shortcuts"] = (_switched_off(lambda: bounds.symbolic(model, lower, upper, memory_budget=budget),
                                                    "CROPS", "PATCHES", "SHORTCUTS"), chunk_dense * dense)
    if chunk < batch:
        runs["symbolic, one chunk"] = (lambda: bounds.symbolic(model, lower, upper, memory_budget=batch * per_sample),
                                       batch * coef)
    naive = naive and batch * dense <= NAIVE_LIMIT   # its dense coefficients, all at once
    if naive:
        runs["naive symbolic"] = (lambda: naive_symbolic.symbolic(model, lower, upper), batch * dense)
    with torch.no_grad():
        per_relu = error_columns(model, lower, upper)
        one_width, width_numel = width_floor(model, x[:1], per_relu)
    runs["forward(d+1+E)"] = (lambda: [one_width() for _ in range(batch)], width_numel * item)
    rows, seconds = [], {}
    with torch.no_grad():
        timed = _time_rounds({key: fn for key, (fn, _) in runs.items()}, device, target_s, max_repeats)
        for key, (fn, analytic) in runs.items():
            sec, reps = timed[key]
            peak = _peak(fn, device)
            seconds[key] = sec
            rows.append({"net": name, "batch": batch, "method": key, "samples_per_s": batch / sec,
                         "x_forward": sec / seconds["forward"],
                         "peak_MiB": (peak if peak is not None else analytic) / 2**20,
                         "peak": "measured" if peak is not None else "analytic", "repeats": reps})
        unstable = sum(per_relu)
        if naive:
            ours, ref = bounds.symbolic(model, lower, upper), naive_symbolic.symbolic(model, lower, upper)
            gap = max(float((a - b).abs().max()) for a, b in zip(ours, ref))
    for r in rows:
        if r["method"] == "symbolic":
            r["x_floor"] = seconds["symbolic"] / seconds["forward(d+1)"]
            r["x_width_floor"] = seconds["symbolic"] / seconds["forward(d+1+E)"]
            r["d"], r["error_columns"], r["error_columns_per_relu"] = d, unstable, per_relu
            r["other_l1_over_default"] = seconds[OTHER_L1[device.type == "cuda"]] / seconds["symbolic"]
            if crop_linear:
                r["no_crop_linear_over_default"] = seconds[CROP_LINEAR_ROW[True]] / seconds["symbolic"]
                r["no_crops_over_no_crop_linear"] = seconds["symbolic, no crops"] / seconds[CROP_LINEAR_ROW[True]]
            else:   # on this device the default has no crops into a Linear: forced on, they are the other choice
                r["crop_linear_over_default"] = seconds[CROP_LINEAR_ROW[False]] / seconds["symbolic"]
                r["no_crops_over_default"] = seconds["symbolic, no crops"] / seconds["symbolic"]
            if size_policy:
                r["windows_everywhere_over_default"] = seconds["symbolic, windows at every size"] / seconds["symbolic"]
            if crop_size_policy:
                r["crops_everywhere_over_default"] = seconds["symbolic, crops at every size"] / seconds["symbolic"]
            r["no_windows_over_no_crops"] = seconds["symbolic, no windows"] / seconds["symbolic, no crops"]
            r["no_shortcuts_over_no_windows"] = seconds["symbolic, no shortcuts"] / seconds["symbolic, no windows"]
            if "symbolic, one chunk" in seconds:
                r["one_chunk_over_default"] = seconds["symbolic, one chunk"] / seconds["symbolic"]
            if naive:
                r["naive_over_ours"] = seconds["naive symbolic"] / seconds["symbolic"]
                r["max_bound_difference"] = gap
    return rows


def allocator_gain(nets, batch: int, eps: float, target_s: float, max_repeats: int, naive_nets) -> list:
    """Symbolic bounds (and the naive reference) with glibc's moving malloc thresholds, then with the thresholds
    that robustlib fixes (:mod:`robustlib.allocator`), in this process before anything else (CPU only)."""
    device, out, fns = torch.device("cpu"), [], []
    for name in nets:
        ch, size = NETS[name]
        torch.manual_seed(0)
        model = models.build(name, in_channels=ch, input_size=size).eval()
        lower, upper = bounds.input_box(torch.rand(batch, ch, size, size), eps)
        f = {"symbolic": lambda m=model, lo=lower, up=upper: bounds.symbolic(m, lo, up)}
        if name in naive_nets:
            f["naive symbolic"] = lambda m=model, lo=lower, up=upper: naive_symbolic.symbolic(m, lo, up)
        fns.append(f)
        out.append({"net": name, "batch": batch, "default_s": {}, "fixed_s": {}})
    with torch.no_grad():
        with rl_allocator.deferred():
            for r, f in zip(out, fns):
                r["default_s"] = {m: t for m, (t, _) in _time_rounds(f, device, target_s, max_repeats).items()}
        rl_allocator.steady()
        for r, f in zip(out, fns):
            r["fixed_s"] = {m: t for m, (t, _) in _time_rounds(f, device, target_s, max_repeats).items()}
            print(f"{r['net']:12s} {batch:4d} " + ", ".join(
                f"{m}: {batch / r['default_s'][m]:.1f} → {batch / r['fixed_s'][m]:.1f} samples/s" for m in f)
                + " (glibc's moving malloc thresholds → fixed)", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--memory-budget", type=float, default=None, help="bytes for symbolic chunks")
    p.add_argument("--target-seconds", type=float, default=1.5, help="time budget per measurement")
    p.add_argument("--max-repeats", type=int, default=7)
    p.add_argument("--naive-nets", nargs="*", default=["mnist_small", "mnist_large", "cifar_small"],
                   choices=list(NETS), help="networks on which the straightforward per-layer baseline runs too "
                   "(CIFAR_Large is left out by default: its dense error blocks take minutes per call)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    a = p.parse_args(argv)
    if a.quick:
        a.batch_sizes, a.nets, a.target_seconds, a.max_repeats = [1], ["mnist_small"], 0.0, 1
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    budget = None if a.memory_budget is None else int(a.memory_budget)
    print(f"# robustlib.bounds benchmark on {device_name(device)}, {a.dtype}, eps {a.eps}; memory: "
          f"{'measured' if device.type == 'cuda' else 'analytic'}")
    print(f"{'net':12s} {'B':>4s} {'method':15s} {'samples/s':>11s} {'x forward':>10s} {'peak MiB':>9s} "
          f"{'x floor':>8s} {'x wfloor':>8s} {'naive/ours':>10s} {'d':>5s} {'err cols':>8s}")
    rows, ratios = [], {}
    t_start = time.perf_counter()
    allocator_rows = []
    if device.type == "cpu" and not rl_allocator.state():   # glibc's default thresholds, then fixed, back to back
        allocator_rows = allocator_gain(a.nets, a.batch_sizes[len(a.batch_sizes) // 2], a.eps, a.target_seconds,
                                        a.max_repeats, a.naive_nets)
        for r in allocator_rows:
            for method in ("symbolic", "naive symbolic"):
                if method in r["default_s"]:
                    ratios[f"{r['net']} B={r['batch']} {method} glibc default allocator / fixed thresholds"] = \
                        r["default_s"][method] / r["fixed_s"][method]
    for net in a.nets:
        for bs in a.batch_sizes:
            for r in bench(net, bs, device, dtype, a.eps, budget, a.target_seconds, a.max_repeats, net in a.naive_nets):
                rows.append(r)
                floor = f"{r['x_floor']:8.2f}" if "x_floor" in r else ""
                wfloor = f"{r['x_width_floor']:8.2f}" if "x_width_floor" in r else ""
                gain = f"{r['naive_over_ours']:10.2f}" if "naive_over_ours" in r else ""
                cols = f"{r['d']:5d} {r['error_columns']:8.0f}" if "d" in r else ""
                print(f"{net:12s} {bs:4d} {r['method']:15s} {r['samples_per_s']:11.1f} {r['x_forward']:10.1f} "
                      f"{r['peak_MiB']:9.2f} {floor:>8s} {wfloor:>8s} {gain:>10s} {cols}", flush=True)
                if "x_floor" in r:
                    ratios[f"{net} B={bs} symbolic / forward(d+1)"] = r["x_floor"]
                    ratios[f"{net} B={bs} symbolic / forward(d+1+E)"] = r["x_width_floor"]
                if "one_chunk_over_default" in r:
                    ratios[f"{net} B={bs} symbolic one chunk / default chunks"] = r["one_chunk_over_default"]
                if "other_l1_over_default" in r:
                    ratios[f"{net} B={bs} {OTHER_L1[device.type == 'cuda']} / symbolic"] = r["other_l1_over_default"]
                if "no_crop_linear_over_default" in r:
                    ratios[f"{net} B={bs} symbolic without / with crops into Linear"] = \
                        r["no_crop_linear_over_default"]
                    ratios[f"{net} B={bs} symbolic without / with crops (none into Linear)"] = \
                        r["no_crops_over_no_crop_linear"]
                if "crop_linear_over_default" in r:
                    ratios[f"{net} B={bs} symbolic with / without crops into Linear"] = r["crop_linear_over_default"]
                    ratios[f"{net} B={bs} symbolic without / with crops"] = r["no_crops_over_default"]
                if "windows_everywhere_over_default" in r:
                    ratios[f"{net} B={bs} symbolic windows at every size / dense below PATCHES_MIN_DENSE"] = \
                        r["windows_everywhere_over_default"]
                if "crops_everywhere_over_default" in r:
                    ratios[f"{net} B={bs} symbolic crops at every size / dense below CROPS_MIN_DENSE"] = \
                        r["crops_everywhere_over_default"]
                if "no_windows_over_no_crops" in r:
                    ratios[f"{net} B={bs} symbolic without / with windows (no crops)"] = r["no_windows_over_no_crops"]
                    ratios[f"{net} B={bs} symbolic without / with the shortcuts (no windows)"] = \
                        r["no_shortcuts_over_no_windows"]
                if "naive_over_ours" in r:
                    ratios[f"{net} B={bs} naive symbolic / robustlib symbolic"] = r["naive_over_ours"]
                    if r["max_bound_difference"] > 1e-3:
                        print(f"WARNING: robustlib and the naive reference differ by {r['max_bound_difference']:.2e}")
    print(f"# total {time.perf_counter() - t_start:.1f} s")
    rows += [{"net": r["net"], "batch": r["batch"], "method": f"{m}, glibc default allocator",
              "samples_per_s": r["batch"] / r["default_s"][m], "fixed_thresholds_samples_per_s":
              r["batch"] / r["fixed_s"][m]} for r in allocator_rows for m in r["default_s"]]
    path = write_result("bounds", device, {"nets": a.nets, "batch_sizes": a.batch_sizes, "eps": a.eps,
                                           "dtype": a.dtype, "quick": a.quick,
                                           "allocator": rl_allocator.state()}, rows, ratios)
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
