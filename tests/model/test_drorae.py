"""Decoder presets, the DRoRAE API (encode/decode/forward), plain-RAE mode, pretraining cache."""

from dataclasses import replace

import pytest
import torch

from model import (
    DECODER_PRESETS,
    ENCODER_PRESETS,
    DecoderConfig,
    DRoRAE,
    DRoRAEConfig,
    ViTDecoder,
    fusion_param_count,
    pretrain_tiny_encoder,
)
from model.errors import ConfigError

TINY = replace(ENCODER_PRESETS["tiny"], weights="none")


@pytest.mark.parametrize("preset", sorted(DECODER_PRESETS))
def test_every_decoder_preset_maps_tokens_to_an_image(preset):
    cfg = replace(DECODER_PRESETS[preset], depth=1)  # one block per preset keeps the test to seconds
    dec = ViTDecoder(cfg, latent_dim=32, grid=4, patch_size=2)
    out = dec(torch.randn(2, 16, 32))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_unpatchify_puts_each_tokens_patch_in_its_place():
    dec = ViTDecoder(DECODER_PRESETS["tiny"], latent_dim=8, grid=2, patch_size=2)
    x = torch.zeros(1, 4, 2 * 2 * 3)
    x[0, 1] = 1.0  # token 1 = row 0, column 1
    img = dec.unpatchify(x)
    assert img[0, :, 0:2, 2:4].eq(1).all() and img.sum() == 12


def test_decoder_heads_must_divide_its_width():
    with pytest.raises(ConfigError, match="decoder.num_heads"):
        DecoderConfig(dim=100, num_heads=3)


def test_forward_is_decode_of_encode_and_shapes_round_trip():
    model = DRoRAE.from_config(DRoRAEConfig(encoder=TINY, expert_hidden=8))
    x = torch.rand(2, 3, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 64, 96)
    assert torch.equal(model(x), model.decode(z))
    assert model.fusion_params() == fusion_param_count(96, 6, 8)


def test_without_fusion_it_is_a_plain_rae_on_z_base():
    rae = DRoRAE.from_config(DRoRAEConfig(encoder=TINY))
    x = torch.rand(2, 3, 32, 32)
    assert rae.fusion is None and rae.fusion_params() == 0
    assert torch.equal(rae.encode(x), rae.encoder(x)[1])


def test_drorae_at_init_reconstructs_exactly_like_its_rae():
    torch.manual_seed(0)
    model = DRoRAE.from_config(DRoRAEConfig(encoder=TINY, expert_hidden=8))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), model.decode(model.encoder(x)[1]))


def test_the_latent_is_computed_per_image_and_per_token():
    # A batch encodes like its images one at a time, and swapping one token's encoder features between two
    # images swaps that token's latent and changes no other (routing reads the token, not its image or batch).
    torch.manual_seed(0)
    model = DRoRAE.from_config(DRoRAEConfig(encoder=TINY, expert_hidden=8))
    with torch.no_grad():
        for p in model.fusion.parameters():  # away from the identity start, as after phase 2
            p.add_(0.5 * torch.randn_like(p))
        x = torch.rand(3, 3, 32, 32)
        z = model.encode(x)  # (3, 64, 96)
        alone = torch.cat([model.encode(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(z, alone, atol=1e-5)
        layers, base = model.encoder(x)
        swapped_layers, swapped_base = layers.clone(), base.clone()
        swapped_layers[:, [0, 1], 10] = layers[:, [1, 0], 10]
        swapped_base[[0, 1], 10] = base[[1, 0], 10]
        out = model.latent(swapped_layers, swapped_base)
    assert torch.allclose(out[[1, 0], 10], z[[0, 1], 10], atol=1e-5)
    keep = torch.ones(3, 64, dtype=torch.bool)
    keep[[0, 1], 10] = False
    assert torch.allclose(out[keep], z[keep], atol=1e-5)


def test_image_size_must_be_tiled_by_the_token_grid():
    with pytest.raises(ConfigError, match="image_size: 36 px is not divisible by the encoder's token grid 8x8"):
        DRoRAE.from_config(DRoRAEConfig(encoder=TINY, image_size=36))


def test_fused_layer_subset_sets_the_fusion_width(default_images):
    model = DRoRAE.from_config(DRoRAEConfig(encoder=replace(TINY, layers=(-1,)), expert_hidden=4))
    assert model.fusion.config.num_layers == 1
    assert model.fusion_params() == fusion_param_count(96, 1, 4)


@pytest.mark.parametrize("steps", [1, 2, 10, 11])  # 10: OneCycleLR's warm-up would be 0 steps long
def test_tiny_encoder_pretrains_for_any_number_of_steps(default_images, tmp_path, steps):
    xtr, ytr, _ = default_images
    cfg = replace(ENCODER_PRESETS["tiny"], pretrain_steps=steps, pretrain_batch_size=4)
    path = pretrain_tiny_encoder(cfg, xtr[:16], ytr[:16], "fashion-mnist-test", cache_dir=tmp_path)
    trained = torch.load(path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())


@pytest.mark.slow  # pretrains the tiny encoder
def test_tiny_encoder_is_pretrained_once_and_then_reused(default_images, tmp_path):
    xtr, ytr, _ = default_images
    cfg = replace(ENCODER_PRESETS["tiny"], pretrain_steps=3, pretrain_batch_size=16)
    path = pretrain_tiny_encoder(cfg, xtr, ytr, "fashion-mnist-test", cache_dir=tmp_path)
    mtime = path.stat().st_mtime_ns
    again = pretrain_tiny_encoder(cfg, xtr, ytr, "fashion-mnist-test", cache_dir=tmp_path)
    assert again == path and again.stat().st_mtime_ns == mtime
    other = pretrain_tiny_encoder(replace(cfg, pretrain_steps=4), xtr, ytr, "fashion-mnist-test", cache_dir=tmp_path)
    assert other != path  # a different config is a different cache entry
    model = DRoRAE.from_config(DRoRAEConfig(encoder=replace(cfg, checkpoint=str(path))))
    trained = torch.load(path, weights_only=True)
    assert torch.equal(model.encoder.vit.blocks[0].attn.qkv.weight, trained["blocks.0.attn.qkv.weight"])


def test_self_pretrained_default_resolves_to_a_cached_checkpoint(monkeypatch, tmp_path):
    from model import ensure_encoder_weights
    from model.assets import fashion_mnist_dir
    from model.data import DataConfig

    monkeypatch.setenv("DRORAE_FASHION_MNIST", str(fashion_mnist_dir()))
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path))
    cfg = replace(ENCODER_PRESETS["tiny"], pretrain_steps=2, pretrain_batch_size=8)
    data = DataConfig(num_train=64, num_val=8)
    resolved = ensure_encoder_weights(cfg, data)
    assert resolved.checkpoint is not None and resolved.checkpoint.startswith(str(tmp_path / "encoders"))
    assert ensure_encoder_weights(cfg, data) == resolved
    assert ensure_encoder_weights(resolved, data) is resolved  # already resolved: nothing to do
