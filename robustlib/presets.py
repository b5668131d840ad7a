"""The three presets every notebook knows, as data.

Each notebook's ``parameters`` cell holds its ``smoke`` values; a preset here
lists only what it changes, per notebook (keyed by the notebook's file stem).
``reproduce`` also injects ``preset`` and ``results_dir`` into every notebook.

- ``smoke``: CPU, 15 s to 5 minutes per notebook, on the embedded digits (or a
  small slice of Fashion-MNIST) with small CNNs. Proves the pipeline, not
  the papers' claims.
- ``cpu``: a 2-core CPU (a laptop), under a minute to about an hour per notebook,
  on real data available offline (Fashion-MNIST, all or a seeded subset, the MNIST test set for the
  published checkpoints) with the papers' small networks (MNIST_Small /
  MNIST_Large); 10,000 test images, so one point of accuracy is about 2.5
  binomial standard errors (SE ≈ √(p(1 − p)/n) ≤ 0.5 points).
- ``gpu``: one modern GPU, minutes per notebook, on real data available
  offline (Fashion-MNIST; the MNIST test set where present).
- ``paper``: the papers' full settings (CIFAR-10/100, MNIST); needs internet
  for the torchvision downloads and hours of GPU.
"""
from functools import lru_cache
from pathlib import Path

DESCRIPTIONS = {
    "smoke": "CPU-sized check of the whole pipeline on the embedded digits; not a reproduction",
    "cpu": "a 2-core CPU, under a minute to about an hour per notebook, real offline data (Fashion-MNIST, MNIST "
           "test set), the papers' small networks",
    "gpu": "one GPU, minutes per notebook, real offline data (Fashion-MNIST)",
    "paper": "the papers' full settings (CIFAR-10/100, MNIST); hours of GPU, needs downloads",
}

