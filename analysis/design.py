"""Which capacity to train next: a sequential c-optimal design for the law's prediction at a target.

The question is "what one more trial shrinks the interval at the target capacity C0 the most, per
second of compute?". For a law linear in its parameters (log-linear, linear, power: ``Law.design``)
the answer depends only on where the trials are, not on what they measured, so it can be computed
before a trial runs.

**Criterion** (``CRITERION``): *c-optimal sequential design*, the expected variance of the law's
mean at the target. With x(C) the law's design row at capacity C (in the law's fit space: ln y for
``power``), w(C) = 1 / sigma^2(C) the inverse noise variance read off the fit's noise model
(``analysis.noise``: log sigma^2 linear in log10 C; the constant ``res.scale`` when the fit has no
noise model or uses ``cov_type="nonrobust"``, whose intervals assume one pooled variance), and

    M = sum_i w(C_i) x_i x_i'      (every fitted row, and every pending trial)
    V = x0' M^-1 x0                (x0 = x(C0)),

one more trial at C changes V to (Sherman-Morrison)

    V' = V - w(C) (x0' M^-1 x)^2 / (1 + w(C) x' M^-1 x).

The expected widths of the (1 - alpha) intervals at C0 after that trial are then

    PI:       2 t(1 - alpha/2, df') sqrt(V' + sigma^2(C0))
    mean CI:  2 t(1 - alpha/2, df') sqrt(V')

with df' the degrees of freedom the tool's own interval would have: under the default CR2 errors
(capacities as clusters, Bell-McCaffrey df; ``analysis.robust``) the df track the number of distinct
capacities, not of rows, so df' = (distinct capacities after adding the trial) - p: an extra seed at
an existing capacity leaves df' where it was, a new capacity raises it by one. With
``cov_type="nonrobust"`` df' = rows - p (every trial adds one); with ``weights="measurement"``
(known variances) the quantile is the normal one. For ``power`` the widths are mapped from ln y to
y at the fitted mean (exp(m + h) - exp(m - h)). The model-based width is the criterion, not the
tool's interval: that one (``summary_frame``: CR2 se, Bell-McCaffrey df, the noise model's own
uncertainty) is reported beside it as the fit's actual width now. M is the information of the
weighted fit; for an unweighted (OLS) fit under a noise trend the variance of its mean is the
sandwich, which this approximates from below (exact when the noise is constant).

**Criterion "tool"** (``rank(..., criterion="tool")``, ``drorae next --criterion tool``): the expected
width of the tool's own interval rather than the textbook one. It keeps V' but takes df' as the
Bell-McCaffrey df of the mean at C0 that the design after the trial will have (``robust.bm_df``
depends on the design alone, not on the residuals), and, for the PI, integrates the noise model's
uncertainty as the trial leaves it: the variance v' of log sigma^2(C0) from the noise model's
information with each capacity weighted 1 / trigamma(nu / 2), nu = its seeds - 1 (1 for a single
seed: its residual), as ``analysis.noise.fit`` weighs them; a new capacity adds a point to that
trend, one more seed at a capacity with 2+ seeds raises its nu by one (``noise.interval`` then gives
the width). A reduction can be negative here: one more seed at a capacity that already carries much
of the design's leverage (the largest, for an extrapolation) lowers the Bell-McCaffrey df, and the
tool's interval after the refit is expected to be wider. With one seed per capacity the noise
model's uncertainty dominates the PI 10x beyond the data, which the c-optimal criterion does not
see. In the simulation of ``bench/adaptive_design.py`` (bench/results.md) it reached the target PI
width in 2.09x fewer trials than uniform log spacing (c-optimal: 1.73x), and ranked per second it
cost about what uniform did, where the c-optimal ranking per second cost more and needed more
trials than uniform. It equals the c-optimal criterion for classical (``nonrobust``) and
known-variance (``measurement``) fits.

**Pending trials.** Because the criterion depends only on x, trials chosen but not yet measured are
added to M (and to the capacities that count for df) without their y: ``pending=``. Choosing a
batch is then greedy (``choose``): the best candidate, added to pending, then the best given that.
Each ranking's "now" is the design with its pending trials.

**Cost.** ``CostModel``: ln(seconds) = c0 + c1 log10(C), least squares over the completed grid units
(a unit: one grid point x seed, ``unit_id``, else ``point_id`` + ``seed``; its seconds the sum of
``train_seconds`` + ``eval_seconds`` over all of its trial rows, so a searched unit's several trials
all count). Fewer than 2 capacities with finite seconds: every trial costs the median unit's
seconds (the model says so). ``per="cost"`` ranks by the expected width reduction per predicted
second, ``per="trial"`` by the reduction alone.

**Candidates.** Every capacity already trained (kind ``seed``: one more seed there), and new ones
(kind ``new``): the geometric midpoints between adjacent capacities and two steps beyond the
largest at the median log spacing, never beyond the target (``default_candidates``); or the
caller's list. Where the rows have ``expert_hidden`` and ``params`` is exactly linear in it at the
most common ``fused_layers`` (DRoRAE's fusion: params = a + b h), a new candidate is snapped to the
nearest integer width and ranked at that width's exact capacity (``WidthMap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis import noise, robust
from analysis.errors import AnalysisError
from analysis.fit import FitResults

CRITERION = "c-optimal sequential design: expected variance of the law's mean at the target"
#: The criteria ``rank`` knows, by name, in words.
CRITERIA = {
    "c-optimal": CRITERION,
    "tool": ("expected width of the tool's own interval at the target: the c-optimal variance with the Bell-McCaffrey "
             "df of the design after the trial and the noise model's uncertainty at the target given each capacity's "
             "degrees of freedom"),
}
PER = ("cost", "trial")
INTERVALS = ("pi", "ci")
INTERVAL_WORDS = {"pi": "prediction interval of one new run", "ci": "confidence interval of the law's mean"}
#: The columns whose sum is a trial's cost.
SECONDS = ("train_seconds", "eval_seconds")
#: Steps beyond the largest capacity among the default candidates (at the median log spacing).
STEPS_BEYOND = 2
WIDTH_COLUMN, LAYERS_COLUMN = "expert_hidden", "fused_layers"


# --- the criterion ------------------------------------------------------------------------------


def variance_after(M_inv: np.ndarray, x0: np.ndarray, X: np.ndarray, w) -> np.ndarray:
    """x0' (M + w x x')^-1 x0 for each row x of X (Sherman-Morrison): the mean's variance at x0 after one
    more trial at each candidate design row, with weight w (a scalar or one per row)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    w = np.broadcast_to(np.asarray(w, dtype=float), (len(X),))
    a = X @ M_inv @ x0                                  # x0' M^-1 x  (M^-1 symmetric)
    h = np.einsum("ip,pq,iq->i", X, M_inv, X)           # x' M^-1 x
    return float(x0 @ M_inv @ x0) - w * a ** 2 / (1.0 + w * h)


