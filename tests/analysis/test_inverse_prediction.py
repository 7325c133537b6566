"""Inverse prediction (`drorae predict --target-rfid`): the capacity that reaches a metric value, its CI
(Fieller) and calibration interval against the textbook closed forms, the CR2 default against a brute-force
search of its bands, the cases beyond what the law supports, the saturating law's bootstrap, the cost
mapping, and the command line."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import fit, load
from analysis.cli import main
from analysis.inverse import REACH_DECADES, cost_model, inverse_predict, with_cost
from helpers import cost_table

# --- the textbook closed forms (Draper & Smith 1998, sec. 3.2; Brown 1993, ch. 2) ---------------

# Each form as (x = g(C), z = f(y), C = g^-1(x)): the straight line z = a + b x that OLS fits.
FORMS = {"log-linear": (np.log10, lambda y: y, lambda x: 10.0 ** x),
         "linear": (lambda c: c, lambda y: y, lambda x: x),
         "power": (np.log, np.log, np.exp)}


def closed_form(C, y, y0, form, alpha, new_run: bool):
    """(estimate, lower, upper) in capacity: x0 = (z0 - a) / b, g = t^2 s^2 / (b^2 Sxx), bounds =
    xbar + [(x0 - xbar) +- (t s / b) sqrt((x0 - xbar)^2 / Sxx + (1 - g)(k + 1/n))] / (1 - g), k = 1 for
    the calibration interval (a new run's), 0 for the mean's (Fieller); and g itself."""
    g_of, f_of, inv = FORMS[form]
    x, z, z0 = g_of(np.asarray(C, float)), f_of(np.asarray(y, float)), f_of(y0)
    n = len(x)
    b, a = np.polyfit(x, z, 1)
    s2 = ((z - a - b * x) ** 2).sum() / (n - 2)
    sxx = ((x - x.mean()) ** 2).sum()
    t = stats.t.ppf(1 - alpha / 2, n - 2)
    x0 = (z0 - a) / b
    g = t ** 2 * s2 / (b ** 2 * sxx)
    half = abs(t * math.sqrt(s2) / b) * math.sqrt((x0 - x.mean()) ** 2 / sxx + (1 - g) * (int(new_run) + 1 / n))
    lo, hi = (x.mean() + ((x0 - x.mean()) + d) / (1 - g) for d in (-half, half))
    return inv(x0), inv(lo), inv(hi), g


def _law_data(form, seed=1, n_caps=6, seeds=2, noise=1.0):
    rng = np.random.default_rng(seed)
    C = np.repeat(np.geomspace(1e4, 1e7, n_caps), seeds)
    if form == "linear":
        y = 40 - 1e-6 * C + rng.normal(0, 2 * noise, C.size)
    elif form == "power":
        y = np.exp(4.2 - 0.12 * np.log(C) + rng.normal(0, 0.15 * noise, C.size))
    else:
        y = 40 - 1.5 * np.log10(C) + rng.normal(0, noise, C.size)
    return C, y


@pytest.mark.parametrize("form, y0", [("log-linear", 31.0), ("linear", 33.0), ("power", 15.0)])
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_nonrobust_intervals_are_the_textbook_fieller_and_calibration_intervals(form, y0, alpha):
    C, y = _law_data(form)
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form=form, cov_type="nonrobust")
    inv = inverse_predict(res, y0, alpha=alpha)
    est, lo, hi, g = closed_form(C, y, y0, form, alpha, new_run=False)
    _, clo, chi, _ = closed_form(C, y, y0, form, alpha, new_run=True)
    # the (1 - g) terms matter here: a naive u0 +- t se(u0) (the delta method) would miss by more than rtol
    assert g > 0.01, "the data should make g non-negligible, or a delta-method interval would pass too"
    assert inv.supported and inv.method == "band"
    np.testing.assert_allclose(inv.estimate, est, rtol=1e-9)
    np.testing.assert_allclose(inv.ci, sorted([lo, hi]), rtol=1e-7)
    np.testing.assert_allclose(inv.calibration, sorted([clo, chi]), rtol=1e-7)
    assert inv.calibration[0] < inv.ci[0] < inv.estimate < inv.ci[1] < inv.calibration[1]


def test_the_delta_method_interval_differs_from_fieller_where_g_is_large():
    """A guard on the test above: with few points and much noise, the naive interval is visibly wrong."""
    C, y = _law_data("log-linear", seed=4, n_caps=4, seeds=1, noise=0.6)
    res = fit(pd.DataFrame({"params": C, "rfid": y}), cov_type="nonrobust")
    est, lo, hi, g = closed_form(C, y, 31.0, "log-linear", 0.05, new_run=False)
    inv = inverse_predict(res, 31.0)
    np.testing.assert_allclose(inv.ci, [lo, hi], rtol=1e-7)
    b = res.params["b"]
    x0 = math.log10(est)
    se = math.sqrt(np.array([1, x0]) @ res.cov_params.to_numpy() @ np.array([1, x0])) / abs(b)
    t = stats.t.ppf(0.975, res.df_resid)
    naive = 10 ** (x0 - t * se), 10 ** (x0 + t * se)
    assert g > 0.1 and abs(math.log10(naive[1] / inv.ci[1])) > 0.02


def test_cr2_intervals_are_where_the_fits_own_bands_cross_the_target():
    """The default (CR2 errors, Bell-McCaffrey df varying with C, the noise model's PI): each interval's
    ends against a brute-force scan of the bands on a fine grid."""
    rng = np.random.default_rng(7)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), 3)
    y = 40 - 1.5 * np.log10(C) + rng.normal(0, 0.05 * np.log10(C), C.size)    # noise that grows with C
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    y0 = 30.5
    inv = inverse_predict(res, y0)
    assert inv.supported
    grid = np.linspace(math.log10(inv.estimate) - 1.5, math.log10(inv.estimate) + 1.5, 1201)
    sf = res.get_prediction(10 ** grid).summary_frame(0.05)
    for got, lo_col, hi_col in ((inv.ci, "mean_ci_lower", "mean_ci_upper"),
                                (inv.calibration, "obs_ci_lower", "obs_ci_upper")):
        holds = (sf[lo_col].to_numpy() <= y0) & (y0 <= sf[hi_col].to_numpy())
        inside = grid[holds]
        assert holds[0] == holds[-1] == False  # noqa: E712  (the scan spans the whole set)
        assert np.all(np.diff(np.flatnonzero(holds)) == 1)                    # one run: an interval
        step = grid[1] - grid[0]
        assert inside[0] - step <= math.log10(got[0]) <= inside[0]
        assert inside[-1] <= math.log10(got[1]) <= inside[-1] + step
    # the CR2 intervals are not the classical ones: the test above would not pass with the nonrobust bands
    classical = inverse_predict(fit(pd.DataFrame({"params": C, "rfid": y}), cov_type="nonrobust"), y0)
    assert abs(math.log10(classical.calibration[1] / inv.calibration[1])) > 1e-3


def test_a_slope_whose_ci_includes_zero_is_beyond_what_the_law_supports():
    rng = np.random.default_rng(0)
    C = np.repeat(np.geomspace(1e4, 1e7, 5), 2)
    y = 35 - 0.05 * np.log10(C) + rng.normal(0, 0.5, C.size)
    for cov in ("nonrobust", "CR2"):
        res = fit(pd.DataFrame({"params": C, "rfid": y}), cov_type=cov)
        lo, hi = res.conf_int(0.05).loc["b"]
        assert lo < 0 < hi
        inv = inverse_predict(res, 34.5)
        assert not inv.supported and "includes 0" in inv.beyond[0]
        # the Fieller set is unbounded: the interval is open on at least one side
        assert inv.ci[0] == 0.0 or inv.ci[1] == math.inf
        assert inv.to_dict()["supported"] is False


def test_closed_form_unbounded_when_g_exceeds_one_agrees():
    """g > 1 (the slope not significant at alpha) is exactly when the textbook interval stops being bounded."""
    rng = np.random.default_rng(0)
    C = np.repeat(np.geomspace(1e4, 1e7, 5), 2)
    y = 35 - 0.05 * np.log10(C) + rng.normal(0, 0.5, C.size)
    *_, g = closed_form(C, y, 34.5, "log-linear", 0.05, new_run=False)
    res = fit(pd.DataFrame({"params": C, "rfid": y}), cov_type="nonrobust")
    assert g > 1 and not inverse_predict(res, 34.5).supported


def test_targets_the_law_cannot_reach_at_a_positive_capacity():
    C, y = _law_data("linear")
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="linear")
    inv = inverse_predict(res, 45.0)      # the falling line passes 45 only at C < 0
    assert not inv.supported and math.isnan(inv.estimate) and "<= 0" in inv.beyond[0]
    C, y = _law_data("power")
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="power")
    inv = inverse_predict(res, -1.0)
    assert not inv.supported and "positive" in inv.beyond[0]


def test_a_target_far_beyond_the_fitted_capacities_is_not_extrapolated():
    C, y = _law_data("log-linear")
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    y0 = float(res.params["a"] + res.params["b"] * (7 + REACH_DECADES + 2))   # 2 decades past the search
    inv = inverse_predict(res, y0)
    assert inv.estimate == pytest.approx(10 ** (7 + REACH_DECADES + 2), rel=1e-9)
    assert not inv.supported and "too far" in inv.beyond[0]


@pytest.mark.parametrize("target", [math.nan, math.inf])
def test_a_non_finite_target_is_an_error(target):
    from analysis.errors import AnalysisError

    C, y = _law_data("log-linear")
    with pytest.raises(AnalysisError, match="finite"):
        inverse_predict(fit(pd.DataFrame({"params": C, "rfid": y})), target)


# --- the saturating law ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saturating():
    rng = np.random.default_rng(5)
    C = np.repeat(np.geomspace(1e4, 1e8, 8), 2)
    y = 20 + 300 * C ** -0.35 + rng.normal(0, 0.15, C.size)
    return fit(pd.DataFrame({"params": C, "rfid": y}), form="saturating")


def test_saturating_estimate_is_the_inverted_law_with_bootstrap_intervals(saturating):
    E, A, a = saturating.params
    y0 = E + 0.5 * (saturating.predict([1e8])[0] - E) + 0.4
    inv = inverse_predict(saturating, y0, B=200)
    assert inv.method == "bootstrap" and inv.B == 200
    assert inv.estimate == pytest.approx((A / (y0 - E)) ** (1 / a), rel=1e-12)
    assert saturating.predict([inv.estimate])[0] == pytest.approx(y0, rel=1e-10)
    assert inv.ci[0] < inv.estimate < inv.ci[1]
    assert inv.calibration[0] <= inv.ci[0] and inv.calibration[1] >= inv.ci[1]


def test_saturating_target_at_or_below_e_is_beyond_what_the_law_supports(saturating):
    E = saturating.params["E"]
    for y0 in (E - 1.0, E):
        inv = inverse_predict(saturating, y0, B=50)
        assert not inv.supported and math.isnan(inv.estimate) and "asymptote E" in inv.beyond[0]
    lo, hi = saturating.conf_int(0.05).loc["E"]
    inv = inverse_predict(saturating, (E + hi) / 2, B=100)     # above E but inside its CI
    assert math.isfinite(inv.estimate) and not inv.supported and "CI of the asymptote" in inv.beyond[0]


# --- at what cost ----------------------------------------------------------------------------


def test_the_cost_is_the_affine_cost_model_of_the_grid_rows():
    df = cost_table()  # train_flops = 3.69e6 (424e3 + C) exactly: a decoder part and a fusion part
    table = load(df)
    res = fit(table)
    inv = with_cost(inverse_predict(res, 31.5), table.points)
    m = inv.costs["train_flops"]
    assert m.c1 == pytest.approx(3.69e6, rel=1e-9) and m.c0 == pytest.approx(3.69e6 * 424e3, rel=1e-9)
    assert m.estimate == pytest.approx(3.69e6 * (424e3 + inv.estimate), rel=1e-9)
    np.testing.assert_allclose(m.ci, [3.69e6 * (424e3 + c) for c in inv.ci], rtol=1e-9)
    np.testing.assert_allclose(m.calibration, [3.69e6 * (424e3 + c) for c in inv.calibration], rtol=1e-9)
    s = inv.costs["train_seconds"]       # seconds scattered about flops / 2e10: least squares, both >= 0
    pts = table.points
    X = np.column_stack([np.ones(len(pts)), pts["params"].to_numpy(float)])
    coef, *_ = np.linalg.lstsq(X, pts["train_seconds"].to_numpy(float), rcond=None)
    assert (coef > 0).all()  # the unconstrained solution is feasible: non-negative least squares is it
    assert (s.c0, s.c1, s.rows) == (pytest.approx(coef[0], rel=1e-7), pytest.approx(coef[1], rel=1e-7), len(pts))
    # a cost that falls with capacity cannot be negative-sloped: c1 is held at 0, c0 the mean
    falling = table.points.assign(train_flops=1e13 - 1e6 * table.points["params"])
    c0, c1, _, _ = cost_model(falling, "params", "train_flops")
    assert c1 == 0 and c0 == pytest.approx(falling["train_flops"].mean(), rel=1e-9)
    # a law over a cost column is its own cost: nothing mapped
    flops = load(df, x="train_flops")
    assert with_cost(inverse_predict(fit(flops), 31.5), flops.points).costs == {}


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def cost_csv(tmp_path):
    path = tmp_path / "trials.csv"
    cost_table().to_csv(path, index=False)
    return path


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_target_rfid_text_and_json(cost_csv, capsys):
    rc, out, err = _run(capsys, "predict", cost_csv, "--target-rfid", "31", "--cov", "nonrobust")
    assert rc == 0, err
    assert "rfid = 31 is reached at params = " in out and "95% calibration interval" in out
    assert "at a cost of train_flops = " in out and "at a cost of train_seconds = " in out
    assert "BEYOND" not in out
    rc, out, err = _run(capsys, "predict", cost_csv, "--target-rfid", "31", "--cov", "nonrobust", "--json")
    assert rc == 0
    got = json.loads(out)
    pts = cost_table()
    C, y = pts.loc[pts.kind == "grid", "params"], pts.loc[pts.kind == "grid", "rfid"]
    est, lo, hi, _ = closed_form(C.to_numpy(float), y.to_numpy(float), 31.0, "log-linear", 0.05, new_run=False)
    assert got["estimate"] == pytest.approx(est, rel=1e-9) and got["ci"] == pytest.approx([lo, hi], rel=1e-7)
    assert got["supported"] is True and got["beyond"] is None and got["ci_bounded"] == [True, True]
    assert set(got["cost"]) == {"train_flops", "train_seconds"} and got["law"]["cov_type"] == "nonrobust"


def test_cli_says_when_the_target_is_beyond_what_the_law_supports(cost_csv, capsys):
    rc, out, err = _run(capsys, "predict", cost_csv, "--target-rfid", "31", "--x", "train_flops")
    assert rc == 0, err
    assert "BEYOND WHAT THE LAW SUPPORTS" in out and "includes 0" in out
    rc, out, _ = _run(capsys, "predict", cost_csv, "--target-rfid", "31", "--x", "train_flops", "--json")
    got = json.loads(out)
    assert got["supported"] is False and "includes 0" in got["beyond"] and got["cost"] == {}
    assert False in got["ci_bounded"]


@pytest.mark.parametrize("argv, words", [
    (["--capacity", "1e7", "--target-rfid", "25"], "expected exactly one of --capacity"),
    ([], "expected exactly one of --capacity"),
    (["--target-rfid", "nan"], "--target-rfid nan: expected a finite value of 'rfid'"),
    (["--target-rfid=-inf"], "--target-rfid -inf: expected a finite value"),
    (["--target-rfid", "low"], "--target-rfid 'low': expected a number"),
])
def test_cli_bad_target_input_is_one_line_exit_2(cost_csv, capsys, argv, words):
    rc, out, err = _run(capsys, "predict", cost_csv, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err


def test_fit_over_training_cost_works_like_any_capacity_axis(cost_csv, capsys):
    for column in ("train_flops", "train_seconds"):
        rc, out, err = _run(capsys, "fit", cost_csv, "--x", column, "--json")
        assert rc == 0, err
        got = json.loads(out)
        pts = cost_table().query("kind == 'grid'")
        b, a = np.polyfit(np.log10(pts[column]), pts["rfid"], 1)
        assert got["x"] == column and got["n"] == len(pts)
        assert got["params"]["b"] == pytest.approx(b, rel=1e-9) and got["params"]["a"] == pytest.approx(a, rel=1e-9)


def test_a_zero_cost_grid_row_on_a_log_axis_is_one_line_naming_the_rows(tmp_path, capsys):
    df = cost_table()
    df.loc[[0, 3], "train_flops"] = 0.0
    path = tmp_path / "zero.csv"
    df.to_csv(path, index=False)
    rc, out, err = _run(capsys, "fit", path, "--x", "train_flops")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "column 'train_flops' has a non-positive value (0) in 2 row(s) (h2-k6-s0, h8-k6-s1)" in err


def test_the_epilog_states_the_search_reach_and_the_bootstrap_draws():
    from analysis.cli import PREDICT_EPILOG
    from analysis.inverse import BOOTSTRAP_B

    assert f"searched up to {REACH_DECADES:g} decades beyond" in PREDICT_EPILOG
    assert f"percentiles of {BOOTSTRAP_B} residual-bootstrap" in PREDICT_EPILOG


def test_an_open_calibration_interval_is_a_note_the_law_still_answers():
    """Noise growing with C, 2 seeds a capacity: the noise model's PI far out holds the target (the calibration
    set is open above), while the CI of the mean is bounded: supported, with a note."""
    rng = np.random.default_rng(11)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), 2)
    x = np.log10(C)
    res = fit(pd.DataFrame({"params": C, "rfid": 40 - 1.5 * x + rng.normal(0, 1, C.size) * 0.05 * x}))
    inv = inverse_predict(res, 31.0)
    assert inv.calibration[1] == math.inf and math.isfinite(inv.ci[1]) and inv.ci[1] > inv.estimate
    assert inv.supported and "calibration interval is open above" in inv.notes[0]
    edge = res.get_prediction([10 ** (7 + REACH_DECADES - 0.01)]).summary_frame(0.05).iloc[0]
    assert edge["obs_ci_lower"] <= 31.0 <= edge["obs_ci_upper"]              # the PI holds it at the search's edge
    assert not edge["mean_ci_lower"] <= 31.0 <= edge["mean_ci_upper"]        # the mean's CI does not
