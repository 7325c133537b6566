"""The hyperparameter law (analysis/hparams.py) against independent computations: each point's vertex and its
delta-method se against np.polyfit and the delta method by hand (and the se's coverage by simulation), the
law against closed-form OLS / a moment equation for tau^2 solved by root-finding and scipy's t, the
fallbacks to the best value tried, and which rows are used (pruned, failed, control, lr_source)."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from analysis import schema
from analysis.errors import AnalysisError
from analysis.hparams import BEST, VERTEX, fit_hparam_law, point_optimum, searched_points

WIDTHS = (2, 8, 32, 128, 512)
H0, H1 = 5286, 1158                        # params = H0 + H1 h: DRoRAE's fusion at 6 layers
A, B = -1.0, -0.3                          # the true law: log10 lr* = A + B log10 params


def params_of(h: int) -> int:
    return H0 + H1 * h


def searched_table(seed=0, trials=6, seeds=2, noise=0.005, widths=WIDTHS, offsets=None) -> pd.DataFrame:
    """A searched sweep: per width, `seeds` x `trials` Optuna-like trials at log-uniform lr within a decade of
    the width's optimum, val_l1 a parabola in log10 lr plus noise; `offsets` moves each width's optimum
    off the law (the law's misfit)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, h in enumerate(widths):
        c = params_of(h)
        ustar = A + B * math.log10(c) + (0.0 if offsets is None else offsets[i])
        for s in range(seeds):
            for t in range(trials):
                u = rng.uniform(ustar - 1, ustar + 1)
                rows.append({"trial_id": f"h{h}-k6-s{s}-t{t}", "point_id": f"h{h}-k6", "kind": "grid",
                             "status": "completed", "expert_hidden": h, "fused_layers": 6, "seed": s, "params": c,
                             "hp.lr": 10 ** u, "val_l1": 0.1 + 0.05 * (u - ustar) ** 2 + noise * rng.standard_normal(),
                             "best": t == 0})
    return pd.DataFrame(rows)


def quiet_fit(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_hparam_law(df, **kw)


# --- 1. each point's optimum -----------------------------------------------------------------


def test_the_vertex_and_its_se_are_np_polyfit_s_and_the_delta_method_by_hand():
    rng = np.random.default_rng(3)
    u = rng.uniform(-4, -2, 9)
    y = 0.2 + 0.07 * (u + 3.1) ** 2 + 0.004 * rng.standard_normal(9)
    c2, c1, c0 = np.polyfit(u, y, 2)
    X = np.vander(u, 3, increasing=True)                      # 1, u, u^2
    resid = y - X @ [c0, c1, c2]
    V = resid @ resid / (len(u) - 3) * np.linalg.inv(X.T @ X)
    g = np.array([0.0, -1 / (2 * c2), c1 / (2 * c2 ** 2)])
    opt = point_optimum(u, y)
    assert opt.method == VERTEX
    assert opt.u == pytest.approx(-c1 / (2 * c2), rel=1e-10)
    assert opt.se == pytest.approx(math.sqrt(g @ V @ g), rel=1e-8)


def test_the_vertex_se_covers_the_true_optimum_at_its_nominal_rate():
    # 1000 simulated points of 8 trials: the t interval (df n - 3) built on the delta-method se holds the
    # true optimum ~95% of the time; an se off by 20% either way lands near 89% or 98%.
    rng = np.random.default_rng(11)
    t = stats.t.ppf(0.975, 8 - 3)
    hits = n = 0
    for _ in range(1000):
        u = rng.uniform(-2, 0, 8)
        opt = point_optimum(u, 0.1 + 0.05 * (u + 1) ** 2 + 0.005 * rng.standard_normal(8))
        if opt.method == VERTEX:
            n += 1
            hits += abs(opt.u + 1) <= t * opt.se
    assert n > 950
    assert 0.93 <= hits / n <= 0.97


@pytest.mark.parametrize("u, y, why", [
    ([-3, -2.5, -2, -3, -2.5, -2], [0.3, 0.2, 0.25, 0.31, 0.19, 0.26], "3 distinct values: no residual df"),
    ([-3, -2.5, -2, -1.5], [0.2, 0.3, 0.31, 0.21], "a maximum (negative curvature)"),
    ([-3, -2.5, -2, -1.5], [0.5, 0.3, 0.2, 0.15], "the vertex beyond the largest value tried"),
])
def test_the_optimum_falls_back_to_the_best_value_tried(u, y, why):
    opt = point_optimum(np.array(u, float), np.array(y, float))
    means = pd.Series(y).groupby(np.array(u)).mean()
    assert opt.method == BEST, why
    assert opt.u == means.idxmin() and math.isnan(opt.se)


def test_the_best_value_is_the_lowest_mean_over_the_seeds_that_repeat_it():
    # -2 has the single lowest trial (0.10) but the higher mean; -3's mean 0.15 < -2's 0.2
    opt = point_optimum(np.array([-3, -3, -2, -2, -1.0]), np.array([0.15, 0.15, 0.10, 0.30, 0.4]))
    assert (opt.method, opt.u) == (BEST, -3)


# --- 2. the law ------------------------------------------------------------------------------


def _ols(X, U):
    D = np.column_stack([np.ones_like(X), X])
    beta = np.linalg.solve(D.T @ D, D.T @ U)
    e = U - D @ beta
    return beta, e @ e / (len(U) - 2) * np.linalg.inv(D.T @ D)


def test_with_a_best_point_the_law_is_ols_with_t_intervals_on_points_minus_2_df():
    df = searched_table(seed=1)
    last = df["point_id"] == "h512-k6"                    # one point with only 3 values: its optimum has no se
    df = df[~last | df["trial_id"].str.endswith(("t0", "t1", "t2")) & df["trial_id"].str.contains("-s0-")]
    law = quiet_fit(df)
    assert law.weighting == "ols" and list(law.points["method"]).count(BEST) == 1
    X, U = np.log10(law.points["capacity"].to_numpy()), np.log10(law.points["optimum"].to_numpy())
    b, a = np.polyfit(X, U, 1)
    _, cov = _ols(X, U)
    assert law.params.to_numpy() == pytest.approx([a, b], rel=1e-10)
    assert law.bse.to_numpy() == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-8)
    t = stats.t.ppf(0.95, len(X) - 2)
    ci = law.conf_int(0.1)
    assert ci["lower"].to_numpy() == pytest.approx([a, b] - t * np.sqrt(np.diag(cov)), rel=1e-8)
    assert law.df_resid == len(X) - 2 == 3


def _dl_tau2_by_root(X, U, se):
    """tau^2 solving Q = E[Q | tau^2] with Q = U' A U the fixed-effect weighted residual sum of squares,
    A = W - W D (D'WD)^-1 D'W; E[U'AU] = tr(A (S + tau^2 I)), S = diag(se^2): the moment equation of
    DerSimonian-Laird, by root-finding on the matrices (0 where Q is below its expectation at 0)."""
    D = np.column_stack([np.ones_like(X), X])
    W = np.diag(1 / se ** 2)
    Amat = W - W @ D @ np.linalg.inv(D.T @ W @ D) @ D.T @ W
    Q = U @ Amat @ U
    def f(t2):
        return np.trace(Amat @ (np.diag(se ** 2) + t2 * np.eye(len(U)))) - Q
    return 0.0 if f(0.0) >= 0 else optimize.brentq(f, 0.0, 100.0, xtol=1e-14)


def _wls_kh(X, U, w):
    D = np.column_stack([np.ones_like(X), X])
    M = np.linalg.inv(D.T @ (w[:, None] * D))
    beta = M @ D.T @ (w * U)
    e = U - D @ beta
    return beta, (w * e) @ e / (len(U) - 2) * M


@pytest.mark.parametrize("offsets, positive_tau2", [(None, False), ([0.15, -0.2, 0.1, 0.2, -0.15], True)])
def test_with_every_se_known_the_law_is_random_effects_wls_with_the_knapp_hartung_scale(offsets, positive_tau2):
    law = quiet_fit(searched_table(seed=4, offsets=offsets))
    pts = law.points
    assert law.weighting == "random-effects" and set(pts["method"]) == {VERTEX}
    X, U = np.log10(pts["capacity"].to_numpy()), np.log10(pts["optimum"].to_numpy())
    se = pts["optimum_se_log10"].to_numpy()
    tau2 = _dl_tau2_by_root(X, U, se)
    assert (tau2 > 0) == positive_tau2
    assert law.tau2 == pytest.approx(tau2, rel=1e-6, abs=1e-12)
    beta, cov = _wls_kh(X, U, 1 / (se ** 2 + tau2))
    assert law.params.to_numpy() == pytest.approx(beta, rel=1e-8)
    assert law.bse.to_numpy() == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-6)
    assert law.conf_int()["upper"].to_numpy() == pytest.approx(
        beta + stats.t.ppf(0.975, 3) * np.sqrt(np.diag(cov)), rel=1e-6)


