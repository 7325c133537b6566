"""Inverse prediction: which capacity reaches a metric value y0, with intervals, and at what cost.

    inv = inverse_predict(res, 25.0, alpha=0.05)       # res: a FitResults
    inv.estimate, inv.ci, inv.calibration, inv.supported, inv.beyond, inv.to_dict()
    inv = with_cost(inv, table)                         # + the cost of that capacity (train_flops, ...)

**Linear-in-parameters laws** (log-linear, linear, power: z = a + b g(C) in the law's fit space, g =
log10, identity or ln). The estimate inverts the law: g(C0) = (z(y0) - a) / b. Its intervals invert
the fit's own bands (Fieller 1954; Brown 1993, ch. 2; Draper & Smith 1998, sec. 3.2):

- the **CI** is the set of capacities whose (1 - alpha) interval of the law's mean holds y0 (the
  inverse-prediction or Fieller interval: where the mean could reach y0);
- the **calibration interval** is the set whose prediction interval of one new run holds y0 (where a
  single trained run could land at y0).

Both are read off the very bands ``FitResults.get_prediction(C).summary_frame(alpha)`` draws, so
they carry the fit's covariance (CR2 by default, or classical), its degrees of freedom (Bell-McCaffrey
per capacity) and its noise model (the PI): on a grid of log10 C the band is evaluated, the connected
run of capacities around the estimate that holds y0 is found and its ends refined by Brent's method on
max(lower(C) - y0, y0 - upper(C)). With ``cov_type="nonrobust"`` the bands are the textbook ones and
the sets have the closed forms of the references (the tests check them): with x = g(C), u0 = (z0 -
a) / b, g = t^2 s^2 / (b^2 Sxx), the calibration bounds are xbar + [(u0 - xbar) +- (t s / b)
sqrt((u0 - xbar)^2 / Sxx + (1 - g)(1 + 1/n))] / (1 - g), and the CI's the same without the "1 +".

The search covers ``REACH_DECADES`` decades of capacity beyond the fitted ones on either side. The
answer is **beyond what the law supports** (``supported`` False, ``beyond`` says why; the command
still exits 0) when the slope's (1 - alpha) CI includes 0 (the Fieller set is then unbounded, or the
whole axis), when the CI reaches the edge of the searched range (reported as unbounded: 0 or inf),
or when y0 is outside what the law can reach at a positive capacity (a linear law at C <= 0, a power
law at y0 <= 0, a flat law). A calibration interval that is open while the CI is not gets a note
instead: the PI of one run far from the fitted capacities holds the noise model's extrapolated noise
(its log-variance trend and that trend's uncertainty both grow with the distance), which with 1-2
seeds per capacity often swamps the law a few decades out; the law itself still answers.

**Saturating law** y = E + A C^-alpha: C0 = (A / (y0 - E))^(1 / alpha). Its intervals come from a
residual bootstrap of the Huber fit (``saturating.refit``, the fit's own threshold): B refits to
y* = fitted + resampled residuals give draws of (E, A, alpha); the CI is the percentile interval of
the inverted capacity, the calibration interval that of the capacity where the law reaches y0 - e
(e a further resampled residual: one run's noise). A draw whose law never reaches its target counts
as an infinite capacity. y0 on the far side of E (y0 <= E for a falling law) is beyond what the law
supports, with no estimate; y0 inside E's profile CI has an estimate but is beyond what the law
supports (its interval is open above). A fit that is not identified supports no answer.

**Cost** (``with_cost``): where the table has ``train_flops`` (and/or ``train_seconds``) and the law
is not already over one of them, a cost model cost = c0 + c1 C (c0, c1 >= 0: a fixed part and one
proportional to the capacity, ``cost_model``) is fitted by non-negative least squares to the fitted
(grid) rows, and the estimate and both intervals are mapped through it. The
mapping is a point map: it adds no uncertainty of its own (the cost of a run is measured closely;
the law's is the uncertainty that matters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize

from analysis import saturating as sat_law
from analysis.errors import AnalysisError
from analysis.schema import COST_AXES

REACH_DECADES = 6.0          # the search for a set's ends: this many decades beyond the fitted capacities
GRID_PER_DECADE = 10         # grid points per decade of the search (a set's ends are then refined by Brent)
WALK = 16                    # grid points evaluated at a time, walking out from the estimate
BOOTSTRAP_B = 999            # saturating law: refits of the residual bootstrap
METHODS = {"band": "inverted bands of the fit (Fieller / calibration interval)",
           "bootstrap": "residual bootstrap of the Huber fit, percentile intervals"}


@dataclass
class InversePrediction:
    """The capacity at which the law reaches ``target`` (y0), with its CI and calibration interval.

    ``estimate`` is NaN where the law reaches no positive capacity at y0; an interval's bound is 0 or
    inf where the set is unbounded on that side (NaN where it could not be found). ``supported``:
    False with the reason in ``beyond`` when the answer is beyond what the law supports.
    """

    target: float
    x: str
    y: str
    form: str
    alpha: float
    method: str
    estimate: float
    ci: tuple[float, float]
    calibration: tuple[float, float]
    beyond: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    B: int | None = None
    costs: dict[str, CostMapping] = field(default_factory=dict)

    @property
    def supported(self) -> bool:
        return not self.beyond

    def to_dict(self) -> dict:
        """JSON-ready (``cli.json_ready`` turns inf into null: an unbounded side)."""
        return {"target": self.target, "x": self.x, "y": self.y, "form": self.form, "alpha": self.alpha,
                "method": self.method, "method_words": METHODS[self.method], "bootstrap_draws": self.B,
                "estimate": self.estimate, "ci": list(self.ci), "calibration": list(self.calibration),
                "ci_bounded": [bool(np.isfinite(v) and v > 0) for v in self.ci],
                "calibration_bounded": [bool(np.isfinite(v) and v > 0) for v in self.calibration],
                "supported": self.supported, "beyond": "; ".join(self.beyond) or None, "notes": list(self.notes),
                "cost": {k: v.to_dict() for k, v in self.costs.items()}}


# --- linear-in-parameters laws: inverting the bands ---------------------------------------------


def _inverse_law(res, z0: float) -> float:
    """g(C0) = (z0 - a) / b for z = a + b g(C): the capacity C0 (NaN where b = 0)."""
    a, b = res.params.to_numpy()
    if b == 0:
        return math.nan
    u = (z0 - a) / b
    with np.errstate(over="ignore"):
        if res.form == "log-linear":
            return float(np.power(10.0, u))
        if res.form == "power":
            return float(np.exp(u))
    return float(u) if u > 0 else math.nan


def _distance(res, y0: float, lcols: tuple[str, str], alpha: float):
    """h(log10 C) = max(lower - y0, y0 - upper) of a band (<= 0 where it holds y0), vectorized."""
    lo_col, hi_col = lcols

    def h(logc):
        logc = np.atleast_1d(np.asarray(logc, dtype=float))
        sf = res.get_prediction(10.0 ** logc).summary_frame(alpha)
        lo, hi = sf[lo_col].to_numpy(float), sf[hi_col].to_numpy(float)
        with np.errstate(invalid="ignore"):
            return np.maximum(lo - y0, y0 - hi)
    return h


def _band_set(h, start: float, lo_edge: float, hi_edge: float) -> tuple[float, float]:
    """The ends (log10 C) of the run around ``start`` where h <= 0: walked outward on a grid of
    ``GRID_PER_DECADE`` points a decade (``WALK`` at a time) until h > 0, that step then refined by
    brentq; an end beyond the search's edge is -inf / +inf (unbounded). NaN when h(start) > 0."""
    if not h(start)[0] <= 0:
        return math.nan, math.nan
    step = 1.0 / GRID_PER_DECADE
    ends = []
    for sign, edge in ((-1, lo_edge), (1, hi_edge)):
        inner, found = start, None
        while found is None and inner != edge:
            pts = np.clip(inner + sign * step * np.arange(1, WALK + 1), min(lo_edge, edge), max(hi_edge, edge))
            pts = np.unique(pts)[::sign]
            vals = h(pts)
            out = np.flatnonzero(~(vals <= 0))       # NaN (no band there) counts as outside
            if len(out):
                k = int(out[0])
                found = (inner if k == 0 else pts[k - 1], pts[k], vals[k])
            else:
                inner = float(pts[-1])
        if found is None:
            ends.append(sign * math.inf)
            continue
        a, b, fb = found
        if not np.isfinite(fb):      # a band that stops (NaN): the last point inside
            ends.append(float(a))
            continue
        ends.append(optimize.brentq(lambda v: float(h(v)[0]), min(a, b), max(a, b), xtol=1e-10))
    return ends[0], ends[1]


