"""Vectorized bootstrap: each resample equals a per-resample lstsq fit; the interval's coverage."""

import numpy as np
import pytest

from analysis import bootstrap as boot
from analysis.laws import get_law


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    C = np.geomspace(1e6, 1e9, 12)
    X = get_law("log-linear").design(C)
    return X, 5 - 0.5 * np.log10(C) + rng.normal(0, 0.1, C.size)


def test_case_resamples_equal_lstsq(data):
    X, y = data
    idx = np.random.default_rng(1).integers(0, len(y), size=(50, len(y)))
    draws = boot._case(X, y, idx)
    ref = np.array([np.linalg.lstsq(X[i], y[i], rcond=None)[0] for i in idx])
    np.testing.assert_allclose(draws.params, ref, rtol=1e-8, atol=1e-10)


def test_case_drops_singular_resamples(data):
    X, y = data
    idx = np.zeros((3, len(y)), dtype=int)           # one capacity only: no slope
    idx[1] = np.arange(len(y))
    assert boot._case(X, y, idx).params.shape == (1, 2)


def test_residual_resamples_equal_lstsq(data):
    X, y = data
    n = len(y)
    idx = np.random.default_rng(2).integers(0, n, size=(50, n))
    draws = boot._residual(X, y, idx)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    H = X @ np.linalg.inv(X.T @ X) @ X.T
    r = (y - X @ beta) / np.sqrt(1 - np.diag(H))
    r -= r.mean()
    for k in (0, 17, 49):
        y_star = X @ beta + r[idx[k]]
        b, res, *_ = np.linalg.lstsq(X, y_star, rcond=None)
        se = np.sqrt(res[0] / (n - 2) * np.diag(np.linalg.inv(X.T @ X)))
        np.testing.assert_allclose(draws.params[k], b, rtol=1e-8)
        np.testing.assert_allclose(draws.t[k], (b - beta) / se, rtol=1e-6)


def test_weighted_bootstrap_is_whitened(data):
    X, y = data
    w = np.linspace(0.5, 2, len(y))
    a = boot.bootstrap(X, y, B=200, weights=w, seed=3).params
    b = boot.bootstrap(X * np.sqrt(w)[:, None], y * np.sqrt(w), B=200, seed=3).params
    np.testing.assert_allclose(a, b)


def test_coverage_of_the_slope_interval():
    """Nominal 95% on 8-point log-linear data with Gaussian noise: covers 92-98% (400 datasets)."""
    rng = np.random.default_rng(2024)
    C = np.geomspace(1e6, 1e9, 8)
    X = get_law("log-linear").design(C)
    n_sets, hits = 400, 0
    for i in range(n_sets):
        y = 5 - 0.5 * np.log10(C) + rng.normal(0, 0.2, C.size)
        lo, hi = boot.conf_int(X, y, alpha=0.05, B=999, seed=i)[1]
        hits += lo <= -0.5 <= hi
    coverage = hits / n_sets
    print(f"bootstrap-t slope coverage: {coverage:.3f}")
    assert 0.92 <= coverage <= 0.98


def test_bad_kind(data):
    from analysis import AnalysisError

    with pytest.raises(AnalysisError, match="bootstrap kind"):
        boot.bootstrap(*data, kind="wild")
