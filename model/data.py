"""Image data: the embedded default (real Fashion-MNIST at 32 px, three channels) and ImageFolder.

Every dataset here yields float images in [0, 1] of shape (3, H, W); labels where they exist.
Fashion-MNIST is a TensorDataset already in memory (training gathers its batches directly); an
ImageFolder is decoded batch by batch by a DataLoader (``make_loader``, ``ImageBatches``), never
stacked whole: ImageNet at 256 px would be ~1 TB of float32.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .config import BadValue, Int, PositiveInt, Text, validated
from .errors import AssetError, ConfigError

log = logging.getLogger(__name__)

DatasetName = Literal["fashion-mnist", "imagefolder"]


@validated("data")
class DataConfig:
    """Which images, at which resolution, how many for training and for validation."""

    name: DatasetName = "fashion-mnist"
    resolution: Annotated[Int, Field(ge=8)] = 32  # Fashion-MNIST 28 px padded by 2 a side: 8x8 patch-4 tokens
    root: Text | None = None  # ImageFolder root (with train/ and val/), or a Fashion-MNIST dir override
    num_train: PositiveInt | None = None  # None: all
    num_val: PositiveInt = 1000  # also the rFID evaluation set: fixed for every trial of a sweep

    def __post_init__(self):
        if self.name == "fashion-mnist" and self.resolution < 28:
            raise BadValue("resolution", f"Fashion-MNIST is 28 px; expected >= 28, got {self.resolution}")
        if self.name == "imagefolder" and not self.root:
            raise BadValue("root", "the imagefolder dataset needs a root directory with train/ and val/")

    @property
    def key(self) -> str:
        """Identifies the images (not their count): for caches of features and FID statistics."""
        root = "" if self.root is None else str(Path(self.root).resolve())
        digest = hashlib.sha1(f"{self.name}|{root}".encode()).hexdigest()[:8]
        return f"{self.name}-{self.resolution}px-{digest}"


# --- Fashion-MNIST ---------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_dir(root: str | None) -> Path:
    if root is not None:
        path = Path(root)
        if not (path / "train-images-idx3-ubyte.gz").exists():
            raise AssetError(f"data.root: {path} has no train-images-idx3-ubyte.gz (Fashion-MNIST IDX files)")
        return path
    from .assets import fashion_mnist_dir

    return fashion_mnist_dir()


def fashion_mnist(split: str, resolution: int = 32, root: str | None = None, limit: int | None = None):
    """Real Fashion-MNIST as (images (N, 3, R, R) float in [0, 1], labels (N,) int64)."""
    prefix = {"train": "train", "val": "t10k", "test": "t10k"}[split]
    folder = _fashion_mnist_dir(root)
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).float().div_(255.0)  # (N, 28, 28)
    pad = resolution - 28
    x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))  # (N, R, R)
    x = x[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, R, R)
    return x, torch.from_numpy(labels.astype(np.int64))


# --- ImageFolder (ImageNet-style) ------------------------------------------------------------


def image_folder(split: str, resolution: int, root: str, limit: int | None = None) -> Dataset:
    """``root/<split>/<class>/*.jpg`` resized (shorter side) and center-cropped to ``resolution``."""
    from torchvision import datasets, transforms

    folder = Path(root) / split
    if not folder.is_dir():
        raise AssetError(f"data.root: expected a directory {folder} with one sub-directory per class")
    tf = transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
    ])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    if limit is not None and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))
    return ds


def load_split(cfg: DataConfig, split: str) -> Dataset:
    """The train or val split of ``cfg`` as a Dataset of (image, label)."""
    limit = cfg.num_train if split == "train" else cfg.num_val
    if cfg.name == "fashion-mnist":
        x, y = fashion_mnist(split, cfg.resolution, cfg.root, limit)
        if limit is not None and len(x) < limit:
            raise ConfigError(f"data.num_{split}: Fashion-MNIST {split} has only {len(x)} images, asked {limit}")
        return TensorDataset(x, y)
    return image_folder(split, cfg.resolution, cfg.root, limit)


def loader_workers(limit: int = 8) -> int:
    """DataLoader worker processes for decoding images: one per CPU this process may use, at most
    ``limit``; none with a single CPU (a worker there only adds a process and a copy)."""
    n = min(limit, torch.get_num_threads())  # the sweeper sets a trial's threads to its CPU share
    return n if n > 1 else 0


def make_loader(ds: Dataset, batch_size: int = 256, *, batch_sampler=None, pin_memory: bool = False,
                persistent: bool = False) -> DataLoader:
    """A DataLoader over ``ds`` decoding in ``loader_workers()`` processes, in order (or by ``batch_sampler``).

    It has its own generator: a DataLoader without one draws its workers' base seed from torch's
    global RNG, which would shift every random number training draws after it (phase 1's latent
    noise) and make a streamed run differ from a stacked one, and a resumed one from its original.
    """
    workers = loader_workers()
    kw = dict(batch_sampler=batch_sampler) if batch_sampler is not None else dict(batch_size=batch_size)
    if workers:
        kw.update(persistent_workers=persistent, prefetch_factor=2)
    return DataLoader(ds, num_workers=workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
                      **kw)


def head(ds: Dataset, n: int) -> Dataset:
    """The first ``n`` items of ``ds``: a TensorDataset stays one (sliced, no copy), anything else a Subset."""
    return rows(ds, range(min(n, len(ds))))


def rows(ds: Dataset, index: range | torch.Tensor) -> Dataset:
    """The items ``index`` of ``ds``, in that order.

    A TensorDataset stays one: sliced (no copy) for a contiguous range, gathered otherwise. Any other
    Dataset (an ImageFolder) becomes a Subset, decoded lazily.
    """
    if isinstance(ds, TensorDataset):
        if isinstance(index, range) and index.step == 1:
            return TensorDataset(*(t[index.start:index.stop] for t in ds.tensors))
        idx = torch.as_tensor(list(index) if isinstance(index, range) else index, dtype=torch.long)
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, index if isinstance(index, range) else index.tolist())


def unwrap(data):
    """A TensorDataset's image tensor (gathered from directly, in memory); anything else as it is."""
    return data.tensors[0] if isinstance(data, TensorDataset) else data


class ImageBatches:
    """The images of a tensor or a Dataset of (image, label), in order, batch by batch (B, 3, H, W).

    Re-iterable and never more than a loader's prefetch in memory: a tensor (or a TensorDataset's)
    is split, any other Dataset is decoded by ``make_loader``.
    """

    def __init__(self, data: torch.Tensor | Dataset, batch_size: int = 256, pin_memory: bool = False):
        self.data = unwrap(data)
        self.batch_size, self.pin_memory = batch_size, pin_memory

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self):
        if isinstance(self.data, torch.Tensor):
            yield from self.data.split(self.batch_size)
            return
        for batch in make_loader(self.data, self.batch_size, pin_memory=self.pin_memory):
            yield images_of(batch)


def images_of(batch) -> torch.Tensor:
    """The images (B, 3, H, W) of a collated batch: (images, labels, ...) or images alone."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def stack_images(ds: Dataset, batch_size: int = 256) -> torch.Tensor:
    """All images of ``ds`` as one tensor (N, 3, H, W); only for sets that fit in memory (tests, benches)."""
    images = unwrap(ds)
    if isinstance(images, torch.Tensor):
        return images
    # Decoded (JPEG, resize, crop) in worker processes; not pinned: the batches are concatenated
    # into pageable memory anyway.
    return torch.cat(list(ImageBatches(ds, batch_size)))