PRESETS = {
    "smoke": {},
    "cpu": {
        # data_pruning: PGD-AT with every method at f = 0.2 (Adv-GRAD-MATCH / Adv-GLISTER also at f = 0.4),
        # Bullet-Train alone and with both selectors, both selectors from a perturbation memory (ours), Adv-GLISTER per
        # class (ours) and with the exact last-layer refresh; TRADES and MART full data and Adv-GRAD-MATCH +
        # Bullet-Train.
        # The schedule controls (f = 0.2) add full data for 2 epochs and Adv-GRAD-MATCH / random for 36 (R = 15); the
        # seed repeats add full data, random, Adv-GRAD-MATCH, Adv-GLISTER and its two variants at f = 0.2 with seeds 1
        # and 2 (12 runs, 12 min of training on the Intel Xeon, 2026-11-27); the longer schedule (E = 24) full
        # data, Adv-GRAD-MATCH and random at f = 0.2 (3 runs, 9.5 min of training there).
        # Measured 2026-11-27 on a 2-core Intel Xeon with AMX (bf16): 28 min for the whole notebook from scratch,
        # 25 min of training, controls included (a full-data PGD-10 epoch 14–15 s). On a 2-core AMD EPYC in fp32
        # (2026-11-25/26): 51 min of training (a full-data epoch 25–39 s), about an hour in all.
        "data_pruning": dict(datasets=["fashion-mnist"], model_name="mnist_small", epochs=8, batch_size=128, lr=0.05,
                             schedule="onecycle", augment=None, eps=0.1, alpha=0.025, steps=10, beta=6.0,
                             fractions=[0.2, 0.4], R=3, kappa=0.5, warmup=None, select_steps=3,
                             gradmatch_variant="per_batch", n_valid=1000, attack="pgd-20x2", n_eval=5000,
                             n_autoattack=100, autoattack_runs="claims",
                             grid={"pgd-at": ["full+bt", "random@0.2", "random-static@0.2", "el2n@0.2", "el2n-adv@0.2",
                                              "grand@0.2", "grand-adv@0.2", "gradmatch", "glister",
                                              "gradmatch+bt@0.2", "glister+bt@0.2", "gradmatch-memory@0.2",
                                              "glister-memory@0.2", "glister-balanced@0.2", "glister-exact@0.2"],
                                   "trades": ["gradmatch+bt@0.2"], "mart": ["gradmatch+bt@0.2"]},
                             repeat_seeds=[1, 2], repeat_methods=["gradmatch", "random", "glister", "glister-balanced",
                                                             "glister-exact"],
                             long_epochs=24),
        # setting_the_stage and adversarial_examples: 38 s and 86 s from scratch on a 2-core Intel Xeon with AMX
        # (bf16, 2026-11-27; 55 s and 120 s on a 2-core AMD EPYC in fp32, 2026-11-25); all 10,000 test images.
        "setting_the_stage": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                  lr=0.05, schedule="onecycle", augment=None, n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                     lr=0.05, augment=None, eps_list=[0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2],
                                     eps_show=0.1, n_eval=10000),
        # adversarial_training: 10 min (8.5 min of training) on the Intel Xeon in bf16 (2026-11-27); 18 min on the
        # AMD EPYC in fp32 (2026-11-25). The seed repeats add 10 runs, 18.5 min of training there (2026-11-27).
        "adversarial_training": dict(datasets=["fashion-mnist"], model_name="mnist_small", epochs=10,
                                     batch_size=128, lr=0.05, schedule="onecycle", augment=None, eps=0.1,
                                     alpha=0.025, steps=10, n_eval=10000, n_autoattack=200, repeat_seeds=[1, 2]),
        # interval_analysis: symbolic certification of MNIST_Small costs ≈ 0.008–0.02 s per image here (the
        # published checkpoints, 2026-11-26, with the bounds' shortcuts; 0.02–0.05 s before them, 0.05–0.1 s before
        # the cache-sized chunks), so the published checkpoint is certified on 2,000 real MNIST test images (SE ≤ 0.5
        # points at 95%). 3.2 min from scratch on a 2-core Intel Xeon with AMX (bf16 training, 2026-11-27); on a
        # 2-core AMD EPYC in fp32 before those chunks, 12 min (2026-11-25).
        "interval_analysis": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=10, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=1000, n_published=2000,
                                  n_attack=200, interval_steps=3),
        # mixtrain: both settings ran from scratch in 16 min (13.6 of training) on a 2-core Intel Xeon with AMX on
        # 2026-11-27, fit in bf16 and the bounds with windows, crops and crops into a Linear (22 min there in fp32
        # the day before, 62 min on the AMD machine before windows and crops). One symbolic bound of
        # MNIST_Small at d = 784 cost about 0.04 s forward + backward on the 2-core CPU before them (about 0.007 s
        # at ε = 0.01 on 2026-11-27), so MixTrain runs
        # on a seeded 10,000-image subset of Fashion-MNIST (1,000 symbolic bounds per epoch), full symbolic training
        # on 500, the ablations on 2,000; accuracies on 1,000 test images (standard error ≤ 1.6 points). MNIST_Large
        # runs small: at ε = 0.1 its unstable ReLUs make one symbolic bound cost about 1.2 s on this CPU at random
        # initialisation (forward only; 0.25 s at ε = 0.01), several with its backward, and full symbolic training of
        # a batch of 50 ran out of the 24 GiB of this machine without checkpoint=True (2026-11-26). So it trains on
        # 800 images for 3 epochs (ε = 0, 0.05, 0.1), full symbolic training on 50, accuracies on 100 test images:
        # its times per example are the measurement, its accuracies are not evidence. The ablations (k, rule,
        # sampling) and the pruning runs repeat with seeds 1 and 2: 22 runs, 9 min of training on the Intel Xeon
        # (2026-11-27). The longer budget (PGD-AT and MixTrain on all 60,000 images for 10 epochs) trained in 6.2 and
        # 11.8 min there (2026-11-27).
        "mixtrain": dict(dataset="fashion-mnist", image_size=None, model_name="mnist_small", n_train=10000,
                         n_symbolic=500, n_ablation=2000, epochs=6, eps_warmup=2, eps=0.1, lr=1e-3, k=5, n_val=200,
                         n_eval=1000, n_attack=200, pgd_restarts=10, interval_steps=5,
                         settings=[{}, {"model": "mnist_large", "n_train": 1000, "n_symbolic": 50, "n_eval": 100,
                                        "epochs": 3, "checkpoint": True}],
                         repeat_seeds=[1, 2], repeat_sections=["k", "rule", "sampling", "pruning"],
                         long_budget={"n_train": None, "epochs": 10}),
    },
    "gpu": {
        # Each chapter is sized for one run of scripts/run_offline.sh: under 9 minutes on one H100 or H200 (a lent
        # GPU machine gives a session 15 minutes). data_pruning and mixtrain have run (below); the others are estimates
        # from the committed GPU benchmark figures: a full-data PGD-10 epoch of PreAct-ResNet-18 on 59,000
        # Fashion-MNIST images ≈ 9.5–11.4 s at batch 512 on the H200 (measured in data_pruning's run), a fresh PGD-3
        # selection ≈ 0.7 of it, one from the perturbation memory ≈ 0.06–0.09.
        # data_pruning: E = 5, f = 0.3, T_w = 1, R = 2 (two selections): PGD-AT with full data, Bullet-Train,
        # random, Adv-GRAD-MATCH (fresh and from the memory), Adv-GLISTER and its two variants; TRADES full and with
        # Adv-GRAD-MATCH + Bullet-Train; the equal-budget control (no stretched schedules). Measured 2026-11-27 on one
        # NVIDIA H200 (bf16 + channels-last), before the two Adv-GLISTER variants joined the grid (about 50 s more):
        # 6.5 min for the whole notebook, 5.3 min of training; 402 s in run_offline.sh.
        # MART, the static scores, more fractions and the stretched controls are for `paper` or a GPU of one's own
        # (add them to the grid).
        "data_pruning": dict(datasets=["fashion-mnist"], model_name="preact_resnet18", epochs=5, batch_size=512,
                             lr=0.1, schedule="onecycle", augment="crop-flip", eps=0.1, alpha=0.025, steps=10,
                             beta=6.0, fractions=[0.3], R=2, kappa=0.5, warmup=None, select_steps=3,
                             gradmatch_variant="per_batch", n_valid=1000, attack="pgd-20x2", n_eval=2000,
                             n_autoattack=100, autoattack_runs="claims", schedule_methods=[],
                             objectives=["pgd-at", "trades"], repeat_seeds=[], long_epochs=None,
                             grid={"pgd-at": ["full+bt", "random", "gradmatch", "glister", "glister-balanced",
                                              "glister-exact", "gradmatch-memory"],
                                   "trades": ["gradmatch+bt"]}),
        "setting_the_stage": dict(dataset="fashion-mnist", model_name="preact_resnet18", epochs=15,
                                  batch_size=256, lr=0.1, schedule="onecycle", augment="crop-flip",
                                  n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="fashion-mnist", model_name="preact_resnet18", epochs=10,
                                     batch_size=256, lr=0.1, augment="crop-flip",
                                     eps_list=[0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2], eps_show=0.1,
                                     n_eval=2000),
        # adversarial_training: five methods × 8 epochs ≈ 27 full-data PGD-10 epochs' worth (≈ 5 min) and AutoAttack
        # on 200 images of each model: about 7 min.
        "adversarial_training": dict(datasets=["fashion-mnist"], model_name="preact_resnet18", epochs=8,
                                     batch_size=512, lr=0.1, schedule="onecycle", augment="crop-flip",
                                     eps=0.1, alpha=0.025, steps=10, n_eval=None, n_autoattack=200, repeat_seeds=[]),
        "interval_analysis": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=1000, n_published=10000,
                                  n_attack=500, interval_steps=5),
        # mixtrain: per 2,000 images at batch 50 on the H200 (certified-cuda.json, 2026-11-27) PGD-AT takes 0.72 s,
        # MixTrain k = 5 0.55 s, full symbolic 0.88 s, IBP 0.33 s; one symbolic bound of MNIST_Large with its
        # backward ≈ 5.4 ms.
        # Twice the `cpu` preset's data: MNIST_Small on 20,000 images (full symbolic on 5,000, the ablations on
        # 5,000), MNIST_Large on 5,000 (full symbolic on 250), 6 epochs. Measured 2026-11-27 on one NVIDIA H200:
        # 7.2 min for the whole notebook, 6.3 min of training; 459 s in run_offline.sh.
        "mixtrain": dict(dataset="fashion-mnist", image_size=None, model_name="mnist_small", n_train=20000,
                         n_symbolic=5000, n_ablation=5000, epochs=6, eps_warmup=2, eps=0.1, lr=1e-3, k=5, n_val=500,
                         n_eval=5000, n_attack=500, pgd_restarts=10, interval_steps=5,
                         settings=[{}, {"model": "mnist_large", "n_train": 5000, "n_symbolic": 250, "n_eval": 1000,
                                        "checkpoint": True}], repeat_seeds=[],
                         long_budget=None),   # all 60,000 images for 10 epochs would not fit the 9-minute run
    },
    "paper": {
        # data_pruning: the paper's setting as far as it is known (CIFAR-10/100, PreAct-ResNet-18, ε = 8/255,
        # α = 2/255, K = 10, R = 20, about 100 epochs); the full grid for all three objectives. GPU-days.
        "data_pruning": dict(datasets=["cifar10", "cifar100"], model_name="preact_resnet18", epochs=100,
                             batch_size=128, lr=0.1, schedule="multistep", augment="crop-flip", eps=8 / 255,
                             alpha=2 / 255, steps=10, beta=6.0, fractions=[0.1, 0.2, 0.3, 0.5], R=20, kappa=0.5,
                             warmup=None, select_steps=10, gradmatch_variant="per_batch", n_valid=1000,
                             attack="pgd-20x5", n_eval=None, n_autoattack=1000, autoattack_runs="claims",
                             grid={o: ["full+bt"] + [m + bt for bt in ("", "+bt") for m in (
                                       "random", "random-static", "el2n", "el2n-adv", "grand", "grand-adv",
                                       "gradmatch", "glister", "glister-balanced", "glister-exact")]
                                   for o in ("pgd-at", "trades", "mart")},
                             repeat_seeds=[1, 2], repeat_methods=["gradmatch", "glister", "glister-balanced", "random"],
                             long_epochs=None),
        "setting_the_stage": dict(dataset="cifar10", model_name="preact_resnet18", epochs=100,
                                  batch_size=128, lr=0.1, schedule="multistep", augment="crop-flip",
                                  n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="cifar10", model_name="preact_resnet18", epochs=100,
                                     batch_size=128, lr=0.1, augment="crop-flip",
                                     eps_list=[0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], eps_show=8 / 255,
                                     n_eval=None),
        "adversarial_training": dict(datasets=["cifar10", "cifar100"], model_name="preact_resnet18", epochs=100,
                                     batch_size=128, lr=0.1, schedule="multistep", augment="crop-flip",
                                     eps=8 / 255, alpha=2 / 255, steps=10, n_eval=None, n_autoattack=1000,
                                     repeat_seeds=[1, 2]),
        "interval_analysis": dict(dataset="mnist", model_name="mnist_small", epochs=50, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=10000, n_published=10000,
                                  n_attack=1000, interval_steps=5),
        # mixtrain: the paper's three settings (MNIST ε = 0.1 and 0.3 with both MNIST networks, CIFAR-10 ε = 2/255
        # with CIFAR_Small); the ablations and the interval attack on the first. GPU-days.
        "mixtrain": dict(dataset="mnist", image_size=None, model_name="mnist_small", n_train=None,
                         n_symbolic=None, n_ablation=10000, epochs=60, eps_warmup=15, eps=0.1, lr=1e-3, k=5, n_val=1000,
                         n_eval=10000, n_attack=1000, pgd_restarts=10, interval_steps=5,
                         settings=[{}, {"eps": 0.3}, {"model": "mnist_large", "checkpoint": True},
                                   {"model": "mnist_large", "eps": 0.3, "checkpoint": True},
                                   {"dataset": "cifar10", "model": "cifar_small", "eps": 2 / 255, "checkpoint": True}],
                         repeat_seeds=[1, 2], repeat_sections=["k", "rule", "sampling", "pruning"],
                         long_budget=None),   # the main runs use every image for 60 epochs already
    },
}


