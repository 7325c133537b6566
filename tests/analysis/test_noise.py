"""The noise model (log variance linear in log capacity) and the PI it gives, against closed forms,
weighted least squares by hand and Monte Carlo."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import fit, noise
from analysis.fit import NO_NOISE_MODEL


def test_log_chi2_moments_closed_form_and_simulation():
    m, v = noise.log_chi2_moments(1.0)
    assert m == pytest.approx(-1.2703628454614782, rel=1e-12)   # digamma(1/2) + log 2 = -gamma - log 2 ... + log 2
    assert v == pytest.approx(math.pi ** 2 / 2, rel=1e-12)
    rng = np.random.default_rng(0)
    for nu in (2, 5):
        draws = np.log(rng.chisquare(nu, 400_000) / nu)
        m, v = noise.log_chi2_moments(nu)
        assert m == pytest.approx(draws.mean(), abs=0.01) and v == pytest.approx(draws.var(), rel=0.02)


def test_fit_is_wls_of_bias_corrected_log_variances():
    rng = np.random.default_rng(1)
    caps = np.geomspace(1e4, 1e8, 6)
    seeds = np.array([2, 3, 4, 2, 5, 3])
    C = np.repeat(caps, seeds)
    y = rng.normal(0, 1, C.size) * np.exp(0.1 * np.log10(C))
    model = noise.fit(C, y)
    s2 = np.array([y[C == c].var(ddof=1) for c in caps])
    nu = seeds - 1.0
    from scipy.special import digamma, polygamma
    z = np.log(s2) - digamma(nu / 2) + np.log(nu / 2)
    W = np.diag(1 / polygamma(1, nu / 2))
    Z = np.column_stack([np.ones(6), np.log10(caps)])
    cov = np.linalg.inv(Z.T @ W @ Z)
    np.testing.assert_allclose(model.gamma, cov @ Z.T @ W @ z, rtol=1e-10)
    np.testing.assert_allclose(model.cov, cov, rtol=1e-10)
    m, v = model.log_var([1e9])
    z0 = np.array([1.0, 9.0])
    assert (m[0], v[0]) == pytest.approx((z0 @ model.gamma, z0 @ cov @ z0), rel=1e-12)


def test_single_rows_use_their_leverage_adjusted_ols_residual():
    C = np.geomspace(1e4, 1e8, 5)
    y = np.array([1.0, 0.3, -0.5, -1.1, -1.7])
    X = np.column_stack([np.ones(5), np.log10(C)])
    H = X @ np.linalg.inv(X.T @ X) @ X.T
    e = y - H @ y
    model = noise.fit(C, y)
    z = np.log(e ** 2 / (1 - np.diag(H))) + 1.2703628454614782
    g = np.linalg.lstsq(X, z, rcond=None)[0]      # equal weights pi^2/2: plain least squares
    np.testing.assert_allclose(model.gamma, g, rtol=1e-9)
    np.testing.assert_allclose(model.cov, math.pi ** 2 / 2 * np.linalg.inv(X.T @ X), rtol=1e-10)


def test_mixed_designs_take_pure_error_where_seeds_repeat_and_residuals_elsewhere():
    from scipy.special import digamma, polygamma
    rng = np.random.default_rng(12)
    caps = np.geomspace(1e4, 1e8, 5)
    seeds = np.array([1, 3, 1, 2, 1])
    C = np.repeat(caps, seeds)
    y = 3 - 0.5 * np.log10(C) + rng.normal(0, 0.3, C.size)
    X = np.column_stack([np.ones(C.size), np.log10(C)])
    H = X @ np.linalg.inv(X.T @ X) @ X.T
    e = y - H @ y
    s2, nu = [], []
    for c, k in zip(caps, seeds):
        sel = C == c
        if k > 1:
            s2.append(y[sel].var(ddof=1))
            nu.append(k - 1.0)
        else:
            s2.append(e[sel][0] ** 2 / (1 - H[sel, sel][0]))
            nu.append(1.0)
    s2, nu = np.array(s2), np.array(nu)
    z = np.log(s2) - digamma(nu / 2) + np.log(nu / 2)
    sw = 1 / np.sqrt(polygamma(1, nu / 2))
    Z = np.column_stack([np.ones(5), np.log10(caps)])
    g = np.linalg.lstsq(Z * sw[:, None], z * sw, rcond=None)[0]
    np.testing.assert_allclose(noise.fit(C, y).gamma, g, rtol=1e-10)


def test_recovers_a_doubling_sd_from_many_seeds():
    rng = np.random.default_rng(2)
    caps = np.geomspace(1e4, 1e7, 6)
    C = np.repeat(caps, 400)
    sd = 0.5 * (1 + (np.log10(C) - 4) / 3)
    model = noise.fit(C, rng.normal(0, sd))
    np.testing.assert_allclose(model.sd(caps), 0.5 * (1 + (np.log10(caps) - 4) / 3), rtol=0.1)
    assert (model.effective_df(caps) > 100).all()


def test_no_model_under_three_capacities_with_a_variance():
    C = np.repeat([1e4, 1e5, 1e6], 2)
    assert noise.fit(C, np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.5])) is None      # two capacities' seeds agree
    model = noise.fit(C, np.array([1.0, 1.2, 2.0, 2.1, 3.0, 3.5]))                # three: just enough
    assert model is not None and np.isfinite(model.gamma).all()


def test_effective_df_inverts_trigamma():
    from scipy.special import polygamma
    for nu in (0.5, 1.0, 3.0, 40.0):
        assert noise._df_of_log_variance(float(polygamma(1, nu / 2))) == pytest.approx(nu, rel=1e-8)
    assert noise._df_of_log_variance(0.0) == math.inf
    assert noise._df_of_log_variance(1e-13) == math.inf          # beyond nu = 1e12: as good as known
    assert noise._df_of_log_variance(1e13) == 1e-6               # below nu = 1e-6: the floor


def test_interval_limits_closed_forms():
    z = stats.norm.ppf(0.975)
    lo, hi = noise.interval([1.0], [0.0], [math.inf], [math.log(4.0)], [0.0], 0.05)  # sigma 2, nothing else
    assert (lo[0], hi[0]) == pytest.approx((1 - 2 * z, 1 + 2 * z), rel=1e-9)
    lo, hi = noise.interval([0.0], [1.5], [math.inf], [math.log(4.0)], [0.0], 0.05)  # + a known mean se
    assert hi[0] == pytest.approx(z * math.sqrt(4 + 1.5 ** 2), rel=1e-9)
    lo, hi = noise.interval([0.0], [1.0], [4.0], [math.log(1e-12)], [0.0], 0.05)     # only the mean: t(4)
    assert hi[0] == pytest.approx(stats.t.ppf(0.975, 4), rel=0.01)


def test_interval_integrates_the_variance_uncertainty_as_monte_carlo_does():
    rng = np.random.default_rng(4)
    m, v, se, df = math.log(0.8), 1.3, 0.4, 3.0
    N = 2_000_000
    sig = np.exp((m + math.sqrt(v) * rng.standard_normal(N)) / 2)
    d = sig * rng.standard_normal(N) + se * rng.standard_normal(N) / np.sqrt(rng.chisquare(df, N) / df)
    q = np.quantile(np.abs(d), 0.9)
    lo, hi = noise.interval([10.0], [se], [df], [m], [v], 0.1)
    assert hi[0] - 10 == pytest.approx(q, rel=0.02) and 10 - lo[0] == pytest.approx(q, rel=0.02)


def test_summary_frame_pi_from_the_noise_model_with_its_note():
    rng = np.random.default_rng(7)
    C = np.geomspace(1e4, 1e7, 6)
    y = 30 - 2 * np.log10(C) + rng.normal(0, 0.5, C.size)
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    sf = res.get_prediction([1e8]).summary_frame(0.05).iloc[0]
    m, v = res.noise.log_var([1e8])
    lo, hi = noise.interval([sf["mean"]], [sf.mean_se], [sf.mean_df], m, v, 0.05)
    assert (sf.obs_ci_lower, sf.obs_ci_upper) == pytest.approx((lo[0], hi[0]), rel=1e-12)
    assert sf.obs_sd == pytest.approx(math.exp(m[0] / 2), rel=1e-12)
    assert sf.pi_df < 2 and "effective df" in sf.pi_note           # one seed per capacity: few df, said so
    rep = np.repeat(C, 8)
    res8 = fit(pd.DataFrame({"params": rep, "rfid": 30 - 2 * np.log10(rep) + rng.normal(0, 0.5, rep.size)}))
    assert res8.get_prediction([1e8]).summary_frame().iloc[0].pi_note == ""


def test_no_noise_model_gives_an_unbounded_pi_and_says_so():
    C = np.repeat([1e4, 1e5, 1e6], 2)
    res = fit(pd.DataFrame({"params": C, "rfid": [5.0, 5.0, 4.0, 4.0, 3.1, 2.9]}))
    sf = res.get_prediction([1e7]).summary_frame().iloc[0]
    assert sf.obs_ci_lower == -math.inf and sf.obs_ci_upper == math.inf and sf.pi_note == NO_NOISE_MODEL
    assert math.isnan(sf.obs_sd) and math.isnan(sf.pi_df)


def test_nonrobust_pi_is_the_classical_one_with_its_pooled_sd_and_df():
    rng = np.random.default_rng(3)
    C = np.repeat(np.geomspace(1e4, 1e7, 5), 2)
    y = 30 - 2 * np.log10(C) + rng.normal(0, 0.5, C.size)
    res = fit(pd.DataFrame({"params": C, "rfid": y}), cov_type="nonrobust")
    sf = res.get_prediction([1e8]).summary_frame(0.1).iloc[0]
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    b, ssr, *_ = np.linalg.lstsq(X, y, rcond=None)
    s2 = ssr[0] / (C.size - 2)
    x0 = np.array([1.0, 8.0])
    half = stats.t.ppf(0.95, C.size - 2) * math.sqrt(s2 * (1 + x0 @ np.linalg.inv(X.T @ X) @ x0))
    assert (sf.obs_ci_lower, sf.obs_ci_upper) == pytest.approx((x0 @ b - half, x0 @ b + half), rel=1e-10)
    assert sf.obs_sd == pytest.approx(math.sqrt(s2), rel=1e-12) and sf.pi_df == C.size - 2


def test_power_pi_maps_back_by_exp():
    rng = np.random.default_rng(9)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), 3)
    y = 40 * C ** -0.1 * np.exp(rng.normal(0, 0.02, C.size))
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="power")
    sf = res.get_prediction([1e8]).summary_frame().iloc[0]
    m, v = res.noise.log_var([1e8])
    mean_log = res.params["a"] + res.params["b"] * math.log(1e8)
    se_log = sf.mean_se / sf["mean"]
    lo, hi = noise.interval([mean_log], [se_log], [sf.mean_df], m, v, 0.05)
    assert (sf.obs_ci_lower, sf.obs_ci_upper) == pytest.approx((math.exp(lo[0]), math.exp(hi[0])), rel=1e-10)
    assert sf["mean"] == pytest.approx(math.exp(mean_log), rel=1e-12)
    assert sf.obs_sd == pytest.approx(sf["mean"] * math.exp(m[0] / 2), rel=1e-12)   # delta method: y sd(ln y)


def test_interval_of_many_capacities_equals_each_alone():
    """The blocks of 256 rows the Newton iteration runs at once give each row the root it has alone
    (more rows than a block; finite and infinite df mixed); no rows, no bounds; a variance that
    rounding left at -0 or -1e-17 counts as 0."""
    rng = np.random.default_rng(2)
    n = 300
    mean, se = rng.normal(0, 3, n), rng.uniform(0.0, 2.0, n)
    df = np.where(rng.random(n) < 0.3, math.inf, rng.uniform(1.5, 30, n))
    m, v = rng.normal(0, 1, n), rng.uniform(0, 2, n)
    lo, hi = noise.interval(mean, se, df, m, v, 0.1)
    alone = np.array([noise.interval(mean[i], se[i], df[i], m[i], v[i], 0.1) for i in range(n)])[:, :, 0]
    np.testing.assert_allclose(np.column_stack([lo, hi]), alone, rtol=1e-10, atol=1e-12)
    e_lo, e_hi = noise.interval([], [], [], [], [], 0.1)
    assert e_lo.shape == e_hi.shape == (0,)
    for tiny in (-0.0, -1e-17):
        assert noise.interval(0.0, 1.0, 5.0, 0.3, tiny, 0.1) == noise.interval(0.0, 1.0, 5.0, 0.3, 0.0, 0.1)
