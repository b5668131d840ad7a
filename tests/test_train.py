import math

import pytest
import torch

import robustlib as rl
from robustlib.objectives import Objective, Standard
from robustlib.train import fit, lr_factor

from conftest import HostReads


class NoisyStandard(Objective):
    """Cross-entropy on inputs with Gaussian noise: uses torch's global RNG, as attack start points do."""

    name = "noisy"

    def losses(self, model, x, y):
        self.count(len(y), 1, 1)
        return torch.nn.functional.cross_entropy(model((x + 0.1 * torch.randn_like(x)).clamp(0, 1)), y,
                                                 reduction="none")


def test_loss_falls_and_model_learns(digits):
    train, test = digits
    model = rl.models.build("small_cnn")
    before = rl.evaluate.accuracy(model, test)
    history = fit(model, train, Standard(), epochs=6, batch_size=64, lr=0.1, schedule="onecycle",
                  eval_fn=lambda m: {"test_acc": rl.evaluate.accuracy(m, test)})
    assert len(history) == 6 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["test_acc"] > 0.85 > before
    rec = history[-1]
    assert rec["examples"] == len(train) and rec["forward"] == len(train) and rec["wall_s"] > 0
    assert history.wall_s == pytest.approx(sum(r["wall_s"] for r in history))
    assert not model.training  # fit leaves the model in eval mode


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_resume_after_interruption_gives_identical_weights(digits, tmp_path):
    train, _ = digits
    kw = dict(epochs=4, batch_size=128, lr=0.05, schedule="cosine", augment="crop", seed=7)
    torch.manual_seed(1)
    full = rl.models.build("small_cnn")
    init = {k: v.clone() for k, v in full.state_dict().items()}
    h_full = fit(full, train, NoisyStandard(), **kw)

    class Interrupt(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    ckpt = tmp_path / "run.pt"
    part = rl.models.build("small_cnn")
    part.load_state_dict(init)
    with pytest.raises(Interrupt):
        fit(part, train, NoisyStandard(), checkpoint=ckpt, callback=stop_after_two, **kw)
    assert ckpt.exists()
    torch.manual_seed(12345)  # the resumed process's RNG is in another state: the checkpoint must restore it
    resumed = rl.models.build("small_cnn")
    h_res = fit(resumed, train, NoisyStandard(), checkpoint=ckpt, **kw)
    assert [r["epoch"] for r in h_res] == [1, 2, 3, 4]
    assert torch.equal(_weights(full), _weights(resumed))
    assert [r["loss"] for r in h_full] == pytest.approx([r["loss"] for r in h_res], rel=1e-6)
    state = torch.load(ckpt, weights_only=True)  # checkpoints are plain tensors and containers
    assert state["epoch"] == 4


def test_selector_hook_trains_on_the_chosen_weighted_subset(digits):
    train, _ = digits
    calls = []

    def selector(epoch, model, data):
        calls.append(epoch)
        if epoch % 2 == 0:  # re-select every 2 epochs; keep the subset in between
            idx = torch.arange(epoch * 10, epoch * 10 + 300)
            return idx, torch.full((300,), 2.0)
        return None

    history = fit(rl.models.build("small_cnn"), train, Standard(), epochs=3, batch_size=100, lr=0.05,
                  selector=selector)
    assert calls == [0, 1, 2]
    assert [r["examples"] for r in history] == [300, 300, 300]
    assert all(r["select_s"] >= 0 and r["select_s"] <= r["wall_s"] for r in history)


def test_weights_scale_the_loss(digits):
    train, _ = digits
    idx = torch.arange(256)
    losses = []
    for w in (1.0, 3.0):
        torch.manual_seed(0)
        m = rl.models.build("small_cnn")
        h = fit(m, train, Standard(), epochs=1, batch_size=256, lr=1e-9, optimizer="sgd",
                selector=lambda e, model, d, w=w: (idx, torch.full((256,), w)))
        losses.append(h[0]["loss"])
    assert losses[1] == pytest.approx(3 * losses[0], rel=1e-4)


def test_schedules():
    assert lr_factor("constant", 3.3, 10) == 1
    assert lr_factor("multistep", 4.9, 10) == 1 and lr_factor("multistep", 5.0, 10) == pytest.approx(0.1)
    assert lr_factor("multistep", 7.6, 10) == pytest.approx(0.01)
    assert lr_factor("multistep", 2, 10, milestones=[1], gamma=0.5) == 0.5
    assert lr_factor("cosine", 0, 10) == 1 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("onecycle", 4, 10) == pytest.approx(1) and lr_factor("onecycle", 2, 10) == pytest.approx(0.5)
    assert lr_factor("onecycle", 10, 10) == 0
    with pytest.raises(ValueError, match="valid: constant"):
        lr_factor("step", 0, 10)


def test_fit_rejects_bad_arguments(digits):
    train, _ = digits
    model = rl.models.build("small_cnn")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, train, Standard(), epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        fit(model, train, Standard(), epochs=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="schedule"):
        fit(model, train, Standard(), epochs=1, schedule="warm")
    with pytest.raises(ValueError, match="lr"):
        fit(model, train, Standard(), epochs=1, lr=math.nan)
    with pytest.raises(ValueError, match="reduce-overhead"):   # names the modes torch.compile knows
        fit(model, train, Standard(), epochs=1, compile="fast")
    with pytest.raises(ValueError, match="no batch to train on: 40 examples, batch_size 50, drop_last=True"):
        fit(model, train.head(40), Standard(), epochs=1, batch_size=50, drop_last=True)
    assert len(fit(model, train.head(40), Standard(), epochs=1, batch_size=50, progress=False)) == 1  # one short batch


def test_non_finite_loss_is_reported(digits):
    train, _ = digits

    class Broken(Standard):
        def losses(self, model, x, y):
            return super().losses(model, x, y) * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(rl.models.build("small_cnn"), train.head(64), Broken(), epochs=1)


def test_adam_and_history_frame(digits):
    train, _ = digits
    h = fit(rl.models.build("small_cnn"), train.head(256), Standard(), epochs=2, optimizer="adam", lr=1e-3)
    frame = h.frame()
    assert list(frame["epoch"]) == [1, 2] and {"loss", "lr", "wall_s", "select_s"} <= set(frame.columns)


def test_objectives_accept_per_example_weights(digits):
    train, _ = digits
    model = rl.models.build("small_cnn").eval()
    x, y = train.x(torch.arange(16)), train.labels[:16]
    w = torch.rand(16)
    plain = Standard()(model, x, y)
    assert plain.shape == (16,)
    assert torch.allclose(Standard()(model, x, y, w), plain * w)
    with pytest.raises(ValueError, match="one per example"):
        Standard()(model, x, y, torch.ones(3))


def test_checkpoint_with_numpy_and_tensor_metrics_reloads(digits, tmp_path):
    import numpy as np
    train, _ = digits
    kw = dict(epochs=2, batch_size=128, checkpoint=tmp_path / "c.pt",
              eval_fn=lambda m: {"acc": np.float64(0.5), "margin": torch.tensor(1.5)})
    h = fit(rl.models.build("small_cnn"), train.head(256), Standard(), **kw)
    assert h[-1]["acc"] == 0.5 and h[-1]["margin"] == 1.5
    h2 = fit(rl.models.build("small_cnn"), train.head(256), Standard(), **kw)  # resumes: nothing left to do
    assert [r["epoch"] for r in h2] == [1, 2] and h2[-1]["margin"] == 1.5


def test_gpu_code_paths_run_on_cpu(digits):
    """channels-last and bf16 autocast are the CUDA defaults; forced on here they must still train."""
    train, test = digits
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    h = fit(model, train, Standard(), epochs=6, batch_size=64, lr=0.1, amp=True, channels_last=True,
            schedule="onecycle")
    assert h[-1]["loss"] < 0.5 * h[0]["loss"] and rl.evaluate.accuracy(model, test) > 0.8
    assert model[0].weight.is_contiguous()  # memory format restored after training


@pytest.mark.parametrize("name", ["pgd-at", "trades", "mart", "fast-at", "bullet-train", "ibp", "mixtrain"])
def test_training_steps_read_no_tensor_value_on_the_host(digits, name):
    """No host synchronisation inside a step (a GPU would wait for its queued kernels at each): after fit's first
    batch, which checks its inputs, an epoch reads one value on the host, its mean loss at the end. Symbolic bounds
    also read the number of fresh error terms of each ReLU layer, which sizes their tensors (MixTrain: one per ReLU
    layer and step). BulletTrain's one documented read a step, the group sizes' ``.tolist()``, is a copy on a GPU
    that a CPU makes without dispatching a read, so it is not counted here."""
    make = {"pgd-at": lambda: rl.objectives.PGDAT(0.1, steps=2), "trades": lambda: rl.objectives.TRADES(0.1, steps=2),
            "mart": lambda: rl.objectives.MART(0.1, steps=2), "fast-at": lambda: rl.objectives.FastAT(0.1),
            "bullet-train": lambda: rl.objectives.BulletTrain(rl.objectives.PGDAT(0.1, steps=2)),
            "ibp": lambda: rl.objectives.IBPTraining(0.05),
            "mixtrain": lambda: rl.objectives.MixTrain(0.05, k=2, rule="fixed")}[name]
    train = digits[0].subset(torch.arange(512))
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    relus = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    after_epoch = []
    with HostReads() as reads:
        fit(model, train, make(), epochs=2, batch_size=128, progress=False,
            callback=lambda record: after_epoch.append(reads.n))
    batches = -(-len(train) // 128)
    assert after_epoch[1] - after_epoch[0] == 1 + (relus * batches if name == "mixtrain" else 0), after_epoch

