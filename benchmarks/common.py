"""What every benchmark script shares: the device's name, library versions, and one JSON format for results.

``write_result(name, device, settings, figures, ratios)`` writes ``benchmarks/results/<name>-<device kind>.json``
with the device name, library versions, the date, the settings, the raw figures and every ratio (each ratio is
measured against a baseline run in the same process). Speed is never measured by a timed test.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustlib.precision import describe
from robustlib.reproduce import device_name, versions

# where results go: benchmarks/results/, or $ROBUSTLIB_BENCH_RESULTS (run_all.sh quick points it at a temporary
# folder, so that a check of the scripts never overwrites the committed figures)
RESULTS = Path(os.environ.get("ROBUSTLIB_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def device_kind(device) -> str:
    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int = 1) -> float:
    """Best-of-``repeat`` wall-clock seconds of ``fn()``, between device synchronisations."""
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def write_result(name: str, device, settings: dict, figures, ratios: dict) -> Path:
    """benchmarks/results/<name>-<cpu|cuda>.json, or $ROBUSTLIB_BENCH_RESULTS; a ``--quick`` run (``settings["quick"]``),
    whose sizes mean nothing, goes to a fresh temporary folder unless that variable names one, never over the
    committed figures."""
    folder = RESULTS
    if settings.get("quick") and not os.environ.get("ROBUSTLIB_BENCH_RESULTS"):
        folder = Path(tempfile.mkdtemp(prefix=f"bench_{name}_quick_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device_kind(device)}.json"
    payload = {"benchmark": name, "device": device_name(device),
               "fit_default_precision": describe(device),   # what fit and the pruning scores run in unless told
               "versions": versions(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "settings": settings,
               "figures": figures, "ratios": ratios}
    path.write_text(json.dumps(payload, indent=1))
    return path


@contextlib.contextmanager
def settings(**values):
    """Settings of ``robustlib.bounds`` set for the block (``NAME=value`` for ``robustlib.bounds.symbolic.NAME``,
    ``module__NAME=value`` for another module of ``robustlib.bounds``, e.g. ``crops__INDEX_SELECT``): the before of
    a choice, timed in the same process as the after. Each setting gets its own value back afterwards."""
    targets = []
    for key, value in values.items():
        where, _, name = key.rpartition("__")
        targets.append((importlib.import_module(f"robustlib.bounds.{where or 'symbolic'}"), name, value))
    saved = [getattr(m, name) for m, name, _ in targets]
    for m, name, value in targets:
        setattr(m, name, value)
    try:
        yield
    finally:
        for (m, name, _), value in zip(targets, saved):
            setattr(m, name, value)


def switched_off(*flags):
    """The named switches of ``robustlib.bounds.symbolic`` off for the block (``CROP_LINEAR``, ``CROPS``,
    ``PATCHES``, ``SHORTCUTS``; ``module.NAME`` for another module of ``robustlib.bounds``, e.g.
    ``crops.INDEX_SELECT``): the before of those changes (:func:`settings`)."""
    return settings(**{f.replace(".", "__"): False for f in flags})
