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
    with pytest.raises(ValueError, match="6n \\+ 4"):
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


def test_bad_sizes_and_arguments_are_refused_clearly():
    import torch
    from robustlib.models import build
    for kwargs in (dict(input_size=-5), dict(input_size=3), dict(num_classes=0), dict(in_channels=0),
                   dict(input_size=28.0)):
        with pytest.raises(ValueError):
            build("mnist_small", **kwargs)
    for kwargs in (dict(depth=4), dict(depth=-2), dict(width=0)):
        with pytest.raises(ValueError, match="wide_resnet"):
            build("wide_resnet", **kwargs)
    with pytest.raises(ValueError, match="like must be a dataset"):
        build("mnist_small", like=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown model"):
        build(["mnist_small"])


def test_cifar_networks_start_from_their_reference_initialisation():
    """Convolutions N(0, 2 / (k·k·out)) with zero biases, as the reference code of Wong et al.'s CIFAR networks and
    TRADES' WideResNet; the MNIST networks keep PyTorch's default, as theirs do."""
    import torch
    from robustlib.models import build
    torch.manual_seed(0)
    for name in ("cifar_small", "cifar_large", "wide_resnet"):
        kw = dict(depth=10, width=1) if name == "wide_resnet" else {}
        convs = [m for m in build(name, **kw).modules() if isinstance(m, torch.nn.Conv2d)]
        for m in convs:
            want = (2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5
            assert abs(float(m.weight.detach().std()) / want - 1) < 0.15, name
            assert m.bias is None or not m.bias.any()
    assert build("mnist_small")[0].bias.any()   # PyTorch's default: uniform biases
