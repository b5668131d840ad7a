"""Per-example importance scores and last-layer gradients for data pruning, on clean or PGD examples.

Notation as in :mod:`robustlib.pruning`: p_i = softmax(f(x_i)), e_y the one-hot label, h_i the input of the last
linear layer (penultimate features). Every quantity is taken on clean x_i or on PGD examples x'_i
(``adversarial={"eps": ε, "steps": K, ...}``, or any object with those attributes such as an objective).

Scores (:func:`score`, one per example, higher = harder / more important):
  ``random``      u_i ~ U(0, 1), seeded;
  ``loss``        ℓ_i = −log p_{i,y_i};
  ``el2n``        ‖p_i − e_{y_i}‖₂ (Paul et al. 2021);
  ``grand``       ‖∇_θ ℓ_i‖₂ (Paul et al. 2021); ``mode="full"``: all parameters (torch.func vmap of
                  grad); ``mode="last"``: the last Linear layer in closed form, ∇_W ℓ = (p − e_y)hᵀ and
                  ∇_b ℓ = p − e_y give ‖∇ℓ‖ = ‖p − e_y‖₂·√(‖h‖² + 1);
  ``forgetting``  correct → incorrect transitions (Toneva et al. 2019), counted once per epoch (not per
                  mini-batch) by :class:`ForgettingCounter`; never-learned examples score the number
                  of epochs counted, above any possible count.

Last-layer gradients g_i = (p_i − e_{y_i}) ⊗ [h_i, 1] ∈ R^{C(H+1)} (:func:`last_layer_grads`) feed the
selectors of :mod:`robustlib.pruning`. With a :class:`robustlib.memory.PerturbationMemory` (``memory=``), the
gradients are taken at the perturbations training found last instead of a fresh attack: one forward pass per
example (ours, not the paper's).

Scoring runs the model in eval mode, restores every module's train/eval flag and leaves no parameter ``.grad``
behind. Tensors stay on the data's device.
"""
from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import precision
from .attacks import pgd
from .checks import check_int, default_alpha, eval_mode
from .data import ImageData
from .greedy import OuterRows
from .memory import PerturbationMemory

SCORES = ("random", "loss", "el2n", "grand", "forgetting")
PGD_KEYS = ("eps", "alpha", "steps", "norm", "restarts", "random_start", "loss")
# The batches a selector attacks and takes last-layer gradients in, per device type (256 elsewhere). On CUDA, batches
# of 256 left an NVIDIA H200 waiting on kernel launches: a fresh PGD-3 Adv-GRAD-MATCH selection of 19,000 images of
# PreAct-ResNet-18 took 2.5 s in them and 0.94 s in batches of 1024 (benchmarks/bench_pruning.py, 2026-11-27);
# on the CPU a selection already costs what its network passes predict.
SELECT_BATCH = {"cuda": 1024}


def selection_batch_size(device) -> int:
    """The default batch of :func:`last_layer_grads` and of the dynamic selectors on ``device``."""
    return SELECT_BATCH.get(torch.device(device).type, 256)

__all__ = ["score", "last_layer_grads", "ForgettingCounter", "pgd_settings", "SCORES", "PGD_KEYS"]


def pgd_settings(adversarial) -> dict | None:
    """The PGD settings of ``adversarial`` (a dict of :data:`PGD_KEYS`, or an object with those attributes, such as
    an objective) as a dict; None for None (clean data)."""
    if adversarial is None:
        return None
    if isinstance(adversarial, dict):
        kw = dict(adversarial)
        if set(kw) - set(PGD_KEYS):
            raise ValueError(f"unknown PGD settings {sorted(set(kw) - set(PGD_KEYS))} in adversarial; "
                             f"valid keys: {', '.join(PGD_KEYS)}")
    else:
        kw = {k: getattr(adversarial, k) for k in PGD_KEYS
              if isinstance(getattr(adversarial, k, None), (numbers.Real, str))}
    if "eps" not in kw:
        raise ValueError("adversarial needs at least eps, e.g. adversarial={'eps': 8/255, 'steps': 10}")
    return kw


