"""Which machine made a number: a human name for a device (the GPU's model, or the CPU's with its cores and
threads), stored with every results record and with every epoch a training run spends."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def device_name(device=None) -> str:
    """A human name for the device that ran the numbers (GPU model, or the CPU)."""
    import torch
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}{platform.machine()}, {os.cpu_count()} logical cores, " \
           f"{torch.get_num_threads()} torch threads)"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo followed by ", " (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + ", "
    except OSError:
        pass
    return ""