def test_the_law_s_interval_covers_the_true_slope_at_its_nominal_rate():
    # 150 simulated sweeps (5 widths x 12 trials): the 95% interval of b holds B about 95% of the time
    hits = 0
    for i in range(150):
        lo, hi = quiet_fit(searched_table(seed=100 + i)).conf_int().loc["b"]
        hits += lo <= B <= hi
    assert 0.89 <= hits / 150 <= 0.99


def test_predictions_are_10_to_the_line_with_its_t_interval_mapped_back():
    law = quiet_fit(searched_table(seed=5))
    caps = np.array([1e6, 3e7])
    sf = law.get_prediction(caps).summary_frame(0.05)
    a, b = law.params
    L = np.column_stack([np.ones(2), np.log10(caps)])
    m = L @ [a, b]
    se = np.sqrt(np.einsum("ip,pq,iq->i", L, law.cov_params.to_numpy(), L))
    t = stats.t.ppf(0.975, law.df_resid)
    assert law.predict(caps) == pytest.approx(10 ** m, rel=1e-12)
    assert sf["mean"].to_numpy() == pytest.approx(10 ** m, rel=1e-12)
    assert sf["mean_ci_lower"].to_numpy() == pytest.approx(10 ** (m - t * se), rel=1e-10)
    assert sf["mean_ci_upper"].to_numpy() == pytest.approx(10 ** (m + t * se), rel=1e-10)
    with pytest.raises(AnalysisError, match="expected a finite capacity > 0"):
        law.predict([0.0])


