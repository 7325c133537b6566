"""How the noise of a run changes with capacity, and the prediction interval of a new run it implies.

A new run at an untried capacity C0 scatters around the law with the noise at C0, not with the
average noise of the fitted rows: when the noise grows with capacity, a PI from the pooled residual
variance is too narrow exactly where it is used (an extrapolation). The model here is the usual one
for a variance trend: log sigma^2(C) = g0 + g1 log10 C, fitted to

- each capacity with 2+ rows: its within-capacity variance s^2 (nu = rows - 1 degrees of freedom,
  free of the law: pure error);
- each capacity with one row: its squared residual from the OLS fit over its 1 - h (nu = 1).

Under normal noise, log(s^2 / sigma^2) is log(chi2_nu / nu): its mean digamma(nu/2) - log(nu/2) is
subtracted, and its variance trigamma(nu/2) is known, so (g0, g1) is weighted least squares with
known variances and log sigma^2(C0) has a known standard error sqrt(v). The PI then integrates over
that uncertainty (log sigma^2(C0) ~ N(m, v)) and over the mean's (the law's se at C0 with its
degrees of freedom, a scaled t): see ``interval``. Its calibration rests on the trend; with one seed
per capacity each point carries one degree of freedom and the variance at 10x the largest capacity is
known within a factor of several, so such a PI is wide, and says so (``effective_df`` < 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

MIN_CAPACITIES = 3          # below this many capacities with residual information there is no trend to fit
NOTE_DF = 2.0               # a PI whose noise rests on fewer effective degrees of freedom gets a note
_NODES = 64                 # quadrature nodes per dimension (equal-probability midpoints)


@dataclass(frozen=True)
class NoiseModel:
    """log sigma^2(C) = gamma[0] + gamma[1] log10 C, with gamma's covariance (known variances)."""

    gamma: np.ndarray            # (2,)
    cov: np.ndarray              # (2, 2)

    def _z(self, C) -> np.ndarray:
        C = np.atleast_1d(np.asarray(C, dtype=float))
        return np.column_stack([np.ones_like(C), np.log10(C)])

    def log_var(self, C) -> tuple[np.ndarray, np.ndarray]:
        """(m, v): the estimate of log sigma^2 at C and its variance."""
        Z = self._z(C)
        return Z @ self.gamma, np.einsum("ip,pq,iq->i", Z, self.cov, Z)

    def sd(self, C) -> np.ndarray:
        """The noise sd at C (exp(m / 2))."""
        return np.exp(self.log_var(C)[0] / 2)

    def effective_df(self, C) -> np.ndarray:
        """The degrees of freedom nu whose log(chi2_nu / nu) has the variance v of the estimate at C:
        how many degrees of freedom a variance estimate as good as this one would rest on."""
        return np.array([_df_of_log_variance(v) for v in self.log_var(C)[1]])


def _df_of_log_variance(v: float) -> float:
    """nu with trigamma(nu / 2) = v (inf for v = 0)."""
    if v <= 0:
        return math.inf
    f = lambda lognu: special.polygamma(1, math.exp(lognu) / 2) - v  # noqa: E731  (decreasing in nu)
    lo, hi = math.log(1e-6), math.log(1e12)
    if f(hi) > 0:
        return math.inf
    if f(lo) < 0:
        return 1e-6
    return math.exp(optimize.brentq(f, lo, hi, xtol=1e-10))


def log_chi2_moments(nu) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of log(chi2_nu / nu)."""
    nu = np.asarray(nu, dtype=float)
    return special.digamma(nu / 2) - np.log(nu / 2), special.polygamma(1, nu / 2)


def fit(C, y) -> NoiseModel | None:
    """The noise model of rows (C, y) (y in the law's fit space, its design intercept + log10 C or any
    design: the residuals of single-row capacities come from an OLS fit on [1, log10 C]); None when
    fewer than ``MIN_CAPACITIES`` capacities carry a nonzero variance estimate."""
    C = np.asarray(C, dtype=float)
    y = np.asarray(y, dtype=float)
    caps, inv, counts = np.unique(C, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    means = np.bincount(inv, weights=y) / counts
    ss = np.bincount(inv, weights=(y - means[inv]) ** 2)
    nu = (counts - 1).astype(float)
    s2 = np.divide(ss, nu, out=np.zeros_like(ss), where=nu > 0)
    single = counts == 1
    if single.any():
        X = np.column_stack([np.ones_like(C), np.log10(C)])
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        h = np.einsum("ip,pq,iq->i", X, np.linalg.pinv(X.T @ X), X)
        r2 = (y - X @ beta) ** 2 / np.clip(1 - h, 1e-12, None)
        rows = np.flatnonzero(single[inv])
        s2[inv[rows]] = r2[rows]
        nu[single] = 1.0
    ok = (s2 > 0) & np.isfinite(s2) & (nu > 0)
    if ok.sum() < MIN_CAPACITIES:
        return None
    bias, var = log_chi2_moments(nu[ok])
    z = np.log(s2[ok]) - bias
    Z = np.column_stack([np.ones(ok.sum()), np.log10(caps[ok])])
    W = 1.0 / var
    cov = np.linalg.inv((Z * W[:, None]).T @ Z)
    gamma = cov @ (Z * W[:, None]).T @ z
    return NoiseModel(gamma, cov)


_PROBS = (np.arange(_NODES) + 0.5) / _NODES       # equal-probability midpoints of _NODES quantile bins
_Z = special.ndtri(_PROBS)                         # standard normal nodes


def interval(mean, mean_se, mean_df, m, v, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of the (1 - alpha) PI of a new run: mean + e + s t, with e ~ N(0, sigma^2),
    log sigma^2 ~ N(m, v), and t the mean's t with ``mean_df`` degrees of freedom (inf: normal).

    The half-width q solves F(q) = P(|e + s t| <= q) = 1 - alpha, with F a mixture of normal
    coverages over both uncertainties (equal-probability quadrature nodes). F is increasing and
    concave in q, so Newton's method from q0 = z min(sd) (where F <= 1 - alpha) rises monotonically
    to the root: a few vectorized steps for a block of capacities at once."""
    mean, mean_se, mean_df, m, v = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (mean, mean_se, mean_df, m, v))
    q = np.concatenate([_half_width(mean_se[i:i + 256], mean_df[i:i + 256], m[i:i + 256], v[i:i + 256], alpha)
                        for i in range(0, len(mean), 256)]) if len(mean) else np.empty(0)
    return mean - q, mean + q


def _half_width(mean_se, mean_df, m, v, alpha: float) -> np.ndarray:
    sig2 = np.exp(m[:, None] + np.sqrt(np.clip(v, 0, None))[:, None] * _Z[None, :])          # (n, K)
    finite = np.isfinite(mean_df)
    u = np.ones((len(m), len(_PROBS)))
    u[finite] = special.chdtri(mean_df[finite, None], 1 - _PROBS[None, :]) / mean_df[finite, None]  # chi2_df / df
    sd = np.sqrt(sig2[:, :, None] + (mean_se ** 2)[:, None, None] / u[:, None, :]).reshape(len(m), -1)
    target = 1 - alpha
    q = special.ndtri(1 - alpha / 2) * sd.min(axis=1)
    for _ in range(100):
        z = q[:, None] / sd
        f = np.mean(2 * special.ndtr(z) - 1, axis=1) - target
        df = np.mean(2 * np.exp(-z * z / 2) / (math.sqrt(2 * math.pi) * sd), axis=1)
        step = -f / df
        q = q + step
        if np.all(np.abs(step) <= 1e-13 * q):
            break
    return q
