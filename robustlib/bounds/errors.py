"""What bounds refuse, and how they say so."""
from __future__ import annotations

SUPPORTED_OPERATIONS = (
    "Linear, Conv1d/Conv2d, ReLU (nn.ReLU, F.relu, torch.relu, Tensor.relu), BatchNorm1d/2d in eval mode, "
    "AvgPool1d/2d, AdaptiveAvgPool1d/2d (and F.avg_pool2d, F.adaptive_avg_pool2d), Flatten / Unflatten / "
    "view / reshape / flatten, addition or subtraction of two traced tensors (residual connections), "
    "adding constants, multiplying or dividing by constants, Identity, Dropout in eval mode"
)


class UnsupportedOperation(TypeError):
    """The network contains an operation that the bound propagation cannot handle soundly."""


def unsupported(node, what: str, why: str = "") -> UnsupportedOperation:
    """The error for graph node ``node`` (an ``fx.Node``): what it is, why it is refused, what is supported."""
    extra = f" ({why})" if why else ""
    return UnsupportedOperation(
        f"unsupported operation {what} at graph node {node.name!r}{extra}; bounds support only: "
        f"{SUPPORTED_OPERATIONS}")
