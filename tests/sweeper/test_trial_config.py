"""A trial's typed config: what Tune carries, what each kind of trial trains, faults wrapped around it."""

import math
import pickle

import pytest
import torch
from torch.utils.data import TensorDataset

from sweeper.plan import build_plan
from sweeper.spec import parse_spec
from sweeper.trial import TrialData, trial_phases, with_faults
from sweeper.trial_config import Control, TrialConfig


@pytest.fixture
def raw(tiny_raw):
    """A spec with phase 3 and every control, one grid point at seed 5."""
    tiny_raw.update(controls={"runs": ["rae", "decoder_only", "last_layer"]}, grid={"expert_hidden": [8], "seeds": [5]},
                    phase1={"steps": 10, "lr": 2e-3}, phase2={"steps": 7, "lr": 3e-3}, phase3={"steps": 4, "lr": 1e-4})
    return tiny_raw


@pytest.fixture
def plan(raw):
    return build_plan(parse_spec(raw))


def _faulty(raw, **faults):
    return build_plan(parse_spec({**raw, "faults": faults}))


def _trial(plan, unit_id, hp=None, evaluate=True, index=0):
    unit = next(u for u in plan.units if u.unit_id == unit_id)
    return TrialConfig.of(unit, hp or {}, evaluate, index)


def test_the_tune_config_is_the_flat_dict_the_table_and_mlflow_read_and_reads_back(plan):
    trial = _trial(plan, "h8-k6-s5", {"lr": 1e-3}, evaluate=False, index=2)
    config = trial.to_tune()
    assert config == {"trial_id": "h8-k6-s5-t2", "unit_id": "h8-k6-s5", "point_id": "h8-k6", "kind": "grid",
                      "expert_hidden": 8, "fused_layers": 6, "layers": [0, 1, 2, 3, 4, 5], "seed": 5,
                      "params": trial.params, "hp": {"lr": 1e-3}, "evaluate": False, "n_trials": 1,
                      "lr_source": "spec"}
    assert list(config) == ["trial_id", "unit_id", "point_id", "kind", "expert_hidden", "fused_layers", "layers",
                            "seed", "params", "hp", "evaluate", "n_trials", "lr_source"]  # the MLflow params' order
    assert TrialConfig.from_tune(config) == trial
    assert TrialConfig.from_tune(pickle.loads(pickle.dumps(config))) == trial


def test_controls_are_typed_and_keep_their_names_as_point_ids(plan):
    controls = {u.unit_id: _trial(plan, u.unit_id).control for u in plan.units}
    assert controls == {"h8-k6-s5": None, "rae-s5": Control.RAE, "decoder_only-s5": Control.DECODER_ONLY,
                        "last_layer-s5": Control.LAST_LAYER}
    assert [u.point_id for u in plan.units if u.kind == "control"] == ["rae", "decoder_only", "last_layer"]
    assert all(type(u.point_id) is str for u in plan.units)  # plain strings in the table, not enum members


def test_each_kind_of_trial_trains_its_phases(plan):
    def phases(unit_id, hp=None):
        return [(phase, cfg.steps, cfg.lr, cfg.seed) for phase, cfg in trial_phases(_trial(plan, unit_id, hp), plan)]

    assert phases("h8-k6-s5") == [(2, 7, 3e-3, 5), (3, 4, 1e-4, 5)]
    assert phases("h8-k6-s5", {"lr": 1e-2}) == [(2, 7, 1e-2, 5), (3, 4, 1e-4, 5)]  # the searched lr: phase 2's
    assert phases("last_layer-s5") == [(2, 7, 3e-3, 5), (3, 4, 1e-4, 5)]
    # phase 1 continued for phase 2 + phase 3's steps, at the rate phase 1's cosine had reached at its last step
    end_lr = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert phases("decoder_only-s5") == [(1, 11, pytest.approx(end_lr), 5)]
    assert phases("rae-s5") == []


def _data(plan, shared, layers):
    return TrialData(TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8)), "select", "evaluate")


def _loaded(trial, plan, shared, report, checkpoint_dir, save_checkpoint, data):
    """A stand-in for train_trial that returns the data it would train on."""
    return data(plan, shared, trial.layers)


@pytest.mark.parametrize("fault, value", [("nan_loss", math.nan), ("inf_loss", math.inf)])
def test_a_nan_or_inf_fault_fills_only_its_units_training_images(raw, fault, value):
    faulty = _faulty(raw, **{fault: ["h8-k6-s5"]})
    train_fn = with_faults(_loaded, faulty.spec.faults)
    train, select, evaluate = train_fn(_trial(faulty, "h8-k6-s5"), faulty, None, None, None, None, data=_data)
    images = train.tensors[0]
    assert (select, evaluate) == ("select", "evaluate") and images.shape == (8, 3, 32, 32)
    assert (images.isnan() if math.isnan(value) else images == value).all()
    train, _, _ = train_fn(_trial(faulty, "rae-s5"), faulty, None, None, None, None, data=_data)
    assert train.tensors[0].isfinite().all() and (train.tensors[0] < 1).all()


def test_raise_error_and_oom_faults_fail_their_unit_for_real_and_no_other(raw):
    faulty = _faulty(raw, raise_error=["h8-k6-s5"], oom=["last_layer-s5"])
    train_fn = with_faults(_loaded, faulty.spec.faults)
    with pytest.raises(RuntimeError, match=r"injected fault in h8-k6-s5 \(spec faults.raise_error\)"):
        train_fn(_trial(faulty, "h8-k6-s5"), faulty, None, None, None, None, data=_data)
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # the allocator's own failure
        train_fn(_trial(faulty, "last_layer-s5"), faulty, None, None, None, None, data=_data)
    train, _, _ = train_fn(_trial(faulty, "rae-s5"), faulty, None, None, None, None, data=_data)
    assert len(train) == 8
