"""fit's default precision: bf16 + channels-last where the hardware multiplies bf16 (CUDA, AMX CPUs), else fp32."""
from pathlib import Path

import pytest
import torch

import robustlib as rl
from robustlib import precision
from robustlib.objectives import Standard
from robustlib.train import fit


def _cpu_flags() -> set | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_native_bf16_agrees_with_the_cpu_flags(monkeypatch):
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    monkeypatch.delenv("ROBUSTLIB_CPU_BF16", raising=False)
    assert precision.native_bf16() == ("amx_tile" in flags and "amx_bf16" in flags)
    assert precision.auto_bf16("cpu") == precision.native_bf16() == precision.auto_channels_last("cpu")
    assert precision.auto_bf16("cuda") and precision.auto_channels_last("cuda")


def test_the_environment_overrides_the_cpu(monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "off")
    assert precision.resolve("cpu") == (False, False) and precision.describe("cpu") == "fp32"
    assert precision.resolve("cuda") == (True, True)              # the override is for CPUs only
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "on")
    assert precision.resolve("cpu") == (True, True) and precision.describe("cpu") == "bf16 + channels-last"
    assert precision.resolve("cpu", amp=False) == (False, True)    # explicit values win over "auto"
    assert precision.label(True, False) == "bf16" and precision.label(False, True) == "fp32 + channels-last"
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="ROBUSTLIB_CPU_BF16 must be 'on' or 'off'"):
        precision.auto_bf16("cpu")
    monkeypatch.delenv("ROBUSTLIB_CPU_BF16")
    with pytest.raises(ValueError, match="amp must be True, False or 'auto'"):
        precision.resolve("cpu", amp="bf16")


def _conv_output_dtypes(model) -> list:
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("mode, dtype, label", [("on", torch.bfloat16, "bf16 + channels-last"),
                                                ("off", torch.float32, "fp32")])
def test_fit_trains_in_the_default_precision_and_records_it(digits, tmp_path, monkeypatch, mode, dtype, label):
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", mode)
    train, test = digits
    torch.manual_seed(0)
    model = rl.models.build("small_cnn")
    dtypes = _conv_output_dtypes(model)
    h = fit(model, train, Standard(), epochs=3, batch_size=64, lr=0.1, schedule="onecycle", progress=False,
            checkpoint=tmp_path / "run.pt")
    assert h.precision == label and set(dtypes) == {dtype}
    assert h[-1]["loss"] < 0.6 * h[0]["loss"] and rl.evaluate.accuracy(model, test) > 0.8
    assert all(p.is_contiguous() for p in model.parameters())   # channels-last is undone after training
    assert torch.load(tmp_path / "run.pt", weights_only=True)["run"]["precision"] == label


class _Stop(Exception):
    pass


def _stop_after_one(record):
    if record["epoch"] == 1:
        raise _Stop


def test_a_checkpoint_in_another_precision_is_not_resumed(digits, tmp_path, monkeypatch):
    train, _ = digits
    kw = dict(epochs=2, batch_size=128, lr=0.05, progress=False, checkpoint=tmp_path / "run.pt")
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "off")
    with pytest.raises(_Stop):
        fit(rl.models.build("small_cnn"), train, Standard(), callback=_stop_after_one, **kw)
    monkeypatch.setenv("ROBUSTLIB_CPU_BF16", "on")
    with pytest.raises(ValueError, match="precision: 'fp32' → 'bf16 \\+ channels-last'"):
        fit(rl.models.build("small_cnn"), train, Standard(), **kw)
    # a checkpoint written before runs recorded their precision resumes (it says nothing to compare)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    del state["run"]["precision"]
    torch.save(state, tmp_path / "run.pt")
    h = fit(rl.models.build("small_cnn"), train, Standard(), **kw)
    assert h.resumed_epochs == 1 and len(h) == 2


def test_keyed_runs_and_records_say_their_precision(digits, tmp_path, monkeypatch):
    train, _ = digits
    keys = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("ROBUSTLIB_CPU_BF16", mode)
        record = rl.reproduce.Record("chapter", "smoke", tmp_path)
        torch.manual_seed(0)
        record.fit("std", rl.models.build("small_cnn"), train, Standard(), epochs=1, batch_size=128, progress=False)
        keys[mode] = record.runs[0]["key"]
        assert record.to_dict()["precision"] == record.runs[0]["precision"] == precision.describe("cpu")
        assert f"({precision.describe('cpu')})" in record.caption()
    assert keys["on"] != keys["off"]   # a run trained in fp32 is never reloaded as the bf16 one


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    return "channels-last" if t.is_contiguous(memory_format=torch.channels_last) else "strided"


def _relu_grads(model, x, y) -> tuple[list, list]:
    """(layout of the gradient each ReLU of ``model`` receives, the input gradient) of one CE backward."""
    seen = []
    handles = [m.register_full_backward_hook(lambda m, gi, go: seen.append(_layout(go[0]) if go[0].dim() == 4 else "2d"))
               for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    x = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    return seen, x.grad


def test_flatten_hands_gradients_back_channels_last_with_the_same_values():
    torch.manual_seed(0)
    model = rl.models.build("mnist_small").to(memory_format=torch.channels_last)
    x = torch.rand(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    plain_layouts, plain_grad = _relu_grads(model, x, y)
    # without the hooks, the ReLU before Flatten gets a contiguous gradient for its channels-last output
    assert plain_layouts == ["2d", "contiguous", "channels-last"]
    with precision.channels_last_gradients(model):
        layouts, grad = _relu_grads(model, x, y)
    assert layouts == ["2d", "channels-last", "channels-last"]
    torch.testing.assert_close(grad, plain_grad, rtol=0, atol=0)   # the same numbers: only their layout moved
    assert all(not m._forward_pre_hooks for m in model.modules())   # nothing left behind on leaving


def test_flatten_leaves_contiguous_activations_alone():
    torch.manual_seed(0)
    model = rl.models.build("mnist_small")   # row-major: nothing to hand back in another layout
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with precision.channels_last_gradients(model):
        layouts, _ = _relu_grads(model, x, y)
    assert layouts == ["2d", "contiguous", "contiguous"]


def test_fit_in_channels_last_removes_its_hooks(digits, monkeypatch):
    entered = []
    original = precision.channels_last_gradients

    def spy(model):
        entered.append(model)
        return original(model)

    monkeypatch.setattr(precision, "channels_last_gradients", spy)
    train, _ = digits
    model = rl.models.build("small_cnn", like=train)
    fit(model, train.head(64), Standard(), epochs=1, batch_size=32, channels_last=True, amp=False, progress=False)
    assert entered == [model] and all(not m._forward_pre_hooks for m in model.modules())
    fit(model, train.head(64), Standard(), epochs=1, batch_size=32, channels_last=False, amp=False, progress=False)
    assert len(entered) == 1   # not in the default layout
