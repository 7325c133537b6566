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


# --- what mutation testing found untested (mutmut over analysis/backtest.py) ---------------------------

import re  # noqa: E402
import warnings  # noqa: E402

from analysis import load  # noqa: E402
from analysis.backtest import rollout_metrics  # noqa: E402


def test_backtest_rows_relative_error_order_and_form():
    df = _data(np.random.default_rng(4)).sample(frac=1, random_state=1)      # rows in no particular order
    out = backtest(df, holdout=2, form="auto")
    np.testing.assert_allclose(out.rel_error, out.error / out.truth.abs(), rtol=1e-12)
    assert list(out.capacity) == sorted(out.capacity) and list(out.index) == list(range(len(out)))
    assert out.attrs["form"] in ("log-linear", "linear", "power", "saturating")   # what auto chose


def test_backtest_passes_the_columns_and_the_weights_to_its_fit():
    df = _data(np.random.default_rng(6), n_caps=6).rename(columns={"params": "C", "rfid": "g"})
    out = backtest(df, holdout=1, x="C", y="g", weights="seed-variance")
    train = df[df.C < df.C.max()]
    want = fit(train, x="C", y="g", weights="seed-variance").predict(out.capacity.to_numpy())
    np.testing.assert_allclose(out["mean"], want, rtol=1e-12)
    unweighted = fit(train, x="C", y="g").predict(out.capacity.to_numpy())
    assert np.abs(want - unweighted).max() > 1e-6                             # the weights do matter here


def test_backtest_takes_a_tables_own_columns_and_names_its_file(tmp_path):
    path = tmp_path / "paper.csv"
    C = np.geomspace(1e6, 1e9, 4)
    pd.DataFrame({"C": C, "g": 9 - np.log10(C) + [0.01, -0.02, 0.01, 0.0]}).to_csv(path, index=False)
    table = load(path, x="C", y="g")
    assert len(backtest(table, holdout=1)) == 1
    with pytest.raises(AnalysisError, match=rf"^{re.escape(str(path))}: holdout=4 leaves 0 distinct capacities in "
                                            r"'C' to fit \(of 4\): a backtest needs at least 3 left$"):
        backtest(table, holdout=4)
    with pytest.raises(AnalysisError, match=r"holdout=3 leaves 1 distinct capacity in 'C'"):
        backtest(table, holdout=3)


@pytest.mark.parametrize("holdout", [0, -1, 1.5, "2"])
def test_holdout_must_be_a_positive_integer(holdout):
    with pytest.raises(AnalysisError, match=r"^holdout must be a positive number of capacities, got "):
        backtest(_data(np.random.default_rng(0)), holdout=holdout)


@pytest.mark.parametrize("start", [0, -2, 2.5])
def test_rollout_start_must_be_a_positive_integer(start):
    with pytest.raises(AnalysisError, match=r"^start must be a positive number of capacities"):
        rollout(_data(np.random.default_rng(0)), start=start)


def test_a_rollout_from_one_capacity_lists_the_splits_no_law_fits():
    ro = rollout(_data(np.random.default_rng(0), n_caps=5), start=1)
    assert [k for k, _ in ro.skipped] == [1, 2] and [s.k for s in ro.splits] == [3, 4]
    assert "at least 3" in ro.skipped[0][1]


def _rows_with_zero_and_misses():
    """5 capacities x 2 seeds, exactly 11 - log10 C below the top two; at 1e6 one seed on the line and one far
    off (outside any PI), at 1e7 one seed at 0 (no relative error) and one on the line."""
    C = np.repeat(np.geomspace(1e3, 1e7, 5), 2)
    y = 11 - np.log10(C) + np.tile([0.05, -0.05], 5)
    y[6], y[7] = 5.0, 9.0                       # 1e6: the line (5) and a miss of 4
    y[8], y[9] = 0.0, 4.0                       # 1e7: a zero truth and the line (4)
    return pd.DataFrame({"params": C, "rfid": y}), y


