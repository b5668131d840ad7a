"""Where the time of an adversarial-training step goes: `train.fit` + PGD-AT under `torch.profiler`, by kind of work.

    python benchmarks/bench_profile.py                        # CPU: MNIST_Small on Fashion-MNIST (digits if absent)
    python benchmarks/bench_profile.py --device cuda          # GPU: PreAct-ResNet-18 on 32×32×3 generated data
    python benchmarks/bench_profile.py --device cuda --network mnist_small --variants fp32 default
    python benchmarks/bench_profile.py --objective mixtrain-k5 symbolic   # certified training, batch 50

The training benchmark (`bench_training.py`) says how fast a step is; this one says what it spends its time on, so
that the next gain is looked for where the time is. For each *variant* of `fit`'s speed options (the names of
`bench_training.VARIANTS`), the same network from the same initial weights first trains one unprofiled epoch of
``--batches`` batches (the wall-clock, after a warm-up of two batches that pays compilation and kernel tuning), then
the same epoch under `torch.profiler` (on a GPU, then two batches that record which lines make the host wait for
the device, ``sync_sources``). Each operator's self time — on a GPU the time of the kernels it launched, on a
CPU its own time on the calling thread — is summed by kind of work: convolutions, matrix products, normalisation,
activations (ReLU and its backward), the attack's elementwise steps, layout changes and casts (copies), losses,
the optimiser, allocation, and the rest. On a GPU, the kernels' total time against the unprofiled wall-clock is the
share of the step in which the device computes at all (``device_busy``): far below 1, the step waits on the host and
kernel launches, and fewer, larger kernels (compilation, CUDA graphs) are what pays; near 1, faster kernels are.
The most expensive operators, by input shape, are listed too: a cheap operator that costs much is where a layout or
a dtype goes wrong (that is how the mixed layouts behind `robustlib.precision.channels_last_gradients` were found).

``--objective`` profiles other trainers on MNIST_Small at the MixTrain paper's batch of 50 instead: MixTrain
(k = 5 symbolic bounds a batch) and full symbolic training (a bound for every example), in `fit`'s default
variant. Where the time of their symbolic bounds goes, and how many operators they call (``ops_per_batch``, aten
operator calls, nested ones included; on a GPU also ``kernels_per_batch``) and how often they wait for the device
(``host_reads_per_batch``: int(), bool(), .item() and the like on a tensor), says whether bounding k points instead of
50 can save time on a device: a GPU that waits on the host between small kernels (``device_busy`` far below 1) saves
little, because the k points' bounds call as many operators as the whole batch's. On a GPU the ratio of the two
steps' kernel time (``kernel ms a batch``) is what the speed-up would be if launching kernels cost nothing: the
ceiling that compiling the step or capturing it in a CUDA graph could approach. Their elementwise operators are
the bounds' (ReLU relaxation, concretisation), not an attack's, and are reported as such.

Writes ``benchmarks/results/profile-<cpu|cuda>.json`` (``profile-<network>-<device>.json`` for another network than
the device's default, ``profile-certified-<device>.json`` for ``--objective``). A profile has no baseline of its own: its figures are shares of one run, and its ratios are
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
    "allocation": r"empty|zeros|ones|full|resize_|^aten::fill_$",
    "gather / scatter": r"gather|scatter|index|embedding_bag|unfold|^aten::take",
    "reduction": r"^aten::(sum|mean|amax|amin|max|min|linalg_vector_norm|norm)$",
}

# operators that read a tensor's value on the host (int(), bool(), .item(); nonzero and friends size their output
# from the values): on a GPU each one waits for every queued kernel, so the host can no longer run ahead of the device
HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique", "aten::_unique2"}
STREAM_SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize"}   # on CUDA (the epoch's final sync counts once)


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


def sync_sources(fn, top: int = 8) -> list:
    """Where ``fn()`` makes the host wait for a CUDA device: it runs under ``torch.cuda.set_sync_debug_mode("warn")``,
    whose warning for each synchronising call is recorded with the innermost frames of robustlib or this benchmark
    that led to it; the places, most frequent first, as ``{"where", "what", "count"}``. A profile counts the waits
    (``stream_syncs_per_batch``); this says which lines cause them."""
    import traceback
    import warnings
    here = (str(Path(rl.__file__).resolve().parent), str(Path(__file__).resolve().parent))
    counts: dict = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(here)
                  and not f.filename.endswith("bench_profile.py")]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:])) or \
            f"{Path(filename).name}:{lineno}"
        key = (where, str(message).split("\n")[0][:120])
        counts[key] = counts.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [{"where": where, "what": what, "count": n} for (where, what), n in ranked]


def _self_us(event, cuda: bool) -> float:
    if cuda:
        return float(getattr(event, "self_device_time_total", 0.0) or 0.0)
    return float(event.self_cpu_time_total)


def _host_side(events):
    """The operators the host called (kernels are attributed to them); on CUDA the kernels' own rows are left out."""
    from torch.autograd import DeviceType
    return [e for e in events if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]


