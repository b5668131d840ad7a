"""The papers' headline claims, and how a measured value is judged against them.

The claimed values below are copied from the papers' abstracts (see
``../shared/papers/`` digests); every *measured* value comes from a results
record: a chapter measures it and calls ``record.claim(claim_id, measured,
**setting)``, which stores a row ``{"section": "claim", "claim": id,
"measured": …, **setting}`` (setting: dataset, network, what differs from the
paper). The book's "Reproduction at a glance" page is generated from those
rows; a claim no record measures reads "not yet run".

Verdicts (:func:`verdict`):

* ``at_least`` — a speed-up or accuracy claimed as "up to X": *reproduced* when
  measured ≥ (1 − tol)·X, *partly* when measured ≥ partial·X, else *not
  reproduced*;
* ``range`` — a claimed interval [lo, hi]: *reproduced* inside it, *partly*
  within a factor ``partial`` of it, else *not reproduced*;
* ``positive`` — an existence claim ("finds violations PGD misses"):
  *reproduced* when measured > 0, else *not reproduced*.

Smoke-scale rows never count as a reproduction: their verdict is *pipeline
check only*.
"""
from __future__ import annotations

CLAIMS = {
    # ---------------------------------------------------------------- paper 1: data pruning for faster AT
    "p1-at-cost": dict(paper=1, text="adversarial training costs 5–10× standard training",
                       claimed=(5.0, 10.0), unit="× epoch time", rule="range", partial=1.5),
    "p1-speedup-cifar10": dict(paper=1, text="pruned AT up to 3.44× faster at similar clean and robust accuracy "
                               "(CIFAR-10)", claimed=3.44, unit="×", rule="at_least", tol=0.1, partial=0.5),
    "p1-speedup-cifar100": dict(paper=1, text="pruned AT up to 2.02× faster (CIFAR-100)", claimed=2.02, unit="×",
                                rule="at_least", tol=0.1, partial=0.5),
    "p1-bt-trades-cifar10": dict(paper=1, text="pruning + Bullet-Train: TRADES 5.66× faster (CIFAR-10)",
                                 claimed=5.66, unit="×", rule="at_least", tol=0.1, partial=0.5),
    "p1-bt-mart-cifar10": dict(paper=1, text="pruning + Bullet-Train: MART 5.12× faster (CIFAR-10)", claimed=5.12,
                               unit="×", rule="at_least", tol=0.1, partial=0.5),
    "p1-bt-trades-cifar100": dict(paper=1, text="pruning + Bullet-Train: TRADES 3.67× faster (CIFAR-100)",
                                  claimed=3.67, unit="×", rule="at_least", tol=0.1, partial=0.5),
    "p1-bt-mart-cifar100": dict(paper=1, text="pruning + Bullet-Train: MART 3.07× faster (CIFAR-100)",
                                claimed=3.07, unit="×", rule="at_least", tol=0.1, partial=0.5),
    # ---------------------------------------------------------------- paper 2: MixTrain
    "p2-vra": dict(paper=2, text="MixTrain reaches up to 95.2% verified robust accuracy", claimed=0.952,
                   unit="VRA", rule="at_least", tol=0.03, partial=0.7),
    "p2-vs-verifiable": dict(paper=2, text="15× less training time than state-of-the-art verifiable training",
                             claimed=15.0, unit="×", rule="at_least", tol=0.1, partial=0.33),
    "p2-vs-at": dict(paper=2, text="3× less training time than adversarial training", claimed=3.0, unit="×",
                     rule="at_least", tol=0.1, partial=0.5),
    "p2-interval-attack": dict(paper=2, text="the interval attack finds violations that PGD with restarts misses",
                               claimed=1, unit="images", rule="positive"),
}

VERDICTS = ("reproduced", "partly", "not reproduced", "not yet run", "pipeline check only")


def verdict(claim_id: str, measured, preset: str = "cpu") -> str:
    """The verdict of one measured value against its claim (see the module docstring)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; known: {', '.join(CLAIMS)}")
    if measured is None:
        return "not yet run"
    if preset == "smoke":
        return "pipeline check only"
    c = CLAIMS[claim_id]
    m = float(measured)
    if c["rule"] == "positive":
        return "reproduced" if m > 0 else "not reproduced"
    if c["rule"] == "range":
        lo, hi = c["claimed"]
        if lo <= m <= hi:
            return "reproduced"
        return "partly" if lo / c["partial"] <= m <= hi * c["partial"] else "not reproduced"
    x = c["claimed"]
    if m >= (1 - c["tol"]) * x:
        return "reproduced"
    return "partly" if m >= c["partial"] * x else "not reproduced"


def claim_row(claim_id: str, measured, **setting) -> dict:
    """The results-record row of a measured claim (checked against the registry)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; known: {', '.join(CLAIMS)}")
    return {"section": "claim", "claim": claim_id, "measured": None if measured is None else float(measured),
            **setting}
