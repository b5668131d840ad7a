"""Where the time of an adversarial-training step goes: `train.fit` + PGD-AT under `torch.profiler`, by kind of work.

    python benchmarks/bench_profile.py                        # CPU: MNIST_Small on Fashion-MNIST (digits if absent)
    python benchmarks/bench_profile.py --device cuda          # GPU: PreAct-ResNet-18 on 32×32×3 generated data
    python benchmarks/bench_profile.py --device cuda --network mnist_small --variants fp32 default

The training benchmark (`bench_training.py`) says how fast a step is; this one says what it spends its time on, so
that the next gain is looked for where the time is. For each *variant* of `fit`'s speed options (the names of
`bench_training.VARIANTS`), the same network from the same initial weights first trains one unprofiled epoch of
``--batches`` batches (the wall-clock, after a warm-up of two batches that pays compilation and kernel tuning), then
the same epoch under `torch.profiler`. Each operator's self time — on a GPU the time of the kernels it launched, on a
CPU its own time on the calling thread — is summed by kind of work: convolutions, matrix products, normalisation,
activations (ReLU and its backward), the attack's elementwise steps, layout changes and casts (copies), losses,
the optimiser, allocation, and the rest. On a GPU, the kernels' total time against the unprofiled wall-clock is the
share of the step in which the device computes at all (``device_busy``): far below 1, the step waits on the host and
kernel launches, and fewer, larger kernels (compilation, CUDA graphs) are what pays; near 1, faster kernels are.
The most expensive operators, by input shape, are listed too: a cheap operator that costs much is where a layout or
a dtype goes wrong (that is how the mixed layouts behind `robustlib.precision.channels_last_gradients` were found).

Writes ``benchmarks/results/profile-<cpu|cuda>.json`` (``profile-<network>-<device>.json`` for another network than
the device's default). A profile has no baseline of its own: its figures are shares of one run, and its ratios are
each variant's images/s against fp32 eager robustlib in the same process, without the profiler.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import EPS, STEPS, VARIANTS, data_for, network_of, switched  # noqa: E402
from common import sync, timed, write_result  # noqa: E402

import robustlib as rl  # noqa: E402

# kind of work → operator-name pattern (first match wins; the names are PyTorch's aten operators and profiler labels)
KINDS = {
    "convolution": r"conv|cudnn_convolution|mkldnn_convolution",
    "matrix product": r"^aten::(addmm|mm|bmm|matmul|linear|baddbmm)$",
    "normalisation": r"batch_norm|layer_norm|group_norm",
    "activation": r"relu|threshold|clamp_min",
    "attack step": r"^aten::(sign|clamp|clamp_|add_?|sub_?|mul_?|div_?|where|minimum|maximum|uniform_|normal_|"
                   r"rand\w*|neg|abs|lt|gt|ge|le|eq|masked_fill_?)$",
    "layout / cast": r"copy|_to_copy|^aten::to$|contiguous|clone|permute|transpose|reshape|view|_unsafe_view|"
                     r"as_strided|expand",
    "loss": r"softmax|nll_loss|cross_entropy|log_softmax|kl_div|logsumexp",
    "optimiser": r"Optimizer|_foreach|sgd|zero_",
    "allocation": r"empty|zeros|ones|full|resize_",
}


def kind_of(name: str) -> str:
    for kind, pattern in KINDS.items():
        if re.search(pattern, name):
            return kind
    return "other"


def profiled(fn, device):
    """``(key averages, key averages by input shape)`` of ``fn()`` under the profiler."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
        sync(device)
    return prof.key_averages(), prof.key_averages(group_by_input_shape=True)


def _self_us(event, cuda: bool) -> float:
    if cuda:
        return float(getattr(event, "self_device_time_total", 0.0) or 0.0)
    return float(event.self_cpu_time_total)


def _host_side(events):
    """The operators the host called (kernels are attributed to them); on CUDA the kernels' own rows are left out."""
    from torch.autograd import DeviceType
    return [e for e in events if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]


