"""White-box attacks on batched images: FGSM, PGD (L∞ and L2) and AutoAttack glue.

Notation: x ∈ [0, 1]^d a clean image with label y, f the network, z = f(x)
its logits, ε the perturbation budget, α the step size and K the number of
steps. An attack returns x' with ‖x' − x‖_p ≤ ε and x' ∈ [0, 1]^d that tries
to maximise a loss L(f(x'), y):

* ``"ce"``: cross-entropy, L = −log softmax(z)_y;
* ``"cw"``: Carlini–Wagner margin, L = max_{j≠y} z_j − z_y
  (> 0 exactly when x' is misclassified).

Targeted attacks (target class t) maximise −CE(z, t), resp. the margin
z_t − max_{j≠t} z_j.

Conventions shared by every attack here:

* gradients are taken with :func:`torch.autograd.grad` with respect to the
  input only, with the parameters frozen during the steps
  (:func:`robustlib.checks.input_gradients_only`), so no parameter's ``.grad``
  is created or changed and no weight gradient is computed;
* the network runs in eval mode while the attack is crafted (BatchNorm uses,
  and never updates, its running statistics; dropout is off) and every
  module's train/eval flag is restored afterwards — the Madry/TRADES
  practice for adversarial training is to craft x' in eval mode and compute
  the training loss in train mode, which is what :mod:`robustlib.objectives`
  does;
* an attack runs in the caller's autocast state (bf16 on CUDA inside
  :func:`robustlib.train.fit`, fp32 otherwise); losses are computed in fp32
  and the returned x' has the dtype of x — in bf16 or fp16 too, rounded towards x so that it stays inside the
  ball exactly; labels may have any integer dtype;
* the step loop never synchronises with the host; inputs are validated once,
  after the first forward pass (one synchronisation per call).

:mod:`robustlib.evaluate` gives them names (``"fgsm"``, ``"pgd-K"``,
``"autoattack"``, ``"interval-attack"``); input checks live in :mod:`robustlib.checks`.
"""
from __future__ import annotations

from ..checks import LOSSES, NORMS
from .autoattack import autoattack
from .gradient import attack_loss, cw_margin, fgsm, kl_attack, pgd
from .interval import interval_attack

__all__ = ["fgsm", "pgd", "interval_attack", "autoattack", "kl_attack", "attack_loss", "cw_margin", "NORMS", "LOSSES"]
