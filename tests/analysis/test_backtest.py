"""backtest(): fit the smaller capacities, predict the largest held out, check the intervals."""

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, backtest


def _data(rng, n_caps=8, seeds=3, sigma=0.05):
    C = np.repeat(np.geomspace(1e6, 1e9, n_caps), seeds)
    return pd.DataFrame({"params": C, "rfid": 5 - 0.5 * np.log10(C) + rng.normal(0, sigma, C.size)})


def test_columns_and_rows():
    out = backtest(_data(np.random.default_rng(0)), holdout=2)
    assert list(out.columns) == ["capacity", "truth", "mean", "pi_lower", "pi_upper", "error", "rel_error",
                                 "covered"]
    assert len(out) == 6 and out.capacity.nunique() == 2
    assert out.capacity.min() > 1e8
    np.testing.assert_allclose(out.error, out["mean"] - out.truth)
    assert (out.pi_lower < out["mean"]).all() and (out["mean"] < out.pi_upper).all()


def test_truth_inside_the_interval_for_the_right_law():
    """Held-out truths fall inside the 95% PI about 95% of the time (100 synthetic sweeps)."""
    rng = np.random.default_rng(11)
    covered = np.concatenate([backtest(_data(rng), holdout=2).covered.to_numpy() for _ in range(100)])
    assert 0.9 <= covered.mean() <= 0.99


def test_noiseless_backtest_is_exact():
    C = np.geomspace(1e6, 1e9, 6)
    df = pd.DataFrame({"params": C, "rfid": 5 - 0.5 * np.log10(C) + 1e-9 * np.sin(np.arange(6))})
    out = backtest(df, holdout=1)
    assert abs(out.error.iloc[0]) < 1e-6 and out.covered.all()


def test_too_few_capacities_left():
    with pytest.raises(AnalysisError, match="leaves 2 distinct capacities"):
        backtest(_data(np.random.default_rng(0), n_caps=4), holdout=2)


# --- rollout ---------------------------------------------------------------------------------

from analysis import fit, rollout  # noqa: E402
from analysis.backtest import ROLLOUT_COLUMNS  # noqa: E402


def _rollout_by_hand(C, y, alpha=0.05):
    """Each split k = 3 .. m-1 by numpy: least squares on the k smallest capacities, each larger run's error,
    its reach d = log10(C / C_max) and whether it lies in the PI (the PI from the law fitted by the public API)."""
    caps = np.unique(C)
    out = []
    for k in range(3, len(caps)):
        top = caps[k - 1]
        tr, te = C <= top, C > top
        X = np.column_stack([np.ones(tr.sum()), np.log10(C[tr])])
        coef, *_ = np.linalg.lstsq(X, y[tr], rcond=None)
        pred = coef[0] + coef[1] * np.log10(C[te])
        sf = fit(pd.DataFrame({"params": C[tr], "rfid": y[tr]})).get_prediction(C[te]).summary_frame(alpha)
        inside = (y[te] >= sf["obs_ci_lower"].to_numpy()) & (y[te] <= sf["obs_ci_upper"].to_numpy())
        out.append({"k": k, "top": top, "err": pred - y[te], "truth": y[te], "d": np.log10(C[te] / top),
                    "inside": inside, "C": C[te]})
    return out


def _metrics_by_hand(parts):
    err = np.concatenate([p["err"] for p in parts])
    truth = np.concatenate([p["truth"] for p in parts])
    d = np.concatenate([p["d"] for p in parts])
    inside = np.concatenate([p["inside"] for p in parts])
    rel = np.abs(err) / np.abs(truth)
    return {"n": len(err), "bias": err.mean(), "mae": np.abs(err).mean(), "mean_rel_error": rel.mean(),
            "weighted_rel_error": (d * rel).sum() / d.sum(), "coverage": inside.mean(), "max_decades": d.max()}


