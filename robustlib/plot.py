"""Figures the chapters share: image grids and learning curves (matplotlib)."""
from __future__ import annotations

import torch


def image_grid(images: torch.Tensor, labels=None, classes=(), rows: int = 2, cols: int = 8, title: str = "",
               ax_size: float = 1.1, fig=None):
    """Show images (N×C×H×W, uint8 or float in [0, 1]) on a rows×cols grid, titled by label."""
    import matplotlib.pyplot as plt

    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    n = min(len(images), rows * cols)
    if fig is None:
        fig = plt.figure(figsize=(cols * ax_size, rows * ax_size * 1.15))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=1)
        if labels is not None:
            lab = int(labels[i])
            ax.set_title(classes[lab] if classes else str(lab), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    if hasattr(fig, "tight_layout"):  # a SubFigure has none
        fig.tight_layout()
    return fig


def learning_curves(history, metrics=("loss",), title: str = "", caption: str = ""):
    """One panel per metric against epoch, from a ``fit`` history (or its DataFrame)."""
    import matplotlib.pyplot as plt

    frame = history.frame() if hasattr(history, "frame") else history
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        ax.plot(frame["epoch"], frame[m], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    if caption:
        add_caption(fig, caption)
    fig.tight_layout()
    return fig


def add_caption(fig, text: str, y: float = -0.02):
    """The small italic line under a figure that says which preset, device and wall-clock made it."""
    fig.text(0.5, y, text, ha="center", va="top", fontsize=8, style="italic")
    return fig


def _method_style(frame):
    """Colours per pruning method (fixed order, so every figure agrees) and markers per kept fraction."""
    import matplotlib.pyplot as plt

    from .pruning_study import METHODS
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(METHODS)}
    fractions = sorted({float(f) for f in frame["fraction"]} - {1.0})
    return colors, dict(zip(fractions, "osD^vPX<>"))


def speedup_accuracy(frame, *, acc: str = "pgd_acc", tolerance: float = 0.015, title: str = "", caption: str = "",
                     ylabel: str = "robust accuracy"):
    """Speed-up over full-data training (x) against robust accuracy (y), one panel per objective.

    ``frame``: one row per run with ``objective``, ``method``, ``bt``, ``fraction``, ``speedup`` and ``acc``.
    Colour = method, marker = kept fraction (★ full data), hollow = with Bullet-Train; the dashed line joins the
    Pareto front (:func:`robustlib.pruning_study.pareto_front`) and the green band is within ``tolerance`` of
    full-data training without Bullet-Train.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .pruning_study import pareto_front
    colors, markers = _method_style(frame)
    objectives = list(dict.fromkeys(frame["objective"]))
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.3 * len(objectives), 3.7), squeeze=False)
    for ax, objective in zip(axes.flat, objectives):
        t = frame[frame["objective"] == objective]
        ref = t[(t["method"] == "full") & ~t["bt"].astype(bool)][acc]
        if len(ref):
            top = max(float(t[acc].max()), float(ref.iloc[0])) + 0.01
            ax.axhspan(float(ref.iloc[0]) - tolerance, top, color="tab:green", alpha=0.08, lw=0)
            ax.axhline(float(ref.iloc[0]) - tolerance, color="tab:green", ls=":", lw=1)
        front = t[pareto_front(t["speedup"], t[acc])].sort_values("speedup")
        ax.plot(front["speedup"], front[acc], "--", color="0.3", lw=0.9, zorder=1)
        for r in t.to_dict("records"):
            full = r["method"] == "full"
            c = colors[r["method"]]
            ax.scatter(r["speedup"], r[acc], marker="*" if full else markers[float(r["fraction"])],
                       s=170 if full else 55, facecolors="none" if r["bt"] else [c], edgecolors=[c], linewidths=1.4,
                       zorder=2)
        ax.set_title(objective)
        ax.set_xlabel("speed-up over full-data training (×)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    present = list(dict.fromkeys(frame["method"]))
    handles = [Line2D([], [], ls="", marker="o", color=colors[m], label=m) for m in present]
    handles += [Line2D([], [], ls="", marker=mk, color="0.4", label=f"f = {f:g}") for f, mk in markers.items()]
    handles += [Line2D([], [], ls="", marker="*", ms=11, color="0.4", label="full data"),
                Line2D([], [], ls="", marker="o", mfc="none", color="0.4", label="+ Bullet-Train"),
                Line2D([], [], ls="--", color="0.3", label="Pareto front")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return _finish(fig, title, caption)


def fraction_view(frame, fractions, *, acc: str = "pgd_acc", tolerance: float = 0.015, title: str = "",
                  caption: str = ""):
    """Robust accuracy of every run at the kept fraction(s) ``fractions`` (one row of panels per fraction, one
    panel per objective; full-data runs in every panel), each bar labelled with its speed-up, hatched with
    Bullet-Train; the solid line is full-data training (no Bullet-Train) and the dotted one ``tolerance`` below it.
    What the chapter's fraction slider redraws."""
    import matplotlib.pyplot as plt

    from .pruning_study import METHODS
    fractions = [float(f) for f in (fractions if hasattr(fractions, "__iter__") else [fractions])]
    colors, _ = _method_style(frame)
    order = list(METHODS)
    objectives = list(dict.fromkeys(frame["objective"]))
    per = frame.groupby("objective")["method"].count().max()
    fig, axes = plt.subplots(len(fractions), len(objectives), squeeze=False,
                             figsize=(4.3 * len(objectives), 0.75 + 0.24 * per * len(fractions)))
    for row, f in zip(axes, fractions):
        for ax, objective in zip(row, objectives):
            t = frame[frame["objective"] == objective]
            ref = t[(t["method"] == "full") & ~t["bt"].astype(bool)]
            here = t[(t["fraction"] == f) | (t["method"] == "full")]
            here = here.iloc[sorted(range(len(here)), key=lambda i: (order.index(here["method"].iloc[i]),
                                                                      bool(here["bt"].iloc[i])))]
            labels = [f"{m}{' + BT' if bt else ''}" for m, bt in zip(here["method"], here["bt"])]
            ax.barh(range(len(here)), here[acc], color=[colors[m] for m in here["method"]], alpha=0.85,
                    hatch=["//" if bt else "" for bt in here["bt"]])
            for i, (a, s) in enumerate(zip(here[acc], here["speedup"])):
                ax.text(a + 0.005, i, f"{s:.2f}×", va="center", fontsize=7)
            if len(ref):
                ax.axvline(float(ref[acc].iloc[0]), color="k", lw=1)
                ax.axvline(float(ref[acc].iloc[0]) - tolerance, color="k", ls=":", lw=1)
            ax.set_yticks(range(len(here)), labels, fontsize=7)
            ax.invert_yaxis()   # full data on top, then the methods in the order of pruning_study.METHODS
            ax.set_xlim(0, min(1.0, float(t[acc].max()) + 0.15))
            ax.set_title(f"{objective}, f = {f:g}", fontsize=9)
            ax.set_xlabel("robust accuracy", fontsize=8)
            ax.grid(axis="x", alpha=0.3)
    return _finish(fig, title, caption)


def seed_strip(frame, *, by: str = "method", value: str = "pgd_acc", reference=None, tolerance: float = 0.0,
               title: str = "", caption: str = "", xlabel: str = "robust accuracy"):
    """Runs repeated with several seeds (``frame``: one row per run with ``by``, ``seed`` and ``value``): one row per
    value of ``by`` in order of appearance, a dot per seed (labelled with it) and a bar at the mean. With a
    ``reference`` (a value of ``by``) a solid line marks its mean and, with ``tolerance``, a dotted one that much
    below it — a comparison rule read on the means (:mod:`robustlib.seeds`)."""
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(frame[by]))
    fig, ax = plt.subplots(figsize=(6.2, 1.2 + 0.45 * len(labels)))
    if reference is not None:
        ref = float(frame[frame[by] == reference][value].mean())
        ax.axvline(ref, color="k", lw=1)
        if tolerance:
            ax.axvline(ref - tolerance, color="k", ls=":", lw=1)
    for i, label in enumerate(labels):
        t = frame[frame[by] == label]
        color = plt.cm.tab10(i % 10)
        ax.scatter(t[value], [i] * len(t), color=color, s=28, alpha=0.8, zorder=2)
        ax.plot([float(t[value].mean())] * 2, [i - 0.3, i + 0.3], color=color, lw=2.5, zorder=3)
        for x, s in zip(t[value], t["seed"]):
            ax.annotate(str(s), (x, i), xytext=(0, 5), textcoords="offset points", fontsize=6, ha="center")
    ax.set_yticks(range(len(labels)), [str(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, title, caption)


def class_shares(shares: dict, classes=(), *, title: str = "", caption: str = ""):
    """The class make-up of subsets (``shares``: label → one share per class, summing to 1): one row of bars per
    subset, a dashed line at the uniform share 1/C, so that a selector that leaves classes out shows at once."""
    import matplotlib.pyplot as plt

    labels = list(shares)
    n_classes = len(next(iter(shares.values()))) if shares else 0
    fig, axes = plt.subplots(len(labels), 1, figsize=(6.2, 0.5 + 0.9 * len(labels)), sharex=True, squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        ax.bar(range(n_classes), shares[label], color=plt.cm.tab10(labels.index(label) % 10))
        ax.axhline(1 / max(n_classes, 1), color="k", ls="--", lw=0.8)
        ax.set_ylabel(str(label), rotation=0, ha="right", va="center", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, max(0.25, max(max(v) for v in shares.values()) * 1.1))
    names = [str(c) for c in classes] if len(classes) == n_classes else [str(c) for c in range(n_classes)]
    axes[-1, 0].set_xticks(range(n_classes), names, rotation=30, ha="right", fontsize=7)
    return _finish(fig, title, caption)


def _finish(fig, title: str = "", caption: str = ""):
    """A figure's suptitle, tight layout and caption line (which preset, device and wall-clock made it)."""
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if caption:
        add_caption(fig, caption)
    return fig
