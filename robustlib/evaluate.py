"""Evaluation: clean, attacked and certified accuracy in one tidy record.

``robustness(model, test, eps, attacks=(...), certify=(...))`` returns a
flat dict ``{"n", "eps", "clean_acc", "<attack>_acc", "<method>_verified_acc",
"seconds": {...}}``. A point counts as robust to an attack only if it is
classified correctly both clean and under that attack.

Attacks and certifiers are looked up by name in :data:`ATTACKS` and
:data:`CERTIFIERS`; ``robustlib.attacks`` and ``robustlib.bounds`` register
theirs (``"pgd-20"``, ``"autoattack"``, ``"interval"``, ``"symbolic"``, …).
An attack is ``fn(model, x, y, eps) -> x_adv``; a certifier is
``fn(model, x, y, eps) -> bool tensor`` (True = verified robust).
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from .data import ImageData

ATTACKS: dict = {}
CERTIFIERS: dict = {}
_PATTERNS: list = []  # (prefix, factory): "pgd-50" -> factory(50)


def register_attack(name: str, fn) -> None:
    ATTACKS[name] = fn


def register_certifier(name: str, fn) -> None:
    CERTIFIERS[name] = fn


def register_attack_family(prefix: str, factory) -> None:
    """Names ``f"{prefix}-{K}"`` resolve to ``factory(K)`` (e.g. ``pgd-50``)."""
    _PATTERNS.append((prefix, factory))


def attack_fn(name: str):
    if name in ATTACKS:
        return ATTACKS[name]
    for prefix, factory in _PATTERNS:
        head, _, tail = name.rpartition("-")
        if head == prefix and tail.isdigit():
            return factory(int(tail))
    known = sorted(ATTACKS) + [f"{p}-K" for p, _ in _PATTERNS]
    raise ValueError(f"unknown attack {name!r}; available: {', '.join(known) or 'none registered'}")


def certifier_fn(name: str):
    if name not in CERTIFIERS:
        raise ValueError(f"unknown certification method {name!r}; available: "
                         f"{', '.join(sorted(CERTIFIERS)) or 'none registered'}")
    return CERTIFIERS[name]


def _batches(data: ImageData, n: int | None, batch_size: int):
    total = len(data) if n is None else min(n, len(data))
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=data.device)
        yield data.x(idx), data.labels[idx]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels of ``x`` in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, data: ImageData, n: int | None = None, batch_size: int = 1024) -> float:
    """Clean accuracy on the first ``n`` examples of ``data`` (all by default)."""
    correct = total = 0
    for x, y in _batches(data, n, batch_size):
        correct += (predict(model, x, batch_size) == y).sum()
        total += len(y)
    return float(correct) / max(total, 1)


def robustness(model: nn.Module, data: ImageData, eps: float = 0.0, attacks=(), certify=(),
               n: int | None = None, batch_size: int = 256, progress: bool = True) -> dict:
    """Clean, per-attack robust and per-method verified accuracy on the first ``n`` examples.

    A progress bar over batches appears when attacks or certification run
    (``progress=False`` or ``ROBUSTLIB_PROGRESS=off`` hides it).
    """
    from .train import progress_bar

    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    attack_fns = {name: attack_fn(name) for name in attacks}
    cert_fns = {name: certifier_fn(name) for name in certify}
    was_training = model.training
    model.eval()
    counts = {"clean": 0, **{a: 0 for a in attacks}, **{c: 0 for c in certify}}
    seconds = {k: 0.0 for k in counts}
    total = 0
    total_n = len(data) if n is None else min(n, len(data))
    bar = progress_bar(total=total_n, desc=f"ε={eps:g} " + ",".join([*attacks, *certify]), unit="img",
                       leave=False, disable=not (progress and (attacks or certify)))
    try:
        for x, y in _batches(data, n, batch_size):
            t = time.perf_counter()
            ok = predict(model, x) == y
            seconds["clean"] += time.perf_counter() - t
            counts["clean"] += ok.sum()
            for name, fn in attack_fns.items():
                t = time.perf_counter()
                x_adv = fn(model, x, y, eps)
                counts[name] += (ok & (predict(model, x_adv) == y)).sum()
                seconds[name] += time.perf_counter() - t
            for name, fn in cert_fns.items():
                t = time.perf_counter()
                counts[name] += (ok & fn(model, x, y, eps).to(ok.device)).sum()
                seconds[name] += time.perf_counter() - t
            total += len(y)
            bar.update(len(y))
    finally:
        bar.close()
        model.train(was_training)
    record = {"n": total, "eps": float(eps), "clean_acc": float(counts["clean"]) / max(total, 1)}
    for a in attacks:
        record[f"{a}_acc"] = float(counts[a]) / max(total, 1)
    for c in certify:
        record[f"{c}_verified_acc"] = float(counts[c]) / max(total, 1)
    record["seconds"] = seconds
    return record
