"""The hyperparameter law: the best value of a searched hyperparameter (the learning rate) against capacity.

A searched grid point (one ``point_id``: a width and a layer count, its seeds pooled) ran an Optuna
study of several trials, each at its own value v of the hyperparameter, scored by the selection
loss (``val_l1``, lower is better). The law is fitted in two steps.

**1. Each point's optimum**, from every completed search trial of the point (not only the winner;
pruned trials are left out: their metric is a partial value). With u = log10 v and y the metric,
OLS fits the quadratic

    y = b0 + b1 u + b2 u^2,

and where the point has at least 4 distinct values (one more than the quadratic's 3 parameters, so
that the parabola is an approximation the data can contradict, with residual df), the curvature is
positive (b2 > 0: a minimum) and the vertex

    u* = -b1 / (2 b2)

lies within the tried range [min u, max u], the optimum is that vertex (method ``vertex``), with
the delta-method standard error

    se(u*)^2 = g' V g,   g = du*/db = (0, -1 / (2 b2), b1 / (2 b2^2)),

V the OLS covariance of (b0, b1, b2) (one pooled residual variance, df n - 3). Otherwise (fewer
values, a maximum or a flat fit, or a vertex outside the tried range: an extrapolation the trials
do not support) the optimum is the best value tried (method ``best``): the value with the lowest
mean metric over its trials (the best trial's value when, as with Optuna's sampling, every trial has
its own value), with an unknown standard error. A point with fewer than 2 distinct values has no
optimum (a single value is the value used, not one found) and is left out with a warning.

**2. The law** over the points with an optimum, i = 1..k, x_i = log10 C_i (C the capacity column,
``params`` by default, a point's C the median over its trials):

    log10 v*_i = a + b x_i + e_i.

Weighting. Where every point's optimum is a vertex with a finite positive se_i, the points are
weighted as in a random-effects meta-regression: a point's variance about the law is its own
estimation error plus the law's misfit tau^2 (the points do not lie on a line to within their
se: the quadratic is an approximation, the search is random), var e_i = se_i^2 + tau^2.
tau^2 is the method-of-moments (DerSimonian-Laird) estimate from the fixed-effect fit with
w_i = 1 / se_i^2,

    tau^2 = max(0, (Q - (k - 2)) / (sum w - tr[(X'WX)^-1 X'W^2 X])),   Q = sum w_i e_i^2,

then weighted least squares with w*_i = 1 / (se_i^2 + tau^2) and the Knapp-Hartung scale: the
covariance s^2 (X'W*X)^-1 with s^2 = sum w*_i e_i^2 / (k - 2) (i.e. WLS with an estimated scale, as
statsmodels' WLS), t with k - 2 df. So one sharply located point cannot outweigh the others more
than the law's own misfit allows, and where the se are all equal the fit is OLS. Where any point's
optimum is a ``best`` value (no se), the points are weighted equally: OLS, t with k - 2 df. With
k = 2 points the line passes through both: its parameters and predictions are given, their
standard errors and intervals are undefined (NaN), and the text says so.

Predictions: v*(C) = 10^(a + b log10 C) (the law's median value, in the hyperparameter's units),
with the t interval of a + b log10 C mapped back by 10^.

Pure numpy / pandas / scipy / statsmodels; ``fit_hparam_law`` is what the sweeper calls on the
frame it builds from its Optuna studies while a sweep runs, and ``law_from_table`` on a loaded table.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from analysis import schema
from analysis.errors import AnalysisError

VERTEX, BEST = "vertex", "best"  # how a point's optimum was located
MIN_VERTEX_VALUES = 4            # distinct values a point needs for the quadratic's vertex
MIN_VALUES = 2                   # distinct values a point needs for any optimum
OLS, RANDOM_EFFECTS = "ols", "random-effects"
WEIGHTING_WORDS = {
    OLS: "equal weights (OLS): a point's optimum has no standard error where it is the best value tried",
    RANDOM_EFFECTS: "1 / (se^2 + tau^2): each optimum's own error plus the law's misfit tau^2 (DerSimonian-Laird), "
                    "Knapp-Hartung scale",
    "exact": "two points: the line passes through both",
}
POINT_COLUMNS = ("point_id", "capacity", "optimum", "optimum_se_log10", "method", "n_trials", "n_values",
                 "best_value")


def hp_column(param: str) -> str:
    """The table's column of a searched hyperparameter: ``lr`` -> ``hp.lr``."""
    return f"{schema.HP_PREFIX}{param}"


