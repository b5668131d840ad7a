"""The three presets every notebook knows, as data.

Each notebook's ``parameters`` cell holds its ``smoke`` values; a preset here
lists only what it changes, per notebook (keyed by the notebook's file stem).
``reproduce`` also injects ``preset`` and ``results_dir`` into every notebook.

- ``smoke``: CPU, about a minute per notebook, on the embedded digits (or a
  small slice of Fashion-MNIST) with small CNNs. Proves the pipeline, not
  the papers' claims.
- ``cpu``: a 2-core CPU (a laptop), about an hour per notebook, on real data
  available offline (Fashion-MNIST in full, the MNIST test set for the
  published checkpoints) with the papers' small networks (MNIST_Small /
  MNIST_Large); 10,000 test images, so one point of accuracy is about 2.5
  binomial standard errors (SE ≈ √(p(1 − p)/n) ≤ 0.5 points).
- ``gpu``: one modern GPU, minutes per notebook, on real data available
  offline (Fashion-MNIST; the MNIST test set where present).
- ``paper``: the papers' full settings (CIFAR-10/100, MNIST); needs internet
  for the torchvision downloads and hours of GPU.
"""

DESCRIPTIONS = {
    "smoke": "CPU-sized check of the whole pipeline on the embedded digits; not a reproduction",
    "cpu": "a 2-core CPU, about an hour per notebook, real offline data (Fashion-MNIST, MNIST test set), "
           "the papers' small networks",
    "gpu": "one GPU, minutes per notebook, real offline data (Fashion-MNIST)",
    "paper": "the papers' full settings (CIFAR-10/100, MNIST); hours of GPU, needs downloads",
}

PRESETS = {
    "smoke": {},
    "cpu": {
        "setting_the_stage": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                  lr=0.05, schedule="onecycle", augment=None, n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                     lr=0.05, augment=None, eps_list=[0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2],
                                     eps_show=0.1, n_eval=10000),
        "adversarial_training": dict(datasets=["fashion-mnist"], model_name="mnist_small", epochs=10,
                                     batch_size=128, lr=0.05, schedule="onecycle", augment=None, eps=0.1,
                                     alpha=0.025, steps=10, n_eval=10000, n_autoattack=200),
        "interval_analysis": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=10, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=1000, n_published=10000,
                                  n_attack=500, interval_steps=5),
    },
    "gpu": {
        "setting_the_stage": dict(dataset="fashion-mnist", model_name="preact_resnet18", epochs=15,
                                  batch_size=256, lr=0.1, schedule="onecycle", augment="crop-flip",
                                  n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="fashion-mnist", model_name="preact_resnet18", epochs=10,
                                     batch_size=256, lr=0.1, augment="crop-flip",
                                     eps_list=[0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2], eps_show=0.1,
                                     n_eval=2000),
        "adversarial_training": dict(datasets=["fashion-mnist"], model_name="preact_resnet18", epochs=10,
                                     batch_size=256, lr=0.1, schedule="onecycle", augment="crop-flip",
                                     eps=0.1, alpha=0.025, steps=10, n_eval=None, n_autoattack=500),
        "interval_analysis": dict(dataset="fashion-mnist", model_name="mnist_small", epochs=20, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=1000, n_published=10000,
                                  n_attack=500, interval_steps=5),
    },
    "paper": {
        "setting_the_stage": dict(dataset="cifar10", model_name="preact_resnet18", epochs=100,
                                  batch_size=128, lr=0.1, schedule="multistep", augment="crop-flip",
                                  n_train=None, n_test=None),
        "adversarial_examples": dict(dataset="cifar10", model_name="preact_resnet18", epochs=100,
                                     batch_size=128, lr=0.1, augment="crop-flip",
                                     eps_list=[0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], eps_show=8 / 255,
                                     n_eval=None),
        "adversarial_training": dict(datasets=["cifar10", "cifar100"], model_name="preact_resnet18", epochs=100,
                                     batch_size=128, lr=0.1, schedule="multistep", augment="crop-flip",
                                     eps=8 / 255, alpha=2 / 255, steps=10, n_eval=None, n_autoattack=1000),
        "interval_analysis": dict(dataset="mnist", model_name="mnist_small", epochs=50, batch_size=128,
                                  lr=0.05, eps=0.1, alpha=0.025, steps=10, n_certify=10000, n_published=10000,
                                  n_attack=1000, interval_steps=5),
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
