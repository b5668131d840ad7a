"""Training runs that survive interruption: checkpointed under ``results/<preset>/runs/``, keyed by configuration.

``history = runs.fit(runs_dir, "pgd-at", model, train, objective, epochs=30, ...)`` trains through
:func:`robustlib.train.fit` with the checkpoint ``<runs_dir>/<name>-<key>.pt``, where ``key`` is a digest of
everything that makes the run what it is:

* the run's name, the model's class, parameter shapes and **initial weights** (so another seed is another run);
* the data's name, size, shape and content digest;
* the objective's config, the selector's config (or class), every keyword argument of ``fit``, and the precision
  it trains in on the data's device (:mod:`robustlib.precision`: "auto" differs between devices);
* a function among them (a custom objective, an ``eval_fn``) by its name and a digest of its code, defaults and
  plain closure values (:func:`robustlib.digests.function_digest`): two lambdas are two runs.

A finished run is reloaded instead of retrained (its history, with the wall-clock of the original epochs, comes
back from the checkpoint); an unfinished one resumes after its last finished epoch; a changed configuration gets a
new key and never reuses a stale run. :class:`robustlib.reproduce.Record` wraps this as ``record.fit(...)`` and
keeps a summary of every run it used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from . import precision
from .digests import function_digest, tensor_digest
from .train import History, fit

_DIGESTS: dict = {}   # id(tensor) → (tensor, digest): data sets are hashed once per process


def _data_digest(data) -> str:
    cached = _DIGESTS.get(id(data))
    if cached is not None and cached[0] is data:
        return cached[1]
    digest = tensor_digest(data.images, data.labels)
    _DIGESTS[id(data)] = (data, digest)
    return digest


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "config"):
        return {"class": type(value).__name__, **_plain(value.config())}
    if hasattr(value, "__dict__") and not hasattr(value, "__code__"):   # e.g. a selector: its scalar settings
        return {"class": type(value).__name__,
                **{k: v for k, v in sorted(vars(value).items()) if isinstance(v, (str, int, float, bool))}}
    if callable(value):   # a function (an eval_fn, a schedule): its name and what it computes
        return function_digest(value)
    return repr(value)


def run_config(name: str, model: nn.Module, data, objective, kwargs: dict) -> dict:
    """Everything that identifies a training run (see the module docstring)."""
    data_ = data.data if hasattr(data, "data") and hasattr(data, "batch_size") else data
    selector = kwargs.get("selector")
    if hasattr(selector, "on_device"):   # its device-dependent defaults, as it will select
        selector.on_device(data_.device)
    return {
        "name": name,
        "model": {"class": type(model).__name__, "init": tensor_digest(*model.state_dict().values())},
        "data": {"name": data_.name, "n": len(data_), "shape": list(data_.shape), "digest": _data_digest(data_)},
        "objective": _plain(objective),
        **({"loader": _plain(data.config())} if data_ is not data else {}),   # a Loader: its seed, subset, …
        "fit": _plain({k: v for k, v in kwargs.items() if k not in ("progress", "desc", "callback")}),
        "precision": precision.label(*precision.resolve(data_.device, kwargs.get("amp", "auto"),
                                                        kwargs.get("channels_last", "auto"))),
    }


def run_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def fit_run(runs_dir, name: str, model: nn.Module, data, objective, **kwargs) -> tuple[History, dict]:
    """Train (or reload, or resume) the run; returns its history and a summary for the results record."""
    if "checkpoint" in kwargs:
        raise ValueError("a keyed run chooses its own checkpoint under runs_dir; do not pass checkpoint=")
    if "resume" in kwargs:
        raise ValueError("a keyed run always reloads or resumes its own checkpoint (its key names every setting); "
                         "for a fresh run give it another name, or delete its file under runs_dir")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    config = run_config(name, model, data, objective, kwargs)
    path = Path(runs_dir) / f"{safe}-{run_key(config)}.pt"
    history = fit(model, data, objective, checkpoint=path, resume=True, **kwargs)
    info = {"name": name, "key": run_key(config), "precision": config["precision"], "epochs": len(history),
            "reused_epochs": history.resumed_epochs, "train_wall_s": round(history.wall_s, 3),
            "devices": sorted(set(history.devices))}   # which machines trained its epochs (a reused run: another)
    return history, info