# --- 1. each point's optimum -----------------------------------------------------------------


@dataclass(frozen=True)
class PointOptimum:
    """A point's optimum in u = log10 value: ``u``, its ``se`` (NaN for ``best``), and the ``method``."""

    u: float
    se: float
    method: str
    coef: tuple[float, float, float] | None = None  # the quadratic's (b0, b1, b2) where fitted


def point_optimum(u, y) -> PointOptimum:
    """The optimum of one point's trials: the quadratic's vertex where it is a supported minimum, else the
    best value tried (see the module docstring). ``u``: log10 of the values; ``y``: the metric (lower is
    better); at least ``MIN_VALUES`` distinct ``u``."""
    u, y = np.asarray(u, dtype=float), np.asarray(y, dtype=float)
    values, inverse = np.unique(u, return_inverse=True)
    means = np.bincount(inverse, weights=y) / np.bincount(inverse)
    best = PointOptimum(float(values[np.argmin(means)]), math.nan, BEST)
    if len(values) < MIN_VERTEX_VALUES:
        return best
    X = np.column_stack([np.ones_like(u), u, u ** 2])
    ols = sm.OLS(y, X).fit()
    b0, b1, b2 = (float(v) for v in ols.params)
    if not b2 > 0:
        return PointOptimum(best.u, best.se, BEST, (b0, b1, b2))
    vertex = -b1 / (2 * b2)
    if not values[0] <= vertex <= values[-1]:
        return PointOptimum(best.u, best.se, BEST, (b0, b1, b2))
    g = np.array([0.0, -1.0 / (2 * b2), b1 / (2 * b2 ** 2)])
    se = float(math.sqrt(max(g @ ols.cov_params() @ g, 0.0)))
    return PointOptimum(float(vertex), se, VERTEX, (b0, b1, b2))


# --- the rows searched -----------------------------------------------------------------------