def _batches(model, data: ImageData, batch_size: int | None, adversarial, memory: PerturbationMemory | None = None,
             refresh: int = 0):
    """(x, y) per batch of ``data``; x attacked with PGD when ``adversarial`` is set. With a ``memory``: x + δ for
    the examples it knows, the attack (then remembered) or x itself for the others; with ``refresh`` = r > 0, the
    known examples take r more steps of the attack (its step α) from x + δ, and that is remembered."""
    if not isinstance(data, ImageData):
        raise TypeError(f"data must be a robustlib.data.ImageData, got {type(data).__name__}")
    if memory is not None and (len(memory) != len(data) or tuple(memory.delta.shape[1:]) != tuple(data.shape)):
        raise ValueError(f"the memory holds {len(memory)} examples of shape {tuple(memory.delta.shape[1:])}, the "
                         f"data {len(data)} of shape {tuple(data.shape)}; use PerturbationMemory.like(train) for the "
                         f"training set that fit and the selector see")
    kw = pgd_settings(adversarial)
    if batch_size is None:
        batch_size = selection_batch_size(data.device)
    batch_size = check_int(batch_size, "batch_size", 1, "pass a positive batch size")
    refresh = check_int(refresh, "refresh", 0, "refresh is a number of attack steps from the remembered x + δ")
    if refresh and (memory is None or kw is None):
        raise ValueError("refresh continues the attack from remembered perturbations: it needs memory= and "
                         "adversarial= (the attack whose step α it takes)")
    if refresh:
        kw_refresh = {**kw, "steps": refresh,
                      "alpha": kw.get("alpha") or default_alpha(kw["eps"], kw.get("steps", 10))}
    attack_unknown = memory is not None and kw is not None and not bool(memory.known.all())   # one host sync
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        x, y = data.x(rows), data.labels[rows]
        if memory is None:
            yield (x if kw is None else pgd(model, x, y, **kw)), y
            continue
        x_mem = memory.apply(rows, x)
        if refresh:
            old = memory.known[rows].nonzero().squeeze(1)
            if len(old) > 0:
                x_mem[old] = pgd(model, x[old], y[old], **kw_refresh, start=x_mem[old])
                memory.write(old + start, x[old], x_mem[old])
        todo = (~memory.known[rows]).nonzero().squeeze(1) if attack_unknown else ()
        if len(todo) > 0:
            x_new = pgd(model, x[todo], y[todo], **kw)
            memory.write(todo + start, x[todo], x_new)
            x_mem[todo] = x_new
        yield x_mem, y


def _logits_features(model: nn.Module, x: torch.Tensor):
    """Logits and the input h of the last nn.Linear (caught by a forward hook), float32, no autograd."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; last-layer gradients need one that "
                         f"outputs the logits (use score('grand', ..., mode='full') instead)")
    seen = {}
    handle = layers[-1].register_forward_hook(lambda m, inp, out: seen.update(h=inp[0], out=out))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    if seen.get("out") is not logits:
        raise ValueError("the last nn.Linear registered in the model does not produce its logits; last-layer "
                         "scores need a network whose final operation is that layer")
    return logits.float(), seen["h"].float().flatten(1)


# ----------------------------------------------------------------------------- scores

def _network_precision(data: ImageData, amp):
    """bf16 autocast for the network passes (attack and forward) when ``amp`` is True, or "auto" where
    :func:`robustlib.train.fit` trains in bf16 (:func:`robustlib.precision.auto_bf16`: CUDA, a CPU with AMX);
    the scores, gradients and solvers stay float32."""
    on, _ = precision.resolve(data.device, amp)   # validates amp too
    return torch.autocast(data.device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def last_layer_grads(model: nn.Module, data: ImageData, *, adversarial=None, memory: PerturbationMemory | None = None,
                     refresh: int = 0, batch_size: int | None = None, amp: bool | str = "auto",
                     factored: bool = False) -> torch.Tensor | OuterRows:
    """Per-example CE gradients w.r.t. the last Linear layer, g_i = (p_i − e_{y_i}) ⊗ [h_i, 1]: (n, C·(H+1)),
    float32; the network passes in bf16 autocast with ``amp`` (default "auto": where ``fit`` trains in bf16).
    With a ``memory`` (:class:`robustlib.memory.PerturbationMemory` of ``data``), the examples it knows are taken
    at x + δ, one forward pass each, and only the others are attacked (and remembered); ``refresh`` = r > 0 first
    moves the known ones r steps of the ``adversarial`` attack on from x + δ (remembered too). ``factored``: the
    same rows as an :class:`robustlib.greedy.OuterRows` of P = p − e_y (n × C) and [h, 1] (n × (H+1)),
    C + H + 1 numbers per example instead of C·(H + 1), with the log-probabilities log p alongside.
    ``batch_size``: None takes :func:`selection_batch_size` of the data's device."""
    P, H, log_p = [], [], []
    with eval_mode(model), _network_precision(data, amp):
        for x, y in _batches(model, data, batch_size, adversarial, memory, refresh):
            z, h = _logits_features(model, x)
            P.append(z.softmax(1) - F.one_hot(y, z.shape[1]).float())
            H.append(torch.cat([h, torch.ones_like(h[:, :1])], 1))
            if factored:
                log_p.append(z.float().log_softmax(1))
    G = OuterRows(torch.cat(P), torch.cat(H), torch.cat(log_p) if factored else None)
    return G if factored else G.dense()


