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


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel of a package ``offline_probe``, as `make offline-kit` leaves real ones."""
    files = {"offline_probe/__init__.py": b"VALUE = 41\n",
             "offline_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: offline-probe\nVersion: 1.0\n",
             "offline_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + "offline_probe-1.0.dist-info/RECORD,,\n"
    path = folder / "offline_probe-1.0-py3-none-any.whl"
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
