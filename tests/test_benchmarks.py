"""The benchmark scripts run end to end at their --quick sizes and write coherent JSON (no timing is asserted:
speed is measured by the scripts themselves, never by a test)."""
from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results go to a temporary folder: a test never overwrites the committed figures."""
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setenv("ROBUSTLIB_BENCH_RESULTS", str(tmp_path))
    return tmp_path


def _run(script: str, argv: list, folder, result: str | None = None) -> dict:
    importlib.import_module(script).main(argv)
    name = result or script.removeprefix("bench_")
    payload = json.loads((folder / f"{name}-cpu.json").read_text())
    assert payload["benchmark"] == name and payload["device"].startswith("CPU") and payload["versions"]["torch"]
    return payload


def test_bounds_benchmark_agrees_with_the_naive_reference_and_reports_both_floors(results):
    out = _run("bench_bounds", ["--quick"], results)
    sym = next(r for r in out["figures"] if r["method"] == "symbolic")
    assert {r["method"] for r in out["figures"]} >= {"forward", "forward(d+1)", "forward(d+1+E)", "interval",
                                                     "symbolic", "naive symbolic"}
    assert sym["max_bound_difference"] < 1e-3                 # the same relaxation, two implementations
    assert sym["d"] == 784 and sym["error_columns"] == pytest.approx(sum(sym["error_columns_per_relu"]))
    assert len(sym["error_columns_per_relu"]) == 3 and sym["error_columns"] > 0   # MNIST_Small has 3 ReLUs
    assert sym["x_floor"] > 0 and sym["x_width_floor"] > 0
    assert "mnist_small B=1 symbolic / forward(d+1+E)" in out["ratios"]


def test_bounds_benchmark_forces_crops_into_a_linear_where_the_device_does_without(results, monkeypatch):
    """CUDA's rule (no crops into a Linear), tried on the CPU: the row becomes the forced-on other choice."""
    symbolic = importlib.import_module("robustlib.bounds.symbolic")   # the module (bounds.symbolic: the function)
    monkeypatch.setattr(symbolic, "CROP_LINEAR_DEVICES", ())
    forced = []
    original = symbolic._crop_linear
    monkeypatch.setattr(symbolic, "_crop_linear", lambda device: forced.append(symbolic.CROP_LINEAR_DEVICES)
                        or original(device))
    out = _run("bench_bounds", ["--quick"], results)
    methods = {r["method"] for r in out["figures"]}
    assert "symbolic, crops into Linear" in methods and "symbolic, no crops into Linear" not in methods
    sym = next(r for r in out["figures"] if r["method"] == "symbolic")
    assert sym["crop_linear_over_default"] > 0 and "no_crop_linear_over_default" not in sym
    assert ("cpu", "cuda") in forced and symbolic.CROP_LINEAR_DEVICES == ()   # on for that row only, then restored


@pytest.mark.parametrize("setting, row, key, ratio", [
    ("PATCHES_MIN_DENSE", "symbolic, windows at every size", "windows_everywhere_over_default",
     "symbolic windows at every size / dense below PATCHES_MIN_DENSE"),
    ("CROPS_MIN_DENSE", "symbolic, crops at every size", "crops_everywhere_over_default",
     "symbolic crops at every size / dense below CROPS_MIN_DENSE")])
def test_bounds_benchmark_times_the_before_of_a_size_rule_that_goes_dense(results, monkeypatch, setting, row, key,
                                                                            ratio):
    """CUDA's size rules (input coefficients dense below PATCHES_MIN_DENSE, error terms dense images below
    CROPS_MIN_DENSE), tried on the CPU with a threshold above every chunk or block: the default rows take the dense
    path, and a row with windows (crops) at every size gives the before of that rule."""
    symbolic = importlib.import_module("robustlib.bounds.symbolic")
    monkeypatch.setattr(symbolic, setting, {"cpu": 10**12})
    out = _run("bench_bounds", ["--quick"], results)
    assert row in {r["method"] for r in out["figures"]}
    sym = next(r for r in out["figures"] if r["method"] == "symbolic")
    assert sym[key] > 0
    assert f"{sym['net']} B={sym['batch']} {ratio}" in out["ratios"]
    assert getattr(symbolic, setting) == {"cpu": 10**12}    # emptied for that row only, then restored


