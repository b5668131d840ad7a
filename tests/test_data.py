import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlib as rl
from robustlib.data import DataUnavailable, ImageData, Loader


def test_digits_shapes_ranges_and_split(digits):
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(test) == round(0.2 * 1797)
    for d in (train, test):
        assert d.images.dtype == torch.uint8 and tuple(d.shape) == (1, 28, 28)
        assert d.labels.dtype == torch.int64 and set(d.labels.tolist()) == set(range(10))
        x = d.x()
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and x.max() > 0.9
    assert train.num_classes == 10 and train.classes[3] == "3"


def test_digits_resize_to_cifar_shape_and_determinism():
    a, _ = rl.data.load("digits", size=32, channels=3)
    b, _ = rl.data.load("digits", size=32, channels=3)
    assert tuple(a.shape) == (3, 32, 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.images[:, 0], a.images[:, 2])  # grey replicated into RGB
    native, _ = rl.data.load("digits", size=8)
    assert tuple(native.shape) == (1, 8, 8) and int(native.images.max()) == 255


def test_n_train_subset_is_seeded(digits):
    a, t = rl.data.load("digits", n_train=100, n_test=50, seed=3)
    b, _ = rl.data.load("digits", n_train=100, n_test=50, seed=3)
    c, _ = rl.data.load("digits", n_train=100, n_test=50, seed=4)
    assert len(a) == 100 and len(t) == 50
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: digits, fashion-mnist"):
        rl.data.load("imagenet")


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn"])
def test_missing_dataset_says_what_and_how(tmp_path, name):
    with pytest.raises(DataUnavailable) as err:
        rl.data.load(name, root=tmp_path, download=False)
    msg = str(err.value)
    assert repr(name) in msg and str(tmp_path) in msg and "ROBUSTLIB_DATA" in msg and "internet" in msg


