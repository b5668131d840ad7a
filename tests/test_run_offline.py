"""scripts/run_offline.sh: a chapter run on a machine without Jupyter, from carried wheels (here at smoke)."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_offline.sh"


def _wheel(folder: Path, tag: str = "py3-none-any") -> Path:
    """A minimal wheel of a package ``offline_probe``, as `make offline-kit` leaves real ones (``tag``: the
    Python / ABI / platform it claims to be for)."""
    files = {"offline_probe/__init__.py": b"VALUE = 41\n",
             "offline_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: offline-probe\nVersion: 1.0\n",
             "offline_probe-1.0.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  f"Tag: {tag}\n".encode()}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + "offline_probe-1.0.dist-info/RECORD,,\n"
    path = folder / f"offline_probe-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("offline_probe-1.0.dist-info/RECORD", record)
    return path


def _run(tmp_path, *args, **env):
    full = {**os.environ, "PYTHON": sys.executable, "PRESET": "smoke", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=600)


def test_runs_a_chapter_with_the_carried_wheels_and_hands_back_its_results(tmp_path):
    wheels, site, out = tmp_path / "whl", tmp_path / "site", tmp_path / "out"
    wheels.mkdir()
    _wheel(wheels)
    r = _run(tmp_path, str(out), "setting_the_stage", WHEELS=str(wheels), SITE_DIR=str(site))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (site / "offline_probe" / "__init__.py").exists()           # installed into its own folder
    assert sorted(p.name for p in out.iterdir()) == ["results-smoke.tar.gz", "run_offline.log"]
    with tarfile.open(out / "results-smoke.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["results/smoke/setting_the_stage.ipynb", "results/smoke/setting_the_stage.json"]
        rec = json.load(tar.extractfile("results/smoke/setting_the_stage.json"))
        assert tar.getmember("results/smoke/setting_the_stage.ipynb").size > 0
    assert rec["preset"] == "smoke" and rec["status"] == "ok"
    assert "run_offline: exit 0" in (out / "run_offline.log").read_text()


def test_bad_arguments_and_a_kit_that_does_not_import(tmp_path):
    r = _run(tmp_path, str(tmp_path / "out"))
    assert r.returncode == 2 and "name at least one chapter" in r.stderr
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import papermill"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without papermill to stand for a machine without the kit")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    r = _run(tmp_path, str(tmp_path / "out2"), "setting_the_stage", PYTHON=bare, WHEELS=str(empty))
    assert r.returncode == 3 and "make offline-kit" in r.stdout


def _offline_env(root: Path, python: str, **env):
    """Source scripts/offline_env.sh for the repository ``root`` and report its status and environment."""
    script = (f'root="{root}"; PY="{python}"; log="{root}/env.log"; . "{ROOT}/scripts/offline_env.sh"; '
              f'offline_env; echo "rc=$?"; echo "PYTHONPATH=$PYTHONPATH"; echo "DATA=${{ROBUSTLIB_DATA:-}}"')
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROBUSTLIB_DATA")}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={**full, **env}, timeout=300)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line), r.stdout


def test_wheels_for_another_python_are_skipped_when_this_one_has_the_packages(tmp_path):
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".data").mkdir()
    _wheel(tmp_path / ".whl", tag="cp399-cp399-manylinux1_x86_64")      # no Python can install this one
    got, out = _offline_env(tmp_path, sys.executable, SITE_DIR=str(tmp_path / "site"))
    assert got["rc"] == "0" and "going on" in out, out
    assert str(tmp_path / "site") not in got["PYTHONPATH"] and got["PYTHONPATH"].startswith(str(tmp_path))
    assert got["DATA"] == str(tmp_path / ".data")                        # the carried Fashion-MNIST
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import papermill"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without papermill to stand for a machine without the kit")
    got, out = _offline_env(tmp_path, bare, SITE_DIR=str(tmp_path / "site2"))
    assert got["rc"] == "3" and "lacks the packages" in out, out
