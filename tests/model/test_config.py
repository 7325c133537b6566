"""Every model config validates itself at construction: a bad value is a one-line ConfigError naming the key."""

import math
from dataclasses import fields, replace

import pytest

from model import (
    DECODER_PRESETS,
    ENCODER_PRESETS,
    DecoderConfig,
    DRoRAEConfig,
    EncoderConfig,
    FusionConfig,
    LossConfig,
    PhaseConfig,
)
from model.data import DataConfig
from model.errors import ConfigError, UserError

VALID = {  # a valid instance of each config, and the prefix of its keys in errors
    "encoder": (EncoderConfig(name="vit_tiny_patch16_224"), "encoder."),
    "decoder": (DecoderConfig(), "decoder."),
    "data": (DataConfig(), "data."),
    "loss": (LossConfig(), "loss."),
    "phase": (PhaseConfig(steps=1), "phase."),
    "fusion": (FusionConfig(dim=8, num_layers=2, hidden=4), "fusion."),
    "drorae": (DRoRAEConfig(), ""),
}

BAD = [  # (config, key, bad value, words of the message)
    ("encoder", "weights", "web", ["'hub', 'none' or 'self-pretrained'", "'web'"]),
    ("encoder", "input_size", 0, ["greater than 0"]),
    ("encoder", "layers", (), ["at least 1 item"]),
    ("encoder", "model_kwargs", [4], ["expected a mapping, got a list [4]"]),
    ("encoder", "mean", (0.5, 0.5), ["too few items, got a list (0.5, 0.5)"]),
    ("encoder", "pretrain_steps", 0, ["greater than 0"]),
    ("encoder", "pretrain_batch_size", -1, ["greater than 0"]),
    ("encoder", "pretrain_lr", 0.0, ["greater than 0"]),
    ("decoder", "dim", 0, ["greater than 0"]),
    ("decoder", "depth", 0, ["greater than 0"]),
    ("decoder", "num_heads", 5, ["5 does not divide decoder.dim 768"]),
    ("decoder", "mlp_ratio", 0.0, ["greater than 0"]),
    ("decoder", "noise_tau", -0.1, ["greater than or equal to 0"]),
    ("data", "name", "cifar", ["'fashion-mnist' or 'imagefolder'"]),
    ("data", "resolution", 4, ["greater than or equal to 8"]),
    ("data", "resolution", 16, ["Fashion-MNIST is 28 px"]),
    ("data", "num_train", 0, ["greater than 0"]),
    ("data", "num_val", 0, ["greater than 0"]),
    ("loss", "l1", -1.0, ["greater than or equal to 0"]),
    ("loss", "lpips", -1.0, ["greater than or equal to 0"]),
    ("loss", "adv", -1.0, ["greater than or equal to 0"]),
    ("loss", "lpips_net", "squeeze", ["'alex' or 'vgg'"]),
    ("loss", "adv_start_step", -1, ["greater than or equal to 0"]),
    ("phase", "steps", 0, ["greater than 0"]),
    ("phase", "batch_size", 0, ["greater than 0"]),
    ("phase", "lr", 0.0, ["greater than 0"]),
    ("phase", "lr", math.inf, ["finite"]),
    ("phase", "lr", math.nan, ["finite"]),
    ("phase", "weight_decay", -1e-4, ["greater than or equal to 0"]),
    ("phase", "warmup_steps", -1, ["greater than or equal to 0"]),
    ("phase", "min_lr_ratio", -0.1, ["greater than or equal to 0"]),
    ("phase", "min_lr_ratio", 1.5, ["less than or equal to 1"]),
    ("phase", "grad_clip", -1.0, ["greater than or equal to 0"]),
    ("phase", "log_every", 0, ["greater than 0"]),
    ("phase", "eval_every", -1, ["greater than or equal to 0"]),
    ("phase", "checkpoint_every", -1, ["greater than or equal to 0"]),
    ("phase", "val_batch_size", 0, ["greater than 0"]),
    ("phase", "steps", "many", ["valid integer", "'many'"]),
    ("fusion", "dim", 0, ["greater than 0"]),
    ("fusion", "num_layers", 0, ["greater than 0"]),
    ("fusion", "hidden", -1, ["greater than 0"]),
    ("fusion", "beta_max", 0.0, ["greater than 0"]),
    ("fusion", "beta_max", math.inf, ["finite"]),
    ("fusion", "eps", 0.0, ["greater than 0"]),
    ("fusion", "router_init_gain", -0.1, ["greater than or equal to 0"]),
    ("fusion", "router_init_gain", math.inf, ["finite"]),
    ("drorae", "image_size", 0, ["greater than 0"]),
    ("drorae", "expert_hidden", 0, ["greater than 0"]),
    ("drorae", "beta_max", -1.0, ["greater than 0"]),
]