def test_a_splits_rows_summarise_its_runs_per_capacity():
    df, y = _rows_with_zero_and_misses()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a capacity of zero truths divides 0 by 0 only inside errstate
        split = rollout(df).splits[0]
    r = split.rows.set_index("capacity")
    C6, C7 = df.params.iloc[6], df.params.iloc[8]
    assert r["n"].dtype.kind == "i" and r["n_rel"].dtype.kind == "i"
    assert list(r["n"]) == [2, 2] and list(r["n_rel"]) == [2, 1]
    np.testing.assert_allclose(r.loc[[C6, C7], "truth"], [(5 + 9) / 2, (0 + 4) / 2], rtol=1e-12)
    mean = r.loc[[C6, C7], "mean"].to_numpy()
    np.testing.assert_allclose(r.loc[[C6, C7], "error"], mean - [7.0, 2.0], rtol=1e-9)
    np.testing.assert_allclose(r.loc[[C6, C7], "abs_error"],
                               [(abs(mean[0] - 5) + abs(mean[0] - 9)) / 2, (abs(mean[1]) + abs(mean[1] - 4)) / 2])
    np.testing.assert_allclose(r.loc[C7, "rel_error"], abs(mean[1] - 4) / 4)      # the zero truth left out
    inside = [(lo <= v <= hi) for v, lo, hi in ((5.0, *r.loc[C6, ["pi_lower", "pi_upper"]]),
                                                (9.0, *r.loc[C6, ["pi_lower", "pi_upper"]]))]
    assert inside == [True, False] and r.loc[C6, "coverage"] == 0.5
    m = split.metrics()
    assert m["coverage"] == pytest.approx((0.5 * 2 + r.loc[C7, "coverage"] * 2) / 4)
    assert m["n_capacities"] == 2


def test_rollout_metrics_of_no_runs_are_nan_without_a_warning():
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in ROLLOUT_COLUMNS})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = rollout_metrics(empty)
    assert m["n"] == 0 and m["n_capacities"] == 0
    for key in ("max_decades", "bias", "mae", "mean_rel_error", "weighted_rel_error", "coverage"):
        assert np.isnan(m[key]), key


