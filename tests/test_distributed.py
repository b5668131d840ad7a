"""fit under torchrun: two gloo processes on CPU give the weights of one process with the same global batch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustlib as rl

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


def _run(args, nproc=None, **env_extra):
    # fp32 even on a CPU with AMX (robustlib.precision): bf16 sums of 32 and of 64 examples round differently, and
    # the comparisons below are to float tolerance
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTLIB_PROGRESS": "off", "ROBUSTLIB_CPU_BF16": "off",
           **env_extra}
    if nproc is None:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    _run([str(tmp_path / "one.pt"), "64", "3"])
    _run([str(tmp_path / "two.pt"), "32", "3"], nproc=2)
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    for k, v in one["model"].items():
        assert torch.allclose(v, two["model"][k], atol=1e-5, rtol=1e-4), k
    for a, b in zip(one["history"], two["history"]):
        assert b["seen"] == a["seen"] == 256 and b["examples"] == 256
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["acc"] == pytest.approx(a["acc"], abs=1e-3)


def test_resume_under_torchrun(tmp_path):
    """PGD-AT draws random starts: each rank's stream is its own and is continued where it stopped."""
    ck = tmp_path / "c.pt"
    _run([str(tmp_path / "a.pt"), "32", "3", str(ck)], nproc=2, STOP_AFTER="2", OBJECTIVE="pgd")   # stopped after 2
    kept = torch.load(ck, weights_only=True)
    assert kept["epoch"] == 2 and not (tmp_path / "a.pt").exists()
    assert not torch.equal(kept["rng_ranks"][0][0], kept["rng_ranks"][1][0])   # the ranks' streams differ
    _run([str(tmp_path / "b.pt"), "32", "3", str(ck)], nproc=2, OBJECTIVE="pgd")    # resumes, trains epoch 3
    _run([str(tmp_path / "c.pt.full"), "32", "3"], nproc=2, OBJECTIVE="pgd")        # uninterrupted
    resumed, full = (torch.load(tmp_path / f, weights_only=True) for f in ("b.pt", "c.pt.full"))
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    for k, v in full["model"].items():
        assert torch.allclose(v, resumed["model"][k], atol=1e-6), k


def test_loader_shards_cover_each_global_batch_once(digits):
    train, _ = digits
    data = train.head(100)
    whole = rl.data.Loader(data, 20, seed=3)
    parts = [rl.data.Loader(data, 10, seed=3) for _ in range(2)]
    for r, p in enumerate(parts):
        p.shard(r, 2)
    assert len(whole) == len(parts[0]) == len(parts[1]) == 5
    for (x, y, _), (x0, y0, _), (x1, y1, _) in zip(whole, *parts):
        assert sorted((x0.sum((1, 2, 3)).tolist() + x1.sum((1, 2, 3)).tolist())) == sorted(x.sum((1, 2, 3)).tolist())
    odd = rl.data.Loader(data.head(41), 10, seed=0)
    odd.shard(1, 2)
    assert len(odd) == 2                                 # 40 in two global batches; the 1 left over is dropped
    with pytest.raises(ValueError, match="rank"):
        odd.shard(2, 2)
