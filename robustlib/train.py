"""The one training loop: :func:`fit`.

``fit(model, train, objective, epochs=...)`` runs mini-batch training with
SGD or Adam, a learning-rate schedule evaluated per step from the fractional
epoch t (so resuming needs no scheduler state), bf16 autocast and
channels-last on CUDA and AMX CPUs (:mod:`robustlib.precision`), per-epoch wall-clock measured between device
synchronisations, a progress bar, a history record per epoch, atomic
checkpoints with resume, and an epoch-boundary ``selector`` hook for data
pruning.

Objective protocol: an objective with ``start_epoch(epoch, epochs, history, model) -> dict`` is called before
every epoch (inside its timed region; the dict joins that epoch's record), and one with
``state_dict()``/``load_state_dict()`` is checkpointed — how certified training ramps ε and moves α.

Selector protocol: ``selector(epoch, model, data) -> None | (indices, weights)``
is called before every epoch (its time counts in that epoch's wall-clock);
returning indices (and optional per-example weights) makes the loader train
on that weighted subset until the next change. A selector with
``state_dict()``/``load_state_dict()`` is checkpointed too.
"""
from __future__ import annotations

import math
import numbers
import os
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from . import allocator, conv_kernels, distributed, machine, precision, run_state
from .checks import check_choice, check_int, check_real, progress_bar, trusted_inputs
from .data import ImageData, Loader
from .objectives import Custom, Objective

UNRECORDED_DEVICE = "an unrecorded machine (a checkpoint written before 2026-11-28)"
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")   # torch.compile(mode=...)


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
    """One dict per epoch; ``.frame()`` gives a pandas DataFrame; ``resumed_epochs`` came from a checkpoint;
    ``conv_kernels`` holds the kernel each tuned convolution used per direction (see :mod:`robustlib.conv_kernels`);
    ``precision`` what the steps ran in, e.g. "bf16 + channels-last" (:func:`robustlib.precision.label`);
    ``devices`` the device that trained each epoch (:func:`robustlib.machine.device_name`; a resumed or reloaded
    run keeps the one that trained its first epochs, or :data:`UNRECORDED_DEVICE` where its checkpoint predates
    this record)."""

    resumed_epochs = 0
    conv_kernels = None
    precision = None
    devices: list = []

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


