"""DepthRoutedFusion: identity at init, energy normalization, negative routing, capacity formula."""

import itertools
import math

import pytest
import torch

from helpers import encoder_presets
from model import ENCODER_PRESETS, DepthRoutedFusion, energy_aggregate, fusion_param_count
from model.errors import ConfigError
from model.fusion import FusionConfig


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


# --- the formulas, recomputed independently ---------------------------------------------------


def _reference(fusion, layers, base):
    """The paper's section 3 in plain torch, per token, from the module's parameters (none of its methods):
    z_final = base + beta_max tanh(g) * sum_l w_l e_l / sqrt(sum_l w_l^2 + eps)."""
    e, xs = [], []
    ex = fusion.experts
    for k, h in enumerate(layers):  # h: (B, N, d)
        mu = h.mean(-1, keepdim=True)
        var = (h - mu).pow(2).mean(-1, keepdim=True)  # biased, as LayerNorm
        x = (h - mu) / torch.sqrt(var + 1e-5) * ex.norm_weight[k] + ex.norm_bias[k]  # LN_l, torch's default eps
        u = x @ ex.w1[k] + ex.b1[k]
        gelu = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
        e.append(gelu @ ex.w2[k] + ex.b2[k])  # (B, N, d)
        xs.append(x)
    w = torch.cat(xs, -1) @ fusion.router.weight.T + fusion.router.bias  # (B, N, L): [LN_1(h_1); ...; LN_L(h_L)]
    mixed = sum(w[..., k:k + 1] * e[k] for k in range(len(layers)))
    z_fuse = mixed / torch.sqrt(w.pow(2).sum(-1, keepdim=True) + fusion.config.eps)
    return base + fusion.config.beta_max * torch.tanh(fusion.gate) * z_fuse