def resolve(preset: str) -> str:
    """``auto`` → ``gpu`` when CUDA is present, else ``smoke``."""
    if preset == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "smoke"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: auto, {', '.join(PRESETS)}")
    return preset


def parameters(preset: str, notebook: str) -> dict:
    """The parameters a preset gives one notebook (on top of its smoke defaults)."""
    return dict(PRESETS[resolve(preset)].get(notebook, {}))


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MACHINE_PARAMETERS = ("preset", "results_dir", "reference_dir")   # where things are, not what is computed


class Unevaluated(str):
    """A parameter whose value is not a literal: its source text, without comments."""


def cell_defaults(cell_source: str) -> dict | None:
    """A parameters cell's ``name = value`` lines as {name: value} (a literal's value, else its source text as an
    :class:`Unevaluated`); None when the cell holds anything else."""
    import ast
    try:
        tree = ast.parse(cell_source)
    except SyntaxError:
        return None
    out = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            out[node.targets[0].id] = Unevaluated(ast.unparse(node.value))
    return out


@lru_cache(maxsize=None)
def notebook_defaults(notebook: str) -> dict:
    """The literal values of a chapter's parameters cell (its smoke defaults), read from this checkout's
    ``notebooks/<notebook>.ipynb``; {} where there is none (robustlib installed without the book)."""
    import json
    path = NOTEBOOKS / f"{notebook}.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])] if path.exists() else []
    found = cell_defaults("".join(cells[0]["source"])) if cells else None
    return {k: v for k, v in (found or {}).items() if not isinstance(v, Unevaluated)}


