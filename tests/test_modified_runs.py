"""A run whose preset was set by hand (in Jupyter, on Colab) without the preset's values is labelled as modified:
in its record, its captions, its chapter page and the glance page. A run of ``reproduce`` never is."""
import ast
import json

import pytest

from robustlib import book, claims, glance, presets, reproduce
from test_presets import NOTEBOOKS, _parameters

REAL = [p for p in presets.PRESETS if p != "smoke"]


def _as_reproduce_runs_it(preset: str, notebook: str) -> dict:
    """A notebook's variables after its parameters cell and papermill's injection of the preset's values."""
    return {**_parameters(notebook), **presets.parameters(preset, notebook), "preset": preset}


def test_deviations_name_what_differs_and_nothing_else():
    ns = _as_reproduce_runs_it("cpu", "data_pruning")
    assert presets.deviations("cpu", "data_pruning", ns) == {}
    ns["fractions"] = tuple(ns["fractions"])          # stored alike in JSON: not a difference
    ns["epochs"] = 3
    ns.pop("n_eval")                                   # a name the namespace lacks is skipped
    assert presets.deviations("cpu", "data_pruning", ns) == {
        "epochs": {"used": 3, "preset": presets.parameters("cpu", "data_pruning")["epochs"]}}
    smoke = _parameters("data_pruning")               # preset set to cpu by hand, every value still smoke's
    assert {"epochs", "datasets", "grid"} <= set(presets.deviations("cpu", "data_pruning", smoke))


def _assigned_at_top_level(source: str) -> set:
    """Names a cell binds outside functions (assignments, loops, imports, with … as …)."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    names = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                             ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return names


@pytest.mark.parametrize("preset", REAL)
def test_a_notebook_run_by_reproduce_has_no_deviation(preset):
    """Every preset's values reach the record unchanged: no cell between the parameters cell and the one that opens
    the record rebinds a parameter the preset sets (the record would call its own preset's run modified)."""
    for notebook in presets.PRESETS[preset]:
        assert presets.deviations(preset, notebook, _as_reproduce_runs_it(preset, notebook)) == {}
        cells = [c for c in json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
                 if c["cell_type"] == "code"]
        first = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        opens = next(i for i, c in enumerate(cells) if "reproduce.Record(" in "".join(c["source"]))
        assert first < opens, notebook
        rebound = set().union(*(_assigned_at_top_level("".join(c["source"])) for c in cells[first + 1:opens + 1]))
        params = set(presets.parameters(preset, notebook)) | set(presets.notebook_defaults(notebook))
        assert not rebound & (params - set(presets.MACHINE_PARAMETERS)), (notebook, rebound)


def test_a_record_of_a_hand_set_preset_says_what_differs(tmp_path):
    ns = {**_as_reproduce_runs_it("cpu", "adversarial_training"), "epochs": 2, "n_eval": 500}
    with pytest.warns(UserWarning, match=r"epochs, n_eval differ .* reproduce --preset cpu --only adversarial_tr"):
        rec = reproduce.Record("adversarial_training", "cpu", tmp_path, namespace=ns)
    preset_epochs = presets.parameters("cpu", "adversarial_training")["epochs"]
    assert rec.modified["epochs"] == {"used": 2, "preset": preset_epochs}
    assert "preset cpu (modified: epochs, n_eval)" in rec.caption()
    saved = json.loads(rec.save().read_text())
    assert saved["modified_from_preset"]["n_eval"] == {"used": 500, "preset": 10000}

    same = reproduce.Record("adversarial_training", "cpu", tmp_path, namespace=_as_reproduce_runs_it(
        "cpu", "adversarial_training"))
    assert same.modified == {} and "modified" not in same.caption()
    assert "modified_from_preset" not in json.loads(same.save().read_text())
    smoke = reproduce.Record("adversarial_training", "smoke", tmp_path, namespace=ns)   # smoke has no values to miss
    assert smoke.modified == {}
    outside = reproduce.Record("adversarial_training", "cpu", tmp_path)   # no IPython here: nothing to compare
    assert outside.modified == {}


def _executed(folder, name, preset, modified=None, rows=()):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}))
    record = {"preset": preset, "device": "CPU (test)", "started": "2026-11-28T12:00:00+00:00", "wall_s": 10.0,
              "rows": list(rows), "runs": [], "status": "ok"}
    if modified:
        record["modified_from_preset"] = modified
    (folder / f"{name}.json").write_text(json.dumps(record))
    return book.Executed(name, preset, folder / f"{name}.ipynb", record)


def test_a_modified_run_is_labelled_on_its_page_and_on_the_glance_page(tmp_path):
    grid = {"pgd-at": ["full+bt", "random@0.2", "gradmatch", "glister", "gradmatch+bt@0.2"]}
    modified = {"epochs": {"used": 2, "preset": 8}, "grid": {"used": grid, "preset": {"pgd-at": ["full"]}}}
    text = book.banner(_executed(tmp_path / "cpu", "at", "cpu", modified))
    assert "**A modified run:**" in text and "`epochs = 2` (preset: `8`)" in text
    assert "`grid = {'pgd-at': ['full+bt', 'random@0.2', 'g…`" in text    # long values cut short
    assert "modified" not in book.banner(_executed(tmp_path / "cpu2", "at", "cpu"))

    res = tmp_path / "results"
    _executed(res / "cpu", "at", "cpu", modified, rows=[claims.claim_row("p1-at-cost", 7.5)])
    rows = glance.glance_rows(book.results_dirs(["cpu"], res), ["at"])
    table = glance.glance_table(rows)
    assert "preset `cpu` (modified: epochs, grid)" in table
