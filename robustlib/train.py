"""The one training loop: :func:`fit`.

``fit(model, train, objective, epochs=...)`` runs mini-batch training with
SGD or Adam, a learning-rate schedule evaluated per step from the fractional
epoch t (so resuming needs no scheduler state), bf16 autocast and
channels-last on CUDA, per-epoch wall-clock measured between device
synchronisations, a progress bar, a history record per epoch, atomic
checkpoints with resume, and an epoch-boundary ``selector`` hook for data
pruning.

Selector protocol: ``selector(epoch, model, data) -> None | (indices, weights)``
is called before every epoch (its time counts in that epoch's wall-clock);
returning indices (and optional per-example weights) makes the loader train
on that weighted subset until the next change. A selector with
``state_dict()``/``load_state_dict()`` is checkpointed too.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from .attacks import trusted_inputs
from .data import ImageData, Loader
from .objectives import Objective

SCHEDULES = ("constant", "multistep", "cosine", "onecycle")


def lr_factor(schedule: str, t: float, epochs: int, milestones=None, gamma: float = 0.1,
              peak: float = 0.4) -> float:
    """Learning-rate multiplier at fractional epoch ``t`` ∈ [0, epochs).

    ``multistep``: × γ at each milestone epoch (default: 50% and 75% of the run).
    ``cosine``: ½(1 + cos(π t / E)). ``onecycle``: linear 0 → 1 over the first
    ``peak`` fraction, then linear → 0 (the cyclic schedule of fast AT).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        ms = milestones if milestones is not None else (epochs * 0.5, epochs * 0.75)
        return gamma ** sum(t >= m for m in ms)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t / epochs, 1.0)))
    if schedule == "onecycle":
        p = t / epochs
        return p / peak if p < peak else max(0.0, (1 - p) / (1 - peak))
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


class History(list):
    """One dict per epoch; ``.frame()`` gives a pandas DataFrame."""

    def frame(self):
        import pandas as pd
        return pd.DataFrame(list(self))

    @property
    def wall_s(self) -> float:
        """Total training wall-clock (selection included, evaluation excluded)."""
        return float(sum(r["wall_s"] for r in self))


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def progress_bar(iterable=None, **kwargs):
    """tqdm (notebook or terminal, chosen automatically); ``ROBUSTLIB_PROGRESS=off`` hides it."""
    from tqdm.auto import tqdm
    disable = kwargs.pop("disable", False) or os.environ.get("ROBUSTLIB_PROGRESS", "on") == "off"
    return tqdm(iterable, disable=disable, **kwargs)


def _make_optimizer(name, params, lr, momentum, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: 'sgd', 'adam'")


def _plain(value):
    """Tensors and numpy scalars as Python numbers, so checkpoints load with ``weights_only=True``."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint


def fit(model: nn.Module, data: ImageData | Loader, objective: Objective, *, epochs: int,
        batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 5e-4, schedule: str = "multistep", milestones=None, gamma: float = 0.1,
        augment: str | None = None, drop_last: bool = False, selector=None, seed: int = 0,
        amp: bool | str = "auto", channels_last: bool | str = "auto", compile: bool = False,
        checkpoint: str | os.PathLike | None = None, resume: bool = True, eval_fn=None,
        callback=None, progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` on ``data`` with ``objective`` for ``epochs`` epochs; return the :class:`History`.

    The loss of a batch is Σ_i w_i ℓ_i / N with ℓ the objective's per-example
    losses and w the loader's weights (1 unless a selector set a weighted
    subset). ``eval_fn(model) -> dict`` runs after each epoch (outside the
    timed region) and its entries join that epoch's record. ``callback(record)``
    runs after each epoch's checkpoint is written. With ``checkpoint=path`` and
    ``resume=True``, a run that finds a checkpoint there continues after its
    last finished epoch; on CPU with the same seed it ends with the same
    weights as an uninterrupted run.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number, got {lr}")
    lr_factor(schedule, 0.0, epochs, milestones, gamma)  # validates the schedule name
    loader = data if isinstance(data, Loader) else Loader(data, batch_size, seed=seed, augment=augment,
                                                          drop_last=drop_last)
    device = loader.data.device
    model.to(device)
    on_cuda = device.type == "cuda"
    use_amp = on_cuda if amp == "auto" else bool(amp)
    use_cl = on_cuda if channels_last == "auto" else bool(channels_last)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    opt = _make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext

    history, start_epoch = History(), 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history.extend(state["history"])
        start_epoch = state["epoch"]
        if state.get("subset") is not None:
            loader.set_subset(*state["subset"])
        if selector is not None and state.get("selector") is not None and hasattr(selector, "load_state_dict"):
            selector.load_state_dict(state["selector"])
        torch.set_rng_state(state["rng"].cpu())
        if on_cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)

    if start_epoch == 0:
        torch.manual_seed(seed)  # the objective's randomness (attack starts) is part of the run's seed
    bar = progress_bar(total=epochs, initial=start_epoch, desc=desc or objective.name, unit="epoch",
                       disable=not progress)
    for epoch in range(start_epoch, epochs):
        synchronize(device)
        t0 = time.perf_counter()
        select_s = 0.0
        if selector is not None:
            chosen = selector(epoch, model, loader.data)
            if chosen is not None:
                indices, weights = chosen if isinstance(chosen, tuple) else (chosen, None)
                loader.set_subset(indices, weights)
            synchronize(device)
            select_s = time.perf_counter() - t0
        loader.epoch = epoch
        model.train()
        objective.reset_spent()
        total, seen = torch.zeros((), device=device), 0
        n_batches = len(loader)
        for i, (x, y, w) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(schedule, epoch + i / n_batches, epochs, milestones, gamma)
            if use_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            checked = nullcontext() if (epoch == start_epoch and i == 0) else trusted_inputs()
            with autocast(), checked:  # attacks validate the first batch only: no host sync per step
                per_example = objective(net, x, y, w)
            loss = per_example.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
            seen += len(y)
        synchronize(device)
        wall = time.perf_counter() - t0
        mean_loss = float(total) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training loss became {mean_loss} in epoch {epoch + 1}; "
                                     f"lower the learning rate (lr={lr}) or check the inputs for NaN")
        record = {"epoch": epoch + 1, "loss": mean_loss, "lr": opt.param_groups[0]["lr"], "wall_s": wall,
                  "select_s": select_s, "examples": loader.num_examples, **objective.reset_spent()}
        if eval_fn is not None:
            t1 = time.perf_counter()
            record.update({k: _plain(v) for k, v in eval_fn(model).items()})
            record["eval_s"] = time.perf_counter() - t1
        history.append(record)
        if ckpt is not None:
            subset = None if loader.indices is None else (loader.indices, loader.weights)
            _save_checkpoint(ckpt, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                "history": list(history), "subset": subset, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
                "selector": selector.state_dict() if hasattr(selector, "state_dict") else None,
            })
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", s=f"{wall:.1f}")
        if callback is not None:
            callback(record)
    bar.close()
    if use_cl:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history
