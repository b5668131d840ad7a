"""Evaluation: clean, attacked and certified accuracy in one tidy record.

``robustness(model, test, eps, attacks=(...), certify=(...))`` returns a
flat dict ``{"n", "eps", "clean_acc", "<attack>_acc", "<method>_verified_acc",
"seconds": {"clean", "attack": {...}, "certify": {...}}}``. A point counts as
robust to an attack only if it is classified correctly both clean and under
that attack; it counts as verified only if it is classified correctly and
certified.

This module owns the two tables of evaluation names; nothing registers into
it from below, so the imports stay one-way (attacks, bounds → evaluate):

* :data:`ATTACKS` — ``fn(model, x, y, eps) -> x_adv``: ``"fgsm"``,
  ``"autoattack"``, ``"interval-attack"`` (the MixTrain interval-gradient
  attack) and the family ``"pgd-K"`` (:data:`FAMILIES`);
* :data:`CERTIFIERS` — ``fn(model, x, y, eps) -> bool tensor`` (True =
  verified robust): ``"interval"`` (IBP) and ``"symbolic"``.

Attacks and certifiers live in separate tables, counters and timing entries,
so an attack and a certificate can never be mixed up even where their
names read alike; :func:`register_attack` / :func:`register_certifier` add
your own and refuse a name that the other table already uses, or one whose figure would overwrite another's
(an attack called ``"clean"`` or ``"<name>_verified"``). Labels outside the model's classes are refused.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from . import attacks as _attacks
from . import bounds as _bounds
from .checks import check_eps, eval_mode, progress_bar
from .data import ImageData


def _pgd_family(steps: int, restarts: int = 1):
    """``pgd-K`` (``pgd-KxR``): L∞ PGD, K steps, α = 2.5·ε/K, CE loss, R random restarts (default 1)."""
    if steps < 1 or restarts < 1:
        raise ValueError(f"pgd-K needs K ≥ 1 steps and R ≥ 1 restarts, got pgd-{steps}x{restarts}")

    def attack(model, x, y, eps):
        return _attacks.pgd(model, x, y, eps, steps=steps, norm="linf", restarts=restarts, random_start=True,
                            loss="ce")

    attack.__name__ = f"pgd_{steps}x{restarts}"
    return attack


ATTACKS: dict = {
    "fgsm": lambda model, x, y, eps: _attacks.fgsm(model, x, y, eps),
    "autoattack": lambda model, x, y, eps: _attacks.autoattack(model, x, y, eps),
    "interval-attack": lambda model, x, y, eps: _attacks.interval_attack(model, x, y, eps),
}
FAMILIES: dict = {"pgd": _pgd_family}   # "pgd-50" → FAMILIES["pgd"](50); "pgd-20x10" → FAMILIES["pgd"](20, 10)
CERTIFIERS: dict = {
    "interval": lambda model, x, y, eps: _bounds.verify(model, x, y, eps, method="interval"),
    "symbolic": lambda model, x, y, eps: _bounds.verify(model, x, y, eps, method="symbolic"),
}


def register_attack(name: str, fn) -> None:
    """Make ``robustness(..., attacks=(name,))`` run ``fn(model, x, y, eps) -> x_adv``."""
    if name in CERTIFIERS:
        raise ValueError(f"{name!r} already names a certifier; give the attack another name")
    _check_record_keys((name,), ())
    ATTACKS[name] = fn


def _check_record_keys(attack_names, cert_names) -> None:
    """Every figure gets a key of its own in the record: an attack named "clean" would overwrite ``clean_acc``,
    one named "symbolic_verified" the symbolic certifier's ``symbolic_verified_acc``."""
    seen = {"clean_acc": "the clean accuracy"}
    for key, what in [(f"{a}_acc", f"the attack {a!r}") for a in attack_names] + \
                     [(f"{c}_verified_acc", f"the certifier {c!r}") for c in cert_names]:
        if key in seen or (what.startswith("the attack") and key.endswith("_verified_acc")):
            other = seen.get(key, "a certifier's figure")
            raise ValueError(f"{what} would write the record's {key!r}, which holds {other}; give it another name")
        seen[key] = what


def register_certifier(name: str, fn) -> None:
    """Make ``robustness(..., certify=(name,))`` run ``fn(model, x, y, eps) -> bool tensor``."""
    if name in ATTACKS or _family(name) is not None:
        raise ValueError(f"{name!r} already names an attack; give the certifier another name")
    CERTIFIERS[name] = fn