def _grand_full(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∇_θ ℓ_i‖ over every parameter, per example, in float32 whatever the autocast around it (torch.func's
    per-example gradients through an eval-mode BatchNorm fail under bf16 autocast on a CPU)."""
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)).float(), yi[None])
    with torch.autocast(x.device.type, enabled=False):
        g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x.float(), y)
    return sum(v.flatten(1).pow(2).sum(1) for v in g.values()).sqrt()


def score(name: str, model: nn.Module, data: ImageData, *, adversarial=None, batch_size: int = 256,
          seed: int = 0, mode: str = "last", counter: ForgettingCounter | None = None,
          amp: bool | str = "auto") -> torch.Tensor:
    """Importance score of every example of ``data``: float32 (n,) on the data's device.

    ``name`` ∈ :data:`SCORES`; ``mode`` ("last" or "full") picks GraNd's parameters — lower
    ``batch_size`` for "full", which holds batch_size × #parameters floats and runs in float32 whatever
    ``amp``; ``forgetting`` returns the scores of ``counter``, a :class:`ForgettingCounter` updated during
    training. ``amp``: bf16 autocast for the network passes (default "auto": as ``fit`` trains), the scores in
    float32.
    """
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; valid: {', '.join(SCORES)}")
    if name == "random":
        g = torch.Generator(device=data.device).manual_seed(seed)
        return torch.rand(len(data), generator=g, device=data.device)
    if name == "forgetting":
        if counter is None:
            raise ValueError("score('forgetting') needs counter=ForgettingCounter(...), updated once per epoch "
                             "during training, e.g. fit(..., callback=ForgettingCounter(model, train))")
        return counter.scores()
    if mode not in ("last", "full"):
        raise ValueError(f"GraNd mode must be 'last' (last layer, closed form) or 'full', got {mode!r}")
    out = []
    with eval_mode(model), _network_precision(data, amp):
        for x, y in _batches(model, data, batch_size, adversarial):
            if name == "grand" and mode == "full":
                out.append(_grand_full(model, x, y))
                continue
            z, h = _logits_features(model, x)
            if name == "loss":
                out.append(F.cross_entropy(z, y, reduction="none"))
                continue
            el2n = (z.softmax(1) - F.one_hot(y, z.shape[1]).float()).norm(dim=1)
            out.append(el2n if name == "el2n" else el2n * (h.pow(2).sum(1) + 1).sqrt())
    return torch.cat(out).float()


class ForgettingCounter:
    """Forgetting events (Toneva et al. 2019), counted once per epoch.

    ``counter.update(model, data)`` (or ``counter(model, data)``) classifies every example — clean, or
    PGD examples with ``adversarial`` — and counts per example the transitions correct → incorrect
    since the previous update. Built with its model and data it is a ``fit(..., callback=counter)``.
    """

    def __init__(self, model: nn.Module | None = None, data: ImageData | None = None, *, adversarial=None,
                 batch_size: int = 512):
        self.model, self.data, self.adversarial, self.batch_size = model, data, adversarial, batch_size
        self.counts, self.learned, self.previous, self.epochs = None, None, None, 0

    def update(self, model: nn.Module, data: ImageData) -> torch.Tensor:
        with eval_mode(model), torch.no_grad():
            correct = torch.cat([model(x).argmax(1) == y
                                 for x, y in _batches(model, data, self.batch_size, self.adversarial)])
        if self.counts is None:
            self.counts = torch.zeros(len(correct), dtype=torch.long, device=correct.device)
            self.learned, self.previous = torch.zeros_like(correct), torch.zeros_like(correct)
        self.counts += (self.previous & ~correct).long()
        self.learned |= correct
        self.previous, self.epochs = correct, self.epochs + 1
        return correct

    def __call__(self, *args):
        if len(args) != 2 and (self.model is None or self.data is None):
            raise ValueError("as a fit callback the counter needs its model and data: ForgettingCounter(model, train)")
        return self.update(*(args if len(args) == 2 else (self.model, self.data)))

    def scores(self) -> torch.Tensor:
        """Forgetting counts as floats; never-learned examples get the number of updates (the maximum)."""
        if self.counts is None:
            raise ValueError("the ForgettingCounter was never updated; call update(model, data) once per epoch")
        return torch.where(self.learned, self.counts.float(), float(self.epochs))

    _STATE = ("counts", "learned", "previous", "epochs")

    def state_dict(self) -> dict:
        """Plain tensors and numbers: loads with ``torch.load(..., weights_only=True)``."""
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:   # a key that a checkpoint from an older version lacks keeps its current value
            setattr(self, k, state[k] if k in state else getattr(self, k))