def deviations(preset: str, notebook: str, namespace: dict) -> dict:
    """Where a notebook's parameters (``namespace``: its variables) differ from what ``preset`` gives it — the
    preset's values on top of the notebook's own defaults: ``{name: {"used": value, "preset": value}}``. A notebook
    run by ``reproduce`` has none; one whose ``preset`` was set by hand (in Jupyter, on Colab) without the preset's
    values, or with another value of any parameter, has them, and its record says so. Names the namespace does not
    hold, and where files are (``MACHINE_PARAMETERS``), are skipped; values are compared as JSON would store them (a
    tuple equals a list)."""
    import json
    out = {}
    expected = {**notebook_defaults(notebook), **parameters(preset, notebook)}
    for name, value in expected.items():
        if name in MACHINE_PARAMETERS:
            continue
        if name in namespace:
            used = namespace[name]
            if json.dumps(used, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
                out[name] = {"used": used, "preset": value}
    return out


# A dry run executes a preset's code paths (its networks, grids, objectives, sections) on the embedded digits with
# every size and epoch count capped, on any machine: a `gpu` or `paper` preset checked on a CPU before GPU time is
# spent on it. A number key is capped (a size of None, "all", becomes the cap); datasets become "digits".
DRY_CAPS = {"epochs": 2, "long_epochs": 3, "n_train": 200, "n_test": 100, "n_eval": 60, "n_autoattack": 4,
            "n_valid": 100, "n_val": 50, "n_symbolic": 100, "n_ablation": 100, "n_certify": 20, "n_published": 20,
            "n_attack": 10, "R": 1, "eps_warmup": 1}
DRY_LISTS = {"repeat_seeds": 1}   # at most this many entries
DRY_NONE_IS_ALL = ("n_train", "n_test", "n_eval", "n_symbolic", "n_ablation", "n_certify", "n_published")


def _dry(key, value):
    if key == "dataset":
        return "digits"
    if key == "datasets":
        return ["digits"]
    if key in DRY_CAPS and value is None:   # None: "all" for a size, "skip" or "the rule" for the others
        return DRY_CAPS[key] if key in DRY_NONE_IS_ALL else None
    if key in DRY_CAPS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(value, DRY_CAPS[key])
    if key in DRY_LISTS and isinstance(value, list):
        return value[:DRY_LISTS[key]]
    if key == "settings" and isinstance(value, list):
        return [{k: _dry(k, v) for k, v in s.items()} for s in value]
    if isinstance(value, dict):   # e.g. MixTrain's long_budget
        return {k: _dry(k, v) for k, v in value.items()}
    return value


def dry_run(preset: str, notebook: str) -> dict:
    """The parameters of a dry run of ``notebook`` at ``preset``: the preset's own with the data replaced by the
    embedded digits and every size and epoch count capped (:data:`DRY_CAPS`, :data:`DRY_LISTS`; also inside
    MixTrain's ``settings`` and ``long_budget``). A key the preset leaves out keeps the notebook's smoke value, which
    is small already."""
    return {k: _dry(k, v) for k, v in parameters(preset, notebook).items()}
