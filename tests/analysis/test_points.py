"""Each point's interval: the t-interval over its seeds, else the law's CI of the mean at its capacity."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import fit, load
from analysis.points import LAW, SEEDS, point_intervals, seed_stats

T_975 = {2: 4.302652729749464, 3: 3.182446305284263, 4: 2.7764451051977934}  # Student t(df) quantiles, 0.975


def table(seeds_per_point: dict, controls=()):
    """A results table: point h<k> at params 1000 k with the given rfid per seed; controls never fitted."""
    rows = [{"trial_id": f"h{k}-s{s}", "point_id": f"h{k}", "kind": "grid", "status": "completed",
             "params": 1000 * k, "rfid": v, "seed": s}
            for k, vals in seeds_per_point.items() for s, v in enumerate(vals)]
    rows += [{"trial_id": f"{c}-s0", "point_id": c, "kind": "control", "status": "completed", "params": 0,
              "rfid": 50.0, "seed": 0} for c in controls]
    return load(pd.DataFrame(rows))


def test_several_seeds_give_the_t_interval_of_their_mean():
    t = table({1: [10.0], 8: [1.0, 2.0, 3.0], 64: [4.0, 4.0, 5.0, 7.0, 5.0]}, controls=["rae"])
    out = point_intervals(t).set_index("point_id")
    assert list(out.index) == ["h1", "h8", "h64"]  # by capacity; the control is not a point of the law
    row = out.loc["h8"]
    assert row["source"] == SEEDS and row["n"] == 3 and row["mean"] == 2.0
    half = T_975[2] * 1.0 / math.sqrt(3)  # sd of 1, 2, 3 is 1
    assert (row["lower"], row["upper"]) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-9)
    vals = np.array([4.0, 4.0, 5.0, 7.0, 5.0])
    half = T_975[4] * vals.std(ddof=1) / math.sqrt(5)
    assert (out.loc["h64", "lower"], out.loc["h64", "upper"]) == pytest.approx((5.0 - half, 5.0 + half), rel=1e-9)
    assert out.loc["h1", "source"] == "" and math.isnan(out.loc["h1", "lower"])  # one seed, no law given


def test_a_single_seed_gets_the_log_linear_laws_ci_of_the_mean_at_its_capacity():
    ys = {1: 30.0, 4: 26.5, 16: 24.0, 64: 20.5, 256: 18.2}
    t = table({k: [v] for k, v in ys.items()})
    out = point_intervals(t, fit(t, cov_type="nonrobust"), alpha=0.05).set_index("point_id")
    assert set(out["source"]) == {LAW}
    # Independently: OLS of y on log10(C); the mean's CI is yhat ± t(n-2) s sqrt(1/n + (x0 - xbar)^2 / Sxx).
    x = np.log10([1000.0 * k for k in ys])
    y = np.array(list(ys.values()))
    b, a = np.polyfit(x, y, 1)
    s = math.sqrt(((y - a - b * x) ** 2).sum() / (len(x) - 2))
    sxx = ((x - x.mean()) ** 2).sum()
    for k, x0 in zip(ys, x):
        half = T_975[3] * s * math.sqrt(1 / len(x) + (x0 - x.mean()) ** 2 / sxx)
        yhat = a + b * x0
        assert (out.loc[f"h{k}", "lower"], out.loc[f"h{k}", "upper"]) == pytest.approx((yhat - half, yhat + half),
                                                                                      rel=1e-9)
        assert out.loc[f"h{k}", "mean"] == ys[k]  # the point's own rFID, not the law's



def test_seed_stats_are_the_mean_and_sample_std_per_capacity():
    pts = pd.DataFrame({"params": [1, 1, 2], "rfid": [1.0, 3.0, 5.0]})
    out = seed_stats(pts, "params", "rfid")
    assert out.loc[1].tolist() == [2.0, math.sqrt(2.0), 2] and out.loc[2].tolist() == [5.0, 0.0, 1]


def test_seed_stats_se_is_the_measurement_error_of_the_mean():
    pts = pd.DataFrame({"params": [1, 1, 2, 3, 3], "rfid": [1.0, 3.0, 5.0, 2.0, 2.0],
                        "rfid_se": [0.3, 0.4, 0.2, 0.1, np.nan]})
    out = seed_stats(pts, "params", "rfid", se="rfid_se")
    assert out.loc[1, "se"] == pytest.approx(0.5 / 2) and out.loc[2, "se"] == pytest.approx(0.2)
    assert math.isnan(out.loc[3, "se"])                           # a seed without se: no claim for the point
    assert "se" not in seed_stats(pts, "params", "rfid").columns