def _family(name: str):
    """``"pgd-20"`` → (factory, (20,)); ``"pgd-20x10"`` → (factory, (20, 10)); else None."""
    head, _, tail = name.rpartition("-")
    numbers = tail.split("x")
    if head in FAMILIES and 1 <= len(numbers) <= 2 and all(n.isascii() and n.isdigit() for n in numbers):
        return FAMILIES[head], tuple(int(n) for n in numbers)
    return None


def attack_fn(name: str):
    """The attack called ``name``: ``"fgsm"``, ``"pgd-20"``, ``"pgd-20x10"``, ``"autoattack"``,
    ``"interval-attack"``."""
    if name in ATTACKS:
        return ATTACKS[name]
    fam = _family(name)
    if fam is not None:
        return fam[0](*fam[1])
    known = sorted(ATTACKS) + [f"{p}-K" for p in FAMILIES]
    hint = " (that is a certifier: pass it as certify=(...))" if name in CERTIFIERS else ""
    raise ValueError(f"unknown attack {name!r}{hint}; available: {', '.join(known)}")


def certifier_fn(name: str):
    """The certifier called ``name`` (``"interval"`` or ``"symbolic"``)."""
    if name not in CERTIFIERS:
        hint = " (that is an attack: pass it as attacks=(...))" if name in ATTACKS or _family(name) else ""
        raise ValueError(f"unknown certification method {name!r}{hint}; available: {', '.join(sorted(CERTIFIERS))}")
    return CERTIFIERS[name]


def _resolve(value, what: str, lookup) -> dict:
    """``{name: fn}`` from names (one string is one name) or from a dict of ready functions."""
    if isinstance(value, dict):
        for name, fn in value.items():
            if not isinstance(name, str) or not callable(fn):
                raise ValueError(f"{what} as a dict must map names to functions fn(model, x, y, eps), got "
                                 f"{name!r}: {fn!r}")
        return dict(value)
    return {name: lookup(name) for name in _names(value, what)}


def _names(value, what: str) -> tuple:
    """A tuple of names; a single string is one name (``attacks="pgd-20"``)."""
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{what} must be a name or a sequence of names, got {value!r}") from None
    for n in names:
        if not isinstance(n, str):
            raise ValueError(f"{what} must hold names (strings), got {n!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a name twice: {names}")
    return names


def _batches(data: ImageData, n: int | None, batch_size: int):
    total = len(data) if n is None else min(n, len(data))
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=data.device)
        yield data.x(idx), data.labels[idx]


