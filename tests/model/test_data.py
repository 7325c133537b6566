"""Data: real Fashion-MNIST padded to 32 px in three channels; ImageFolder; config errors."""

import pytest
import torch

from model.data import DataConfig, fashion_mnist, image_folder, load_split, stack_images
from model.errors import AssetError, ConfigError


def test_fashion_mnist_is_real_padded_three_channel_images_in_unit_range():
    x, y = fashion_mnist("val", 32, limit=50)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.1
    assert torch.equal(x[:, 0], x[:, 1])
    assert x[:, :, :2].abs().sum() == 0 and x[:, :, -2:].abs().sum() == 0  # the 2 px border is padding
    assert y.shape == (50,) and 0 <= y.min() and y.max() <= 9
    # The first test image of Fashion-MNIST is an ankle boot (class 9).
    assert int(y[0]) == 9


def test_load_split_honours_counts():
    cfg = DataConfig(num_train=40, num_val=20)
    assert len(load_split(cfg, "train")) == 40
    assert stack_images(load_split(cfg, "val")).shape == (20, 3, 32, 32)


def test_image_folder_resizes_and_center_crops(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray((torch.rand(40, 60, 3) * 255).byte().numpy()).save(tmp_path / "val" / cls / "0.png")
    ds = image_folder("val", 16, str(tmp_path))
    img, label = ds[1]
    assert img.shape == (3, 16, 16) and label == 1


def test_data_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.name"):
        DataConfig(name="cifar")
    with pytest.raises(ConfigError, match="data.root"):
        DataConfig(name="imagefolder")
    with pytest.raises(AssetError, match="data.root"):
        load_split(DataConfig(name="imagefolder", root=str(tmp_path), resolution=32), "val")
    with pytest.raises(AssetError, match="data.root"):
        load_split(DataConfig(root=str(tmp_path)), "val")


def test_data_key_changes_with_resolution_and_root():
    assert DataConfig().key != DataConfig(resolution=64).key
    assert DataConfig().key == DataConfig(num_val=10).key  # the count is not part of the images' identity
