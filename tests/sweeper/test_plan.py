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
    # each search trial is one training, the unit one evaluation: three trainings cost three times one
    g3 = next(u for u in grid if u.expert_hidden == 8)
    g1 = next(u for u in without.units if u.expert_hidden == 8)
    train, evaluation = plan.flops(8, plan.depth)
    assert g1.gflop * 1e9 == pytest.approx(train + evaluation, rel=1e-12)
    assert g3.gflop * 1e9 == pytest.approx(3 * train + evaluation, rel=1e-12)


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
    assert len(lines) == 4 + len(plan.units) + 1
    assert lines[1] == ("GFLOP: model FLOPs in closed form (model.cost; the encoder run on every batch), "
                        "not the FID Inception")
    assert lines[2].startswith("est. s: 20 s per TFLOP and 0.167 s per evaluated image, constants for a cpu")


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


# --- cost: FLOPs from the closed forms, seconds from the sweep's own table ------------------------


@pytest.mark.parametrize("control, cache_gb", [(None, None), (None, 100), ("decoder_only", None), ("rae", None)])
def test_a_units_flops_are_what_the_counter_counts_on_its_model(tiny_raw, control, cache_gb):
    """The plan's closed-form FLOPs against FlopCounterMode on the model the unit trains: each phase's real step
    (phase 2 and 3 for a grid unit, phase 1 continued for decoder_only, none for rae) and its evaluation."""
    from dataclasses import replace

    from model import DRoRAE, DRoRAEConfig, FeatureSet
    from model.cost import count_reconstruction, count_step
    from sweeper.trial import phases_of
    from sweeper.trial_config import Control

    control = Control(control) if control else None
    if cache_gb:
        tiny_raw["feature_cache"] = {"max_gb": cache_gb}
    plan = _plan(tiny_raw, phase3={"steps": 7, "batch_size": 5}, controls={"runs": ["rae", "decoder_only"]},
                 grid={"expert_hidden": [8], "fused_layers": [3]})
    assert plan.features_cached == bool(cache_gb)  # 60000 training images: over the default cache size
    h = None if control else 8
    layers = () if control else select_layers(plan.depth, 3)
    torch.manual_seed(0)
    model = DRoRAE.from_config(DRoRAEConfig(encoder=replace(plan.encoder, weights="none", layers=layers or None),
                                            decoder=plan.decoder, image_size=plan.spec.data.resolution,
                                            expert_hidden=h))
    images = torch.rand(4, 3, plan.spec.data.resolution, plan.spec.data.resolution)
    data = FeatureSet.encode(model, images, batch_size=4) if plan.features_cached else images
    phases = phases_of(plan, control)
    assert [p for p, _ in phases] == {None: [2, 3], Control.DECODER_ONLY: [1], Control.RAE: []}[control]
    counted = sum(count_step(model, p, cfg, data, images=2).total * cfg.batch_size * cfg.steps for p, cfg in phases)
    evaluation = count_reconstruction(model, data, images=2).total * plan.spec.eval.n_images
    assert plan.flops(h, len(layers), control) == (counted, evaluation)
    unit = next(u for u in plan.units if u.point_id == (control.value if control else "h8-k3"))
    assert unit.gflop == pytest.approx((counted + evaluation) / 1e9, rel=1e-12)


def _table(plan, rows, spec=None):
    """A results table of ``plan``'s sweep with ``rows`` (and the spec digest ``spec`` in its metadata)."""
    from sweeper.results import ResultsTable

    meta = {"splits": {}} | ({"spec": spec} if spec else {})
    table = ResultsTable(plan.spec.sweep_dir, meta)
    for i, row in enumerate(rows):
        table.upsert({"trial_id": f"t{i}", "unit_id": f"u{i}", "point_id": f"p{i}", "kind": "grid", "params": 10 + i,
                      "fused_layers": 6, "seed": 0, **row})
    return table


def test_dry_run_seconds_come_from_the_sweeps_measured_seconds_per_flop(tiny_raw, tmp_path):
    from sweeper.plan import measured_rates, spec_digest

    plan = _plan(tiny_raw, results_dir=str(tmp_path), search=None)
    n_images = plan.spec.eval.n_images
    rows = [dict(status="completed", train_seconds=2.0, train_flops=4e11, eval_seconds=8.0, eval_flops=1e9),
            dict(status="completed", train_seconds=6.0, train_flops=6e11, eval_seconds=4.0, eval_flops=1e9),
            dict(status="completed", train_seconds=1.0, train_flops=float("nan")),   # no count: not a rate
            dict(status="failed", train_seconds=100.0, train_flops=1e9, eval_seconds=99.0),
            dict(status="running")]
    _table(plan, rows, spec=spec_digest(plan.spec))
    rates = measured_rates(plan)
    assert rates.seconds_per_flop == pytest.approx(8.0 / 1e12)            # (2 + 6) s over (4 + 6) 1e11 FLOPs
    assert rates.eval_seconds_per_image == pytest.approx(12.0 / (2 * n_images))
    assert rates.source.startswith(f"measured on 2 completed trials of {plan.spec.sweep_dir / 'trials.parquet'}")
    measured = build_plan(plan.spec, rates)
    for u in measured.units:
        train, _ = measured.flops(u.expert_hidden, u.fused_layers)
        assert u.seconds == pytest.approx(train * 8.0 / 1e12 + n_images * 12.0 / (2 * n_images))
    text = format_plan(measured)
    assert "est. s: 8 s per TFLOP and 0.375 s per evaluated image, measured on 2 completed trials" in text


def test_dry_run_says_when_the_table_is_of_another_spec_or_records_none(tiny_raw, tmp_path):
    from sweeper.plan import FLOPS_PER_S, measured_rates, spec_digest

    plan = _plan(tiny_raw, results_dir=str(tmp_path))
    assert "no results table at" in measured_rates(plan).source
    row = dict(status="completed", train_seconds=2.0, train_flops=4e11, eval_seconds=8.0)
    other = _plan(tiny_raw, results_dir=str(tmp_path), phase2={"steps": 11})
    assert spec_digest(other.spec) != spec_digest(plan.spec)
    table = _table(plan, [row], spec=spec_digest(other.spec))
    rates = measured_rates(plan)
    assert rates.seconds_per_flop == 1 / FLOPS_PER_S["cpu"]
    mine, theirs = spec_digest(plan.spec), spec_digest(other.spec)
    assert f"is of another spec: its digest {theirs}, this one's {mine}" in rates.source
    table.path.unlink()
    _table(plan, [row])  # written before tables recorded their spec
    rates = measured_rates(plan)
    assert rates.seconds_per_flop == pytest.approx(2.0 / 4e11) and "records no spec: taken as this one" in rates.source
    table.path.write_text("not parquet")
    assert "cannot be read" in measured_rates(plan).source