def summarise(events, by_shape, wall_s: float, n_batches: int, cuda: bool, top: int,
              attack: bool = True) -> tuple[dict, list]:
    """One variant's row (seconds per batch by kind, shares, device busy, operator calls) and its most expensive
    operators. ``attack``: the step's elementwise operators are an attack's (PGD-AT), else reported as
    "elementwise" (the bounds' in certified training)."""
    label = (lambda k: k) if attack else (lambda k: "elementwise" if k == "attack step" else k)  # noqa: E731
    ops = _host_side(events)
    spent: dict = {}
    for e in ops:
        kind = label(kind_of(e.key))
        spent[kind] = spent.get(kind, 0.0) + _self_us(e, cuda)
    total = sum(spent.values())
    row = {"wall_ms_per_batch": 1e3 * wall_s / n_batches,
           "profiled_ms_per_batch": total / 1e3 / n_batches,
           "device_busy" if cuda else "op_time_over_wall": total / 1e6 / wall_s,
           "ops_per_batch": sum(e.count for e in ops if e.key.startswith("aten::")) / n_batches,
           "host_reads_per_batch": sum(e.count for e in ops if e.key in HOST_READS) / n_batches}
    if cuda:
        from torch.autograd import DeviceType
        kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        row["kernels_per_batch"] = sum(e.count for e in kernels) / n_batches
        syncs = sum(e.count for e in ops if e.key in STREAM_SYNCS)   # fit's per epoch (start, end, loss) included
        row["stream_syncs_per_epoch"] = syncs
        row["stream_syncs_per_batch"] = syncs / n_batches
    row.update({f"% {label(k)}": round(100 * spent.get(label(k), 0.0) / total, 1) if total else 0.0
                for k in (*KINDS, "other")})
    shaped = sorted(_host_side(by_shape), key=lambda e: -_self_us(e, cuda))[:top]
    tops = [{"op": e.key, "kind": label(kind_of(e.key)),
             "shapes": " · ".join(str(s) for s in (e.input_shapes or [])[:2] if s) or "—",
             "calls_per_batch": e.count / n_batches, "us_per_call": _self_us(e, cuda) / max(e.count, 1),
             "% of step": round(100 * _self_us(e, cuda) / total, 1) if total else 0.0} for e in shaped]
    return row, tops


def objective_of(name: str):
    """A fresh objective by its ``--objective`` name (PGD-AT is this script's default; the others certified)."""
    return {"pgd-at": lambda: rl.objectives.PGDAT(EPS, alpha=EPS / 4, steps=STEPS),
            "mixtrain-k5": lambda: rl.objectives.MixTrain(EPS, k=5, rule="fixed"),
            "symbolic": lambda: rl.objectives.SymbolicTraining(EPS)}[name]()