def _to_capacity(logc: float) -> float:
    if math.isnan(logc):
        return math.nan
    if logc == -math.inf:
        return 0.0
    if logc == math.inf:
        return math.inf
    return float(10.0 ** logc)


def _invert_linear(res, y0: float, alpha: float) -> InversePrediction:
    law = res.law
    inv = InversePrediction(y0, res.x, res.y, res.form, alpha, "band", math.nan, (math.nan, math.nan),
                            (math.nan, math.nan))
    if law.log_y and y0 <= 0:
        inv.beyond.append(f"the {res.form} law's {res.y} is positive at every capacity: it never reaches {y0:g}")
        return inv
    z0 = float(law.to_fit_space(y0))
    C0 = _inverse_law(res, z0)
    inv.estimate = C0
    b_lo, b_hi = res.conf_int(alpha).loc["b"]
    level = f"{1 - alpha:.0%}"
    if res.params["b"] == 0:
        inv.beyond.append("the law's slope is 0: it reaches no other value")
        return inv
    if not C0 > 0:
        inv.beyond.append(f"the {res.form} law reaches {res.y} = {y0:g} only at {res.x} <= 0")
        return inv
    if b_lo <= 0 <= b_hi:
        inv.beyond.append(f"the slope's {level} CI [{b_lo:.4g}, {b_hi:.4g}] includes 0: the data do not show "
                          f"{res.y} moving with {res.x}, and the set of capacities whose band holds {y0:g} is "
                          "unbounded (Fieller)")
    caps = np.log10(res.C)
    lo_edge, hi_edge = caps.min() - REACH_DECADES, caps.max() + REACH_DECADES
    start = math.log10(C0) if np.isfinite(C0) else math.inf
    if not lo_edge <= start <= hi_edge:
        side = "beyond the largest" if start > hi_edge else "below the smallest"
        inv.beyond.append(f"the law reaches {y0:g} at {res.x} = {C0:.4g}, more than {REACH_DECADES:g} decades "
                          f"{side} fitted capacity: too far to extrapolate")
        return inv
    for attr, cols in (("ci", ("mean_ci_lower", "mean_ci_upper")), ("calibration", ("obs_ci_lower", "obs_ci_upper"))):
        ends = _band_set(_distance(res, y0, cols, alpha), start, lo_edge, hi_edge)
        setattr(inv, attr, tuple(_to_capacity(e) for e in ends))
    for attr, words, said in (("ci", "CI", inv.beyond), ("calibration", "calibration interval", inv.notes)):
        lo, hi = getattr(inv, attr)
        if lo == 0.0 or hi == math.inf:
            open_side = " and ".join(s for s, v in (("below", lo == 0.0), ("above", hi == math.inf)) if v)
            why = "" if attr == "ci" else (" (the noise of one run, read off the noise model far from the fitted "
                                           "capacities, swamps the law there)")
            said.append(f"the {words} is open {open_side}: the band holds {y0:g} out to {REACH_DECADES:g} decades "
                        f"beyond the fitted capacities{why}")
    if res.noise is None and res.cov_type != "nonrobust":
        inv.notes.append("no noise model (fewer than 3 capacities with a residual variance): the prediction "
                         "interval is unbounded, and so the calibration interval")
    return inv