def _numeric(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    from analysis.load import _numeric as numeric  # the table's own rule and message for a text cell

    return numeric(df, col, source)


def searched_trials(df: pd.DataFrame, param: str = "lr", metric: str = "val_l1", x: str = "params",
                    source: str = "the table") -> pd.DataFrame:
    """The completed search trials of the grid with a finite value, metric and capacity: columns
    ``point_id``, ``trial_id`` (where the table has it), ``capacity``, ``value``, ``metric``.

    Kept: ``kind`` grid (all rows without a kind column), ``status`` completed (pruned trials' metric
    is partial; failed, running and skipped ones have none), and where the table has ``lr_source``
    only ``searched`` rows (a ``law`` row is a single trial at a transferred value, a ``spec`` row at
    the spec's). Rows without a value (units that were not searched) are left out silently; rows whose
    metric or capacity is NaN with a warning. A value <= 0 or a capacity <= 0 is an error (log10).
    """
    col = hp_column(param)
    for need, role in ((col, f"the searched hyperparameter {param!r}"), (metric, "the selection metric"),
                       (x, "the capacity")):
        if need not in df.columns:
            hps = [c for c in df.columns if str(c).startswith(schema.HP_PREFIX)]
            hint = "" if need != col else (
                f"; searched hyperparameters in the table: {', '.join(hps)}" if hps else
                "; the table has no hp.<name> column: its sweep searched no hyperparameter (a spec's search block)")
            raise AnalysisError(f"{source}: no column {need!r} for {role}{hint}")
    df = df.reset_index(drop=True)
    keep = np.ones(len(df), dtype=bool)
    if "kind" in df.columns:
        keep &= (df["kind"].astype(str) != "control").to_numpy()
    if "status" in df.columns:
        keep &= (df["status"].astype(str) == "completed").to_numpy()
    if schema.LR_SOURCE in df.columns:
        keep &= (df[schema.LR_SOURCE].astype(str) == schema.SEARCHED).to_numpy()
    rows = df[keep]
    value = _numeric(rows, col, source)
    rows = rows[np.isfinite(value)]
    value = value[rows.index]
    y, cap = _numeric(rows, metric, source), _numeric(rows, x, source)
    for series, name, what in ((value, col, "searched value"), (cap, x, "capacity")):
        bad = series <= 0
        if bad.any():
            from analysis.load import row_names

            first = row_names(rows[bad], single=True)[0]
            raise AnalysisError(f"{source}: column {name!r} holds {series[bad].iloc[0]:g} in {first}: expected a "
                                f"{what} > 0 (the law is fitted on log10 of it)")
    missing = ~(np.isfinite(y) & np.isfinite(cap))
    if missing.any():
        from analysis.load import listed, row_names

        warnings.warn(f"{source}: left out {int(missing.sum())} completed search trial(s) with a NaN {metric!r} or "
                      f"{x!r}: {listed(row_names(rows[missing]))}", stacklevel=3)
    ok = ~missing
    point = rows["point_id"].astype(str) if "point_id" in rows.columns else cap.map(lambda c: f"{x}={c:g}")
    out = pd.DataFrame({"point_id": point[ok], "capacity": cap[ok], "value": value[ok], "metric": y[ok]})
    if "trial_id" in rows.columns:
        out.insert(1, "trial_id", rows.loc[ok, "trial_id"].astype(str))
    return out


# --- 2. the law ------------------------------------------------------------------------------


def _law_fit(X: np.ndarray, U: np.ndarray, se: np.ndarray):
    """(params (a, b), covariance, df, weighting, tau^2, scale) of log10 v* = a + b log10 C (module docstring)."""
    k = len(U)
    D = np.column_stack([np.ones(k), X])
    if k == 2:
        params = np.linalg.solve(D, U)
        return params, np.full((2, 2), math.nan), 0, "exact", math.nan, math.nan
    if np.all(np.isfinite(se) & (se > 0)):
        w = 1.0 / se ** 2
        fe = sm.WLS(U, D, weights=w).fit()
        Q = float(np.sum(w * fe.resid ** 2))
        XtWX_inv = np.linalg.inv(D.T @ (w[:, None] * D))
        denom = float(np.sum(w) - np.trace(XtWX_inv @ (D.T @ ((w ** 2)[:, None] * D))))
        tau2 = max(0.0, (Q - (k - 2)) / denom) if denom > 0 else 0.0
        res = sm.WLS(U, D, weights=1.0 / (se ** 2 + tau2)).fit()
        return res.params, res.cov_params(), k - 2, RANDOM_EFFECTS, tau2, float(res.scale)
    res = sm.OLS(U, D).fit()
    return res.params, res.cov_params(), k - 2, OLS, math.nan, float(res.scale)


class HparamPrediction:
    """The law's optimum at capacities ``C``: ``summary_frame(alpha)`` as statsmodels' predictions."""

    def __init__(self, law: HparamLaw, C):
        self._law = law
        self.C = _capacities(C, law.x)

    @property
    def predicted_mean(self) -> np.ndarray:
        return self._law.predict(self.C)

    def summary_frame(self, alpha: float | None = None) -> pd.DataFrame:
        """Per capacity: ``mean`` (10^(a + b log10 C), in the hyperparameter's units), ``mean_log10``,
        ``mean_se_log10``, ``df`` and ``mean_ci_lower`` / ``mean_ci_upper`` (the t interval of the log10
        mapped back; NaN with 2 points). Index: the capacities."""
        law = self._law
        alpha = law.alpha if alpha is None else _check_alpha(alpha)
        L = np.column_stack([np.ones(len(self.C)), np.log10(self.C)])
        m = L @ law.params.to_numpy()
        se = np.sqrt(np.einsum("ip,pq,iq->i", L, law.cov_params.to_numpy(), L))
        t = law._t(alpha)
        sf = pd.DataFrame({"mean": 10 ** m, "mean_log10": m, "mean_se_log10": se, "df": float(law.df_resid),
                           "mean_ci_lower": 10 ** (m - t * se), "mean_ci_upper": 10 ** (m + t * se)})
        sf.index = pd.Index(self.C, name=law.x)
        return sf


@dataclass
class HparamLaw:
    """log10 v* = a + b log10 C fitted to each point's optimum: statsmodels-like (``params``, ``bse``,
    ``conf_int``, ``df_resid``, ``predict``, ``get_prediction``, ``summary``, ``to_dict``)."""

    param: str
    metric: str
    x: str
    params: pd.Series                  # a, b (on log10 v* and log10 C)
    cov_params: pd.DataFrame
    df_resid: int
    points: pd.DataFrame               # POINT_COLUMNS, one row per point with an optimum
    trials: pd.DataFrame               # the completed search trials used (searched_trials' columns)
    weighting: str                     # ols | random-effects | exact
    tau2: float = math.nan             # the law's misfit variance (random-effects weighting)
    scale: float = math.nan            # the residual scale of the weighted fit (s^2)
    alpha: float = 0.05
    skipped: list = field(default_factory=list)  # points without an optimum, and why
    edges: list = field(default_factory=list)  # points whose best value tried is an end of the values tried

    @property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.cov_params.to_numpy())), index=self.params.index)

    @property
    def nobs(self) -> int:
        return len(self.points)

    def _t(self, alpha: float) -> float:
        return float(stats.t.ppf(1 - alpha / 2, self.df_resid)) if self.df_resid > 0 else math.nan

    def conf_int(self, alpha: float | None = None) -> pd.DataFrame:
        """t intervals for a and b with ``df_resid`` = points - 2 df (NaN with 2 points)."""
        alpha = self.alpha if alpha is None else _check_alpha(alpha)
        t = self._t(alpha)
        return pd.DataFrame({"lower": self.params - t * self.bse, "upper": self.params + t * self.bse})

    def predict(self, capacities) -> np.ndarray:
        """The law's optimum 10^(a + b log10 C) at each capacity, in the hyperparameter's units."""
        C = _capacities(capacities, self.x)
        return 10 ** (self.params["a"] + self.params["b"] * np.log10(C))

    def get_prediction(self, capacities) -> HparamPrediction:
        return HparamPrediction(self, capacities)

    @property
    def equation(self) -> str:
        a, b = self.params["a"], self.params["b"]
        return f"{self.param}* = 10^({a:.4g}) * {self.x}^({b:.4g})"

    @property
    def form(self) -> str:
        return f"log10({self.param}*) = a + b log10({self.x})"

    def notes(self) -> list[str]:
        """What the numbers rest on, in words: the weighting, the df, the points left out."""
        out = [f"weighting: {WEIGHTING_WORDS[self.weighting]}" +
               (f"; tau^2 = {self.tau2:.3g}" if self.weighting == RANDOM_EFFECTS else "")]
        if self.df_resid == 0:
            out.append("only 2 points: the line passes through both, so its standard errors and intervals are "
                       "undefined (NaN); predictions are given without an interval")
        out += [f"left out: {s}" for s in self.skipped]
        out += [f"at the edge: {e}" for e in self.edges]
        return out

    def summary(self, alpha: float | None = None) -> str:
        alpha = self.alpha if alpha is None else alpha
        ci = self.conf_int(alpha)
        level = f"{1 - alpha:.0%}"
        lines = [f"Hyperparameter law: {self.form}, {self.param}* the {self.param} of least {self.metric}",
                 f"  {self.equation}",
                 f"  {self.nobs} points, df {self.df_resid}", "",
                 f"{'':>4}{'coef':>12}{'std err':>12}{level + ' CI':>28}"]
        for name in self.params.index:
            lo, hi = ci.loc[name, "lower"], ci.loc[name, "upper"]
            lines.append(f"{name:>4}{self.params[name]:>12.5g}{self.bse[name]:>12.4g}"
                         f"{f'[{lo:.5g}, {hi:.5g}]':>28}")
        lines += [f"note: {n}" for n in self.notes()]
        lines += ["", f"{'point':>14}{self.x:>14}{self.param + '*':>12}{'se log10':>10}{'method':>8}{'trials':>8}"
                  f"{'best ' + self.metric:>14}"]
        for r in self.points.itertuples():
            lines.append(f"{r.point_id:>14}{r.capacity:>14.5g}{r.optimum:>12.4g}{r.optimum_se_log10:>10.3g}"
                         f"{r.method:>8}{r.n_trials:>8d}{r.best_value:>14.5g}")
        return "\n".join(lines)

    def to_dict(self, alpha: float | None = None) -> dict:
        """JSON-ready (NaN as float: ``analysis.cli.json_ready`` makes them null)."""
        alpha = self.alpha if alpha is None else alpha
        ci = self.conf_int(alpha)
        return {"param": self.param, "metric": self.metric, "x": self.x, "form": self.form,
                "equation": self.equation, "n_points": self.nobs, "df_resid": int(self.df_resid), "alpha": alpha,
                "params": {k: float(v) for k, v in self.params.items()},
                "bse": {k: float(v) for k, v in self.bse.items()},
                "conf_int": {k: [float(ci.loc[k, "lower"]), float(ci.loc[k, "upper"])] for k in ci.index},
                "weighting": self.weighting, "tau2": float(self.tau2), "scale": float(self.scale),
                "points": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                           for r in self.points.to_dict(orient="records")],
                "n_trials": int(len(self.trials)), "skipped": list(self.skipped), "notes": self.notes()}

    def __repr__(self) -> str:
        return f"<HparamLaw {self.equation}; {self.nobs} points, df {self.df_resid}, {self.weighting}>"


