"""The papermill pipeline on a tiny throw-away book, and the real first chapter at the smoke preset."""
import json

import nbformat
import pytest

import robustlib as rl
from robustlib import presets, reproduce
from conftest import ROOT


def _notebook(path, body, params='preset = "smoke"\nresults_dir = "."\nvalue = 1'):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


RECORD = ('import robustlib as rl\nrec = rl.reproduce.Record("{name}", preset, results_dir)\n'
          'rec.add(value=value)\nrec.save()')


@pytest.fixture
def tiny_book(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Tiny book\n\nA test.\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/first\n"
        "  - file: notebooks/broken\n  - file: notebooks/last\n")
    (tmp_path / "_config.yml").write_text(
        'title: Tiny\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n')
    _notebook(tmp_path / "notebooks" / "first.ipynb", RECORD.format(name="first"))
    _notebook(tmp_path / "notebooks" / "broken.ipynb", 'raise RuntimeError("this chapter is broken")')
    _notebook(tmp_path / "notebooks" / "last.ipynb", RECORD.format(name="last"))
    return tmp_path


def test_toc_order(tiny_book):
    assert reproduce.toc_notebooks(tiny_book) == ["first", "broken", "last"]
    assert reproduce.toc_notebooks(ROOT)[0] == "setting_the_stage"


def test_failure_is_reported_and_does_not_stop_the_rest(tiny_book, monkeypatch, capsys):
    monkeypatch.setitem(presets.PRESETS, "gpu", {"last": {"value": 7}})
    status = reproduce.main(["reproduce", "--preset", "gpu", "--root", str(tiny_book)])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED broken" in out and "this chapter is broken" in out and "2/3 notebooks ok" in out
    results = tiny_book / "results" / "gpu"
    first, last = (json.loads((results / f"{n}.json").read_text()) for n in ("first", "last"))
    assert first["rows"] == [{"value": 1}] and last["rows"] == [{"value": 7}]  # preset values injected
    for rec in (first, last):
        assert rec["preset"] == "gpu" and rec["device"] and rec["wall_s"] >= 0 and rec["started"]
        assert {"python", "torch", "torchvision", "robustlib"} <= set(rec["versions"])
    assert (results / "broken.ipynb").exists() and not (results / "broken.json").exists()
    executed = nbformat.read(results / "last.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "value = 7" in injected[0].source and "/tmp" not in injected[0].source


def test_only_and_unknown_names(tiny_book):
    outcome = reproduce.run("smoke", only=["last"], root=tiny_book, log=lambda *a: None)
    assert outcome == {"last": None}
    with pytest.raises(ValueError, match="first, broken, last"):
        reproduce.run("smoke", only=["nope"], root=tiny_book)
    with pytest.raises(ValueError, match="unknown preset"):
        presets.resolve("huge")
    assert presets.resolve("auto") in ("smoke", "gpu")


def test_build_renders_executed_copies(tiny_book):
    reproduce.run("smoke", root=tiny_book, log=lambda *a: None)
    index = reproduce.build(["gpu", "smoke"], root=tiny_book, log=lambda *a: None)  # falls back to smoke
    assert index.exists()
    page = (tiny_book / "_build" / "html" / "notebooks" / "first.html").read_text()
    assert "first" in page
    with pytest.raises(FileNotFoundError, match="reproduce --preset paper"):
        reproduce.stage(["paper"], root=tiny_book)


def test_record_caption_labels_smoke_scale(tmp_path):
    rec = rl.reproduce.Record("x", "smoke", tmp_path)
    assert "SMOKE-SCALE" in rec.caption() and "not a reproduction" in rec.caption()
    assert "SMOKE" not in rl.reproduce.Record("x", "gpu", tmp_path).caption()


def test_first_chapter_runs_at_smoke_preset(tmp_path):
    outcome = reproduce.run("smoke", only=["setting_the_stage"], results=tmp_path, log=lambda *a: None)
    assert outcome == {"setting_the_stage": None}
    rec = json.loads((tmp_path / "setting_the_stage.json").read_text())
    assert rec["preset"] == "smoke" and rec["config"]["dataset"] == "digits"
    final = [r for r in rec["rows"] if r["kind"] == "final"][0]
    epochs = [r for r in rec["rows"] if r["kind"] == "epoch"]
    assert len(epochs) == rec["config"]["epochs"] and final["test_acc"] > 0.9
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    nb = nbformat.read(tmp_path / "setting_the_stage.ipynb", as_version=4)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)  # the figures are there
