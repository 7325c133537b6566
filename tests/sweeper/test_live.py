"""The live law (sweeper.live): refitted from the results table as points arrive, shown three ways, and the stop rule.

No Ray here: a results table is written row by row as a sweep's driver writes it, and the live law is
checked against analysis.fit on the same rows (its numbers are the analysis package's) and against
the rule's arithmetic. The end-to-end run (real Ray, Optuna, MLflow) is in test_live_sweep.py.
"""

import json
import math

import numpy as np
import pytest

from analysis import fit, load
from sweeper.live import LAW_FILE, LiveLaw, equation, skipped_rows
from sweeper.plan import build_plan
from sweeper.results import ResultsTable
from sweeper.spec import load_spec

SMOKE = "sweeps/smoke.yaml"
CAPS = np.array([7.6e3, 3.1e4, 1.2e5, 4.8e5, 1.9e6, 7.7e6])
RFID = 40.0 - 2.0 * np.log10(CAPS) + np.array([0.3, -0.2, 0.1, -0.35, 0.25, -0.1])


def _row(i: int, cap: float, rfid: float, status: str = "completed") -> dict:
    return {"trial_id": f"h{i}-k6-s0-t0", "unit_id": f"h{i}-k6-s0", "point_id": f"h{i}-k6", "kind": "grid",
            "status": status, "expert_hidden": i, "fused_layers": 6, "seed": 0, "params": cap, "rfid": rfid,
            "best": status == "completed"}


def _spec(*overrides):
    return load_spec(SMOKE, list(overrides))


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, metrics, step):
        self.calls.append((step, metrics))


def test_fewer_points_than_the_law_needs_is_a_quiet_wait(tmp_path, caplog):
    law = LiveLaw(tmp_path, _spec("law.target=1e8"), 6, Recorder())
    law()  # no table yet
    state = json.loads((tmp_path / LAW_FILE).read_text())
    assert state["status"] == "waiting" and state["n_points"] == 0
    table = ResultsTable(tmp_path)
    for i in range(2):
        table.upsert(_row(i, CAPS[i], RFID[i]))
    with caplog.at_level("INFO", logger="sweeper.live"):
        assert law.update() is True
    assert "law after 2 of 6 points: waiting for 3 points at distinct capacities" in caplog.text
    assert law.result is None and law.log_metrics.calls == []
    assert json.loads((tmp_path / LAW_FILE).read_text())["status"] == "waiting"
    assert law.update() is False  # nothing new: no refit


def test_the_live_law_is_the_analysis_packages_fit_shown_three_ways(tmp_path, caplog):
    rec = Recorder()
    law = LiveLaw(tmp_path, _spec("law.target=1e8"), 6, rec)
    table = ResultsTable(tmp_path)
    for i in range(6):
        table.upsert(_row(i, CAPS[i], RFID[i]))
        with caplog.at_level("INFO", logger="sweeper.live"):
            law.update()
    table.upsert(_row(9, 5e4, math.nan, status="running"))  # a running trial: no new point, no refit
    assert law.update() is False
    with pytest.warns(UserWarning, match="dropped 1 unfinished"):
        ref = fit(load(tmp_path))
    assert np.allclose(law.result.params, ref.params, rtol=1e-12)
    sf = ref.get_prediction([1e8]).summary_frame(0.05).iloc[0]
    state = json.loads((tmp_path / LAW_FILE).read_text())
    assert state["status"] == "fitted" and state["n_points"] == 6 and state["n_planned"] == 6
    assert state["law"]["params"] == pytest.approx(dict(ref.params))
    assert state["target"]["mean"] == pytest.approx(sf["mean"])
    assert state["target"]["pi"] == pytest.approx([sf["obs_ci_lower"], sf["obs_ci_upper"]])
    assert state["target"]["ci_width"] == pytest.approx(sf["mean_ci_upper"] - sf["mean_ci_lower"])
    assert [h["n_points"] for h in state["history"]] == [3, 4, 5, 6]  # one entry per update with a law
    # the parent run's metrics: one batch per law, its step the number of points
    assert [step for step, _ in rec.calls] == [3, 4, 5, 6]
    last = rec.calls[-1][1]
    lo, hi = ref.conf_int(0.05).loc["b"]
    assert last["law.b"] == pytest.approx(ref.params["b"]) and last["law.n_points"] == 6
    assert (last["law.b_ci_lower"], last["law.b_ci_upper"]) == pytest.approx((lo, hi))
    assert last["law.r2"] == pytest.approx(ref.rsquared)
    assert last["law.target_pi_width"] == pytest.approx(sf["obs_ci_upper"] - sf["obs_ci_lower"])
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("law after 6 of 6")][0]
    assert f"rFID = {ref.params['a']:.4g} - {abs(ref.params['b']):.4g} log10(params)" in line
    assert f"b 95% CI [{lo:.4g}, {hi:.4g}]" in line and f"at 1e+08: {sf['mean']:.4g}" in line


