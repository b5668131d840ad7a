"""Every preset names real notebooks and only parameters those notebooks have (papermill would inject a misspelt
name silently, and the run would use the smoke value); the pruning grids and MixTrain settings parse."""
import ast
import json
from pathlib import Path

import pytest

from robustlib import presets
from robustlib import pruning_study as study

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _parameters(name: str) -> dict:
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name}: expected one cell tagged 'parameters'"
    tree = ast.parse("".join(cells[0]["source"]))
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("preset", [p for p in presets.PRESETS if p != "smoke"])
def test_preset_keys_are_parameters_of_real_notebooks(preset):
    for notebook, values in presets.PRESETS[preset].items():
        assert (NOTEBOOKS / f"{notebook}.ipynb").exists(), f"{preset}: no notebook {notebook!r}"
        params = _parameters(notebook)
        unknown = set(values) - set(params)
        assert not unknown, f"{preset}/{notebook}: not in its parameters cell: {sorted(unknown)}"
        for key, value in values.items():   # a preset's value has the smoke value's kind (None: any)
            smoke = params[key]
            if smoke is not None and value is not None and not isinstance(smoke, bool):
                kinds = (int, float) if isinstance(smoke, (int, float)) else type(smoke)
                assert isinstance(value, kinds), f"{preset}/{notebook}: {key}={value!r}, smoke has {smoke!r}"


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_pruning_grids_and_mixtrain_settings_parse(preset):
    values = {**_parameters("data_pruning"), **presets.parameters(preset, "data_pruning")}
    missing = set(values["objectives"]) - set(values["grid"])
    assert not missing, f"{preset}: objectives without a grid entry (the chapter reads grid[objective]): {missing}"
    runs = study.parse_grid({o: values["grid"][o] for o in values["objectives"]}, values["fractions"])
    assert {r["objective"] for r in runs} == set(values["objectives"])
    assert all(r["fraction"] == 1.0 or r["fraction"] in values["fractions"] for r in runs)
    assert set(values["schedule_methods"]) <= set(study.METHODS)
    assert set(values["repeat_methods"]) <= set(study.METHODS) - {"full"}, "full data always repeats; name pruned ones"
    assert values["seed"] not in values["repeat_seeds"], "the grid's run is the base seed: repeat with other seeds"
    mix = {**_parameters("mixtrain"), **presets.parameters(preset, "mixtrain")}
    allowed = {"dataset", "image_size", "model", "eps", "n_train", "n_symbolic", "n_eval", "epochs", "checkpoint"}
    for setting in mix["settings"]:
        assert set(setting) <= allowed, f"{preset}: unknown MixTrain setting keys {set(setting) - allowed}"


def test_a_misspelt_preset_key_is_caught(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "gpu", {"mixtrain": {"n_trian": 5}})
    with pytest.raises(AssertionError, match="n_trian"):
        test_preset_keys_are_parameters_of_real_notebooks("gpu")


def test_a_dry_run_keeps_the_code_paths_and_caps_the_sizes():
    for preset in presets.PRESETS:
        for notebook, params in presets.PRESETS[preset].items():
            dry = presets.dry_run(preset, notebook)
            assert set(dry) == set(params), (preset, notebook)       # no key added, none dropped
            for key in ("model_name", "grid", "objectives", "fractions", "batch_size", "eps", "steps"):
                if key in params:
                    assert dry[key] == params[key], (preset, notebook, key)   # what the GPU will run
            assert dry.get("dataset", "digits") == "digits" and dry.get("datasets", ["digits"]) == ["digits"]
            for key, cap in presets.DRY_CAPS.items():
                if isinstance(dry.get(key), (int, float)):
                    assert dry[key] <= cap, (preset, notebook, key)
    gpu = presets.dry_run("gpu", "data_pruning")
    assert gpu["long_epochs"] is None and gpu["warmup"] is None       # None as "skip" / "the rule" stays None
    assert gpu["n_eval"] == 60 and gpu["epochs"] == 2 and gpu["R"] == 1
    assert presets.dry_run("gpu", "adversarial_training")["n_eval"] == 60   # None as "all" becomes the cap
    paper = presets.dry_run("paper", "mixtrain")
    assert paper["repeat_seeds"] == [1] and paper["n_train"] == 200
    assert paper["settings"][-1]["dataset"] == "digits" and paper["settings"][-1]["model"] == "cifar_small"
    assert presets.dry_run("gpu", "mixtrain")["settings"][1]["n_train"] == 200
    assert presets.dry_run("cpu", "mixtrain")["long_budget"] == {"n_train": 200, "epochs": 2}   # a dict: capped too
    assert presets.dry_run("gpu", "mixtrain")["long_budget"] is None
