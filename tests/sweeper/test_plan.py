"""The resolved plan: layer selection, exact parameter counts, controls, search trials, totals."""

from pathlib import Path

import pytest
import torch

from model import DepthRoutedFusion, ViTDecoder, fusion_param_count
from sweeper.plan import build_plan, format_plan, select_layers
from sweeper.spec import load_spec, parse_spec

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


@pytest.mark.parametrize("depth", range(1, 25))
def test_select_layers(depth):
    for k in range(1, depth + 1):
        layers = select_layers(depth, k)
        assert len(layers) == k and len(set(layers)) == k, (depth, k, layers)
        assert list(layers) == sorted(layers)
        assert 0 <= layers[0] and layers[-1] == depth - 1  # always ends at the last block
        # spread evenly: every gap (from "block -1") is depth/k rounded down or up
        gaps = {b - a for a, b in zip((-1, *layers), layers)}
        assert gaps <= {depth // k, -(-depth // k)}, (depth, k, layers)
    assert select_layers(depth, 1) == (depth - 1,)
    assert select_layers(depth, depth) == tuple(range(depth))


def _plan(tiny_raw, **changes):
    tiny_raw.update(changes)
    return build_plan(parse_spec(tiny_raw))


def test_grid_units_params_and_layers(tiny_raw):
    plan = _plan(tiny_raw, grid={"expert_hidden": [2, 8, 32], "fused_layers": [1, 3, 6], "seeds": [0, 1]})
    assert (plan.dim, plan.depth, plan.tokens) == (96, 6, 64)
    grid = [u for u in plan.units if u.kind == "grid"]
    assert len(grid) == 3 * 3 * 2
    assert len({u.unit_id for u in plan.units}) == len(plan.units)
    for u in grid:
        assert u.layers == select_layers(plan.depth, u.fused_layers)
        assert u.params == fusion_param_count(plan.dim, len(u.layers), u.expert_hidden)
        assert u.point_id == f"h{u.expert_hidden}-k{u.fused_layers}" and u.unit_id == f"{u.point_id}-s{u.seed}"
        assert u.n_trials == 1 and u.gflop > 0 and u.seconds > 0
    # cost grows with capacity at a fixed layer count
    k6 = sorted((u for u in grid if u.fused_layers == 6 and u.seed == 0), key=lambda u: u.expert_hidden)
    assert [u.gflop for u in k6] == sorted(u.gflop for u in k6)


@pytest.mark.parametrize("num_layers, hidden", [(1, 2), (6, 32), (3, 8)])
def test_params_equal_a_real_fusion_module(tiny_raw, num_layers, hidden):
    plan = _plan(tiny_raw, grid={"expert_hidden": [hidden], "fused_layers": [num_layers]})
    (unit,) = plan.units
    fusion = DepthRoutedFusion(plan.dim, num_layers, hidden)
    assert unit.params == sum(p.numel() for p in fusion.parameters() if p.requires_grad)


def test_controls(tiny_raw):
    plan = _plan(tiny_raw, controls={"runs": ["rae", "decoder_only", "last_layer"]}, grid={
        "expert_hidden": [2, 8, 32], "seeds": [3, 4]})
    controls = {u.point_id: u for u in plan.units if u.kind == "control"}
    assert set(controls) == {"rae", "decoder_only", "last_layer"}
    assert all(u.seed == 3 and u.n_trials == 1 for u in controls.values())  # one run, the first seed
    rae, dec, last = controls["rae"], controls["decoder_only"], controls["last_layer"]
    assert (rae.params, rae.expert_hidden, rae.layers) == (0, None, ())
    assert dec.expert_hidden is None
    grid = plan.tokens ** 0.5
    decoder = ViTDecoder(plan.decoder, plan.dim, int(grid), plan.spec.data.resolution // int(grid))
    assert dec.params == sum(p.numel() for p in decoder.parameters())
    assert last.layers == (plan.depth - 1,) and last.expert_hidden == 32  # the grid's widest by default
    assert last.params == fusion_param_count(plan.dim, 1, 32)
    plan = _plan(tiny_raw, controls={"runs": ["last_layer"], "last_layer_hidden": 8})
    (last,) = [u for u in plan.units if u.kind == "control"]
    assert last.expert_hidden == 8 and last.params == fusion_param_count(plan.dim, 1, 8)


def test_n_trials_follows_search(tiny_raw):
    search = {"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "n_trials": 3}
    plan = _plan(tiny_raw, search=search, controls={"runs": ["rae", "last_layer"]})
    grid = [u for u in plan.units if u.kind == "grid"]
    assert all(u.n_trials == 3 for u in grid)
    assert all(u.n_trials == 1 for u in plan.units if u.kind == "control")
    assert plan.n_trials == 3 * len(grid) + 2
    without = _plan(tiny_raw, search=None)
    assert without.n_trials == len(without.units)
    # each search trial is one training: three of them cost about three times one
    g3 = next(u for u in grid if u.expert_hidden == 8)
    g1 = next(u for u in without.units if u.expert_hidden == 8)
    assert g3.gflop > 2.5 * (g1.gflop - plan.spec.eval.n_images * 5.7)


def test_format_plan_lists_every_unit_and_totals(tiny_raw):
    plan = _plan(tiny_raw, controls={"runs": ["rae", "decoder_only", "last_layer"]})
    text = format_plan(plan)
    lines = text.splitlines()
    assert lines[0].startswith("sweep t: encoder vit_tiny_patch16_224 (d=96, 6 blocks, 64 tokens)")
    for u in plan.units:
        assert sum(line.startswith(u.unit_id + " ") for line in lines) == 1
    total = lines[-1]
    assert total.startswith(f"total: {len(plan.units)} units, {plan.n_trials} trials")
    assert f"{sum(u.gflop for u in plan.units):.4g} GFLOP" in total
    assert "fusion params 7.6k..42.3k (0.75 decades)" in total
    assert len(lines) == 2 + len(plan.units) + 1


def test_paper_capacity_parameter_counts():
    plan = build_plan(load_spec(SWEEPS / "paper_capacity.yaml"))
    assert (plan.dim, plan.depth, plan.tokens) == (768, 12, 256)
    params = {u.expert_hidden: u.params for u in plan.units if u.kind == "grid"}
    assert sorted(params) == [128, 256, 512, 1024, 2048, 3072, 4096, 6144]
    assert params[3072] == pytest.approx(56.8e6, rel=0.03)
    assert params[6144] == pytest.approx(113.5e6, rel=0.03)
    assert params[3072] == 56_798_988  # the README's closed form, exactly
    assert all(u.fused_layers == 12 and u.layers == tuple(range(12)) for u in plan.units if u.kind == "grid")
    assert {u.point_id for u in plan.units if u.kind == "control"} == {"rae", "decoder_only", "last_layer"}
    assert plan.device == "gpu" and plan.spec.resources.gpu == 1
    text = format_plan(plan)
    assert "56.8M" in text and "113.5M" in text


def test_paper_layers_grid():
    plan = build_plan(load_spec(SWEEPS / "paper_layers.yaml"))
    grid = [u for u in plan.units if u.kind == "grid"]
    assert [u.fused_layers for u in grid] == list(range(1, 13))
    assert all(u.expert_hidden == 3072 for u in grid)
    assert grid[0].layers == (11,) and grid[-1].params == 56_798_988


def test_meta_device_plan_leaves_default_device_alone(tiny_raw):
    _plan(tiny_raw)
    assert torch.empty(1).device.type == "cpu"


def test_a_timm_name_without_a_preset_does_not_inherit_the_tiny_presets_sizes(tiny_raw):
    tiny_raw["encoder"] = {"name": "vit_small_patch16_224", "weights": "none"}
    cfg = parse_spec(tiny_raw).encoder.config
    assert cfg.name == "vit_small_patch16_224" and cfg.model_kwargs == {} and cfg.input_size == 224
    tiny_raw["encoder"]["preset"] = "tiny"  # an explicit preset is the base, even with a name
    cfg = parse_spec(tiny_raw).encoder.config
    assert cfg.name == "vit_small_patch16_224" and cfg.model_kwargs["embed_dim"] == 96 and cfg.input_size == 32


def test_dry_run_shows_which_widths_search_their_lr_and_which_take_the_law_after_them(tmp_path):
    from helpers import smoke_plan

    plan = smoke_plan(tmp_path, "search={params: {lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}, n_trials: 3, "
                                "transfer: law, searched: [2, 128]}", "controls.runs=[rae]")
    units = {u.point_id: u for u in plan.units}
    assert {k: (u.lr_source, u.n_trials) for k, u in units.items()} == {
        "h2-k6": ("searched", 3), "h16-k6": ("law", 1), "h128-k6": ("searched", 3), "rae": ("spec", 1)}
    assert plan.n_trials == 3 + 1 + 3 + 1 and plan.n_new_width == 1
    text = format_plan(plan)
    assert "learning rate: searched at h = 2, 128 (3 trials each) first; h = 16 then train once" in text
    row = next(line for line in text.splitlines() if line.startswith("h16-k6-s0"))
    assert row.rstrip().endswith("law")
