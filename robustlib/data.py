"""Datasets as device-resident tensors, and a loader that batches on the device.

``train, test = load("digits", device="cuda")`` gives two :class:`ImageData`
objects holding ``uint8`` images (N×C×H×W) and ``int64`` labels on the
device. Pixels become floats in [0, 1] only batch by batch, so a whole
CIFAR-10 training set costs 150 MB of GPU memory, not 600 MB.

Datasets
  ``digits``         scikit-learn's bundled 8×8 handwritten digits (1,797
                     images, no download: the embedded default), resized to
                     ``size`` (28 by default) and ``channels`` (1 or 3).
  ``fashion-mnist``  the Debian package ``dataset-fashion-mnist``
                     (``/usr/share/datasets/fashion-mnist/``) when present,
                     else a copy of its four ``.gz`` files in
                     ``$ROBUSTLIB_DATA/fashion-mnist/`` (how a machine without
                     the package or internet gets it: ``make offline-kit``),
                     else torchvision's download.
  ``mnist``, ``cifar10``, ``cifar100``, ``svhn``
                     torchvision, cached in ``$ROBUSTLIB_DATA``
                     (default ``~/.cache/robustlib``).

A dataset that cannot be had raises :class:`DataUnavailable` saying what is
missing and how to get it; no dataset is ever silently replaced by another.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .digests import tensor_digest

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


class DataUnavailable(FileNotFoundError):
    """A named dataset is not on this machine and could not be fetched."""


def cache_dir() -> Path:
    """Where torchvision datasets are cached: ``$ROBUSTLIB_DATA`` or ``~/.cache/robustlib``."""
    env = os.environ.get("ROBUSTLIB_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robustlib"


@dataclass
class ImageData:
    """Images (uint8, N×C×H×W) and labels (int64, N) on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""
    classes: tuple = ()

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor N×C×H×W, got {self.images.dtype} "
                             f"of shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, n={len(self)}, shape={tuple(self.shape)}, "
                f"classes={self.num_classes}, device={self.device})")

    @property
    def shape(self) -> torch.Size:
        """(C, H, W) of one image."""
        return self.images.shape[1:]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def x(self, index=None) -> torch.Tensor:
        """Images as float32 in [0, 1] (all, or those at ``index``)."""
        imgs = self.images if index is None else self.images[index]
        return imgs.float().div_(255)

    def subset(self, index) -> "ImageData":
        index = torch.as_tensor(index, device=self.device)
        return ImageData(self.images[index], self.labels[index], self.name, self.classes)

    def head(self, n: int) -> "ImageData":
        """The first ``n`` examples (the whole set if it is smaller)."""
        return ImageData(self.images[:n], self.labels[:n], self.name, self.classes)

    def to(self, device) -> "ImageData":
        return ImageData(self.images.to(device), self.labels.to(device), self.name, self.classes)


# ---------------------------------------------------------------- file formats

