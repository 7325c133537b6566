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


def test_bootstrap_t_interval_takes_the_upper_t_quantile_for_its_lower_end():
    """[b - t*_(1-a/2) se, b - t*_(a/2) se], by hand from the draws, on skewed noise whose t* is asymmetric
    (a flipped or percentile-style interval differs from it by more than the tolerance)."""
    rng = np.random.default_rng(1)
    C = np.geomspace(1e6, 1e9, 6)
    X = get_law("log-linear").design(C)
    y = 5 - 0.5 * np.log10(C) + rng.lognormal(0, 1.2, C.size)
    draws = boot.bootstrap(X, y, B=4000, kind="residual", seed=9)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ beta
    se = np.sqrt(e @ e / (len(y) - 2) * np.diag(np.linalg.inv(X.T @ X)))
    q_lo, q_hi = np.nanquantile(draws.t, [0.05, 0.95], axis=0)
    assert np.abs(q_lo + q_hi).max() > 0.05                            # asymmetric: a flip shows
    ci = boot.conf_int(X, y, alpha=0.1, B=4000, seed=9)
    np.testing.assert_allclose(ci[:, 0], beta - q_hi * se, rtol=1e-10)
    np.testing.assert_allclose(ci[:, 1], beta - q_lo * se, rtol=1e-10)


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


# --- the wild cluster bootstrap ------------------------------------------------------------------


def _clustered(seed=11, scale=1.0):
    rng = np.random.default_rng(seed)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), [2, 3, 1, 2, 3, 2])
    X = np.column_stack([np.ones(C.size), np.log10(C)])
    y = 10 - 1.2 * X[:, 1] + rng.normal(0, 0.2 * X[:, 1] / 4, C.size)
    return C, X, scale * y


def _brute_pvalue(C, X, y, theta0, ell, B, seed):
    """The restricted wild cluster bootstrap-t p-value of ell'b = theta0, the slow way: the restricted
    fit, B resampled data sets (the same Webb draws), each refitted by lstsq and studentized by a dense CR2."""
    from analysis import robust
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    K = np.linalg.inv(X.T @ X)
    bt = b - K @ ell * (ell @ b - theta0) / (ell @ K @ ell)
    et = y - X @ bt
    cl = robust.clusters(X, y - X @ b, C)
    se = np.sqrt(ell @ robust.cr2_cov(cl) @ ell)
    t_obs = (ell @ b - theta0) / se
    _, inv = np.unique(C, return_inverse=True)
    V = boot._webb(np.random.default_rng(seed), B, inv.max() + 1)
    hits = 0
    for v in V:
        ys = X @ bt + v[inv] * et
        bs = np.linalg.lstsq(X, ys, rcond=None)[0]
        cls = robust.clusters(X, ys - X @ bs, C)
        ts = (ell @ bs - theta0) / np.sqrt(ell @ robust.cr2_cov(cls) @ ell)
        hits += abs(ts) >= abs(t_obs)
    return hits / B


def test_webb_weights_have_mean_0_and_variance_1_and_are_drawn_alike():
    assert boot.WEBB.mean() == pytest.approx(0, abs=1e-15) and (boot.WEBB ** 2).mean() == pytest.approx(1, rel=1e-15)
    draws = boot._webb(np.random.default_rng(0), 6000, 2)
    values, counts = np.unique(draws, return_counts=True)
    np.testing.assert_array_equal(values, np.sort(boot.WEBB))
    assert counts.min() > 1800                       # 2000 each expected


def test_an_exact_fit_has_a_zero_width_wild_interval():
    from analysis import robust
    C = np.geomspace(1e4, 1e7, 5)
    X = np.column_stack([np.ones(5), np.log10(C)])
    cl = robust.clusters(X, np.zeros(5), C)
    assert boot.wild_interval(cl, -1.5, [0.0, 1.0], B=99) == (-1.5, -1.5)


