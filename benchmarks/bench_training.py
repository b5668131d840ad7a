"""Adversarial-training throughput: robustlib's training step against the textbook one, in the same process.

    python benchmarks/bench_training.py                    # CPU: MNIST_Small on Fashion-MNIST (digits if absent)
    python benchmarks/bench_training.py --device cuda      # GPU: PreAct-ResNet-18 on 32×32×3 generated data, batch 512
    python benchmarks/bench_training.py --fast-at          # also 15 epochs of FGSM-RS on a CIFAR-10-sized set (GPU)

Both sides train the same network from the same initial weights with PGD-AT (ε = 0.1 on [0, 1] pixels,
α = ε/4, K = 10, SGD) for one epoch over the same images:

* **textbook**: ``torch.utils.data.DataLoader`` over a float ``TensorDataset`` on the host, torchattacks' ``PGD``
  for the attack, fp32 eager, ``.to(device)`` per batch;
* **robustlib**: ``train.fit`` with ``objectives.PGDAT`` (uint8 data resident on the device, on-device batching,
  bf16 autocast and channels-last on CUDA, no host syncs in the step).

It prints training images per second for both and their ratio, and writes
``benchmarks/results/training-<cpu|cuda>.json``. The first pass of each side is a warm-up on a few batches.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sync, write_result  # noqa: E402

import robustlib as rl  # noqa: E402

EPS, STEPS = 0.1, 10


def data_for(device, n: int, gpu_like: bool):
    if gpu_like:   # CIFAR-sized generated images: throughput does not depend on their content
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        return rl.data.ImageData(images, labels, "generated-32x32x3", tuple(str(i) for i in range(10))).to(device)
    try:
        train, _ = rl.data.load("fashion-mnist", device=device, n_train=n, download=False)
    except rl.data.DataUnavailable:
        train, _ = rl.data.load("digits", device=device)
    return train


def textbook_epoch(model, data, batch: int, device, limit: int | None = None) -> float:
    import torchattacks
    ds = torch.utils.data.TensorDataset(data.x().cpu(), data.labels.cpu())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    atk = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=STEPS, random_start=True)
    sync(device)
    t0 = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device), y.to(device)
        x_adv = atk(x, y)
        model.train()
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - t0)


def robustlib_epoch(model, data, batch: int, device, limit: int | None = None) -> float:
    part = data if limit is None else data.head(limit * batch)
    h = rl.train.fit(model, part, rl.objectives.PGDAT(EPS, alpha=EPS / 4, steps=STEPS), epochs=1, batch_size=batch,
                     lr=0.01, schedule="constant", progress=False)
    return h[-1]["seen"] / h.wall_s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=None, help="training images (default 10,000 on CPU, 50,000 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CPU, 512 on CUDA)")
    p.add_argument("--fast-at", action="store_true", help="also time 15 epochs of FGSM-RS (CIFAR-10-sized)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (512 if args.quick else (50_000 if cuda else 10_000))
    batch = args.batch or (512 if cuda else 128)
    data = data_for(device, n, gpu_like=cuda)
    name = "preact_resnet18" if cuda else "mnist_small"

    def fresh():
        torch.manual_seed(0)
        return rl.models.build(name, like=data).to(device)

    textbook_epoch(fresh(), data, batch, device, limit=2)          # warm-ups
    robustlib_epoch(fresh(), data, batch, device, limit=2)
    ips = {"textbook": textbook_epoch(fresh(), data, batch, device),
           "robustlib": robustlib_epoch(fresh(), data, batch, device)}
    ratios = {"robustlib / textbook": ips["robustlib"] / ips["textbook"]}
    for k, v in ips.items():
        print(f"{k:10s} {v:9.1f} training images/s (PGD-{STEPS} AT, {name}, {len(data)} × {tuple(data.shape)}, "
              f"batch {batch})")
    print(f"ratio {ratios['robustlib / textbook']:.2f}× (goal: ≥ 1.5 on CPU, ≥ 3 and ≥ 5,000 images/s on an H100)")
    figures = {"images_per_s": ips}
    if args.fast_at:
        big = data_for(device, 5_000 if args.quick else 50_000, gpu_like=True)
        model = rl.models.build("preact_resnet18", like=big).to(device)
        sync(device)
        t0 = time.perf_counter()
        rl.train.fit(model, big, rl.objectives.FastAT(8 / 255), epochs=1 if args.quick else 15, batch_size=512,
                     lr=0.2, schedule="onecycle", augment="crop-flip", progress=False)
        sync(device)
        figures["fast_at_total_s"] = time.perf_counter() - t0
        print(f"Fast-AT (FGSM-RS), {'1' if args.quick else '15'} epochs of {len(big)} 32×32×3 images: "
              f"{figures['fast_at_total_s']:.0f} s (published reference: ≈ 12 min on an RTX 2080 Ti)")
    path = write_result("training", device, {"n": len(data), "data": data.name, "network": name, "batch": batch,
                                             "eps": EPS, "steps": STEPS, "quick": args.quick}, figures, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
