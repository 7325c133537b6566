"""Training phases: what each phase trains and freezes, checkpoint/resume, NaN losses, speed."""

import math

import pytest
import torch

from model import FeatureSet, PhaseConfig, finetune_decoder, train_decoder, train_fusion
from model.errors import ConfigError


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # three phases on 320 real images: up to a minute on 2 CPU cores
def test_three_phases_train_only_their_module_and_fusion_beats_the_rae(default_images, tiny_model):
    xtr, _, xva = default_images
    model = tiny_model
    train, val = FeatureSet.encode(model, xtr), FeatureSet.encode(model, xva)
    p1 = train_decoder(model, PhaseConfig(steps=100, batch_size=64, lr=2e-3), train, val)
    enc, dec = _snapshot(model.encoder), _snapshot(model.decoder)
    p2 = train_fusion(model, PhaseConfig(steps=60, batch_size=64, lr=3e-3), train, val)
    assert _same(enc, _snapshot(model.encoder)), "phase 2 changed the encoder"
    assert _same(dec, _snapshot(model.decoder)), "phase 2 changed the decoder"
    fus = _snapshot(model.fusion)
    p3 = finetune_decoder(model, PhaseConfig(steps=20, batch_size=64, lr=2e-4), xtr, xva)  # encodes on the fly
    assert _same(enc, _snapshot(model.encoder)), "phase 3 changed the encoder"
    assert _same(fus, _snapshot(model.fusion)), "phase 3 changed the fusion module"
    assert not _same(dec, _snapshot(model.decoder)), "phase 3 did not train the decoder"
    assert p2["val_l1"] < p1["val_l1"], (p1, p2)
    # Phase 3's val L1, recomputed here: the mean |clamp(decoder(z_final)) - image| over the val images.
    with torch.no_grad():
        layers, base = model.encoder(xva)
        recon = model.decoder(model.fusion(layers, base)).clamp(0, 1)
        expected = (recon - xva).abs().mean().item()
    assert math.isfinite(p3["val_l1"]) and p3["val_l1"] == pytest.approx(expected, rel=1e-5), (p3, expected)
    assert p3["val_l1"] < p2["val_l1"], (p2, p3)  # fine-tuning the decoder on z_final helps (0.0322 vs 0.0331)
    assert p1["val_l1"] < 0.2  # the decoder learned something: a blank image has L1 ~0.29


# The paper's three phases (section 3.3): the module each one trains, and the latent its decoder reads.
PAPER_PHASES = {1: ("decoder", "z_base"), 2: ("fusion", "z_final"), 3: ("decoder", "z_final")}


@pytest.mark.parametrize("phase", sorted(PAPER_PHASES))
def test_each_phase_trains_its_module_and_leaves_every_other_parameter_unchanged(default_images, tiny_model, phase):
    from model import run_phase

    xtr, _, xva = default_images
    before = {name: _snapshot(getattr(tiny_model, name)) for name in ("encoder", "decoder", "fusion")}
    run_phase(tiny_model, phase, PhaseConfig(steps=2, batch_size=8, lr=1e-2), xtr[:64], xva[:8])
    trained = PAPER_PHASES[phase][0]
    for name, state in before.items():
        changed = not _same(state, _snapshot(getattr(tiny_model, name)))
        assert changed == (name == trained), f"phase {phase}: {name} {'changed' if changed else 'unchanged'}"


@pytest.mark.parametrize("phase", [1, 3])
def test_the_decoder_phases_read_their_latent(default_images, tiny_model, phase):
    """Phase 1 trains the decoder on z_base, phase 3 on z_final: with a fusion module that moves the
    latent, phase 1 trains exactly as without one, phase 3 differently."""
    import copy

    from model import run_phase

    xtr, _, xva = default_images
    with torch.no_grad():
        for p in tiny_model.fusion.parameters():
            p.add_(0.5 * torch.randn_like(p))
        layers, base = tiny_model.encoder(xva[:4])
        assert not torch.allclose(tiny_model.latent(layers, base), base)  # z_final is not z_base
    plain = copy.deepcopy(tiny_model)
    plain.fusion = None  # the same model as a plain RAE: its latent is z_base
    cfg = PhaseConfig(steps=3, batch_size=8, lr=1e-2)
    run_phase(tiny_model, phase, cfg, xtr[:64], xva[:8])
    run_phase(plain, phase, cfg, xtr[:64], xva[:8])
    same = _same(_snapshot(tiny_model.decoder), _snapshot(plain.decoder))
    assert same == (PAPER_PHASES[phase][1] == "z_base")


