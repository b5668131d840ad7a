"""Speed of pruned adversarial training, as ratios to baselines measured in the same run.

    python benchmarks/bench_pruning.py                      # CPU, Fashion-MNIST (60,000 images), 5 epochs
    python benchmarks/bench_pruning.py --device cuda --model preact_resnet18
    python benchmarks/bench_pruning.py --quick              # tiny sizes: checks that the script runs

On Fashion-MNIST with MNIST_Small, ε = 0.1, K = 10 (α = 2.5·ε/K), batch 128:

(a) **Selection cost.** One Adv-GRAD-MATCH (per-batch OMP, each group a mini-batch of B examples: GRAD-MATCH's
    own per-batch form; ``--group-size`` changes it) and one Adv-GLISTER re-selection of k = f·n examples
    on all n training images, each as a ratio to one full-data PGD-AT epoch on the same data (goal ≤ 10%), with the
    selection attack at K_s = K (the training attack), at K_s = ``--select-steps`` (the chapter's default below
    the paper preset) and at K_s = 1; ``grads`` is the part spent attacking and taking last-layer gradients, the
    rest is the solver. Beside each: the pass-count estimate (2·K_s + 1)/(2·K + 3) (:func:`selection_estimate`:
    the 10% goal needs K_s = 0 by this count) and the share per epoch when the selection is paid once every R = 20
    epochs, the paper's default (derived, not measured). Then the same selections from a perturbation memory
    (``K_s = memory``: gradients at the x' the last training epoch found, one forward pass per example, the fastest
    of three timings: cheap enough to repeat, and the epoch it is compared with is the fastest of E − 1; for
    Adv-GRAD-MATCH also with groups of 32 examples instead of whole training mini-batches of B, which leaves OMP B/32
    times more rows and picks; the memory's writes are part of the baseline's epochs: 60 µs per batch of 128 on the CPU, 0.1% of its time), and
    how far each selection's summed gradient (GRAD-MATCH's target) points from that of a fresh PGD-K attack:
    ``miss`` = 1 − cos (a second fresh PGD-K attack, with other random starts, gives the noise floor). With
    ``--select-batch-sizes``, the fresh K_s-step Adv-GRAD-MATCH selection again with the selector's attack and
    gradients in batches of those sizes, against the default batches timed again the same way (1024 on CUDA, 256
    elsewhere: ``robustlib.scores.selection_batch_size``): in batches of 256 an H200 spent 2.9× a fresh selection's
    pass-count estimate (the CPU 1.05×), waiting on kernel launches (``run_all.sh cuda`` asks for 256).
(b) **End-to-end speed-up.** PGD-AT for E epochs on full data vs Adv-GRAD-MATCH pruned PGD-AT at f = 0.3 with the
    same epochs (warm-up T_w = round(f·κ·E), re-selection every R epochs, selection included), against the ideal
    E / (T_w + (E − T_w)·f) (goal ≥ 0.9× ideal); selecting with the K_s-step attack, and from a perturbation memory
    (with the memory's ``miss`` at the end of that run, where most perturbations are R epochs old).
(c) **Bullet-Train** on full-data PGD-AT: attack steps saved (share of K·n per epoch) and the wall-clock gain; and
    pruning + Bullet-Train together, the combination of the paper's 5.66×/5.12× claims.

Every time is wall-clock between device synchronisations; training times are ``fit``'s per-epoch records
(evaluation excluded). The training runs of (b) and (c), the full-data baseline among them, go one epoch each in
turn, every run resumed from its checkpoint (:func:`interleaved`), so that a drift of the machine's speed (a
full-data CPU epoch took 25 s in one run and 37 s in the next) falls on all of them alike. Run it on a quiet machine: two PyTorch processes sharing two cores distort every figure.
Writes ``benchmarks/results/pruning-<cpu|cuda>.json``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustlib as rl  # noqa: E402
from robustlib import conv_kernels  # noqa: E402
from robustlib import pruning_study as study  # noqa: E402
from robustlib.greedy import OuterRows  # noqa: E402
from robustlib.memory import PerturbationMemory  # noqa: E402
from robustlib.pruning import DynamicSelector, last_layer_grads, warmup_epochs  # noqa: E402
from robustlib.scores import selection_batch_size  # noqa: E402

from common import device_name, timed, write_result  # noqa: E402


class _Pause(Exception):
    """Raised after an epoch's checkpoint is written: the run goes on from it at its next turn."""


def _pause(record):
    raise _Pause