def test_only_zero_truths_have_no_relative_error_without_a_warning():
    C = np.geomspace(1e3, 1e6, 4)
    df = pd.DataFrame({"params": C, "rfid": [3.01, 1.98, 1.01, 0.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = rollout(df).splits[0].metrics()
    assert np.isnan(m["weighted_rel_error"]) and np.isnan(m["mean_rel_error"]) and m["n"] == 1


def test_the_rollouts_table_and_dict_name_every_field():
    ro = rollout(_rows_with_zero_and_misses()[0], start=2)
    table = ro.table()
    assert list(table.columns) == ["k", "fitted_max", "form", "n_fitted", "n", "n_capacities", "max_decades", "bias",
                                   "mae", "mean_rel_error", "weighted_rel_error", "coverage"]
    for row, split in zip(table.to_dict("records"), ro.splits):
        assert (row["k"], row["fitted_max"], row["form"], row["n_fitted"]) == \
            (split.k, split.fitted_max, "log-linear", 2 * split.k)
    d = ro.to_dict()
    assert list(d) == ["form", "x", "y", "alpha", "weighting", "splits", "overall", "skipped"]
    assert (d["form"], d["x"], d["y"], d["alpha"]) == ("log-linear", "params", "rfid", 0.05)
    assert list(d["splits"][0])[:4] == ["k", "fitted_max", "form", "n_fitted"] and "rows" in d["splits"][0]
    assert d["splits"][0]["fitted_max"] == ro.splits[0].fitted_max
    assert list(d["splits"][0]["rows"][0]) == [c for c in ROLLOUT_COLUMNS if c not in ("k", "fitted_max")]
    assert d["skipped"] == [{"k": 2, "reason": ro.skipped[0][1]}]


def test_backtest_holds_out_the_largest_capacity_by_default():
    out = backtest(_data(np.random.default_rng(1)))
    assert set(out.capacity) == {1e9} and len(out) == 3


def test_a_shared_cache_fits_each_split_once_and_changes_nothing(fit_calls):
    df = _data(np.random.default_rng(8), n_caps=6)
    alone = rollout(df)
    calls = len(fit_calls)
    cache: dict = {}
    shared = rollout(df, cache=cache)
    assert len(fit_calls) == 2 * calls and set(cache) == {(k, "log-linear", None) for k in (3, 4, 5)}
    for a, b in zip(alone.splits, shared.splits):
        pd.testing.assert_frame_equal(a.rows, b.rows)
    held = backtest(df, holdout=2, cache=cache)                   # the split k = 4's law: not refitted
    assert len(fit_calls) == 2 * calls
    pd.testing.assert_frame_equal(held, backtest(df, holdout=2))


def test_rollout_passes_the_form_the_columns_and_the_weights_to_its_fits():
    df = _data(np.random.default_rng(9), n_caps=5).rename(columns={"params": "C", "rfid": "g"})
    ro = rollout(df, form="linear", x="C", y="g", weights="seed-variance")
    assert (ro.x, ro.y) == ("C", "g")
    for split in ro.splits:
        train = df[df.C <= split.fitted_max]
        law = fit(train, x="C", y="g", form="linear", weights="seed-variance")
        assert split.form == "linear" and list(split.rows["k"]) == [split.k] * len(split.rows)
        np.testing.assert_allclose(split.rows["mean"], law.predict(split.rows["capacity"].to_numpy()), rtol=1e-12)


def test_rollout_takes_a_tables_own_columns_and_capacities_below_one(tmp_path):
    path = tmp_path / "paper.csv"
    C = np.geomspace(0.01, 10, 5)                                 # positive capacities below 1 are fine
    pd.DataFrame({"C": C, "g": 3 - np.log10(C) + [0.01, -0.02, 0.01, 0.0, 0.02]}).to_csv(path, index=False)
    ro = rollout(load(path, x="C", y="g"))
    assert (ro.x, ro.y) == ("C", "g") and [s.k for s in ro.splits] == [3, 4]


def test_rollout_errors_name_the_file_and_what_was_needed(tmp_path):
    def table(C, g):
        path = tmp_path / "t.csv"
        pd.DataFrame({"C": C, "g": g}).to_csv(path, index=False)
        return load(path, x="C", y="g"), re.escape(str(path))

    t, p = table([0.0, 1.0, 10.0, 100.0], [4.0, 3.0, 2.0, 1.5])
    with pytest.raises(AnalysisError, match=rf"^{p}: column 'C' has a non-positive value \(0\): a rollout measures its "
                                            r"reach in decades of the capacity and needs every value > 0$"):
        rollout(t, form="linear")
    t, p = table([1.0, 1.0, 1.0], [4.0, 3.0, 2.0])
    with pytest.raises(AnalysisError, match=rf"^{p}: column 'C' has 1 distinct capacity: a rollout fits at least 3 "
                                            r"and predicts a larger one, so it needs at least 4$"):
        rollout(t)
    t, p = table([1.0, 10.0], [4.0, 3.0])
    with pytest.raises(AnalysisError, match=r"has 2 distinct capacities: a rollout fits at least 2 and predicts a "
                                            r"larger one, so it needs at least 3$"):
        rollout(t, start=2)
    t, p = table([1.0, 10.0, 100.0, 1e3, 1e4], [2.0, 2.0, 2.0, 2.0, 1.0])  # every split's rows are constant
    with pytest.raises(AnalysisError, match=rf"^{p}: no rollout split could be fitted \(k = 3: column 'g' has the "
                                            r"same value \(2\)"):
        rollout(t)


def test_held_out_runs_keep_the_tables_order():
    """Rows interleaved by capacity (200 of them: numpy's default sort is not stable there): the held-out runs
    are listed in the table's order, so the i-th row is the i-th run at that capacity."""
    C = np.tile(np.geomspace(1e6, 1e9, 5), 40)
    y = 5 - 0.5 * np.log10(C) + np.random.default_rng(21).normal(0, 0.05, C.size)
    out = backtest(pd.DataFrame({"params": C, "rfid": y}), holdout=1)
    np.testing.assert_array_equal(out.truth, y[C == C.max()])
    np.testing.assert_array_equal(out.capacity, np.full(40, C.max()))


def test_a_truth_on_a_bound_of_the_prediction_interval_is_covered():
    """The PI is closed: held-out runs set exactly on its lower and upper bounds (the PI of the law fitted on
    the same rows, through the public API) count as covered, in the backtest and in the rollout's split."""
    C = np.repeat(np.geomspace(1e6, 1e9, 5), 2)
    y = 5 - 0.5 * np.log10(C) + np.random.default_rng(22).normal(0, 0.05, C.size)
    top = C.max()
    law = fit(pd.DataFrame({"params": C[:8], "rfid": y[:8]}))
    sf = law.get_prediction([top, top]).summary_frame(0.05)
    y[8:] = sf["obs_ci_lower"].iloc[0], sf["obs_ci_upper"].iloc[0]
    df = pd.DataFrame({"params": C, "rfid": y})
    assert backtest(df, holdout=1).covered.tolist() == [True, True]
    sf = law.get_prediction([top]).summary_frame(0.05)                  # the rollout predicts each capacity once
    y[8:] = sf["obs_ci_lower"].iloc[0], sf["obs_ci_upper"].iloc[0]
    (split,) = [s for s in rollout(pd.DataFrame({"params": C, "rfid": y})).splits if s.k == 4]
    assert split.rows["coverage"].tolist() == [1.0]
