"""The per-unit searcher's state, as Tune saves it into the experiment and hands it back on a resume:
JSON written and read, never unpickled (a real Optuna study in SQLite; Tune's own resume after a killed
driver runs in test_faults.py)."""

import json
import os
import pickle

import optuna
import pytest

from helpers import smoke_plan
from sweeper.search import UnitSearcher
from sweeper.trial_config import TrialConfig

SEARCH = "search={params: {lr: {type: loguniform, low: 1.0e-4, high: 3.0e-2}}, n_trials: 3}"


def _searcher(tmp_path, plan):
    return UnitSearcher(plan.units, plan.spec.search, storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                        study_prefix="smoke/", seed=0)


def test_saved_state_is_json_and_a_restored_searcher_goes_on_where_the_saved_one_stopped(tmp_path):
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16]", SEARCH, "controls.runs=[rae]")
    first = _searcher(tmp_path, plan)
    configs = {f"t{i}": TrialConfig.from_tune(first.suggest(f"t{i}")) for i in range(4)}
    first.on_trial_complete("t0", {"val_l1": 0.5, "final": True})
    path = tmp_path / "searcher-state-x.pkl"  # Tune's file name; the content is ours
    first.save(str(path))
    state = json.loads(path.read_text())  # JSON, nothing else
    assert state["asked"] == dict(first.asked) and set(state["live"]) == {"t1", "t2", "t3"}

    again = _searcher(tmp_path, plan)  # as Tune's restore has it: this run's searcher, then the state
    again.restore(str(path))
    assert again.asked == first.asked and again.live == first.live
    # A trial that was live when the state was saved completes into its own unit's study ...
    unit, number = again.live["t1"]
    again.on_trial_complete("t1", {"val_l1": 0.25, "final": True})
    assert again.study(unit).trials[number].value == 0.25
    # ... and the next suggestions are the trials not yet asked, none twice.
    rest = []
    while (config := again.suggest(f"n{len(rest)}")) != UnitSearcher.FINISHED:
        rest.append(TrialConfig.from_tune(config))
    asked = sorted(c.trial_id for c in [*configs.values(), *rest])
    assert asked == sorted(f"{u.unit_id}-t{i}" for u in plan.units for i in range(u.n_trials))


def test_restore_never_unpickles(tmp_path):
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2]", SEARCH)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "searcher-state-x.pkl"
    path.write_bytes(pickle.dumps({"asked": Payload()}))
    searcher = _searcher(tmp_path, plan)
    with pytest.raises(ValueError):
        searcher.restore(str(path))
    assert not marker.exists() and dict(searcher.asked) == {}


def test_a_met_stop_rule_finishes_the_search_and_adaptive_units_survive_a_resume(tmp_path):
    from types import SimpleNamespace

    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16]")
    first = _searcher(tmp_path, plan)
    chosen = plan.grid_unit(5, plan.depth, 0)
    calls = []
    first.adaptive, first.chooser = 2, lambda pending, units: calls.append(len(units)) or chosen
    ids = [TrialConfig.from_tune(first.suggest(f"t{i}")).trial_id for i in range(3)]
    assert ids[2] == "h5-k6-s0-t0" and calls == [2]  # after the plan's units, the chooser's
    path = tmp_path / "searcher-state-x.pkl"
    first.save(str(path))
    again = _searcher(tmp_path, plan)
    again.restore(str(path))
    assert [u.unit_id for u in again.adaptive_units] == ["h5-k6-s0"] and again.units[-1] == chosen
    assert again.asked["h5-k6-s0"] == 1
    # once the live law's stop rule is met, nothing more starts: neither the plan's trials nor adaptive ones
    again.adaptive, again.chooser = 2, lambda pending, units: plan.grid_unit(7, plan.depth, 0)
    again.law = SimpleNamespace(stopped={"reason": "met"})
    assert again.suggest("t9") == UnitSearcher.FINISHED
    again.law = SimpleNamespace(stopped=None)
    assert TrialConfig.from_tune(again.suggest("t9")).trial_id == "h7-k6-s0-t0"
    assert pickle.loads(pickle.dumps(again)).law is None  # the live law is this run's, never pickled


TRANSFER = ("search={params: {lr: {type: loguniform, low: 1.0e-4, high: 3.0e-1}}, n_trials: 4, transfer: law, "
            "searched: [2, 16, 128]}")


def _drain(searcher, prefix: str) -> list:
    configs = []
    while isinstance(config := searcher.suggest(f"{prefix}{len(configs)}"), dict):
        configs.append(TrialConfig.from_tune(config))
    return configs, config