# --- the saturating law: a residual bootstrap ----------------------------------------------------


def _sat_capacity(E, A, alpha, y0) -> np.ndarray:
    """C where E + A C^-alpha = y0 (arrays): inf where the law never reaches y0."""
    E, A, alpha, y0 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (E, A, alpha, y0)))
    ratio = np.divide(A, y0 - E, out=np.full(E.shape, -1.0), where=(y0 - E) != 0)
    ok = (ratio > 0) & (alpha > 0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        out = np.where(ok, np.exp(np.log(np.where(ok, ratio, 1.0)) / np.where(ok, alpha, 1.0)), np.inf)
    return out


def _invert_saturating(res, y0: float, alpha: float, B: int, seed) -> InversePrediction:
    inv = InversePrediction(y0, res.x, res.y, res.form, alpha, "bootstrap", math.nan, (math.nan, math.nan),
                            (math.nan, math.nan), B=B)
    if not res.identified:
        inv.beyond.append("the saturating law is not identified (" + "; ".join(res.warnings) + ")")
        return inv
    E, A, a = res.params.to_numpy()
    if not (A / (y0 - E) > 0 if y0 != E else False):
        side = "at or below" if A > 0 else "at or above"
        inv.beyond.append(f"{res.y} = {y0:g} is {side} the law's asymptote E = {E:.4g}: it never reaches it")
        return inv
    inv.estimate = float(_sat_capacity(E, A, a, y0))
    e_lo, e_hi = res.conf_int(alpha).loc["E"]
    if min(e_lo, e_hi) <= y0 <= max(e_lo, e_hi):
        inv.beyond.append(f"{res.y} = {y0:g} lies inside the {1 - alpha:.0%} CI of the asymptote E "
                          f"[{e_lo:.4g}, {e_hi:.4g}]: the data cannot tell whether the law ever reaches it")
    fit = res._sat
    fitted = res.law.predict(res.params.to_numpy(), res.C)
    resid = res.yobs - fitted
    rng = np.random.default_rng(seed)
    draws = np.empty((B, 3))
    for k in range(B):
        ystar = fitted + rng.choice(resid, size=len(resid), replace=True)
        draws[k] = sat_law.refit(fit, res.C, ystar)
    noise = rng.choice(resid, size=B, replace=True)
    c_mean = _sat_capacity(draws[:, 0], draws[:, 1], draws[:, 2], y0)
    c_run = _sat_capacity(draws[:, 0], draws[:, 1], draws[:, 2], y0 - noise)
    q = [alpha / 2, 1 - alpha / 2]
    # no interpolation between order statistics: a draw that never reaches y0 is inf, and inf - inf is NaN
    inv.ci = tuple(float(v) for v in np.quantile(c_mean, q, method="inverted_cdf"))
    inv.calibration = tuple(float(v) for v in np.quantile(c_run, q, method="inverted_cdf"))
    for attr, words, said in (("ci", "CI", inv.beyond), ("calibration", "calibration interval", inv.notes)):
        if getattr(inv, attr)[1] == math.inf:
            said.append(f"the {words} is open above: in more than {alpha / 2:.1%} of the bootstrap draws the "
                        f"law never reaches {y0:g}")
    return inv


# --- the entry point -----------------------------------------------------------------------------


def inverse_predict(res, target: float, alpha: float = 0.05, B: int = BOOTSTRAP_B, seed=0) -> InversePrediction:
    """The capacity where ``res`` (a ``FitResults``) reaches ``target`` in its y, with the CI and the
    calibration interval at level 1 - ``alpha`` (see the module docstring)."""
    if not (isinstance(target, int | float) and math.isfinite(target)):
        raise AnalysisError(f"target {target!r}: expected a finite value of {res.y}")
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
    if res._ols is not None:
        return _invert_linear(res, float(target), alpha)
    return _invert_saturating(res, float(target), alpha, B, seed)


# --- the cost of a capacity ----------------------------------------------------------------------


@dataclass(frozen=True)
class CostMapping:
    """cost = c0 + c1 C (c0, c1 >= 0) fitted to the grid rows, and the inverse prediction mapped through it."""

    column: str
    c0: float
    c1: float
    rows: int
    capacities: int
    estimate: float
    ci: tuple[float, float]
    calibration: tuple[float, float]

    def cost(self, C) -> np.ndarray:
        C = np.asarray(C, dtype=float)
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(C), math.inf if self.c1 > 0 else self.c0, self.c0 + self.c1 * C)

    def describe(self, x: str) -> str:
        return (f"{self.column} = {self.c0:.4g} + {self.c1:.4g} {x} (least squares, both >= 0), fitted to "
                f"{self.rows} grid run(s) at {self.capacities} capacities")

    def to_dict(self) -> dict:
        return {"column": self.column, "model": "cost = c0 + c1 C", "c0": self.c0, "c1": self.c1,
                "rows": self.rows, "capacities": self.capacities, "estimate": self.estimate, "ci": list(self.ci),
                "calibration": list(self.calibration)}