def test_two_points_give_the_line_through_both_with_undefined_intervals():
    law = quiet_fit(searched_table(seed=6, widths=(8, 512)))
    X, U = np.log10(law.points["capacity"]), np.log10(law.points["optimum"])
    slope = (U.iloc[1] - U.iloc[0]) / (X.iloc[1] - X.iloc[0])
    assert law.params["b"] == pytest.approx(slope, rel=1e-10)
    assert law.df_resid == 0 and law.bse.isna().all() and law.conf_int().isna().all().all()
    assert law.predict([params_of(8)]) == pytest.approx(law.points["optimum"].iloc[:1], rel=1e-10)
    assert "only 2 points" in law.summary()


@settings(max_examples=25, deadline=None)
@given(a=st.floats(-3, 0), b=st.floats(-1, 0.5), widths=st.lists(st.integers(1, 4096), min_size=2, max_size=6,
                                                                  unique=True))
def test_noise_free_optima_on_a_power_law_are_recovered(a, b, widths):
    # every point's val_l1 an exact parabola in log10 lr about 10^(a + b log10 C), at 5 values: the law is (a, b)
    rows = []
    for h in widths:
        c = params_of(h)
        ustar = a + b * math.log10(c)
        for j, du in enumerate((-0.8, -0.3, 0.1, 0.4, 0.9)):
            rows.append({"point_id": f"h{h}", "trial_id": f"h{h}-{j}", "kind": "grid", "status": "completed",
                         "params": c, "hp.lr": 10 ** (ustar + du), "val_l1": 0.1 + 0.05 * du ** 2})
    law = fit_hparam_law(pd.DataFrame(rows))
    assert set(law.points["method"]) == {VERTEX}
    assert law.params.to_numpy() == pytest.approx([a, b], abs=1e-6)


# --- which rows ------------------------------------------------------------------------------


def test_pruned_failed_running_and_control_rows_are_left_out():
    df = searched_table(seed=7)
    junk = df.sample(12, random_state=0).assign(val_l1=0.0, **{"hp.lr": 1e-9})  # would drag every optimum
    junk["trial_id"] += "-junk"
    junk["status"] = ["pruned"] * 6 + ["failed", "running", "skipped"] * 2
    control = df.iloc[:3].assign(kind="control", point_id="rae", params=1e9, val_l1=0.0)
    law, base = quiet_fit(pd.concat([df, junk, control])), quiet_fit(df)
    pd.testing.assert_series_equal(law.params, base.params)
    assert len(law.trials) == len(df)