def interleaved(runs: dict, data, epochs: int, args, seed: int = 0) -> tuple[dict, dict]:
    """Train every run ``{name: (objective, selector)}`` for ``epochs`` epochs, one epoch of each in turn, every run
    resumed from its own checkpoint (same weights as uninterrupted on CPU), so that all of them share the slow and
    the fast phases of a machine whose speed drifts: on the 2-core CPU here a full-data epoch took 25 s in one run
    and 37 s in the next. Returns ``({name: model}, {name: History})``."""
    import tempfile
    models = {}
    for name in runs:
        torch.manual_seed(seed)
        models[name] = rl.models.build(args.model, like=data)
    histories = {}
    with tempfile.TemporaryDirectory(prefix="bench_pruning_") as folder:
        for epoch in range(epochs):
            for name, (objective, selector) in runs.items():
                try:
                    histories[name] = rl.train.fit(
                        models[name], data, objective, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                        schedule="onecycle", selector=selector, seed=seed, progress=False,
                        checkpoint=Path(folder) / f"{name}.pt", callback=None if epoch == epochs - 1 else _pause)
                except _Pause:
                    pass
    return models, histories


def selection_cost(model, train, valid, method, fraction, select_steps, args, memory=None, repeat=1, group_size=None,
                   batch_size=None):
    """Seconds of one re-selection and of its attack + last-layer gradients alone (each the fastest of ``repeat``
    timings, the way the epoch it is compared with is the fastest epoch), and those gradients. On a CPU the
    convolutions use the tuned kernels, as ``fit`` runs a selector (:mod:`robustlib.conv_kernels`; a shape met
    for the first time in this process pays its one-time kernel timing inside the first timing, as in ``fit``)."""
    tuned = train.device.type == "cpu" and conv_kernels.tune(model) > 0
    try:
        with conv_kernels.active(tuned):
            return _selection_cost(model, train, valid, method, fraction, select_steps, args, memory, repeat,
                                   group_size, batch_size)
    finally:
        conv_kernels.untune(model)


def _selection_cost(model, train, valid, method, fraction, select_steps, args, memory, repeat, group_size,
                    batch_size=None):
    attack = dict(eps=args.eps, steps=select_steps)
    kw = (dict(variant="per_batch", group_size=group_size or args.group_size) if method == "gradmatch"
          else dict(valid=valid))
    if batch_size is not None:   # the selector's own batches (attack and gradients); its default otherwise
        kw["batch_size"] = batch_size
    sel = DynamicSelector(method, fraction, R=1, adversarial=attack, seed=0, memory=memory, **kw)
    total = min(timed(lambda: sel(0, model, train), train.device) for _ in range(repeat))
    out, grads = {}, math.inf
    for _ in range(repeat):
        g = timed(lambda: out.update(G=last_layer_grads(model, train, adversarial=attack, memory=memory,
                                                        factored=True, batch_size=sel.batch_size)), train.device)
        if method == "glister":   # the validation split as the selector takes it: afresh, or moved on from memory
            vm = sel.valid_memory
            g += timed(lambda: last_layer_grads(model, valid, adversarial=attack, memory=vm,
                                                refresh=0 if vm is None else sel.VALID_REFRESH), train.device)
        grads = min(grads, g)
    return total, grads, out["G"]


def miss(G, G_ref) -> float:
    """1 − cos between the summed gradients Σ_i g_i of two selections (GRAD-MATCH's target); each G a tensor or
    the OuterRows that ``last_layer_grads(..., factored=True)`` returns."""
    total = lambda g: g.rows_sum() if isinstance(g, OuterRows) else g.sum(0)  # noqa: E731
    return 1.0 - float(torch.nn.functional.cosine_similarity(total(G), total(G_ref), dim=0))


