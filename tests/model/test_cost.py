"""model.cost: the closed forms equal torch's FlopCounterMode, module by module, phase by phase.

The counter is the independent reference: it counts the matmuls the real step runs (one
``_Trainer.step``; one ``reconstruct``), the closed forms are written from the architectures'
shapes. Equality is exact (integers; float64 holds them exactly). The sizes vary widths, fused
layer counts, decoder width, depth and MLP ratio, the token grid and the prefix tokens, so every
term of each form moves on its own; ``test_each_wrong_formula_is_caught`` shows the terms a wrong
formula (attention 2 vs 4, no router, factor 3 for a frozen decoder) would change.
"""

from dataclasses import replace

import pytest
import torch

from model import ENCODER_PRESETS, DecoderConfig, DRoRAE, DRoRAEConfig, FeatureSet, PhaseConfig
from model.cost import (
    MODULES,
    ModelShape,
    closed_reconstruction,
    closed_step,
    count_reconstruction,
    count_step,
    decoder_forward_flops,
    device_description,
    encoder_forward_flops,
    fusion_forward_flops,
    phase_flops,
    step_flops,
)

TINY = replace(ENCODER_PRESETS["tiny"], weights="none")
# A DINOv2-with-registers ViT at toy size: 5 prefix tokens (class + 4 registers), patch 14, 4x4 grid.
DINO = replace(ENCODER_PRESETS["dinov2-s"], weights="none", input_size=56,
               model_kwargs=dict(embed_dim=48, depth=3, num_heads=2))

MODELS = {  # (encoder, fused layers, expert width, decoder, image size)
    "tiny-all-h16": (TINY, None, 16, DecoderConfig(dim=48, depth=2, num_heads=4), 32),
    "tiny-3of6-h5-deep": (replace(TINY, layers=(1, 3, 5)), None, 5,
                          DecoderConfig(dim=64, depth=3, num_heads=2, mlp_ratio=2.5), 32),
    "dino-reg4-h40": (DINO, None, 40, DecoderConfig(dim=32, depth=1, num_heads=2, mlp_ratio=3.0), 64),
    # One fused layer (the last_layer control): the weighted sum of one expert is elementwise, not a matmul.
    "tiny-last-layer-h12": (replace(TINY, layers=(5,)), None, 12, DecoderConfig(dim=32, depth=1, num_heads=2), 32),
}


def _build(name):
    enc, _, h, dec, size = MODELS[name]
    torch.manual_seed(0)
    return DRoRAE.from_config(DRoRAEConfig(encoder=enc, decoder=dec, image_size=size, expert_hidden=h))


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_data(request):
    model = _build(request.param)
    size = MODELS[request.param][4]
    images = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, {"images": images, "cached": FeatureSet.encode(model, images, batch_size=6)}


@pytest.mark.parametrize("phase", [1, 2, 3])
@pytest.mark.parametrize("source", ["images", "cached"])
def test_a_training_step_counts_as_its_closed_form_by_module(model_and_data, phase, source):
    model, data = model_and_data
    counted = count_step(model, phase, PhaseConfig(steps=1, batch_size=3), data[source], images=2)
    closed = closed_step(ModelShape.of(model), phase, cached=source == "cached")
    assert counted.by_module == closed.by_module  # exact; L1 alone: the loss has no matmul (loss 0)
    assert counted.total == sum(counted.by_module.values()) and set(counted.by_module) == set(MODULES)
    assert (counted.by_module["encoder"] == 0) == (source == "cached")


@pytest.mark.parametrize("source", ["images", "cached"])
def test_the_evaluation_forward_counts_as_its_closed_form(model_and_data, source):
    model, data = model_and_data
    counted = count_reconstruction(model, data[source], images=2)
    assert counted.by_module == closed_reconstruction(ModelShape.of(model), cached=source == "cached").by_module
    plain = count_reconstruction(model, data[source], images=2, use_fusion=False)
    assert plain.by_module["fusion"] == 0 and plain.by_module["decoder"] == counted.by_module["decoder"]


def test_counting_leaves_the_model_and_the_rng_as_they_were(model_and_data):
    model, data = model_and_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = PhaseConfig(steps=1, batch_size=32, lr=1.0)
    per_batch = step_flops(model, 2, cfg, data["cached"], images=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Counted on 2 images, scaled to the batch of 32: FLOPs are linear in the batch.
    assert per_batch == count_step(model, 2, cfg, data["cached"], images=3).total * 32


def test_a_loss_network_is_the_rest_of_the_step():
    """With the adversarial term on, the discriminator's matmuls land in by_module['loss']; the model's stay."""
    model = _build("tiny-all-h16")
    images = torch.rand(4, 3, 32, 32)
    plain = count_step(model, 3, PhaseConfig(steps=1, batch_size=2), images)
    adv = count_step(model, 3, PhaseConfig(steps=1, batch_size=2, loss=dict(adv=0.5)), images)
    assert adv.by_module["loss"] > 0 == plain.by_module["loss"]
    assert {k: v for k, v in adv.by_module.items() if k != "loss"} == \
           {k: v for k, v in plain.by_module.items() if k != "loss"}


def test_each_wrong_formula_is_caught():
    """For the sizes above each term is nonzero and distinct: a closed form missing a term or with a
    wrong factor would differ from the count the tests above compare it to."""
    model = _build("tiny-3of6-h5-deep")
    s = ModelShape.of(model)
    N, d, L, h = s.encoder.tokens, s.encoder.dim, s.fused_layers, s.hidden
    fusion = fusion_forward_flops(N, d, L, h)
    assert fusion != N * (4 * L * d * h + 2 * L * d)  # the router missed
    assert fusion != N * (4 * L * d * h + 2 * L * L * d)  # the aggregation missed
    dec = decoder_forward_flops(s.decoder, d, N, s.patch)
    D, depth = s.decoder.dim, s.decoder.depth
    assert dec.attention == depth * 4 * N * N * D != depth * 2 * N * N * D  # QK^T and AV, not one of them
    step2 = closed_step(s, 2, cached=True).by_module["decoder"]
    assert step2 != 3 * dec.forward and step2 != 2 * dec.forward  # frozen on the path: 2x linear, 3x attention
    arch = s.encoder
    assert arch.prefix_tokens == 1
    assert encoder_forward_flops(replace(arch, prefix_tokens=0)) < encoder_forward_flops(arch)


def test_a_phase_counts_the_steps_before_and_after_the_adversarial_term_switches_on():
    model = _build("tiny-all-h16")
    images = torch.rand(4, 3, 32, 32)
    cfg = PhaseConfig(steps=10, batch_size=2, loss=dict(adv=0.5, adv_start_step=4))
    off, on = step_flops(model, 3, cfg, images), step_flops(model, 3, cfg, images, step=4)
    assert on > off
    assert phase_flops(model, 3, cfg, images) == 4 * off + 6 * on
    assert phase_flops(model, 3, replace(cfg, loss=replace(cfg.loss, adv_start_step=0)), images) == 10 * on


def test_the_device_names_the_cpu_and_its_threads():
    text = device_description(torch.device("cpu"))
    assert text.endswith(f"({torch.get_num_threads()} threads)") and len(text) > len(" (1 threads)")
