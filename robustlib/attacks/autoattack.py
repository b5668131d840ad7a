"""AutoAttack (Croce & Hein 2020) through torchattacks' maintained implementation."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import NORMS, check_choice, check_eps, check_values, check_x, check_y, eval_mode, logits_of
from .gradient import check_grad_mode, in_budget, project


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
               version: str = "standard", seed: int = 0) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through torchattacks' maintained implementation.

    Runs ``torchattacks.AutoAttack(model, norm, eps, version, n_classes, seed)``
    (standard: APGD-CE, APGD-T, FAB-T, Square) with the model in eval mode,
    in fp32 (autocast off; a model of another dtype gets fp32 inputs cast to its dtype), on the model's device;
    returns x' on x's device. ``norm``: ``"linf"`` or ``"l2"`` (torchattacks' ``"Linf"`` and ``"L2"`` too).
    torchattacks reseeds the global RNG and FAB calls ``.backward()``: here
    the caller's RNG state is preserved and parameters are excluded from
    gradients during the call, so no ``.grad`` changes. Cost is high (about
    0.7 s per image for a small CNN on a CPU).
    """
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError("AutoAttack needs torchattacks: pip install --no-deps torchattacks==3.5.1") from e
    eps = check_eps(eps)
    check_x(x)
    check_y(x, y)
    check_grad_mode()
    norm = check_choice(norm.lower() if isinstance(norm, str) else norm, NORMS, "norm")
    x, y = x.detach(), y.long()
    if x.shape[0] == 0:
        return x.clone()
    params = list(model.parameters())
    device = params[0].device if params else x.device
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    with torch.no_grad(), eval_mode(model):
        num_classes = logits_of(model, x[:1].to(device=device, dtype=dtype)).shape[-1]
    check_values(x, [y], num_classes)
    if eps == 0:
        return x.clone()
    # torchattacks reseeds every CUDA device it can see (torch.cuda.manual_seed_all), whatever the model's device
    rng_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=rng_devices), eval_mode(model), \
                torch.autocast(device.type, enabled=False):
            net = model if dtype == torch.float32 else _Float32View(model, dtype)   # torchattacks works in fp32
            atk = torchattacks.AutoAttack(net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version=version,
                                          n_classes=num_classes, seed=seed)
            x_adv = atk(x.to(device=device, dtype=torch.float32), y.to(device))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    x_adv = x_adv.detach().to(x)
    if x.dtype == torch.float64:   # x was rounded to fp32 for torchattacks: project around x itself
        x_adv = project(x_adv, x, eps, norm)
    return in_budget(x_adv, x, eps, norm)


class _Float32View(nn.Module):
    """A model of another dtype seen as an fp32 one: fp32 inputs cast to its dtype, logits cast back."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype)).float()
