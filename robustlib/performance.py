"""The book's Performance page, generated at build time from the benchmark scripts' JSON files.

Every script in ``benchmarks/`` writes ``benchmarks/results/<name>-<cpu|cuda>.json`` (``benchmarks/common.py``):
the device's name, library versions, the date, the settings, the raw figures and every ratio, each ratio between
two figures measured in that one run. :func:`write_page` turns those files into ``performance.md`` in the staged
book: one table per benchmark and device, the "how each gain was obtained" section from the training benchmark's
before/after variants and the bounds benchmark's one-chunk / default-chunk pair, and a roofline-style figure (achieved FLOP/s against the device's datasheet peak where it is
known). A CPU file and a GPU file are never combined in one ratio or one panel. Nothing on the page is typed by
hand; a benchmark without a file says how to produce it.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

BENCHMARKS = {   # script → (section title, what it measures)
    "training": ("Adversarial-training throughput", "robustlib's `train.fit` + PGD-AT (K = 10) against the textbook "
                 "loop (torchattacks PGD, `DataLoader`, fp32 eager) in the same process, and each speed option of "
                 "`fit` against plain fp32 eager robustlib."),
    "bounds": ("Bounds", "interval and symbolic bounds per sample against one forward pass, against the floor of "
               "one forward pass of d + 1 images, and against a straightforward per-layer implementation of the "
               "same relaxation (`benchmarks/naive_symbolic.py`). `error_columns`: the columns that unstable ReLUs "
               "add per sample beyond the d + 1 of the floor; `forward(d+1+E)`: the floor with them counted."),
    "certified": ("Certified training", "one epoch of MixTrain (k = 1, 5), full symbolic, IBP and PGD-AT training "
                  "on the same data, and one symbolic bound's forward + backward against a forward pass of d + 1 "
                  "images; where the file has them, the symbolic and MixTrain epochs and the forward + backward also "
                  "with the bounds' windows and crops off (`…, dense`: their before, in the same run)."),
    "profile": ("Where a training step's time goes", "`train.fit` + PGD-AT (K = 10) under `torch.profiler`: "
                "each operator's self time (on a GPU, its kernels' time) summed by kind of work, per variant of "
                "`fit`'s speed options, with the most expensive operators by input shape; on a GPU also the share "
                "of the step in which the device computes at all (`device_busy`, kernels' time over the "
                "unprofiled wall-clock) and the kernels launched per batch. Shares of one run, not ratios."),
    "pruning": ("Pruned adversarial training", "the cost of one Adv-GRAD-MATCH / Adv-GLISTER selection against a "
                "PGD-AT epoch, pruned against full-data training end to end, and Bullet-Train's saved attack steps."),
}
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
                                           "min(x + ε, 1)] computed once per attack (`attacks.BOX_CLAMP`), three "
                                           "elementwise operations; before: bf16+channels-last with the step "
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
# a variant that is the *before* of one library change → the variant it is compared with (its after); the others'
# before is fp32 eager robustlib
# before is fp32 eager robustlib), and the change's name in the gains table
BEFORE_OF = {"fp32 unfrozen attack": ("fp32", "frozen parameters in attack steps"),
             "bf16+channels-last, mixed-layout flatten": ("bf16+channels-last", "channels-last gradients through Flatten"),
             "bf16+channels-last, projected steps": ("bf16+channels-last", "box-clamped attack steps")}
PEAKS = {   # dense datasheet peak FLOP/s by a substring of the device name, per dtype (vendor datasheets, SXM parts)
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}
COMMANDS = {"cpu": "python benchmarks/bench_{name}.py", "cuda": "python benchmarks/bench_{name}.py --device cuda"}
KIND_TITLE = {"cpu": "CPU", "cuda": "GPU"}


def load(folder: Path) -> dict:
    """``{(name, kind): result}`` for every ``<name>-<cpu|cuda>.json`` in ``folder`` written by ``common.py``."""
    out = {}
    for path in sorted(Path(folder).glob("*-*.json")):
        name, _, kind = path.stem.rpartition("-")
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable benchmark result ({e}); rerun its script") from e
        if kind in KIND_TITLE and {"device", "figures", "ratios"} <= set(result):
            out[(name, kind)] = result
    return out


def peak(device: str) -> dict | None:
    """The datasheet peak FLOP/s per dtype of a device named ``device``, or ``None`` when not known."""
    return next((p for key, p in PEAKS.items() if key in device), None)


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


def result_section(name: str, kind: str, result: dict) -> str:
    settings = ", ".join(f"{k} = {fmt(v)}" for k, v in flatten(
        {k: v for k, v in result.get("settings", {}).items() if k != "variants"}).items())   # variants: see gains
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    out = [f"### {KIND_TITLE[kind]}: {result['device']}\n",
           f"Run {result.get('date', '?')} with {versions}. Settings: {settings}."
           + (f" `fit`'s default precision on this device: {result['fit_default_precision']}."
              if result.get("fit_default_precision") else "") + "\n"]
    figures = result["figures"]
    if isinstance(figures, list):
        out.append(rows_table(figures))
    else:
        scalars = {k: v for k, v in flatten({k: v for k, v in figures.items() if not isinstance(v, list)}).items()
                   if not (isinstance(v, list) and v and isinstance(v[0], dict))}   # nested rows: see the gains
        if scalars:
            out.append(table(("figure", "value"), list(scalars.items())))
        for k, v in figures.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                out.append(f"**{k}**\n\n" + rows_table(v))
    if result["ratios"]:
        derived = any("amortised" in k for k in result["ratios"])
        out.append("Ratios (both sides measured in this run" + (
            "; an `_amortised_R20` ratio is the measured one divided by 20, the selection paid once every 20 "
            "epochs: derived, not measured" if derived else "") + "):\n\n" +
                   table(("ratio", "value"), [(k, f"{v:.2f}×") for k, v in result["ratios"].items()]))
    return "\n".join(out)


def paired_median(rounds: dict, a: str, b: str) -> float | None:
    """Median over interleaved rounds of a's throughput over b's in the same round (None without rounds)."""
    import statistics
    if a not in rounds or b not in rounds or not rounds[a]:
        return None
    return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _per_device(results: dict, name: str, shape: type):
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
    return (f"**Selector batches ({result['device']})**: seconds of one fresh Adv-GRAD-MATCH selection of "
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
    return (f"**Selections from a perturbation memory ({result['device']})**: seconds of one selection with a fresh "
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
    for kind, result, figures in _per_device(results, "training", dict):
        ips = figures.get("images_per_s", {})
        if "fp32" not in ips:
            continue
        rounds = figures.get("images_per_s_rounds", {})
        rows = []
        for v in ips:
            after, name = BEFORE_OF.get(v, (v, v))
            before = v if v in BEFORE_OF else "fp32"
            if v in ("textbook", "fp32") or after not in ips:
                continue
            rows.append((name, GAINS.get(v, ""), f"{ips[before]:,.0f} → {ips[after]:,.0f}",
                         f"{ips[after] / ips[before]:.2f}×", _ratio(paired_median(rounds, after, before))))
        out.append(f"**{KIND_TITLE[kind]} ({result['device']})**, PGD-{result['settings'].get('steps', '?')} AT "
                   f"training images/s, before (fp32 eager robustlib, or the before that a change's row describes) "
                   f"→ after (best epoch of each), and the median over rounds of the ratio within one round (the "
                   f"same machine state):\n\n" +
                   table(("variant or change", "how", "images/s", "gain (best)", "gain (paired median)"), rows))
        out.append(_accuracy_check(figures))
    for kind, result, rows in _per_device(results, "bounds", list):
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
                out.append(f"**Symbolic bounds ({result['device']})**: samples/s {what}, both timed in the same "
                           f"run:\n\n" + table(("network, batch", "samples/s", "gain"), gains))
    for kind, result, rows in _per_device(results, "bounds", list):
        moved = [(f"{r['net']}, B = {r['batch']}", r["method"].split(",")[0],
                  f"{r['samples_per_s']:,.1f} → {r['fixed_thresholds_samples_per_s']:,.1f}",
                  f"{r['fixed_thresholds_samples_per_s'] / r['samples_per_s']:.2f}×")
                 for r in rows if "fixed_thresholds_samples_per_s" in r]
        if moved:
            out.append(f"**Host allocator ({result['device']})**: samples/s of symbolic bounds with glibc's moving "
                       f"malloc thresholds → with the thresholds fixed by `robustlib.allocator.steady` (which `fit` "
                       f"and the symbolic bounds call on a CPU), timed back to back at the start of the run. The "
                       f"naive reference gains as much or more: the gain is the process's, not robustlib's "
                       f"algorithm's:\n\n" + table(("network, batch", "method", "samples/s", "gain"), moved))
    for kind, result, figures in _per_device(results, "pruning", dict):
        if memory := _memory_gain(result, figures):
            out.append(memory)
        if batches := _select_batch_gain(result, figures):
            out.append(batches)
        if "bt_unpadded_train_s" not in figures:
            continue
        before, after = figures["bt_unpadded_train_s"], figures["bt_train_s"]
        out.append(f"**Bullet-Train ({result['device']})**: seconds of {result['settings'].get('epochs', '?')} "
                   f"epochs of Bullet-Train PGD-AT with the robust and boundary sub-batches at their own sizes → "
                   f"padded to a multiple of `BulletTrain.bucket` (so that cuDNN meets few shapes), both timed in "
                   f"the same run:\n\n" + table(("run", "seconds", "gain"),
                                               [("Bullet-Train, full data", f"{before:,.1f} → {after:,.1f}",
                                                 f"{before / after:.2f}×")]))
    return "\n".join(out) or "No training benchmark has been run yet (`python benchmarks/bench_training.py`).\n"


def roofline_figure(results: dict, path: Path) -> bool:
    """Achieved FLOP/s of every throughput entry, one panel per device, beside the datasheet peak where known.
    Returns False (and writes nothing) when no result carries throughput figures."""
    panels = [(kind, r) for (name, kind), r in sorted(results.items())
              if isinstance(r["figures"], dict) and r["figures"].get("throughput")]
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + 0.45 * sum(len(r["figures"]["throughput"])
                                                                           for _, r in panels)), squeeze=False)
    for ax, (kind, r) in zip(axes[:, 0], panels):
        entries = r["figures"]["throughput"]
        values = [e["flop_per_s"] for e in entries]
        colours = ["tab:orange" if e.get("dtype") == "bf16" else "tab:blue" for e in entries]
        ax.barh(range(len(entries)), values, color=colours)
        ax.set_yticks(range(len(entries)), [e["what"] for e in entries], fontsize=8)
        ax.set_xscale("log")
        known = peak(r["device"])
        if known:
            for dtype, v in known.items():
                ax.axvline(v, ls="--", color="tab:orange" if dtype == "bf16" else "tab:blue")
                ax.text(v, len(entries) - 0.5, f" {dtype} peak", fontsize=8, va="top")
            ax.set_xlim(min(values) / 3, max(known.values()) * 3)
        title = f"{KIND_TITLE[kind]}: {r['device']}" + ("" if known else " (datasheet peak unknown)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("achieved FLOP/s (convolutions and matrix products; blue fp32, orange bf16)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def floors_section(results: dict) -> str:
    """Symbolic bounds per sample against their two floors, per device: a forward pass of d + 1 images, and the
    same pass with one more input per error column appended after each ReLU."""
    out = []
    for kind, result, rows in _per_device(results, "bounds", list):
        rows = [(r["net"], r["batch"], r.get("d", ""), r.get("error_columns", ""), f"{r['x_floor']:.2f}×",
                 f"{r['x_width_floor']:.2f}×" if "x_width_floor" in r else "—")
                for r in rows if r["method"] == "symbolic" and "x_floor" in r]
        if rows:
            out.append(f"**{KIND_TITLE[kind]} ({result['device']})**: time of one sample's symbolic bounds over "
                       f"each floor, timed in the same run (1.00× is the floor; robustlib's goal is 1.5×):\n\n"
                       + table(("network", "B", "d", "error columns", "× (d + 1) floor", "× (d + 1 + E) floor"),
                               rows))
    if not out:
        return ""
    return ("## Symbolic bounds against their floor\n\nSymbolic propagation carries d + 1 columns per neuron "
            "(d = input dimension) and, after each ReLU layer, one more per unstable neuron. A forward pass of "
            "d + 1 images is therefore a floor that ignores those error columns; `forward(d+1+E)` is the same "
            "pass with one more input appended after each ReLU per error column it adds. Both are references, "
            "not strict bounds: fresh error columns are one-hot, and robustlib maps them through the next layer by "
            "gathering weight columns, cheaper than a dense pass (hence ratios below 1). The floors run sample by "
            "sample; on a GPU that leaves small networks bound by kernel launches, so batched bounds can beat "
            "them at large B.\n\n" + "\n".join(out))


def page(results: dict, figure: str | None, when: str) -> str:
    out = [f"""# Performance

