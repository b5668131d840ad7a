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
