"""The measurement-error assessment of a fit, against numpy / scipy computations by hand and a simulation."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from analysis import fit, schema
from analysis.cli import build_parser, run_command
from helpers import fgls_variance

A, B = 40.0, -2.0


def table(se, noise=0.0, caps=(1e4, 1e5, 1e6, 1e7, 1e8), seeds=2, seed=0) -> pd.DataFrame:
    """rfid = A + B log10 C + N(0, se_i^2) + N(0, noise^2), ``seeds`` rows per capacity, se_i given per row."""
    rng = np.random.default_rng(seed)
    C = np.repeat(np.asarray(caps, dtype=float), seeds)
    se = np.broadcast_to(np.asarray(se, dtype=float), C.shape).copy()
    y = A + B * np.log10(C) + rng.normal(0, se) + rng.normal(0, noise, C.size)
    return pd.DataFrame({"trial_id": [f"t{i}" for i in range(C.size)], "params": C, "rfid": y, "rfid_se": se})


def hat_diag(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """diag of W^1/2 X (X'WX)^-1 X' W^1/2, straight from the definition."""
    Xw = np.sqrt(w)[:, None] * X
    return np.diag(Xw @ np.linalg.inv(Xw.T @ Xw) @ Xw.T)


def by_hand(C, yfit, s, w):
    """ratio, chi2 and the between-seeds numbers of a linear law y = a + b log10 C (rows weighted w)."""
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    W = np.diag(w)
    beta = np.linalg.solve(X.T @ W @ X, X.T @ W @ yfit)
    r = yfit - X @ beta
    n, p = len(yfit), 2
    resid_var = float(r @ W @ r) / (n - p)
    meas_var = float(((1 - hat_diag(X, w)) * w * s ** 2).sum()) / (n - p)
    coef = np.polyfit(np.log10(C), yfit, 1, w=1 / s)            # polyfit weights the residuals by 1 / s
    chi2 = float((((yfit - np.polyval(coef, np.log10(C))) / s) ** 2).sum())
    ss_pe = exp_pe = chi2_pe = 0.0
    for c in np.unique(C):
        yy, ss = yfit[C == c], s[C == c]
        ss_pe += ((yy - yy.mean()) ** 2).sum()
        exp_pe += (1 - 1 / len(yy)) * (ss ** 2).sum()
        wm = (yy / ss ** 2).sum() / (1 / ss ** 2).sum()
        chi2_pe += (((yy - wm) / ss) ** 2).sum()
    dof_pe = n - len(np.unique(C))
    return dict(residual_var=resid_var, measurement_var=meas_var, variance_ratio=meas_var / resid_var, chi2=chi2,
                dof=n - p, pvalue=stats.chi2.sf(chi2, n - p),
                seeds=dict(pure_error_var=ss_pe / dof_pe, measurement_var=exp_pe / dof_pe,
                           variance_ratio=exp_pe / ss_pe, chi2=chi2_pe, dof=dof_pe,
                           pvalue=stats.chi2.sf(chi2_pe, dof_pe)))


def check(me, want):
    for key in ("residual_var", "measurement_var", "variance_ratio", "chi2", "pvalue"):
        assert getattr(me, key) == pytest.approx(want[key], rel=1e-8), key
    assert me.dof == want["dof"]
    for key in ("pure_error_var", "measurement_var", "variance_ratio", "chi2", "pvalue"):
        assert getattr(me.between_seeds, key) == pytest.approx(want["seeds"][key], rel=1e-8), key
    assert me.between_seeds.dof == want["seeds"]["dof"]


# --- against computations by hand ------------------------------------------------------------------------------


def test_log_linear_matches_numpy_by_hand():
    se = np.array([0.1, 0.3, 0.2, 0.5, 0.15, 0.4, 0.25, 0.1, 0.3, 0.2])
    df = table(se, noise=0.2)
    me = fit(df).measurement_error()
    C, y = df.params.to_numpy(), df.rfid.to_numpy()
    check(me, by_hand(C, y, se, np.ones_like(y)))
    assert (me.se_column, me.space, me.n) == ("rfid_se", "y", 10)


def test_equal_se_gives_mean_se_squared_and_ratio_times_chi2_equal_to_the_dof():
    """With one se for every row, measurement_var is se^2 and ratio = (n - p) / chi2 (the OLS fit is the chi2 fit)."""
    me = fit(table(0.3, noise=0.5)).measurement_error()
    assert me.measurement_var == pytest.approx(0.09, rel=1e-12)
    assert me.variance_ratio * me.chi2 == pytest.approx(me.dof, rel=1e-10)


def test_power_law_uses_the_delta_method_on_ln_y():
    se = np.array([0.1, 0.3, 0.2, 0.5, 0.15, 0.4, 0.25, 0.1, 0.3, 0.2])
    df = table(se, noise=0.2)
    me = fit(df, form="power").measurement_error()
    C, y = df.params.to_numpy(), df.rfid.to_numpy()
    # ln y = a + b ln C is the same linear model as a + b' log10 C: the hand computation applies on ln y
    check(me, by_hand(C, np.log(y), se / y, np.ones_like(y)))
    assert me.space == "ln y"
    assert "on ln y: se/y" in fit(df, form="power").summary()


def test_seed_variance_weights_whiten_the_ratio_and_leave_chi2_alone():
    se = np.array([0.1, 0.3, 0.2, 0.5, 0.15, 0.4, 0.25, 0.1, 0.3, 0.2])
    df = table(se, noise=0.2)
    C, y = df.params.to_numpy(), df.rfid.to_numpy()
    var = fgls_variance(C, y)
    w = (1 / var) / (1 / var).mean()
    weighted = fit(df, weights="seed-variance").measurement_error()
    check(weighted, by_hand(C, y, se, w))
    assert weighted.chi2 == pytest.approx(fit(df).measurement_error().chi2, rel=1e-12)


def test_saturating_chi2_is_scipy_curve_fit_with_absolute_sigma():
    rng = np.random.default_rng(3)
    C = np.repeat(np.geomspace(1e4, 1e8, 6), 2)
    se = rng.uniform(0.02, 0.08, C.size)
    y = 1.0 + 30 * C ** -0.25 + rng.normal(0, se)
    res = fit(pd.DataFrame({"params": C, "rfid": y, "rfid_se": se}), form="saturating")
    me = res.measurement_error()

    def law(u, E, A, alpha):
        return E + A * u ** -alpha

    u = C / 1e6
    popt, _ = optimize.curve_fit(law, u, y, p0=[1.0, 30 * 1e6 ** -0.25, 0.25], sigma=se, absolute_sigma=True,
                                 maxfev=20_000)
    chi2 = float((((y - law(u, *popt)) / se) ** 2).sum())
    assert me.dof == C.size - 3 and me.chi2 == pytest.approx(chi2, rel=1e-6)
    assert me.residual_var == pytest.approx(res.ssr / (C.size - 3), rel=1e-12)


# --- a simulation: y = a + b log10 C + N(0, se_i^2) ------------------------------------------------------------


def simulate(noise, reps, seed):
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.05, 0.5, 16)                              # one se per row, fixed across replicates
    out = []
    for r in range(reps):
        me = fit(table(se, noise=noise, caps=np.geomspace(1e4, 1e8, 8), seed=seed * 10_000 + r)).measurement_error()
        out.append((me.pvalue, me.measurement_var, me.residual_var, me.between_seeds.pvalue))
    return np.array(out)


def test_measurement_error_alone_gives_uniform_p_values_and_a_ratio_near_one():
    sim = simulate(noise=0.0, reps=400, seed=1)
    p, meas, resid, p_seeds = sim.T
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert stats.kstest(p_seeds, "uniform").pvalue > 0.01
    assert np.ptp(meas) < 1e-12                                  # fixed by the design and the se
    # measurement_var is the expected residual variance: their ratio averages 1 (within 4 standard errors)
    q = resid / meas
    assert abs(q.mean() - 1) < 4 * q.std(ddof=1) / math.sqrt(len(q))
    assert 0.8 < np.median(meas / resid) < 1.3


def test_extra_noise_between_runs_shows_as_a_small_ratio_and_small_p():
    sim = simulate(noise=0.6, reps=100, seed=2)
    p, meas, resid, p_seeds = sim.T
    assert np.median(meas / resid) < 0.25                        # measurement error is a small part of the scatter
    assert np.mean(p < 0.05) > 0.9 and np.mean(p_seeds < 0.05) > 0.8


# --- absent or partial se: nothing claimed ---------------------------------------------------------------------


def test_no_se_column_claims_nothing_and_leaves_the_summary_as_it_was():
    df = table(0.2, noise=0.1)
    res = fit(df.drop(columns="rfid_se"))
    assert res.measurement_error() is None and res.to_dict()["measurement_error"] is None
    assert "Measurement error" not in res.summary()
    with_se = fit(df).summary().splitlines()
    assert res.summary().splitlines() == [ln for ln in with_se if "Measurement error" not in ln
                                          and not ln.startswith("  between seeds")]


@pytest.mark.parametrize("bad", [np.nan, 0.0, np.inf])
def test_a_row_without_a_finite_positive_se_is_named_and_nothing_is_assessed(bad):
    df = table(0.2, noise=0.1)
    df.loc[[3, 7], "rfid_se"] = bad
    res = fit(df)
    assert res.measurement_error() is None and res.to_dict()["measurement_error"] is None
    assert "Measurement error: 2 of 10 fitted rows have no finite positive rfid_se (t3, t7)" in res.summary()


def test_auto_form_carries_the_se_and_the_y_column_names_it():
    df = table(0.2, noise=0.1).rename(columns={"rfid": "psnr", "rfid_se": "psnr_se"})
    res = fit(df, y="psnr", form="auto")
    assert res.measurement_error().se_column == "psnr_se"
    assert fit(df.assign(rfid=df.psnr)).measurement_error() is None     # rfid has no rfid_se


# --- the command line and the schema ---------------------------------------------------------------------------


def test_fit_json_and_text(tmp_path, capsys):
    df = table(np.linspace(0.1, 0.4, 10), noise=0.2)
    df.to_parquet(tmp_path / "trials.parquet")
    assert run_command(build_parser("drorae"), ["fit", str(tmp_path), "--json"]) == 0
    me = json.loads(capsys.readouterr().out)["measurement_error"]
    assert set(me) == {"se_column", "space", "n", "measurement_var", "residual_var", "variance_ratio", "chi2", "dof",
                       "pvalue", "between_seeds"}
    assert set(me["between_seeds"]) == {"measurement_var", "pure_error_var", "variance_ratio", "chi2", "dof", "pvalue"}
    want = by_hand(df.params.to_numpy(), df.rfid.to_numpy(), df.rfid_se.to_numpy(), np.ones(10))
    assert me["chi2"] == pytest.approx(want["chi2"], rel=1e-8) and me["dof"] == 8
    assert run_command(build_parser("drorae"), ["fit", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    # the printed numbers, read back, against the hand computation (3 significant digits for a ratio, 4 else)
    num = r"(-?[0-9.]+(?:e[-+][0-9]+)?)"
    line = (r"variance ratio {0} \(measurement {0} / {1} {0}\); chi2\({2}\) = {0}, p = {0}$")
    got = re.search(r"Measurement error \(rfid_se\): " + line.format(num, "residual", 8), text, re.M)
    seeds = re.search(r"^  between seeds: " + line.format(num, "pure error", 5), text, re.M)
    assert got and seeds, text
    for m, ref, scatter in ((got, want, "residual_var"), (seeds, want["seeds"], "pure_error_var")):
        ratio, meas, resid, chi2, p = (float(v) for v in m.groups())
        assert ratio == pytest.approx(ref["variance_ratio"], rel=5e-3)
        assert meas == pytest.approx(ref["measurement_var"], rel=5e-4)
        assert resid == pytest.approx(ref[scatter], rel=5e-4)
        assert chi2 == pytest.approx(ref["chi2"], rel=5e-4) and p == pytest.approx(ref["pvalue"], rel=5e-4)


def test_schema_has_the_error_and_cost_columns_after_their_metrics_and_logs_them_to_mlflow():
    cols = list(schema.COLUMNS)
    for metric in ("rfid", "psnr", "ssim", "lpips"):
        se = schema.se_column(metric)
        assert se in schema.MEASUREMENT_ERRORS and cols.index(se) > cols.index(metric)
    new = (*schema.MEASUREMENT_ERRORS, *schema.COSTS)
    assert len(new) == 7 and set(new) <= set(schema.COLUMNS) & set(schema.NUMERIC) & set(schema.FINAL_METRICS)
    assert len(set(cols)) == len(cols)
    # the sweeper logs row[k] for every final metric of a row that has every NUMERIC key
    assert set(schema.FINAL_METRICS) <= set(schema.NUMERIC)
