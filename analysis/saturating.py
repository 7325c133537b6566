"""The saturating law y = E + A C^-alpha: a robust fit that says when its parameters are not identified.

A Chinchilla-style fit (Hoffmann et al. 2022, appendix D.2: a Huber loss minimised from a grid of
starts), then inference that holds where the data determine the curve and says so where they do not.

1. **Fit.** C is scaled by its geometric mean C0, y = E + A' u^-alpha with u = C / C0 and
   A' = A C0^-alpha, so the problem is well conditioned. By variable projection (Golub & Pereyra
   1973): for fixed alpha, E and A' are linear and their Huber fit is a convex problem, solved
   exactly (``_huber_lin``); the loss is then minimised over alpha alone, from a log grid over
   [``FLAT`` / ln(Cmax / Cmin), ``ALPHA_MAX``] refined by Brent. The Huber threshold delta is
   ``HUBER_T`` robust sigmas (MAD of the residuals, times sqrt(n / (n - p))), re-estimated from the
   fit's own residuals, starting from the least-squares fit. Every row counts (seeds are not averaged);
   the work is a few passes over the rows per alpha tried, so 100,000 rows take seconds.
2. **Covariance.** Huber's sandwich A^-1 B A^-1 with A = sum psi'(r) J'J / n and B = sum psi(r)^2 J'J
   / (n - p) (J the Jacobian at the optimum), i.e. the model's constant-variance form of the M-estimator
   sandwich, with Huber's small-sample factor K = 1 + p/n var(psi') / mean(psi')^2: statsmodels RLM's
   default ``H1`` covariance on the linearised model. On squared-loss data (every |r| <= delta) it is
   s^2 (J'J)^-1 with s^2 = SSR / (n - p). The per-row (heteroscedasticity-robust) sandwich is not
   used: with 6-8 capacities each psi(r_i)^2 stands for a variance on its own.
3. **Identification.** The fit is *not identified* when any of: alpha runs to the smallest value
   searched (no curvature in log C) or the largest (a step); the condition number of J'J with
   unit-norm columns exceeds ``COND_MAX``; E lies more than ``E_RUNOFF`` times the fitted curve's
   range from the curve (E and A cancel); or a parameter's 95% profile interval (step 4) does not
   close inside its searched range (the profile is flat on one side). Each cause is one sentence in
   ``warnings``.
4. **Intervals** by profile likelihood: for each value of one parameter the loss is minimised over
   the other two; the bound is where the drop-in-dispersion statistic 2 (Q(v) - Q_min) / lambda (Q
   the Huber loss, lambda = K^2 B / A its dispersion, so that the statistic is t^2 in the quadratic
   region and Delta SSR / s^2 for squared loss) reaches the F(1, n - p) quantile, i.e. t_{n-p}^2:
   the small-sample calibration of Bates & Watts (1988, ch. 6). Never from a pseudo-inverse: a
   parameter of a fit that is not identified has no interval (NaN).
5. **Predictions.** The mean at C and its se by the delta method (gradient (1, C^-alpha,
   -A C^-alpha ln C) through the sandwich); prediction intervals use t_{n-p} and s^2 + se^2. Where
   the fit is not identified, the mean inside the fitted capacity range is still an estimable
   function of the data (its gradient lies in the span the data determine, so dropping the
   numerically null direction of J'J does not change it): its se is computed there and is NaN
   outside the range, where the unidentified direction moves the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

P = 3                                  # E, A, alpha
ALPHA_MAX = 10.0                       # alpha's largest value searched (u^-10 spans 1e40 over 4 decades)
FLAT = 1e-3                            # alpha's smallest value searched is FLAT / ln(Cmax / Cmin): there u^-alpha
#                                        departs from a line in ln C by 1e-7 of its trend (a log-linear law)
GRID = 41                              # alphas on a log grid over the searched range (ratio 1.3 apart over 1e-4..10)
HUBER_T = 2.0                          # Huber's threshold in robust sigmas (98% efficiency at the normal): with
#                                        6-8 capacities the MAD is noisy, and the textbook 1.345 let the intervals
#                                        cover 88-95% where 2.0 gives 92-96% (measured, y = 0.5 + 3 C^-0.3)
COND_MAX = 1e12                        # cond(J'J), unit-norm columns: identified fits measure 1e2-1e7
E_RUNOFF = 20.0                        # |E - curve| / the curve's range beyond which E and A cancel
E_SEARCH = 100.0                       # E's profile is searched within E_SEARCH curve ranges of the fit
A_SEARCH = 1e6                         # A's profile: within a factor A_SEARCH of the fit
NULL_RCOND = 1e-7                      # singular values of the scaled J below this x the largest are null
IDENT_LEVEL = 0.05                     # identification asks the 95% profile interval to close
BATCH = 50_000                         # (alphas x rows) evaluated at once: all the grid for a few rows
NAMES = ("E", "A", "alpha")


# --- 1. fit ----------------------------------------------------------------------------------


def _huber_cost(r, delta):
    """sum over the last axis of rho_delta(r): r^2 / 2 inside delta, delta |r| - delta^2 / 2 outside
    (``least_squares``' Huber cost; delta = inf: half the sum of squares)."""
    a = np.abs(r)
    m = np.minimum(a, delta)
    return (m * (a - 0.5 * m)).sum(axis=-1)


def _wsolve(X: np.ndarray, w: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The solution s of (X' diag(w) X) s = g and the determinant of X' diag(w) X, for each g:
    X (G, n, k) with k = 1 or 2, written out (the batched LAPACK calls cost more than the 2 x 2 algebra)."""
    if X.shape[2] == 1:     # (numpy's matmul with an inner dimension of 1 is 500x slower than einsum)
        x = X[..., 0]
        H = np.einsum("gn,gn->g", w * x, x)
        return g / H[:, None], H
    H = np.matmul((w[..., None] * X).transpose(0, 2, 1), X)                    # (G, 2, 2)
    a, b, c = H[:, 0, 0], H[:, 0, 1], H[:, 1, 1]
    det = a * c - b * b
    return np.column_stack([c * g[:, 0] - b * g[:, 1], a * g[:, 1] - b * g[:, 0]]) / det[:, None], det


def _huber_lin(X: np.ndarray, z: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """For each g, min over b of sum_i rho_delta(z[g, i] - X[g, i] @ b): X (G, n, k), k = 1 or 2, z (G, n);
    returns the losses (G,) and the b (G, k).

    The loss is convex and piecewise quadratic: a Newton step (Hessian X' diag(psi') X) is exact once
    the rows inside the threshold, and the signs of those outside, stop changing; it is halved until
    it goes downhill. Where the rows inside cannot determine b, the IRLS step (weights
    min(1, delta / |r|), a majorizer's minimum, so never uphill) stands in."""
    if X.shape[2] == 1:     # einsum for one column, matmul for two: each the fast one (see _wsolve)
        def xt(v):                                                              # X' v, (G, k)
            return np.einsum("gn,gn->g", X[..., 0], v)[:, None]

        def fitted(b):                                                          # X b, (G, n)
            return X[..., 0] * b
    else:
        def xt(v):
            return np.matmul(v[:, None, :], X)[:, 0, :]

        def fitted(b):
            return np.matmul(X, b[:, :, None])[..., 0]

    b, _ = _wsolve(X, np.ones_like(z), xt(z))                                   # least squares, (G, k)
    r = z - fitted(b)
    Q = _huber_cost(r, delta)
    done = np.zeros(len(z), dtype=bool)
    for _ in range(50):
        a = np.abs(r)
        inside = a <= delta
        g = xt(np.clip(r, -delta, delta))
        with np.errstate(divide="ignore", invalid="ignore"):     # a singular system: its step is not taken
            si, det_i = _wsolve(X, np.minimum(1.0, delta / np.maximum(a, 1e-300)), g)
            sn, det_n = _wsolve(X, inside.astype(float), g)
        ok = det_n > 1e-12 * det_i                                             # the rows inside determine b
        step = np.where(ok[:, None], sn, si)
        with np.errstate(invalid="ignore"):
            dz = fitted(step)
        t, pending, Q_old = np.ones(len(z)), ~done, Q.copy()
        for _ in range(40):                                                    # halve the step until downhill
            rn = r - t[:, None] * dz
            Qn = _huber_cost(rn, delta)
            take = pending & (Qn <= Q)
            b = np.where(take[:, None], b + t[:, None] * step, b)
            r = np.where(take[:, None], rn, r)
            Q = np.where(take, Qn, Q)
            exact = take & ok & (t == 1) & np.all((np.abs(rn) <= delta) == inside, axis=1) & \
                np.all(inside | (np.sign(rn) == np.sign(r)), axis=1)
            done |= exact
            pending &= ~take
            if not pending.any():
                break
            t = np.where(pending, 0.5 * t, t)
        done |= pending | (Q_old - Q <= 1e-13 * np.abs(Q_old))                 # no way down: the minimum
        if done.all():
            break
    return Q, b


def _min_over_alpha(h, grid: np.ndarray, start: float | None = None) -> tuple[float, float]:
    """min over alpha in [grid[0], grid[-1]] of h (which takes an array of alphas). Returns (h, alpha).

    Without ``start``, from the best point of the log grid; with it, from the valley around ``start``,
    found by 9-point grids in ln alpha that double their step from 1e-3 until the lowest point is
    inside (a valley narrower than the grid's step, as when A is fixed in C's units, is then followed
    down, not stepped over). Then bounded Brent on ln alpha between the best point's neighbours."""
    lo, hi = math.log(grid[0]), math.log(grid[-1])
    if start is None:
        b = np.log(grid)
        vals = h(grid)
    else:
        c, step = math.log(min(max(start, grid[0]), grid[-1])), 1e-3
        for _ in range(30):
            b = np.unique(np.clip(c + step * np.arange(-4, 5), lo, hi))
            vals = h(np.exp(b))
            i = int(np.argmin(vals))
            if 0 < i < len(b) - 1 or b[i] in (lo, hi):
                break
            c, step = b[i], 2 * step
    i = int(np.argmin(vals))
    best, best_b = float(vals[i]), float(b[i])
    left, right = b[max(i - 1, 0)], b[min(i + 1, len(b) - 1)]
    if right > left:
        sol = optimize.minimize_scalar(lambda t: float(h(np.array([math.exp(t)]))[0]), bounds=(left, right),
                                       method="bounded", options={"xatol": 1e-9})
        if sol.fun < best:
            best, best_b = float(sol.fun), float(sol.x)
    return best, math.exp(best_b)


def _chunked(h1, n: int):
    """h1 (alphas -> losses) evaluated BATCH // n alphas at a time: one batch for a few rows, one alpha
    at a time for 100,000 (the (alphas, rows) arrays stay about BATCH elements)."""
    size = max(1, BATCH // n)

    def h(alphas):
        alphas = np.asarray(alphas, dtype=float)
        return np.concatenate([h1(alphas[k:k + size]) for k in range(0, len(alphas), size)])
    return h


def _design(u: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """[1, u^-alpha] for each alpha: (G, n, 2)."""
    w = u[None, :] ** -np.asarray(alphas, dtype=float)[:, None]
    return np.stack([np.ones_like(w), w], axis=-1)


def _fit_delta(u: np.ndarray, y: np.ndarray, delta: float, grid: np.ndarray, start=None) -> np.ndarray:
    """(E, A', alpha) minimising the Huber loss by variable projection (Golub & Pereyra 1973): for
    fixed alpha, E and A' are linear and their Huber fit is a convex problem solved exactly; the loss
    is then minimised over alpha alone (``_min_over_alpha``: over the grid, or near ``start``)."""
    def h(alphas):
        return _huber_lin(_design(u, alphas), np.broadcast_to(y, (len(alphas), len(y))), delta)[0]
    _, alpha = _min_over_alpha(_chunked(h, len(y)), grid, start=start)
    _, b = _huber_lin(_design(u, [alpha]), y[None, :], delta)
    return np.array([b[0, 0], b[0, 1], alpha])


def _resid(theta, u, y):
    return theta[0] + theta[1] * u ** -theta[2] - y


def _jac(theta, u, lnu):
    w = u ** -theta[2]
    return np.column_stack([np.ones_like(u), w, -theta[1] * w * lnu])        # (n, 3)


def _threshold(r: np.ndarray, y: np.ndarray) -> float:
    """HUBER_T robust sigmas: 1.4826 MAD of the residuals, times sqrt(n / (n - p)) because fitted
    residuals are shrunk by the fit (as statsmodels RLM scales its own estimates)."""
    n = len(r)
    sigma = 1.4826 * np.median(np.abs(r - np.median(r))) * math.sqrt(n / (n - P))
    return HUBER_T * sigma if sigma > 0 else 1e-6 * max(float(np.std(y)), 1e-12)


def _psi(r, delta):
    return np.clip(r, -delta, delta)


# --- 2. covariance ---------------------------------------------------------------------------


def huber_h1(J: np.ndarray, r: np.ndarray, delta: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Huber's H1 sandwich for an M-estimate with Jacobian J and residuals r.

    Returns (factor, lambda, s): cov = factor * (J'J)^-1 with factor = K^2 (sum psi^2 / (n - p)) /
    mean(psi')^2, lambda = K^2 (sum psi^2 / (n - p)) / mean(psi') (the loss's dispersion, for the
    profile statistic) and the singular values of J with unit-norm columns (for the condition number).
    """
    n, p = J.shape
    psi, dpsi = _psi(r, delta), (np.abs(r) <= delta).astype(float)
    m = dpsi.mean()
    if m == 0:
        return math.inf, math.inf, np.zeros(p)
    K = 1 + p / n * dpsi.var() / m ** 2
    b = float(psi @ psi) / (n - p)
    norms = np.linalg.norm(J, axis=0)
    s = np.linalg.svd(J / np.where(norms > 0, norms, 1.0), compute_uv=False)
    return K ** 2 * b / m ** 2, K ** 2 * b / m, s


def _inverse(J: np.ndarray, rcond: float) -> np.ndarray:
    """(J'J)^-1 through the SVD of J with unit-norm columns; singular values below rcond x the largest
    are dropped (rcond = 0: a plain inverse)."""
    norms = np.linalg.norm(J, axis=0)
    norms = np.where(norms > 0, norms, 1.0)
    _, s, Vt = np.linalg.svd(J / norms, full_matrices=False)
    keep = s > rcond * s[0]
    inv = (Vt[keep].T / s[keep] ** 2) @ Vt[keep]
    return inv / np.outer(norms, norms)


# --- results ---------------------------------------------------------------------------------


@dataclass
class SaturatingFit:
    """A fitted y = E + A C^-alpha: estimates, sandwich covariance, identification, profile intervals."""

    params: np.ndarray                 # (E, A, alpha)
    cov: np.ndarray                    # (3, 3) sandwich in (E, A, alpha); NaN where not identified
    scale: float                       # s^2 = SSR / (n - p): the PI's noise variance
    huber_delta: float
    identified: bool
    warnings: list[str]
    theta: np.ndarray                  # (E, A', alpha) on u = C / C0
    C0: float
    u: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    grid: np.ndarray = field(repr=False)   # the alphas searched (log grid from FLAT / ln(Cmax/Cmin) to ALPHA_MAX)
    loss: float = 0.0                  # the Huber loss at the optimum
    cond: float = 0.0                  # the condition number of J'J with unit-norm columns (E, A', alpha)
    runoff: float = 0.0                # |E - median fitted| / the fitted curve's range
    lam: float = 0.0                   # the loss's dispersion (profile statistic's scale)
    cov_u: np.ndarray | None = field(default=None, repr=False)  # (3, 3) in (E, A', alpha); null directions dropped
    _ci: dict = field(default_factory=dict, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def df_resid(self) -> int:
        return len(self.y) - P

    def conf_int(self, alpha: float = 0.05) -> np.ndarray:
        """(3, 2) profile-likelihood intervals for (E, A, alpha); NaN rows when not identified and a
        NaN bound where the profile does not rise to the level inside the searched range."""
        if not self.identified:
            return np.full((P, 2), np.nan)
        if alpha not in self._ci:
            q = stats.f.ppf(1 - alpha, 1, self.df_resid)
            self._ci[alpha] = np.array([[self._bound(j, side, q) for side in (-1, 1)] for j in range(P)])
        return self._ci[alpha].copy()

    def prediction(self, C) -> tuple[np.ndarray, np.ndarray]:
        """The mean at C and its delta-method se (NaN outside the fitted range when not identified)."""
        C = np.asarray(C, dtype=float)
        E, Ap, alpha = self.theta
        uc = C / self.C0
        w = uc ** -alpha
        g = np.column_stack([np.ones_like(uc), w, -Ap * w * np.log(uc)])          # (m, 3)
        se = np.sqrt(np.einsum("ij,jk,ik->i", g, self.cov_u, g))
        if not self.identified:
            lo, hi = self.u.min() * self.C0, self.u.max() * self.C0
            se = np.where((C >= lo * (1 - 1e-12)) & (C <= hi * (1 + 1e-12)), se, np.nan)
        return E + Ap * w, se

    # --- 4. profile likelihood ---

    def profile(self, j: int, v: float) -> float:
        """min of the Huber loss over the other two parameters with parameter j (0 E, 1 A, 2 alpha) at v,
        by variable projection: exact in the linear ones, over the alpha grid then Brent in alpha."""
        u, y, d = self.u, self.y, self.huber_delta
        if j == 2:        # alpha fixed: E, A' linear
            return float(_huber_lin(_design(u, [v]), y[None, :], d)[0][0])
        if j == 0:        # E fixed: A' linear for each alpha
            def h(alphas):
                X = u[None, :, None] ** -np.asarray(alphas)[:, None, None]                # (G, n, 1)
                return _huber_lin(X, np.broadcast_to(y - v, X.shape[:2]), d)[0]
        else:             # A fixed (in C's own units): E linear for each alpha, which A pins to a narrow
            lnC = np.log(u) + math.log(self.C0)   # valley: searched from where A' = A C0^-alpha keeps its fit

            def h(alphas):
                z = y[None, :] - v * np.exp(-np.asarray(alphas)[:, None] * lnC[None, :])  # (G, n)
                return _huber_lin(np.ones(z.shape + (1,)), z, d)[0]
            if v * self.theta[1] > 0 and abs(math.log(self.C0)) > 1e-6:
                start = math.log(v / self.theta[1]) / math.log(self.C0)
                return _min_over_alpha(_chunked(h, len(y)), self.grid, start=start)[0]
        return _min_over_alpha(_chunked(h, len(y)), self.grid)[0]

    def _root(self, j, v) -> float:
        """sqrt(2 (Q_j(v) - Q_min) / lambda): the signed root's size, about linear in v (memoised: the
        root finder asks again for the ends of its bracket)."""
        key = (j, float(v))
        if key not in self._memo:
            dQ = max(self.profile(j, v) - self.loss, 0.0)
            self._memo[key] = (math.inf if dQ > 0 else 0.0) if self.lam <= 0 else math.sqrt(2 * dQ / self.lam)
        return self._memo[key]

    def _limit(self, j: int, side: int) -> float:
        """The farthest value searched on one side of parameter j."""
        est = self.params[j]
        if j == 2:
            return float(self.grid[0] if side < 0 else self.grid[-1])
        if j == 0:
            span = float(np.ptp(self.theta[1] * self.u ** -self.theta[2])) or float(np.std(self.y)) or 1.0
            return est + side * E_SEARCH * span
        return (min if side < 0 else max)(est * A_SEARCH, est / A_SEARCH)

    def _bound(self, j: int, side: int, q: float) -> float:
        """Where the profile statistic of parameter j reaches q on one side; NaN if it does not by the limit.
        The search starts at the Wald bound and steps out until the statistic passes q, then brentq."""
        est, limit = float(self.params[j]), self._limit(j, side)
        target = math.sqrt(q)
        room = abs(limit - est)
        se = math.sqrt(self.cov[j, j]) if np.isfinite(self.cov[j, j]) else math.nan
        dist = target * se if 0 < target * se < room else room / 16
        if dist == 0:
            return est
        inner = est
        while True:
            v = est + side * min(dist, room)
            val = self._root(j, v) - target
            if val >= 0:
                break
            if dist >= room:
                return math.nan
            # the root is about linear in v: extrapolate to the target, 1.5 to 4 times as far
            inner, dist = v, dist * min(max(1.1 * target / max(val + target, 1e-12), 1.5), 4.0)
        if val == 0:
            return v
        lo, hi = sorted((inner, v))
        try:
            return optimize.brentq(lambda x: self._root(j, x) - target, lo, hi, xtol=1e-5 * min(dist, room),
                                   rtol=1e-7)
        except ValueError:    # the loss is flat to rounding (an exact fit): the bound is where the search stood
            return inner


# --- the fit ---------------------------------------------------------------------------------


def _alpha_grid(u: np.ndarray) -> np.ndarray:
    return np.geomspace(FLAT / math.log(u.max() / u.min()), ALPHA_MAX, GRID)


def fit_saturating(C, y) -> SaturatingFit:
    """y = E + A C^-alpha by the Huber loss (variable projection over a grid of alphas), with its
    sandwich covariance and whether the data identify E, A and alpha (see the module docstring)."""
    C, y = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
    C0 = float(np.exp(np.mean(np.log(C))))
    u = C / C0
    grid = _alpha_grid(u)
    # The threshold starts from the least-squares fit's residuals and is re-estimated from the fit's
    # own (an outlier inflates the first).
    theta = _fit_delta(u, y, math.inf, grid)
    delta = _threshold(_resid(theta, u, y), y)
    for k in range(30):      # a few rounds; many only when outliers sit on exact data (delta shrinks to 0)
        theta = _fit_delta(u, y, delta, grid, start=None if k == 0 else theta[2])
        used, delta = delta, _threshold(_resid(theta, u, y), y)
        if abs(delta - used) <= 0.05 * used:
            break
    return _inference(theta, C0, u, y, used, grid)


def _inference(theta: np.ndarray, C0: float, u: np.ndarray, y: np.ndarray, delta: float,
               grid: np.ndarray) -> SaturatingFit:
    E, Ap, alpha = theta
    n = len(y)
    r = _resid(theta, u, y)
    J = _jac(theta, u, np.log(u))
    factor, lam, s = huber_h1(J, r, delta)
    # d(E, A, alpha) / d(E, A', alpha), A = A' C0^alpha
    T = np.array([[1, 0, 0], [0, C0 ** alpha, Ap * C0 ** alpha * math.log(C0)], [0, 0, 1]])
    params = np.array([E, Ap * C0 ** alpha, alpha])
    fitted = E + Ap * u ** -alpha
    why = []
    if alpha <= grid[0] * (1 + 1e-6):
        why.append(f"alpha = {alpha:.3g} is the smallest value searched: the data show no curvature in "
                   "log C (a log-linear law fits them as well)")
    if alpha >= grid[-1] * (1 - 1e-6):
        why.append(f"alpha = {alpha:.3g} is the largest value searched: the curve is a step at the "
                   "smallest capacity")
    cond = float(s[0] / s[-1]) ** 2 if s[-1] > 0 and s[0] / s[-1] < 1e150 else math.inf
    if cond > COND_MAX:
        why.append(f"the condition number of J'J is {cond:.2g} (> {COND_MAX:.0e}): E, A and alpha trade off "
                   "along a direction the data do not constrain")
    span = float(np.ptp(fitted))
    runoff = abs(E - np.median(fitted)) / span if span > 0 else math.inf
    if runoff > E_RUNOFF:
        why.append(f"E = {E:.4g} lies {runoff:.3g} times the fitted curve's range away from it: the "
                   "asymptote runs off and E and A cancel")
    if not np.isfinite(factor):
        why.append("every residual is beyond the Huber threshold: no covariance")
    scale = float(r @ r) / (n - P)
    with np.errstate(over="ignore", invalid="ignore"):    # a degenerate J: inf / NaN, and not identified
        cov_u = factor * _inverse(J, NULL_RCOND) if np.isfinite(factor) else np.full((P, P), np.nan)
    res = SaturatingFit(params=params, cov=T @ cov_u @ T.T, scale=scale, huber_delta=delta, identified=not why,
                        warnings=why, theta=np.asarray(theta, dtype=float), C0=C0, u=u, y=y, grid=grid,
                        loss=float(_huber_cost(r, delta)), lam=lam, cond=cond, runoff=runoff, cov_u=cov_u)
    if res.identified:      # a flat profile: the 95% interval does not close inside the searched range
        ci = res.conf_int(IDENT_LEVEL)
        flat = [f"{NAMES[j]}'s 95% profile interval does not close {'below' if side == 0 else 'above'} "
                f"{params[j]:.4g} within the searched range" for j in range(P) for side in (0, 1)
                if not np.isfinite(ci[j, side])]
        if flat:
            res.warnings.extend(flat)
            res.identified = False
    if not res.identified:
        res.cov = np.full((P, P), np.nan)
        res._ci.clear()
    return res


def refit(fit: SaturatingFit, C, y) -> np.ndarray:
    """(E, A, alpha) on other rows (a cross-validation fold) with ``fit``'s Huber threshold, alpha
    searched from ``fit``'s (the fold's optimum is near the full one)."""
    C, y = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
    u = C / fit.C0
    E, Ap, alpha = _fit_delta(u, y, fit.huber_delta, fit.grid, start=fit.theta[2])
    return np.array([E, Ap * fit.C0 ** alpha, alpha])
