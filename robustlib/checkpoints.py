"""Published checkpoints: found locally or downloaded, verified by SHA-256, loaded with ``weights_only=True``.

``load_published("mixtrain-mnist_small_mixtrain_0.3", search=[dir, ...])``
returns the network with the authors' weights. The file is looked for under
its name in each ``search`` directory, then in the cache
(``$ROBUSTLIB_DATA/checkpoints``), then downloaded from its public source.
Every file — local or downloaded — must match the known SHA-256 before it
is loaded; nothing in a checkpoint is ever executed.
"""
from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import torch

from .data import DataUnavailable, cache_dir
from .models import build

_MIXTRAIN = "https://github.com/tcwangshiqi-columbia/symbolic_interval/raw/master/"

PUBLISHED = {
    # name: (model name, public URL, SHA-256, what it is)
    "mixtrain-mnist_small_mixtrain_0.3": (
        "mnist_small", _MIXTRAIN + "mnist_small_mixtrain_0.3.pth",
        "b107999e820f14db5cc37541a5355df23d0956abe34c2851bb1fe0770b031ecc",
        "MixTrain authors' MNIST_Small trained with MixTrain at L∞ ε = 0.3"),
    "mixtrain-mnist_small_baseline": (
        "mnist_small", _MIXTRAIN + "mnist_small_baseline.pth",
        "332a918b9a23b8f730ae4e9e024b1fc74a102a2d0fe810009d50ddcdd2a9750e",
        "MixTrain authors' MNIST_Small, standard training"),
}


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_published(name: str, search=(), download: bool = True) -> Path:
    """Path of a verified copy of checkpoint ``name`` (searching, then downloading)."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(PUBLISHED)}")
    _, url, digest, _ = PUBLISHED[name]
    cached = cache_dir() / "checkpoints" / f"{name}.pth"
    for d in [*map(Path, search), cached.parent]:
        p = d / f"{name}.pth"
        if p.exists():
            if sha256(p) != digest:
                raise ValueError(f"{p} does not match the published checkpoint (SHA-256 differs); delete or replace it")
            return p
    if not download:
        raise DataUnavailable(f"checkpoint {name!r} not found in {[str(s) for s in search]} or {cached.parent}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except Exception as e:  # URLError, HTTPError, OSError
        raise DataUnavailable(f"checkpoint {name!r} is not on this machine and could not be downloaded from "
                              f"{url} ({type(e).__name__}: {e}). Fix: download it by hand into {cached}.") from e
    if sha256(tmp) != digest:
        tmp.unlink()
        raise ValueError(f"the file downloaded from {url} does not match the known SHA-256; not loaded")
    tmp.replace(cached)
    return cached


def load_published(name: str, search=(), device="cpu", download: bool = True) -> torch.nn.Module:
    """The published network ``name`` with its weights, in eval mode on ``device``."""
    path = find_published(name, search, download)
    model = build(PUBLISHED[name][0])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()