def profile_variant(variant, name, data, init, batch, n_batches, device, cuda, top, objective="pgd-at"):
    """One variant: a warm-up, one unprofiled epoch (its images/s, first in the row), one profiled epoch,
    summarised; on a GPU then two batches' :func:`sync_sources` (else an empty list)."""
    model = rl.models.build(name, like=data).to(device)
    # the initial weights wait on the device: loaded from the host, each of PreAct-ResNet-18's 107 tensors would be
    # a copy the host waits for, and the profile of 2026-11-28 counted those 107 (+ 6 of fit's own per epoch) as the
    # step's "22.6 stream synchronisations a batch"; the reset before each epoch is outside the timed window as well
    start = {k: v.to(device) for k, v in init.items()}

    def epoch(part):   # one epoch of ``objective`` over ``part`` (the caller resets the weights first)
        rl.train.fit(model, part, objective_of(objective), epochs=1, batch_size=batch,
                     lr=0.01, schedule="constant", progress=False, **VARIANTS[variant])

    def reset():
        model.load_state_dict(start)
        sync(device)

    reset()
    epoch(data.head(2 * batch))   # warm-up: compilation, kernel tuning
    reset()
    wall = timed(lambda: epoch(data), device)
    reset()
    events, by_shape = profiled(lambda: epoch(data), device)
    row, tops = summarise(events, by_shape, wall, n_batches, cuda, top, attack=objective == "pgd-at")
    waits = []
    if cuda:
        reset()
        waits = sync_sources(lambda: epoch(data.head(2 * batch)))
    return {"images_per_s": batch * n_batches / wall, **row}, tops, waits


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--network", choices=("preact_resnet18", "mnist_small"), default=None,
                   help="default: preact_resnet18 on 32×32×3 generated images on CUDA, mnist_small on Fashion-MNIST "
                        "on a CPU (always mnist_small with --objective)")
    p.add_argument("--objective", nargs="+", default=None, choices=("mixtrain-k5", "symbolic"),
                   help="profile these certified trainers instead of PGD-AT (MNIST_Small, batch 50, fit's default)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default 128 on CPU, 512 on CUDA; 50 with --objective)")
    p.add_argument("--batches", type=int, default=None, help="batches per profiled epoch (default 20; 3 with --quick)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="fit configurations to profile (default: fp32 and default; default alone with --objective)")
    p.add_argument("--top", type=int, default=12, help="operators listed per variant, by input shape")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    certified = bool(args.objective)
    if certified:
        args.network = "mnist_small"
    device, cuda, name, default_name = network_of(args)
    batch = args.batch or (50 if certified else 32 if args.quick else (512 if cuda else 128))
    n_batches = args.batches or (3 if args.quick else 20)
    if certified:
        variants, objectives = args.variants or ["default"], args.objective
    else:   # fp32 first: the ratios' baseline, timed in this process
        variants, objectives = args.variants or ["fp32", "default"], ["pgd-at"]
        variants = ["fp32"] + [v for v in variants if v != "fp32"]
    data, _ = data_for(device, batch * n_batches, gpu_like=name == "preact_resnet18")
    torch.manual_seed(0)
    init = rl.models.build(name, like=data).state_dict()

    rows, tops, ips, sync_found = [], [], {}, {}
    for objective in objectives:
        for variant in variants:
            key = f"{objective}, {variant}" if certified else variant
            with switched(variant):
                row, top, waits = profile_variant(variant, name, data, init, batch, n_batches, device, cuda,
                                                  args.top, objective)
            ips[key] = row["images_per_s"]
            if waits:   # on a GPU; a variant without any wait is left out
                sync_found[key] = waits
            rows.append({**({"objective": objective} if certified else {}), "variant": variant, **row})
            tops += [{**({"objective": objective} if certified else {}), "variant": variant, **t} for t in top]
            shares = sorted(((k[2:], v) for k, v in row.items() if k.startswith("% ")), key=lambda kv: -kv[1])
            print(f"{key:28s} {ips[key]:8.0f} images/s, {row['wall_ms_per_batch']:.1f} ms a batch, "
                  f"{row['ops_per_batch']:.0f} operator calls, {row['host_reads_per_batch']:.0f} host reads; "
                  + ", ".join(f"{k} {v:.0f}%" for k, v in shares[:5])
                  + (f"; device busy {row['device_busy']:.0%}, {row['kernels_per_batch']:.0f} kernels a batch"
                     if cuda else ""), flush=True)
            for t in top[:5]:
                print(f"    {t['op']:36s} {t['shapes'][:50]:50s} {t['us_per_call']:8.1f} µs × "
                      f"{t['calls_per_batch']:.0f} a batch ({t['% of step']:.0f}%)", flush=True)
            for w in sync_found.get(key, [])[:4]:
                print(f"    waits {w['count']:4d}× over two batches: {w['where'][:100]} ({w['what'][:60]})",
                      flush=True)
    if certified:   # each trainer's step against MixTrain's, per variant: time and operator calls; on a GPU also
        # the kernels' time, the ratio the step would reach if launching kernels cost nothing
        by = {(r["objective"], r["variant"]): r for r in rows}
        fields = (("ms a batch", "wall_ms_per_batch"), ("operator calls", "ops_per_batch")) + \
            ((("kernel ms a batch", "profiled_ms_per_batch"),) if cuda else ())
        ratios = {f"[{v}] {o} / mixtrain-k5, {what}": by[o, v][field] / by["mixtrain-k5", v][field]
                  for o in objectives if o != "mixtrain-k5" and "mixtrain-k5" in objectives for v in variants
                  for what, field in fields}
    else:
        ratios = {f"robustlib[{v}] / robustlib[fp32]": ips[v] / ips["fp32"] for v in ips if v != "fp32"}
    result = "profile-certified" if certified else "profile" if name == default_name else f"profile-{name}"
    path = write_result(result, device, {"network": name, "data": data.name, "batch": batch, "batches": n_batches,
                                         "eps": EPS, "quick": args.quick,
                                         **({"objectives": objectives} if certified else {"steps": STEPS}),
                                         "variants": {v: VARIANTS[v] for v in variants}},
                        {"by_kind": rows, "top_operators": tops,
                         **({"sync_sources": sync_found} if sync_found else {})}, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
