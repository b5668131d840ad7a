"""Speed and memory of robustlib.bounds, as ratios to a plain forward pass measured in the same run.

    python benchmarks/bench_bounds.py                      # CPU, batch sizes 1 4, about a minute
    python benchmarks/bench_bounds.py --device cuda --batch-sizes 1 8 32 128
    python benchmarks/bench_bounds.py --threads 1 --json bench_bounds.json

For each network (MixTrain's MNIST_Small, MNIST_Large, CIFAR_Small at random initialisation, inputs
uniform in [0, 1], L∞ box of half-width ``--eps`` clamped to [0, 1]) and batch size it times
``model(x)``, ``bounds.interval`` and ``bounds.symbolic`` without gradients (warm-up, CUDA
synchronisation, median of repeats; fewer repeats when one call is slow) and prints samples/second,
the time ratio to the forward pass, and peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` above the memory held before the call (measured).
* CPU: *analytic* — the largest coefficient tensor the method holds at once
  (forward: B·n_max, interval: 2·B·n_max, symbolic: chunk·d·n_max numbers, d = input dimension,
  n_max = largest layer; the error-term blocks of unstable ReLUs come on top). Process RSS is not
  a usable measure for torch's caching allocator, so it is not reported.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustlib import bounds, models  # noqa: E402

NETS = {"mnist_small": (1, 28), "mnist_large": (1, 28), "cifar_small": (3, 32)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, target_s: float, max_repeats: int):
    """Median seconds of fn() after one warm-up; repeats chosen so the total stays near target_s."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t0
    repeats = int(max(1, min(max_repeats, target_s // max(warm, 1e-6))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), repeats


def _peak(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench(name: str, batch: int, device, dtype, eps: float, budget, target_s: float, max_repeats: int):
    ch, size = NETS[name]
    torch.manual_seed(0)
    model = models.build(name).to(device=device, dtype=dtype).eval()
    x = torch.rand(batch, ch, size, size, device=device, dtype=dtype)
    lower, upper = bounds.input_box(x, eps)
    plan = bounds.graph.prepare(model, x)                 # shapes for the analytic memory figures
    d, n_max = math.prod(plan.in_shape), plan.max_numel
    item = x.element_size()
    per_sample = bounds.estimate_sample_bytes(plan, x)
    budget_b = bounds.default_memory_budget(device) if budget is None else budget
    chunk = int(max(1, min(batch, budget_b // per_sample)))

    runs = {
        "forward": lambda: model(x),
        "interval": lambda: bounds.interval(model, lower, upper),
        "symbolic": lambda: bounds.symbolic(model, lower, upper, memory_budget=budget),
    }
    analytic = {"forward": batch * n_max * item, "interval": 2 * batch * n_max * item,
                "symbolic": chunk * d * n_max * item}
    out = {"net": name, "batch": batch, "eps": eps, "chunk": chunk}
    with torch.no_grad():
        for key, fn in runs.items():
            sec, reps = _time(fn, device, target_s, max_repeats)
            peak = _peak(fn, device)
            out[key] = {"seconds": sec, "repeats": reps, "samples_per_s": batch / sec,
                        "peak_bytes": peak if peak is not None else analytic[key],
                        "peak_kind": "measured" if peak is not None else "analytic"}
    for key in ("interval", "symbolic"):
        out[key]["time_ratio_to_forward"] = out[key]["seconds"] / out["forward"]["seconds"]
        out[key]["memory_ratio_to_forward"] = out[key]["peak_bytes"] / max(out["forward"]["peak_bytes"], 1)
    return out


def _mib(b):
    return f"{b / 2**20:9.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--memory-budget", type=float, default=None, help="bytes for symbolic chunks")
    p.add_argument("--target-seconds", type=float, default=1.5, help="time budget per measurement")
    p.add_argument("--max-repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    budget = None if a.memory_budget is None else int(a.memory_budget)

    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
           or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "dtype": a.dtype, "eps": a.eps}
    print(f"# robustlib.bounds benchmark: {env}")
    mem_note = "measured max_memory_allocated" if device.type == "cuda" else \
        "analytic size of the largest coefficient tensor (see docstring)"
    print(f"# memory column: {mem_note}")
    print(f"{'net':12s} {'B':>4s} {'method':9s} {'samples/s':>11s} {'x forward':>10s} {'peak MiB':>9s} "
          f"{'x fwd mem':>9s} {'reps':>4s}")
    rows = []
    t_start = time.perf_counter()
    for net in a.nets:
        for bs in a.batch_sizes:
            r = bench(net, bs, device, dtype, a.eps, budget, a.target_seconds, a.max_repeats)
            rows.append(r)
            for key in ("forward", "interval", "symbolic"):
                m = r[key]
                ratio = "" if key == "forward" else f"{m['time_ratio_to_forward']:10.1f}"
                mratio = "" if key == "forward" else f"{m['memory_ratio_to_forward']:9.1f}"
                print(f"{net:12s} {bs:4d} {key:9s} {m['samples_per_s']:11.1f} {ratio:>10s} "
                      f"{_mib(m['peak_bytes'])} {mratio:>9s} {m['repeats']:4d}", flush=True)
    print(f"# total {time.perf_counter() - t_start:.1f} s")
    if a.json:
        a.json.write_text(json.dumps({"env": env, "memory": mem_note, "results": rows}, indent=2))
        print(f"# wrote {a.json}")


if __name__ == "__main__":
    main()
