"""The Performance page (robustlib.performance) from benchmark JSON files, and the benchmarks' independent pieces:
the straightforward symbolic-interval reference must give robustlib's bounds, and attacks freeze the parameters."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from robustlib import attacks, bounds, checks, models, performance

sys.path.insert(0, str(ROOT / "benchmarks"))
import naive_symbolic  # noqa: E402


def _write(folder, name, kind, device, figures, ratios, settings=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{kind}.json").write_text(json.dumps({
        "benchmark": name, "device": device, "versions": {"torch": "2.x"}, "date": "2026-11-25T00:00:00+00:00",
        "settings": settings or {"steps": 10}, "figures": figures, "ratios": ratios, **extra}))


def _training(ips, dtype_of=lambda v: "fp32"):
    return {"images_per_s": ips, "warmup_s": {k: 1.0 for k in ips}, "flops_per_image": 4e7,
            "throughput": [{"what": f"PGD-10 AT [{v}]", "flop_per_s": ips[v] * 4e7, "dtype": dtype_of(v)}
                           for v in ips if v != "textbook"]}


def test_page_keeps_devices_apart_and_reports_gains(tmp_path):
    res = tmp_path / "results"
    accuracy = {"fp32": [{"seed": 0, "clean": 0.811, "pgd20": 0.6895, "train_s": 30.2, "precision": "fp32"}],
                "default": [{"seed": 0, "clean": 0.804, "pgd20": 0.687, "train_s": 19.9,
                             "precision": "bf16 + channels-last"}]}
    _write(res, "training", "cpu", "CPU (AMD EPYC, x86_64, 2 logical cores, 2 torch threads)",
           {**_training({"textbook": 1000.0, "fp32": 1100.0, "channels-last": 1650.0}), "accuracy": accuracy,
            "accuracy_epochs": 8, "accuracy_gap_points": {"clean": -0.7, "pgd20": -0.25}},
           {"robustlib[fp32] / textbook": 1.1, "robustlib[channels-last] / robustlib[fp32]": 1.5},
           fit_default_precision="bf16 + channels-last")
    _write(res, "training", "cuda", "NVIDIA H100 80GB HBM3",
           _training({"textbook": 2000.0, "fp32": 3000.0, "bf16": 9000.0}, lambda v: "bf16" if v == "bf16" else "fp32"),
           {"robustlib[bf16] / robustlib[fp32]": 3.0})
    _write(res, "bounds", "cpu", "CPU (x)", [{"net": "mnist_small", "batch": 1, "method": "symbolic",
                                              "samples_per_s": 37.3, "x_floor": 2.5},
                                             {"net": "mnist_small", "batch": 16, "method": "symbolic",
                                              "samples_per_s": 90.0, "x_floor": 1.6, "x_width_floor": 1.2,
                                              "d": 64, "error_columns": 30.5},
                                             {"net": "mnist_small", "batch": 16, "method": "symbolic, one chunk",
                                              "samples_per_s": 45.0},
                                             {"net": "mnist_small", "batch": 1, "method": "symbolic, vector_norm L1",
                                              "samples_per_s": 30.0},
                                             {"net": "mnist_small", "batch": 16,
                                              "method": "symbolic, no crops into Linear", "samples_per_s": 81.0},
                                             {"net": "mnist_small", "batch": 16, "method": "symbolic, no crops",
                                              "samples_per_s": 75.0},
                                             {"net": "mnist_small", "batch": 16, "method": "symbolic, no windows",
                                              "samples_per_s": 60.0},
                                             {"net": "mnist_small", "batch": 16, "method": "symbolic, no shortcuts",
                                              "samples_per_s": 48.0}],
           {"mnist_small B=1 symbolic / forward(d+1)": 2.5})
    _write(res, "bounds", "cuda", "NVIDIA H100 80GB HBM3",
           [{"net": "cifar_large", "batch": 128, "method": "symbolic", "samples_per_s": 190.0},
            {"net": "cifar_large", "batch": 128, "method": "symbolic, one chunk", "samples_per_s": 200.0},
            {"net": "cifar_large", "batch": 128, "method": "symbolic, abs-sum L1", "samples_per_s": 152.0}], {})
    _write(res, "pruning", "cuda", "NVIDIA H100 80GB HBM3", {"bt_train_s": 10.0, "bt_unpadded_train_s": 17.5},
           {"bt_bucket_gain": 1.75, "gradmatch_Ks3_selection_per_epoch_amortised_R20": 0.03}, {"epochs": 4})
    (res / "notes.json").write_text("{}")    # not a benchmark file: ignored
    book_dir = tmp_path / "staged"
    path = performance.write_page(book_dir, res)
    page = path.read_text()
    # gains: before → after with the ratio computed from the same file, per device
    assert "1,100 → 1,650" in page and "1.50×" in page
    assert performance.paired_median({"a": [2.0, 3.0, 5.0], "b": [1.0, 2.0, 2.0]}, "a", "b") == 2.0
    assert performance.paired_median({"a": [1.0]}, "a", "b") is None
    assert "3,000 → 9,000" in page and "3.00×" in page
    # the accuracy check of the default precision: its own table, not a list printed in the figures table
    assert "PGD-AT for 8 epochs" in page and "clean -0.70, PGD-20 -0.25 points" in page
    assert "| default | 0 | bf16 + channels-last | 80.40% | 68.70% | 20 s |" in page
    assert "[{" not in page
    assert page.count("`fit`'s default precision on this device: bf16 + channels-last.") == 1   # only where recorded
    assert "| mnist_small, B = 16 | 45.0 → 90.0 | 2.00× |" in page    # the chunking gain, from the bounds file
    radius = page[page.index("by `torch.linalg.vector_norm(A, 1, dim=1)`"):]   # the L1 radius gain, its own table
    assert "| mnist_small, B = 1 | 30.0 → 37.3 | 1.24× |" in radius.split("\n\n**")[0]
    shortcuts = page[page.index("with `bounds.symbolic.SHORTCUTS` off"):]   # the shortcuts' gain, its own table
    # the changes in their order: shortcuts → windows → crops, each one's after the next one's before
    assert "| mnist_small, B = 16 | 48.0 → 60.0 | 1.25× |" in shortcuts.split("\n\n**")[0]
    assert "both with the windows and the crops off" in shortcuts.split("\n")[0]
    windows = page[page.index("with `bounds.symbolic.PATCHES` off"):]
    assert "| mnist_small, B = 16 | 60.0 → 75.0 | 1.25× |" in windows.split("\n\n**")[0]
    assert "both with the crops off" in windows.split("\n")[0]
    cropped = page[page.index("with `bounds.symbolic.CROPS` off"):]
    assert "| mnist_small, B = 16 | 75.0 → 81.0 | 1.08× |" in cropped.split("\n\n**")[0]
    assert "both with the crops into a Linear off" in cropped.split("\n")[0]
    into_linear = page[page.index("with `bounds.symbolic.CROP_LINEAR` off"):]
    assert "| mnist_small, B = 16 | 81.0 → 90.0 | 1.11× |" in into_linear.split("\n\n**")[0]
    gpu_bounds = page[page.index("**Symbolic bounds (NVIDIA H100"):]
    assert "memory budget" in gpu_bounds.split("\n")[0] and "last-level cache" not in gpu_bounds.split("\n")[0]
    assert "| cifar_large, B = 128 | 200.0 → 190.0 | 0.95× |" in gpu_bounds
    cuda_radius = page[page.index("by `A.abs().sum(1)` → by `torch.linalg.vector_norm(A, 1, dim=1)`"):]
    assert "NVIDIA H100" in page[:page.index("by `A.abs().sum(1)` → by")].rsplit("**Symbolic bounds", 1)[1]
    assert "| cifar_large, B = 128 | 152.0 → 190.0 | 1.25× |" in cuda_radius.split("\n\n**")[0]
    assert "**Bullet-Train (NVIDIA H100 80GB HBM3, run 2026-11-25 00:00 UTC)**: seconds of 4 epochs" in page
    floors = page[page.index("## Symbolic bounds against their floor"):]
    assert "| mnist_small | 16 | 64 | 30.5 | 1.60× | 1.20× |" in floors     # both floors, from the file
    assert "| mnist_small | 1 |" in floors and "| 2.50× | — |" in floors       # a row without the width floor
    assert "| Bullet-Train, full data | 17.5 → 10.0 | 1.75× |" in page
    assert page.count("derived, not measured") == 1       # said once, where a derived ratio is shown
    assert "### CPU: CPU (AMD EPYC" in page and "### GPU: NVIDIA H100" in page
    # a ratio of the CPU file is never shown in the GPU section and vice versa
    cpu_part = page[page.index("### CPU: CPU (AMD EPYC"):page.index("### GPU: NVIDIA H100")]
    assert "robustlib[bf16] / robustlib[fp32]" not in cpu_part
    # rows-style figures become a table; benchmarks without a file say how to make one
    assert "| net | batch | method | samples_per_s | x_floor |" in page and "37.3" in page
    assert "*GPU: not run yet* — `python benchmarks/bench_certified.py --device cuda`" in page
    assert "*CPU: not run yet* — `python benchmarks/bench_pruning.py`" in page
    # the roofline figure: one panel per device, H100's peak known
    assert (book_dir / "_generated" / "roofline.png").stat().st_size > 10_000
    assert "fig-roofline" in page
    assert performance.peak("NVIDIA H100 80GB HBM3")["bf16"] == 989e12
    assert performance.peak("CPU (AMD EPYC)") is None


def test_a_change_measured_against_its_before_variant(tmp_path):
    res = tmp_path / "results"
    ips = {"textbook": 1000.0, "fp32": 1100.0, "bf16+channels-last": 2200.0,
           "bf16+channels-last, mixed-layout flatten": 2000.0, "fp32 unfrozen attack": 1078.0}
    rounds = {"fp32": [1100.0, 1000.0], "bf16+channels-last": [2200.0, 2100.0],
              "bf16+channels-last, mixed-layout flatten": [2000.0, 2100.0], "fp32 unfrozen attack": [1078.0, 1000.0]}
    _write(res, "training", "cpu", "CPU (x)", {**_training(ips), "images_per_s_rounds": rounds}, {})
    _write(res, "profile", "cpu", "CPU (x)", {"by_kind": [{"variant": "fp32", "images_per_s": 1100.0,
                                                           "% convolution": 60.0, "% activation": 40.0}],
                                              "top_operators": [{"variant": "fp32", "op": "aten::relu"}]}, {})
    _write(res, "bounds", "cuda", "NVIDIA H100", [{"net": "mnist_large", "batch": 16, "method": "symbolic",
                                                   "samples_per_s": 900.0},
                                                  {"net": "mnist_large", "batch": 16,
                                                   "method": "symbolic, crops into Linear", "samples_per_s": 450.0}], {})
    page = performance.write_page(tmp_path / "staged", res).read_text()
    # a GPU file: crops into a Linear forced on (the other choice) → off, the default there
    forced = page[page.index("with crops into a Linear forced on → off"):]
    assert "| mnist_large, B = 16 | 450.0 → 900.0 | 2.00× |" in forced.split("\n\n**")[0]
    # each change against its own before, in both the best and the paired-median ratio
    assert "| channels-last gradients through Flatten |" in page and "| 2,000 → 2,200 | 1.10× | 1.05× |" in page
    assert "| frozen parameters in attack steps |" in page and "| 1,078 → 1,100 | 1.02× | 1.01× |" in page
    assert "| bf16+channels-last | both of the above. | 1,100 → 2,200 | 2.00× | 2.05× |" in page
    # the profile renders as tables of its own
    assert "## Where a training step's time goes" in page and "| variant | images_per_s | % convolution |" in page


def test_page_without_results_has_no_figure_and_says_so(tmp_path):
    page = performance.write_page(tmp_path / "staged", tmp_path / "none").read_text()
    assert "fig-roofline" not in page and "No training benchmark has been run yet" in page
    assert page.count("not run yet") == 2 * len(performance.BENCHMARKS)


def test_unreadable_result_names_the_file(tmp_path):
    (tmp_path / "training-cpu.json").write_text("{broken")
    with pytest.raises(ValueError, match="training-cpu.json.*rerun its script"):
        performance.load(tmp_path)


@pytest.mark.parametrize("name,shape", [("mnist_small", (1, 28, 28)), ("small_cnn", (1, 16, 16)),
                                        ("cifar_small", (3, 32, 32))])
def test_naive_symbolic_reference_matches_robustlib(name, shape, one_thread):
    """Two independent implementations of the same relaxation: the benchmark's baseline must compute the same
    bounds as robustlib (otherwise its speed ratio would compare different work)."""
    torch.manual_seed(1)
    model = models.build(name, in_channels=shape[0], input_size=shape[1]).eval()
    x = torch.rand(3, *shape)
    lower, upper = bounds.input_box(x, 0.02)
    with torch.no_grad():
        ours = bounds.symbolic(model, lower, upper)
        ref = naive_symbolic.symbolic(model, lower, upper)
        ibp = bounds.interval(model, lower, upper)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (ref[1] - ref[0]).sum() < (ibp[1] - ibp[0]).sum()   # a non-trivial case: tighter than IBP


def test_naive_symbolic_refuses_what_it_does_not_handle():
    with pytest.raises(TypeError, match="naive_symbolic handles"):
        naive_symbolic.symbolic(nn.Sequential(nn.Tanh()), torch.zeros(1, 2), torch.ones(1, 2))


def test_attacks_freeze_parameters_and_restore_their_flags(one_thread):
    model = models.build("small_cnn", in_channels=1, input_size=8)
    model[0].weight.requires_grad_(False)          # a deliberately frozen layer stays frozen
    seen = []

    def spy(module, inputs, output):
        seen.append([p.requires_grad for p in model.parameters()])

    handle = model.register_forward_hook(spy)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    attacks.pgd(model, x, y, 0.1, steps=2)
    handle.remove()
    assert seen and all(not any(flags) for flags in seen[1:])   # the steps ran with every parameter frozen
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * (len(list(model.parameters())) - 1)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="boom"), checks.input_gradients_only(model):
        raise RuntimeError("boom")
    assert model[2].weight.requires_grad and not model[0].weight.requires_grad


def test_another_networks_training_file_gets_its_own_section(tmp_path):
    # bench_training.py --network mnist_small on CUDA writes training-mnist_small-cuda.json beside training-cuda.json
    res = tmp_path / "results"
    _write(res, "training", "cuda", "NVIDIA H100 80GB HBM3", _training({"textbook": 2000.0, "fp32": 3000.0}),
           {"robustlib[fp32] / textbook": 1.5})
    _write(res, "training-mnist_small", "cuda", "NVIDIA H100 80GB HBM3",
           _training({"textbook": 4000.0, "fp32": 5000.0, "cudagraphs+bf16+channels-last": 31000.0}),
           {"robustlib[cudagraphs+bf16+channels-last] / robustlib[fp32]": 6.2}, settings={"network": "mnist_small"})
    results = performance.load(res)
    assert ("training-mnist_small", "cuda") in results
    page = performance.page(results, None, "now")
    i = page.index("### Adversarial-training throughput, mnist_small")
    assert page.index("## Adversarial-training throughput") < i < page.index("## Bounds")
    assert "training-mnist_small-cuda.json" in page and "6.20×" in page[i:page.index("## Bounds")]


def test_selector_batches_table_reads_both_formats(tmp_path):
    # today's files time the default batches again (the fastest of two); older ones compared with the single
    # timing of the default K_s selection, which the table marks
    res = tmp_path / "results"
    _write(res, "pruning", "cuda", "NVIDIA H200",
           {"gradmatch_Ks3_batchdefault_s": 0.9, "gradmatch_Ks3_batch256_s": 2.25, "gradmatch_Ks3_s": 3.0}, {},
           {"n": 19000})
    _write(res, "pruning", "cpu", "Intel Xeon", {"gradmatch_Ks3_s": 3.6, "gradmatch_Ks3_batch1024_s": 1.2}, {},
           {"n": 5000})
    page = performance.write_page(tmp_path / "staged", res).read_text()
    gpu = page[page.index("**Selector batches (NVIDIA H200, run "):].split("\n\n**")[0]
    assert "| K_s = 3, batches of 256 → the default | 2.25 → 0.90 | 2.50× |" in gpu and "19,000 images" in gpu
    cpu = page[page.index("**Selector batches (Intel Xeon, run "):].split("\n\n**")[0]
    assert "| K_s = 3, batches of 256 (one timing) → 1024 | 3.60 → 1.20 | 3.00× |" in cpu


def test_selection_batch_size_per_device():
    from robustlib.scores import selection_batch_size
    assert selection_batch_size("cuda") == 1024 and selection_batch_size(torch.device("cuda", 0)) == 1024
    assert selection_batch_size("cpu") == 256


def test_result_files_are_checked_and_peaks_and_dtypes_labelled(tmp_path):
    """(An audit.) A result that lacks its keys, carries another kind's name or a device of the other kind is refused
    with its file named; a PCIe or NVL part gets no SXM peak; an fp32 convolution on CUDA ran on TF32 tensor cores."""
    assert performance.peak("NVIDIA H100 PCIe") is None and performance.peak("NVIDIA H200 NVL") is None
    assert performance.peak("NVIDIA H100 80GB HBM3")["tf32"] == 495e12
    assert performance.compute_dtype({"dtype": "fp32"}, "cuda") == "tf32"
    assert performance.compute_dtype({"dtype": "fp32"}, "cpu") == "fp32"
    for i, (name, content) in enumerate([("training-cpu.json", {"device": "CPU (x)", "figures": {}}),
                                         ("training-mps.json", {"device": "x", "figures": {}, "ratios": {}}),
                                         ("training-cpu.json", {"device": "NVIDIA H200", "figures": {},
                                                                "ratios": {}})]):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=name.split(".")[0]):
            performance.load(folder)


def test_a_gain_whose_after_is_fits_default_is_not_dropped(tmp_path):
    res = tmp_path / "results"
    ips = {"textbook": 1000.0, "fp32": 2000.0, "default": 5700.0, "bf16+channels-last, projected steps": 5300.0}
    _write(res, "training", "cuda", "NVIDIA H200", _training(ips), {}, fit_default_precision="bf16 + channels-last")
    page = performance.write_page(tmp_path / "staged", res).read_text()
    assert "box-clamped attack steps" in page and "5,300 → 5,700" in page