@dataclass(frozen=True)
class Design:
    """The information of a fit's rows plus pending trials, in the law's fit space (see the module)."""

    res: FitResults
    M: np.ndarray            # (p, p): sum_i w_i x_i x_i'
    capacities: np.ndarray   # the distinct capacities of the rows and the pending trials
    rows: int                # rows + pending trials
    x0: np.ndarray           # (p,): the design row at the target
    var0: float              # sigma^2 at the target (fit space)
    df_rule: str             # "capacities" (CR2), "rows" (nonrobust) or "normal" (known variances)
    C: np.ndarray            # every row's capacity, the pending trials' last
    target: float

    @property
    def p(self) -> int:
        return len(self.x0)

    def noise_var(self, C) -> np.ndarray:
        """sigma^2(C) in the fit space: the noise model's, or the fit's pooled variance (see the module)."""
        return _noise_var(self.res, C)

    def variance(self) -> float:
        """V = x0' M^-1 x0 now."""
        return float(self.x0 @ np.linalg.solve(self.M, self.x0))

    def df(self, capacities: int, rows: int) -> float:
        if self.df_rule == "normal":
            return math.inf
        return float((capacities if self.df_rule == "capacities" else rows) - self.p)

    def df_now(self) -> float:
        return self.df(len(self.capacities), self.rows)

    def df_after(self, C) -> np.ndarray:
        """df after one more trial at each capacity C: a new capacity adds one under CR2, a seed none."""
        C = np.atleast_1d(np.asarray(C, dtype=float))
        new = ~_isin(C, self.capacities)
        return np.array([self.df(len(self.capacities) + int(n), self.rows + 1) for n in new])

    def variance_after(self, C) -> np.ndarray:
        C = np.atleast_1d(np.asarray(C, dtype=float))
        return variance_after(np.linalg.inv(self.M), self.x0, self.res.law.design(C), 1.0 / self.noise_var(C))

    def width(self, V, df, interval: str, alpha: float) -> np.ndarray:
        """The expected (1 - alpha) interval width at the target for mean variance V with df degrees of freedom,
        in y (``power``: mapped from ln y at the fitted mean)."""
        V, df = np.asarray(V, dtype=float), np.asarray(df, dtype=float)
        q = np.where(np.isinf(df), stats.norm.ppf(1 - alpha / 2), stats.t.ppf(1 - alpha / 2, np.where(df > 0, df, 1)))
        q = np.where(df > 0, q, np.inf)
        half = q * np.sqrt(np.clip(V, 0, None) + (self.var0 if interval == "pi" else 0.0))
        if self.res.law.log_y:
            m = float(self.x0 @ self.res.params.to_numpy())
            return np.exp(m + half) - np.exp(m - half)
        return 2 * half

    # --- criterion "tool": the tool's own interval, its df and noise uncertainty read off the design ---

    def uses_tool_pi(self) -> bool:
        """Whether the "tool" criterion differs from the c-optimal one here: CR2 errors with a noise model (the
        classical and known-variance intervals are the c-optimal formula already)."""
        return self.df_rule == "capacities" and self.res.noise is not None

    def bm_df(self, C_all) -> float:
        """The Bell-McCaffrey df of the mean at the target for a design with rows at ``C_all``: a function of the
        design alone (``robust.bm_df``), so the df the fit will have once those rows are measured."""
        C_all = np.asarray(C_all, dtype=float)
        w = 1.0 / self.noise_var(C_all) if self.res.weights == "seed-variance" else None
        cl = robust.clusters(self.res.law.design(C_all), np.zeros(len(C_all)), C_all, w)
        return float(robust.bm_df(cl, self.x0)[0])

    def noise_v(self, C_all) -> float:
        """The variance of log sigma^2 at the target that the noise model (``analysis.noise.fit``) will have with rows
        at ``C_all``: each capacity weighs 1 / trigamma(nu / 2), nu = its seeds - 1 (1 for a single seed)."""
        caps, counts = np.unique(np.asarray(C_all, dtype=float), return_counts=True)
        nu = np.where(counts >= 2, counts - 1, 1).astype(float)
        _, var = noise.log_chi2_moments(nu)
        Z = np.column_stack([np.ones(len(caps)), np.log10(caps)])
        z0 = np.array([1.0, math.log10(self.target)])
        return float(z0 @ np.linalg.solve((Z / var[:, None]).T @ Z, z0))

    def tool_width(self, V, C_all_list, interval: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(width, df) of the tool's interval at the target for mean variances V, one design (rows' capacities) each."""
        V = np.atleast_1d(np.asarray(V, dtype=float))
        df = np.array([self.bm_df(Ca) for Ca in C_all_list])
        if interval == "ci":
            half = stats.t.ppf(1 - alpha / 2, df) * np.sqrt(np.clip(V, 0, None))
        else:
            v = np.array([self.noise_v(Ca) for Ca in C_all_list])
            m0 = float(self.res.noise.log_var([self.target])[0][0])
            _, half = noise.interval(np.zeros(len(V)), np.sqrt(np.clip(V, 0, None)), df, np.full(len(V), m0), v, alpha)
        if self.res.law.log_y:
            m = float(self.x0 @ self.res.params.to_numpy())
            return np.exp(m + half) - np.exp(m - half), df
        return 2 * half, df


def _noise_var(res: FitResults, C) -> np.ndarray:
    C = np.atleast_1d(np.asarray(C, dtype=float))
    pooled = res.cov_type == "nonrobust" and res.weights != "measurement"
    if res.noise is not None and not pooled:
        return np.exp(res.noise.log_var(C)[0])
    return np.full(len(C), float(res.scale))


def _df_rule(res: FitResults) -> str:
    if res.weights == "measurement":
        return "normal"
    return "rows" if res.cov_type == "nonrobust" else "capacities"


DF_WORDS = {"capacities": "distinct capacities - p (CR2 / Bell-McCaffrey df track capacities, not rows)",
            "rows": "rows - p (classical errors)", "normal": "normal quantiles (known variances)"}


def _isin(C: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Which of C equal one of caps, to 1e-9 relative (a capacity read back from a table)."""
    caps = np.asarray(caps, dtype=float)
    if not len(caps):
        return np.zeros(len(C), dtype=bool)
    return np.isclose(C[:, None], caps[None, :], rtol=1e-9, atol=0).any(axis=1)


