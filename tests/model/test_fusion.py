"""DepthRoutedFusion: identity at init, energy normalization, negative routing, capacity formula."""

import itertools

import pytest
import torch

from helpers import encoder_presets
from model import ENCODER_PRESETS, DepthRoutedFusion, energy_aggregate, fusion_param_count
from model.errors import ConfigError


def _inputs(B=2, N=5, L=4, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(B, N, D, generator=g) for _ in range(L)]
    base = torch.randn(B, N, D, generator=g)
    return layers, base


def test_output_equals_base_bit_for_bit_at_initialization():
    layers, base = _inputs()
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=32)
    assert torch.equal(fusion(layers, base), base)


def test_one_optimizer_step_moves_the_output_away_from_base():
    layers, base = _inputs()
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=32)
    target = torch.randn_like(base)
    opt = torch.optim.Adam(fusion.parameters(), lr=1e-3)
    loss = (fusion(layers, base) - target).pow(2).mean()
    loss.backward()
    opt.step()
    out = fusion(layers, base)
    assert not torch.equal(out, base)
    assert (out - base).abs().max() > 1e-6


def test_scaling_a_tokens_router_logits_by_positive_c_leaves_its_fused_vector_unchanged():
    layers, base = _inputs()
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=32)
    with torch.no_grad():
        fusion.gate.fill_(0.7)  # open the gate so z_fuse reaches the output
        experts, logits = fusion.route(layers)
        ref = energy_aggregate(experts, logits, eps=0.0)
        for c in (0.01, 0.5, 3.0, 1e3):
            assert torch.allclose(energy_aggregate(experts, c * logits, eps=0.0), ref, atol=1e-5)
        # Through the real forward: the router is linear, so scaling its weight and bias scales the logits.
        before = fusion(layers, base)
        fusion.router.weight.mul_(4.0)
        fusion.router.bias.mul_(4.0)
        assert torch.allclose(fusion(layers, base), before, atol=1e-5)


def test_scaling_one_tokens_logits_changes_no_other_token():
    layers, base = _inputs()
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=32)
    experts, logits = fusion.route(layers)
    scaled = logits.clone()
    scaled[3] *= 7.0
    a, b = energy_aggregate(experts, logits, 1e-6), energy_aggregate(experts, scaled, 1e-6)
    assert torch.allclose(a, b, atol=1e-5)


def test_negative_weight_is_reachable_and_flips_its_layers_contribution():
    layers, base = _inputs(L=3)
    fusion = DepthRoutedFusion(dim=16, num_layers=3, hidden=8)
    with torch.no_grad():
        fusion.router.weight.zero_()
        fusion.router.bias.copy_(torch.tensor([-2.0, 0.0, 0.0]))  # the router suppresses layer 0
        experts, logits = fusion.route(layers)
    assert (logits[:, 0] < 0).all()
    pos = energy_aggregate(experts, logits.abs(), 0.0)
    neg = energy_aggregate(experts, logits, 0.0)
    assert torch.allclose(neg, -pos, atol=1e-6)  # only layer 0 is active: its sign flips the output
    assert torch.allclose(neg, -experts[0], atol=1e-5)  # |w| normalized to 1


def test_energy_aggregation_matches_its_formula_against_a_loop():
    g = torch.Generator().manual_seed(1)
    experts, w = torch.randn(3, 7, 5, generator=g), torch.randn(7, 3, generator=g)
    ref = torch.stack([sum(w[t, k] * experts[k, t] for k in range(3)) / (w[t].pow(2).sum() + 1e-6).sqrt()
                       for t in range(7)])
    assert torch.allclose(energy_aggregate(experts, w, 1e-6), ref, atol=1e-6)


def test_correction_is_bounded_by_beta_max_per_channel():
    layers, base = _inputs()
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=8, beta_max=0.25)
    with torch.no_grad():
        fusion.gate.fill_(100.0)
        z_fuse = fusion.fuse(layers)
    assert torch.allclose(fusion(layers, base) - base, 0.25 * z_fuse, atol=1e-6)


@pytest.mark.parametrize("dim,num_layers,hidden", list(itertools.product([8, 96], [1, 3, 6], [1, 2, 64])))
def test_param_count_formula_equals_the_modules_parameters(dim, num_layers, hidden):
    fusion = DepthRoutedFusion(dim=dim, num_layers=num_layers, hidden=hidden)
    assert fusion_param_count(dim, num_layers, hidden) == sum(p.numel() for p in fusion.parameters())
    assert all(p.requires_grad for p in fusion.parameters())


@pytest.mark.parametrize("preset", encoder_presets())
def test_param_count_formula_for_every_encoder_preset(preset):
    import timm

    cfg = ENCODER_PRESETS[preset]
    vit = timm.create_model(cfg.name, pretrained=False, num_classes=0, img_size=cfg.input_size, **cfg.model_kwargs)
    dim, depth = vit.embed_dim, len(vit.blocks)
    for hidden in (16, 128):
        fusion = DepthRoutedFusion(dim=dim, num_layers=depth, hidden=hidden)
        assert fusion_param_count(dim, depth, hidden) == sum(p.numel() for p in fusion.parameters())


@pytest.mark.parametrize("hidden,paper", [(3072, 56.8e6), (6144, 113.5e6)])
def test_vit_b_all_layers_matches_the_papers_x_axis_within_3_percent(hidden, paper):
    assert abs(fusion_param_count(768, 12, hidden) - paper) / paper < 0.03


def test_prototype_fixed_and_per_width_counts():
    # design.md section 5: trainable params = 5,286 + 1,158 h for d = 96, L = 6.
    for h in (2, 32, 256):
        assert fusion_param_count(96, 6, h) == 5286 + 1158 * h


@pytest.mark.parametrize("kwargs,key", [
    (dict(dim=0, num_layers=2, hidden=4), "fusion.dim"),
    (dict(dim=8, num_layers=2, hidden=-1), "fusion.hidden"),
    (dict(dim=8, num_layers=2, hidden=4, beta_max=0.0), "fusion.beta_max"),
])
def test_bad_sizes_fail_at_construction_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DepthRoutedFusion(**kwargs)


def test_wrong_number_of_layers_is_rejected():
    layers, base = _inputs(L=3)
    fusion = DepthRoutedFusion(dim=16, num_layers=4, hidden=8)
    with pytest.raises(ValueError, match="4 layer tensors"):
        fusion(layers, base)
