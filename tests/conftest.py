import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ROBUSTLIB_PROGRESS", "off")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"  # read-only reference files; absent on a user's machine


def reference(name: str) -> Path:
    """Path of a file in ../shared/reference, or skip the test when it is absent."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference file {name} not present (../shared/reference)")
    return path


@pytest.fixture(scope="session")
def digits():
    import robustlib as rl
    return rl.data.load("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
