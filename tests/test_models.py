import pytest
import torch

import robustlib as rl
from conftest import reference

SMALL_KEYS = {"0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight", "7.bias"}


@pytest.mark.parametrize("name,shape", [
    ("mnist_small", (1, 28, 28)), ("mnist_large", (1, 28, 28)), ("cifar_small", (3, 32, 32)),
    ("cifar_large", (3, 32, 32)), ("small_cnn", (1, 28, 28)), ("preact_resnet18", (3, 32, 32)),
])
def test_output_shape(name, shape):
    model = rl.models.build(name, num_classes=7).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_networks_run_on_other_input_shapes():
    assert rl.models.build("preact_resnet18", in_channels=1)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert rl.models.build("cifar_small", in_channels=1, input_size=28)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    wrn = rl.models.build("wide_resnet", depth=10, width=1, num_classes=100).eval()
    assert wrn(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError, match="6n\\+4"):
        rl.models.build("wide_resnet", depth=11)


def test_mixtrain_layouts_match_the_published_layer_sequences():
    small = rl.models.build("mnist_small")
    assert isinstance(small, torch.nn.Sequential) and set(small.state_dict()) == SMALL_KEYS
    assert small[5].in_features == 1568 and small[7].out_features == 10
    assert rl.models.build("cifar_small")[5].in_features == 2048
    large = rl.models.build("mnist_large")
    linear = [m for m in large if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(3136, 512), (512, 512), (512, 10)]
    assert rl.models.build("cifar_large")[9].in_features == 4096
    assert [type(m).__name__ for m in large].count("ReLU") == 6


@pytest.mark.parametrize("fname", ["mixtrain-mnist_small_mixtrain_0.3.pth", "mixtrain-mnist_small_baseline.pth",
                                   "auto_lirpa-mnist_a_adv.pth"])
def test_published_mnist_small_state_dict_loads(fname):
    state = torch.load(reference(fname), map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    model = rl.models.build("mnist_small")
    model.load_state_dict(state)  # strict: every key and shape must match
    assert {k.split(".")[0] for k in state} == {"0", "2", "5", "7"}


def test_published_mnist_small_is_accurate_on_real_mnist():
    images = reference("mnist-t10k-images-idx3-ubyte.gz")
    labels = reference("mnist-t10k-labels-idx1-ubyte.gz")
    test = rl.data.from_idx(images, labels, name="mnist").head(500)
    model = rl.models.build("mnist_small")
    model.load_state_dict(torch.load(reference("mixtrain-mnist_small_baseline.pth"), weights_only=True))
    assert rl.evaluate.accuracy(model, test) > 0.95


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: mnist_small, mnist_large"):
        rl.models.build("resnet50")