def test_certified_benchmark_reports_a_diverging_trainer_and_keeps_the_rest(results, monkeypatch):
    """A trainer whose epoch goes NaN past the first network (fit raises FloatingPointError) is recorded as not
    timed (None) and left out of the ratios; the other trainers' timings and the JSON survive. The timings are a
    stand-in here: what is tested is the bookkeeping, and that the larger networks train at LARGE_LR."""
    bench = importlib.import_module("bench_certified")
    asked = []

    def fake_seconds(objective, data, device, batch, network="mnist_small", lr=0.01):
        asked.append((type(objective).__name__, lr))
        if lr == bench.LARGE_LR and type(objective).__name__ == "SymbolicTraining":
            raise FloatingPointError("training loss became nan in epoch 1")
        return 0.01 * len(data)

    monkeypatch.setattr(bench, "epoch_seconds", fake_seconds)
    monkeypatch.setattr(bench, "FLOOR_NETWORKS", ())
    out = _run("bench_certified", ["--quick", "--networks", "mnist_small", "mnist_small"], results)
    first, other = out["figures"]["per_example"]
    assert first["symbolic s/example"] == pytest.approx(0.01) and other["symbolic s/example"] is None
    assert other["lr"] == bench.LARGE_LR < 0.01 and other["mixtrain-k5 s/example"] == pytest.approx(0.01)
    assert "mnist_small symbolic / mixtrain-k5 (per example)" not in out["ratios"]
    assert out["ratios"]["mnist_small pgd-at / mixtrain-k5 (per example)"] == pytest.approx(1.0)
    assert ("SymbolicTraining", 0.01) in asked and ("SymbolicTraining", bench.LARGE_LR) in asked


def test_certified_benchmark_times_mixtrain_with_crops_at_every_size_where_small_blocks_go_dense(results, monkeypatch):
    """On a device type of CROPS_MIN_DENSE (CUDA's rule, tried on the CPU), each further network's MixTrain k = 5
    epoch runs once more with that threshold emptied (crops at every size), and the ratio says which was faster."""
    bench = importlib.import_module("bench_certified")
    symbolic = importlib.import_module("robustlib.bounds.symbolic")
    monkeypatch.setattr(symbolic, "CROPS_MIN_DENSE", {"cpu": 10**12})
    thresholds = []

    def fake_seconds(objective, data, device, batch, network="mnist_small", lr=0.01):
        thresholds.append((type(objective).__name__, dict(symbolic.CROPS_MIN_DENSE)))
        return (0.03 if not symbolic.CROPS_MIN_DENSE else 0.01) * len(data)

    monkeypatch.setattr(bench, "epoch_seconds", fake_seconds)
    monkeypatch.setattr(bench, "FLOOR_NETWORKS", ())
    out = _run("bench_certified", ["--quick", "--networks", "mnist_small", "mnist_small"], results)
    other = out["figures"]["per_example"][1]
    assert other["mixtrain-k5, crops at every size s/example"] == pytest.approx(0.03)
    assert out["ratios"]["mnist_small mixtrain-k5 (per example): crops at every size / dense below CROPS_MIN_DENSE"] \
        == pytest.approx(3.0)
    assert [name for name, t in thresholds if not t] == ["MixTrain"]     # that one epoch only
    assert symbolic.CROPS_MIN_DENSE == {"cpu": 10**12}                  # then restored


def test_certified_benchmark_times_mixtrain_without_recomputation_past_mnist_small(results, monkeypatch):
    """Past MNIST_Small the certified trainers recompute their bounds in the backward; MixTrain k = 5 runs once more
    without (on a CPU full symbolic training does not: its 50 points' graph would outgrow the memory), and the
    ratios say what the recomputation costs and how full symbolic training compares with MixTrain without it."""
    bench = importlib.import_module("bench_certified")
    asked = []

    def fake_seconds(objective, data, device, batch, network="mnist_small", lr=0.01):
        asked.append((network, type(objective).__name__, getattr(objective, "k", None), objective.checkpoint
                      if hasattr(objective, "checkpoint") else None))
        return (0.02 if getattr(objective, "checkpoint", False) else 0.01) * len(data)

    monkeypatch.setattr(bench, "epoch_seconds", fake_seconds)
    monkeypatch.setattr(bench, "FLOOR_NETWORKS", ())
    out = _run("bench_certified", ["--quick", "--networks", "mnist_small", "mnist_large"], results)
    large = out["figures"]["per_example"][1]
    assert large["mixtrain-k5 s/example"] == pytest.approx(0.02)
    assert large["mixtrain-k5, no recomputation s/example"] == pytest.approx(0.01)
    assert "symbolic, no recomputation s/example" not in large                  # not on a CPU
    assert out["ratios"]["mnist_large mixtrain-k5 (per example): recomputing / not"] == pytest.approx(2.0)
    assert out["ratios"]["mnist_large symbolic recomputing / mixtrain-k5 not (per example)"] == pytest.approx(2.0)
    bounded = [a for a in asked if a[1] in ("MixTrain", "SymbolicTraining")]
    assert [a for a in bounded if a[0] == "mnist_large" and not a[3]] == [("mnist_large", "MixTrain", 5, False)]
    assert sum(a[3] for a in bounded if a[0] == "mnist_large") == 3            # symbolic, k = 1, k = 5 recompute
    assert not any(a[3] for a in bounded if a[0] == "mnist_small")             # MNIST_Small: never


