"""The saturating law y = E + A C^-alpha: recovery of known parameters, robustness, predictions."""

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, fit

E, A, ALPHA = 0.8, 60.0, 0.35
C = np.geomspace(1e5, 1e9, 9)


def _df(y, C=C):
    return pd.DataFrame({"params": C, "rfid": y})


def test_recovers_noiseless():
    res = fit(_df(E + A * C ** -ALPHA), form="saturating")
    np.testing.assert_allclose(res.params[["E", "A", "alpha"]], [E, A, ALPHA], rtol=1e-5)
    assert res.rsquared == pytest.approx(1.0, abs=1e-9)


def test_recovers_low_noise_within_ci():
    rng = np.random.default_rng(3)
    Cr = np.repeat(C, 3)
    y = E + A * Cr ** -ALPHA + rng.normal(0, 0.01, Cr.size)
    res = fit(_df(y, Cr), form="saturating")
    np.testing.assert_allclose(res.params[["E", "alpha"]], [E, ALPHA], rtol=0.05)
    np.testing.assert_allclose(res.params["A"], A, rtol=0.25)  # A and alpha trade off: A is the loosest
    ci = res.conf_int(0.05)
    for name, truth in zip(["E", "A", "alpha"], [E, A, ALPHA]):
        assert ci.loc[name, "lower"] < truth < ci.loc[name, "upper"], name


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
