"""The saturating law y = E + A C^-alpha: recovery of known parameters, robustness, predictions."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from analysis import AnalysisError, fit

E, A, ALPHA = 0.8, 60.0, 0.35
C = np.geomspace(1e5, 1e9, 9)


def _df(y, C=C):
    return pd.DataFrame({"params": C, "rfid": y})


def test_recovers_noiseless():
    res = fit(_df(E + A * C ** -ALPHA), form="saturating")
    np.testing.assert_allclose(res.params[["E", "A", "alpha"]], [E, A, ALPHA], rtol=1e-5)
    assert res.rsquared == pytest.approx(1.0, abs=1e-9)


def test_recovers_low_noise():
    """(How often the intervals cover the truth is test_saturating_coverage.py's simulation.)"""
    rng = np.random.default_rng(3)
    Cr = np.repeat(C, 3)
    y = E + A * Cr ** -ALPHA + rng.normal(0, 0.01, Cr.size)
    res = fit(_df(y, Cr), form="saturating")
    np.testing.assert_allclose(res.params[["E", "alpha"]], [E, ALPHA], rtol=0.05)
    np.testing.assert_allclose(res.params["A"], A, rtol=0.25)  # A and alpha trade off: A is the loosest
    ci = res.conf_int(0.05)
    assert res.identified and (ci.lower < res.params).all() and (res.params < ci.upper).all()


def test_huber_loss_resists_an_outlier():
    y = E + A * C ** -ALPHA
    y[4] += 1.0  # one wild point
    res = fit(_df(y), form="saturating")
    np.testing.assert_allclose(res.params[["E", "A", "alpha"]], [E, A, ALPHA], rtol=1e-3)


def test_prediction_frame():
    rng = np.random.default_rng(4)
    res = fit(_df(E + A * C ** -ALPHA + rng.normal(0, 0.01, C.size)), form="saturating")
    sf = res.get_prediction([1e10, 1e11]).summary_frame(0.05)
    np.testing.assert_allclose(sf["mean"], res.predict([1e10, 1e11]))
    assert (sf.obs_ci_lower < sf.mean_ci_lower).all() and (sf.mean_ci_upper < sf.obs_ci_upper).all()
    assert set(res.to_dict()["params"]) == {"E", "A", "alpha"}


def test_needs_four_capacities_and_no_bootstrap():
    with pytest.raises(AnalysisError, match="at least 4"):
        fit(_df(E + A * C[:3] ** -ALPHA, C[:3]), form="saturating")
    res = fit(_df(E + A * C ** -ALPHA), form="saturating")
    with pytest.raises(AnalysisError, match="analytic"):
        res.conf_int(method="bootstrap")


# --- identification ------------------------------------------------------------------------------------------

CL = np.geomspace(1e6, 1e9, 7)
CS = np.geomspace(1e4, 1e8, 8)


def _loglinear(seed, C=CL, sigma=0.05):
    """Data that do not saturate: y = 40 - 2 log10 C + N(0, sigma^2) (issue 13's example)."""
    return 40 - 2 * np.log10(C) + np.random.default_rng(seed).normal(0, sigma, C.size)


def test_loglinear_data_are_not_identified_and_have_no_intervals():
    res = fit(_df(_loglinear(0), CL), form="saturating")
    assert res.identified is False and res.warnings
    assert np.isnan(res.conf_int(0.05).to_numpy()).all() and np.isnan(res.bse).all()
    d = res.to_dict()
    assert d["identified"] is False and d["warnings"] == res.warnings
    assert all(np.isnan(v) for pair in d["conf_int"].values() for v in pair)
    text = res.summary()
    assert text.count("not identified") == 3 and sum(line.startswith("Not identified: ") for line in
                                                      text.splitlines()) == 1
    # inside the fitted range the mean is an estimable function (a finite CI); beyond it, none
    at = [CL[0], 3e7, CL[-1], CL[0] * (1 - 1e-6), CL[-1] * (1 + 1e-6), 1.5 * CL[-1], 10 * CL[-1]]
    sf = res.get_prediction(at).summary_frame(0.05)
    assert np.isfinite(sf["mean"]).all()
    np.testing.assert_array_equal(np.isfinite(sf.mean_se), [True] * 3 + [False] * 4)
    np.testing.assert_array_equal(np.isfinite(sf.obs_ci_upper), [True] * 3 + [False] * 4)


def test_identified_data_have_no_warnings_and_linear_forms_are_identified():
    rng = np.random.default_rng(1)
    res = fit(_df(E + A * C ** -ALPHA + rng.normal(0, 0.01, C.size)), form="saturating")
    assert res.identified is True and res.warnings == [] and np.isfinite(res.conf_int(0.05).to_numpy()).all()
    assert "profile likelihood" in res.summary()
    d = fit(_df(_loglinear(0, C), C)).to_dict()
    assert d["identified"] is True and d["warnings"] == []


@pytest.mark.parametrize("seed", range(5))
def test_the_old_pseudo_inverse_interval_is_gone(seed):
    """Issue 13: E = -502.6 with CI [-502.59, -502.53] from pinv(J'J); a proper inverse gives se(E) in the
    thousands. Every cause found is named."""
    res = fit(_df(_loglinear(seed, CL, 0.02), CL), form="saturating")
    assert not res.identified
    assert np.isnan(res.conf_int(0.05).to_numpy()).all()


# --- formulas against independent references ------------------------------------------------------------------


def _law(theta, C):
    return theta[0] + theta[1] * C ** -theta[2]


def _fd_jacobian(theta, C, h=1e-6):
    """d law / d(E, A, alpha) by central differences (relative steps)."""
    theta = np.asarray(theta, dtype=float)
    cols = []
    for j in range(3):
        step = h * max(abs(theta[j]), 1e-3)
        tp, tm = theta.copy(), theta.copy()
        tp[j] += step
        tm[j] -= step
        cols.append((_law(tp, C) - _law(tm, C)) / (2 * step))
    return np.column_stack(cols)


def _squared_loss_data(scale=0.01):
    """y = law + e, e = (a_c, -a_c, 0) at each capacity: J'e = 0, so the truth is the least-squares optimum,
    and every |e| is inside the Huber threshold (1.345 MAD sigmas ~ 2.2 a), so the Huber fit is least squares."""
    a = np.linspace(1.0, 1.5, C.size) * scale
    Cr = np.repeat(C, 3)
    e = np.column_stack([a, -a, np.zeros_like(a)]).ravel()
    return Cr, _law([E, A, ALPHA], Cr) + e, e


def test_squared_loss_covariance_is_s2_inverse_jtj_with_n_minus_p():
    Cr, y, e = _squared_loss_data()
    res = fit(_df(y, Cr), form="saturating")
    assert np.abs(e).max() < res._sat.huber_delta           # the premise: no residual is down-weighted
    np.testing.assert_allclose(res.params, [E, A, ALPHA], rtol=1e-7)
    J = _fd_jacobian([E, A, ALPHA], Cr)
    n = Cr.size
    s2 = e @ e / (n - 3)
    np.testing.assert_allclose(res.scale, s2, rtol=1e-9)
    np.testing.assert_allclose(res.cov_params.to_numpy(), s2 * np.linalg.inv(J.T @ J), rtol=1e-5)
    np.testing.assert_allclose(res.bse, np.sqrt(np.diag(s2 * np.linalg.inv(J.T @ J))), rtol=1e-5)


def test_fit_statistics_by_closed_forms():
    """On the squared-loss data (the optimum is the truth, the residuals e): R² = 1 - SSR / SST, adjusted with
    (n - 1) / (n - 3), AIC and BIC of the Gaussian likelihood at sigma^2 = SSR / n with p = 3, t = estimate /
    se with se from s^2 (J'J)^-1 (J by central differences), two-sided p-values from t_{n-3}."""
    Cr, y, e = _squared_loss_data()
    res = fit(_df(y, Cr), form="saturating")
    n, ssr = Cr.size, e @ e
    r2 = 1 - ssr / ((y - y.mean()) ** 2).sum()
    assert (res.nobs, res.df_resid) == (n, n - 3)
    assert res.ssr == pytest.approx(ssr, rel=1e-9)
    assert res.rsquared == pytest.approx(r2, rel=1e-12)
    assert res.rsquared_adj == pytest.approx(1 - (1 - r2) * (n - 1) / (n - 3), rel=1e-12)
    llf = -n / 2 * (np.log(2 * np.pi) + np.log(ssr / n) + 1)
    assert res.aic == pytest.approx(-2 * llf + 6, rel=1e-9)
    assert res.bic == pytest.approx(-2 * llf + 3 * np.log(n), rel=1e-9)
    J = _fd_jacobian([E, A, ALPHA], Cr)
    se = np.sqrt(np.diag(ssr / (n - 3) * np.linalg.inv(J.T @ J)))
    t = np.array([E, A, ALPHA]) / se
    np.testing.assert_allclose(res.tvalues, t, rtol=1e-5)
    np.testing.assert_allclose(res.pvalues, 2 * stats.t.sf(np.abs(t), n - 3), rtol=1e-4)


def test_huber_covariance_is_statsmodels_rlm_h1_on_the_linearised_model():
    """With an outlier some residuals are beyond delta: the sandwich K^2 (sum psi^2 / (n-p)) / mean(psi')^2
    (J'J)^-1 is what statsmodels RLM reports (H1) for the model linearised at the optimum."""
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    Cr = np.repeat(C, 2)
    y = _law([E, A, ALPHA], Cr) + rng.normal(0, 0.01, Cr.size)
    y[5] += 0.2
    res = fit(_df(y, Cr), form="saturating")
    theta, delta = res.params.to_numpy(), res._sat.huber_delta
    r = y - _law(theta, Cr)
    assert (np.abs(r) > delta).sum() >= 2                    # the premise: psi' is not 1 everywhere
    J = _fd_jacobian(theta, Cr)
    J[:, 0] = 1.0                                            # exactly: statsmodels then sees the constant
    scale = delta / 1.345
    rlm = sm.RLM(J @ theta + r, J, M=sm.robust.norms.HuberT(t=1.345)).fit(
        start_params=theta, start_scale=scale, update_scale=False, conv="coefs", tol=1e-13)
    np.testing.assert_allclose(rlm.params, theta, rtol=1e-6)  # the optimum is RLM's fixed point
    np.testing.assert_allclose(res.cov_params.to_numpy(), rlm.bcov_scaled, rtol=1e-4)
    n = Cr.size                                               # and by hand: K^2 (sum psi^2 / (n-p)) / m^2 (J'J)^-1
    psi, dpsi = np.clip(r, -delta, delta), (np.abs(r) <= delta).astype(float)
    K = 1 + 3 / n * dpsi.var() / dpsi.mean() ** 2
    hand = K ** 2 * (psi @ psi / (n - 3)) / dpsi.mean() ** 2 * np.linalg.inv(J.T @ J)
    np.testing.assert_allclose(res.cov_params.to_numpy(), hand, rtol=1e-4)
    s2_ls = r @ r / (Cr.size - 3)                             # not the least-squares covariance
    assert not np.allclose(res.cov_params.to_numpy(), s2_ls * np.linalg.inv(J.T @ J), rtol=0.05)


def test_prediction_se_is_the_delta_method_with_t_quantiles():
    rng = np.random.default_rng(5)
    y = _law([E, A, ALPHA], C) + rng.normal(0, 0.01, C.size)
    res = fit(_df(y), form="saturating")
    new = np.array([3e5, 1e10, 1e11])
    sf = res.get_prediction(new).summary_frame(0.05)
    theta, V = res.params.to_numpy(), res.cov_params.to_numpy()
    g = _fd_jacobian(theta, new)
    se = np.sqrt(np.einsum("ij,jk,ik->i", g, V, g))
    mean = sf["mean"]
    assert sf.index.name == "params"
    np.testing.assert_allclose(mean, _law(theta, new), rtol=1e-12)
    np.testing.assert_allclose(sf.mean_se, se, rtol=1e-6)
    t = stats.t.ppf(0.975, C.size - 3)
    np.testing.assert_allclose(sf.mean_ci_upper - mean, t * se, rtol=1e-6)
    np.testing.assert_allclose(mean - sf.mean_ci_lower, t * se, rtol=1e-6)
    s2 = ((y - _law(theta, C)) ** 2).sum() / (C.size - 3)
    np.testing.assert_allclose(sf.obs_ci_upper - mean, t * np.sqrt(se ** 2 + s2), rtol=1e-6)
    np.testing.assert_allclose(mean - sf.obs_ci_lower, t * np.sqrt(se ** 2 + s2), rtol=1e-6)
    # the linear forms' columns, each filled: one pooled noise sd, df n - p for the mean and the PI
    assert list(sf.columns) == ["mean", "mean_se", "mean_df", "mean_ci_lower", "mean_ci_upper", "obs_sd", "pi_df",
                                "obs_ci_lower", "obs_ci_upper", "pi_note"]
    np.testing.assert_allclose(sf.obs_sd, np.sqrt(res.scale), rtol=1e-12)
    assert (sf.mean_df == C.size - 3).all() and (sf.pi_df == C.size - 3).all() and (sf.pi_note == "").all()
    with pytest.raises(AnalysisError, match=r"^method='bootstrap' is implemented for the linear-in-parameter forms "
                                            r"\(log-linear, linear, power\), not 'saturating': use method='analytic'$"):
        res.get_prediction(new).summary_frame(0.05, method="bootstrap")
    with pytest.raises(AnalysisError, match=r"^unknown interval method 'exact': expected one of analytic, bootstrap$"):
        res.get_prediction(new).summary_frame(0.05, method="exact")


def _huber_loss(r, d):
    a = np.abs(r)
    return np.where(a <= d, r * r / 2, d * a - d * d / 2).sum()


def test_profile_bounds_are_where_the_drop_in_dispersion_reaches_the_f_quantile():
    """At each reported bound, an independent profile (Nelder-Mead over the other two parameters of the Huber
    loss written here) gives 2 (Q(bound) - Q_min) / lambda = F(1, n - 3; 0.95), lambda = K^2 (sum psi^2 / (n-3))
    / mean(psi') by hand."""
    rng = np.random.default_rng(8)
    Cr = np.repeat(C, 2)
    y = _law([E, A, ALPHA], Cr) + rng.normal(0, 0.02, Cr.size)
    res = fit(_df(y, Cr), form="saturating")
    assert res.identified
    theta, d, n = res.params.to_numpy(), res._sat.huber_delta, Cr.size
    r = y - _law(theta, Cr)
    psi, dpsi = np.clip(r, -d, d), (np.abs(r) <= d).astype(float)
    K = 1 + 3 / n * dpsi.var() / dpsi.mean() ** 2
    lam = K ** 2 * (psi @ psi / (n - 3)) / dpsi.mean()
    q_min = _huber_loss(r, d)
    ci = res.conf_int(0.05).to_numpy()
    target = stats.f.ppf(0.95, 1, n - 3)
    for j in range(3):
        for b in ci[j]:
            free = [k for k in range(3) if k != j]

            def loss(phi, j=j, b=b, free=free):
                t = np.empty(3)
                t[j], t[free] = b, phi
                return _huber_loss(y - _law(t, Cr), d)
            best = min((optimize.minimize(loss, theta[free] * f, method="Nelder-Mead",
                                          options={"xatol": 1e-12, "fatol": 1e-16, "maxiter": 20_000})
                        for f in (1.0, 1.01, 0.99)), key=lambda s: s.fun)
            assert 2 * (best.fun - q_min) / lam == pytest.approx(target, rel=2e-3), (j, b)
        assert ci[j, 0] < theta[j] < ci[j, 1]


def test_profile_intervals_are_wald_t_intervals_when_the_loss_is_quadratic():
    """Squared-loss data (every residual inside the threshold) with tiny noise: the law is linear over the
    interval and the loss quadratic, so the profile interval is the estimate -+ t_{n-3} bse."""
    Cr, y, e = _squared_loss_data(scale=1e-6)
    res = fit(_df(y, Cr), form="saturating")
    ci = res.conf_int(0.10).to_numpy()
    half = stats.t.ppf(0.95, Cr.size - 3) * res.bse.to_numpy()
    np.testing.assert_allclose(ci[:, 1] - res.params, half, rtol=1e-3)
    np.testing.assert_allclose(res.params - ci[:, 0], half, rtol=1e-3)


def test_huber_regression_is_statsmodels_rlm_with_the_same_threshold():
    """The inner solver (E, A' for fixed alpha; one column for the profiles) against statsmodels RLM's IRLS
    with HuberT at the same threshold and a fixed scale."""
    import statsmodels.api as sm

    from analysis.saturating import _huber_lin

    rng = np.random.default_rng(12)
    u = np.repeat(np.geomspace(0.01, 100, 9), 2)
    X2 = np.column_stack([np.ones_like(u), u ** -0.3])
    y = X2 @ [0.5, 2.0] + rng.standard_t(2, u.size) * 0.02
    delta = 0.015
    for X in (X2, X2[:, 1:]):
        rlm = sm.RLM(y, X, M=sm.robust.norms.HuberT(t=1.0)).fit(start_scale=delta, update_scale=False,
                                                                 conv="coefs", tol=1e-14, maxiter=10_000)
        Q, b = _huber_lin(X[None], y[None], delta)
        np.testing.assert_allclose(b[0], rlm.params, rtol=1e-7)
        assert Q[0] == pytest.approx(_huber_loss(y - X @ rlm.params, delta), rel=1e-10)
        assert (np.abs(y - X @ b[0]) > delta).sum() >= 3             # the premise: the Huber part matters


def test_refit_of_a_fold_is_the_huber_optimum_of_its_rows():
    """``refit`` (cross-validation folds) starts from the full fit: on all rows it returns the full fit, on a
    fold the minimum of the fold's Huber loss at the full fit's threshold (an independent Nelder-Mead)."""
    from analysis.saturating import fit_saturating, refit

    rng = np.random.default_rng(13)
    y = _law([E, A, ALPHA], C) + rng.normal(0, 0.01, C.size)
    f = fit_saturating(C, y)
    np.testing.assert_allclose(refit(f, C, y), f.params, rtol=1e-6)
    keep = np.arange(C.size) != 4
    got = refit(f, C[keep], y[keep])
    d = f.huber_delta

    def loss(t):
        return _huber_loss(y[keep] - _law(t, C[keep]), d)
    ref = optimize.minimize(loss, got * 1.01, method="Nelder-Mead",
                            options={"xatol": 1e-12, "fatol": 1e-18, "maxiter": 40_000})
    assert loss(got) <= ref.fun * (1 + 1e-9)
    np.testing.assert_allclose(got, ref.x, rtol=1e-4)
    assert not np.allclose(got, f.params, rtol=1e-4)                  # the fold moved the fit


def test_threshold_is_the_df_corrected_mad_of_the_residuals():
    """On the squared-loss data the residuals at every round are e: delta = 2 x 1.4826 MAD(e) sqrt(n / (n - 3))."""
    Cr, y, e = _squared_loss_data()
    res = fit(_df(y, Cr), form="saturating")
    mad = np.median(np.abs(e - np.median(e)))
    assert res._sat.huber_delta == pytest.approx(2.0 * 1.4826 * mad * np.sqrt(Cr.size / (Cr.size - 3)), rel=1e-7)


def test_condition_number_and_runoff_by_hand():
    """cond: of J'J with unit-norm columns in (E, A', alpha), A' = A C0^-alpha (J by central differences);
    runoff: |E - median fitted| / range of the fitted curve. (C here is not symmetric about C0 in log C,
    where u^-alpha and u^alpha would take the same values.)"""
    C = np.append(np.geomspace(1e5, 1e9, 9), 3e5)        # not symmetric in log C about C0
    rng = np.random.default_rng(14)
    y = _law([E, 6.0, ALPHA], C) + rng.normal(0, 0.001, C.size)    # A' = 6 C0^-0.35 ~ 0.03: small columns too
    res = fit(_df(y, C), form="saturating")
    sat = res._sat
    C0 = np.exp(np.log(C).mean())
    E_, A_, al = res.params.to_numpy()
    theta = np.array([E_, A_ * C0 ** -al, al])

    def law_u(t):
        return t[0] + t[1] * (C / C0) ** -t[2]
    cols = []
    for j in range(3):
        h = 1e-6 * abs(theta[j])
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        cols.append((law_u(tp) - law_u(tm)) / (2 * h))
    J = np.column_stack(cols)
    J /= np.linalg.norm(J, axis=0)
    assert sat.cond == pytest.approx(np.linalg.cond(J) ** 2, rel=1e-5)
    fitted = _law(res.params.to_numpy(), C)
    assert sat.runoff == pytest.approx(abs(E_ - np.median(fitted)) / np.ptp(fitted), rel=1e-9)


def test_each_cause_of_non_identification_is_named():
    res = fit(_df(40 - 2 * np.log10(CL), CL), form="saturating")           # exactly log-linear: alpha -> 0
    text = " | ".join(res.warnings)
    assert "smallest value searched" in text and "condition number" in text and "runs off" in text
    assert res._sat.cond > 1e12 and res._sat.runoff > 20
    step = np.where(C == C[0], 1.0, 0.0)                                   # a step at the smallest capacity
    res = fit(_df(step), form="saturating")
    assert not res.identified and any("largest value searched" in w for w in res.warnings)
    y = 0.5 + 3 * CS ** -0.3 + np.random.default_rng(4).normal(0, 0.02, CS.size)    # curved, but not enough
    res = fit(_df(y, CS), form="saturating")
    assert res.identified is False and res._sat.cond < 1e4 and res._sat.runoff < 20
    assert [w.split("'")[0] for w in res.warnings] == ["E", "alpha"]
    assert all("profile interval does not close below" in w for w in res.warnings)


@pytest.mark.parametrize("sign", [1, -1])
def test_profile_search_limits(sign):
    """Where a profile that never rises is given up: alpha over the grid's ends (FLAT / ln(Cmax/Cmin) to 10),
    E within 100 fitted-curve ranges, A within a factor 1e6 toward 0 and away from it (sign kept)."""
    from analysis.saturating import A_SEARCH, ALPHA_MAX, E_SEARCH, FLAT

    C = np.append(np.geomspace(1e5, 1e9, 9), 3e5)    # not symmetric in log C about C0
    rng = np.random.default_rng(15)
    y = sign * (A * C ** -ALPHA) + E + rng.normal(0, 0.01, C.size)      # sign -1: a rising metric, A < 0
    sat = fit(_df(y, C), form="saturating")._sat
    E_, A_, _ = sat.params
    assert np.sign(A_) == sign
    np.testing.assert_allclose([sat._limit(2, -1), sat._limit(2, 1)], [FLAT / np.log(C.max() / C.min()), ALPHA_MAX],
                               rtol=1e-12)
    span = np.ptp(_law(sat.params, C))
    np.testing.assert_allclose([sat._limit(0, -1), sat._limit(0, 1)], [E_ - E_SEARCH * span, E_ + E_SEARCH * span],
                               rtol=1e-9)
    lims = [sat._limit(1, -1), sat._limit(1, 1)]
    np.testing.assert_allclose(lims, sorted([A_ / A_SEARCH, A_ * A_SEARCH]), rtol=1e-12)


def test_an_exact_fit_has_zero_width_profiles():
    """lambda = 0 (no scatter): any departure from the optimum is infinitely unlikely, none is not."""
    rng = np.random.default_rng(16)
    sat = fit(_df(_law([E, A, ALPHA], C) + rng.normal(0, 0.01, C.size)), form="saturating")._sat
    sat.lam, sat._memo = 0.0, {}
    sat.loss = sat.profile(2, sat.params[2])           # the optimum's own loss, as the profile computes it
    assert sat._root(2, sat.params[2] * 1.1) == np.inf
    assert sat._root(2, sat.params[2]) == 0.0


def test_threshold_without_scatter():
    """More than half the residuals exactly 0 (MAD 0): the threshold is 1e-6 of y's sd (1e-18 for constant y)."""
    from analysis.saturating import _threshold

    y = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert _threshold(np.array([0.0, 0.0, 0.0, 0.1, -0.2]), y) == pytest.approx(1e-6 * np.std(y), rel=1e-12)
    assert _threshold(np.zeros(5), np.ones(5)) == pytest.approx(1e-18, rel=1e-12)
    r = np.array([0.0, 0.0, 0.1, 0.3, -0.2])
    assert _threshold(r, y) == pytest.approx(2.0 * 1.4826 * 0.1 * np.sqrt(5 / 2), rel=1e-12)


@pytest.mark.parametrize("alpha, warned", [("first", True), ("1.2 first", False), ("last", True),
                                           ("0.9 last", False)])
def test_alpha_at_the_ends_of_the_search_is_named(alpha, warned):
    """The alpha-at-a-bound causes fire at the searched range's ends only (the fit's inference on a given
    optimum: E, A', alpha)."""
    from analysis.saturating import _alpha_grid, _inference

    C0 = np.exp(np.log(C).mean())
    u = C / C0
    grid = _alpha_grid(u)
    a = {"first": grid[0], "1.2 first": 1.2 * grid[0], "last": grid[-1], "0.9 last": 0.9 * grid[-1]}[alpha]
    theta = np.array([0.5, 0.3, a])
    y = _resid(theta, u) + np.random.default_rng(17).normal(0, 0.01, C.size)
    res = _inference(theta, C0, u, y, 0.02, grid)
    text = " | ".join(res.warnings)
    assert (("smallest value searched" in text) or ("largest value searched" in text)) == warned


def _resid(theta, u):
    return theta[0] + theta[1] * u ** -theta[2]


def test_the_alpha_grid_is_searched_in_chunks_the_same(monkeypatch):
    """Large tables evaluate the alpha grid a few alphas at a time (BATCH): the same fit and intervals."""
    import analysis.saturating as sat_mod

    rng = np.random.default_rng(18)
    y = _law([E, A, ALPHA], C) + rng.normal(0, 0.01, C.size)
    whole = fit(_df(y), form="saturating")
    for batch in (20, 1):                         # 2 alphas at a time for these 9 rows; then one
        monkeypatch.setattr(sat_mod, "BATCH", batch)
        chunked = fit(_df(y), form="saturating")
        np.testing.assert_allclose(chunked.params, whole.params, rtol=1e-9)
        np.testing.assert_allclose(chunked.conf_int(0.05), whole.conf_int(0.05), rtol=1e-6)


# --- the contract, fuzzed ---------------------------------------------------------------------------------------

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(m=st.integers(4, 9), seeds=st.integers(1, 3), lo=st.floats(1.0, 1e6), decades=st.floats(0.5, 6),
       E_=st.floats(-5, 5), A_=st.floats(-50, 50), alpha=st.floats(0.0, 2.0), noise=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_any_table_gets_a_verdict_and_honest_intervals(m, seeds, lo, decades, E_, A_, alpha, noise, seed):
    """Whatever the curve (flat, steep, rising, falling, noiseless or not): a bool verdict, warnings iff not
    identified, intervals around the estimate when identified and none otherwise, strict JSON out."""
    import json

    from analysis.cli import json_ready

    Cr = np.repeat(np.geomspace(lo, lo * 10 ** decades, m), seeds)
    y = E_ + A_ * (Cr / lo) ** -alpha + np.random.default_rng(seed).normal(0, noise, Cr.size)
    assume(np.ptp(y) > 1e-9 * max(np.abs(y).max(), 1.0))     # constant y: issue 13 part 6's one-line error
    res = fit(_df(y, Cr), form="saturating")
    assert isinstance(res.identified, bool) and (res.identified == (res.warnings == []))
    ci = res.conf_int(0.05).to_numpy()
    if res.identified:
        assert np.isfinite(res.params).all()
        assert ((ci[:, 0] <= res.params + 1e-9 * np.abs(res.params)) |
                np.isnan(ci[:, 0])).all()
        assert ((res.params - 1e-9 * np.abs(res.params) <= ci[:, 1]) | np.isnan(ci[:, 1])).all()
    else:
        assert np.isnan(ci).all() and np.isnan(res.bse).all()
    json.dumps(json_ready(res.to_dict()), allow_nan=False)
    assert len(res.summary().splitlines()) > 5