def read_idx(path) -> np.ndarray:
    """Read an IDX file (MNIST's format, gzip or plain) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type code {raw[2]:#x})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def from_idx(images_path, labels_path, name: str = "", classes: tuple = (), device="cpu") -> ImageData:
    """An :class:`ImageData` from a pair of IDX files (e.g. the MNIST test set)."""
    imgs = torch.from_numpy(read_idx(images_path).copy())
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    if imgs.dim() == 3:
        imgs = imgs.unsqueeze(1)
    return ImageData(imgs, labels, name, classes).to(device)


def _resize(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """Resize uint8 N×C×H×W images (bilinear) and set their channel count."""
    if size is not None and images.shape[-1] != size:
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=images.shape[-1] > size)
        images = x.round().clamp_(0, 255).to(torch.uint8)
    if channels is not None and images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1).contiguous()
        elif channels == 1:
            images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
        else:
            raise ValueError(f"cannot turn {images.shape[1]} channels into {channels}")
    return images


# ---------------------------------------------------------------- datasets

def _digits(size, channels, seed=0, test_fraction=0.2):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    imgs = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    imgs = _resize(imgs, 28 if size is None else size, channels)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return ((imgs[train_idx], labels[train_idx]), (imgs[test_idx], labels[test_idx]), DIGIT_CLASSES)


def _torchvision(name, root: Path, download: bool):
    import torchvision.datasets as tvd

    def get(split_train: bool):
        if name == "mnist":
            return tvd.MNIST(root, train=split_train, download=download)
        if name == "fashion-mnist":
            return tvd.FashionMNIST(root, train=split_train, download=download)
        if name == "cifar10":
            return tvd.CIFAR10(root, train=split_train, download=download)
        if name == "cifar100":
            return tvd.CIFAR100(root, train=split_train, download=download)
        if name == "svhn":
            return tvd.SVHN(root, split="train" if split_train else "test", download=download)
        raise AssertionError(name)

    out = []
    for train_split in (True, False):
        try:
            ds = get(train_split)
        except Exception as e:  # torchvision raises RuntimeError / URLError / OSError
            how = {
                "cifar10": "CIFAR-10 (cifar-10-python.tar.gz, extracted as cifar-10-batches-py/)",
                "cifar100": "CIFAR-100 (cifar-100-python.tar.gz, extracted as cifar-100-python/)",
                "svhn": "SVHN (train_32x32.mat and test_32x32.mat)",
                "mnist": "MNIST (the four IDX files in MNIST/raw/)",
                "fashion-mnist": "Fashion-MNIST (the four IDX files in FashionMNIST/raw/, or the four "
                                 "*-ubyte.gz files in fashion-mnist/); offline on Debian/Ubuntu: "
                                 "`sudo apt-get install dataset-fashion-mnist`",
            }[name]
            raise DataUnavailable(
                f"dataset {name!r} is not available: {type(e).__name__}: {e}\n"
                f"It is looked for in {root} (set ROBUSTLIB_DATA to change this). Fix: run once with "
                f"internet access (download=True fetches it there), or place {how} in that directory."
            ) from e
        if name in ("mnist", "fashion-mnist"):
            imgs, labels = ds.data.unsqueeze(1), ds.targets
        elif name == "svhn":
            imgs, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
        else:
            imgs = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.tensor(ds.targets)
        out.append((imgs.to(torch.uint8), labels.long()))
        classes = tuple(getattr(ds, "classes", ()) or ())
    if name == "svhn":
        classes = DIGIT_CLASSES
    return out[0], out[1], classes


def _fashion_mnist(root: Path, download: bool):
    # the Debian package, else a copy of its four files under the data root (DEBIAN_FASHION_MNIST is read at call
    # time: tests point it elsewhere)
    for folder in (DEBIAN_FASHION_MNIST, root / "fashion-mnist"):
        if (folder / "train-images-idx3-ubyte.gz").exists():
            sets = []
            for split in ("train", "t10k"):
                d = from_idx(folder / f"{split}-images-idx3-ubyte.gz", folder / f"{split}-labels-idx1-ubyte.gz")
                sets.append((d.images, d.labels))
            return sets[0], sets[1], FASHION_CLASSES
    tr, te, _ = _torchvision("fashion-mnist", root, download)
    return tr, te, FASHION_CLASSES


NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn")


def load(name: str, device="cpu", *, size: int | None = None, channels: int | None = None,
         root=None, download: bool = True, n_train: int | None = None, n_test: int | None = None,
         seed: int = 0) -> tuple[ImageData, ImageData]:
    """Load a dataset as ``(train, test)`` :class:`ImageData` on ``device``.

    ``size``/``channels`` resize the images (``digits`` defaults to 28×28×1;
    other datasets keep their own shape unless asked). ``n_train``/``n_test``
    keep a seeded random subset of that many examples (for smoke runs); both draws come from one generator, so the
    test subset of a given ``n_test`` also depends on whether ``n_train`` is given.
    ``download=False`` never touches the network.
    """
    if not isinstance(name, str):
        raise ValueError(f"the dataset name must be a string, one of {', '.join(NAMES)}; got {name!r}")
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{what} must be None (all examples) or an integer ≥ 1, got {n!r}")
    key = name.lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    root = Path(root) if root is not None else cache_dir()
    if key == "digits":
        tr, te, classes = _digits(size, channels, seed=0)
    else:
        if key == "fashion-mnist":
            tr, te, classes = _fashion_mnist(root, download)
        else:
            tr, te, classes = _torchvision(key, root, download)
        tr = (_resize(tr[0], size, channels), tr[1])
        te = (_resize(te[0], size, channels), te[1])
    g = torch.Generator().manual_seed(seed)
    sets = []
    for (imgs, labels), n in ((tr, n_train), (te, n_test)):
        if n is not None and n < len(labels):
            keep = torch.randperm(len(labels), generator=g)[:n]
            imgs, labels = imgs[keep], labels[keep]
        sets.append(ImageData(imgs.contiguous(), labels, key, classes).to(device))
    return sets[0], sets[1]


# ---------------------------------------------------------------- loader

def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, all on x's device, one draw per image."""
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n,1,h,1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n,1,1,w
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class Loader:
    """Mini-batches drawn on the device from an :class:`ImageData`.

    Yields ``(x, y, w)``: float images in [0, 1], labels and per-example
    weights (``None`` unless a weighted subset was set). Shuffling and
    augmentation draw from a generator seeded by ``(seed, epoch)``, so epoch
    ``e`` is the same sequence of batches whether or not the run was
    interrupted before it.

    ``indices``/``weights`` restrict the epoch to a weighted subset — what a
    pruning selector chooses; :meth:`set_subset` changes it between epochs.
    ``augment`` is ``None`` or ``"crop-flip"`` (random crop with zero padding, 4 pixels for images of 32 pixels
    or more and 2 below, and horizontal flip: the CIFAR recipe) or ``"crop"`` (no flip: digits) or ``"flip"``.
    An epoch's order and augmentation are drawn from ``seed`` and :attr:`epoch`, which ``fit`` sets; iterating a
    Loader by hand repeats one epoch unless ``epoch`` is advanced.
    """

    def __init__(self, data: ImageData, batch_size: int = 128, *, shuffle: bool = True, seed: int = 0,
                 augment: str | None = None, indices=None, weights=None, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if augment not in (None, "crop-flip", "crop", "flip"):
            raise ValueError(f"augment must be None, 'crop-flip', 'crop' or 'flip', got {augment!r}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.augment, self.drop_last, self.epoch = augment, drop_last, 0
        self.rank, self.world = 0, 1
        self.batch_indices = None
        self.set_subset(indices, weights)

    def config(self) -> dict:
        """What makes this loader's epochs these epochs (a run's checkpoint and key compare it)."""
        subset = None if self.indices is None else tensor_digest(
            self.indices, *(() if self.weights is None else (self.weights,)))
        return {"batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed, "augment": self.augment,
                "drop_last": self.drop_last, "subset": subset}

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel sharding: of each global batch of ``world × batch_size`` positions of the (shared,
        seeded) epoch order, rank ``r`` takes positions r, r + world, …; a last global batch with fewer than
        ``world`` examples is dropped. Augmentation then draws from a per-rank generator."""
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise ValueError(f"need 0 ≤ rank < world, got rank {rank!r} of {world!r}")
        self.rank, self.world = rank, world

    def set_subset(self, indices=None, weights=None) -> None:
        """Train on ``data[indices]`` with loss weights ``weights`` (None: all examples, weight 1).

        ``indices`` is an integer index tensor (repeats allowed: an example listed twice is drawn
        twice per epoch) or a boolean mask over the whole dataset. ``weights`` has one entry per
        selected example (per True entry of a mask).
        """
        dev = self.data.device
        if indices is None:
            if weights is not None:
                raise ValueError("weights need indices")
            self.indices, self.weights, self.distinct_examples = None, None, len(self.data)
            return
        indices = torch.as_tensor(indices, device=dev)
        if indices.dtype == torch.bool:
            if indices.shape != (len(self.data),):
                raise ValueError(f"a boolean mask must have one entry per example, shape ({len(self.data)},), got "
                                 f"{tuple(indices.shape)}")
            indices = indices.nonzero().squeeze(1)
        elif indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be integers (or a boolean mask), got dtype {indices.dtype}; a float "
                             f"tensor would be truncated to other examples")
        indices = indices.long()
        if indices.dim() != 1 or len(indices) == 0:
            raise ValueError("indices must be a non-empty 1-D tensor (a mask must select at least one example)")
        if int(indices.min()) < 0 or int(indices.max()) >= len(self.data):
            raise IndexError(f"subset indices must lie in [0, {len(self.data)})")
        if weights is not None:
            weights = torch.as_tensor(weights, device=dev, dtype=torch.float32)
            if weights.shape != indices.shape:
                raise ValueError(f"weights shape {tuple(weights.shape)} != indices shape {tuple(indices.shape)}")
            if not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError("weights must be finite and non-negative")
        self.indices, self.weights = indices, weights
        self.distinct_examples = int(torch.unique(indices).numel())

    def _stop(self) -> int:
        """How many positions of the epoch order are used (whole global batches, or a last partial one)."""
        n, step = self.num_examples, self.batch_size * self.world
        full = (n // step) * step
        if self.drop_last or n - full < self.world:
            return full
        return n

    def __len__(self) -> int:
        return -(-self._stop() // (self.batch_size * self.world))

    @property
    def num_examples(self) -> int:
        return len(self.data) if self.indices is None else len(self.indices)

    def generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.data.device)
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return g

    def __iter__(self):
        g = self.generator(self.epoch)
        dev = self.data.device
        n = self.num_examples
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        if self.world > 1:   # the order is shared; augmentation draws differ per rank
            g = self.generator(self.epoch * 65_537 + 7919 * (self.rank + 1))
        step = self.batch_size * self.world
        for start in range(0, self._stop(), step):
            pos = order[start:start + step][self.rank::self.world]
            idx = pos if self.indices is None else self.indices[pos]
            self.batch_indices = idx   # which examples the batch holds (fit hands them to the objective)
            x = self.data.images[idx].float().div_(255)
            if self.augment is not None:
                x = random_crop_flip(x, g, pad=0 if self.augment == "flip" else (4 if x.shape[-1] >= 32 else 2),
                                     flip=self.augment != "crop")
            yield x, self.data.labels[idx], (None if self.weights is None else self.weights[pos])


def mnist_test_set(search=(), device="cpu", download: bool = True) -> ImageData:
    """The real MNIST test set: ``mnist-t10k-*-ubyte.gz`` from a ``search`` directory, else torchvision's copy."""
    for d in map(Path, search):
        images, labels = d / "mnist-t10k-images-idx3-ubyte.gz", d / "mnist-t10k-labels-idx1-ubyte.gz"
        if images.exists() and labels.exists():
            return from_idx(images, labels, name="mnist", classes=DIGIT_CLASSES, device=device)
    return load("mnist", device=device, download=download)[1]