def _trained_like(fusion, seed=0):
    """Move every parameter away from its initialization (norm affines, a router with negative weights, an open
    gate of both signs), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fusion.named_parameters():
            scale = {"router.weight": 0.5, "router.bias": 1.0, "gate": 1.5}.get(name, 0.3)
            p.add_(scale * torch.randn(p.shape, generator=g))
    return fusion


@pytest.mark.parametrize("L,beta_max", [(1, 1.0), (4, 0.3), (6, 2.0)])
def test_forward_matches_the_papers_formulas_recomputed_per_token(L, beta_max):
    layers, base = _inputs(B=3, N=7, L=L, D=16, seed=L)
    fusion = _trained_like(DepthRoutedFusion(dim=16, num_layers=L, hidden=8, beta_max=beta_max), seed=L)
    with torch.no_grad():
        out, ref = fusion(layers, base), _reference(fusion, layers, base)
        assert (fusion.route(layers)[1] < 0).any()  # the check covers negative routing weights
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()
    # The stacked (L, B, N, d) input is the same as the list.
    assert torch.allclose(fusion(torch.stack(layers), base), out, atol=1e-6)


def test_each_tokens_output_depends_on_its_own_features_only():
    # Routing is per token: changing one token's layer features changes that token's latent and no other.
    layers, base = _inputs(B=2, N=6, L=3, D=16, seed=3)
    fusion = _trained_like(DepthRoutedFusion(dim=16, num_layers=3, hidden=8))
    changed = [h.clone() for h in layers]
    for h in changed:
        h[1, 4] = 5 * torch.randn(16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = fusion(layers, base), fusion(changed, base)
    moved = (a - b).abs().amax(-1)  # (B, N)
    assert moved[1, 4] > 1e-2
    moved[1, 4] = 0
    assert moved.max() < 1e-6, moved


def test_tokens_with_the_same_features_get_the_same_latent_whatever_their_neighbours():
    # Token 0 of two images with identical token-0 features but different other tokens: a per-image (mean over
    # tokens) or per-batch router would mix the neighbours in.
    layers, base = _inputs(B=2, N=5, L=4, D=16, seed=4)
    for h in layers:
        h[1, 0] = h[0, 0]
    base[1, 0] = base[0, 0]
    fusion = _trained_like(DepthRoutedFusion(dim=16, num_layers=4, hidden=8))
    with torch.no_grad():
        out = fusion(layers, base)
    assert torch.allclose(out[0, 0], out[1, 0], atol=1e-6)
    assert not torch.allclose(out[0, 1], out[1, 1], atol=1e-3)


@pytest.mark.parametrize("g", [-40.0, -2.0, -0.3, 0.05, 0.7, 3.0, 40.0])
def test_the_correction_scale_is_beta_max_tanh_g_per_channel(g):
    layers, base = _inputs(B=2, N=3, L=2, D=8, seed=5)
    fusion = _trained_like(DepthRoutedFusion(dim=8, num_layers=2, hidden=4, beta_max=0.4))
    with torch.no_grad():
        fusion.gate.copy_(g * torch.linspace(-1, 1, 8))
        z_fuse = fusion.fuse(layers)
        scale = (fusion(layers, base) - base) / z_fuse  # (B, N, d): one value per channel
    expected = 0.4 * torch.tanh(g * torch.linspace(-1, 1, 8))
    assert torch.allclose(scale, expected.expand_as(scale), atol=1e-4)
    assert scale.abs().max() <= 0.4 + 1e-4  # bounded whatever the gate, up to the rounding of (base + b z - base) / z
    assert fusion.beta.abs().max() <= 0.4  # the bound itself, exactly
    assert torch.allclose(fusion.beta, expected, atol=1e-6)


def test_energy_aggregation_is_not_a_softmax():
    # Two layers with weights (3, -4): the energy normalization gives (3 e_1 - 4 e_2) / 5; a softmax would give
    # positive weights summing to 1.
    experts = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(6))
    out = energy_aggregate(experts, torch.tensor([[3.0, -4.0]]), eps=0.0)
    assert torch.allclose(out, (3 * experts[0] - 4 * experts[1]) / 5, atol=1e-6)


def test_eps_enters_the_energy_normalization_under_the_root():
    # All weights 0.01 on 2 layers: sum w^2 = 2e-4; with eps = 2e-4 the norm is sqrt(4e-4) = 0.02.
    experts = torch.ones(2, 1, 3)
    out = energy_aggregate(experts, torch.full((1, 2), 0.01), eps=2e-4)
    assert torch.allclose(out, torch.full((1, 3), 0.02 / 0.02), atol=1e-6)
    fusion = DepthRoutedFusion(dim=8, num_layers=2, hidden=4, eps=0.5)
    assert fusion.config.eps == 0.5
    layers, base = _inputs(B=1, N=2, L=2, D=8, seed=7)
    _trained_like(fusion)
    with torch.no_grad():
        assert torch.allclose(fusion(layers, base), _reference(fusion, layers, base), atol=1e-5)


# --- the router's initialization ---------------------------------------------------------------


def _initial_logits(d, L, gain, tokens, seeds):
    """Router logits (T, L) at initialization, over fresh modules, for LayerNorm'd random layer features of
    arbitrary scale and offset (the router reads them normalized)."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        fusion = DepthRoutedFusion(dim=d, num_layers=L, hidden=1, router_init_gain=gain)
        g = torch.Generator().manual_seed(100 + seed)
        layers = 3.0 * torch.randn(L, 1, tokens, d, generator=g) + 0.5
        with torch.no_grad():
            out.append(fusion.route(layers)[1])
    return torch.cat(out)  # (T * seeds, L)


# The tiny encoder (d = 96, L = 6) and ViT-B (d = 768, L = 12): 576 and 9216 router inputs.
SHAPES = [pytest.param(96, 6, 1000, range(6), id="tiny"), pytest.param(768, 12, 500, range(2), id="vit-b")]