def test_phase_2_starts_exactly_at_the_phase_1_reconstruction(default_images, tiny_model):
    _, _, xva = default_images
    from model.train import validation_l1

    assert validation_l1(tiny_model, xva[:32], phase=1) == validation_l1(tiny_model, xva[:32], phase=2)


@pytest.mark.slow  # a phase with evaluations (make test-fast trains phases in test_image_folder_streaming.py)
def test_report_receives_the_training_curve(default_images, tiny_model):
    xtr, _, xva = default_images
    seen = []
    train_decoder(tiny_model, PhaseConfig(steps=6, batch_size=16, log_every=2, eval_every=3), xtr, xva[:32],
                  seen.append)
    steps = [m["step"] for m in seen if "loss" in m]
    assert steps == [2, 4, 6]
    assert any("val_l1" in m and m["step"] == 3 for m in seen)
    assert seen[-1]["final"] is True


@pytest.mark.slow  # trains the phase twice (make test-fast keeps the streamed resume, test_image_folder_streaming.py)
def test_interrupted_phase_resumes_from_its_checkpoint_to_the_same_weights(default_images, tiny_model, tmp_path):
    xtr, _, xva = default_images
    cfg = PhaseConfig(steps=8, batch_size=16, lr=3e-3, checkpoint_every=4, log_every=1)
    initial = _snapshot(tiny_model.fusion)
    ckpt = tmp_path / "phase2.pt"

    def stop_after_5(metrics):
        if metrics.get("step") == 5 and "loss" in metrics:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fusion(tiny_model, cfg, xtr, xva[:16], stop_after_5, checkpoint=ckpt)
    assert ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    steps = []
    train_fusion(tiny_model, cfg, xtr, xva[:16], lambda m: steps.append(m["step"]), checkpoint=ckpt)
    assert steps[0] == 5  # resumed after the checkpoint, not from the start
    resumed = _snapshot(tiny_model.fusion)

    tiny_model.fusion.load_state_dict(initial)
    train_fusion(tiny_model, cfg, xtr, xva[:16])
    assert _same(resumed, _snapshot(tiny_model.fusion))


@pytest.mark.slow  # trains a phase, then restores it
def test_a_finished_phase_returns_at_once_from_its_checkpoint(default_images, tiny_model, tmp_path):
    xtr, _, xva = default_images
    cfg = PhaseConfig(steps=3, batch_size=8)
    train_decoder(tiny_model, cfg, xtr, xva[:8], checkpoint=tmp_path / "p1.pt")
    after = _snapshot(tiny_model.decoder)
    train_decoder(tiny_model, cfg, xtr, xva[:8], checkpoint=tmp_path / "p1.pt")
    assert _same(after, _snapshot(tiny_model.decoder))


def test_nan_loss_stops_the_phase_with_a_clear_error(default_images, tiny_model):
    xtr, _, xva = default_images
    bad = xtr.clone()
    bad[:] = float("nan")
    with pytest.raises(FloatingPointError, match=r"phase 2 \(fusion\): loss is nan at step 0"):
        train_fusion(tiny_model, PhaseConfig(steps=2, batch_size=8), bad, xva[:8])


def test_phase_2_without_a_fusion_module_is_a_config_error(default_images):
    from dataclasses import replace

    from model import ENCODER_PRESETS, DRoRAE, DRoRAEConfig

    rae = DRoRAE.from_config(DRoRAEConfig(encoder=replace(ENCODER_PRESETS["tiny"], weights="none")))
    xtr, _, xva = default_images
    with pytest.raises(ConfigError, match="expert_hidden"):
        train_fusion(rae, PhaseConfig(steps=1), xtr, xva)


