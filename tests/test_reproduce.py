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
    assert (results / "broken.ipynb").exists()
    broken = json.loads((results / "broken.json").read_text())   # a failed run is marked as failed, with its cause
    assert broken["status"] == "failed" and "this chapter is broken" in broken["error"]
    assert first["status"] == last["status"] == "ok"
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


def test_record_is_written_as_it_grows_and_marked_until_saved(tmp_path):
    rec = rl.reproduce.Record("x", "gpu", tmp_path)
    assert not rec.path.exists()
    rec.add(method="full", robust=0.5)
    partial = json.loads(rec.path.read_text())
    assert partial["status"] == "running" and partial["rows"] == [{"method": "full", "robust": 0.5}]
    rec.add(method="random", robust=0.4)
    assert [r["method"] for r in json.loads(rec.path.read_text())["rows"]] == ["full", "random"]
    rec.save()
    final = json.loads(rec.path.read_text())
    assert "status" not in final and len(final["rows"]) == 2


def test_a_record_never_saved_or_cut_short_is_not_passed_as_finished(tiny_book, monkeypatch):
    _notebook(tiny_book / "notebooks" / "first.ipynb",
              'import robustlib as rl\nrec = rl.reproduce.Record("first", preset, results_dir)\nrec.add(value=value)')
    results = tiny_book / "results" / "smoke"
    outcome = reproduce.run("smoke", only=["first"], root=tiny_book, results=results, log=lambda *a: None)
    assert "wrote no results record" in outcome["first"]
    rec = json.loads((results / "first.json").read_text())
    assert rec["status"] == "failed" and rec["rows"] == [{"value": 1}]

    import papermill

    def interrupted(src, dst, **kwargs):   # a budget's SIGINT arrives while the notebook runs
        rl.reproduce.Record("last", "smoke", results).add(value=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run("smoke", only=["last"], root=tiny_book, results=results, log=lambda *a: None)
    rec = json.loads((results / "last.json").read_text())
    assert rec["status"] == "interrupted" and "interrupted after" in rec["error"] and rec["rows"] == [{"value": 2}]


def test_a_dry_run_is_labelled_and_kept_out_of_the_results(tiny_book, monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "gpu", {"first": {"n_eval": None, "value": 7}})
    with pytest.raises(ValueError, match="own results folder"):
        reproduce.run("gpu", only=["first"], root=tiny_book, dry_run=True, log=lambda *a: None)
    with pytest.raises(ValueError, match="not results"):
        reproduce.run("gpu", only=["first"], root=tiny_book, results=tiny_book / "results" / "gpu", dry_run=True,
                      log=lambda *a: None)
    out = tiny_book / "dry"
    assert reproduce.main(["reproduce", "--preset", "gpu", "--only", "first", "--root", str(tiny_book),
                           "--dry-run", str(out)]) == 0
    rec = json.loads((out / "first.json").read_text())
    assert rec["preset"] == "smoke" and rec["dry_run_of"] == "gpu" and rec["rows"] == [{"value": 7}]
    injected = nbformat.read(out / "first.ipynb", as_version=4).metadata["papermill"]["parameters"]
    assert injected["n_eval"] == presets.DRY_CAPS["n_eval"] and injected["preset"] == "smoke"
    assert not (tiny_book / "results" / "gpu").exists()


def test_a_real_chapter_dry_runs_its_gpu_preset(tmp_path):
    """The first chapter with the gpu preset's PreAct-ResNet-18 and crop-flip augmentation, on 200 digits."""
    outcome = reproduce.run("gpu", only=["setting_the_stage"], results=tmp_path, dry_run=True, log=lambda *a: None)
    assert outcome == {"setting_the_stage": None}
    rec = json.loads((tmp_path / "setting_the_stage.json").read_text())
    assert rec["status"] == "ok" and rec["dry_run_of"] == "gpu" and rec["preset"] == "smoke"
    params = nbformat.read(tmp_path / "setting_the_stage.ipynb", as_version=4).metadata["papermill"]["parameters"]
    assert params["model_name"] == "preact_resnet18" and params["dataset"] == "digits" and params["n_train"] == 200


from conftest import chapter_record as _record  # noqa: E402 - the shared smoke_book fixture lives in conftest


def test_every_chapter_ran(smoke_book):
    assert set(smoke_book[1]) == set(reproduce.toc_notebooks(ROOT))


def test_setting_the_stage(smoke_book):
    rec = _record(smoke_book, "setting_the_stage")
    assert rec["config"]["dataset"] == "digits"
    final = [r for r in rec["rows"] if r["kind"] == "final"][0]
    epochs = [r for r in rec["rows"] if r["kind"] == "epoch"]
    assert len(epochs) == rec["config"]["epochs"] and final["test_acc"] > 0.9
    assert epochs[-1]["loss"] < epochs[0]["loss"]


def test_adversarial_examples(smoke_book):
    rows = _record(smoke_book, "adversarial_examples")["rows"]
    by = {(r["eps"], r["attack"]): r["robust_acc"] for r in rows}
    for (eps, attack), acc in by.items():
        if attack == "fgsm":
            assert by[eps, "pgd-20"] <= acc + 0.02  # PGD never (meaningfully) weaker than FGSM
    assert by[0.0, "pgd-20"] == by[0.0, "fgsm"] == rows[0]["clean_acc"]
    assert by[0.3, "pgd-20"] < 0.2 < by[0.0, "pgd-20"]


def test_adversarial_training(smoke_book):
    all_rows = _record(smoke_book, "adversarial_training")["rows"]
    rows = {r["method"]: r for r in all_rows if r.get("section") is None}
    assert set(rows) == {"standard", "pgd-at", "trades", "mart", "fast-at"}
    seeds = [r for r in all_rows if r.get("section") == "seeds"]
    spread = {r["method"]: r for r in all_rows if r.get("section") == "seed_spread"}
    assert sorted((r["method"], r["seed"]) for r in seeds) == sorted((m, 1) for m in rows)   # smoke: seed 1 again
    assert set(spread) == set(rows) and all(r["n"] == 2 and r["seeds"] == [0, 1] for r in spread.values())
    pgd = [rows["pgd-at"]["pgd20_acc"]] + [r["pgd20_acc"] for r in seeds if r["method"] == "pgd-at"]
    assert abs(spread["pgd-at"]["pgd20_mean"] - sum(pgd) / 2) < 1e-9 and spread["pgd-at"]["gap"] is None
    assert abs(spread["trades"]["gap"] - (spread["trades"]["pgd20_mean"] - spread["pgd-at"]["pgd20_mean"])) < 1e-9
    claim = [r for r in all_rows if r.get("section") == "claim"]
    assert [c["claim"] for c in claim] == ["p1-at-cost"] and claim[0]["measured"] == rows["pgd-at"]["cost_ratio"]
    assert rows["pgd-at"]["pgd20_acc"] > rows["standard"]["pgd20_acc"] + 0.1
    assert rows["pgd-at"]["passes_per_example"] == 22 and rows["standard"]["passes_per_example"] == 2
    assert rows["pgd-at"]["cost_ratio"] > 3 and rows["fast-at"]["cost_ratio"] < rows["pgd-at"]["cost_ratio"]
    for r in rows.values():
        assert r["autoattack_acc"] <= r["pgd20_acc_aa_subset"] + 1e-9


def test_interval_analysis(smoke_book):
    rows = _record(smoke_book, "interval_analysis")["rows"]
    assert all(r["sound"] for r in rows if r["section"] == "2d")
    deep = [r for r in rows if r["section"] == "depth" and r["depth"] >= 3]
    assert all(r["symbolic"] < r["interval"] for r in deep)
    for r in rows:
        if r["section"] in ("certify", "published"):
            assert r["interval_verified_acc"] <= r["pgd20_acc"] <= r["clean_acc"]
            assert r["symbolic_verified_acc"] <= r["pgd20_acc"]
    if (ROOT.parent / "shared" / "reference" / "mixtrain-mnist_small_mixtrain_0.3.pth").exists():
        pub = {(r["model"], r["eps"]): r for r in rows if r["section"] == "published"}
        assert pub["mixtrain ε=0.3", 0.1]["symbolic_verified_acc"] > 0.85
    attack = [r for r in rows if r["section"] == "attack"][0]
    assert attack["interval_broken"] + attack["verified"] <= attack["clean_correct"]
