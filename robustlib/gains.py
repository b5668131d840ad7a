"""How each gain of the library was obtained: the before/after tables of the Performance page, and the table helpers.

The training benchmark times variants of ``fit``'s speed options against fp32 eager robustlib and, for a change
that has its own *before* variant (:data:`BEFORE_OF`), against that before; the bounds benchmark switches its
changes off one after another; the pruning benchmark times selections fresh and from a memory, in other batch
sizes, and Bullet-Train padded and unpadded. :func:`gains_section` turns those same-run pairs into tables, with
:data:`GAINS` saying how each gain is obtained. :mod:`robustlib.performance` assembles the page.
"""
from __future__ import annotations

import math
import re

from .book import when

KIND_TITLE = {"cpu": "CPU", "cuda": "GPU"}


def run_of(result: dict) -> str:
    """"<device>, run <date>": which machine and which run a table's figures come from."""
    return f"{result['device']}, run {when(result.get('date'))}"

GAINS = {   # training-benchmark variant → how the gain is obtained (the measured ratio comes from the JSON)
    "fp32 unfrozen attack": "freezing the parameters during attack steps (`checks.input_gradients_only`), so that "
                            "an attack step's backward computes input gradients only; before: the same fp32 step "
                            "with the parameters left trainable while the attack differentiates.",
    "tuned": "each convolution's forward pass, input gradient and weight gradient by the fastest of four equivalent "
             "kernels (default layout, channels-last, space-to-depth, both) measured on this device once per shape "
             "(`robustlib.conv_kernels`, `fit(tune_convs=True)`, on by default on a CPU): oneDNN's default kernel for "
             "the input gradient of a strided convolution is the slow one, and attacks take K input gradients a step.",
    "bf16+tuned": "bf16 autocast with tuned convolution kernels (below fp32 a direction may also be computed in fp32 "
                  "where that kernel is the faster).",
    "channels-last": "NHWC memory format for the network and every batch (`fit(channels_last=True)`): the layout "
                     "oneDNN (CPU) and cuDNN (GPU) convolution kernels prefer, without reorders between layers.",
    "bf16": "bf16 autocast for the attack and the training step (`fit(amp=True)`): half the bytes per activation, "
            "and bf16 matrix units where the device has them; losses and the attack's sign step stay in fp32.",
    "bf16+channels-last": "both of the above.",
    "bf16+channels-last, mixed-layout flatten": "handing gradients back channels-last through `nn.Flatten` "
                                                "(`precision.channels_last_gradients`); before: bf16+channels-last "
                                                "with it off, so that the ReLU before a Flatten differentiates over "
                                                "two memory layouts.",
    "bf16+channels-last, projected steps": "clamping each L∞ attack step into the box [max(x − ε, 0), "
                                           "min(x + ε, 1)] computed once per attack "
                                           "(`attacks.gradient.BOX_CLAMP`), three elementwise operations; before: bf16+channels-last with the step "
                                           "projected by seven (x' − x, clamp to ±ε, x + δ, clip to [0, 1], …).",
    "compile": "`torch.compile` of the network (`fit(compile=True)`): fused elementwise kernels around the "
               "convolutions; the parameters are frozen while the attack differentiates, so the compiled backward "
               "of an attack step computes input gradients only.",
    "compile+bf16": "compilation and bf16 autocast together.",
    "compile+bf16+channels-last": "all three options.",
    "cudagraphs+bf16+channels-last": "bf16 and channels-last with `torch.compile` in its \"reduce-overhead\" mode "
                                     "(`fit(compile=\"reduce-overhead\")`): on a GPU the compiled kernels replay as "
                                     "CUDA graphs, without a launch per kernel, `fit` marking each batch as a new "
                                     "graph generation.",
    "default": "what `fit` chooses by itself on this device (`amp`, `channels_last`, `tune_convs` = \"auto\", "
               "`robustlib.precision`): bf16 and channels-last on a GPU and on a CPU with bf16 matrix units (Intel "
               "AMX), fp32 with tuned convolutions on other CPUs.",
}
# a variant that is the *before* of one library change → the variant it is compared with (its after; the others'
# before is fp32 eager robustlib), and the change's name in the gains table
BEFORE_OF = {"fp32 unfrozen attack": ("fp32", "frozen parameters in attack steps"),
             "bf16+channels-last, mixed-layout flatten": ("bf16+channels-last",
                                                          "channels-last gradients through Flatten"),
             "bf16+channels-last, projected steps": ("bf16+channels-last", "box-clamped attack steps")}


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts as one dict of ``a · b`` keys (lists are left to :func:`rows_table`)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix} · {k}" if prefix else str(k)))
        return out
    return {prefix: value}