def _check_alpha(alpha) -> float:
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def _capacities(C, x: str) -> np.ndarray:
    C = np.atleast_1d(np.asarray(C, dtype=float))
    bad = ~(np.isfinite(C) & (C > 0))
    if bad.any():
        raise AnalysisError(f"capacity {C[bad][0]:g}: expected a finite capacity > 0 in the units of {x!r}")
    return C


def fit_hparam_law(df: pd.DataFrame, param: str = "lr", metric: str = "val_l1", x: str = "params",
                   alpha: float = 0.05, source: str = "the table") -> HparamLaw:
    """Fit the hyperparameter law (module docstring) to a results table's rows.

    ``df`` has at least ``point_id``, ``kind``, ``status``, ``x``, ``hp.<param>`` and ``metric`` (and
    ``lr_source`` where the sweep records it): the table's own columns (``analysis.schema``), whether
    read from a results file or built by the sweeper from its Optuna studies. AnalysisError (one
    line) without the columns, with a value or capacity <= 0, or with fewer than 2 points that have
    an optimum, at 2 or more distinct capacities.
    """
    _check_alpha(alpha)
    trials = searched_trials(df, param=param, metric=metric, x=x, source=source)
    rows, skipped, edges = [], [], []
    for pid, g in trials.groupby("point_id", sort=False):
        u = np.log10(g["value"].to_numpy(float))
        n_values = len(np.unique(u))
        if n_values < MIN_VALUES:
            skipped.append(f"{pid} ({len(g)} trial(s) at {n_values} value(s) of {param}: no optimum to locate)")
            continue
        opt = point_optimum(u, g["metric"].to_numpy(float))
        if opt.method == BEST and opt.u in (u.min(), u.max()):
            end, side = ("smallest", "below") if opt.u == u.min() else ("largest", "above")
            edges.append(f"{pid}'s optimum is the {end} {param} tried ({10 ** opt.u:.4g}): the best may lie "
                         f"{side} it (widen the search range)")
        rows.append({"point_id": str(pid), "capacity": float(np.median(g["capacity"])), "optimum": 10 ** opt.u,
                     "optimum_se_log10": opt.se, "method": opt.method, "n_trials": int(len(g)),
                     "n_values": int(n_values), "best_value": float(g["metric"].min())})
    if skipped:
        warnings.warn(f"{source}: {len(skipped)} point(s) without an optimum of {param!r}: {'; '.join(skipped)}",
                      stacklevel=2)
    points = pd.DataFrame(rows, columns=list(POINT_COLUMNS)).sort_values(["capacity", "point_id"],
                                                                          ignore_index=True)
    if len(points) < 2 or points["capacity"].nunique() < 2:
        have = (f"{len(points)} point(s) with an optimum" if len(points) < 2 else
                f"{len(points)} points, all at {x} = {points['capacity'].iloc[0]:g}")
        raise AnalysisError(f"{source}: the {param} law needs at least 2 searched points (completed search trials "
                            f"at 2 or more values of {hp_column(param)}) at 2 or more capacities in {x!r}; "
                            f"found {have}")
    X, U = np.log10(points["capacity"].to_numpy()), np.log10(points["optimum"].to_numpy())
    params, cov, df_resid, weighting, tau2, scale = _law_fit(X, U, points["optimum_se_log10"].to_numpy(float))
    names = ["a", "b"]
    return HparamLaw(param=param, metric=metric, x=x, params=pd.Series(np.asarray(params, float), index=names),
                     cov_params=pd.DataFrame(np.asarray(cov, float), index=names, columns=names),
                     df_resid=int(df_resid), points=points, trials=trials, weighting=weighting, tau2=tau2,
                     scale=scale, alpha=alpha, skipped=skipped, edges=edges)