def test_rollout_splits_and_metrics_match_a_hand_computation():
    """6 capacities x 3 seeds: splits k = 3, 4, 5; every metric per split and pooled, recomputed by numpy."""
    rng = np.random.default_rng(5)
    df = _data(rng, n_caps=6, seeds=3, sigma=0.2)
    ro = rollout(df)
    C, y = df["params"].to_numpy(), df["rfid"].to_numpy()
    parts = _rollout_by_hand(C, y)
    assert [s.k for s in ro.splits] == [3, 4, 5] and ro.skipped == ()
    for split, part in zip(ro.splits, parts):
        assert list(split.rows.columns) == list(ROLLOUT_COLUMNS)
        assert split.fitted_max == part["top"] and split.n_fitted == 3 * split.k
        np.testing.assert_allclose(split.rows["capacity"], np.unique(part["C"]))
        np.testing.assert_allclose(split.rows["decades"], np.log10(np.unique(part["C"]) / part["top"]), rtol=1e-12)
        want, got = _metrics_by_hand([part]), split.metrics()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (split.k, key)
    overall = ro.overall()
    assert overall["splits"] == 3
    for key, value in _metrics_by_hand(parts).items():
        assert overall[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_the_weighted_relative_error_weights_by_decades_of_reach():
    """One split, two predicted capacities 1 and 2 decades out with relative errors 10% and 40%:
    weighted (1 * 0.1 + 2 * 0.4) / 3 = 0.3, unweighted 0.25."""
    C = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
    y = np.array([8.0, 7.0, 6.0, 0.0, 0.0])  # fitted exactly: 11 - log10 C, predicting 5 at 1e6 and 4 at 1e7
    y[3], y[4] = 5.0 / 1.1, 4.0 / 1.4         # relative errors |pred - y| / y of 0.1 and 0.4
    df = pd.DataFrame({"params": C, "rfid": y + np.array([1e-12, -1e-12, 1e-12, 0, 0])})
    split = rollout(df).splits[0]
    assert split.k == 3
    m = split.metrics()
    assert m["weighted_rel_error"] == pytest.approx((1 * 0.1 + 2 * 0.4) / 3, rel=1e-6)
    assert m["mean_rel_error"] == pytest.approx(0.25, rel=1e-6)
    assert m["bias"] == pytest.approx(((5 - y[3]) + (4 - y[4])) / 2, rel=1e-6)


def test_a_zero_truth_has_no_relative_error_but_counts_for_bias_and_coverage():
    C = np.geomspace(1e3, 1e7, 5)
    y = 9 - np.log10(C) + np.array([0.01, -0.02, 0.01, 0.0, 0.0])
    y[-1] = 0.0
    split = rollout(pd.DataFrame({"params": C, "rfid": y})).splits[0]
    rows = split.rows.set_index("capacity")
    assert rows.loc[C[-1], "n_rel"] == 0 and np.isnan(rows.loc[C[-1], "rel_error"])
    m = split.metrics()
    assert m["n"] == 2
    assert m["mean_rel_error"] == pytest.approx(rows.loc[C[-2], "rel_error"])   # the one run with y != 0
    assert m["weighted_rel_error"] == pytest.approx(rows.loc[C[-2], "rel_error"])


def test_a_split_the_law_cannot_fit_is_skipped_with_its_reason():
    C = np.repeat(np.geomspace(1e3, 1e7, 5), 2)
    y = np.where(C <= 1e5, 5.0, 9 - np.log10(C))   # the 3 smallest capacities all at 5.0: nothing to fit
    y = y + np.where(C > 1e5, [0.01, -0.01] * 5, 0.0)
    ro = rollout(pd.DataFrame({"params": C, "rfid": y}))
    assert [s.k for s in ro.splits] == [4]
    ((k, why),) = ro.skipped
    assert k == 3 and "same value (5)" in why


@pytest.mark.parametrize("caps, match", [
    ([1e4, 1e5, 1e6], "3 distinct capacities: a rollout fits at least 3 and predicts a larger one"),
    ([0.0, 1e5, 1e6, 1e7], "non-positive value"),
])
def test_rollout_needs_four_positive_capacities(caps, match):
    df = pd.DataFrame({"params": caps, "rfid": [3.0, 2.0, 1.5, 1.0][:len(caps)]})
    with pytest.raises(AnalysisError, match=match):
        rollout(df, form="linear")


def test_rollout_to_dict_is_the_splits_and_the_pooled_metrics():
    ro = rollout(_data(np.random.default_rng(2), n_caps=5, seeds=2))
    d = ro.to_dict()
    assert [s["k"] for s in d["splits"]] == [3, 4] and d["overall"] == ro.overall()
    assert "log10(C / C_max)" in d["weighting"]
    assert [r["capacity"] for r in d["splits"][0]["rows"]] == list(ro.splits[0].rows["capacity"])
    assert sum(r["n"] for s in d["splits"] for r in s["rows"]) == d["overall"]["n"] == 2 * (2 + 1)