def cost_model(points: pd.DataFrame, x: str, column: str) -> tuple[float, float, int, int] | None:
    """(c0, c1, rows, capacities) of column = c0 + c1 x, non-negative least squares over the rows with both
    finite and x > 0, cost >= 0; None with fewer than 2 distinct capacities there.

    Affine, not a power law: a trial's model FLOPs are a fixed part (the frozen decoder's, the loss's) plus
    one proportional to the trainable parameters (the fusion module's FLOPs per token are 2 per parameter
    of its experts), and its seconds follow them. A power law through such points bends below the
    largest ones and underestimates the cost of a capacity beyond them."""
    if column not in points.columns or x not in points.columns:
        return None
    C = pd.to_numeric(points[x], errors="coerce").to_numpy(float)
    cost = pd.to_numeric(points[column], errors="coerce").to_numpy(float)
    ok = np.isfinite(C) & np.isfinite(cost) & (C > 0) & (cost >= 0)
    if len(np.unique(C[ok])) < 2:
        return None
    cs, ys = C[ok].max(), max(cost[ok].max(), 1e-300)  # scaled: C and cost may be 1e8 and 1e13
    (c0, c1), _ = optimize.nnls(np.column_stack([np.ones(ok.sum()), C[ok] / cs]), cost[ok] / ys)
    return float(c0 * ys), float(c1 * ys / cs), int(ok.sum()), int(len(np.unique(C[ok])))


def with_cost(inv: InversePrediction, points: pd.DataFrame) -> InversePrediction:
    """``inv`` with ``costs``: each cost column of ``COST_AXES`` that ``points`` (the fitted rows) has,
    where the law's x is not itself a cost, mapped through its affine cost model (module docstring)."""
    if inv.x in COST_AXES:
        return inv
    for column in COST_AXES:
        model = cost_model(points, inv.x, column)
        if model is None:
            continue
        c0, c1, rows, caps = model
        m = CostMapping(column, c0, c1, rows, caps, math.nan, (math.nan, math.nan), (math.nan, math.nan))
        est = float(m.cost(inv.estimate)) if np.isfinite(inv.estimate) else math.nan
        ci = tuple(sorted(float(v) for v in m.cost(np.array(inv.ci))))
        cal = tuple(sorted(float(v) for v in m.cost(np.array(inv.calibration))))
        inv.costs[column] = CostMapping(column, c0, c1, rows, caps, est, ci, cal)
    return inv