def test_the_capacity_panel_fits_the_most_common_layer_count_only(tmp_path):
    table = ResultsTable(tmp_path)
    for i in range(6):
        table.upsert(_row(i, CAPS[i], RFID[i]))
    odd = {**_row(7, 2e4, 60.0), "fused_layers": 2, "point_id": "h7-k2", "unit_id": "h7-k2-s0",
           "trial_id": "h7-k2-s0-t0"}
    table.upsert(odd)
    unified = LiveLaw(tmp_path, _spec(), 7)
    capacity = LiveLaw(tmp_path, _spec("law.panel=capacity"), 7)
    unified.update(), capacity.update()
    assert unified.result.nobs == 7 and capacity.result.nobs == 6
    assert np.allclose(capacity.result.params, fit(load(tmp_path, where="fused_layers=6")).params)


@pytest.mark.parametrize("interval", ["pi", "ci"])
def test_the_stop_rule_stops_once_the_interval_is_narrower_than_asked(tmp_path, interval):
    table = ResultsTable(tmp_path)
    for i in range(4):
        table.upsert(_row(i, CAPS[i], RFID[i]))
    ref = fit(load(tmp_path)).get_prediction([1e8]).summary_frame(0.05).iloc[0]
    width = float(ref["obs_ci_upper"] - ref["obs_ci_lower"]) if interval == "pi" else float(
        ref["mean_ci_upper"] - ref["mean_ci_lower"])
    key = f"{interval}_width_below"
    above = LiveLaw(tmp_path, _spec(f"stop={{target: 1.0e+8, {key}: {width * 0.999!r}}}"), 6)
    below = LiveLaw(tmp_path, _spec(f"stop={{target: 1.0e+8, {key}: {width * 1.001!r}}}"), 6)
    later = LiveLaw(tmp_path, _spec(f"stop={{target: 1.0e+8, {key}: {width * 1.001!r}, min_points: 5}}"), 6)
    for law in (above, below, later):
        law.update()
    assert above.stopped is None and later.stopped is None
    assert below.stopped["n_points"] == 4 and below.stopped["width"] == pytest.approx(width)
    assert f"below {width * 1.001:g}" in below.stopped["reason"]
    assert json.loads((tmp_path / LAW_FILE).read_text())["stopped"] is None  # `later` wrote last


def test_an_infinite_prediction_interval_never_stops_a_sweep(tmp_path):
    # two seeds alike at two of three capacities: one capacity with a residual variance, no noise model
    table = ResultsTable(tmp_path)
    for i, seed in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0)):
        table.upsert({**_row(i, CAPS[i], RFID[i]), "trial_id": f"h{i}-k6-s{seed}-t0", "seed": seed})
    law = LiveLaw(tmp_path, _spec("stop={target: 1.0e+8, pi_width_below: 1.0e+300}"), 3)
    law.update()
    assert law.result is not None and law.stopped is None
    assert json.loads((tmp_path / LAW_FILE).read_text())["target"]["pi_width"] is None  # inf, as JSON null


def test_equation_of_each_linear_form():
    class R:
        params = {"a": 41.2, "b": -2.1}
        x, y = "params", "rfid"

    for form, text in (("log-linear", "rFID = 41.2 - 2.1 log10(params)"), ("linear", "rFID = 41.2 - 2.1 params"),
                       ("power", "ln(rFID) = 41.2 - 2.1 ln(params)")):
        R.form = form
        assert equation(R) == text


def test_skipped_rows_are_the_planned_trials_without_a_row():
    plan = build_plan(_spec("grid.expert_hidden=[2,4,8]"))
    rows = {"h2-k6-s0-t0": {"status": "completed"}, "h4-k6-s0-t0": {"status": "skipped"}}
    out = skipped_rows(plan.units, rows, "stop rule met")
    assert [r["trial_id"] for r in out] == ["h4-k6-s0-t0", "h8-k6-s0-t0"]
    assert all(r["status"] == "skipped" and r["error"] == "stop rule met" and r["params"] > 0 for r in out)