def test_missing_fashion_mnist_mentions_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(rl.data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        rl.data.load("fashion-mnist", root=tmp_path, download=False)


def test_imagedata_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------ loader

def test_loader_covers_every_example_once_and_is_seeded(digits):
    train, _ = digits
    seen = torch.cat([y for _, y, _ in Loader(train, 100, seed=1)])
    assert len(seen) == len(train) and torch.equal(seen.sort().values, train.labels.sort().values)
    l1, l2 = Loader(train, 64, seed=1), Loader(train, 64, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(l1, l2))
    l2.epoch = 1
    assert not torch.equal(next(iter(l1))[1], next(iter(l2))[1])  # a new order each epoch


def test_loader_drop_last_and_len(digits):
    train, _ = digits
    loader = Loader(train, 100, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == len(train) // 100
    assert all(len(y) == 100 for _, y, _ in batches)
    assert len(Loader(train, 100)) == -(-len(train) // 100)


def test_loader_subset_with_weights_keeps_alignment(digits):
    train, _ = digits
    idx = torch.tensor([5, 17, 3, 900, 42, 1000, 7])
    w = idx.float()  # weight = index, so each yielded weight names its example
    got = 0
    for x, y, wb in Loader(train, 3, indices=idx, weights=w, seed=2):
        for xi, yi, wi in zip(x, y, wb):
            i = int(wi)
            assert i in idx.tolist()
            assert torch.equal(xi, train.x([i])[0]) and yi == train.labels[i]
            got += 1
    assert got == len(idx)


def test_loader_subset_validation(digits):
    train, _ = digits
    with pytest.raises(IndexError):
        Loader(train, 8, indices=torch.tensor([0, len(train)]))
    with pytest.raises(ValueError, match="shape"):
        Loader(train, 8, indices=torch.tensor([0, 1]), weights=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        Loader(train, 8, indices=torch.tensor([0, 1]), weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="augment"):
        Loader(train, 8, augment="rotate")


def test_crop_flip_is_a_shift_or_mirror_of_the_original(digits):
    train, _ = digits
    x = train.x(torch.arange(6))
    g = torch.Generator().manual_seed(0)
    out = rl.data.random_crop_flip(x, g, pad=2, flip=True)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        candidates = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, x)


# ------------------------------------------------------------------ torchvision formats, on generated files

def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def _fake_images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_mnist_loader_reads_generated_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    tr, te = _fake_images(20, (28, 28), 0), _fake_images(10, (28, 28), 1)
    _write_idx(raw / "train-images-idx3-ubyte", tr)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(20) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", te)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(10)[::-1])
    train, test = rl.data.load("mnist", root=tmp_path, download=False)
    assert tuple(train.images.shape) == (20, 1, 28, 28) and tuple(test.images.shape) == (10, 1, 28, 28)
    assert np.array_equal(train.images[:, 0].numpy(), tr) and np.array_equal(test.images[:, 0].numpy(), te)
    assert test.labels.tolist() == list(range(10))[::-1]


def test_fashion_mnist_torchvision_fallback_reads_generated_files(tmp_path, monkeypatch):
    monkeypatch.setattr(rl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 6)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", _fake_images(n, (28, 28), n))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    train, test = rl.data.load("fashion-mnist", root=tmp_path, download=False, size=32, channels=3)
    assert tuple(train.images.shape) == (12, 3, 32, 32) and len(test) == 6
    assert train.classes[9] == "Ankle boot"


def test_fashion_mnist_from_a_copy_of_the_debian_files_under_the_data_root(tmp_path, monkeypatch):
    # how a machine without the package or internet gets it (make offline-kit copies the four .gz files there)
    monkeypatch.setattr(rl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    made = {}
    for split, n in (("train", 7), ("t10k", 5)):
        made[split] = _fake_images(n, (28, 28), n)
        _write_idx(tmp_path / "x", made[split])
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress((tmp_path / "x").read_bytes()))
        _write_idx(tmp_path / "y", (np.arange(n) + 3) % 10)
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress((tmp_path / "y").read_bytes()))
    monkeypatch.setenv("ROBUSTLIB_DATA", str(tmp_path))
    train, test = rl.data.load("fashion-mnist", download=False)
    assert np.array_equal(train.images[:, 0].numpy(), made["train"])
    assert np.array_equal(test.images[:, 0].numpy(), made["t10k"])
    assert test.labels.tolist() == [3, 4, 5, 6, 7] and train.classes[0] == "T-shirt/top"


def test_read_idx_handles_gzip_and_rejects_garbage(tmp_path):
    arr = _fake_images(3, (4, 5), 0)
    _write_idx(tmp_path / "a.idx", arr)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress((tmp_path / "a.idx").read_bytes()))
    assert np.array_equal(rl.data.read_idx(tmp_path / "a.idx.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        rl.data.read_idx(tmp_path / "bad")


def _skip_md5(monkeypatch, cls):
    # Generated files cannot match torchvision's published MD5 sums; the parsing path is what is tested.
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).exists())


def test_cifar10_loader_reads_generated_pickle_batches(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    _skip_md5(monkeypatch, tvd.CIFAR10)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = _fake_images(4, (3 * 32 * 32,), k)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [k % 10, 1, 2, 3]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(rl.data.CIFAR10_CLASSES)}, f)
    train, test = rl.data.load("cifar10", root=tmp_path, download=False)
    assert tuple(train.images.shape) == (20, 3, 32, 32) and len(test) == 4
    first = _fake_images(4, (3 * 32 * 32,), 0)[0].reshape(3, 32, 32)
    assert np.array_equal(train.images[0].numpy(), first)  # CHW layout preserved
    assert train.classes[0] == "airplane" and train.labels[:4].tolist() == [0, 1, 2, 3]


def test_cifar100_loader_reads_generated_pickles(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    _skip_md5(monkeypatch, tvd.CIFAR100)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for k, name in enumerate(("train", "test")):
        with open(base / name, "wb") as f:
            pickle.dump({"data": _fake_images(5, (3 * 32 * 32,), k), "fine_labels": [99, 0, 5, 7, 50]}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    train, test = rl.data.load("cifar100", root=tmp_path, download=False)
    assert len(train) == 5 and train.num_classes == 100 and train.labels.tolist() == [99, 0, 5, 7, 50]


def test_svhn_loader_reads_generated_mat_files(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd
    _skip_md5(monkeypatch, tvd.SVHN)
    for k, split in enumerate(("train", "test")):
        x = _fake_images(6, (32, 32, 3), k).transpose(1, 2, 3, 0)  # SVHN stores H×W×C×N
        y = np.array([[10], [1], [2], [3], [4], [9]], dtype=np.uint8)  # "10" means digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    train, test = rl.data.load("svhn", root=tmp_path, download=False)
    assert tuple(train.images.shape) == (6, 3, 32, 32) and train.labels.tolist() == [0, 1, 2, 3, 4, 9]
    assert np.array_equal(train.images[0].numpy(), _fake_images(6, (32, 32, 3), 0)[0].transpose(2, 0, 1))


def test_real_fashion_mnist_from_debian_package():
    if not (rl.data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    train, test = rl.data.load("fashion-mnist")
    assert len(train) == 60_000 and len(test) == 10_000 and tuple(train.shape) == (1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_unweighted_loader_yields_no_weights(digits):
    train, _ = digits
    assert all(w is None for _, _, w in Loader(train, 500))
