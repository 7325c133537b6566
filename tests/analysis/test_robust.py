"""CR2 (cluster-robust, capacities as clusters) and Bell-McCaffrey df against dense by-hand algebra,
statsmodels' HC2 and closed forms; the default intervals of fit() are built from them."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from analysis import AnalysisError, fit, robust
from helpers import fgls_variance


def dense_cr2(X, e, groups, w, L):
    """Bell & McCaffrey's CR2 and df the textbook way: whitened X, the (n, n) hat matrix, each
    cluster's (I - H_ss)^-1/2 by eigendecomposition, G's columns (I - H)_s A_s X_s K l."""
    sw = np.sqrt(w)
    Xw, ew = X * sw[:, None], e * sw
    n, p = Xw.shape
    K = np.linalg.inv(Xw.T @ Xw)
    H = Xw @ K @ Xw.T
    IH = np.eye(n) - H
    meat = np.zeros((p, p))
    G = [[] for _ in L]
    for g in np.unique(groups):
        s = groups == g
        val, U = np.linalg.eigh(np.eye(s.sum()) - H[np.ix_(s, s)])
        A = U @ np.diag(val ** -0.5) @ U.T
        u = Xw[s].T @ A @ ew[s]
        meat += np.outer(u, u)
        for j, ell in enumerate(L):
            G[j].append(IH[:, s] @ A @ Xw[s] @ K @ ell)
    df = []
    for cols in G:
        M = np.array(cols) @ np.array(cols).T
        df.append(np.trace(M) ** 2 / np.trace(M @ M))
    return K @ meat @ K, np.array(df)


def design(C):
    return np.column_stack([np.ones_like(C), np.log10(C)])


@pytest.mark.parametrize("weighted", [False, True])
def test_cr2_and_bm_df_equal_the_dense_textbook_computation(weighted):
    rng = np.random.default_rng(3)
    C = np.repeat(np.geomspace(1e4, 1e8, 7), [1, 3, 2, 1, 4, 2, 3])
    X = design(C)
    y = 2 - 0.3 * X[:, 1] + rng.normal(0, 0.2 * X[:, 1] / 4, C.size)
    w = rng.uniform(0.3, 3, C.size) if weighted else np.ones(C.size)
    b = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    L = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 9.0], [1.0, 3.3]])
    V_ref, df_ref = dense_cr2(X, y - X @ b, C, w, L)
    cl = robust.clusters(X, y - X @ b, C, w if weighted else None)
    np.testing.assert_allclose(robust.cr2_cov(cl), V_ref, rtol=1e-9)
    np.testing.assert_allclose(robust.bm_df(cl, L), df_ref, rtol=1e-9)


def test_one_row_per_capacity_is_statsmodels_hc2():
    rng = np.random.default_rng(8)
    C = np.geomspace(1e5, 1e9, 9)
    X = design(C)
    y = 30 - 2 * X[:, 1] + rng.normal(0, 0.1 * X[:, 1], C.size)
    ref = sm.OLS(y, X).fit(cov_type="HC2")
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    np.testing.assert_allclose(res.cov_params.to_numpy(), ref.cov_params(), rtol=1e-9)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse, rtol=1e-9)


def test_the_mean_of_equal_singletons_has_the_classical_variance_and_n_minus_1_df():
    # Intercept-only, one row per cluster: h_ii = 1/n, so CR2 = s^2/n exactly and BM's df = n - 1.
    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    n = len(y)
    X = np.ones((n, 1))
    cl = robust.clusters(X, y - y.mean(), np.arange(n))
    assert robust.cr2_cov(cl)[0, 0] == pytest.approx(y.var(ddof=1) / n, rel=1e-12)
    assert robust.bm_df(cl, [[1.0]])[0] == pytest.approx(n - 1, rel=1e-12)


def test_default_intervals_are_t_with_each_contrasts_bm_df(loglinear_df):
    res = fit(loglinear_df)
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    X = design(C)
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    C0 = np.array([3e9, 1e10])
    L = np.vstack([np.eye(2), design(C0)])
    V, df = dense_cr2(X, y - X @ b, C, np.ones(C.size), L)
    np.testing.assert_allclose(res.df_params, df[:2], rtol=1e-9)
    ci = res.conf_int(0.1)
    t = stats.t.ppf(0.95, df[:2])
    se = np.sqrt(np.diag(V))
    np.testing.assert_allclose(ci["lower"], b - t * se, rtol=1e-9)
    np.testing.assert_allclose(ci["upper"], b + t * se, rtol=1e-9)
    np.testing.assert_allclose(res.pvalues, 2 * stats.t.sf(np.abs(b / se), df[:2]), rtol=1e-9)
    sf = res.get_prediction(C0).summary_frame(0.1)
    se0 = np.sqrt(np.einsum("ip,pq,iq->i", L[2:], V, L[2:]))
    np.testing.assert_allclose(sf["mean_se"], se0, rtol=1e-9)
    np.testing.assert_allclose(sf["mean_df"], df[2:], rtol=1e-9)
    np.testing.assert_allclose(sf["mean_ci_upper"], L[2:] @ b + stats.t.ppf(0.95, df[2:]) * se0, rtol=1e-9)
    d = res.to_dict()
    assert d["cov_type"] == "CR2" and d["df"]["b"] == pytest.approx(df[1], rel=1e-12)
    assert "Bell-McCaffrey" in res.summary()


def test_seed_variance_weights_enter_the_cr2_errors(loglinear_df):
    """The default errors of an FGLS fit: CR2 of the weighted fit (w = 1 / the noise model's variance),
    by the dense textbook computation with the same weights."""
    df = loglinear_df.copy()
    df.loc[df.params == df.params.max(), "rfid"] += np.array([0.3, -0.3, 0.0])
    C, y = df.params.to_numpy(), df.rfid.to_numpy()
    w = 1 / fgls_variance(C, y)
    w = w / w.mean()
    X = design(C)
    b = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    V, dfs = dense_cr2(X, y - X @ b, C, w, np.eye(2))
    res = fit(df, weights="seed-variance")
    np.testing.assert_allclose(res.params, b, rtol=1e-9)
    np.testing.assert_allclose(res.cov_params.to_numpy(), V, rtol=1e-9)
    np.testing.assert_allclose(res.df_params, dfs, rtol=1e-9)

def test_nonrobust_keeps_the_classical_errors(loglinear_df):
    res = fit(loglinear_df, cov_type="nonrobust")
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    X = design(C)
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ b
    V = e @ e / (len(y) - 2) * np.linalg.inv(X.T @ X)
    np.testing.assert_allclose(res.cov_params.to_numpy(), V, rtol=1e-9)
    assert (res.df_params == len(y) - 2).all() and res.to_dict()["cov_type"] == "nonrobust"


def test_measurement_weights_are_known_variances():
    rng = np.random.default_rng(5)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), 2)
    se = rng.uniform(0.1, 0.4, C.size)
    y = 20 - 1.5 * np.log10(C) + rng.normal(0, se)
    res = fit(pd.DataFrame({"params": C, "rfid": y, "rfid_se": se}), weights="measurement")
    X = design(C)
    W = 1 / se ** 2
    K = np.linalg.inv((X * W[:, None]).T @ X)
    b = K @ (X * W[:, None]).T @ y
    np.testing.assert_allclose(res.params, b, rtol=1e-9)
    np.testing.assert_allclose(res.cov_params.to_numpy(), K, rtol=1e-9)      # not scaled by s^2
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(res.conf_int()["upper"], b + z * np.sqrt(np.diag(K)), rtol=1e-9)
    # a new run's noise: its se read off the trend of log se^2 in log10 C, known
    g = np.polyfit(np.log10(C), np.log(se ** 2), 1)
    C0 = 1e8
    sf = res.get_prediction([C0]).summary_frame().iloc[0]
    var0 = np.exp(np.polyval(g, np.log10(C0)))
    x0 = design(np.array([C0]))[0]
    half = z * math.sqrt(var0 + x0 @ K @ x0)
    assert (sf.obs_ci_lower, sf.obs_ci_upper) == pytest.approx((x0 @ b - half, x0 @ b + half), rel=1e-6)
    assert sf.pi_note == "" and res.to_dict()["cov_type"] == "known"
    # known variances have no robust/classical choice: cov_type changes nothing, the PI included
    classical = fit(pd.DataFrame({"params": C, "rfid": y, "rfid_se": se}), weights="measurement", cov_type="nonrobust")
    pd.testing.assert_frame_equal(classical.get_prediction([C0]).summary_frame(),
                                  res.get_prediction([C0]).summary_frame())


def test_power_measurement_weights_carry_the_se_onto_ln_y():
    """power fits ln y, whose measurement se is se / y (the delta method): WLS on ln y with weights
    (y / se)^2, by hand."""
    rng = np.random.default_rng(8)
    C = np.repeat(np.geomspace(1e4, 1e7, 5), 2)
    y = 30 * C ** -0.2 * np.exp(rng.normal(0, 0.02, C.size))
    se = rng.uniform(0.05, 0.3, C.size)
    res = fit(pd.DataFrame({"params": C, "rfid": y, "rfid_se": se}), form="power", weights="measurement")
    X = np.column_stack([np.ones_like(C), np.log(C)])
    W = (y / se) ** 2
    K = np.linalg.inv((X * W[:, None]).T @ X)
    b = K @ (X * W[:, None]).T @ np.log(y)
    np.testing.assert_allclose(res.cov_params.to_numpy(), K, rtol=1e-9)
    assert res.params.iloc[1] == pytest.approx(b[1], rel=1e-9)


def test_measurement_weights_need_a_finite_positive_se_on_every_row():
    C = np.geomspace(1e4, 1e7, 5)
    df = pd.DataFrame({"params": C, "rfid": [5.0, 4.1, 3.0, 2.2, 1.1], "trial_id": list("abcde")})
    with pytest.raises(AnalysisError, match="needs a 'rfid_se' column"):
        fit(df, weights="measurement")
    df["rfid_se"] = [0.1, 0.0, 0.1, np.nan, 0.1]
    with pytest.raises(AnalysisError, match="finite positive 'rfid_se'.*b, d"):
        fit(df, weights="measurement")


def test_bad_cov_type_and_rows_of_a_cluster_with_different_designs():
    C = np.geomspace(1e4, 1e7, 5)
    with pytest.raises(AnalysisError, match="unknown cov_type 'HC9'"):
        fit(pd.DataFrame({"params": C, "rfid": [5.0, 4.1, 3.0, 2.2, 1.1]}), cov_type="HC9")
    X = np.column_stack([np.ones(4), [1.0, 2.0, 3.0, 4.0]])
    msg = r"^cluster-robust errors: the rows of a cluster must share their design row$"
    with pytest.raises(AnalysisError, match=msg):
        robust.clusters(X, np.zeros(4), [0, 0, 1, 1])
    X = np.column_stack([np.ones(4), [1.0, 1.0 + 1e-9, 3.0, 3.0]])   # within allclose's defaults, not 1e-12
    with pytest.raises(AnalysisError, match=msg):
        robust.clusters(X, np.zeros(4), [0, 0, 1, 1])
    X = np.column_stack([np.ones(4), [1.0, 1.0 + 1e-15, 3.0, 3.0]])   # rounding: one design row
    assert robust.clusters(X, np.zeros(4), [0, 0, 1, 1]).x.shape == (2, 2)


def test_a_cluster_with_leverage_one_adds_nothing():
    # 2 parameters, capacities 3: the middle one alone has leverage < 1; the CR2 adjustment must not blow up.
    X = np.column_stack([np.ones(4), [0.0, 0.0, 1.0, 2.0]])
    y = np.array([0.1, -0.1, 1.3, 1.9])
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    cl = robust.clusters(X, y - X @ b, X[:, 1])
    assert np.isfinite(robust.cr2_cov(cl)).all()
