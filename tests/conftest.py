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


# A smoke cell that runs longer than this is taken for a lost kernel message: once (2026-11-27) a chapter's kernel
# sat idle for 20 minutes while the client waited for its reply. The chapter then fails with a timeout instead of
# hanging the suite, and is executed once more. The slowest smoke cell takes about 2 minutes on the 2-core machine.
SMOKE_CELL_TIMEOUT = 600


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every chapter of the book (the notebooks of _toc.yml), executed once at the smoke preset (a chapter whose
    kernel stopped answering, once more)."""
    from robustlib import reproduce
    out = tmp_path_factory.mktemp("smoke")
    outcome = reproduce.run("smoke", results=out, timeout=SMOKE_CELL_TIMEOUT, log=_SMOKE_LOG.append)
    lost = [name for name, error in outcome.items() if error and ("Timeout" in error or "DeadKernel" in error)]
    if lost:
        _SMOKE_LOG.append(f"[reproduce] executing again: {', '.join(lost)}")
        outcome.update(reproduce.run("smoke", only=lost, results=out, timeout=SMOKE_CELL_TIMEOUT,
                                     log=_SMOKE_LOG.append))
    return out, outcome


_SMOKE_LOG: list[str] = []  # the smoke book's progress lines, shown at the end of the run (which chapter took how long)


def pytest_terminal_summary(terminalreporter):
    """The smoke book's per-chapter times and any chapter executed twice, in the output CI prints."""
    done = [line for line in _SMOKE_LOG if ": ok in " in line or "FAILED" in line or "again" in line]
    if done:
        terminalreporter.write_sep("-", "smoke book")
        for line in done:
            terminalreporter.write_line(line[:300])


def chapter_record(smoke_book, name: str) -> dict:
    """The results record of one smoke-executed chapter, after checking it ran, is labelled and has figures."""
    import json

    import nbformat
    out, outcome = smoke_book
    assert outcome[name] is None, outcome[name]
    rec = json.loads((out / f"{name}.json").read_text())
    assert rec["preset"] == "smoke" and rec["device"].startswith(("CPU", "NVIDIA")) and rec["wall_s"] > 0
    assert rec["status"] == "ok"
    nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)  # the figures are there
    return rec


@pytest.fixture
def fp32_default(monkeypatch):
    """``fit`` and the pruning scores in fp32 by default on any CPU (``robustlib.precision``): for tests that compare
    with a direct fp32 computation, or that test what the fp32 default does (tuned convolutions). The bf16 default of
    a CPU with AMX has its own tests (test_precision.py)."""
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "off")


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host (int(), bool(), .item(), and the operators
    whose output size depends on values): on a GPU each one waits for the kernels queued before it."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket.__name__ in self.READS
        return func(*args, **(kwargs or {}))
