"""Certified-training cost: epoch time of MixTrain (k = 1, 5), full symbolic, IBP and PGD-AT training, as ratios.

    python benchmarks/bench_certified.py [--device cuda] [--n 2000] [--quick]

Part 1 trains one epoch of each objective on the same data (Fashion-MNIST when installed, else the embedded
digits at 28×28) and network (MNIST_Small), batch 50, and prints seconds per epoch and every ratio. Goal:
MixTrain with k = 5 of a batch of 50 at least 7× faster per epoch than full symbolic training (ideal 10×).

Part 2 measures symbolic robust-loss forward + backward samples per second for MNIST_Small, MNIST_Large and
CIFAR_Small, and the ratio of one sample's symbolic bounds (no autograd) to one batched forward pass of d + 1
images (the affine forms carry d + 1 columns: that is the floor; goal at most 1.5×), and of its forward + backward
to a forward + backward of d + 1 images (training's floor: the backward also computes weight gradients over every
column). Unstable ReLUs add one column each on top (``benchmarks/bench_bounds.py`` counts them).

Both parts also time the full symbolic and MixTrain k = 5 epochs, and the symbolic forward + backward, with
``bounds.symbolic.CROPS`` and ``PATCHES`` off (dense columns and dense error images through the convolutions, as
before 2026-11-26): the before of those changes, in the same run.

Every figure is measured in this process; results go to benchmarks/results/certified-<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import switched_off, timed, write_result  # noqa: E402

import robustlib as rl  # noqa: E402
from robustlib.objectives import PGDAT, IBPTraining, MixTrain, SymbolicTraining  # noqa: E402

# The switches of robustlib.bounds.symbolic whose before this benchmark also times: windows of the input
# coefficients and crops of the error terms through convolutions (2026-11-26), off = d dense columns and dense images.
BEFORE = ("CROPS", "PATCHES")


def load(n: int, device):
    try:
        train, _ = rl.data.load("fashion-mnist", device=device, n_train=n, download=False)
    except rl.data.DataUnavailable:
        train, _ = rl.data.load("digits", device=device, n_train=min(n, 1438))
    return train


def epoch_seconds(objective, data, device, batch: int) -> float:
    """One epoch's seconds, after a two-batch warm-up (on CUDA the first objective timed would otherwise pay the
    context's and the kernels' start-up)."""
    def one_epoch(part) -> float:
        torch.manual_seed(0)
        model = rl.models.build("mnist_small", like=data).to(device)
        return timed(lambda: rl.train.fit(model, part, objective, epochs=1, batch_size=batch, lr=0.01,
                                          drop_last=True, progress=False), device)

    one_epoch(data.head(2 * batch))
    return one_epoch(data)


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
    p.add_argument("--n", type=int, default=2000, help="training examples for the epoch timings")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    n, batch = (200, 50) if args.quick else (args.n, 50)
    data = load(n, device)
    eps = 0.1
    objectives = {"pgd-at": PGDAT(eps, steps=10), "ibp": IBPTraining(eps, kappa=(0.5, 0.5)),
                  "symbolic": SymbolicTraining(eps), "mixtrain-k1": MixTrain(eps, k=1, rule="fixed"),
                  "mixtrain-k5": MixTrain(eps, k=5, rule="fixed")}
    seconds = {}
    for name, obj in objectives.items():
        seconds[name] = epoch_seconds(obj, data, device, batch)
        print(f"{name:12s} {seconds[name]:8.2f} s per epoch of {len(data)} ({data.name})", flush=True)
    for name in ("symbolic", "mixtrain-k5"):      # the same epochs without windows and crops: their before
        with switched_off(*BEFORE):
            seconds[f"{name}, dense"] = epoch_seconds(objectives[name], data, device, batch)
        print(f"{name + ', dense':12s} {seconds[name + ', dense']:8.2f} s per epoch (windows and crops off)", flush=True)
    ratios = {"symbolic / mixtrain-k5": seconds["symbolic"] / seconds["mixtrain-k5"],
              "symbolic / mixtrain-k1": seconds["symbolic"] / seconds["mixtrain-k1"],
              "pgd-at / mixtrain-k5": seconds["pgd-at"] / seconds["mixtrain-k5"],
              "mixtrain-k5 / ibp": seconds["mixtrain-k5"] / seconds["ibp"],
              "symbolic / pgd-at": seconds["symbolic"] / seconds["pgd-at"],
              "symbolic epoch: dense / windows and crops": seconds["symbolic, dense"] / seconds["symbolic"],
              "mixtrain-k5 epoch: dense / windows and crops": seconds["mixtrain-k5, dense"] / seconds["mixtrain-k5"]}
    for k, v in ratios.items():
        print(f"{k:24s} {v:6.2f}×")
    print(f"goal: symbolic / mixtrain-k5 ≥ 7 (ideal 10): {'met' if ratios['symbolic / mixtrain-k5'] >= 7 else 'NOT met'}")
    floors = [symbolic_vs_forward(name, device, 2 if args.quick else 8)
              for name in ("mnist_small", "mnist_large", "cifar_small")]
    for f in floors:
        print(f"{f['network']:12s} d = {f['d']:5d}: {f['samples_per_s']:7.2f} symbolic fwd+bwd samples/s; bounds "
              f"{f['bounds_ratio_to_floor']:.2f}× one forward pass of d + 1 images (goal ≤ 1.5); forward + backward "
              f"{f['fwd_bwd_ratio_to_floor']:.2f}× one forward + backward of d + 1 images; {f['fwd_bwd_gain']:.2f}× "
              f"faster than with windows and crops off")
        ratios[f"{f['network']} symbolic bounds / forward(d+1)"] = f["bounds_ratio_to_floor"]
        ratios[f"{f['network']} symbolic fwd+bwd / fwd+bwd(d+1)"] = f["fwd_bwd_ratio_to_floor"]
        ratios[f"{f['network']} symbolic fwd+bwd: dense / windows and crops"] = f["fwd_bwd_gain"]
    path = write_result("certified", device, {"n": len(data), "data": data.name, "batch": batch, "eps": eps,
                                              "network": "mnist_small", "quick": args.quick},
                        {"epoch_s": seconds, "symbolic_floor": floors}, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
