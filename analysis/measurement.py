"""How much of a fitted law's residual scatter the measurement error of its points accounts for.

Each run's metric comes with its measurement error ``<y>_se`` (``analysis.schema``): the standard
error over the evaluation images (rFID by bootstrap over the images, PSNR / SSIM / LPIPS the
standard error of the mean of the per-image values). The scatter of the runs around the law holds
that error, the seed-to-seed (training) noise and any misfit of the law. With the fit's residuals
r_i, its weights w_i (1 without ``weights=``) and each run's measurement error s_i, all in the
space the law is fitted in (y, or ln y for ``power``, where s_i = se(y_i) / y_i by the delta
method), n rows and p parameters:

- ``residual_var`` = sum(w_i r_i^2) / (n - p): the fit's own residual variance (its ``scale``);
- ``measurement_var`` = sum((1 - h_i) w_i s_i^2) / (n - p): the residual variance that measurement
  error alone would give the same fit, h_i the leverages (the weighted hat matrix's diagonal); it
  is mean(s_i^2) when every s_i is the same;
- ``variance_ratio`` = measurement_var / residual_var: the share of the residual variance the
  measurement error accounts for (about 1: all of it; well below 1: the runs scatter more);
- ``chi2`` = min over the law's parameters of sum((y_i - f(C_i))^2 / s_i^2), the law refitted by
  weighted least squares with weights 1 / s_i^2 whatever the fit's own weights (under "the law
  holds and only measurement error scatters the runs" that fit is the efficient one and ``chi2``
  is chi-square on n - p degrees of freedom, exactly for the linear forms, asymptotically for
  ``saturating``); ``pvalue`` = P(chi2_{n-p} >= chi2): small when the runs scatter more than their
  measurement error (the law misfits, or runs vary beyond it, e.g. from seed to seed).

Weights: the ratio is taken against the fit as made, weights included (both variances are then those
of a unit-weight row, and ``residual_var`` is the scale the fit's intervals use); ``chi2`` never
depends on them. With ``weights="seed-variance"`` from two or three seeds the weights favour the
capacities whose seeds happened to agree and the weighted residual variance comes out small: a ratio
well above 1 then says the weighted fit's intervals are narrower than measurement error alone allows.

Seeds are rows, as in the fit: each run has its own s_i, so no se of a mean enters. Where seeds
repeat a capacity, ``between_seeds`` asks the same of the seed-to-seed scatter alone (the pure
error of the lack-of-fit test): ``pure_error_var`` = sum_g sum_j (y_gj - mean_g)^2 / (n - m) over
the m capacities, ``measurement_var`` = sum_g (1 - 1/k_g) sum_j s_gj^2 / (n - m) its expectation
under measurement error alone (k_g seeds at capacity g), and ``chi2`` = sum_g sum_j
(y_gj - wmean_g)^2 / s_gj^2 about the 1 / s^2-weighted means, chi-square on n - m degrees of freedom.

Measurement errors are taken as independent between runs. Runs scored on the same evaluation
images share part of their error; that shared part mostly shifts every point alike (the intercept),
so the ratio is then an upper bound on the share of measurement error and the p-value conservative.
Rows without a finite positive s_i leave the assessment out (``why_not`` says why): nothing is claimed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from analysis.laws import Law


@dataclass(frozen=True)
class SeedScatter:
    """The seed-to-seed scatter at repeated capacities against the runs' measurement error."""

    measurement_var: float
    pure_error_var: float
    variance_ratio: float
    chi2: float
    dof: int
    pvalue: float


@dataclass(frozen=True)
class MeasurementError:
    """The law's residual scatter against the runs' measurement error (see the module docstring)."""

    se_column: str
    space: str                      # "y", or "ln y" (s_i = se(y_i) / y_i) for a law fitted on ln y
    n: int
    measurement_var: float
    residual_var: float
    variance_ratio: float
    chi2: float
    dof: int
    pvalue: float
    between_seeds: SeedScatter | None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """Two lines at most, for ``FitResults.summary``."""
        space = ", on ln y: se/y" if self.space == "ln y" else ""
        lines = [f"Measurement error ({self.se_column}{space}): variance ratio {self.variance_ratio:.3g} "
                 f"(measurement {self.measurement_var:.4g} / residual {self.residual_var:.4g}); "
                 f"chi2({self.dof}) = {self.chi2:.4g}, p = {self.pvalue:.4g}"]
        s = self.between_seeds
        if s is not None:
            lines.append(f"  between seeds: variance ratio {s.variance_ratio:.3g} (measurement "
                         f"{s.measurement_var:.4g} / pure error {s.pure_error_var:.4g}); "
                         f"chi2({s.dof}) = {s.chi2:.4g}, p = {s.pvalue:.4g}")
        return lines


