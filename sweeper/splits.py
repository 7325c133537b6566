"""The sweep's held-out images: a selection split that the search sees, an evaluation split that it never does.

Every number a sweep reports (rFID, PSNR, SSIM, LPIPS) is measured on the *evaluation* split, the
first ``eval.n_images`` images of the validation split, the same for every trial. Everything that
chooses (each phase's validation L1, the Optuna objective, the median pruner, a searched point's
best trial) reads only the *selection* split, disjoint from it, so no choice is made on the images
the law is then fitted to. The rule (``eval.select_from``):

- ``val`` (the default): the ``eval.select_images`` validation images after the evaluation ones
  (all the rest when unset): validation images ``[n_images, n_images + select_images)``.
- ``train``: ``eval.select_images`` training images at evenly spaced positions (a class-sorted
  ImageFolder gives every class its share), held out of training. For a sweep whose evaluation
  takes the whole validation split (rFID on ImageNet's 50k).

Both are fixed by the spec, so every trial of a sweep sees the same two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import FeatureSet
from model.data import rows


@dataclass(frozen=True)
class Splits:
    """Positions of the three image sets in the spec's train and validation splits."""

    source: str  # where the selection split comes from: "val" or "train"
    evaluation: range  # positions in the validation split
    selection: range | torch.Tensor  # positions in the validation split (val) or the training split (train)
    n_train: int  # images in the training split, held-out ones included

    @property
    def training(self) -> range | torch.Tensor:
        """Positions in the training split that are trained on: all but a held-out selection split."""
        if self.source == "val":
            return range(self.n_train)
        keep = torch.ones(self.n_train, dtype=torch.bool)
        keep[self.selection] = False
        return keep.nonzero().flatten()

    def describe(self) -> dict:
        """The sizes and the rule, for the results table's metadata and the MLflow parent run."""
        if self.source == "val":
            sel = self.selection
            rule = (f"selection: validation images [{sel.start}, {sel.stop}); "
                    f"evaluation: the first {len(self.evaluation)}")
        else:
            rule = (f"selection: {len(self.selection)} training images at evenly spaced positions, held out of "
                    f"training; evaluation: the first {len(self.evaluation)} validation images")
        return {"select_from": self.source, "selection_images": len(self.selection),
                "evaluation_images": len(self.evaluation), "training_images": len(self.training), "rule": rule}


def evenly_spaced(k: int, n: int) -> torch.Tensor:
    """``k`` distinct positions in ``range(n)``, evenly spaced (the centres of ``k`` equal strata)."""
    return (torch.arange(k, dtype=torch.long) * 2 + 1) * n // (2 * k)


def splits_of(spec, n_train: int, n_val: int) -> Splits:
    """The splits of ``spec`` for a training split of ``n_train`` and a validation split of ``n_val`` images."""
    ev = spec.eval
    evaluation = range(ev.n_images)
    if ev.select_from == "val":
        stop = n_val if ev.select_images is None else ev.n_images + ev.select_images
        return Splits("val", evaluation, range(ev.n_images, stop), n_train)
    return Splits("train", evaluation, evenly_spaced(ev.select_images, n_train), n_train)


def split(splits: Splits, train, val):
    """(train, select, evaluate): the images (Datasets or FeatureSets) of each of the three sets.

    ``train`` and ``val`` are the spec's whole training and validation splits; ``train`` may be None
    (an evaluation that trains nothing): then so is a selection split held out of it.
    """

    def take(data, index):
        return data.rows(index) if isinstance(data, FeatureSet) else rows(data, index)

    evaluate = take(val, splits.evaluation)
    if splits.source == "val":
        return train, take(val, splits.selection), evaluate
    if train is None:
        return None, None, evaluate
    return take(train, splits.training), take(train, splits.selection), evaluate
