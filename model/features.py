"""The feature cache: images with their frozen-encoder features, encoded once and memory-mapped.

The encoder is frozen in every training phase, so a sweep encodes its images once (``FeatureSet.encode``),
saves train and validation features in one file (``save_feature_cache``) and every phase and
trial reads batches from the memory-mapped file (``load_feature_cache``, ``FeatureSet.batch``)
instead of running the encoder again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from drorae_io import atomic_path

from .data import ImageBatches, unwrap
from .drorae import DRoRAE
from .progress import Progress

log = logging.getLogger(__name__)


def device_of(model: DRoRAE) -> torch.device:
    """The device a DRoRAE runs on (its decoder's)."""
    return next(model.decoder.parameters()).device


def take(src: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``src[idx]`` on ``device``.

    From host memory to a GPU the rows are gathered straight into pinned memory: a non-blocking
    copy from pageable memory (a plain gather, a memory-mapped cache) is a synchronous one.
    """
    if device.type == "cuda" and src.device.type == "cpu":
        out = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
        return torch.index_select(src, 0, idx, out=out).to(device, non_blocking=True)
    return src[idx].to(device, non_blocking=True)


@dataclass
class FeatureSet:
    """Images with their frozen-encoder features, computed once (a feature cache).

    images (N, 3, H, W); layers (N, L, T, D); base (N, T, D). Features may be fp16 on disk; they
    are cast to float on use.
    """

    images: torch.Tensor
    layers: torch.Tensor
    base: torch.Tensor
    layer_index: tuple[int, ...] | None = None  # the fused blocks among the cached ones; None: all
    index: torch.Tensor | None = None  # the rows of the tensors above that this set is, in order; None: all

    def __len__(self) -> int:
        return len(self.images) if self.index is None else len(self.index)

    def select(self, layer_index) -> FeatureSet:
        """The same features with only the blocks ``layer_index`` fused (no copy)."""
        return FeatureSet(self.images, self.layers, self.base, tuple(layer_index), self.index)

    def head(self, n: int) -> FeatureSet:
        """The first ``n`` images and their features."""
        return self.rows(range(min(n, len(self))))

    def rows(self, index: range | torch.Tensor) -> FeatureSet:
        """The images ``index`` of this set (positions in it), in that order, without copying.

        A contiguous range slices the tensors (``images`` stays the set's own images); any other
        index is kept as a row map that ``batch`` gathers through (a memory-mapped cache stays on disk).
        """
        if self.index is None and isinstance(index, range) and index.step == 1:
            sl = slice(index.start, index.stop)
            return FeatureSet(self.images[sl], self.layers[sl], self.base[sl], self.layer_index)
        idx = torch.as_tensor(list(index) if isinstance(index, range) else index, dtype=torch.long)
        return FeatureSet(self.images, self.layers, self.base, self.layer_index,
                          idx if self.index is None else self.index[idx])

    def image_tensor(self) -> torch.Tensor:
        """This set's images (N, 3, H, W): a view for a sliced set, a gathered copy for a row-mapped one."""
        return self.images if self.index is None else self.images[self.index]

    def state_dict(self) -> dict:
        if self.index is not None:
            raise ValueError("FeatureSet.state_dict: a row-mapped set is a view; save the set it maps into")
        return {"images": self.images, "layers": self.layers, "base": self.base}

    def batch(self, idx: torch.Tensor, device: torch.device):
        """(images, layers (L, B, T, D), base (B, T, D)) of the batch ``idx`` on ``device``, features as float."""
        if self.index is not None:
            idx = self.index[idx]
        images = take(self.images, idx, device)
        cached = self.layers  # (N, L_cached, T, D)
        if self.layer_index is None:
            layers = take(cached, idx, device)  # (B, L, T, D)
        elif cached.is_contiguous():  # the fused blocks of the batch in one gather of B * L rows
            blocks = torch.tensor(self.layer_index)
            rows = (idx[:, None] * cached.shape[1] + blocks).flatten()  # (B * L,)
            layers = take(cached.flatten(0, 1), rows, device)  # (B * L, T, D)
            layers = layers.unflatten(0, (len(idx), len(blocks)))  # (B, L, T, D)
        else:
            layers = cached[idx][:, list(self.layer_index)].to(device, non_blocking=True)  # (B, L, T, D)
        layers = layers.float().transpose(0, 1)  # (L, B, T, D)
        return images, layers, take(self.base, idx, device).float()

    @classmethod
    @torch.no_grad()
    def encode(cls, model: DRoRAE, images: torch.Tensor | Dataset, batch_size: int = 256,
               dtype: torch.dtype = torch.float16) -> FeatureSet:
        """Encode ``images`` (a tensor, or a Dataset of (image, label) decoded batch by batch) with a DRoRAE's encoder.

        The outputs are filled in place, so the peak is the cache itself plus one batch.
        """
        device = device_of(model)
        images = unwrap(images)
        n = len(images)
        out = None
        start = 0
        with Progress(n, "encode features", log, unit="images") as progress:
            for batch in ImageBatches(images, batch_size, pin_memory=device.type == "cuda"):
                ly, b = model.encoder(batch.to(device, non_blocking=True))  # (L, B, T, D), (B, T, D)
                if out is None:
                    stacked = images if isinstance(images, torch.Tensor) else torch.empty((n, *batch.shape[1:]))
                    out = cls(stacked, torch.empty((n, ly.shape[0], *ly.shape[2:]), dtype=dtype),
                              torch.empty((n, *b.shape[1:]), dtype=dtype))
                end = start + len(batch)
                if out.images is not images:
                    out.images[start:end] = batch
                out.layers[start:end] = ly.transpose(0, 1)  # (B, L, T, D)
                out.base[start:end] = b
                start = end
                progress.update(len(batch))
        if out is None:
            raise ValueError("FeatureSet.encode: no images")
        return out


def save_feature_cache(path: Path, train: FeatureSet, val: FeatureSet) -> None:
    """Write the train and validation features to ``path`` atomically (one file)."""
    with atomic_path(path) as tmp:
        torch.save({"train": train.state_dict(), "val": val.state_dict()}, tmp)


def load_feature_cache(path: str | Path) -> tuple[FeatureSet, FeatureSet]:
    """(train, val) FeatureSets of a file ``save_feature_cache`` wrote, memory-mapped: nothing is read until used."""
    feats = torch.load(path, mmap=True, weights_only=True)
    return FeatureSet(**feats["train"]), FeatureSet(**feats["val"])