@pytest.mark.parametrize("alpha, scale", [(0.1, 1000.0), (0.5, 1.0)])   # an se > 1; an end inside an se < 1
def test_wild_interval_ends_are_where_the_brute_force_test_starts_rejecting(alpha, scale):
    from analysis import robust
    C, X, y = _clustered(scale=scale)
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    cl = robust.clusters(X, y - X @ b, C)
    B = 399
    for ell in (np.array([0.0, 1.0]), np.array([1.0, 8.0])):
        lo, hi = boot.wild_interval(cl, ell @ b, ell, alpha=alpha, B=B, seed=5)
        assert lo < ell @ b < hi
        width = hi - lo
        for end, inside in ((lo, lo + 1e-6 * width), (hi, hi - 1e-6 * width)):
            outside = 2 * end - inside
            assert _brute_pvalue(C, X, y, inside, ell, B, 5) > alpha
            assert _brute_pvalue(C, X, y, outside, ell, B, 5) <= alpha


def test_wild_mean_errors_are_se_times_the_brute_force_bootstrap_t():
    from analysis import robust
    C, X, y = _clustered()
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ b
    cl = robust.clusters(X, e, C)
    ell = np.array([1.0, 7.5])
    se = np.sqrt(ell @ robust.cr2_cov(cl) @ ell)
    d = boot.wild_mean_errors(cl, ell, B=60, seed=1)
    # by hand: CR2-adjusted residuals A_s e_s ((I - H_ss)^-1/2 by eigendecomposition), Webb weights per
    # capacity, refit, t* = l'(b* - b) / its own CR2 se
    H = X @ np.linalg.inv(X.T @ X) @ X.T
    adj = np.empty_like(e)
    for c in np.unique(C):
        s = C == c
        val, U = np.linalg.eigh(np.eye(s.sum()) - H[np.ix_(s, s)])
        adj[s] = U @ np.diag(val ** -0.5) @ U.T @ e[s]
    _, inv = np.unique(C, return_inverse=True)
    V = boot._webb(np.random.default_rng(1), 60, inv.max() + 1)
    ref = []
    for v in V:
        ys = X @ b + v[inv] * adj
        bs = np.linalg.lstsq(X, ys, rcond=None)[0]
        ref.append(se * ell @ (bs - b) / np.sqrt(ell @ robust.cr2_cov(robust.clusters(X, ys - X @ bs, C)) @ ell))
    np.testing.assert_allclose(d, ref, rtol=1e-8)


def test_fit_bootstrap_intervals_are_the_wild_ones_and_a_bootstrap_pi_exists():
    import pandas as pd

    from analysis import fit
    C, X, y = _clustered()
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    ci = res.conf_int(0.05, method="bootstrap", B=999, seed=3)
    lo, hi = boot.wild_interval(res._clusters(), res.params["b"], [0.0, 1.0], alpha=0.05, B=999, seed=3)
    assert (ci.loc["b", "lower"], ci.loc["b", "upper"]) == (lo, hi)
    sf = res.get_prediction([1e8]).summary_frame(0.05, method="bootstrap", B=2000)
    an = res.get_prediction([1e8]).summary_frame(0.05)
    assert (sf.obs_ci_lower < sf["mean"]).all() and (sf["mean"] < sf.obs_ci_upper).all()
    assert sf.obs_ci_upper.iloc[0] - sf.obs_ci_lower.iloc[0] == pytest.approx(
        an.obs_ci_upper.iloc[0] - an.obs_ci_lower.iloc[0], rel=0.15)      # the same noise model, drawn
    with pytest.raises(Exception, match="bootstrap kind"):
        res.conf_int(method="bootstrap", kind="pairs")