def test_certified_benchmark_compares_trainers_per_network_and_floors_per_batch(results, monkeypatch):
    """The first network keeps the file's original keys; every further network is a row of seconds per example
    (full symbolic training on fewer examples) with prefixed ratios; each floor batch size gets its own rows."""
    monkeypatch.setattr(importlib.import_module("bench_certified"), "FLOOR_NETWORKS", ("mnist_small",))
    out = _run("bench_certified", ["--quick", "--networks", "mnist_small", "mnist_small", "--n-symbolic", "50",
                                       "--floor-batches", "1", "2"],
               results)
    first, other = out["figures"]["per_example"]
    assert out["settings"]["networks"] == ["mnist_small", "mnist_small"]
    assert first["n"] == first["n_symbolic"] == out["settings"]["n"]
    assert other["n"] == out["settings"]["n_large"] and other["n_symbolic"] == out["settings"]["n_symbolic"] < other["n"]
    seconds = out["figures"]["epoch_s"]
    assert first["symbolic s/example"] == pytest.approx(seconds["symbolic"] / first["n"])
    ratio = out["ratios"]["mnist_small symbolic / mixtrain-k5 (per example)"]
    assert ratio == pytest.approx(other["symbolic s/example"] / other["mixtrain-k5 s/example"])
    assert out["ratios"]["symbolic / mixtrain-k5"] == pytest.approx(seconds["symbolic"] / seconds["mixtrain-k5"])
    assert [(f["network"], f["batch"]) for f in out["figures"]["symbolic_floor"]] == [("mnist_small", 1),
                                                                                    ("mnist_small", 2)]
    assert "mnist_small symbolic bounds / forward(d+1)" in out["ratios"]          # the first batch: no suffix
    assert "mnist_small symbolic bounds / forward(d+1), batch 2" in out["ratios"]


def test_pruning_benchmark_reports_selection_speed_up_and_bullet_train(results):
    out = _run("bench_pruning", ["--quick", "--dataset", "digits", "--n", "400", "--batch-size", "64",
                                 "--select-batch-sizes", "32"], results)
    f, r = out["figures"], out["ratios"]
    assert out["settings"]["n"] == 300 and out["settings"]["quick"]          # 400 less the 100 held out
    assert all(r[f"{m}_Ks{k}_selection_per_epoch"] > 0 for m in ("gradmatch", "glister") for k in (3, 1))
    assert r["gradmatch_Ks1_selection_per_epoch_amortised_R20"] == pytest.approx(r["gradmatch_Ks1_selection_per_epoch"] / 20)
    assert 0 <= f["bt_steps_saved_share"] <= 1 and sum(f["bt_groups"].values()) == pytest.approx(1.0)
    assert r["pruned_speedup_over_ideal"] == pytest.approx(r["pruned_speedup"] / f["ideal_speedup"])
    assert "bt_bucket_gain" not in r                                          # buckets pad nothing on a CPU
    # the selector's batches of 32 against its default (256 on a CPU), both timed the same way (K_s = 1 at --quick)
    assert r["gradmatch_Ks1_batch32_over_default"] == pytest.approx(f["gradmatch_Ks1_batch32_s"]
                                                                     / f["gradmatch_Ks1_batchdefault_s"])


def test_training_benchmark_compares_with_the_textbook_loop(results):
    out = _run("bench_training", ["--quick", "--device", "cpu", "--variants", "fp32", "default"], results)
    ips = out["figures"]["images_per_s"]
    assert set(ips) == {"textbook", "fp32", "default"} and all(v > 0 for v in ips.values())
    assert out["ratios"]["robustlib[default] / textbook"] == pytest.approx(ips["default"] / ips["textbook"])
    assert out["figures"]["flops_per_image"] > 1e6


