"""FrozenEncoder: every preset's shapes, layer selection, frozen weights, one-line errors."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from helpers import encoder_presets
from model import ENCODER_PRESETS, EncoderConfig, FrozenEncoder
from model.encoder import EncoderArchitecture, encoder_architecture
from model.errors import AssetError, ConfigError, UserError


def _random(preset: str, **kw) -> EncoderConfig:
    return replace(ENCODER_PRESETS[preset], weights="none", **kw)


@pytest.mark.parametrize("preset", encoder_presets())
def test_every_preset_yields_L_tensors_of_shape_B_N_D_without_nans(preset):
    enc = FrozenEncoder(_random(preset))
    size = enc.config.input_size
    layers, base = enc(torch.rand(2, 3, size, size))
    L, N, D = enc.arch.depth, enc.num_tokens, enc.arch.dim
    assert layers.shape == (L, 2, N, D)
    assert base.shape == (2, N, D)
    assert torch.isfinite(layers).all() and torch.isfinite(base).all()


@pytest.mark.parametrize("preset, dim, depth, patch, grid", [
    ("tiny", 96, 6, 4, 8), ("dinov2-s", 384, 12, 14, 16), ("dinov2-b", 768, 12, 14, 16), ("dinov2-l", 1024, 24, 14, 16),
])
def test_architecture_from_timms_table_without_weights(preset, dim, depth, patch, grid):
    arch = encoder_architecture(ENCODER_PRESETS[preset])
    assert (arch.dim, arch.depth, arch.patch_size, arch.grid, arch.tokens) == (dim, depth, patch, grid, grid * grid)
    assert arch.params > 12 * depth * dim * dim  # attention + MLP weights of every block, at least


@pytest.mark.parametrize("preset", ["tiny", "dinov2-s"])
def test_the_built_encoder_has_the_architecture_the_plan_reads(preset):
    enc = FrozenEncoder(_random(preset))
    assert enc.arch == encoder_architecture(enc.config)
    assert enc.arch.params == sum(p.numel() for p in enc.vit.parameters())
    assert enc.num_tokens == enc.arch.tokens and len(enc.layers) == enc.arch.depth


def test_the_decoder_patch_must_tile_the_image():
    arch = EncoderArchitecture(dim=96, depth=6, patch_size=4, grid=8, params=1)
    assert arch.decoder_patch(32) == 4 and arch.decoder_patch(256) == 32
    with pytest.raises(ConfigError, match=r"^data\.resolution: 36 px is not divisible by the encoder's token grid 8x8"):
        arch.decoder_patch(36, key="data.resolution")


@pytest.mark.parametrize("change, message", [
    (dict(name="vit_tiny_patch16_22"), r"encoder\.name: timm has no model 'vit_tiny_patch16_22'; did you mean"),
    (dict(model_kwargs={"depht": 4}), r"encoder\.model_kwargs: timm cannot build vit_tiny_patch16_224 .*depht"),
    (dict(input_size=30), r"encoder\.input_size: 30 px is not divisible by the patch size 4"),
    (dict(name="resnet18", model_kwargs={}), r"encoder\.model_kwargs: timm cannot build resnet18 .*img_size"),
])
def test_an_architecture_that_cannot_serve_is_a_config_error(change, message):
    with pytest.raises(ConfigError, match=message):
        encoder_architecture(replace(ENCODER_PRESETS["tiny"], **change))


def _blocks_by_hand(vit, x):
    """Every block's output (B, P + N, D) for normalized images ``x``, through timm's modules one at a time."""
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    out = []
    for block in vit.blocks:
        h = block(h)
        out.append(h)
    return out


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 4, "no_embed_class": True}], ids=["cls", "cls+4-registers"])
def test_z_base_is_the_last_blocks_patch_tokens_under_a_layernorm_without_affine(extra):
    # RAE (Dinov2withNorm): the final LayerNorm with elementwise_affine=False, eps 1e-6, on the last block's
    # output; prefix (class, register) tokens dropped. In float64, so that a wrong eps (1e-5) shows too.
    cfg = _random("tiny")
    torch.manual_seed(0)
    enc = FrozenEncoder(replace(cfg, model_kwargs={**cfg.model_kwargs, **extra})).double()
    prefix = 1 + extra.get("reg_tokens", 0)
    assert enc.vit.num_prefix_tokens == prefix
    with torch.no_grad():  # a trained final norm has an affine far from the identity it starts at
        enc.vit.norm.weight.copy_(1 + 0.5 * torch.randn(96))
        enc.vit.norm.bias.copy_(0.5 * torch.randn(96))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    layers, base = enc(x)
    with torch.no_grad():
        blocks = [b[:, prefix:] for b in _blocks_by_hand(enc.vit, (x - 0.5) / 0.5)]  # the preset's mean, std: 0.5
    last = blocks[-1]  # (B, N, D)
    mu = last.mean(-1, keepdim=True)
    var = (last - mu).pow(2).mean(-1, keepdim=True)
    assert torch.allclose(base, (last - mu) / torch.sqrt(var + 1e-6), rtol=0, atol=1e-10)
    assert torch.allclose(base.mean(-1), torch.zeros(2, 64, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(base.pow(2).mean(-1, keepdim=True), var / (var + 1e-6), rtol=0, atol=1e-12)
    for k in range(6):  # the fused layers: each block's patch tokens as they are
        assert torch.allclose(layers[k], blocks[k], rtol=0, atol=1e-10)
    with torch.no_grad():  # ... which is not what timm's final norm (with its affine) gives
        assert not torch.allclose(base, enc.vit.norm(last), atol=1e-2)


def test_layers_option_selects_blocks_and_accepts_negative_indices():
    enc = FrozenEncoder(_random("tiny", layers=(-1, 2)))
    assert enc.layers == (2, 5)
    layers, _ = enc(torch.rand(1, 3, 32, 32))
    full, _ = FrozenEncoder(_random("tiny"))(torch.rand(1, 3, 32, 32))
    assert layers.shape[0] == 2 and full.shape[0] == 6


def test_encoder_is_frozen_and_stays_in_eval_mode():
    enc = FrozenEncoder(_random("tiny"))
    enc.train()
    assert not enc.vit.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_images_of_another_size_are_resized_to_the_encoders_input():
    enc = FrozenEncoder(_random("tiny"))
    layers, base = enc(torch.rand(1, 3, 48, 48))
    assert base.shape == (1, 64, 96)


def test_unknown_encoder_name_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"encoder.name: .*did you mean .*vit_base_patch14_reg4_dinov2"):
        FrozenEncoder(EncoderConfig(name="vit_base_patch14_reg4_dinov", weights="none"))


def test_missing_checkpoint_path_is_named():
    with pytest.raises(AssetError, match=r"encoder.checkpoint: no such file /nonexistent/vit.pt"):
        EncoderConfig(name="vit_tiny_patch16_224", checkpoint="/nonexistent/vit.pt")


def test_image_size_not_divisible_by_the_patch_size_is_rejected():
    with pytest.raises(ConfigError, match=r"encoder.input_size: 30 px is not divisible by the patch size 4"):
        FrozenEncoder(_random("tiny", input_size=30))


@pytest.mark.parametrize("layers", [(6,), (-7,), (0, 0)])
def test_layer_index_out_of_range_or_repeated_is_rejected(layers):
    with pytest.raises(ConfigError, match=r"encoder.layers"):
        FrozenEncoder(_random("tiny", layers=layers))


def test_every_error_is_one_line():
    for make in (lambda: FrozenEncoder(_random("tiny", layers=(9,))),
                 lambda: EncoderConfig(name="x", checkpoint="/nope"),
                 lambda: FrozenEncoder(EncoderConfig(name="vit_tiny_patch16_22", weights="none"))):
        with pytest.raises(UserError) as err:
            make()
        assert "\n" not in str(err.value)


def test_local_checkpoint_loads_through_timms_loader(tmp_path):
    src = FrozenEncoder(_random("tiny"))
    path = tmp_path / "vit.pt"
    torch.save(src.vit.state_dict(), path)
    dst = FrozenEncoder(replace(ENCODER_PRESETS["tiny"], weights="hub", checkpoint=str(path)))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(src(x)[1], dst(x)[1])


@pytest.mark.slow  # a fresh interpreter
def test_hub_weights_unreachable_offline_give_an_asset_error():
    # In a subprocess with the hub switched off: the same path a user without internet takes.
    code = ("from model import FrozenEncoder, ENCODER_PRESETS\n"
            "FrozenEncoder(ENCODER_PRESETS['dinov2-s'])")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "AssetError: encoder.name: could not load pretrained weights" in out.stderr
    assert "set encoder.checkpoint" in out.stderr
