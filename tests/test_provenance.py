"""Where a number came from (found by an audit): runs reused from another machine, parameters set by hand that a
preset does not list, records filed under another preset, captions drawn before the chapter ended, links to the page
that shows a record, chapters cut short."""
import json

import pytest
import torch

import robustlib as rl
from robustlib import book, claims, glance, presets, reproduce
from robustlib.objectives import Standard

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_reused_from_another_machine_says_so(digits, tmp_path, monkeypatch):
    train, _ = digits
    first = reproduce.Record("ch", "cpu", tmp_path)
    torch.manual_seed(0)
    h = first.fit("std", rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, batch_size=32,
                  progress=False)
    here = rl.machine.device_name(None)
    assert h.devices == [here] and first.reused_from == [] and "partly on" not in first.caption()
    monkeypatch.setattr(reproduce, "device_name", lambda device=None: "Machine B")
    second = reproduce.Record("ch", "cpu", tmp_path)
    torch.manual_seed(0)
    second.fit("std", rl.models.build("small_cnn"), train.head(64), Standard(), epochs=1, batch_size=32,
               progress=False)
    assert second.runs[0]["reused_epochs"] == 1 and second.reused_from == [here]
    assert f"partly on {here}, reused runs" in second.caption()
    record = json.loads(second.save().read_text())
    assert record["device"] == "Machine B" and record["runs_reused_from"] == [here]
    assert f"partly on {here} (reused runs)" in book.trained_in(record)


def test_captions_say_their_totals_are_up_to_the_figure(tmp_path):
    assert "up to here: notebook wall-clock" in reproduce.Record("x", "cpu", tmp_path).caption()


def test_a_parameter_the_preset_does_not_list_still_marks_the_run_modified():
    ns = {**presets.notebook_defaults("adversarial_training"), **presets.parameters("cpu", "adversarial_training")}
    assert presets.deviations("cpu", "adversarial_training", ns) == {}
    changed = {**ns, "seed": 7, "beta": 1.0, "results_dir": "/elsewhere"}   # where files go is not a change
    assert set(presets.deviations("cpu", "adversarial_training", changed)) == {"seed", "beta"}


def test_a_hand_set_auto_preset_is_recorded_as_the_preset_it_stands_for(tmp_path):
    rec = reproduce.Record("x", "auto", tmp_path)
    assert rec.preset == presets.resolve("auto") and "preset auto" not in rec.caption()


def _record(folder, name, preset, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}))
    record = {"preset": preset, "device": "CPU (test)", "started": "2026-11-28T12:00:00+00:00", "wall_s": 10.0,
              "rows": [], "runs": [], "status": "ok", **extra}
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_a_record_filed_under_another_preset_is_not_shown_as_that_presets(tmp_path):
    res = tmp_path / "results"
    _record(res / "gpu", "at", "smoke", rows=[claims.claim_row("p1-at-cost", 7.5)])                 # hand-run
    _record(res / "cpu", "at", "smoke", dry_run_of="cpu", rows=[claims.claim_row("p1-at-cost", 7.5)])
    dirs = book.results_dirs(["gpu", "cpu"], res)
    found = book.executed("at", dirs)
    assert [e.ok for e in found] == [False, False]
    assert "made at preset smoke, not gpu" in found[0].failure and "a dry run of cpu" in found[1].failure
    rows = {r["id"]: r for r in glance.glance_rows(dirs, ["at"])}
    assert rows["p1-at-cost"]["verdict"] == "not yet run"


def test_a_chapter_cut_short_says_so(tmp_path):
    _record(tmp_path / "cpu", "at", "cpu", status="running")
    ex = book.executed("at", {"cpu": tmp_path / "cpu"})[0]
    assert not ex.ok and "cut short while running" in book.banner(ex)
    assert "cut short while running" in glance.chapters_table({"at": ex})


def test_glance_links_the_page_that_shows_the_record(tmp_path):
    """A claim measured at cpu, in a chapter whose page renders the gpu run, links the chapter's cpu section page;
    the outlook labels a modified run."""
    res = tmp_path / "results"
    _record(res / "gpu", "mt", "gpu")
    _record(res / "cpu", "mt", "cpu", rows=[claims.claim_row("p2-vra", 0.5),
                                            dict(section="outlook", idea="worst-ibp", symbolic_vra=0.3)],
            modified_from_preset={"epochs": {"used": 2, "preset": 8}})
    dirs = book.results_dirs(["gpu", "cpu"], res)
    chosen = book.choose(["mt"], dirs)
    rows = glance.glance_rows(dirs, ["mt"], chosen)
    assert {r["id"]: r for r in rows}["p2-vra"]["page"] == "{doc}`/notebooks/mt-cpu`"
    assert "{doc}`/notebooks/mt-cpu`" in glance.glance_table(rows)
    outlook = glance.outlook_snippet(dirs, ["mt"], rows, chosen)
    assert "`cpu` (modified: epochs)" in outlook and "{doc}`/notebooks/mt-cpu` at preset `cpu` (modified: epochs)" \
        in outlook