def selection_estimate(ks: int, K: int) -> float:
    """Selection over a PGD-K AT epoch counted in forward-pass equivalents, with an input-only backward costing
    one forward and a full backward two: K_s attack steps (2 each) and one forward for the gradients, over K
    attack steps and one training step (3): (2·K_s + 1) / (2·K + 3). Below 0.1 for K = 10 only at K_s = 0."""
    return (2 * ks + 1) / (2 * K + 3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="mnist_small")
    p.add_argument("--n", type=int, default=None, help="training images (default: all)")
    p.add_argument("--epochs", type=int, default=5, help="E for the end-to-end runs")
    p.add_argument("--fraction", type=float, default=0.3, help="f, the kept fraction")
    p.add_argument("--R", type=int, default=3, help="re-select every R epochs")
    p.add_argument("--kappa", type=float, default=0.5)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10, help="K, the training attack's steps")
    p.add_argument("--select-steps", type=int, default=3, help="K_s, the cheaper selection attack")
    p.add_argument("--n-valid", type=int, default=1000, help="Adv-GLISTER's held-out validation images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--select-batch-sizes", type=int, nargs="*", default=[],
                   help="also time the fresh K_s-step Adv-GRAD-MATCH selection with the selector's attack and "
                        "gradients in batches of these sizes, against its default (selection_batch_size: 1024 on "
                        "CUDA, 256 elsewhere), in the same run")
    p.add_argument("--group-size", type=int, default=None,
                   help="examples per Adv-GRAD-MATCH per_batch group (default: the batch size)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (1,000 images, 2 epochs, K = 3): a smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.epochs, a.steps, a.select_steps, a.n_valid, a.R = a.n or 1000, 2, 3, 1, 100, 1
    a.group_size = a.group_size or a.batch_size
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    t_start = time.perf_counter()

    full_train, _ = rl.data.load(a.dataset, device=device, n_train=a.n, n_test=1)
    train_set, valid = study.holdout(full_train, a.n_valid, seed=0)
    n, E, f, K = len(train_set), a.epochs, a.fraction, a.steps
    alpha = 2.5 * a.eps / K
    pgd = lambda: rl.objectives.PGDAT(eps=a.eps, alpha=alpha, steps=K)  # noqa: E731
    settings = dict(dataset=a.dataset, model=a.model, n=n, n_valid=len(valid), epochs=E, fraction=f, R=a.R,
                    kappa=a.kappa, eps=a.eps, alpha=alpha, steps=K, select_steps=a.select_steps,
                    batch_size=a.batch_size, group_size=a.group_size, lr=a.lr, threads=torch.get_num_threads(),
                    interleaved=True, quick=a.quick)
    print(f"# pruning benchmark on {device_name(device)}: {a.dataset} n = {n}, {a.model}, ε = {a.eps}, K = {K}, "
          f"E = {E}, f = {f}, R = {a.R}, {torch.get_num_threads()} threads")

    # (b), (c): every training run, interleaved epoch by epoch. The full-data run's model (E epochs of AT) is the one
    # that the selections of (a) score, its memory (the perturbations of its last epoch) the one they read
    t_w = warmup_epochs(f, E, a.kappa)

    def gradmatch(memory=None):
        return DynamicSelector("gradmatch", f, R=a.R, warmup=t_w, adversarial=dict(eps=a.eps, steps=a.select_steps),
                               variant="per_batch", group_size=a.group_size, memory=memory)

    baseline, remembering = pgd(), pgd()
    memory = PerturbationMemory.attach(baseline, train_set)
    sel, sel_mem, sel_bt = gradmatch(), gradmatch(PerturbationMemory.attach(remembering, train_set)), gradmatch()
    runs = {"full": (baseline, None), "pruned": (pgd(), sel), "pruned_memory": (remembering, sel_mem),
            "bt": (rl.objectives.BulletTrain(pgd()), None), "pruned_bt": (rl.objectives.BulletTrain(pgd()), sel_bt)}
    if rl.objectives.BulletTrain(pgd()).bucket_for(device) > 1:   # the before/after of the shape buckets (CUDA)
        runs["bt_unpadded"] = (rl.objectives.BulletTrain(pgd(), bucket=1), None)
    models, hist = interleaved(runs, train_set, E, a)
    model, full = models["full"], hist["full"]
    epoch_s = min(r["wall_s"] for r in full[1:]) if len(full) > 1 else full[0]["wall_s"]
    figures = dict(full_epoch_s=epoch_s, full_train_s=full.wall_s)

    # (a) one re-selection on all n images vs one full-data PGD-AT epoch, at K_s = K, the chapter's K_s and 1
    selection_steps = sorted({K, a.select_steps, 1}, reverse=True)
    fresh = {}
    for method in ("gradmatch", "glister"):
        for ks in selection_steps:
            total, grads, fresh[ks] = selection_cost(model, train_set, valid, method, f, ks, a)
            figures[f"{method}_Ks{ks}_s"], figures[f"{method}_Ks{ks}_grads_s"] = total, grads
        total, grads, G_mem = selection_cost(model, train_set, valid, method, f, a.select_steps, a, memory, repeat=3)
        figures[f"{method}_memory_s"], figures[f"{method}_memory_grads_s"] = total, grads
    # the per-batch variant with groups of 32 examples instead of whole mini-batches: B/32 times more picks
    total, grads, _ = selection_cost(model, train_set, valid, "gradmatch", f, a.select_steps, a, memory, repeat=3,
                                     group_size=32)
    figures["gradmatch_memory_groups32_s"], figures["gradmatch_memory_groups32_grads_s"] = total, grads
    # the selector's batch size (a GPU waits on kernel launches at small ones): each size, and the default again,
    # the fastest of two timings (new shapes tune their kernels once)
    for bs in ([None] + a.select_batch_sizes) if a.select_batch_sizes else []:
        total, grads, _ = selection_cost(model, train_set, valid, "gradmatch", f, a.select_steps, a, batch_size=bs,
                                         repeat=2)
        figures[f"gradmatch_Ks{a.select_steps}_batch{bs or 'default'}_s"] = total
        figures[f"gradmatch_Ks{a.select_steps}_batch{bs or 'default'}_grads_s"] = grads
    figures["miss"] = {**{f"Ks{ks}": miss(G, fresh[K]) for ks, G in fresh.items() if ks != K},
                       "memory": miss(G_mem, fresh[K]),
                       "clean": miss(last_layer_grads(model, train_set), fresh[K]),
                       f"Ks{K}_again": miss(last_layer_grads(model, train_set, adversarial=dict(eps=a.eps, steps=K)),
                                            fresh[K])}
    del fresh, G_mem

    # (b) pruned PGD-AT with Adv-GRAD-MATCH at f, the same epochs: with a fresh K_s-step attack, from the memory
    pruned, pruned_mem, bt, pruned_bt = hist["pruned"], hist["pruned_memory"], hist["bt"], hist["pruned_bt"]
    unpadded = hist.get("bt_unpadded")
    ideal = study.ideal_speedup(E, t_w, f)
    figures.update(pruned_train_s=pruned.wall_s, pruned_select_s=sum(r["select_s"] for r in pruned),
                   warmup_epochs=t_w, selections=sel.selections, ideal_speedup=ideal)
    figures.update(pruned_memory_train_s=pruned_mem.wall_s,
                   pruned_memory_select_s=sum(r["select_s"] for r in pruned_mem))
    figures["miss"]["memory_after_pruned_run"] = miss(
        last_layer_grads(models["pruned_memory"], train_set, memory=sel_mem.memory, factored=True),
        last_layer_grads(models["pruned_memory"], train_set, adversarial=dict(eps=a.eps, steps=K), factored=True))
    del models

    # (c) Bullet-Train on full data, and with the same pruning
    saved = sum(r["bt_steps_saved"] for r in bt) / (K * sum(r["seen"] for r in bt))
    figures.update(bt_train_s=bt.wall_s, bt_steps_saved_share=saved,
                   bt_groups={g: sum(r[f"bt_{g}"] * r["seen"] for r in bt) / sum(r["seen"] for r in bt)
                              for g in ("outlier", "robust", "boundary")},
                   pruned_bt_train_s=pruned_bt.wall_s)
    if unpadded is not None:
        figures["bt_unpadded_train_s"] = unpadded.wall_s

    ratios = {}
    for method in ("gradmatch", "glister"):
        for ks in selection_steps:
            ratios[f"{method}_Ks{ks}_selection_per_epoch"] = figures[f"{method}_Ks{ks}_s"] / epoch_s
            # derived, not measured: the same selection paid once every R = 20 epochs (the paper's default)
            ratios[f"{method}_Ks{ks}_selection_per_epoch_amortised_R20"] = figures[f"{method}_Ks{ks}_s"] / epoch_s / 20
        ratios[f"{method}_memory_selection_per_epoch"] = figures[f"{method}_memory_s"] / epoch_s
    ratios["gradmatch_memory_groups32_selection_per_epoch"] = figures["gradmatch_memory_groups32_s"] / epoch_s
    for bs in a.select_batch_sizes:
        ks = a.select_steps
        ratios[f"gradmatch_Ks{ks}_batch{bs}_selection_per_epoch"] = figures[f"gradmatch_Ks{ks}_batch{bs}_s"] / epoch_s
        ratios[f"gradmatch_Ks{ks}_batch{bs}_over_default"] = (figures[f"gradmatch_Ks{ks}_batch{bs}_s"]
                                                              / figures[f"gradmatch_Ks{ks}_batchdefault_s"])
    speedup = full.wall_s / pruned.wall_s
    speedup_mem = full.wall_s / pruned_mem.wall_s
    ratios.update(pruned_speedup=speedup, pruned_speedup_over_ideal=speedup / ideal,
                  selection_share_of_pruned_run=figures["pruned_select_s"] / pruned.wall_s,
                  pruned_memory_speedup=speedup_mem, pruned_memory_speedup_over_ideal=speedup_mem / ideal,
                  selection_share_of_pruned_memory_run=figures["pruned_memory_select_s"] / pruned_mem.wall_s,
                  bt_speedup=full.wall_s / bt.wall_s, pruned_bt_speedup=full.wall_s / pruned_bt.wall_s)
    if unpadded is not None:
        ratios["bt_bucket_gain"] = unpadded.wall_s / bt.wall_s

    print(f"{'measurement':58s} {'value':>9s}  goal")
    print(f"{'one full-data PGD-AT epoch (s)':58s} {epoch_s:9.2f}")
    for method, name in (("gradmatch", f"Adv-GRAD-MATCH (groups of {a.group_size})"), ("glister", "Adv-GLISTER")):
        for ks in selection_steps:
            s, g = figures[f"{method}_Ks{ks}_s"], figures[f"{method}_Ks{ks}_grads_s"]
            print(f"{f'(a) {name} selection, K_s = {ks} / epoch':58s} {s / epoch_s:9.3f}  ≤ 0.10   "
                  f"({s:.2f} s: attack + gradients {g:.2f} s, solver {max(s - g, 0):.2f} s; pass-count estimate "
                  f"{selection_estimate(ks, K):.3f}; once every 20 epochs: {s / epoch_s / 20:.3f} per epoch)")
        s, g = figures[f"{method}_memory_s"], figures[f"{method}_memory_grads_s"]
        print(f"{f'(a) {name}, from the memory / epoch':58s} {s / epoch_s:9.3f}  ≤ 0.10   "
              f"({s:.2f} s: forward + gradients {g:.2f} s, solver {max(s - g, 0):.2f} s; pass-count estimate "
              f"{selection_estimate(0, K):.3f})")
    s, g = figures["gradmatch_memory_groups32_s"], figures["gradmatch_memory_groups32_grads_s"]
    print(f"{'(a) ... Adv-GRAD-MATCH, groups of 32, from the memory':58s} {s / epoch_s:9.3f}  ≤ 0.10   "
          f"({s:.2f} s: forward + gradients {g:.2f} s, solver {max(s - g, 0):.2f} s)")
    for bs in a.select_batch_sizes:
        ks = a.select_steps
        print(f"{f'(a) ... Adv-GRAD-MATCH, K_s = {ks}, selector batches of {bs}':58s} "
              f"{ratios[f'gradmatch_Ks{ks}_batch{bs}_selection_per_epoch']:9.3f}  ≤ 0.10   "
              f"({ratios[f'gradmatch_Ks{ks}_batch{bs}_over_default']:.2f}× the time in the default batches of "
              f"{selection_batch_size(a.device)}, both the fastest of two)")
    print(f"{'(a) miss = 1 − cos(Σg, Σg of a fresh PGD-K attack)':58s} "
          + ", ".join(f"{k} {v:.1e}" for k, v in figures["miss"].items()))
    print(f"{f'(b) pruned PGD-AT speed-up, f = {f}, T_w = {t_w}, {sel.selections} selections':58s} {speedup:9.3f}  "
          f"(ideal {ideal:.3f})")
    print(f"{'(b) ... as a share of the ideal':58s} {speedup / ideal:9.3f}  ≥ 0.90")
    print(f"{'(b) ... selection share of the pruned run':58s} {ratios['selection_share_of_pruned_run']:9.3f}")
    print(f"{'(b) pruned PGD-AT speed-up, selecting from the memory':58s} {speedup_mem:9.3f}  (ideal {ideal:.3f})")
    print(f"{'(b) ... as a share of the ideal':58s} {speedup_mem / ideal:9.3f}  ≥ 0.90")
    print(f"{'(b) ... selection share of the pruned run':58s} "
          f"{ratios['selection_share_of_pruned_memory_run']:9.3f}")
    print(f"{'(c) Bullet-Train: attack steps saved (share of K·n)':58s} {saved:9.3f}  "
          f"(groups {', '.join(f'{k} {v:.2f}' for k, v in figures['bt_groups'].items())})")
    print(f"{'(c) Bullet-Train wall-clock speed-up over PGD-AT':58s} {ratios['bt_speedup']:9.3f}")
    print(f"{'(c) pruning + Bullet-Train speed-up over PGD-AT':58s} {ratios['pruned_bt_speedup']:9.3f}")
    if unpadded is not None:
        print(f"{'(c) Bullet-Train, shape buckets / unpadded sub-batches':58s} {ratios['bt_bucket_gain']:9.3f}")
    settings["wall_s"] = time.perf_counter() - t_start
    path = write_result("pruning", device, settings, figures, ratios)
    print(f"# wrote {path} ({settings['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