def _check_sizes(n, batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be None (all examples) or an integer ≥ 0, got {n!r}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels of ``x`` in eval mode (every module's train/eval flag is restored)."""
    _check_sizes(None, batch_size)
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _check_labels(model: nn.Module, data: ImageData, total: int) -> None:
    """The labels of the examples evaluated lie among the model's classes (else they would silently count as
    wrong): one forward pass on one example and one host read."""
    if total == 0:
        return
    with torch.no_grad(), eval_mode(model):
        k = model(data.x(torch.arange(1, device=data.device))).shape[-1]
    lo, hi = torch.aminmax(data.labels[:total])
    if int(lo) < 0 or int(hi) >= k:
        raise ValueError(f"the labels span {int(lo)}..{int(hi)} but the model has {k} classes (0..{k - 1}); "
                         f"evaluate the model on data with its own classes")


def accuracy(model: nn.Module, data: ImageData, n: int | None = None, batch_size: int = 1024) -> float:
    """Clean accuracy on the first ``n`` examples of ``data`` (all by default)."""
    _check_sizes(n, batch_size)
    _check_labels(model, data, len(data) if n is None else min(n, len(data)))
    correct = total = 0
    for x, y in _batches(data, n, batch_size):
        correct += (predict(model, x, batch_size) == y).sum()
        total += len(y)
    return float(correct) / max(total, 1)


def _in_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per sample: does ``x_adv`` lie in the L∞ box ``[x − ε, x + ε] ∩ [0, 1]`` that the certifiers bound (up to
    float rounding of the projection)?"""
    tol = 1e-6 * max(eps, 1.0)
    dist = (x_adv - x).flatten(1).abs().amax(1) <= eps + tol
    lo, hi = x_adv.flatten(1).amin(1), x_adv.flatten(1).amax(1)
    return dist & (lo >= -tol) & (hi <= 1 + tol)


def robustness(model: nn.Module, data: ImageData, eps: float = 0.0, attacks=(), certify=(),
               n: int | None = None, batch_size: int = 256, progress: bool = True,
               per_example: bool = False, skip_refuted: bool = True) -> dict:
    """Clean, per-attack robust and per-method verified accuracy on the first ``n`` examples.

    The certifiers run only on the points they could still prove: classified correctly, and not broken by an
    attack whose adversarial example lies in the certified region ``[x − ε, x + ε] ∩ [0, 1]`` (a sound certifier
    cannot prove those, so the accuracy is the same; symbolic bounds of a network that an attack breaks almost
    everywhere are the slow case this skips). ``record["certify_checked"]`` says how many points they ran on;
    ``skip_refuted=False`` runs them on every correct point (to time them, or to test a certifier).

    ``attacks`` and ``certify`` are names (or one name) from :data:`ATTACKS` and
    :data:`CERTIFIERS`, or dicts ``{name: fn(model, x, y, eps)}`` of your own
    (e.g. an attack with other settings). With ``per_example=True`` the record also holds
    ``"per_example": {"clean": bool (n,), "attack": {name: bool (n,)}, "certify":
    {name: bool (n,)}}`` — which points were correct, robust, verified. A
    progress bar over batches appears when attacks or certification run
    (``progress=False`` or ``ROBUSTLIB_PROGRESS=off`` hides it).
    """
    eps = check_eps(eps)
    _check_sizes(n, batch_size)
    attack_fns, cert_fns = _resolve(attacks, "attacks", attack_fn), _resolve(certify, "certify", certifier_fn)
    attack_names, cert_names = tuple(attack_fns), tuple(cert_fns)
    _check_record_keys(attack_names, cert_names)
    ok_clean: list = []
    ok_attack: dict = {a: [] for a in attack_names}
    ok_cert: dict = {c: [] for c in cert_names}
    seconds = {"clean": 0.0, "attack": {a: 0.0 for a in attack_names}, "certify": {c: 0.0 for c in cert_names}}
    checked = 0
    total_n = len(data) if n is None else min(n, len(data))
    _check_labels(model, data, total_n)
    bar = progress_bar(total=total_n, desc=f"ε={eps:g} " + ",".join([*attack_names, *cert_names]), unit="img",
                       leave=False, disable=not (progress and (attack_names or cert_names)))
    try:
        with eval_mode(model):
            for x, y in _batches(data, n, batch_size):
                t = time.perf_counter()
                ok = predict(model, x) == y
                seconds["clean"] += time.perf_counter() - t
                ok_clean.append(ok)
                open_ = ok.clone()   # what a certifier may still prove: correct, and no counterexample found
                for name, fn in attack_fns.items():
                    t = time.perf_counter()
                    x_adv = fn(model, x, y, eps)
                    robust = ok & (predict(model, x_adv) == y)
                    ok_attack[name].append(robust)
                    seconds["attack"][name] += time.perf_counter() - t
                    if skip_refuted:
                        open_ &= robust | ~_in_box(x_adv, x, eps)
                for name, fn in cert_fns.items():
                    t = time.perf_counter()
                    cert = torch.zeros_like(ok)
                    if open_.any():
                        cert[open_] = fn(model, x[open_], y[open_], eps).to(ok.device)
                    ok_cert[name].append(ok & cert)
                    seconds["certify"][name] += time.perf_counter() - t
                checked += int(open_.sum()) if cert_fns else 0
                bar.update(len(y))
    finally:
        bar.close()

    def cat(parts):
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    clean = cat(ok_clean)
    total = len(clean)

    def frac(mask) -> float:
        return float(mask.sum()) / max(total, 1)

    record = {"n": total, "eps": eps, "clean_acc": frac(clean)}
    for a in attack_names:
        record[f"{a}_acc"] = frac(cat(ok_attack[a]))
    for c in cert_names:
        record[f"{c}_verified_acc"] = frac(cat(ok_cert[c]))
    record["seconds"] = seconds
    if cert_names:
        record["certify_checked"] = checked
    if per_example:
        record["per_example"] = {"clean": clean.cpu(), "attack": {a: cat(v).cpu() for a, v in ok_attack.items()},
                                 "certify": {c: cat(v).cpu() for c, v in ok_cert.items()}}
    return record