@pytest.mark.parametrize("kind", ["wild", "residual", "case"])
def test_fit_bootstrap_passes_alpha_b_seed_kind_and_weights_on(kind):
    """fit().conf_int(method="bootstrap") is the bootstrap module's interval of the fit's own
    (weighted) rows with the alpha, B, seed and kind it was given."""
    import pandas as pd

    from analysis import fit
    rng = np.random.default_rng(2)
    C = np.repeat(np.geomspace(1e4, 1e7, 6), 3)
    X = np.column_stack([np.ones(C.size), np.log10(C)])
    y = 10 - 1.2 * X[:, 1] + rng.normal(0, 0.05 * X[:, 1], C.size)     # the noise grows with C
    res = fit(pd.DataFrame({"params": C, "rfid": y}), weights="seed-variance")
    assert not np.allclose(res._w, 1.0)
    ci = res.conf_int(0.2, method="bootstrap", B=299, kind=kind, seed=4)
    if kind == "wild":
        ref = [boot.wild_interval(res._clusters(), res.params.iloc[j], np.eye(2)[j], alpha=0.2, B=299, seed=4)
               for j in range(2)]
    else:
        ref = boot.conf_int(X, y, alpha=0.2, B=299, kind=kind, weights=res._w, seed=4)
    np.testing.assert_allclose(ci.to_numpy(), np.asarray(ref), rtol=1e-12)
    with pytest.raises(Exception, match=r"^unknown bootstrap kind 'pairs': expected one of wild, residual, case$"):
        res.conf_int(method="bootstrap", kind="pairs")
    with pytest.raises(Exception, match=r"^unknown interval method 'exact': expected one of analytic, bootstrap$"):
        res.conf_int(method="exact")

@pytest.mark.parametrize(("alpha", "B", "seed"), [(0.05, 400, 0), (0.2, 300, 7)])
def test_bootstrap_pi_is_the_mean_error_draws_plus_the_noise_models(alpha, B, seed):
    """The bootstrap PI by its definition, from the parts tested on their own: the (seeded, B) wild
    draws of the mean's error (checked against a brute-force refit above) plus a new run's noise,
    sigma = exp((m + sqrt(v) z1) / 2) from the noise model's log variance m and its variance v, times
    z2 (z1, z2 from the stream [seed, 1]); its alpha/2 and 1 - alpha/2 quantiles, never narrower than
    the mean's wild interval."""
    import pandas as pd

    from analysis import fit
    C, X, y = _clustered()
    res = fit(pd.DataFrame({"params": C, "rfid": y}))
    C0 = np.array([1e9, 3e5])          # far beyond the data (v > 1) and inside it (v < 1)
    frame = res.get_prediction(C0).summary_frame(alpha, method="bootstrap", B=B, seed=seed)
    m, v = res.noise.log_var(C0)
    assert v[0] > 1 > v[1] > 0
    for i, c0 in enumerate(C0):
        sf = frame.iloc[i]
        ell = np.array([1.0, np.log10(c0)])
        mean = ell @ res.params.to_numpy()
        eta = boot.wild_mean_errors(res._clusters(), ell, B=B, seed=seed)
        rng = np.random.default_rng([seed, 1])
        sig = np.exp((m[i] + np.sqrt(v[i]) * rng.standard_normal(eta.size)) / 2)
        d = eta + sig * rng.standard_normal(eta.size)
        lo, hi = mean + np.quantile(d, [alpha / 2, 1 - alpha / 2])
        ci = boot.wild_interval(res._clusters(), mean, ell, alpha=alpha, B=B, seed=seed)
        assert (sf.obs_ci_lower, sf.obs_ci_upper) == pytest.approx((min(lo, ci[0]), max(hi, ci[1])), rel=1e-12)
        assert (sf.mean_ci_lower, sf.mean_ci_upper) == pytest.approx(ci, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_0_1_is_refused(data, alpha):
    from analysis import AnalysisError, robust
    X, y = data
    with pytest.raises(AnalysisError, match="alpha must be in"):
        boot.conf_int(X, y, alpha=alpha, B=50)
    cl = robust.clusters(X, y - X @ np.linalg.lstsq(X, y, rcond=None)[0], X[:, 1])
    with pytest.raises(AnalysisError, match="alpha must be in"):
        boot.wild_interval(cl, 0.0, [0.0, 1.0], alpha=alpha, B=50)


def test_conf_int_defaults_are_a_95_percent_interval_of_10000_draws(data):
    X, y = data
    np.testing.assert_array_equal(boot.conf_int(X, y), boot.conf_int(X, y, alpha=0.05, B=10_000, seed=0))
