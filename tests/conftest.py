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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests: on a shared 2-core machine two OpenMP
    threads were measured up to 10× slower than one (spinning while the other core is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