def test_with_lr_source_only_searched_rows_are_fitted_and_without_it_every_valued_row():
    df = searched_table(seed=8).assign(lr_source=schema.SEARCHED)
    law_rows = pd.DataFrame([{"trial_id": f"h{h}-law", "point_id": f"h{h}-k6", "kind": "grid", "status": "completed",
                              "params": params_of(h), "hp.lr": 0.5, "val_l1": 0.0, "lr_source": schema.LAW}
                             for h in (2048, 8, 32)])
    base = quiet_fit(df)
    law = quiet_fit(pd.concat([df, law_rows]))
    pd.testing.assert_series_equal(law.params, base.params)
    assert "h2048-k6" not in set(law.points["point_id"])
    older = quiet_fit(pd.concat([df, law_rows]).drop(columns="lr_source"))  # an older table: every row counts
    assert "h2048-k6" not in set(older.points["point_id"])                    # one value: no optimum
    assert not np.allclose(older.params, base.params)
    assert searched_points(pd.concat([df, law_rows])) == 5


def test_a_point_with_one_value_is_left_out_with_a_warning():
    df = searched_table(seed=9)
    one = df[df["point_id"] == "h2-k6"].iloc[:1].assign(point_id="h4-k6", params=params_of(4))
    with pytest.warns(UserWarning, match=r"1 point\(s\) without an optimum of 'lr': h4-k6 \(1 trial\(s\) at 1 value"):
        law = fit_hparam_law(pd.concat([df, one]))
    assert "h4-k6" not in set(law.points["point_id"]) and law.skipped


def test_seeds_of_a_point_are_pooled_and_capacity_is_the_points_own():
    law = quiet_fit(searched_table(seed=10, seeds=3, trials=4))
    assert list(law.points["n_trials"]) == [12] * 5
    assert list(law.points["capacity"]) == [params_of(h) for h in WIDTHS]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns="hp.lr"), "no column 'hp.lr' for the searched hyperparameter 'lr'; the table has no "
                                        "hp.<name> column: its sweep searched no hyperparameter"),
    (lambda d: d.drop(columns="val_l1"), "no column 'val_l1' for the selection metric"),
    (lambda d: d.assign(**{"hp.lr": d["hp.lr"].where(d.index != 5, -1e-3)}),
     "column 'hp.lr' holds -0.001 in trial h2-k6-s0-t5: expected a searched value > 0"),
    (lambda d: d.assign(params=d["params"].where(d.index != 0, 0)), "column 'params' holds 0 in trial h2-k6-s0-t0"),
    (lambda d: d[d["point_id"] == "h8-k6"], "the lr law needs at least 2 searched points .* found 1 point"),
    (lambda d: d.assign(params=1000), "found 5 points, all at params = 1000"),
    (lambda d: d.assign(status="pruned"), "found 0 point"),
])
def test_bad_tables_are_one_line_errors(mutate, message):
    with pytest.raises(AnalysisError, match=message):
        quiet_fit(mutate(searched_table(seed=12)))


def test_the_results_object_to_dict_and_summary_say_what_the_numbers_rest_on():
    law = quiet_fit(searched_table(seed=13))
    d = law.to_dict()
    assert d["params"] == pytest.approx(dict(law.params)) and d["df_resid"] == 3 and len(d["points"]) == 5
    assert set(d["points"][0]) >= {"point_id", "capacity", "optimum", "optimum_se_log10", "method", "n_trials",
                                   "best_value"}
    assert d["points"][0]["best_value"] == pytest.approx(law.trials.query("point_id == 'h2-k6'")["metric"].min())
    text = law.summary()
    assert law.equation in text and "Knapp-Hartung" in text and "h512-k6" in text


def test_a_best_value_at_an_end_of_the_values_tried_says_which_end_and_an_inner_one_says_nothing():
    rows = []
    for h, metric in ((2, lambda u: -u), (32, lambda u: u), (512, lambda u: (u + 2.5) ** 2)):
        for t, u in enumerate((-4.0, -3.0, -2.0)):  # 3 values: no vertex, the best value tried
            rows.append({"trial_id": f"h{h}-t{t}", "point_id": f"h{h}", "kind": "grid", "status": "completed",
                         "params": params_of(h), "hp.lr": 10 ** u, "val_l1": 0.1 + 0.01 * metric(u)})
    law = quiet_fit(pd.DataFrame(rows))
    assert list(law.points["method"]) == ["best"] * 3
    assert law.edges == ["h2's optimum is the largest lr tried (0.01): the best may lie above it (widen the search "
                         "range)", "h32's optimum is the smallest lr tried (0.0001): the best may lie below it "
                         "(widen the search range)"]  # h512's best, 10^-3, is inside [10^-4, 10^-2]
    assert [n for n in law.notes() if n.startswith("at the edge: ")] == [f"at the edge: {e}" for e in law.edges]
