"""Trials choose on the selection split only, are all reported on the same evaluation images, and the
decoder_only control continues phase 1 instead of restarting it."""

import math
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from model import DRoRAE, DRoRAEConfig, FeatureSet
from model.data import fashion_mnist, load_split
from model.features import save_feature_cache
from model.train import train_decoder
from sweeper.plan import build_plan
from sweeper.shared import Shared
from sweeper.spec import load_spec, parse_spec
from sweeper.splits import splits_of
from sweeper.trial import load_data, train_trial
from sweeper.trial_config import TrialConfig

N_TRAIN, N_VAL, N_EVAL = 64, 32, 16


@pytest.fixture
def plan(tiny_raw):
    tiny_raw.update(encoder={"preset": "tiny", "weights": "none"}, grid={"expert_hidden": [8], "seeds": [0]},
                    data={"num_train": N_TRAIN, "num_val": N_VAL}, eval={"n_images": N_EVAL},
                    controls={"runs": ["rae", "decoder_only", "last_layer"]},
                    phase1={"steps": 2, "batch_size": 8}, phase2={"steps": 4, "batch_size": 8, "eval_every": 2},
                    phase3={"steps": 2, "batch_size": 8, "eval_every": 1})
    return build_plan(parse_spec(tiny_raw))


@pytest.fixture
def shared(plan, tmp_path):
    """The shared work of ``plan`` done by hand: a 2-step phase 1 on real images, its decoder and final state."""
    torch.manual_seed(0)
    rae = DRoRAE.from_config(DRoRAEConfig(encoder=plan.encoder, decoder=plan.decoder, image_size=32))
    x, _ = fashion_mnist("train", 32, limit=N_TRAIN)
    train_decoder(rae, plan.phase1, x, x[:8], checkpoint=tmp_path / "p1.state.pt")
    torch.save(rae.decoder.state_dict(), tmp_path / "p1.pt")
    return Shared(encoder_checkpoint=None, decoder_path=str(tmp_path / "p1.pt"),
                  decoder_state_path=str(tmp_path / "p1.state.pt"), phase1={}, features_path=None,
                  fid_key=plan.data.key, splits=splits_of(plan.spec, N_TRAIN, N_VAL), seconds={})


def _poisoned(which: str):
    """``load_data`` with the images of one of the three sets replaced by NaN."""

    def data(plan, shared, layers):
        loaded = load_data(plan, shared, layers)
        images, labels = loaded._asdict()[which].tensors
        return loaded._replace(**{which: TensorDataset(torch.full_like(images, math.nan), labels)})

    return data


def _run(plan, shared, unit_id, data, tmp_path):
    unit = next(u for u in plan.units if u.unit_id == unit_id)
    reports = []
    out = tmp_path / unit_id
    out.mkdir()
    metrics = train_trial(TrialConfig.of(unit, {}, False, 0), plan, shared, reports.append, out, lambda step: None,
                          data=data)
    return metrics, [r["val_l1"] for r in reports if "val_l1" in r]


@pytest.mark.slow  # trains every kind of trial twice
@pytest.mark.parametrize("unit_id", ["h8-k6-s0", "rae-s0", "decoder_only-s0", "last_layer-s0"])
def test_the_search_never_sees_the_evaluation_images(plan, shared, tmp_path, unit_id):
    """With the evaluation images NaN, every validation L1 a trial reports (what Optuna, the pruner and the
    best-trial choice read) stays finite; with the selection images NaN, it does not: it reads those."""
    metrics, curve = _run(plan, shared, unit_id, _poisoned("evaluate"), tmp_path)
    assert math.isfinite(metrics["val_l1"]) and all(math.isfinite(v) for v in curve)
    (tmp_path / "sel").mkdir()
    metrics, _ = _run(plan, shared, unit_id, _poisoned("select"), tmp_path / "sel")
    assert math.isnan(metrics["val_l1"])


@pytest.fixture
def feature_cache(plan, tmp_path):
    torch.manual_seed(0)
    rae = DRoRAE.from_config(DRoRAEConfig(encoder=plan.encoder, decoder=plan.decoder, image_size=32))
    train, val = load_split(plan.data, "train"), load_split(plan.data, "val")
    path = tmp_path / "features.pt"
    save_feature_cache(path, FeatureSet.encode(rae, train), FeatureSet.encode(rae, val))
    return path


def test_every_trial_is_evaluated_on_the_same_images(plan, shared, feature_cache):
    """Grid points, controls and layer subsets, from the feature cache or encoded on the fly: the evaluation
    images are the first eval.n_images of the validation split, image for image."""
    expected, _ = fashion_mnist("val", 32, limit=N_EVAL)
    cached = replace(shared, features_path=str(feature_cache))
    for layers in [(0, 1, 2, 3, 4, 5), (5,), (), (0, 2)]:
        for source in (shared, cached):
            evaluate = load_data(plan, source, layers, with_train=False).evaluate
            images = evaluate.image_tensor() if isinstance(evaluate, FeatureSet) else evaluate.tensors[0]
            assert torch.equal(images, expected)


def test_a_held_out_selection_split_is_dropped_from_the_trials_training_images(tiny_raw, shared, tmp_path):
    tiny_raw.update(encoder={"preset": "tiny", "weights": "none"}, data={"num_train": N_TRAIN, "num_val": N_VAL},
                    eval={"n_images": N_VAL, "select_from": "train", "select_images": 8})
    held = build_plan(parse_spec(tiny_raw))
    data = load_data(held, replace(shared, splits=splits_of(held.spec, N_TRAIN, N_VAL)), ())
    train = {tuple(x.flatten().tolist()) for x in data.train.tensors[0]}
    select = {tuple(x.flatten().tolist()) for x in data.select.tensors[0]}
    assert len(data.train) == N_TRAIN - 8 and len(data.select) == 8 and len(data.evaluate) == N_VAL
    assert not train & select  # no selection image among the training images


@pytest.mark.slow  # the smoke spec's shared work (encoder, phase 1; cached by the sweeps' tests) and one control
def test_decoder_only_never_rises_above_where_phase_1_left_it(tmp_path):
    """On the smoke spec, decoder_only's selection-split L1 never rises more than 5% above phase 1's
    final value (a fresh AdamW at phase 1's peak rate jumped from 0.0135 to 0.091 in 10 steps)."""
    from pathlib import Path

    import sweeper.shared

    spec = load_spec(Path(__file__).parents[2] / "sweeps" / "smoke.yaml",
                     [f"results_dir={tmp_path / 'results'}", "controls.runs=[decoder_only]"])
    smoke = build_plan(spec)
    shared = sweeper.shared.prepare(smoke)
    start = shared.phase1["val_l1"]
    metrics, curve = _run(smoke, shared, "decoder_only-s0", load_data, tmp_path)
    assert metrics["train_steps"] == smoke.phase2.steps and metrics["train_flops"] > 0
    assert len(curve) >= 3 and max(curve) <= 1.05 * start, (start, curve)
