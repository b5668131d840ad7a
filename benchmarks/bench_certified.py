"""Certified-training cost: epoch time of MixTrain (k = 1, 5), full symbolic, IBP and PGD-AT training, as ratios.

    python benchmarks/bench_certified.py [--device cuda] [--n 2000] [--networks mnist_small mnist_large] [--quick]

Part 1 trains one epoch of each objective on the same data (Fashion-MNIST when installed, else the embedded
digits at 28×28), batch 50, and prints seconds per epoch and every ratio, for each network of ``--networks``
(MNIST_Small and MNIST_Large). Goal: MixTrain with k = 5 of a batch of 50 at least 7× faster per epoch than full
symbolic training (ideal 10×). The first network trains on ``--n`` examples (its figures keep the file's original
keys: ``epoch_s`` and ratios without a prefix); the others on ``--n-large`` examples (one batch of MNIST_Large's
symbolic bounds takes minutes on a CPU), and their rows give **seconds per example**. Every trainer takes the same
steps from the same initial weights: the cost of a symbolic bound follows the number of unstable ReLUs, which
training changes within a few steps (MNIST_Large at ε = 0.1 on the 2-core CPU: about 3 s per sample at its initial
weights, about 2 s on average over the first two steps, 1.3 s over MixTrain's first four), so timing full symbolic
training on fewer steps than MixTrain (``--n-symbolic`` below ``--n-large``) mixes the two effects. Their certified objectives recompute the bounds
in the backward pass (``checkpoint=True``), as the MixTrain chapter does: without it one batch of MNIST_Large's
symbolic bounds outgrows 24 GiB.

Part 2 measures symbolic robust-loss forward + backward samples per second for MNIST_Small, MNIST_Large and
CIFAR_Small, and the ratio of one sample's symbolic bounds (no autograd) to one batched forward pass of d + 1
images (the affine forms carry d + 1 columns: that is the floor; goal at most 1.5×), and of its forward + backward
to a forward + backward of d + 1 images (training's floor: the backward also computes weight gradients over every
column), at each batch size of ``--floor-batches`` (a GPU bounding a few samples waits on kernel launches; a larger
batch spreads them). Unstable ReLUs add one column each on top (``benchmarks/bench_bounds.py`` counts them).

Both parts also time the full symbolic and MixTrain k = 5 epochs of the first network, and the symbolic forward +
backward, with ``bounds.symbolic.CROPS`` and ``PATCHES`` off (dense columns and dense error images through the
convolutions, as before 2026-11-26): the before of those changes, in the same run. On a device type that keeps
small blocks of error terms dense (``bounds.symbolic.CROPS_MIN_DENSE``: CUDA, since 2026-11-28) the MixTrain k = 5
epoch of each further network runs once more with crops at every size, the before of that choice; and where the
certified trainers recompute their bounds in the backward (past MNIST_Small), MixTrain k = 5 runs once more without
(and on CUDA full symbolic training too): whether its few points need the recomputation at all (``variants``).

Every figure is measured in this process; results go to benchmarks/results/certified-<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import settings, switched_off, timed, write_result  # noqa: E402

import robustlib as rl  # noqa: E402
from robustlib.objectives import PGDAT, IBPTraining, MixTrain, SymbolicTraining  # noqa: E402

# The switches of robustlib.bounds.symbolic whose before this benchmark also times: windows of the input
# coefficients and crops of the error terms through convolutions (2026-11-26), off = d dense columns and dense images.
BEFORE = ("CROPS", "PATCHES")
# the networks of part 2 (symbolic bounds against their floor)
FLOOR_NETWORKS = ("mnist_small", "mnist_large", "cifar_small")


def load(n: int, device):
    try:
        train, _ = rl.data.load("fashion-mnist", device=device, n_train=n, download=False)
    except rl.data.DataUnavailable:
        train, _ = rl.data.load("digits", device=device, n_train=min(n, 1438))
    return train


def epoch_seconds(objective, data, device, batch: int, network: str = "mnist_small", lr: float = 0.01) -> float:
    """One epoch's seconds, after a warm-up (on CUDA two batches: the first objective timed would otherwise pay the
    context's and the kernels' start-up; on a CPU one)."""
    def one_epoch(part) -> float:
        torch.manual_seed(0)
        model = rl.models.build(network, like=data).to(device)
        return timed(lambda: rl.train.fit(model, part, objective, epochs=1, batch_size=batch, lr=lr,
                                          drop_last=True, progress=False), device)

    one_epoch(data.head((2 if torch.device(device).type == "cuda" else 1) * batch))
    return one_epoch(data)


def objectives_for(eps: float, checkpoint: bool = False) -> dict:
    """The five trainers compared, by name (``checkpoint``: the certified ones recompute bounds in the backward)."""
    return {"pgd-at": PGDAT(eps, steps=10), "ibp": IBPTraining(eps, kappa=(0.5, 0.5)),
            "symbolic": SymbolicTraining(eps, checkpoint=checkpoint),
            "mixtrain-k1": MixTrain(eps, k=1, rule="fixed", checkpoint=checkpoint),
            "mixtrain-k5": MixTrain(eps, k=5, rule="fixed", checkpoint=checkpoint)}


# The learning rate of the per-example timings past MNIST_Small (the time of a step does not depend on it): at 0.01,
# full symbolic training of MNIST_Large from its initial weights (gradient norm ~450) went NaN within one epoch of
# 1,000 examples on the H200 (2026-11-28).
LARGE_LR = 1e-3


def per_example(network: str, data, n_symbolic: int, device, batch: int, eps: float) -> dict:
    """Seconds per example of one epoch of each trainer on ``network`` (full symbolic training on the first
    ``n_symbolic`` examples of ``data``, the others on all of it); bounds recomputed in the backward pass on any
    network larger than MNIST_Small."""
    row = {"network": network, "n": len(data), "n_symbolic": n_symbolic, "lr": LARGE_LR}
    for name, obj in objectives_for(eps, checkpoint=network != "mnist_small").items():
        part = data.head(n_symbolic) if name == "symbolic" else data
        try:
            row[f"{name} s/example"] = epoch_seconds(obj, part, device, batch, network, LARGE_LR) / len(part)
        except FloatingPointError as e:   # a diverging epoch is no timing: say so, keep the rest of the run
            print(f"{network:12s} {name:12s} diverged, not timed: {e}", flush=True)
            row[f"{name} s/example"] = None
            continue
        print(f"{network:12s} {name:12s} {row[f'{name} s/example'] * 1e3:9.2f} ms per example "
              f"({len(part)} examples)", flush=True)
    for label, name, part, setting, recompute, wanted in variants(network, device):
        if row.get(f"{name} s/example") is None or not wanted:
            continue
        try:
            with settings(**setting):
                row[f"{label} s/example"] = epoch_seconds(objectives_for(eps, checkpoint=recompute)[name],
                                                          data.head(n_symbolic) if part else data, device, batch,
                                                          network, LARGE_LR) / (n_symbolic if part else len(data))
        except torch.OutOfMemoryError:   # a graph kept whole for the backward outgrew the device: say so
            print(f"{network:12s} {label}: out of memory, not timed", flush=True)
            torch.cuda.empty_cache()
            continue
        print(f"{network:12s} {label:12s} {row[f'{label} s/example'] * 1e3:9.2f} ms per example", flush=True)
    return row


def variants(network: str, device) -> list:
    """Further epochs of a network past the first, each the before of a choice: ``(label, trainer, on the symbolic
    part of the data, bounds settings, recompute in the backward, run at all)``. MixTrain k = 5 with crops at every
    size where the device keeps small blocks of error terms dense (``CROPS_MIN_DENSE``); and, where the certified
    trainers recompute the bounds in the backward (past MNIST_Small), MixTrain k = 5 without recomputing (five points
    of MNIST_Large at ε = 0.1: a process peak of about 6 GB on the CPU, 2026-11-28) and, on CUDA only, full symbolic
    training without it too (fifty points: some 55 GB, beyond a 24 GB CPU; out of memory is reported)."""
    dense_rule = torch.device(device).type in importlib.import_module("robustlib.bounds.symbolic").CROPS_MIN_DENSE
    recomputing = network != "mnist_small"
    return [("mixtrain-k5, crops at every size", "mixtrain-k5", False, {"CROPS_MIN_DENSE": {}}, recomputing,
             dense_rule),
            ("mixtrain-k5, no recomputation", "mixtrain-k5", False, {}, False, recomputing),
            ("symbolic, no recomputation", "symbolic", True, {}, False,
             recomputing and torch.device(device).type == "cuda")]


def symbolic_vs_forward(name: str, device, batch: int) -> dict:
    """One sample's symbolic robust loss against the floor of d + 1 images through the network: its bounds alone
    (no autograd) against one forward pass of d + 1 images (the issue's goal, ≤ 1.5×), and forward + backward
    (what training pays, weight gradients included) against a forward + backward of d + 1 images."""
    model = rl.models.build(name).to(device).eval()
    shape = (1, 28, 28) if name.startswith("mnist") else (3, 32, 32)
    d = torch.Size(shape).numel()
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    x_floor = torch.rand(d + 1, *shape, device=device)
    y_floor = torch.randint(0, 10, (d + 1,), device=device)

    def sym():
        rl.bounds.robust_loss(model, x, y, 0.01).sum().backward()

    def sym_bounds():
        with torch.no_grad():
            rl.bounds.robust_loss(model, x, y, 0.01)

    def fwd():
        with torch.no_grad():
            model(x_floor)

    def fwd_bwd():
        torch.nn.functional.cross_entropy(model(x_floor), y_floor).backward()

    sym()  # trace and warm up
    t_sym = timed(sym, device, repeat=3) / batch
    t_bounds = timed(sym_bounds, device, repeat=3) / batch
    t_fwd = timed(fwd, device, repeat=3)
    t_fwd_bwd = timed(fwd_bwd, device, repeat=3)
    with switched_off(*BEFORE):
        t_sym_before = timed(sym, device, repeat=3) / batch
    return {"network": name, "d": d, "batch": batch, "sym_fwd_bwd_s_per_sample": t_sym,
            "sym_bounds_s_per_sample": t_bounds, "samples_per_s": 1 / t_sym, "forward_d_plus_1_s": t_fwd,
            "forward_backward_d_plus_1_s": t_fwd_bwd, "bounds_ratio_to_floor": t_bounds / t_fwd,
            "fwd_bwd_ratio_to_floor": t_sym / t_fwd_bwd, "sym_fwd_bwd_s_per_sample_before": t_sym_before,
            "fwd_bwd_gain": t_sym_before / t_sym}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=2000, help="training examples for the first network's epoch timings")
    p.add_argument("--networks", nargs="+", default=None, choices=("mnist_small", "mnist_large"),
                   help="networks of part 1, the first timed per epoch with its before (default: both; "
                        "MNIST_Small only with --quick)")
    p.add_argument("--n-large", type=int, default=None,
                   help="training examples of the other networks (default 1,000 on CUDA, 100 on a CPU)")
    p.add_argument("--n-symbolic", type=int, default=None,
                   help="of those, the examples of full symbolic training (default: all of them)")
    p.add_argument("--floor-batches", type=int, nargs="+", default=None,
                   help="batch sizes of part 2 (default 8; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    networks = args.networks or (["mnist_small"] if args.quick else ["mnist_small", "mnist_large"])
    n, batch = (50, 50) if args.quick else (args.n, 50)
    n_large = args.n_large or (100 if args.quick or not cuda else 1000)
    n_symbolic = min(args.n_symbolic or n_large, n_large)
    eps = 0.1
    first = networks[0]
    data = load(n, device)
    objectives = objectives_for(eps, checkpoint=first != "mnist_small")
    seconds = {}
    for name, obj in objectives.items():
        seconds[name] = epoch_seconds(obj, data, device, batch, first)
        print(f"{name:12s} {seconds[name]:8.2f} s per epoch of {len(data)} ({data.name}, {first})", flush=True)
    for name in ("symbolic", "mixtrain-k5"):      # the same epochs without windows and crops: their before
        with switched_off(*BEFORE):
            seconds[f"{name}, dense"] = epoch_seconds(objectives[name], data, device, batch, first)
        print(f"{name + ', dense':12s} {seconds[name + ', dense']:8.2f} s per epoch (windows and crops off)", flush=True)
    with switched_off("crops.INDEX_SELECT"):   # fresh error terms' kernel slices by advanced indexing: the before
        seconds["symbolic, indexed crops"] = epoch_seconds(objectives["symbolic"], data, device, batch, first)
    print(f"{'symbolic, indexed crops':12s} {seconds['symbolic, indexed crops']:8.2f} s per epoch (kernel slices by "
          f"advanced indexing)", flush=True)
    ratios = {"symbolic / mixtrain-k5": seconds["symbolic"] / seconds["mixtrain-k5"],
              "symbolic / mixtrain-k1": seconds["symbolic"] / seconds["mixtrain-k1"],
              "pgd-at / mixtrain-k5": seconds["pgd-at"] / seconds["mixtrain-k5"],
              "mixtrain-k5 / ibp": seconds["mixtrain-k5"] / seconds["ibp"],
              "symbolic / pgd-at": seconds["symbolic"] / seconds["pgd-at"],
              "symbolic epoch: dense / windows and crops": seconds["symbolic, dense"] / seconds["symbolic"],
              "mixtrain-k5 epoch: dense / windows and crops": seconds["mixtrain-k5, dense"] / seconds["mixtrain-k5"],
              "symbolic epoch: indexed / index_select crops": seconds["symbolic, indexed crops"] / seconds["symbolic"]}
    rows = [{"network": first, "n": len(data), "n_symbolic": len(data),
             **{f"{name} s/example": seconds[name] / len(data) for name in objectives}}]
    if len(networks) > 1:
        data_large = load(n_large, device)
        rows += [per_example(net, data_large, n_symbolic, device, batch, eps) for net in networks[1:]]
    for row in rows[1:]:
        for a, b in (("symbolic", "mixtrain-k5"), ("symbolic", "mixtrain-k1"), ("pgd-at", "mixtrain-k5")):
            if row[f"{a} s/example"] is not None and row[f"{b} s/example"] is not None:
                ratios[f"{row['network']} {a} / {b} (per example)"] = row[f"{a} s/example"] / row[f"{b} s/example"]
        if "mixtrain-k5, crops at every size s/example" in row:
            ratios[f"{row['network']} mixtrain-k5 (per example): crops at every size / dense below CROPS_MIN_DENSE"] = \
                row["mixtrain-k5, crops at every size s/example"] / row["mixtrain-k5 s/example"]
        if "mixtrain-k5, no recomputation s/example" in row:
            ratios[f"{row['network']} mixtrain-k5 (per example): recomputing / not"] = \
                row["mixtrain-k5 s/example"] / row["mixtrain-k5, no recomputation s/example"]
            if row["symbolic s/example"] is not None:
                ratios[f"{row['network']} symbolic recomputing / mixtrain-k5 not (per example)"] = \
                    row["symbolic s/example"] / row["mixtrain-k5, no recomputation s/example"]
        if "symbolic, no recomputation s/example" in row:
            ratios[f"{row['network']} symbolic / mixtrain-k5, neither recomputing (per example)"] = \
                row["symbolic, no recomputation s/example"] / row["mixtrain-k5, no recomputation s/example"]
    for k, v in ratios.items():
        print(f"{k:24s} {v:6.2f}×")
    for row in rows:
        if row["symbolic s/example"] is None or row["mixtrain-k5 s/example"] is None:
            continue
        r = row["symbolic s/example"] / row["mixtrain-k5 s/example"]
        print(f"goal on {row['network']}: symbolic / mixtrain-k5 ≥ 7 (ideal 10): {r:.2f}×, "
              f"{'met' if r >= 7 else 'NOT met'}")
    floors, floor_batches = [], args.floor_batches or [2 if args.quick else 8]
    for b in floor_batches:
        for name in FLOOR_NETWORKS:
            try:
                floors.append(symbolic_vs_forward(name, device, b))
            except torch.OutOfMemoryError:   # a large batch's graph for the backward: skip it, keep the rest
                print(f"{name:12s} batch {b:3d}: out of memory, skipped", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    for f in floors:
        at = "" if f["batch"] == floor_batches[0] else f", batch {f['batch']}"
        print(f"{f['network']:12s} d = {f['d']:5d}, batch {f['batch']:3d}: {f['samples_per_s']:7.2f} symbolic fwd+bwd "
              f"samples/s; bounds {f['bounds_ratio_to_floor']:.2f}× one forward pass of d + 1 images (goal ≤ 1.5); "
              f"forward + backward {f['fwd_bwd_ratio_to_floor']:.2f}× one forward + backward of d + 1 images; "
              f"{f['fwd_bwd_gain']:.2f}× faster than with windows and crops off")
        ratios[f"{f['network']} symbolic bounds / forward(d+1){at}"] = f["bounds_ratio_to_floor"]
        ratios[f"{f['network']} symbolic fwd+bwd / fwd+bwd(d+1){at}"] = f["fwd_bwd_ratio_to_floor"]
        ratios[f"{f['network']} symbolic fwd+bwd: dense / windows and crops{at}"] = f["fwd_bwd_gain"]
    settings = {"n": len(data), "data": data.name, "batch": batch, "eps": eps, "network": first,
                "networks": networks, "quick": args.quick}
    if len(networks) > 1:
        settings.update(n_large=n_large, n_symbolic=n_symbolic)
    path = write_result("certified", device, settings,
                        {"epoch_s": seconds, "per_example": rows, "symbolic_floor": floors}, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
