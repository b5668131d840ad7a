"""What a training checkpoint keeps and how a run resumes: which run a checkpoint belongs to, the random
states (every rank's in a data-parallel run), the roll-back of an epoch whose loss is not finite, durable writes.

:func:`robustlib.train.fit` is the only user; a checkpoint is a plain dict that loads with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path

import torch


def plain(value):
    """Tensors and numpy scalars as Python numbers, so checkpoints load with ``weights_only=True``."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def run_settings(model, loader, objective, selector=None, **settings) -> dict:
    """What makes a run this run: a checkpoint of another run is never resumed as if it were this one."""
    data = loader.data
    return {
        "objective": {k: plain(v) for k, v in objective.config().items()},
        **{k: (list(v) if isinstance(v, tuple) else plain(v)) for k, v in settings.items()},
        "loader": loader.config(),
        "selector": None if selector is None else {
            "class": type(selector).__name__,
            **{k: plain(v) for k, v in (selector.config() if hasattr(selector, "config") else {}).items()}},
        "data": {"name": data.name, "n": len(data), "shape": list(data.shape)},
        "model": {"class": type(model).__name__,
                  "parameters": [[k, list(v.shape)] for k, v in model.state_dict().items()]},
    }


def _upgraded(saved: dict, now: dict) -> dict:
    """A run written before 2026-11-28 kept the loader's batch size, augmentation and drop_last at the top and no
    selector or loader seed: compare what it recorded, so that its checkpoint still resumes."""
    if "loader" in saved:
        return saved
    old = dict(saved)
    kept = {k: old.pop(k) for k in ("batch_size", "augment", "drop_last") if k in old}
    old["loader"] = {**now.get("loader", {}), **kept}
    old.setdefault("selector", now.get("selector"))
    return old


def differences(saved: dict, now: dict) -> list:
    """How a checkpoint's run settings differ from this run's, one line per setting (empty: the same run)."""
    out = []
    saved = _upgraded(saved, now)
    for key in sorted(set(saved) | set(now)):
        if key == "precision" and key not in saved:   # written before 2026-11-27, when runs did not record it
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            if key == "model":
                a, b = (a or {}).get("class", a), (b or {}).get("class", b)
                out.append(f"model: {a} with other parameter shapes" if a == b else f"model: {a} → {b}")
            else:
                out.append(f"{key}: {a!r} → {b!r}")
    return out


@contextmanager
def forked_rng(device, seed: int | None = None):
    """Run a block on a copy of the global random state (CUDA's too), seeded with ``seed`` when given; the state
    outside the block is left as it was."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def snapshot(model, opt, objective, loader, selector) -> tuple:
    """What an epoch changes: the weights, the optimiser, the objective's and the selector's state, the subset."""
    def state(x):
        return copy.deepcopy(x.state_dict()) if hasattr(x, "state_dict") else None
    return ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()), state(objective),
            state(selector), (loader.indices, loader.weights))


def restore(good: tuple, model, opt, objective, loader, selector) -> None:
    """Put back what :func:`snapshot` took."""
    weights, optimizer, objective_state, selector_state, subset = good
    model.load_state_dict(weights)
    opt.load_state_dict(optimizer)
    if objective_state is not None:
        objective.load_state_dict(objective_state)
    if selector_state is not None:
        selector.load_state_dict(selector_state)
    loader.set_subset(*subset)


RANK_SEED_STRIDE = 1_000_033   # rank r of a data-parallel run seeds its stream with seed + r × this


def rng_state(device, on_cuda: bool) -> tuple:
    """This process's random state: the CPU generator's and, on CUDA, the device's."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if on_cuda else None)


def set_rng(state: dict, device, on_cuda: bool, rank: int, world: int) -> None:
    """This rank's random state from a checkpoint (rank 0's where the checkpoint kept only one)."""
    ranks = state.get("rng_ranks")
    cpu, cuda = ranks[rank] if ranks is not None and len(ranks) == world else (state["rng"], state.get("cuda_rng"))
    torch.set_rng_state(cpu.cpu())
    if on_cuda and cuda is not None:
        torch.cuda.set_rng_state(cuda.cpu(), device)


_CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "rng", "run")


def load_checkpoint(path: Path, device, run: dict) -> dict:
    """Read a checkpoint of this very run, or say clearly why it cannot be resumed (the model is untouched)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError for a truncated zip, …
        raise ValueError(f"cannot read the checkpoint {path} ({type(exc).__name__}): it is empty, truncated or not a "
                         f"robustlib training checkpoint. Delete it to start the run afresh, or pass resume=False "
                         f"(or another checkpoint path).") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"the checkpoint {path} lacks {', '.join(missing)}: it was not written by this version of "
                         f"robustlib.train.fit. Delete it to start the run afresh, or pass resume=False.")
    diff = differences(state["run"], run)
    if diff:
        raise ValueError(f"the checkpoint {path} belongs to another run; it differs in: {'; '.join(diff)}. Use another "
                         f"checkpoint path for this run, delete the file, or pass resume=False to overwrite it.")
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` so that a crash at any moment leaves the previous checkpoint or this one, whole: into a
    temporary file, flushed to the disk, then renamed over the old one (and the rename flushed too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:   # the directory entry of the rename (POSIX; Windows cannot open a directory)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