def why_not(se: np.ndarray | None, se_column: str, ids: list) -> str | None:
    """Why the rows' measurement errors cannot be assessed (None: they can; '': no such column at all)."""
    if se is None:
        return ""
    bad = ~(np.isfinite(se) & (se > 0))
    if not bad.any():
        return None
    listed = ", ".join(map(str, [ids[i] for i in np.flatnonzero(bad)[:5]])) + (", ..." if bad.sum() > 5 else "")
    return (f"{bad.sum()} of {len(se)} fitted rows have no finite positive {se_column} ({listed}): "
            "measurement error not assessed")


def _chi2_min(law: Law, C: np.ndarray, yfit: np.ndarray, s: np.ndarray, start: np.ndarray) -> float:
    """min over the law's parameters of sum((yfit - f(C))^2 / s^2), in the law's fit space."""
    if law.linear:
        X = law.design(C) / s[:, None]                                   # (n, p), whitened
        coef, *_ = np.linalg.lstsq(X, yfit / s, rcond=None)
        r = yfit / s - X @ coef
        return float(r @ r)
    # saturating: y = E + A' u^-alpha with u = C / C0 (A' = A C0^-alpha), from the fit's optimum
    C0 = float(np.exp(np.mean(np.log(C))))
    u = C / C0
    E, A, alpha = start
    sol = optimize.least_squares(lambda t: (t[0] + t[1] * u ** -t[2] - yfit) / s, [E, A * C0 ** -alpha, alpha],
                                 bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, 10.0]), method="trf",
                                 x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    return float(sol.fun @ sol.fun)


def _leverages(law: Law, C: np.ndarray, w: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The diagonal of the fit's weighted hat matrix (the linearised one for a nonlinear law)."""
    if law.linear:
        X = law.design(C)
    else:
        E, A, alpha = params
        Ca = np.power(C, -alpha)
        X = np.column_stack([np.ones_like(C), Ca, -A * Ca * np.log(C)])  # the Jacobian, (n, 3)
    Q, _ = np.linalg.qr(np.sqrt(w)[:, None] * X)
    return (Q ** 2).sum(axis=1)


def _between_seeds(C: np.ndarray, yfit: np.ndarray, s: np.ndarray) -> SeedScatter | None:
    caps = np.unique(C)
    dof = len(yfit) - len(caps)
    if dof <= 0:
        return None
    ss_pe = expected = chi2 = 0.0
    for c in caps:
        sel = C == c
        y, v = yfit[sel], s[sel] ** 2
        ss_pe += float(((y - y.mean()) ** 2).sum())
        expected += (1 - 1 / sel.sum()) * float(v.sum())
        chi2 += float(((y - np.average(y, weights=1 / v)) ** 2 / v).sum())
    pure, meas = ss_pe / dof, expected / dof
    return SeedScatter(meas, pure, meas / pure if pure > 0 else np.inf, chi2, dof, float(stats.chi2.sf(chi2, dof)))


def assess(law: Law, C, y, se, params, weights, residual_var: float, se_column: str) -> MeasurementError:
    """The measurement-error assessment of a fit (every se finite and > 0: see ``why_not``).

    ``C``, ``y``, ``se``: the fitted rows (y and its se in the metric's own units); ``params``: the
    fit's, in ``law.param_names`` order; ``weights``: the fit's row weights (None: equal);
    ``residual_var``: the fit's residual variance in its fit space (``FitResults.scale``).
    """
    C, y, se = (np.asarray(a, dtype=float) for a in (C, y, se))
    params = np.asarray(params, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    yfit = law.to_fit_space(y)
    s = se / y if law.log_y else se          # delta method: se(ln y) = se(y) / y
    n, p = len(y), len(params)
    dof = n - p
    h = _leverages(law, C, w, params)
    meas = float(((1 - h) * w * s ** 2).sum()) / dof
    chi2 = _chi2_min(law, C, yfit, s, params)
    return MeasurementError(se_column, "ln y" if law.log_y else "y", n, meas, residual_var,
                            meas / residual_var if residual_var > 0 else np.inf, chi2, dof,
                            float(stats.chi2.sf(chi2, dof)), _between_seeds(C, yfit, s))