def check_linear(res: FitResults) -> None:
    """AnalysisError unless ``res`` is a law linear in its parameters (the criterion needs a design matrix)."""
    if res._ols is None or not res.law.linear:
        raise not_linear(f"form 'auto' chose {res.form!r}" if res.auto_scores is not None else f"the {res.form!r} law")


def not_linear(how: str) -> AnalysisError:
    """The one-line refusal of a law without a design matrix (``how``: which law, e.g. "the 'saturating' law")."""
    return AnalysisError(f"{how} is not linear in its parameters: the design criterion needs a law with a "
                         "design matrix (log-linear, linear or power); fit one with --form log-linear")


def _capacity(value, what: str) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise AnalysisError(f"{what} {value!r}: expected a number, e.g. 1e8") from None
    if not (math.isfinite(c) and c > 0):
        raise AnalysisError(f"{what} {value}: expected a finite capacity > 0 (in the units of the capacity column)")
    return c


def design(res: FitResults, target, pending=()) -> Design:
    """The design of ``res``'s fitted rows plus ``pending`` trials (capacities, not yet measured), at ``target``."""
    check_linear(res)
    C0 = _capacity(target, "target")
    pend = np.array([_capacity(c, "pending capacity") for c in pending], dtype=float)
    res.law.check(np.concatenate([[C0], pend]), x_name=res.x)
    C = np.concatenate([res.C, pend])
    var = _noise_var(res, C)
    if not np.all(np.isfinite(var) & (var > 0)):
        raise AnalysisError(f"the law fits every row exactly (residual variance {res.scale:g}): there is no "
                            "interval at the target to shrink")
    X = res.law.design(C)
    M = (X / var[:, None]).T @ X
    return Design(res, M, np.unique(C), len(C), res.law.design([C0])[0], float(_noise_var(res, [C0])[0]),
                  _df_rule(res), C, C0)


