import pytest

import robustlib as rl
from conftest import REFERENCE, reference


def test_published_checkpoint_is_verified_and_loads():
    reference("mixtrain-mnist_small_mixtrain_0.3.pth")
    model = rl.checkpoints.load_published("mixtrain-mnist_small_mixtrain_0.3", search=[REFERENCE], download=False)
    assert not model.training and model[5].in_features == 1568
    test = rl.data.mnist_test_set(search=[REFERENCE], download=False).head(300)
    assert rl.evaluate.accuracy(model, test) > 0.85


def test_tampered_file_is_refused(tmp_path):
    (tmp_path / "mixtrain-mnist_small_baseline.pth").write_bytes(b"not the published weights")
    with pytest.raises(ValueError, match="SHA-256"):
        rl.checkpoints.find_published("mixtrain-mnist_small_baseline", search=[tmp_path], download=False)


def test_missing_checkpoint_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_DATA", str(tmp_path))
    with pytest.raises(rl.data.DataUnavailable, match="not found"):
        rl.checkpoints.find_published("mixtrain-mnist_small_baseline", search=[tmp_path], download=False)
    with pytest.raises(ValueError, match="known: mixtrain"):
        rl.checkpoints.find_published("resnet-imagenet")


def test_mnist_test_set_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_DATA", str(tmp_path))
    with pytest.raises(rl.data.DataUnavailable):
        rl.data.mnist_test_set(search=[tmp_path], download=False)