def test_a_transferred_width_waits_for_every_searched_trial_then_trains_once_at_the_laws_lr(tmp_path):
    """The transferred lr is the hyperparameter law of exactly the searched widths' completed trials (the law
    itself is tested in tests/analysis/test_hparams.py): a failed trial, and the other layer count, stay out."""
    import numpy as np
    import pandas as pd

    from analysis.hparams import fit_hparam_law

    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16,128,1024]", "grid.fused_layers=[3,6]", TRANSFER)
    by_h = {(u.expert_hidden, u.fused_layers): u for u in plan.units}
    assert [by_h[h, 6].lr_source for h in (2, 16, 128, 1024)] == ["searched"] * 3 + ["law"]
    assert [by_h[h, 6].n_trials for h in (2, 16, 128, 1024)] == [4, 4, 4, 1]
    searcher = _searcher(tmp_path, plan)
    configs, last = _drain(searcher, "t")
    # every searched trial starts; the law's widths wait (None: Tune asks again), the search is not finished
    assert last is None and len(configs) == 24 and {c.lr_source for c in configs} == {"searched"}
    rng = np.random.default_rng(0)
    rows = {3: [], 6: []}
    for i, c in enumerate(configs):
        if c.trial_id == by_h[16, 6].unit_id + "-t2":
            searcher.on_trial_complete(f"t{i}", None, error=True)
            continue
        u = np.log10(c.hp["lr"])
        # 6 layers: a parabola in log10 lr around -0.5 - 0.25 log10 params (inside the searched range at every
        # width, h = 1024 too); 3 layers: the larger lr the better
        value = 0.1 + (u - (-0.5 - 0.25 * np.log10(c.params))) ** 2 + rng.normal(0, 0.01) if c.fused_layers == 6 \
            else 0.1 - u
        if i == len(configs) - 1:  # the last one still runs: its layer count's law width waits, the other's starts
            early = TrialConfig.from_tune(searcher.suggest("w"))
            assert early.lr_source == "law" and early.fused_layers != c.fused_layers
            assert searcher.suggest("w2") is None
        searcher.on_trial_complete(f"t{i}", {"val_l1": value, "final": True})
        rows[c.fused_layers].append({"point_id": c.point_id, "kind": "grid", "status": "completed", "params": c.params,
                                     "hp.lr": c.hp["lr"], "val_l1": value, "lr_source": "searched", "seed": c.seed})
    law_cfgs, last = _drain(searcher, "law")
    assert last == UnitSearcher.FINISHED and len(law_cfgs) == 1
    got = {c.fused_layers: c for c in [early, *law_cfgs]}
    for k in (3, 6):  # each layer count's own law, of its own searched widths
        assert got[k].unit_id == by_h[1024, k].unit_id and got[k].lr_source == "law" and got[k].evaluate
        expected = fit_hparam_law(pd.DataFrame(rows[k])).predict([by_h[1024, k].params])[0]
        assert got[k].hp["lr"] == pytest.approx(expected, rel=1e-9)
    assert got[3].hp["lr"] != pytest.approx(got[6].hp["lr"], rel=1e-3)


def test_without_a_fittable_law_a_transferred_width_trains_at_phase2_lr_and_says_so(tmp_path, caplog):
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16,128]", TRANSFER.replace("[2, 16, 128]", "[2, 16]"))
    searcher = _searcher(tmp_path, plan)
    configs, last = _drain(searcher, "t")
    assert last is None and len(configs) == 8
    for i in range(8):  # every searched trial fails: no optimum anywhere
        searcher.on_trial_complete(f"t{i}", None, error=True)
    config = TrialConfig.from_tune(searcher.suggest("law"))
    assert config.lr_source == "spec" and config.hp == {} and "no hyperparameter law" in caplog.text


def test_a_law_lr_beyond_the_searched_range_is_clipped_to_the_nearer_bound(tmp_path, caplog):
    from types import SimpleNamespace

    from sweeper.search import law_lr

    search = smoke_plan(tmp_path, TRANSFER).spec.search  # lr in [1e-4, 3e-1]
    for predicted, trained in ((3e-5, 1e-4), (2e-3, 2e-3), (0.9, 0.3)):
        law = SimpleNamespace(predict=lambda c, v=predicted: [v])
        assert law_lr(law, 1000, search, "h = 7") == trained
    assert caplog.text.count("outside the searched range") == 2 and "h = 7" in caplog.text


def test_a_grid_search_tries_the_same_evenly_spaced_values_at_every_width_once_each(tmp_path):
    import numpy as np

    grid = ("search={params: {lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}}, n_trials: 4, sampler: grid, "
            "transfer: law, searched: [2, 16]}")
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16,128]", grid)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = UnitSearcher(plan.units, plan.spec.search, storage=storage, seed=0)
    started = [TrialConfig.from_tune(first.suggest(f"t{i}")) for i in range(2)]  # 2 of one width's 4
    # a resumed searcher (the same storage, Tune's saved counts) asks for the values not yet tried, and never
    # enqueues a study's values twice
    again = UnitSearcher(plan.units, plan.spec.search, storage=storage, seed=0)
    again.asked.update({started[0].unit_id: 2})
    configs, last = _drain(again, "r")
    assert last is None and len(configs) == 6
    by_unit = {}
    for c in [*started, *configs]:
        by_unit.setdefault(c.unit_id, []).append(c.hp["lr"])
    for unit_id, lrs in by_unit.items():  # 10^-4, 10^-3, 10^-2, 10^-1, the bounds exactly
        assert sorted(lrs) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1], rel=1e-12) and max(lrs) == 0.1
        assert not again.study(unit_id).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert by_unit["h2-k6-s0"] != by_unit["h16-k6-s0"]  # each width its own order
    spec = plan.spec.search.model_copy(update={"params": {"lr": plan.spec.search.params["lr"].model_copy(
        update={"type": "uniform"})}})
    from sweeper.search import grid_values
    assert sorted(v["lr"] for v in grid_values(spec, 3)) == pytest.approx(np.linspace(1e-4, 0.1, 4).tolist())


def test_each_width_samples_its_own_values_and_the_same_ones_again_on_a_rerun(tmp_path):
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,16,128]", SEARCH)
    lrs = {}
    for run in ("a", "b"):
        configs, _ = _drain(UnitSearcher(plan.units, plan.spec.search, storage=None, seed=0), "t")
        lrs[run] = {c.trial_id: c.hp["lr"] for c in configs}
    assert lrs["a"] == lrs["b"]  # seeded: the same sweep draws the same values
    by_unit = {}
    for tid, lr in lrs["a"].items():
        by_unit.setdefault(tid.rsplit("-t", 1)[0], []).append(lr)
    firsts = [v[0] for v in by_unit.values()]
    assert len(by_unit) == 3 and len(set(firsts)) == 3  # not one sequence of values for every width