# --- the cost of a trial ------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """ln(seconds) = c0 + c1 log10(C) over completed grid units; or, with fewer than 2 capacities that have
    finite seconds, every unit the median unit's seconds (``coef`` None)."""

    coef: tuple[float, float] | None
    median_seconds: float
    units: int
    capacities: int
    columns: tuple[str, ...]

    def seconds(self, C) -> np.ndarray:
        """The expected seconds of one more unit at each capacity C (the fit's geometric mean)."""
        C = np.atleast_1d(np.asarray(C, dtype=float))
        if self.coef is None:
            return np.full(len(C), self.median_seconds)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.exp(self.coef[0] + self.coef[1] * np.log10(C))
        return np.where(C > 0, out, self.median_seconds)

    def describe(self, x: str) -> str:
        cols = " + ".join(self.columns)
        if self.coef is None:
            return (f"every trial costs the median unit's {self.median_seconds:.4g} s ({cols}; fewer than 2 "
                    f"capacities with finite seconds: no trend in {x})")
        return (f"ln(seconds) = {self.coef[0]:.4g} {'+' if self.coef[1] >= 0 else '-'} {abs(self.coef[1]):.4g} "
                f"log10({x}), fitted to {self.units} unit(s) at {self.capacities} capacities ({cols})")

    def to_dict(self) -> dict:
        return {"model": "median" if self.coef is None else "ln(seconds) = c0 + c1 log10(C)",
                "c0": None if self.coef is None else self.coef[0], "c1": None if self.coef is None else self.coef[1],
                "median_seconds": self.median_seconds, "units": self.units, "capacities": self.capacities,
                "columns": list(self.columns)}


def _unit_key(df: pd.DataFrame) -> list[str] | None:
    if "unit_id" in df.columns and df["unit_id"].notna().all():
        return ["unit_id"]
    if {"point_id", "seed"} <= set(df.columns):
        return ["point_id", "seed"]
    return None