def table(header: tuple, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rows_table(rows: list) -> str:
    """A list of flat dicts (e.g. the bounds benchmark's rows) as one table over the union of their keys."""
    cols = []
    for r in rows:
        cols += [k for k in flatten(r) if k not in cols]
    return table(tuple(cols), [[flatten(r).get(c, "") for c in cols] for r in rows])


def paired_median(rounds: dict, a: str, b: str) -> float | None:
    """Median over interleaved rounds of a's throughput over b's in the same round (None without rounds)."""
    import statistics
    if a not in rounds or b not in rounds or not rounds[a]:
        return None
    return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def per_device(results: dict, name: str, shape: type):
    """``(kind, result, figures)`` of benchmark ``name`` per device kind that has a file whose figures are a
    ``shape`` (list: the bounds benchmark's rows; dict: named figures)."""
    for kind in KIND_TITLE:
        result = results.get((name, kind))
        if result is not None and isinstance(result["figures"], shape):
            yield kind, result, result["figures"]


def _select_batch_gain(result: dict, figures: dict) -> str:
    """A fresh Adv-GRAD-MATCH selection with its attack and gradients in other batches than the default, as a
    table ('' without such figures). Files before the default depended on the device timed the default once
    (batches of 256) and the other sizes as the fastest of two; later ones time the default again as the
    fastest of two."""
    rows = []
    for key in sorted(figures):
        m = re.fullmatch(r"gradmatch_Ks(\d+)_batch(\d+)_s", key)
        if not m:
            continue
        ks, size = m.groups()
        default = figures.get(f"gradmatch_Ks{ks}_batchdefault_s")
        if default is not None:
            label, before, after = f"batches of {size} → the default", figures[key], default
        else:   # old format: the default was 256, timed once
            label, before, after = (f"batches of 256 (one timing) → {size}", figures.get(f"gradmatch_Ks{ks}_s"),
                                    figures[key])
        if before:
            rows.append((f"K_s = {ks}, {label}", f"{before:,.2f} → {after:,.2f}", f"{before / after:.2f}×"))
    if not rows:
        return ""
    return (f"**Selector batches ({run_of(result)})**: seconds of one fresh Adv-GRAD-MATCH selection of "
            f"{result['settings'].get('n', '?'):,} images, its attack and last-layer gradients in batches of one size "
            f"→ another (the fastest of two timings unless marked), in the same run; "
            f"`robustlib.scores.selection_batch_size` sets the default per device:\n\n"
            + table(("selection", "seconds", "gain"), rows))


def _memory_gain(result: dict, figures: dict) -> str:
    """Selections from a fresh K_s-step attack → from the perturbation memory, as a table ('' without them)."""
    ks, epoch = result["settings"].get("select_steps"), figures.get("full_epoch_s")
    if "gradmatch_memory_s" not in figures or f"gradmatch_Ks{ks}_s" not in figures or not epoch:
        return ""
    group = result["settings"].get("group_size", 32)   # results without it had groups of 32
    rows = [(f"{name} selection", f"{figures[f'{m}_Ks{ks}_s']:,.2f} → {figures[f'{m}_memory_s']:,.2f}",
             f"{figures[f'{m}_Ks{ks}_s'] / epoch:.3f} → {figures[f'{m}_memory_s'] / epoch:.3f}",
             f"{figures[f'{m}_Ks{ks}_s'] / figures[f'{m}_memory_s']:.2f}×")
            for m, name in (("gradmatch", f"Adv-GRAD-MATCH (groups of {group})"), ("glister", "Adv-GLISTER"))
            if f"{m}_memory_s" in figures]
    other = {"gradmatch_memory_batch_groups_s": result["settings"].get("batch_size", "?"),
             "gradmatch_memory_groups32_s": 32}
    for key, size in other.items():
        if key not in figures:
            continue
        after = figures[key]
        rows.append((f"Adv-GRAD-MATCH, groups of {size}",
                     f"{figures[f'gradmatch_Ks{ks}_s']:,.2f} → {after:,.2f}",
                     f"{figures[f'gradmatch_Ks{ks}_s'] / epoch:.3f} → {after / epoch:.3f}",
                     f"{figures[f'gradmatch_Ks{ks}_s'] / after:.2f}×"))
    if "pruned_memory_train_s" in figures:
        before, after = figures["pruned_train_s"], figures["pruned_memory_train_s"]
        rows.append((f"pruned PGD-AT, {result['settings'].get('epochs', '?')} epochs at f = "
                     f"{result['settings'].get('fraction', '?')}", f"{before:,.1f} → {after:,.1f}",
                     f"{figures['full_train_s'] / before:.2f}× → {figures['full_train_s'] / after:.2f}× of full data",
                     f"{before / after:.2f}×"))
    miss = figures.get("miss", {})
    agree = ("" if "memory" not in miss else
             f" How far each selection's summed gradient points from a fresh PGD-{result['settings'].get('steps')} "
             f"attack's (1 − cos): " + ", ".join(f"{k} {v:.1e}" for k, v in miss.items()) + ".")
    return (f"**Selections from a perturbation memory ({run_of(result)})**: seconds of one selection with a fresh "
            f"PGD-{ks} attack on every example → with the gradients taken at the perturbations the last training "
            f"epoch found (`rl.memory.PerturbationMemory`), both timed in the same run; the middle column is the "
            f"selection over one full-data PGD-AT epoch (goal ≤ 0.10).{agree}\n\n"
            + table(("what", "seconds", "per epoch / speed-up", "gain"), rows))


def _accuracy_check(figures: dict) -> str:
    """The training benchmark's check that fit's default precision trains as well as fp32, as a table ('' without
    it)."""
    acc = figures.get("accuracy")
    if not acc:
        return ""
    rows = [(config, r["seed"], r.get("precision", ""), f"{100 * r['clean']:.2f}%", f"{100 * r['pgd20']:.2f}%",
             f"{r['train_s']:.0f} s") for config in acc for r in acc[config]]
    gap = figures.get("accuracy_gap_points", {})
    return (f"Accuracy check of `default` against `fp32`: PGD-AT for {figures.get('accuracy_epochs', '?')} epochs "
            f"on the same images from the same initial weights, evaluated in fp32 on 2,000 test images (mean "
            f"difference, default − fp32: clean {gap.get('clean', float('nan')):+.2f}, PGD-20 "
            f"{gap.get('pgd20', float('nan')):+.2f} points):\n\n"
            + table(("run", "seed", "precision", "clean", "PGD-20", "training"), rows))


def gains_section(results: dict) -> str:
    out = []
    for kind, result, figures in per_device(results, "training", dict):
        ips = figures.get("images_per_s", {})
        if "fp32" not in ips:
            continue
        rounds = figures.get("images_per_s_rounds", {})
        rows = []
        default_is = result.get("fit_default_precision") == "bf16 + channels-last"
        for v in ips:
            after, name = BEFORE_OF.get(v, (v, v))
            before = v if v in BEFORE_OF else "fp32"
            if after not in ips and default_is and after == "bf16+channels-last":
                after = "default"   # fit's default is that variant on this device: the run measured it as such
            if v in ("textbook", "fp32") or after not in ips:
                continue
            rows.append((name, GAINS.get(v, ""), f"{ips[before]:,.0f} → {ips[after]:,.0f}",
                         f"{ips[after] / ips[before]:.2f}×", _ratio(paired_median(rounds, after, before))))
        out.append(f"**{KIND_TITLE[kind]} ({run_of(result)})**, "
                   f"PGD-{result['settings'].get('steps', '?')} AT "
                   f"training images/s, before (fp32 eager robustlib, or the before that a change's row describes) "
                   f"→ after (best epoch of each), and the median over rounds of the ratio within one round (the "
                   f"same machine state):\n\n" +
                   table(("variant or change", "how", "images/s", "gain (best)", "gain (paired median)"), rows))
        out.append(_accuracy_check(figures))
    for kind, result, rows in per_device(results, "bounds", list):
        chunks = ("chunks that fit the CPU's last-level cache (`bounds.chunks.CPU_CHUNK_BYTES`)" if kind == "cpu"
                  else "chunks that fit the memory budget (`bounds.default_memory_budget`: only batches larger than "
                       "one chunk differ)")
        changes = (("symbolic, one chunk", f"with the whole batch in one chunk → with {chunks}"),
                   ("symbolic, vector_norm L1", "with the radius Σ|A| by `torch.linalg.vector_norm(A, 1, dim=1)` → by "
                                                "`A.abs().sum(1)` (robustlib's form on a CPU)"),
                   ("symbolic, abs-sum L1", "with the radius Σ|A| by `A.abs().sum(1)` → by "
                                            "`torch.linalg.vector_norm(A, 1, dim=1)` (robustlib's form on CUDA)"),
                   ("symbolic, no crops", "with `bounds.symbolic.CROPS` off (error terms through convolutions as "
                                          "dense images of their layer) → on (a small crop per term, "
                                          "`bounds.crops`)"),
                   ("symbolic, crops into Linear", "with crops into a Linear forced on → off, the default on this "
                                                   "device since the first GPU run "
                                                   "(`bounds.symbolic.CROP_LINEAR_DEVICES`: a CPU only)"),
                   ("symbolic, no crops into Linear", "with `bounds.symbolic.CROP_LINEAR` off (error terms whose "
                                                      "next convolution leads to a Linear as dense images, through a "
                                                      "dense product with its weight) → on (crops, the Linear reading "
                                                      "each crop's weight columns, `bounds.crops.linear`; used from "
                                                      "`bounds.symbolic.CROP_LINEAR_TERMS` terms in a chunk, so in "
                                                      "cells with fewer both runs execute the same code and their "
                                                      "ratio is the machine's noise)"),
                   ("symbolic, windows at every size", "with windows for chunks of every size → the dense path "
                                                       "for a chunk with fewer dense coefficients than "
                                                       "`bounds.symbolic.PATCHES_MIN_DENSE` on this device type "
                                                       "(CUDA, since 2026-11-27; in cells above it both runs execute "
                                                       "the same code and their ratio is the machine's noise)"),
                   ("symbolic, crops at every size", "with crops for blocks of error terms of every size → dense "
                                                     "images for a block smaller than "
                                                     "`bounds.symbolic.CROPS_MIN_DENSE` on this device type (CUDA, "
                                                     "since 2026-11-28; in cells above it, or without crops, both runs "
                                                     "execute the same code and their ratio is the machine's noise)"),
                   ("symbolic, no windows", "with `bounds.symbolic.PATCHES` off (every convolution's input "
                                            "coefficients as d dense columns) → on (one window of the input per "
                                            "neuron, `bounds.patches`)"),
                   ("symbolic, no shortcuts", "with `bounds.symbolic.SHORTCUTS` off (the first layer's coefficients "
                                              "materialised at once, fresh error terms through dense passes) → on "
                                              "(kept as s ⊗ J until the first ReLU, error terms gathered from the "
                                              "weights)"))
        present = {r["method"] for r in rows}
        # the changes came in the order shortcuts, windows, crops, crops into a Linear: each one's after is the next
        # one's before where the file has that row, the default otherwise
        chain = {"symbolic, no shortcuts": "symbolic, no windows", "symbolic, no windows": "symbolic, no crops",
                 "symbolic, no crops": "symbolic, no crops into Linear"}
        off = {"symbolic, no windows": "the windows and the crops", "symbolic, no crops": "the crops",
               "symbolic, no crops into Linear": "the crops into a Linear"}
        for method, what in changes:
            after = chain.get(method, "symbolic")
            after = after if after in present else "symbolic"
            if after != "symbolic":
                what += f", both with {off[after]} off"
            before = {(r["net"], r["batch"]): r["samples_per_s"] for r in rows if r["method"] == method}
            gains = [(f"{r['net']}, B = {r['batch']}",
                      f"{before[r['net'], r['batch']]:,.1f} → {r['samples_per_s']:,.1f}",
                      f"{r['samples_per_s'] / before[r['net'], r['batch']]:.2f}×")
                     for r in rows if r["method"] == after and (r["net"], r["batch"]) in before]
            if gains:
                out.append(f"**Symbolic bounds ({run_of(result)})**: samples/s {what}, both timed in the same "
                           f"run:\n\n" + table(("network, batch", "samples/s", "gain"), gains))
    for kind, result, rows in per_device(results, "bounds", list):
        moved = [(f"{r['net']}, B = {r['batch']}", r["method"].split(",")[0],
                  f"{r['samples_per_s']:,.1f} → {r['fixed_thresholds_samples_per_s']:,.1f}",
                  f"{r['fixed_thresholds_samples_per_s'] / r['samples_per_s']:.2f}×")
                 for r in rows if "fixed_thresholds_samples_per_s" in r]
        if moved:
            out.append(f"**Host allocator ({run_of(result)})**: samples/s of symbolic bounds with glibc's moving "
                       f"malloc thresholds → with the thresholds fixed by `robustlib.allocator.steady` (which `fit` "
                       f"and the symbolic bounds call on a CPU), timed back to back at the start of the run. The "
                       f"naive reference gains as much or more: the gain is the process's, not robustlib's "
                       f"algorithm's:\n\n" + table(("network, batch", "method", "samples/s", "gain"), moved))
    for kind, result, figures in per_device(results, "pruning", dict):
        if memory := _memory_gain(result, figures):
            out.append(memory)
        if batches := _select_batch_gain(result, figures):
            out.append(batches)
        if "bt_unpadded_train_s" not in figures:
            continue
        before, after = figures["bt_unpadded_train_s"], figures["bt_train_s"]
        out.append(f"**Bullet-Train ({run_of(result)})**: seconds of {result['settings'].get('epochs', '?')} "
                   f"epochs of Bullet-Train PGD-AT with the robust and boundary sub-batches at their own sizes → "
                   f"padded to a multiple of `BulletTrain.bucket` (so that cuDNN meets few shapes), both timed in "
                   f"the same run:\n\n" + table(("run", "seconds", "gain"),
                                               [("Bullet-Train, full data", f"{before:,.1f} → {after:,.1f}",
                                                 f"{before / after:.2f}×")]))
    return "\n".join(out) or "No training benchmark has been run yet (`python benchmarks/bench_training.py`).\n"
