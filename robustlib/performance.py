"""The book's Performance page, generated at build time from the benchmark scripts' JSON files.

Every script in ``benchmarks/`` writes ``benchmarks/results/<name>-<cpu|cuda>.json`` (``benchmarks/common.py``):
the device's name, library versions, the date, the settings, the raw figures and every ratio, each ratio between
two figures measured in that one run. :func:`write_page` turns those files into ``performance.md`` in the staged
book: one table per benchmark and device, the "how each gain was obtained" section (:mod:`robustlib.gains`), and a
roofline-style figure (achieved FLOP/s against the device's datasheet peak where it is known). A CPU file and a GPU file are never combined in one ratio or one panel. Nothing on the page is typed by
hand; a benchmark without a file says how to produce it.
"""
from __future__ import annotations

import json
from pathlib import Path

from .gains import (KIND_TITLE, per_device, flatten, fmt, gains_section, paired_median,  # noqa: F401
                    rows_table, run_of, table)

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
                  "with the bounds' windows and crops off (`…, dense`: their before, in the same run). `per_example`: "
                  "seconds per example of each trainer per network (after the first, on fewer examples, every "
                  "trainer over the same steps from the same weights: ratios marked `(per example)`); floors at each "
                  "batch size the file has."),
    "profile": ("Where a training step's time goes", "`train.fit` + PGD-AT (K = 10) under `torch.profiler`: "
                "each operator's self time (on a GPU, its kernels' time) summed by kind of work, per variant of "
                "`fit`'s speed options, with the most expensive operators by input shape; on a GPU also the share "
                "of the step in which the device computes at all (`device_busy`, kernels' time over the "
                "unprofiled wall-clock) and the kernels launched per batch; `ops_per_batch`: aten operator calls, "
                "nested ones included; `host_reads_per_batch`: reads of a tensor's value on the host (each one a "
                "wait for the device on a GPU); `stream_syncs_per_batch` (and `_per_epoch`): the host's waits "
                "for the whole device queue, `fit`'s per epoch included; in files written up to 2026-11-28 03:07 "
                "UTC they also count the benchmark's own load of the initial weights from the host inside the "
                "profiled epoch, one wait per weight tensor (its 107 tensors make 21.4 of PreAct-ResNet-18's "
                "22.6 a batch). Shares of one run, not ratios. `profile-certified`: a MixTrain (k = 5) and a "
                "full symbolic-training step of MNIST_Small at batch 50 the same way (`--objective`)."),
    "pruning": ("Pruned adversarial training", "the cost of one Adv-GRAD-MATCH / Adv-GLISTER selection against a "
                "PGD-AT epoch, pruned against full-data training end to end, and Bullet-Train's saved attack steps."),
}
PEAKS = {   # dense datasheet peak FLOP/s by a substring of the device name, per dtype (vendor datasheets, SXM parts)
    "H200": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}
OTHER_FORMS = ("PCIe", "NVL")   # other power and memory: the SXM peaks above do not hold for them (peak unknown)
COMMANDS = {"cpu": "python benchmarks/bench_{name}.py", "cuda": "python benchmarks/bench_{name}.py --device cuda"}



def load(folder: Path) -> dict:
    """``{(name, kind): result}`` for every ``<name>-<cpu|cuda>.json`` in ``folder`` written by ``common.py``."""
    out = {}
    for path in sorted(Path(folder).glob("*-*.json")):
        name, _, kind = path.stem.rpartition("-")
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable benchmark result ({e}); rerun its script") from e
        if kind not in KIND_TITLE:
            raise ValueError(f"{path.name}: a benchmark result is named <benchmark>-<cpu|cuda>.json, not "
                             f"-{kind}.json; rename it or move it out of {folder}")
        missing = {"device", "figures", "ratios"} - set(result)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}: not written by benchmarks/common.py's "
                             f"write_result; rerun its script")
        device = str(result["device"])
        if (kind == "cuda" and device.startswith("CPU")) or (kind == "cpu" and "NVIDIA" in device):
            raise ValueError(f"{path.name} is named for {kind} but was measured on {device}")
        out[(name, kind)] = result
    return out


def peak(device: str) -> dict | None:
    """The datasheet peak FLOP/s per dtype of a device named ``device``, or ``None`` when not known (also for the
    PCIe and NVL forms of a GPU whose SXM peaks are listed)."""
    if any(form.lower() in device.lower() for form in OTHER_FORMS):
        return None
    return next((p for key, p in PEAKS.items() if key in device), None)


def compute_dtype(entry: dict, kind: str) -> str:
    """What a throughput entry's convolutions ran in: an "fp32" entry on CUDA ran on TF32 tensor cores, cuDNN's
    default (``torch.backends.cudnn.allow_tf32``), which the training benchmark leaves on."""
    dtype = entry.get("dtype", "fp32")
    tf32 = entry.get("tf32", kind == "cuda")   # runs that did not record it left PyTorch's default on
    return "tf32" if dtype == "fp32" and kind == "cuda" and tf32 else dtype


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
        dtypes = [compute_dtype(e, kind) for e in entries]
        colour = {"bf16": "tab:orange", "tf32": "tab:green", "fp32": "tab:blue"}
        ax.barh(range(len(entries)), values, color=[colour.get(d, "tab:blue") for d in dtypes])
        ax.set_yticks(range(len(entries)), [e["what"] + (" (TF32)" if d == "tf32" else "")
                                            for e, d in zip(entries, dtypes)], fontsize=8)
        ax.set_xscale("log")
        known = peak(r["device"])
        if known:
            for i, (dtype, v) in enumerate(known.items()):   # labels one below the other: the peaks lie close
                ax.axvline(v, ls="--", color=colour[dtype])
                ax.text(v, len(entries) - 0.5 - 0.6 * i, f" {dtype} peak", fontsize=7, va="top")
            ax.set_xlim(min(values) / 3, max(known.values()) * 3)
        title = f"{KIND_TITLE[kind]}: {run_of(r)}" + ("" if known else " (datasheet peak unknown)")
        ax.set_title(title, fontsize=8, wrap=True)
        ax.set_xlabel("achieved FLOP/s of convolutions and matrix products\n(blue fp32, green TF32, orange bf16)",
                      fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def floors_section(results: dict) -> str:
    """Symbolic bounds per sample against their two floors, per device: a forward pass of d + 1 images, and the
    same pass with one more input per error column appended after each ReLU."""
    out = []
    for kind, result, rows in per_device(results, "bounds", list):
        rows = [(r["net"], r["batch"], r.get("d", ""), r.get("error_columns", ""), f"{r['x_floor']:.2f}×",
                 f"{r['x_width_floor']:.2f}×" if "x_width_floor" in r else "—")
                for r in rows if r["method"] == "symbolic" and "x_floor" in r]
        if rows:
            out.append(f"**{KIND_TITLE[kind]} ({run_of(result)})**: time of one sample's symbolic bounds over "
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
never combined in one ratio or one panel. Speed is never measured by a timed test. What each run measured, on which
machine and when, and which change each gain came from: {{doc}}`/book/speed`.

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