def test_profile_benchmark_splits_a_step_by_kind_of_work(results):
    variant = "bf16+channels-last, mixed-layout flatten"
    out = _run("bench_profile", ["--quick", "--device", "cpu", "--variants", "bf16+channels-last", variant,
                                 "--top", "60"], results)
    rows = {r["variant"]: r for r in out["figures"]["by_kind"]}
    assert list(rows) == ["fp32", "bf16+channels-last", variant]   # fp32 first: the ratios' baseline
    for row in rows.values():
        shares = {k: v for k, v in row.items() if k.startswith("% ")}
        assert sum(shares.values()) == pytest.approx(100, abs=0.6) and all(v >= 0 for v in shares.values())
        assert shares["% convolution"] > 0 and row["images_per_s"] > 0 and row["wall_ms_per_batch"] > 0
    tops = out["figures"]["top_operators"]
    assert {t["variant"] for t in tops} == set(rows) and all(t["calls_per_batch"] > 0 for t in tops)
    assert out["ratios"][f"robustlib[{variant}] / robustlib[fp32]"] == pytest.approx(
        rows[variant]["images_per_s"] / rows["fp32"]["images_per_s"])
    # the before variant really runs without the hooks: its Flatten copies once a pass, the after's twice (the copies
    # from one activation into another; on a CPU without bf16 convolutions in oneDNN the slow kernel's bias copies,
    # [32, 32, 7, 7] · [32, 1, 1], are listed too)
    copies = {t["variant"]: t["calls_per_batch"] for t in tops
              if t["op"] == "aten::copy_" and t["shapes"] == "[32, 32, 7, 7] · [32, 32, 7, 7]"}
    assert copies["bf16+channels-last"] == 2 * copies[variant] == 2 * 11   # K + 1 = 11 backward passes a batch


def test_profile_kinds_name_the_usual_operators():
    bench_profile = importlib.import_module("bench_profile")
    assert bench_profile.kind_of("aten::convolution_backward") == "convolution"
    assert bench_profile.kind_of("aten::threshold_backward") == "activation"
    assert bench_profile.kind_of("aten::addmm") == "matrix product"
    assert bench_profile.kind_of("aten::copy_") == "layout / cast"
    assert bench_profile.kind_of("aten::sign") == "attack step"
    assert bench_profile.kind_of("Optimizer.step#SGD.step") == "optimiser"
    assert bench_profile.kind_of("aten::native_batch_norm") == "normalisation"
    assert bench_profile.kind_of("aten::fill_") == "allocation"
    assert bench_profile.kind_of("aten::scatter_add_") == bench_profile.kind_of("aten::unfold_backward") == \
        "gather / scatter"
    assert bench_profile.kind_of("aten::sum") == "reduction"
    assert bench_profile.kind_of("something new") == "other"


def test_sync_sources_name_the_lines_that_wait_for_the_device(monkeypatch):
    """On a GPU the profile says which lines make the host wait: each warning of the sync debug mode is counted by
    the innermost frames of robustlib or the benchmarks behind it; the mode is switched on for the call only. The
    mode itself is a stand-in here (no GPU); the warnings are raised as PyTorch raises them, through ``warnings``."""
    import warnings
    bench_profile = importlib.import_module("bench_profile")
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("another kind of wait")

    found = bench_profile.sync_sources(lambda: common.timed(step, "cpu"))
    assert modes == ["warn", "default"]
    assert [w["count"] for w in found] == [3, 1]
    assert found[0]["what"] == "called a synchronizing CUDA operation" and found[1]["what"] == "another kind of wait"
    assert all("common.py" in w["where"] and "timed" in w["where"] for w in found)
    with warnings.catch_warnings(record=True) as after:   # the usual warning display is back afterwards
        warnings.simplefilter("always")
        warnings.warn("shown")
    assert len(after) == 1


def test_profile_benchmark_compares_certified_steps_by_operator_calls(results):
    """--objective: a MixTrain and a full symbolic-training step of MNIST_Small at batch 50, their elementwise work
    reported as such (not as an attack's), and the ratios of time and operator calls against MixTrain's."""
    out = _run("bench_profile", ["--quick", "--objective", "mixtrain-k5", "symbolic", "--batches", "2"], results,
               result="profile-certified")
    assert out["settings"]["network"] == "mnist_small" and out["settings"]["batch"] == 50
    rows = {r["objective"]: r for r in out["figures"]["by_kind"]}
    assert list(rows) == ["mixtrain-k5", "symbolic"] and {r["variant"] for r in rows.values()} == {"default"}
    for row in rows.values():
        assert "% elementwise" in row and "% attack step" not in row and row["ops_per_batch"] > 100
        assert sum(v for k, v in row.items() if k.startswith("% ")) == pytest.approx(100, abs=0.6)
    # after fit's first batch (whose value checks read the inputs) the only host reads are the sizes of the fresh
    # error terms, one per ReLU layer (MNIST_Small has three) and bound chunk, plus one at the end of the epoch
    first_batch = 9 / out["settings"]["batches"]
    assert 3 <= rows["mixtrain-k5"]["host_reads_per_batch"] <= 3 + first_batch
    # a bound for every one of 50 examples calls more operators than for 5 of them (chunks, larger packing)
    assert rows["symbolic"]["ops_per_batch"] > rows["mixtrain-k5"]["ops_per_batch"]
    assert out["ratios"]["[default] symbolic / mixtrain-k5, operator calls"] == pytest.approx(
        rows["symbolic"]["ops_per_batch"] / rows["mixtrain-k5"]["ops_per_batch"])