@pytest.mark.parametrize("name, key, value, words", BAD, ids=[f"{b[0]}.{b[1]}={b[2]!r}" for b in BAD])
def test_a_bad_value_fails_at_construction_naming_the_key(name, key, value, words):
    valid, prefix = VALID[name]
    cls = type(valid)
    kwargs = {f.name: getattr(valid, f.name) for f in fields(cls)}
    for make in (lambda: cls(**{**kwargs, key: value}), lambda: replace(valid, **{key: value})):
        with pytest.raises(ConfigError) as info:
            make()
        message = str(info.value)
        assert message.startswith(f"{prefix}{key}: ") and "\n" not in message, message
        assert isinstance(info.value, UserError) and info.value.exit_code == 2
        for word in words:
            assert word in message, message


def test_every_field_of_every_config_has_a_bad_value_case():
    # so that a new field with a bound gets a case here (bool switches, free names and paths have none)
    free = {"encoder.name", "encoder.checkpoint", "encoder.std", "data.root", "phase.loss", "phase.seed",
            "phase.amp", "phase.compile", "drorae.encoder", "drorae.decoder"}
    covered = {f"{name}.{key}" for name, key, _, _ in BAD}
    every = {f"{name}.{f.name}" for name, (valid, _) in VALID.items() for f in fields(type(valid))}
    assert every - covered == free


@pytest.mark.parametrize("name", VALID)
def test_an_unknown_key_is_named_with_a_hint(name):
    valid, prefix = VALID[name]
    first = fields(type(valid))[0].name
    with pytest.raises(ConfigError, match=rf"^{prefix}{first}x: unknown key \(did you mean '{first}'\?\)$"):
        type(valid)(**{f.name: getattr(valid, f.name) for f in fields(type(valid))[1:]}, **{first + "x": 1})


def test_all_loss_weights_zero_is_rejected_for_the_loss_as_a_whole():
    with pytest.raises(ConfigError, match=r"^loss: every loss weight is 0; set l1 \(or lpips, adv\) > 0$"):
        LossConfig(l1=0.0)
    with pytest.raises(ConfigError, match=r"^phase\.loss: every loss weight is 0"):
        PhaseConfig(steps=1, loss={"l1": 0.0})
    assert LossConfig(l1=0.0, lpips=0.5).lpips == 0.5  # one weight is enough


def test_an_imagefolder_needs_its_root():
    with pytest.raises(ConfigError, match=r"^data\.root: the imagefolder dataset needs a root"):
        DataConfig(name="imagefolder")
    assert DataConfig(name="imagefolder", root="/data", resolution=16).resolution == 16  # no 28 px floor there


@pytest.mark.parametrize("preset", [*ENCODER_PRESETS, *(f"decoder-{k}" for k in DECODER_PRESETS)])
def test_every_preset_is_a_valid_config(preset):
    cfg = DECODER_PRESETS[preset.removeprefix("decoder-")] if preset.startswith("decoder-") else ENCODER_PRESETS[preset]
    assert replace(cfg) == cfg  # revalidates every field


def test_configs_are_frozen_and_coerce_like_a_spec():
    cfg = PhaseConfig(steps=1, loss={"lpips": 0.5})
    assert isinstance(cfg.loss, LossConfig) and cfg.loss.lpips == 0.5
    assert isinstance(PhaseConfig(steps=1, lr=1).lr, float)
    assert EncoderConfig(name="x", layers=[0, -1]).layers == (0, -1)
    with pytest.raises(AttributeError):
        cfg.steps = 2


def test_a_fields_own_bound_on_an_int_holds_beside_the_64_bit_range():
    # pydantic keeps one bound of each kind: the 64-bit range must not displace a field's own `ge`/`le`
    from pydantic import BaseModel, Field, ValidationError

    from model.config import Int

    class Section(BaseModel):
        at_least_3: Int = Field(3, ge=3)
        at_most_5: Int = Field(0, le=5)

    for key, value, words in (("at_least_3", 2, "greater_than_equal"), ("at_most_5", 6, "less_than_equal"),
                              ("at_least_3", 2**63, "64-bit"), ("at_most_5", -(2**63) - 1, "64-bit")):
        with pytest.raises(ValidationError, match=words):
            Section(**{key: value})
    assert Section(at_least_3=2**63 - 1, at_most_5=-(2**63)).at_least_3 == 2**63 - 1