def _make_optimizer(name, params, lr, momentum, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: 'sgd', 'adam'")


def _selection(chosen):
    """A selector's answer as ``(indices, weights)``, or None to keep the current subset."""
    if chosen is None:
        return None
    if isinstance(chosen, tuple):
        if len(chosen) != 2:
            raise ValueError(f"a selector must return None, indices, or a pair (indices, weights); got a "
                             f"{len(chosen)}-tuple")
        return chosen
    if isinstance(chosen, list) and not all(isinstance(i, numbers.Integral) for i in chosen):
        raise ValueError("a selector returned a list that is not a list of integer indices; return a tensor of "
                         "indices, a boolean mask, or a tuple (indices, weights)")
    return chosen, None


def fit(model: nn.Module, data: ImageData | Loader, objective: Objective, *, epochs: int,
        batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 5e-4, schedule: str = "multistep", milestones=None, gamma: float = 0.1,
        augment: str | None = None, drop_last: bool = False, selector=None, seed: int = 0,
        amp: bool | str = "auto", channels_last: bool | str = "auto", compile: bool | str = False,
        tune_convs: bool | str = "auto", checkpoint: str | os.PathLike | None = None, resume: bool = True, eval_fn=None,
        callback=None, progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` on ``data`` with ``objective`` for ``epochs`` epochs; return the :class:`History`.

    Under ``torchrun`` the same call trains data-parallel with DistributedDataParallel
    (:mod:`robustlib.distributed`; ``batch_size`` is per process). The loss of a batch is
    Σ_i w_i ℓ_i / N with ℓ the objective's per-example
    losses and w the loader's weights (1 unless a selector set a weighted
    subset). ``eval_fn(model) -> dict`` runs after each epoch (outside the
    timed region) and its entries join that epoch's record. ``callback(record)``
    runs after each epoch, before its checkpoint is written; a callback with a
    ``state_dict`` (e.g. :class:`~robustlib.scores.ForgettingCounter`) has it
    kept there, and a callback that raises still leaves the epoch checkpointed.
    Both draw their random numbers from a copy of the random state, and a
    selection from a stream seeded by (``seed``, epoch), so that neither moves
    the training's stream (and every rank of a data-parallel run selects the
    same subset). With ``checkpoint=path`` and ``resume=True``, a run that finds
    a checkpoint of the same run there (objective, selector, loader, data,
    model, every setting) continues after its last finished epoch; on CPU with
    the same seed it ends with the same weights as an uninterrupted run. An
    epoch whose loss is not finite is undone (weights, optimiser, the
    objective's and the selector's state, the subset) and raises.

    Speed options: ``amp`` (bf16 autocast) and ``channels_last`` default to on with CUDA and on a CPU with bf16
    matrix hardware (Intel AMX), off on other CPUs (:mod:`robustlib.precision`, which gives the measurements);
    ``compile`` wraps the network in ``torch.compile`` (``True``: its default mode; a string names the mode, e.g.
    ``"reduce-overhead"``, which replays the compiled kernels as CUDA graphs on a GPU); ``tune_convs`` ("auto": on
    a CPU without ``channels_last`` or ``compile``) computes every convolution's forward pass, input gradient and
    weight gradient with the kernel measured fastest for it on this machine (:mod:`robustlib.conv_kernels`; a
    resumed run keeps the kernels it started with). On a CPU, ``fit`` also fixes glibc's allocator thresholds once
    per process (:func:`robustlib.allocator.steady`).
    """
    epochs = check_int(epochs, "epochs", 1)
    if isinstance(compile, str):   # True / False, or one of torch.compile's modes
        check_choice(compile, COMPILE_MODES, "compile mode")
    lr = check_real(lr, "lr", positive=True)
    momentum = check_real(momentum, "momentum", minimum=0.0)
    if momentum >= 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    gamma = check_real(gamma, "gamma", positive=True)
    lr_factor(schedule, 0.0, epochs, milestones, gamma)  # validates the schedule name
    if not isinstance(objective, Objective):
        if not callable(objective):
            raise ValueError(f"objective must be a robustlib.objectives.Objective (e.g. Standard()) or a function "
                             f"fn(model, x, y) -> per-example losses, got {type(objective).__name__}")
        objective = Custom(objective)
    loader = data if isinstance(data, Loader) else Loader(data, batch_size, seed=seed, augment=augment,
                                                          drop_last=drop_last)
    device = loader.data.device
    parallel = distributed.active()          # started by torchrun: DistributedDataParallel on this rank's shard
    if parallel:
        device = distributed.setup(device)
        if loader.data.device != device:
            loader.data = loader.data.to(device)
        rank, world, _ = distributed.world()
        loader.shard(rank, world)
    if len(loader) == 0:
        raise ValueError(f"no batch to train on: {loader.num_examples} examples, batch_size {loader.batch_size}"
                         f"{f' × {loader.world} processes' if loader.world > 1 else ''}"
                         f"{', drop_last=True' if loader.drop_last else ''}; use a smaller batch_size or more data")
    main = not parallel or distributed.is_main()
    model.to(device)
    on_cuda = device.type == "cuda"
    use_amp, use_cl = precision.resolve(device, amp, channels_last)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    if not on_cuda:
        allocator.steady()   # large tensors reuse freed memory instead of fresh pages (robustlib.allocator)
    hooks = ExitStack()   # what the model carries only while it trains here
    try:   # from here on, a failure leaves the model with its plain convolutions (the except below)
        tuned = (not on_cuda and not use_cl and not compile) if tune_convs == "auto" else bool(tune_convs)
        tuned = tuned and conv_kernels.tune(model) > 0
        kernels = conv_kernels.active if tuned else nullcontext
        net = torch.compile(model, mode=compile if isinstance(compile, str) else None) if compile else model
        graphs = on_cuda and compile in ("reduce-overhead", "max-autotune")   # CUDA graphs: one generation per batch
        step = distributed.wrap(net, objective, device) if parallel else (lambda x, y, w: objective(net, x, y, w))
        opt = _make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext

        history, start_epoch = History(), 0
        history.devices, here = [], machine.device_name(device)
        history.precision = precision.label(use_amp, use_cl)
        if checkpoint is not None and not str(checkpoint).strip():
            raise ValueError("checkpoint must be a file path (e.g. 'run.pt') or None, got an empty string")
        ckpt = Path(checkpoint) if checkpoint is not None else None
        run = run_state.run_settings(model, loader, objective, epochs=epochs, optimizer=optimizer, lr=lr,
                                     momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                                     milestones=milestones, gamma=gamma, seed=seed,
                                     precision=history.precision, selector=selector,
                                     **({"processes": loader.world} if loader.world > 1 else {}))
        if ckpt is not None and resume and ckpt.exists():
            state = run_state.load_checkpoint(ckpt, device, run)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history.extend(state["history"])
            history.devices = list(state.get("devices") or [UNRECORDED_DEVICE] * len(state["history"]))
            if tuned:
                conv_kernels.install(model, state.get("conv_kernels"))
            start_epoch = history.resumed_epochs = state["epoch"]
            if state.get("subset") is not None:
                loader.set_subset(*state["subset"])
            if selector is not None and state.get("selector") is not None and hasattr(selector, "load_state_dict"):
                selector.load_state_dict(state["selector"])
            if state.get("objective") is not None and hasattr(objective, "load_state_dict"):
                objective.load_state_dict(state["objective"])
            if state.get("callback") is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(state["callback"])
            run_state.set_rng(state, device, on_cuda, loader.rank, loader.world)

        if start_epoch == 0:   # the objective's randomness (attack starts) is part of the run's seed; each rank its own
            torch.manual_seed(seed + run_state.RANK_SEED_STRIDE * loader.rank)
            if hasattr(objective, "reset_state"):   # an objective used before starts afresh (α, w, validation record)
                objective.reset_state()
        bar = progress_bar(total=epochs, initial=start_epoch, desc=desc or objective.name, unit="epoch",
                           disable=not (progress and main))
        if use_cl and not compile:   # a Flatten hands its gradient back channels-last (robustlib.precision)
            hooks.enter_context(precision.channels_last_gradients(model))
        if use_cl and not on_cuda:   # a oneDNN bug: some 1×1 convolutions stay NCHW
            # (conv_kernels.nhwc_weight_grad_broken)
            hooks.enter_context(conv_kernels.nchw_where_nhwc_breaks(model))
        for epoch in range(start_epoch, epochs):
            good = run_state.snapshot(model, opt, objective, loader, selector)   # restored on a NaN loss (untimed)
            synchronize(device)
            t0 = time.perf_counter()
            select_s = 0.0
            if selector is not None:
                # a selection draws from its own seeded stream: every rank of a data-parallel run picks the same
                # subset, and the training stream does not depend on how many numbers the selection drew
                with kernels(), run_state.forked_rng(device, seed * 1_000_003 + epoch):   # tuned convolutions too
                    chosen = _selection(selector(epoch, model, loader.data))
                if chosen is not None:
                    loader.set_subset(*chosen)
                synchronize(device)
                select_s = time.perf_counter() - t0
            loader.epoch = epoch
            schedule_info = {}
            if hasattr(objective, "start_epoch"):   # per-epoch state of the objective (ε ramp, α, w): timed, recorded
                schedule_info = objective.start_epoch(epoch, epochs, history, model) or {}
            model.train()
            objective.reset_spent()
            total, seen = torch.zeros((), device=device), 0
            n_batches = len(loader)
            for i, (x, y, w) in enumerate(loader):
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(schedule, epoch + i / n_batches, epochs, milestones, gamma)
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                if not parallel:   # a perturbation memory learns which examples these are (one shard per rank: not fed)
                    objective.batch_indices = loader.batch_indices
                checked = nullcontext() if (epoch == start_epoch and i == 0) else trusted_inputs()
                if graphs:   # the batch's graph replays may overwrite the last batch's outputs, never this one's
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast(), checked, kernels():  # attacks validate the first batch only: no host sync per step
                    per_example = step(x, y, w)
                loss = per_example.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(y)
                seen += len(y)
            objective.batch_indices = None   # outside fit, a call to the objective writes no memory
            synchronize(device)
            wall = time.perf_counter() - t0
            spent = objective.reset_spent()
            if parallel:   # the history describes the whole run: sums over ranks, the slowest rank's time
                keys = sorted(spent)
                sums = distributed.reduce([float(total), seen] + [spent[k] for k in keys], "sum", device)
                total, seen, spent = sums[0], int(sums[1]), {k: int(v) for k, v in zip(keys, sums[2:])}
                wall, select_s = distributed.reduce([wall, select_s], "max", device)
            spent = objective.summarize(spent)   # fractions and other figures derived from the summed counts
            mean_loss = float(total) / max(seen, 1)
            if not math.isfinite(mean_loss):
                run_state.restore(good, model, opt, objective, loader, selector)
                bar.close()
                kept = (f"; the checkpoint {ckpt} keeps epoch {epoch}, and refuses to resume with other settings: "
                        f"for a lower learning rate pass another checkpoint path or resume=False") if ckpt else ""
                raise FloatingPointError(f"training loss became {mean_loss} in epoch {epoch + 1}; the model, the "
                                         f"optimiser, the objective's and the selector's state and the subset were "
                                         f"restored to their state before that epoch; lower the learning rate "
                                         f"(lr={lr}) or check the inputs and the objective for NaN{kept}")
            record = {"epoch": epoch + 1, "loss": mean_loss, "lr": opt.param_groups[0]["lr"], "wall_s": wall,
                      "select_s": select_s, "examples": loader.distinct_examples, "seen": spent.pop("examples"),
                      **spent, **{k: run_state.plain(v) for k, v in schedule_info.items()}}
            if eval_fn is not None:
                t1 = time.perf_counter()
                with run_state.forked_rng(device):   # an evaluation's random draws leave the training stream alone
                    metrics = {k: run_state.plain(v) for k, v in eval_fn(model).items()} if main else None
                record.update(distributed.broadcast(metrics, device) if parallel else metrics)
                record["eval_s"] = time.perf_counter() - t1
            history.append(record)
            history.devices.append(here)
            # every rank's random state, gathered before the callback (which may stop a rank) and kept by rank 0
            rngs = distributed.gather(run_state.rng_state(device, on_cuda)) if ckpt is not None and parallel else None

            def save():
                if ckpt is None or not main:
                    return
                subset = None if loader.indices is None else (loader.indices, loader.weights)
                run_state.save_checkpoint(ckpt, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                    "history": list(history), "devices": list(history.devices), "subset": subset,
                    "rng": torch.get_rng_state(), "run": run,
                    "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None, "rng_ranks": rngs,
                    "selector": selector.state_dict() if hasattr(selector, "state_dict") else None,
                    "objective": objective.state_dict() if hasattr(objective, "state_dict") else None,
                    "callback": callback.state_dict() if hasattr(callback, "state_dict") else None,
                    "conv_kernels": conv_kernels.plans(model) if tuned else None,
                })
            if callback is not None:   # before the checkpoint, which keeps the callback's state (state_dict)
                try:
                    with run_state.forked_rng(device):   # its draws leave the training stream alone: exact resumes
                        callback(record)
                except BaseException:   # a callback that stops the run: the finished epoch is kept all the same
                    save()
                    raise
            save()
            if ckpt is not None and parallel:
                distributed.barrier()   # no rank runs ahead of the checkpoint it might resume from
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", s=f"{wall:.1f}")
    except BaseException:   # interrupted or failed: the model leaves with its plain convolutions
        conv_kernels.untune(model)
        raise
    finally:
        hooks.close()
        objective.batch_indices = None   # a call outside fit writes no memory, even after an interrupted epoch
    bar.close()
    if use_cl:
        model.to(memory_format=torch.contiguous_format)
    if tuned:
        history.conv_kernels = conv_kernels.plans(model)
        conv_kernels.untune(model)
    model.eval()
    return history
