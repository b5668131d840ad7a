"""Training objectives: callables that turn a batch into per-example losses.

An objective is called as ``objective(model, x, y, weights=None)`` and
returns a tensor of N per-example losses ℓ_i, multiplied by the per-example
weights w_i when they are given (what a pruning selector chooses);
:func:`robustlib.train.fit` minimises their mean ``Σ_i w_i ℓ_i / N``.
Objectives that attack generate their own adversarial examples inside the
call; :class:`BulletTrain` wraps PGD-AT, TRADES or MART and spends their
attack steps per example by its distance to the decision boundary;
:class:`IBPTraining`, :class:`SymbolicTraining` and :class:`MixTrain` train
through sound bounds (``certified``). Each
objective counts what it spent in ``objective.spent`` (examples seen,
forward and backward passes through the network per example — attack steps
included); ``fit`` records it per epoch.
"""
from .adversarial import FastAT, MART, PGDAT, TRADES, AdversarialObjective, mart_loss, trades_loss
from .base import Custom, Objective, Standard
from .certified import IBPTraining, MixTrain, SymbolicTraining, adaptive_alpha, schedule_weight
from .bullet_train import BOUNDARY, GROUPS, OUTLIER, ROBUST, BulletTrain

__all__ = ["Objective", "Standard", "Custom", "AdversarialObjective", "PGDAT", "TRADES", "MART", "FastAT",
           "BulletTrain", "GROUPS", "OUTLIER", "ROBUST", "BOUNDARY", "IBPTraining", "SymbolicTraining", "MixTrain",
           "adaptive_alpha", "schedule_weight", "trades_loss", "mart_loss"]