def summarise(events, by_shape, wall_s: float, n_batches: int, cuda: bool, top: int) -> tuple[dict, list]:
    """One variant's row (seconds per batch by kind, shares, device busy) and its most expensive operators."""
    ops = _host_side(events)
    spent: dict = {}
    for e in ops:
        spent[kind_of(e.key)] = spent.get(kind_of(e.key), 0.0) + _self_us(e, cuda)
    total = sum(spent.values())
    row = {"wall_ms_per_batch": 1e3 * wall_s / n_batches,
           "profiled_ms_per_batch": total / 1e3 / n_batches,
           "device_busy" if cuda else "op_time_over_wall": total / 1e6 / wall_s}
    if cuda:
        from torch.autograd import DeviceType
        kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        row["kernels_per_batch"] = sum(e.count for e in kernels) / n_batches
    row.update({f"% {k}": round(100 * spent.get(k, 0.0) / total, 1) if total else 0.0 for k in (*KINDS, "other")})
    shaped = sorted(_host_side(by_shape), key=lambda e: -_self_us(e, cuda))[:top]
    tops = [{"op": e.key, "kind": kind_of(e.key),
             "shapes": " · ".join(str(s) for s in (e.input_shapes or [])[:2] if s) or "—",
             "calls_per_batch": e.count / n_batches, "us_per_call": _self_us(e, cuda) / max(e.count, 1),
             "% of step": round(100 * _self_us(e, cuda) / total, 1) if total else 0.0} for e in shaped]
    return row, tops


def profile_variant(variant, name, data, init, batch, n_batches, device, cuda, top, ips):
    """One variant: a warm-up, one unprofiled epoch (its images/s into ``ips``), one profiled epoch, summarised."""
    model = rl.models.build(name, like=data).to(device)

    def epoch(part):   # one PGD-AT epoch over ``part`` from the initial weights
        model.load_state_dict(init)
        rl.train.fit(model, part, rl.objectives.PGDAT(EPS, alpha=EPS / 4, steps=STEPS), epochs=1, batch_size=batch,
                     lr=0.01, schedule="constant", progress=False, **VARIANTS[variant])

    epoch(data.head(2 * batch))   # warm-up: compilation, kernel tuning
    wall = timed(lambda: epoch(data), device)
    ips[variant] = batch * n_batches / wall
    events, by_shape = profiled(lambda: epoch(data), device)
    return summarise(events, by_shape, wall, n_batches, cuda, top)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--network", choices=("preact_resnet18", "mnist_small"), default=None,
                   help="default: preact_resnet18 on 32×32×3 generated images on CUDA, mnist_small on Fashion-MNIST "
                        "on a CPU")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CPU, 512 on CUDA)")
    p.add_argument("--batches", type=int, default=None, help="batches per profiled epoch (default 20; 3 with --quick)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="fit configurations to profile (default: fp32 and default)")
    p.add_argument("--top", type=int, default=12, help="operators listed per variant, by input shape")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    device, cuda, name, default_name = network_of(args)
    batch = args.batch or (32 if args.quick else (512 if cuda else 128))
    n_batches = args.batches or (3 if args.quick else 20)
    variants = args.variants or ["fp32", "default"]
    variants = ["fp32"] + [v for v in variants if v != "fp32"]   # the ratios' baseline, timed in this process
    data, _ = data_for(device, batch * n_batches, gpu_like=name == "preact_resnet18")
    torch.manual_seed(0)
    init = rl.models.build(name, like=data).state_dict()

    rows, tops, ips = [], [], {}
    for variant in variants:
        with switched(variant):
            row, top = profile_variant(variant, name, data, init, batch, n_batches, device, cuda, args.top, ips)
        rows.append({"variant": variant, "images_per_s": ips[variant], **row})
        tops += [{"variant": variant, **t} for t in top]
        shares = sorted(((k[2:], v) for k, v in row.items() if k.startswith("% ")), key=lambda kv: -kv[1])
        print(f"{variant:28s} {ips[variant]:8.0f} images/s, {row['wall_ms_per_batch']:.1f} ms a batch; "
              + ", ".join(f"{k} {v:.0f}%" for k, v in shares[:5])
              + (f"; device busy {row['device_busy']:.0%}, {row['kernels_per_batch']:.0f} kernels a batch"
                 if cuda else ""), flush=True)
        for t in top[:5]:
            print(f"    {t['op']:36s} {t['shapes'][:50]:50s} {t['us_per_call']:8.1f} µs × "
                  f"{t['calls_per_batch']:.0f} a batch ({t['% of step']:.0f}%)", flush=True)
    ratios = {f"robustlib[{v}] / robustlib[fp32]": ips[v] / ips["fp32"] for v in ips if v != "fp32"}
    result = "profile" if name == default_name else f"profile-{name}"
    path = write_result(result, device, {"network": name, "data": data.name, "batch": batch, "batches": n_batches,
                                         "eps": EPS, "steps": STEPS, "quick": args.quick,
                                         "variants": {v: VARIANTS[v] for v in variants}},
                        {"by_kind": rows, "top_operators": tops}, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