def searched_points(df: pd.DataFrame | None, param: str = "lr") -> int:
    """How many grid points of ``df`` have completed search trials at 2 or more values of ``param`` (0
    without the column): whether a table holds a hyperparameter law to draw or report."""
    col = hp_column(param)
    if df is None or col not in df.columns:
        return 0
    keep = pd.Series(True, index=df.index)
    if "kind" in df.columns:
        keep &= df["kind"].astype(str) != "control"
    if "status" in df.columns:
        keep &= df["status"].astype(str) == "completed"
    if schema.LR_SOURCE in df.columns:
        keep &= df[schema.LR_SOURCE].astype(str) == schema.SEARCHED
    rows = df[keep]
    values = pd.to_numeric(rows[col], errors="coerce")
    rows = rows[np.isfinite(values)]
    if rows.empty:
        return 0
    key = rows["point_id"].astype(str) if "point_id" in rows.columns else pd.Series(0, index=rows.index)
    return int((pd.to_numeric(rows[col]).groupby(key).nunique() >= MIN_VALUES).sum())


def law_from_table(table, param: str = "lr", metric: str = "val_l1", alpha: float = 0.05) -> HparamLaw | None:
    """The law fitted to a loaded ``analysis.Table``'s trial rows (``Table.trials``: every grid trial its
    ``where`` selects), over the table's capacity column; None when fewer than 2 points were searched.
    AnalysisError when they were and the law cannot be fitted."""
    trials = getattr(table, "trials", None)
    if searched_points(trials, param) < 2:
        return None
    return fit_hparam_law(trials, param=param, metric=metric, x=table.x, alpha=alpha,
                          source=table.source or "the table")
