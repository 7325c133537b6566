"""Linear-in-parameters laws against independent references: numpy lstsq, closed forms, statsmodels."""

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
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


def test_against_direct_statsmodels_on_log10(loglinear_df):
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    ref = sm.OLS(y, sm.add_constant(np.log10(C))).fit()
    res = fit(loglinear_df, cov_type="nonrobust")
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.conf_int(0.1), ref.conf_int(0.1), rtol=1e-10)
    assert (res.aic, res.bic) == pytest.approx((ref.aic, ref.bic), rel=1e-10)


def test_power_law_on_logs():
    C = np.geomspace(1e6, 1e9, 7)
    y = np.exp(2.0) * C ** -0.3 * np.exp(np.random.default_rng(1).normal(0, 0.02, 7))
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="power")
    beta, *_ = np.linalg.lstsq(np.column_stack([np.ones(7), np.log(C)]), np.log(y), rcond=None)
    np.testing.assert_allclose(res.params, beta, rtol=1e-9)
    np.testing.assert_allclose(res.predict(C), np.exp(beta[0]) * C ** beta[1], rtol=1e-9)
    sf = res.get_prediction([1e10]).summary_frame()
    assert sf.mean_ci_lower.iloc[0] < sf["mean"].iloc[0] < sf.mean_ci_upper.iloc[0]


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
    df = loglinear_df.copy()
    df.loc[df.params == df.params.max(), "rfid"] += np.array([0.3, -0.3, 0.0])  # one noisy capacity
    var = fgls_variance(df.params, df.rfid)      # feasible GLS: the noise model's variance, not each capacity's own
    ref = sm.WLS(df.rfid.to_numpy(), sm.add_constant(np.log10(df.params.to_numpy())), weights=1 / var).fit()
    res = fit(df, weights="seed-variance", cov_type="nonrobust")
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-9)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-7)
    assert res.to_dict()["weights"] == "seed-variance"


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
    with pytest.raises(AnalysisError, match="non-positive"):
        res.get_prediction([-1.0])
