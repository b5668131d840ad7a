"""Adversarial-training throughput: robustlib's training step against the textbook one, in the same process.

    python benchmarks/bench_training.py                    # CPU: MNIST_Small on Fashion-MNIST (digits if absent)
    python benchmarks/bench_training.py --device cuda      # GPU: PreAct-ResNet-18 on 32×32×3 generated data, batch 512
    python benchmarks/bench_training.py --fast-at          # also 15 epochs of FGSM-RS on a CIFAR-10-sized set (GPU)
    python benchmarks/bench_training.py --device cuda --network mnist_small   # a launch-bound small network

Both sides train the same network from the same initial weights with PGD-AT (ε = 0.1 on [0, 1] pixels,
α = ε/4, K = 10, SGD) for one epoch over the same images:

* **textbook**: ``torch.utils.data.DataLoader`` over a float ``TensorDataset`` on the host, torchattacks' ``PGD``
  for the attack, fp32 eager, ``.to(device)`` per batch;
* **robustlib**: ``train.fit`` with ``objectives.PGDAT`` (uint8 data resident on the device, on-device batching,
  no host syncs in the step, parameters frozen while the attack differentiates), once per *variant* of ``fit``'s
  speed options: ``fp32`` (eager, contiguous, PyTorch's own convolution kernels), ``tuned`` (every convolution
  direction by its measured-fastest kernel, :mod:`robustlib.conv_kernels`), ``channels-last``, ``bf16``
  (autocast), ``compile`` (``torch.compile`` of the network), ``cudagraphs`` (``torch.compile`` in its
  "reduce-overhead" mode: CUDA graphs on a GPU) and their combinations, and ``default`` (what ``fit``
  picks by itself on this device, :mod:`robustlib.precision`: bf16 + channels-last on CUDA and on a CPU with
  AMX, else fp32 with tuned convolutions). Every variant is a before/after pair
  with ``fp32`` measured in the same run: that is how each gain of the library is recorded. ``fp32 unfrozen
  attack`` is fp32 with the attack's parameter freezing switched off (monkeypatched in this script): the
  before/after of that change; ``bf16+channels-last, mixed-layout flatten`` is ``bf16+channels-last`` with the
  channels-last gradients through ``nn.Flatten`` switched off (:func:`robustlib.precision.channels_last_gradients`),
  the before of that one; ``bf16+channels-last, projected steps`` the same with the attack's L∞ steps projected
  by seven elementwise operations instead of one clamp into a precomputed box (``attacks.gradient.BOX_CLAMP`` off).

With ``--accuracy-epochs`` (default 8 on a CPU), fp32 and ``default`` then train PGD-AT for that many epochs, two
seeds each, and are evaluated clean and under PGD-20 on 2,000 test images: whether the default's precision costs
accuracy (``accuracy``, ``accuracy_gap_points`` in the JSON).

After a warm-up of every configuration on two batches (which also pays ``torch.compile``'s compilation and the
convolution kernels' timing, once per process, reported as ``warmup_s``), ``--repeat`` interleaved rounds time one epoch of every configuration each, in an order rotated
from round to round; the best and the median per configuration are kept. Throughput on the shared 2-core machine
drifts by up to ±25% over minutes, so configurations timed one after the other in blocks would compare machine
states, not code; interleaving exposes them all to the same drift. Training FLOPs per image (convolutions and matrix
products, forward and backward, counted by ``torch.utils.flop_counter`` on one robustlib step) turn images/s into
achieved FLOP/s for the Performance page. Writes ``benchmarks/results/training-<cpu|cuda>.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sync, write_result  # noqa: E402

import robustlib as rl  # noqa: E402

EPS, STEPS = 0.1, 10
VARIANTS = {   # fit's speed options per variant (the compiled ones last: they leave compile workers behind)
    "fp32": dict(amp=False, channels_last=False, compile=False, tune_convs=False),
    "default": {},
    # the "before" of freezing the parameters during attack steps: fp32 with input_gradients_only switched off
    "fp32 unfrozen attack": dict(amp=False, channels_last=False, compile=False, tune_convs=False),
    "tuned": dict(amp=False, channels_last=False, compile=False, tune_convs=True),
    "channels-last": dict(amp=False, channels_last=True, compile=False, tune_convs=False),
    "bf16": dict(amp=True, channels_last=False, compile=False, tune_convs=False),
    "bf16+tuned": dict(amp=True, channels_last=False, compile=False, tune_convs=True),
    "bf16+channels-last": dict(amp=True, channels_last=True, compile=False, tune_convs=False),
    # the "before" of channels-last gradients through Flatten: bf16+channels-last with precision's hooks switched off
    "bf16+channels-last, mixed-layout flatten": dict(amp=True, channels_last=True, compile=False, tune_convs=False),
    # the "before" of L∞ attack steps clamped into a precomputed box: bf16+channels-last with attacks.BOX_CLAMP off
    "bf16+channels-last, projected steps": dict(amp=True, channels_last=True, compile=False, tune_convs=False),
    "compile": dict(amp=False, channels_last=False, compile=True, tune_convs=False),
    "compile+bf16": dict(amp=True, channels_last=False, compile=True, tune_convs=False),
    "compile+bf16+channels-last": dict(amp=True, channels_last=True, compile=True, tune_convs=False),
    # torch.compile's "reduce-overhead" mode: on a GPU the compiled kernels replay as CUDA graphs (no launch overhead)
    "cudagraphs+bf16+channels-last": dict(amp=True, channels_last=True, compile="reduce-overhead", tune_convs=False),
}


def data_for(device, n: int, gpu_like: bool):
    """(training set, test set): n generated CIFAR-sized images and no test set, or Fashion-MNIST (digits if
    absent)."""
    if gpu_like:   # CIFAR-sized generated images: throughput does not depend on their content
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        return rl.data.ImageData(images, labels, "generated-32x32x3",
                                 tuple(str(i) for i in range(10))).to(device), None
    try:
        return rl.data.load("fashion-mnist", device=device, n_train=n, download=False)
    except rl.data.DataUnavailable:
        return rl.data.load("digits", device=device)


def accuracy_check(name: str, data, test, device, batch: int, epochs: int, seeds=(0, 1)) -> dict:
    """Whether fit's default precision trains as well as fp32: PGD-AT from the same initial weights for ``epochs``
    epochs per seed in fp32 and with the defaults, then clean and PGD-20 accuracy (fp32 evaluation) on 2,000 test
    images. Returns {config: [{"seed", "clean", "pgd20", "train_s", "precision"}, ...]}."""
    out: dict = {"fp32": [], "default": []}
    test_n = min(len(test), 2000)
    for seed in seeds:
        for config in out:
            torch.manual_seed(seed)
            model = rl.models.build(name, like=data).to(device)
            h = rl.train.fit(model, data, rl.objectives.PGDAT(EPS, alpha=EPS / 4, steps=STEPS), epochs=epochs,
                             batch_size=batch, lr=0.05, schedule="multistep", seed=seed, progress=False,
                             **VARIANTS[config])
            r = rl.evaluate.robustness(model, test, EPS, attacks=("pgd-20",), n=test_n, progress=False)
            out[config].append({"seed": seed, "clean": r["clean_acc"], "pgd20": r["pgd-20_acc"],
                                "train_s": h.wall_s, "precision": h.precision})
            print(f"accuracy check, seed {seed}, {config} ({h.precision}): clean {r['clean_acc']:.4f}, PGD-20 "
                  f"{r['pgd-20_acc']:.4f} on {test_n} test images after {epochs} epochs ({h.wall_s:.1f} s)",
                  flush=True)
    return out


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


def robustlib_epoch(model, data, batch: int, device, limit: int | None = None, **options) -> float:
    part = data if limit is None else data.head(limit * batch)
    h = rl.train.fit(model, part, rl.objectives.PGDAT(EPS, alpha=EPS / 4, steps=STEPS), epochs=1, batch_size=batch,
                     lr=0.01, schedule="constant", progress=False, **options)
    return h[-1]["seen"] / h.wall_s


@contextmanager
def _replaced(owner, attr: str, value, active: bool):
    """``owner.attr`` set to ``value`` inside the block when ``active``, restored on leaving."""
    original = getattr(owner, attr)
    if active:
        setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, original)


@contextmanager
def switched(variant: str):
    """The library change a *before* variant switches off, for the block (none for the other variants):
    ``fp32 unfrozen attack`` attacks without freezing the parameters (``attacks.gradient.input_gradients_only``), ``…,
    mixed-layout flatten`` trains without channels-last gradients through Flatten
    (``precision.channels_last_gradients``), ``…, projected steps`` projects L∞ steps as before the box clamp
    (``attacks.gradient.BOX_CLAMP``)."""
    with _replaced(rl.attacks.gradient, "input_gradients_only", lambda model: nullcontext(model),
                   variant == "fp32 unfrozen attack"), \
            _replaced(rl.precision, "channels_last_gradients", lambda model: nullcontext(model),
                      variant.endswith("mixed-layout flatten")), \
            _replaced(rl.attacks.gradient, "BOX_CLAMP", False, variant.endswith("projected steps")):
        yield


def network_of(args) -> tuple:
    """(device, on CUDA?, the network, the device's default network) from a script's --device and --network:
    PreAct-ResNet-18 on 32×32×3 generated images on CUDA, MNIST_Small on Fashion-MNIST on a CPU."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    default_name = "preact_resnet18" if cuda else "mnist_small"
    return device, cuda, args.network or default_name, default_name


def flops_per_image(model, data, batch: int) -> float:
    """Convolution and matrix-product FLOPs of one robustlib PGD-AT step per image, counted by torch's
    FlopCounterMode on one batch: K attack steps (forward + input-gradient backward, parameters frozen as in
    the attack) plus the training forward and backward. (The counter's module hooks do not support
    ``torch.autograd.grad``, so each part is counted with ``.backward()`` on a leaf input.)"""
    from torch.utils.flop_counter import FlopCounterMode
    x, y = data.x()[:batch], data.labels[:batch]

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    def attack_step():
        xa = x.clone().requires_grad_(True)
        with rl.checks.input_gradients_only(model):
            F.cross_entropy(model(xa), y).backward()

    def train_step():
        F.cross_entropy(model(x), y).backward()

    total = STEPS * count(attack_step) + count(train_step)
    model.zero_grad(set_to_none=True)
    return total / len(y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=None, help="training images (default 10,000 on CPU, 50,000 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CPU, 512 on CUDA)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="robustlib configurations to time (fp32 is always timed: every gain is relative to it)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds, one timed epoch of every "
                   "configuration each (the best and the median are kept)")
    p.add_argument("--fast-at", action="store_true", help="also time 15 epochs of FGSM-RS (CIFAR-10-sized)")
    p.add_argument("--accuracy-epochs", type=int, default=None,
                   help="epochs of the accuracy check of fit's default precision against fp32, two seeds each, on the "
                        "benchmark's images (default 8 on CPU, 0 — skipped — with --quick or generated data)")
    p.add_argument("--network", choices=("preact_resnet18", "mnist_small"), default=None,
                   help="the network (default: preact_resnet18 on 32×32×3 generated images on CUDA, mnist_small on "
                        "Fashion-MNIST on a CPU); another than the device's default writes "
                        "training-<network>-<device>.json, beside the default's file, e.g. mnist_small on CUDA, where "
                        "kernel launches bound a small network and CUDA graphs (the cudagraphs variants) may pay")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = p.parse_args(argv)
    device, cuda, name, default_name = network_of(args)
    n = args.n or (512 if args.quick else (50_000 if cuda else 10_000))
    batch = args.batch or (512 if cuda else 128)
    repeat = 1 if args.quick else args.repeat
    data, test = data_for(device, n, gpu_like=name == "preact_resnet18")

    def fresh():
        torch.manual_seed(0)
        return rl.models.build(name, like=data).to(device)

    # One model per configuration, reset to the same initial weights before every timed epoch: a compiled
    # network then keeps its compiled graphs from round to round (a new module would recompile).
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    configs = ["textbook", "fp32"] + [v for v in args.variants if v != "fp32"]
    nets = {c: fresh() for c in configs}
    init = {k: v.clone() for k, v in nets["fp32"].state_dict().items()}

    def epoch(config: str, limit=None) -> float:
        model = nets[config]
        model.load_state_dict(init)
        if config == "textbook":
            return textbook_epoch(model, data, batch, device, limit)
        with switched(config):
            return robustlib_epoch(model, data, batch, device, limit, **VARIANTS[config])

    warmup, samples = {}, {}
    for config in list(configs):   # warm-ups (compilation included), then interleaved timed rounds
        t0 = time.perf_counter()
        try:
            epoch(config, limit=2)
        except Exception as e:   # e.g. a compiler missing on this machine: say so, keep the other figures
            print(f"{config}: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)
            configs.remove(config)
            continue
        warmup[config], samples[config] = time.perf_counter() - t0, []
    for r in range(repeat):   # round r visits the configurations rotated by r: drift hits every one alike
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            try:
                samples[config].append(epoch(config))
            except Exception as e:   # a failure past the warm-up loses that configuration only
                print(f"{config}: failed in round {r + 1} ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                      flush=True)
                configs.remove(config)
                del samples[config], warmup[config]
        print(f"round {r + 1}/{repeat}: " + ", ".join(f"{c} {samples[c][-1]:.0f}" for c in configs), flush=True)
    ips = {c: max(v) for c, v in samples.items()}
    default_bf16 = rl.precision.auto_bf16(device)
    median = {c: statistics.median(v) for c, v in samples.items()}
    for c in configs:
        print(f"{c:28s} best {ips[c]:9.1f}, median {median[c]:9.1f} images/s over {repeat} rounds "
              f"(warm-up {warmup[c]:.1f} s)", flush=True)
    flops = flops_per_image(fresh(), data, min(batch, 64))
    ratios = {f"robustlib[{v}] / textbook": ips[v] / ips["textbook"] for v in ips if v != "textbook"}
    ratios.update({f"robustlib[{v}] / robustlib[fp32]": ips[v] / ips["fp32"] for v in ips
                   if v not in ("textbook", "fp32")})
    # paired: the ratio within each round (same machine state), median over rounds — robust to the drift
    ratios.update({f"paired median robustlib[{v}] / {base}": statistics.median(
        a / b for a, b in zip(samples[v], samples[base])) for base in ("textbook", "fp32") for v in ips
        if v not in ("textbook", base)})
    print(f"{'textbook':28s} {ips['textbook']:9.1f} images/s  (torchattacks PGD + DataLoader, fp32 eager)")
    for k, v in ratios.items():
        print(f"{k:48s} {v:6.2f}×")
    best = max((v for v in ips if v != "textbook"), key=ips.get)
    print(f"PGD-{STEPS} AT, {name}, {len(data)} × {tuple(data.shape)}, batch {batch}: fit's default is "
          f"{ratios.get('robustlib[default] / textbook', float('nan')):.2f}× the textbook, the best variant "
          f"({best}) {ips[best] / ips['textbook']:.2f}× (goal: ≥ 1.5 on CPU, ≥ 3 and ≥ 5,000 images/s on an H100); "
          f"{flops / 1e6:.1f} MFLOP per training image")
    figures = {"images_per_s": ips, "images_per_s_median": median, "images_per_s_rounds": samples,
               "warmup_s": warmup, "flops_per_image": flops,
               "throughput": [{"what": f"PGD-{STEPS} AT {name} [{v}]", "flop_per_s": ips[v] * flops,
                               "dtype": "bf16" if VARIANTS.get(v, {}).get("amp") or (v == "default" and default_bf16)
                               else "fp32",
                               # fp32 convolutions on CUDA run on TF32 tensor cores unless this is off
                               "tf32": cuda and torch.backends.cudnn.allow_tf32} for v in ips if v != "textbook"]}
    acc_epochs = args.accuracy_epochs if args.accuracy_epochs is not None else (0 if args.quick or cuda else 8)
    if acc_epochs > 0 and test is not None:
        figures["accuracy"] = accuracy_check(name, data, test, device, batch, acc_epochs)
        figures["accuracy_epochs"] = acc_epochs
        figures["accuracy_gap_points"] = {   # default − fp32, mean over seeds, in percentage points
            key: 100 * statistics.mean(d[key] - f[key] for d, f in zip(figures["accuracy"]["default"],
                                                                      figures["accuracy"]["fp32"]))
            for key in ("clean", "pgd20")}
        print(f"fit's default ({rl.precision.describe(device)}) against fp32, mean over seeds: clean "
              f"{figures['accuracy_gap_points']['clean']:+.2f} points, PGD-20 "
              f"{figures['accuracy_gap_points']['pgd20']:+.2f} points", flush=True)
    if args.fast_at:
        try:   # a failure here must not cost the throughput figures above
            big, _ = data_for(device, 5_000 if args.quick else 50_000, gpu_like=True)
            model = rl.models.build("preact_resnet18", like=big).to(device)
            sync(device)
            t0 = time.perf_counter()
            rl.train.fit(model, big, rl.objectives.FastAT(8 / 255), epochs=1 if args.quick else 15, batch_size=512,
                         lr=0.2, schedule="onecycle", augment="crop-flip", progress=False)
            sync(device)
            figures["fast_at_total_s"] = time.perf_counter() - t0
            print(f"Fast-AT (FGSM-RS), {'1' if args.quick else '15'} epochs of {len(big)} 32×32×3 images: "
                  f"{figures['fast_at_total_s']:.0f} s (published reference: ≈ 12 min on an RTX 2080 Ti)")
        except Exception as e:
            print(f"Fast-AT: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)
    result = "training" if name == default_name else f"training-{name}"
    path = write_result(result, device, {"n": len(data), "data": data.name, "network": name, "batch": batch,
                                             "eps": EPS, "steps": STEPS, "repeat": repeat, "quick": args.quick,
                                             "variants": {v: VARIANTS[v] for v in ips if v != "textbook"}},
                        figures, ratios)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