@pytest.mark.parametrize("d,L,tokens,seeds", SHAPES)
@pytest.mark.parametrize("gain", [0.1, 0.5, 1.0, 2.0])
def test_fraction_of_negative_initial_weights_is_phi_of_minus_one_over_gain(d, L, tokens, seeds, gain):
    # Logit = 1 + w.x, the input x with squared norm L d and w ~ N(0, gain^2 / (L d)): 1 + N(0, gain^2), whatever
    # the shape, so P(logit < 0) = Phi(-1/gain). Tolerance: 4 binomial standard errors (the logits of one row of
    # the router share its norm, whose spread, sqrt(1/(2 L d)), adds well under one).
    logits = _initial_logits(d, L, gain, tokens, seeds)
    n = logits.numel()
    p = 0.5 * math.erfc(1 / gain / math.sqrt(2))  # Phi(-1/gain)
    frac = (logits < 0).float().mean().item()
    assert abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1 / n, (frac, p)
    # ... and the logits are 1 + N(0, gain^2): mean 1, std gain (standard errors gain / sqrt(n), gain / sqrt(2n)).
    assert abs(logits.mean().item() - 1) < 4 * gain / math.sqrt(n) + 0.02 * gain
    assert abs(logits.std().item() / gain - 1) < 0.03


@pytest.mark.parametrize("d,L,tokens,seeds", SHAPES)
def test_the_default_router_starts_near_the_uniform_mix_at_every_size(d, L, tokens, seeds):
    logits = _initial_logits(d, L, FusionConfig(dim=d, num_layers=L, hidden=1).router_init_gain, tokens, seeds)
    assert (logits > 0).all()  # Phi(-10) ~ 1e-23: not one negative weight
    assert (logits - 1).abs().max() < 0.6  # within 6 standard deviations of the uniform mix
    torch.manual_seed(0)
    fusion = DepthRoutedFusion(dim=d, num_layers=L, hidden=1)
    assert torch.equal(fusion.router.bias, torch.ones(L))
    w = fusion.router.weight
    assert abs(w.std().item() * math.sqrt(L * d) / 0.1 - 1) < 4 / math.sqrt(2 * w.numel()) + 1e-3


def test_experts_start_as_nn_linear_layers_do():
    # W1 ~ U(-1/sqrt(d), 1/sqrt(d)), W2 ~ U(-1/sqrt(h), 1/sqrt(h)) (torch's Linear default), biases 0, LN identity;
    # d != h so a swapped fan-in shows. KS critical value at 0.1%: 1.95 / sqrt(n).
    from scipy import stats

    torch.manual_seed(0)
    d, L, h = 96, 6, 40
    ex = DepthRoutedFusion(dim=d, num_layers=L, hidden=h).experts
    for w, fan_in in ((ex.w1, d), (ex.w2, h)):
        bound, x = 1 / math.sqrt(fan_in), w.detach().double().flatten().numpy()
        assert -bound <= x.min() < -0.99 * bound and 0.99 * bound < x.max() <= bound
        assert stats.kstest(x, "uniform", args=(-bound, 2 * bound)).statistic < 1.95 / math.sqrt(x.size)
    assert ex.b1.eq(0).all() and ex.b2.eq(0).all() and ex.norm_weight.eq(1).all() and ex.norm_bias.eq(0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_the_output_has_the_dtype_of_z_base(dtype):
    # Under bf16 autocast the decoder reads z_final in z_base's dtype; the correction is computed in the
    # module's float32 and cast, not promoted.
    layers, base = _inputs()
    fusion = _trained_like(DepthRoutedFusion(dim=16, num_layers=4, hidden=8))
    with torch.no_grad():
        out = fusion(layers, base.to(dtype))
        expected = base.to(dtype) + (fusion.beta * fusion.fuse(layers)).to(dtype)
    assert out.dtype == dtype
    tol = 3 * 2.0**-8 if dtype == torch.bfloat16 else 1e-6  # bf16: three roundings of half an ulp (8 bits)
    assert torch.allclose(out.double(), expected.double(), rtol=tol, atol=tol)
