"""Linear-in-parameters laws against independent references: numpy lstsq, closed forms, NIST StRD's certified
values (statsmodels, which the forms are fitted with, is never the reference)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import AnalysisError, fit
from helpers import fgls_variance


def _lstsq_reference(x, y):
    """OLS by hand: params, bse, R², adj R² from np.linalg.lstsq and textbook formulas."""
    X = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    n, p = X.shape
    s2 = resid @ resid / (n - p)
    bse = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
    r2 = 1 - resid @ resid / ((y - y.mean()) ** 2).sum()
    return beta, bse, r2, 1 - (1 - r2) * (n - 1) / (n - p), s2


@pytest.mark.parametrize("form, transform", [("log-linear", np.log10), ("linear", lambda c: c / 1.0)])
def test_params_bse_r2_against_lstsq(loglinear_df, form, transform):
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    res = fit(loglinear_df, form=form, cov_type="nonrobust")  # the classical errors (CR2: test_robust.py)
    beta, bse, r2, r2_adj, _ = _lstsq_reference(transform(C), y)
    np.testing.assert_allclose(res.params[["a", "b"]], beta, rtol=1e-9)
    np.testing.assert_allclose(res.bse[["a", "b"]], bse, rtol=1e-7)
    assert res.rsquared == pytest.approx(r2, rel=1e-9)
    assert res.rsquared_adj == pytest.approx(r2_adj, rel=1e-9)
    assert res.nobs == len(y)
    t = stats.t.ppf(0.975, len(y) - 2)
    ci = res.conf_int(0.05)
    np.testing.assert_allclose(ci["lower"], beta - t * bse, rtol=1e-7)
    np.testing.assert_allclose(ci["upper"], beta + t * bse, rtol=1e-7)


def _gaussian_aic_bic(ssr, n, p):
    """AIC and BIC of a least-squares fit with Gaussian errors, sigma^2 at its MLE SSR / n."""
    llf = -n / 2 * (np.log(2 * np.pi) + np.log(ssr / n) + 1)
    return -2 * llf + 2 * p, -2 * llf + p * np.log(n)


def test_intervals_aic_bic_by_explicit_normal_equations(loglinear_df):
    """beta = (X'X)^-1 X'y, cov = s^2 (X'X)^-1 with s^2 = SSR / (n - 2), t_{n-2} intervals; AIC and BIC of the
    Gaussian likelihood at sigma^2 = SSR / n."""
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    XtX_inv = np.linalg.inv(X.T @ X)
    beta = XtX_inv @ X.T @ y
    r = y - X @ beta
    n = len(y)
    s2 = r @ r / (n - 2)
    se = np.sqrt(np.diag(s2 * XtX_inv))
    res = fit(loglinear_df, cov_type="nonrobust")      # the classical errors (the default's: test_robust.py)
    np.testing.assert_allclose(res.params, beta, rtol=1e-10)
    np.testing.assert_allclose(res.cov_params.to_numpy(), s2 * XtX_inv, rtol=1e-8)
    assert res.scale == pytest.approx(s2, rel=1e-10) and res.ssr == pytest.approx(r @ r, rel=1e-10)
    assert res.df_resid == n - 2
    t = stats.t.ppf(0.95, n - 2)
    np.testing.assert_allclose(res.conf_int(0.1).to_numpy(), np.column_stack([beta - t * se, beta + t * se]),
                               rtol=1e-8)
    np.testing.assert_allclose(res.tvalues, beta / se, rtol=1e-8)
    np.testing.assert_allclose(res.pvalues, 2 * stats.t.sf(np.abs(beta / se), n - 2), rtol=1e-6)
    assert (res.aic, res.bic) == pytest.approx(_gaussian_aic_bic(r @ r, n, 2), rel=1e-10)


# NIST StRD, Norris (https://www.itl.nist.gov/div898/strd/lls/data/Norris.shtml): y, x, 36 observations, and the
# certified values of y = B0 + B1 x, typed in from NIST's page.
NORRIS_Y = [0.1, 338.8, 118.1, 888.0, 9.2, 228.1, 668.5, 998.5, 449.1, 778.9, 559.2, 0.3, 0.1, 778.1, 668.8,
            339.3, 448.9, 10.8, 557.7, 228.3, 998.0, 888.8, 119.6, 0.3, 0.6, 557.6, 339.3, 888.0, 998.5, 778.9,
            10.2, 117.6, 228.9, 668.4, 449.2, 0.2]
NORRIS_X = [0.2, 337.4, 118.2, 884.6, 10.1, 226.5, 666.3, 996.3, 448.6, 777.0, 558.2, 0.4, 0.6, 775.5, 666.9,
            338.0, 447.5, 11.6, 556.0, 228.1, 995.8, 887.6, 120.2, 0.3, 0.3, 556.8, 339.1, 887.2, 999.0, 779.0,
            11.1, 118.3, 229.2, 669.1, 448.9, 0.5]
NORRIS = {"B": [-0.262323073774029, 1.00211681802045], "sd": [0.232818234301152, 0.429796848199937E-03],
          "residual_sd": 0.884796396144373, "r2": 0.999993745883712, "ssr": 26.6173985294224, "df": 34}


def test_norris_against_nist_certified_values():
    """The linear form on NIST's Norris data: estimates, their standard deviations, the residual standard
    deviation, R² and the residual sum of squares as certified (15 digits; double precision keeps 10 and more);
    the t intervals and AIC / BIC follow from them by the closed forms."""
    res = fit(pd.DataFrame({"x": NORRIS_X, "y": NORRIS_Y}), x="x", y="y", form="linear", cov_type="nonrobust")
    np.testing.assert_allclose(res.params, NORRIS["B"], rtol=1e-10)
    np.testing.assert_allclose(res.bse, NORRIS["sd"], rtol=1e-9)
    assert np.sqrt(res.scale) == pytest.approx(NORRIS["residual_sd"], rel=1e-10)
    assert res.rsquared == pytest.approx(NORRIS["r2"], rel=1e-12)
    assert res.ssr == pytest.approx(NORRIS["ssr"], rel=1e-10)
    assert (res.nobs, res.df_resid) == (36, NORRIS["df"])
    assert res.rsquared_adj == pytest.approx(1 - (1 - NORRIS["r2"]) * 35 / 34, rel=1e-12)
    t = stats.t.ppf(0.975, NORRIS["df"])
    B, sd = np.array(NORRIS["B"]), np.array(NORRIS["sd"])
    np.testing.assert_allclose(res.conf_int(0.05).to_numpy(), np.column_stack([B - t * sd, B + t * sd]),
                               rtol=1e-9)
    assert (res.aic, res.bic) == pytest.approx(_gaussian_aic_bic(NORRIS["ssr"], 36, 2), rel=1e-10)


def test_power_law_on_logs():
    """ln y = a + b ln C by least squares; predictions mapped back: mean = exp(a + b ln C0), its se by the delta
    method (the gradient of exp(a + b ln C0) by central differences through s^2 (X'X)^-1), and the intervals the
    exp of ln y's t intervals (closed form)."""
    C = np.geomspace(1e6, 1e9, 7)
    y = np.exp(2.0) * C ** -0.3 * np.exp(np.random.default_rng(1).normal(0, 0.02, 7))
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="power", cov_type="nonrobust")
    X, z = np.column_stack([np.ones(7), np.log(C)]), np.log(y)
    beta, *_ = np.linalg.lstsq(X, z, rcond=None)
    r = z - X @ beta
    s2 = r @ r / 5
    V = s2 * np.linalg.inv(X.T @ X)
    np.testing.assert_allclose(res.params, beta, rtol=1e-9)
    np.testing.assert_allclose(res.bse, np.sqrt(np.diag(V)), rtol=1e-8)
    assert res.rsquared == pytest.approx(1 - r @ r / ((z - z.mean()) ** 2).sum(), rel=1e-10)   # on ln y
    np.testing.assert_allclose(res.predict(C), np.exp(beta[0]) * C ** beta[1], rtol=1e-9)
    C0 = np.array([3e7, 1e10, 1e11])
    sf = res.get_prediction(C0).summary_frame(0.1)
    mean = np.exp(beta[0] + beta[1] * np.log(C0))
    np.testing.assert_allclose(sf["mean"], mean, rtol=1e-9)
    def law(b):
        return np.exp(b[0] + b[1] * np.log(C0))
    h = 1e-6
    grad = np.column_stack([(law(beta + h * e) - law(beta - h * e)) / (2 * h) for e in np.eye(2)])
    np.testing.assert_allclose(sf["mean_se"], np.sqrt(np.einsum("ij,jk,ik->i", grad, V, grad)), rtol=1e-6)
    x0 = np.column_stack([np.ones(3), np.log(C0)])
    se_log = np.sqrt(np.einsum("ij,jk,ik->i", x0, V, x0))
    t = stats.t.ppf(0.95, 5)
    eta = x0 @ beta
    np.testing.assert_allclose(sf["mean_ci_lower"], np.exp(eta - t * se_log), rtol=1e-8)
    np.testing.assert_allclose(sf["mean_ci_upper"], np.exp(eta + t * se_log), rtol=1e-8)
    np.testing.assert_allclose(sf["obs_ci_lower"], np.exp(eta - t * np.sqrt(s2 + se_log ** 2)), rtol=1e-8)
    np.testing.assert_allclose(sf["obs_ci_upper"], np.exp(eta + t * np.sqrt(s2 + se_log ** 2)), rtol=1e-8)


def test_known_law_recovered_within_ci(loglinear_df):
    res = fit(loglinear_df)
    for method in ("analytic", "bootstrap"):
        ci = res.conf_int(0.05, method=method)
        assert ci.loc["a", "lower"] < 5.0 < ci.loc["a", "upper"], method
        assert ci.loc["b", "lower"] < -0.5 < ci.loc["b", "upper"], method


def test_prediction_intervals_closed_form(loglinear_df):
    x, y = np.log10(loglinear_df.params.to_numpy()), loglinear_df.rfid.to_numpy()
    beta, _, _, _, s2 = _lstsq_reference(x, y)
    C0 = np.array([2e8, 5e9])
    x0 = np.log10(C0)
    n, sxx = len(x), ((x - x.mean()) ** 2).sum()
    mean = beta[0] + beta[1] * x0
    se_mean = np.sqrt(s2 * (1 / n + (x0 - x.mean()) ** 2 / sxx))
    se_obs = np.sqrt(s2 * (1 + 1 / n + (x0 - x.mean()) ** 2 / sxx))
    t = stats.t.ppf(0.95, n - 2)
    res = fit(loglinear_df, cov_type="nonrobust")      # the classical intervals (the default's: test_robust.py)
    sf = res.get_prediction(C0).summary_frame(alpha=0.1)
    assert list(sf.columns) == ["mean", "mean_se", "mean_df", "mean_ci_lower", "mean_ci_upper", "obs_sd", "pi_df",
                                "obs_ci_lower", "obs_ci_upper", "pi_note"]
    assert (sf["mean_df"] == n - 2).all() and (sf["pi_note"] == "").all()
    np.testing.assert_allclose(sf["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(res.predict(C0), mean, rtol=1e-9)
    np.testing.assert_allclose(sf["mean_se"], se_mean, rtol=1e-7)
    np.testing.assert_allclose(sf["mean_ci_lower"], mean - t * se_mean, rtol=1e-7)
    np.testing.assert_allclose(sf["obs_ci_upper"], mean + t * se_obs, rtol=1e-7)


def test_seed_variance_weights_are_wls(loglinear_df):
    """WLS by hand with w = 1 / the noise model's variance at each capacity (normalised to mean 1):
    beta = (X'WX)^-1 X'Wy, cov = s_w^2 (X'WX)^-1, s_w^2 = sum w r^2 / (n - 2)."""
    df = loglinear_df.copy()
    df.loc[df.params == df.params.max(), "rfid"] += np.array([0.3, -0.3, 0.0])  # one noisy capacity
    C, y = df.params.to_numpy(), df.rfid.to_numpy()
    w = 1 / fgls_variance(C, y)        # feasible GLS: the noise model's variance, not each capacity's own
    w = w / w.mean()
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    H_inv = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = H_inv @ X.T @ (w * y)
    r = y - X @ beta
    s2 = (w * r * r).sum() / (len(y) - 2)
    res = fit(df, weights="seed-variance", cov_type="nonrobust")
    np.testing.assert_allclose(res.params, beta, rtol=1e-9)
    np.testing.assert_allclose(res.bse, np.sqrt(np.diag(s2 * H_inv)), rtol=1e-7)
    assert res.to_dict()["weights"] == "seed-variance"
    # a new observation has the mean weight: its PI adds s_w^2 / mean(w) to the mean's variance
    C0 = np.array([3e9])
    x0 = np.column_stack([np.ones(1), np.log10(C0)])
    var_mean = np.einsum("ij,jk,ik->i", x0, s2 * H_inv, x0)
    sf = res.get_prediction(C0).summary_frame(0.05)
    t = stats.t.ppf(0.975, len(y) - 2)
    np.testing.assert_allclose(sf["mean_se"], np.sqrt(var_mean), rtol=1e-7)
    np.testing.assert_allclose(sf["obs_ci_upper"] - sf["mean"], t * np.sqrt(var_mean + s2 / w.mean()), rtol=1e-7)



def test_seed_variance_without_a_variance_trend_is_refused(loglinear_df):
    """Seeds repeat at every capacity but agree exactly at all but two: no trend to weight by."""
    df = loglinear_df.copy()
    df["rfid"] = df.groupby("params").rfid.transform("mean")
    big = df.params.nlargest(6).unique()
    df.loc[df.params == big[0], "rfid"] += np.array([0.3, -0.3, 0.0])
    df.loc[df.params == big[1], "rfid"] += np.array([0.1, -0.1, 0.0])
    with pytest.raises(AnalysisError, match="fewer than 3 capacities have seeds that differ, so the noise has no "
                                            "trend to estimate"):
        fit(df, weights="seed-variance")

def test_to_dict_and_summary(loglinear_df):
    res = fit(loglinear_df)
    d = json.loads(json.dumps(res.to_dict(ci_method="bootstrap")))
    for key in ("form", "x", "y", "n", "params", "conf_int", "ci_method", "r2", "r2_adj"):
        assert key in d
    assert set(d["params"]) == {"a", "b"} and d["ci_method"] == "bootstrap" and d["n"] == 24
    assert d["conf_int"]["b"][0] < d["params"]["b"] < d["conf_int"]["b"][1]
    text = res.summary()
    assert "log10" in text and "R-squared" in text and "Lack of fit" in text


def test_auto_picks_the_true_form():
    C = np.geomspace(1e6, 1e9, 8)
    res = fit(pd.DataFrame({"params": C, "rfid": 5.0 - 0.5 * np.log10(C)}), form="auto")
    assert res.form == "log-linear" and res.auto_scores.index[0] == "log-linear"
    res = fit(pd.DataFrame({"params": C, "rfid": 0.5 + 40 * C ** -0.3}), form="auto")
    assert res.form == "saturating"
    assert set(res.auto_scores.index) == {"log-linear", "linear", "power", "saturating"}


@pytest.mark.parametrize("df, kwargs, match", [
    (pd.DataFrame({"params": [1e6, 1e6, 1e7, 1e7], "rfid": [1.0, 1.1, 0.9, 0.8]}), {}, "2 distinct"),
    (pd.DataFrame({"params": [0.0, 1e6, 1e7], "rfid": [1.0, 0.9, 0.8]}), {}, "non-positive"),
    (pd.DataFrame({"params": [1e5, 1e6, 1e7], "rfid": [1.0, 0.0, 0.8]}), {"form": "power"}, "'rfid'"),
    (pd.DataFrame({"params": [1e5, 1e6, 1e7], "rfid": [1.0, 0.9, 0.8]}), {"form": "cubic"}, "unknown form"),
    (pd.DataFrame({"params": [1e5, 1e6, 1e7], "rfid": [1.0, 0.9, 0.8]}), {"weights": "seed-variance"}, "2 seeds"),
    (pd.DataFrame({"params": [1e5, 1e6, 1e7], "rfid": [1.0, 0.9, 0.8]}), {"y": "lpips"}, "'lpips'"),
])
def test_bad_input_is_one_line(df, kwargs, match):
    with pytest.raises(AnalysisError, match=match) as exc:
        fit(df, **kwargs)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_bad_interval_method(loglinear_df):
    with pytest.raises(AnalysisError, match="interval method"):
        fit(loglinear_df).conf_int(method="jackknife")


def test_fit_drops_nan_rows_with_a_warning(loglinear_df):
    df = loglinear_df.copy()
    df.loc[3, "rfid"] = np.nan
    df.loc[5, "params"] = np.inf
    with pytest.warns(UserWarning, match="t3, t5"):
        res = fit(df)
    assert res.nobs == len(df) - 2


def test_case_bootstrap_interval_and_prediction_errors(loglinear_df):
    res = fit(loglinear_df)
    ci = res.conf_int(method="bootstrap", kind="case", B=2000)
    assert ci.loc["b", "lower"] < res.params["b"] < ci.loc["b", "upper"]
    with pytest.raises(AnalysisError, match=r"^column 'params' has a non-positive value \(-1\)"):
        res.get_prediction([-1.0])


def test_a_new_runs_interval_holds_the_interval_of_its_mean():
    # a PI narrower than the mean's CI cannot be right; with a mean's df near 1 (few capacities) the noise
    # model's quadrature once made it so (rFID smoke sweeps: PI [299, 336.4] inside CI [299, 336.5])
    smoke = pd.DataFrame({"params": [7602.0, 9918.0, 14550.0, 23814.0, 42342.0],
                          "rfid": [308.1495109, 309.8846713, 309.9555810, 309.5159604, 310.5081754]})
    rng = np.random.default_rng(7)
    for i in range(61):
        m = int(rng.integers(3, 7))
        C = np.geomspace(1e4, 10 ** rng.uniform(5, 7), m)
        y = 40 - 2 * np.log10(C) + rng.normal(0, 1, m) * np.exp(rng.normal(0, 1.5, m))
        res = fit(smoke if i == 0 else pd.DataFrame({"params": C, "rfid": y}))
        sf = res.get_prediction([1e8, 1e4, 3e7]).summary_frame(0.05)
        assert (sf.obs_ci_lower <= sf.mean_ci_lower + 1e-12).all()
        assert (sf.obs_ci_upper >= sf.mean_ci_upper - 1e-12).all()