@pytest.mark.parametrize("key,value", [("steps", 0), ("lr", -1.0), ("batch_size", 0)])
def test_bad_phase_config_names_the_key(key, value):
    kwargs = dict(steps=1)
    kwargs[key] = value
    with pytest.raises(ConfigError, match=f"phase.{key}"):
        PhaseConfig(**kwargs)


@pytest.mark.slow  # LPIPS-VGG and a discriminator over a phase
def test_lpips_and_delayed_adversarial_terms_join_the_loss_at_their_step(default_images, tiny_model):
    from model import LossConfig

    xtr, _, xva = default_images
    seen = []
    cfg = PhaseConfig(steps=4, batch_size=8, log_every=1,
                      loss=LossConfig(l1=1.0, lpips=0.5, adv=0.1, adv_start_step=2))
    train_decoder(tiny_model, cfg, xtr, xva[:8], seen.append)
    curve = [m for m in seen if "loss" in m]
    assert all(m["lpips"] > 0 for m in curve)
    assert ["adv_g" in m for m in curve] == [False, False, True, True]
    assert curve[0]["loss"] == pytest.approx(curve[0]["l1"] + 0.5 * curve[0]["lpips"], rel=1e-5)


def test_bad_loss_weights_name_the_key():
    from model import LossConfig

    with pytest.raises(ConfigError, match="loss.lpips"):
        LossConfig(lpips=-1)
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        LossConfig(l1=0)


# --- RAE's latent noise (phase 1) ----------------------------------------------------------------


def _uniform_ks(levels: torch.Tensor, tau: float) -> float:
    """Kolmogorov-Smirnov distance between the empirical distribution of ``levels`` and U(0, tau)."""
    from scipy import stats

    return stats.kstest(levels.double().numpy(), "uniform", args=(0, tau)).statistic


def test_noise_level_is_drawn_per_sample_uniform_up_to_tau():
    # RAE's noising: sigma ~ U(0, tau) of shape (B, 1, 1), noise sigma * N(0, 1). Each sample's level is
    # estimated by the std of its 64 x 64 noise entries (standard error ~1%): the 2000 levels follow U(0, tau)
    # (KS critical value 1.95 / sqrt(2000) = 0.044 at the 0.1% level; the estimation adds < 0.01).
    from model.train import noise_augment

    torch.manual_seed(0)
    tau, z = 0.8, torch.full((2000, 64, 64), 3.0)
    noise = noise_augment(z, tau) - z
    levels = noise.std(dim=(1, 2))  # (B,)
    assert _uniform_ks(levels, tau) < 0.044
    assert levels.max() <= tau * 1.05 and levels.min() < 0.01 * tau
    assert noise.mean(dim=(1, 2)).abs().max() < 5 * tau / 64  # centred: 5 standard errors of the largest level
    unit = noise / levels[:, None, None]  # N(0, 1) within each sample: kurtosis 3
    assert abs(unit.pow(4).mean().item() - 3) < 0.05


def test_phase_1_decodes_z_base_plus_a_noise_level_per_image(default_images):
    # The real training step: its decoder's input minus the encoder's z_base, for one batch of 64 images.
    from dataclasses import replace

    from model import DECODER_PRESETS, ENCODER_PRESETS, DRoRAE, DRoRAEConfig, run_phase

    xtr, _, xva = default_images
    torch.manual_seed(0)
    tau = 0.8
    model = DRoRAE.from_config(DRoRAEConfig(encoder=replace(ENCODER_PRESETS["tiny"], weights="none"),
                                            decoder=replace(DECODER_PRESETS["tiny"], noise_tau=tau)))
    seen = {}

    def encoded(module, args, out):  # observes only (returns None: the output stays as it is)
        seen.setdefault("base", out[1].clone())

    def decoding(module, args):
        seen.setdefault("z", args[0].detach().clone())

    model.encoder.register_forward_hook(encoded)
    model.decoder.register_forward_pre_hook(decoding)
    run_phase(model, 1, PhaseConfig(steps=1, batch_size=64), xtr[:64], xva[:4])
    levels = (seen["z"] - seen["base"]).std(dim=(1, 2))  # (64,)
    assert _uniform_ks(levels, tau) < 0.24  # KS critical value at 0.1% for 64 levels
    assert levels.min() < 0.25 * tau and levels.max() > 0.75 * tau  # one level per batch would fail both