How fast robustlib's kernels are, measured by the scripts in `benchmarks/` and **generated when the book is built**
({when}) from their JSON files in `benchmarks/results/` — nothing here is typed by hand. Each table is one run of
one script on one device; every ratio is between two figures measured in that same run, and CPU and GPU figures are
never combined in one ratio or one panel. Speed is never measured by a timed test.

## How each gain was obtained

{gains_section(results)}"""]
    floors = floors_section(results)
    if floors:
        out.append(floors)
    if figure:
        out.append(f"""## Achieved against peak

```{{figure}} {figure}
:name: fig-roofline
:alt: Achieved FLOP/s of each training configuration per device, with the datasheet peak where known.

Achieved FLOP/s of PGD-AT training (convolution and matrix-product FLOPs per training image, counted by
`torch.utils.flop_counter`, times images/s) per configuration and device; dashed lines mark the datasheet peak of
the device where it is known (dense bf16 and fp32). A CPU's peak depends on its clock and vector units, which a
virtual machine does not report reliably, so a CPU panel shows achieved values only.
```
""")
    for name, (title, what) in BENCHMARKS.items():
        out.append(f"## {title}\n\n`benchmarks/bench_{name}.py`: {what}\n")
        for kind in KIND_TITLE:
            result = results.get((name, kind))
            if result is None:
                out.append(f"*{KIND_TITLE[kind]}: not run yet* — `{COMMANDS[kind].format(name=name)}` writes "
                           f"`benchmarks/results/{name}-{kind}.json`.\n")
            else:
                out.append(result_section(name, kind, result))
        for (other, kind), result in sorted(results.items()):   # e.g. training-mnist_small: another network
            if other.startswith(f"{name}-"):
                variant = other[len(name) + 1:]
                out.append(f"### {title}, {variant}\n\n`benchmarks/bench_{name}.py` run for `{variant}` "
                           f"(`benchmarks/results/{other}-{kind}.json`).\n")
                out.append(result_section(other, kind, result))
    return "\n".join(out)


def write_page(book_dir: Path, results_dir: Path, generated: str = "_generated") -> Path:
    """Write ``performance.md`` (and its figure under ``generated/``) into the staged ``book_dir``."""
    from datetime import datetime, timezone
    results = load(results_dir)
    Path(book_dir).mkdir(parents=True, exist_ok=True)
    fig = Path(book_dir) / generated / "roofline.png"
    has_fig = roofline_figure(results, fig)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path = Path(book_dir) / "performance.md"
    path.write_text(page(results, f"{generated}/roofline.png" if has_fig else None, when))
    return path
