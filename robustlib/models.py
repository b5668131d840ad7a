"""The papers' networks, built by name.

``build(name, num_classes=10, in_channels=1, input_size=28)`` returns an
``nn.Module``. The MixTrain / Wong et al. (2018) family (``mnist_small``,
``mnist_large``, ``cifar_small``, ``cifar_large``) are plain ``nn.Sequential``
stacks with exactly the published layer order, so the authors' released
``state_dict`` files (keys ``0.*, 2.*, 5.*, 7.*`` for the small ones) load
as they are. Inputs are images in [0, 1] with no normalisation layer. The CIFAR networks and the WideResNet start
from their reference code's initialisation (:func:`he_init`), the others from PyTorch's default, as theirs do.
"""
from __future__ import annotations

import math
import numbers

import torch.nn as nn


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"an input of {size}×{size} pixels is too small for this network (a {kernel}×{kernel} "
                         f"convolution with stride {stride} and padding {pad} leaves nothing); give larger images or "
                         f"another network")
    return out


def he_init(model: nn.Module) -> nn.Module:
    """The initialisation of the reference code of Wong et al.'s CIFAR networks and of TRADES' WideResNet: every
    convolution's weight from N(0, 2 / (k_h·k_w·out_channels)) and its bias 0; BatchNorm weight 1 and bias 0;
    Linear biases 0. (The MNIST networks and PreAct-ResNet-18 keep PyTorch's default, as their references do.)"""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def wong_small(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Sequential:
    """Conv(c→16, k4 s2 p1) · ReLU · Conv(16→32, k4 s2 p1) · ReLU · Flatten · FC(·→100) · ReLU · FC(100→classes)."""
    s = _conv_out(_conv_out(input_size, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * s * s, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def wong_large(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Sequential:
    """Conv(c→32,k3 s1 p1)·Conv(32→32,k4 s2 p1)·Conv(32→64,k3 s1 p1)·Conv(64→64,k4 s2 p1)·FC(·→512)·FC(512→512)·FC(512→classes), ReLU between all."""
    s = _conv_out(_conv_out(input_size, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * s * s, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Sequential:
    """A tiny CNN for the embedded digits (fast on a CPU): two convs and two linear layers."""
    s = _conv_out(_conv_out(input_size, 3, 2, 1), 3, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * s * s, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN · ReLU · conv · BN · ReLU · conv, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet: a 3×3 stem conv, stages of :class:`PreActBlock` (stride 2 at the start of every
    stage but the first), then BN · ReLU · global average pool · linear."""

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=10, in_channels=3,
                 stem: int | None = None):
        super().__init__()
        stem = widths[0] if stem is None else stem
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(PreActBlock(in_planes, w, stride=(1 if i == 0 or j > 0 else 2)))
                in_planes = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = self.flatten(self.pool(self.relu(self.bn(out))))
        return self.linear(out)


def preact_resnet18(in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> PreActResNet:
    """PreAct-ResNet-18, the standard network of fast adversarial training (Wong et al. 2020)."""
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


class WideResNet(PreActResNet):
    """WRN-depth-width (Zagoruyko & Komodakis 2016): a pre-activation ResNet with a 16-channel stem and three
    stages of (depth − 4)/6 blocks of widths 16·w, 32·w, 64·w; WRN-34-10 is the TRADES/MART network."""

    def __init__(self, depth: int = 34, width: int = 10, num_classes: int = 10, in_channels: int = 3):
        if not (_is_int(depth) and depth >= 10 and (depth - 4) % 6 == 0) or not (_is_int(width) and width >= 1):
            raise ValueError(f"wide_resnet needs depth = 6n + 4 with n ≥ 1 (e.g. 16, 28, 34, 40) and an integer "
                             f"width ≥ 1, got depth={depth!r}, width={width!r}")
        n = (depth - 4) // 6
        super().__init__((n, n, n), (16 * width, 32 * width, 64 * width), num_classes, in_channels, stem=16)


def wide_resnet(in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                depth: int = 34, width: int = 10) -> WideResNet:
    return he_init(WideResNet(depth, width, num_classes, in_channels))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _cifar(builder):
    def build_cifar(**kwargs):
        return he_init(builder(**kwargs))
    build_cifar.__doc__ = builder.__doc__
    return build_cifar


_REGISTRY = {
    "mnist_small": (wong_small, dict(in_channels=1, input_size=28)),
    "mnist_large": (wong_large, dict(in_channels=1, input_size=28)),
    "cifar_small": (_cifar(wong_small), dict(in_channels=3, input_size=32)),
    "cifar_large": (_cifar(wong_large), dict(in_channels=3, input_size=32)),
    "small_cnn": (small_cnn, dict(in_channels=1, input_size=28)),
    "preact_resnet18": (preact_resnet18, dict(in_channels=3, input_size=32)),
    "wide_resnet": (wide_resnet, dict(in_channels=3, input_size=32)),
}

NAMES = tuple(_REGISTRY)


def build(name: str, num_classes: int | None = None, in_channels: int | None = None,
          input_size: int | None = None, *, like=None, **kwargs) -> nn.Module:
    """Build a network by name.

    ``in_channels`` and ``input_size`` default to the network's own dataset
    (1×28×28 for the MNIST nets, 3×32×32 for the CIFAR ones) and
    ``num_classes`` to 10; pass them to run a network on other data, e.g.
    ``build("cifar_small", in_channels=1, input_size=28)`` — or give a dataset
    (an :class:`robustlib.data.ImageData`) as ``like=train`` and all three are
    read from it. ``wide_resnet`` takes ``depth`` and ``width``.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(NAMES)}")
    if like is not None:
        if len(getattr(like, "shape", ())) != 3 or not hasattr(like, "num_classes"):
            raise ValueError(f"like must be a dataset (a robustlib.data.ImageData of C×H×W images), got "
                             f"{type(like).__name__}; or give num_classes, in_channels and input_size")
        c, h, w = tuple(like.shape)
        if h != w:
            raise ValueError(f"the networks take square images; the dataset's are {h}×{w}")
        in_channels = c if in_channels is None else in_channels
        input_size = h if input_size is None else input_size
        num_classes = like.num_classes if num_classes is None else num_classes
    num_classes = 10 if num_classes is None else num_classes
    for what, v in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        if v is not None and not (_is_int(v) and v >= 1):
            raise ValueError(f"{what} must be an integer ≥ 1, got {v!r}")
    fn, defaults = _REGISTRY[name]
    args = dict(defaults)
    if in_channels is not None:
        args["in_channels"] = in_channels
    if input_size is not None:
        args["input_size"] = input_size
    return fn(num_classes=num_classes, **args, **kwargs)


__all__ = ["build", "NAMES", "he_init", "wong_small", "wong_large", "small_cnn", "preact_resnet18", "wide_resnet",
           "PreActResNet", "WideResNet"]