def unit_seconds(points: pd.DataFrame, x: str, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per completed unit of ``points`` (the fitted rows): its capacity and seconds, the sum of
    ``SECONDS`` over every trial row of the unit in ``rows`` (the whole results table: a searched unit's
    pruned and unevaluated trials cost too), or over its own rows without ``rows``. ``seconds`` is NaN
    for a unit none of whose rows has a finite one; the frame's ``attrs["columns"]`` are the columns
    summed (none: no seconds in the table)."""
    key = _unit_key(points)
    source = rows if rows is not None and key is not None and set(key) <= set(rows.columns) else points
    columns = tuple(c for c in SECONDS if c in source.columns)
    if key is None:
        units = pd.DataFrame({"unit": np.arange(len(points)), "capacity": points[x].to_numpy(float)})
        src, src_key = points.assign(_unit=np.arange(len(points))), ["_unit"]
    else:
        first = points.groupby(key, sort=False)[x].first()
        units = pd.DataFrame({"unit": [k if isinstance(k, tuple) else (k,) for k in first.index],
                              "capacity": first.to_numpy(float)})
        src, src_key = source, key
    if not columns:
        out = units.assign(seconds=np.nan)
        out.attrs["columns"] = ()
        return out
    vals = pd.concat([pd.to_numeric(src[c], errors="coerce") for c in columns], axis=1).astype(float)
    per_row = vals.sum(axis=1, min_count=1)     # NaN only where every column is NaN
    total = per_row.groupby([src[k] for k in src_key] if len(src_key) > 1 else src[src_key[0]]).sum(min_count=1)
    lookup = {(k if isinstance(k, tuple) else (k,)): v for k, v in total.items()}
    if key is None:
        units["seconds"] = [lookup.get((u,), np.nan) for u in units["unit"]]
    else:
        units["seconds"] = [lookup.get(u, np.nan) for u in units["unit"]]
    units.attrs["columns"] = columns
    return units


def fit_cost(points: pd.DataFrame, x: str, rows: pd.DataFrame | None = None) -> CostModel | None:
    """The ``CostModel`` of the completed units (``unit_seconds``); None when no unit has finite seconds."""
    units = unit_seconds(points, x, rows)
    ok = units[np.isfinite(units["seconds"]) & (units["seconds"] > 0) & np.isfinite(units["capacity"])]
    if ok.empty:
        return None
    columns = units.attrs["columns"]
    median = float(ok["seconds"].median())
    pos = ok[ok["capacity"] > 0]
    caps = int(pos["capacity"].nunique())
    if caps < 2:
        return CostModel(None, median, len(ok), int(ok["capacity"].nunique()), columns)
    c1, c0 = np.polyfit(np.log10(pos["capacity"].to_numpy(float)), np.log(pos["seconds"].to_numpy(float)), 1)
    return CostModel((float(c0), float(c1)), median, len(pos), caps, columns)


# --- candidates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WidthMap:
    """params = intercept + slope * expert_hidden at ``fused_layers`` (exact): a capacity's nearest width."""

    intercept: float
    slope: float
    fused_layers: float | None
    x: str

    def snap(self, C) -> tuple[np.ndarray, np.ndarray]:
        """(width, its exact capacity) nearest each capacity C: integer widths >= 1."""
        C = np.atleast_1d(np.asarray(C, dtype=float))
        h = np.maximum(np.rint((C - self.intercept) / self.slope), 1.0)
        return h.astype(np.int64), self.intercept + self.slope * h

    def to_dict(self) -> dict:
        return {"column": WIDTH_COLUMN, "capacity": f"{self.intercept:.10g} + {self.slope:.10g} * {WIDTH_COLUMN}",
                "intercept": self.intercept, "slope": self.slope, LAYERS_COLUMN: self.fused_layers}


def width_map(points: pd.DataFrame, x: str) -> WidthMap | None:
    """The ``WidthMap`` of the rows, where there is one: x is ``expert_hidden`` itself (a width is its own
    capacity), or x is ``params`` and, at the most common ``fused_layers``, params is exactly linear in
    ``expert_hidden`` over 2+ widths with a positive slope. None otherwise."""
    if WIDTH_COLUMN not in points.columns:
        return None
    if x == WIDTH_COLUMN:
        return WidthMap(0.0, 1.0, None, x)
    if x != "params" or points.empty:
        return None
    df = points
    layers = None
    if LAYERS_COLUMN in points.columns:
        counts = pd.to_numeric(points[LAYERS_COLUMN], errors="coerce").value_counts()
        if counts.empty:
            return None
        top = counts[counts == counts.max()].index.min()   # the most common; ties: the fewest layers
        df, layers = points[pd.to_numeric(points[LAYERS_COLUMN], errors="coerce") == top], float(top)
    h = pd.to_numeric(df[WIDTH_COLUMN], errors="coerce").to_numpy(float)
    c = pd.to_numeric(df["params"], errors="coerce").to_numpy(float)
    ok = np.isfinite(h) & np.isfinite(c)
    h, c = h[ok], c[ok]
    if len(np.unique(h)) < 2:
        return None
    lo, hi = np.argmin(h), np.argmax(h)
    slope = (c[hi] - c[lo]) / (h[hi] - h[lo])      # exact for integer counts (np.polyfit is not)
    intercept = c[lo] - slope * h[lo]
    if slope <= 0 or np.max(np.abs(c - (intercept + slope * h))) > 1e-6 * max(1.0, np.max(np.abs(c))):
        return None
    return WidthMap(float(intercept), float(slope), layers, x)


def default_candidates(capacities, target: float) -> np.ndarray:
    """The new capacities worth considering: the geometric midpoints of adjacent capacities, and
    ``STEPS_BEYOND`` steps beyond the largest at the median log10 spacing, those beyond ``target`` left out."""
    caps = np.unique(np.asarray(capacities, dtype=float))
    if np.any(caps <= 0):
        raise AnalysisError(f"default candidates are geometric midpoints and need capacities > 0 (got {caps[0]:g}): "
                            "give the candidates explicitly")
    logs = np.log10(caps)
    mids = 10 ** ((logs[:-1] + logs[1:]) / 2)
    step = float(np.median(np.diff(logs))) if len(logs) > 1 else 0.0
    beyond = 10 ** (logs[-1] + step * np.arange(1, STEPS_BEYOND + 1)) if step > 0 else np.empty(0)
    return np.concatenate([mids, beyond[beyond <= target * (1 + 1e-12)]])


# --- the ranking --------------------------------------------------------------------------------


@dataclass
class Ranking:
    """``rank``'s answer: ``table`` (one row per candidate, best first) and what it was computed from."""

    table: pd.DataFrame
    target: float
    interval: str
    per: str
    alpha: float
    law: str
    form: str
    x: str
    y: str
    df_rule: str
    now: dict                      # the model-based width now: variance, df, width (with the pending trials)
    actual: dict                   # the fit's own intervals at the target (summary_frame)
    cost: CostModel | None
    widths: WidthMap | None
    pending: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    criterion: str = CRITERION
    criterion_name: str = "c-optimal"

    @property
    def score(self) -> str:
        """The ranking column: the width reduction per expected second, or per trial."""
        return "reduction_per_second" if self.per == "cost" else "reduction_per_trial"

    def best(self, n: int = 1) -> pd.DataFrame:
        return self.table.head(n)

    @property
    def df_words(self) -> str:
        """How the df of the widths were counted."""
        if self.criterion_name == "tool" and self.df_rule == "capacities":
            return "Bell-McCaffrey df of the design (CR2, capacities as clusters)"
        return DF_WORDS[self.df_rule]

    def to_dict(self) -> dict:
        cols = list(self.table.columns)
        return {"criterion": self.criterion, "criterion_name": self.criterion_name, "interval": self.interval,
                "interval_words": INTERVAL_WORDS[self.interval], "per": self.per, "score": self.score,
                "alpha": self.alpha, "target": self.target, "law": self.law, "form": self.form, "x": self.x,
                "y": self.y, "df_rule": self.df_words, "now": self.now, "actual": self.actual,
                "cost_model": None if self.cost is None else self.cost.to_dict(),
                "width_map": None if self.widths is None else self.widths.to_dict(),
                "pending": list(self.pending), "notes": list(self.notes),
                "candidates": [{c: _plain(r[c]) for c in cols} for _, r in self.table.iterrows()]}


def _plain(v):
    if v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _check_choice(value, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise AnalysisError(f"{what} {value!r}: expected one of {', '.join(allowed)}")


def _actual(res: FitResults, target: float, alpha: float) -> dict:
    sf = res.get_prediction([target]).summary_frame(alpha).iloc[0]
    ci = [float(sf["mean_ci_lower"]), float(sf["mean_ci_upper"])]
    pi = [float(sf["obs_ci_lower"]), float(sf["obs_ci_upper"])]
    return {"mean": float(sf["mean"]), "ci": ci, "pi": pi, "ci_width": ci[1] - ci[0], "pi_width": pi[1] - pi[0],
            "mean_df": float(sf["mean_df"]), "pi_df": float(sf["pi_df"]), "pi_note": sf["pi_note"]}


def _points_frame(points) -> pd.DataFrame:
    from analysis.load import Table

    if isinstance(points, Table):
        return points.points
    if isinstance(points, pd.DataFrame):
        return points
    raise AnalysisError(f"the points must be a DataFrame or an analysis.Table, got {type(points).__name__}")


def _seed_widths(points: pd.DataFrame, x: str, caps: np.ndarray) -> np.ndarray:
    """The width of each existing capacity (its rows' most common expert_hidden; NaN without one)."""
    out = np.full(len(caps), np.nan)
    if WIDTH_COLUMN not in points.columns or x not in points.columns:
        return out
    C = pd.to_numeric(points[x], errors="coerce").to_numpy(float)
    H = pd.to_numeric(points[WIDTH_COLUMN], errors="coerce").to_numpy(float)
    for i, c in enumerate(caps):
        hs = H[np.isclose(C, c, rtol=1e-9, atol=0) & np.isfinite(H)]
        if len(hs):
            vals, counts = np.unique(hs, return_counts=True)
            out[i] = vals[np.argmax(counts)]
    return out


def rank(res: FitResults, points, target, candidates=None, *, rows: pd.DataFrame | None = None,
         per: str = "cost", interval: str = "pi", alpha: float = 0.05, pending=(),
         criterion: str = "c-optimal") -> Ranking:
    """Rank candidate capacities by how much one more trial there is expected to shrink the interval at
    ``target`` (``CRITERION``; see the module), per expected second (``per="cost"``) or per trial.

    ``res``: the law fitted to ``points`` (a linear-in-parameters form); ``points``: its rows (an
    ``analysis.Table`` or its ``points`` DataFrame: the widths and the completed units); ``rows``: the
    whole results table, whose trial rows give each unit's seconds (default: the points' own);
    ``candidates``: new capacities in the units of ``res.x`` (default ``default_candidates``; every
    trained or pending capacity is a ``seed`` candidate besides); ``pending``: capacities of trials
    chosen but not yet measured (in the design, without a y). Returns a ``Ranking`` whose ``table`` has
    one row per candidate, best first: capacity, kind, [width], seconds, width_now, width_after,
    reduction, the score column, df_after, variance_after, rank.

    ``criterion="tool"`` ranks by the expected width of the tool's own interval instead (``CRITERIA``):
    the same V', with df' the Bell-McCaffrey df of the design after the trial (a function of the design
    alone) and, for the PI, the noise model's uncertainty at the target as it will be with the trial's
    capacity given one more degree of freedom (``Design.tool_width``); it differs from the c-optimal
    criterion only under CR2 errors with a noise model."""
    check_linear(res)
    _check_choice(criterion, tuple(CRITERIA), "criterion")
    _check_choice(per, PER, "per")
    _check_choice(interval, INTERVALS, "interval")
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
    pts = _points_frame(points)
    d = design(res, target, pending)
    C0 = _capacity(target, "target")
    notes = []
    existing = d.capacities                                      # trained and pending
    if candidates is None:
        new = default_candidates(existing, C0)
    else:
        new = np.array([_capacity(c, "candidate") for c in candidates], dtype=float)
        if not len(new):
            raise AnalysisError("no candidate capacities given: expected at least one, e.g. 1e5,3e5")
        res.law.check(new, x_name=res.x)
    wm = width_map(pts, res.x)
    seed_w = _seed_widths(pts, res.x, existing)
    if wm is not None:
        new_w, new_c = wm.snap(new)
        new_w = new_w.astype(float)
    else:
        new_w, new_c = np.full(len(new), np.nan), new
    C = np.concatenate([existing, new_c])
    W = np.concatenate([seed_w, new_w])
    keep = np.ones(len(C), dtype=bool)                           # one row per capacity, the first kept
    for i in range(len(C)):
        if keep[i]:
            dup = np.isclose(C[i + 1:], C[i], rtol=1e-9, atol=0)
            keep[i + 1:] &= ~dup
    C, W = C[keep], W[keep]
    kind = np.where(_isin(C, existing), "seed", "new")

    cost = fit_cost(pts, res.x, rows)
    if cost is None and per == "cost":
        have = [c for c in SECONDS if c in (rows if rows is not None else pts).columns]
        what = (f"no finite {' or '.join(have)} in any completed unit" if have else
                f"the table has no {' or '.join(SECONDS)} column")
        raise AnalysisError(f"per cost needs the trials' measured seconds, but {what}: rank per trial instead "
                            "(--per trial)")
    if cost is not None and cost.coef is None:
        notes.append(f"cost: fewer than 2 capacities with finite seconds; every trial costs the median unit's "
                     f"{cost.median_seconds:.4g} s")
    seconds = cost.seconds(C) if cost is not None else np.full(len(C), np.nan)

    V_now, V_after = d.variance(), d.variance_after(C)
    if criterion == "tool" and d.uses_tool_pi():
        w_now, df_now = d.tool_width([V_now], [d.C], interval, alpha)
        width_now, df_now = float(w_now[0]), float(df_now[0])
        width_after, df_after = d.tool_width(V_after, [np.append(d.C, c) for c in C], interval, alpha)
    else:
        df_now, df_after = d.df_now(), d.df_after(C)
        width_now = float(d.width(V_now, df_now, interval, alpha))
        width_after = d.width(V_after, df_after, interval, alpha)
    with np.errstate(invalid="ignore"):
        reduction = np.where(np.isinf(width_after) & (width_after == width_now), 0.0, width_now - width_after)
    score = reduction / seconds if per == "cost" else reduction
    table = pd.DataFrame({"capacity": C, "kind": kind})
    if wm is not None:
        table["width"] = pd.Series(np.rint(W)).astype("Int64")   # <NA>: a capacity trained at no one width
    table["seconds"] = seconds
    table["width_now"] = width_now
    table["width_after"] = width_after
    table["reduction"] = reduction
    table["reduction_per_second" if per == "cost" else "reduction_per_trial"] = score
    table["df_after"] = df_after
    table["variance_after"] = V_after
    # best first: the highest score, then the cheaper, then the smaller capacity
    order = np.lexsort((C, np.nan_to_num(seconds, nan=np.inf), -np.nan_to_num(score, nan=-np.inf)))
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    ps = ", ".join(f"{k} = {v:.5g}" for k, v in res.params.items())
    return Ranking(table=table, target=C0, interval=interval, per=per, alpha=alpha,
                   law=f"{res.law.equation} ({ps})", form=res.form, x=res.x, y=res.y, df_rule=d.df_rule,
                   now={"variance": V_now, "df": df_now, "width": width_now}, actual=_actual(res, C0, alpha),
                   cost=cost, widths=wm, pending=[float(c) for c in pending], notes=notes,
                   criterion=CRITERIA[criterion], criterion_name=criterion)


def choose(res: FitResults, points, target, n: int = 1, candidates=None, *, rows: pd.DataFrame | None = None,
           per: str = "cost", interval: str = "pi", alpha: float = 0.05, pending=(),
           criterion: str = "c-optimal") -> pd.DataFrame:
    """The ``n`` trials to run next, chosen greedily: the best of ``rank``, added to the pending trials,
    then the best given those (``n`` rows of ``rank``'s table, in the order chosen; a capacity can come
    back as a ``seed`` of one chosen before)."""
    if int(n) != n or n < 1:
        raise AnalysisError(f"n must be a positive integer, got {n!r}")
    pending = [float(c) for c in pending]
    picks = []
    for _ in range(int(n)):
        top = rank(res, points, target, candidates, rows=rows, per=per, interval=interval, alpha=alpha,
                   pending=pending, criterion=criterion).table.iloc[[0]]
        picks.append(top)
        pending.append(float(top["capacity"].iloc[0]))
    out = pd.concat(picks, ignore_index=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out
