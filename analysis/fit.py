"""Fit a scaling law and return a results object in the statsmodels manner.

    res = fit(df, x="params", y="rfid", form="log-linear")
    res.params, res.bse, res.df_params, res.conf_int(0.05, method="analytic" | "bootstrap")
    res.rsquared, res.rsquared_adj, res.aic, res.bic, res.nobs
    res.predict(C), res.get_prediction(C).summary_frame(alpha, method), res.summary(), res.to_dict()
    res.lack_of_fit(), res.measurement_error()

Linear-in-parameters forms (log-linear, linear, power) are statsmodels OLS (or WLS with
``weights="seed-variance"`` or ``"measurement"``) on the form's design matrix. Their default errors
are cluster-robust with the capacities as clusters (CR2) and their intervals t with Bell-McCaffrey
df (``analysis.robust``); the PI of a new run reads the noise at its capacity off a noise model
(``analysis.noise``); ``method="bootstrap"`` is the restricted wild cluster bootstrap
(``analysis.bootstrap``); ``cov_type="nonrobust"`` keeps statsmodels' classical intervals.
``power`` is fitted on ln y: its R², AIC and intervals live in that space, and predictions are
mapped back with exp (the mean's se by the delta method). ``saturating`` is a
robust Huber fit from a grid of starting values (``analysis.saturating``): its covariance is Huber's
sandwich, its parameter intervals are profile-likelihood ones, and ``identified`` / ``warnings`` say
when the data do not determine E, A and alpha (then its parameter intervals are NaN). For every form
``identified`` is True and ``warnings`` empty unless the fit says otherwise.
Replicates (several seeds per capacity) are kept as rows, never averaged away. Where the rows carry
their metric's measurement error (a ``<y>_se`` column), ``measurement_error()`` says how much of the
residual scatter it accounts for (``analysis.measurement``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from analysis import bootstrap as boot
from analysis import measurement, noise, robust
from analysis import saturating as sat_law
from analysis.errors import AnalysisError
from analysis.laws import FORMS, Law, get_law
from analysis.schema import se_column

CI_METHODS = ("analytic", "bootstrap")
WEIGHTS = (None, "seed-variance", "measurement")
COV_TYPES = robust.COV_TYPES
BOOTSTRAP_KINDS = ("wild",) + boot.KINDS
AUTO_FOLDS = 20   # form="auto": leave-one-capacity-out up to 20 capacities, else 20 folds of interleaved capacities
AUTO_RULE = "cross-validation over capacities (RMSE; the simplest form within one se of the best)"


@dataclass(frozen=True)
class LackOfFit:
    """F-test of the law against the per-capacity means (pure error from the replicates)."""

    F: float
    df_num: int
    df_den: int
    pvalue: float
    ss_lack_of_fit: float
    ss_pure_error: float


# --- data ------------------------------------------------------------------------------------


def _source(df) -> str:
    """'<file>: ' when the rows came from a file (a Table from ``load``), else '': an error's prefix."""
    from analysis.load import Table

    return f"{df.source}: " if isinstance(df, Table) and df.source else ""


def _names(df, x, y) -> tuple[str, str]:
    """x and y: as given, else the Table's, else the sweep's (params, rfid)."""
    from analysis.load import Table

    if isinstance(df, Table):
        return x or df.x, y or df.y
    return x or "params", y or "rfid"


def _columns(df, x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list]:
    """The finite (capacity, metric) rows: C, y, y's measurement error (None without a ``<y>_se``
    column; NaN where a row lacks it) and the rows' names (``analysis.load.row_names``: the trial_id,
    else ``row N`` counted in the source table, as every message counts them).

    A metric with the same value in every row (at 3+ capacities) is an error: no law has a trend to
    fit there and R² is undefined (0 / 0)."""
    from analysis.load import Table, _numeric, listed, row_names

    source = _source(df)
    if isinstance(df, Table):
        df = df.points              # its index: each row's position in the source table
    elif isinstance(df, pd.DataFrame):
        df = df.reset_index(drop=True)
    else:
        raise AnalysisError(f"fit takes a DataFrame or an analysis.Table, got {type(df).__name__}")
    for col in (x, y):
        if col not in df.columns:
            raise AnalysisError(f"{source}no column {col!r} to fit (columns: {', '.join(map(str, df.columns))})")
    name = source.removesuffix(": ") or "the table"
    C, Y = _numeric(df, x, name).to_numpy(), _numeric(df, y, name).to_numpy()
    se = _numeric(df, se_column(y), name).to_numpy() if se_column(y) in df.columns else None
    ids = row_names(df)
    bad = ~(np.isfinite(C) & np.isfinite(Y))
    if bad.any():
        warnings.warn(f"{source}dropped {bad.sum()} row(s) with a NaN or infinite {x!r} or {y!r}: "
                      f"{listed(np.asarray(ids, dtype=object)[bad])}", stacklevel=3)
        C, Y, se, ids = C[~bad], Y[~bad], None if se is None else se[~bad], [i for i, b in zip(ids, bad) if not b]
    _check_not_constant(C, Y, y, source)
    return C, Y, se, ids


def _check_not_constant(C: np.ndarray, Y: np.ndarray, y: str, source: str = "") -> None:
    """AnalysisError when y is the same in every row (to the last bits), at 3+ capacities (fewer: the
    capacity check speaks first)."""
    if len(Y) < 2 or np.ptp(Y) > 4 * np.finfo(float).eps * np.max(np.abs(Y)) or len(np.unique(C)) < 3:
        return
    raise AnalysisError(f"{source}column {y!r} has the same value ({Y[0]:g}) in all {len(Y)} rows to fit: "
                        "a scaling law has no trend to fit there (R² would be 0 / 0)")


def _check_capacities(C: np.ndarray, x: str, need: int = 3, source: str = "") -> None:
    caps = np.unique(C)
    m = len(caps)
    if m < need:
        which = f" ({', '.join(f'{c:g}' for c in caps)})" if m else ""
        raise AnalysisError(f"{source}column {x!r} has {m} distinct capacit{'y' if m == 1 else 'ies'}{which} "
                            f"among the rows to fit: a scaling-law fit needs at least {need}")


def _check_positive(law: Law, C: np.ndarray, x: str, ids, source: str = "") -> None:
    """AnalysisError naming ``x``, its first non-positive value and the rows that hold one, for a form that
    takes the log of the capacity (a cost column, train_flops or train_seconds, is 0 for a run that
    trained nothing)."""
    bad = C <= 0
    if not law.log_x or not bad.any():
        return
    from analysis.load import listed

    rows = listed(np.asarray(ids, dtype=object)[bad])
    raise AnalysisError(f"{source}column {x!r} has a non-positive value ({C[bad][0]:g}) in {bad.sum()} row(s) "
                        f"({rows}): form {law.name!r} takes the log of the capacity and needs every value > 0; "
                        "drop those rows (--where) or fit the linear form")


def _seed_variance_weights(C: np.ndarray, y: np.ndarray, x: str) -> np.ndarray:
    """Feasible GLS weights: 1 / sigma^2(C) from the noise model (``analysis.noise``: log variance
    linear in log C, fitted to every capacity's seed variance with its degrees of freedom),
    normalised to mean 1. Each capacity's own sample variance from 2-3 seeds is not used as known:
    with 2 degrees of freedom it is off by a factor of 3 or more one time in three, and WLS by it
    covered 65-75%."""
    for c in np.unique(C):
        if (C == c).sum() < 2:
            raise AnalysisError(f"weights='seed-variance' needs at least 2 seeds at every capacity; "
                                f"{x}={c:g} has 1")
    model = noise.fit(C, y)
    if model is None:
        raise AnalysisError("weights='seed-variance': fewer than 3 capacities have seeds that differ, "
                            "so the noise has no trend to estimate")
    w = 1.0 / np.exp(model.log_var(C)[0])
    return w / w.mean()


def _measurement_weights(law: Law, Y: np.ndarray, yse, y: str, ids) -> np.ndarray:
    """1 / (each row's measurement variance in the law's fit space): the ``<y>_se`` column as known."""
    col = se_column(y)
    if yse is None:
        raise AnalysisError(f"weights='measurement' needs a {col!r} column (each row's measurement error)")
    yse = np.asarray(yse, dtype=float)
    bad = ~(np.isfinite(yse) & (yse > 0))
    if bad.any():
        from analysis.load import listed

        raise AnalysisError(f"weights='measurement' needs a finite positive {col!r} on every row; "
                            f"it is missing or not positive in {listed(np.asarray(ids, dtype=object)[bad])}")
    se_fit = yse / Y if law.log_y else yse            # the delta method onto ln y
    return 1.0 / se_fit ** 2


# --- results ---------------------------------------------------------------------------------


PI_NOTE = ("the noise at this capacity is extrapolated from few degrees of freedom (effective df {df:.2g} < 2): "
           "the PI is wide and rests on the log-variance trend")
NO_NOISE_MODEL = "no noise model (fewer than 3 capacities with a residual variance): no PI"


class PredictionResults:
    """Predictions at new capacities: ``summary_frame(alpha, method)`` with the mean's CI and the PI."""

    def __init__(self, res: FitResults, C):
        self._res = res
        self.C = np.atleast_1d(np.asarray(C, dtype=float))
        res.law.check(self.C, x_name=res.x)

    @property
    def predicted_mean(self) -> np.ndarray:
        return self._res.predict(self.C)

    def summary_frame(self, alpha: float = 0.05, method: str = "analytic", B: int = 9_999,
                      seed=0) -> pd.DataFrame:
        """mean, mean_se, mean_df, mean_ci_lower/upper, obs_sd, pi_df, obs_ci_lower/upper, pi_note.

        Linear forms (the default ``cov_type="CR2"``): the mean's se is cluster-robust, its interval a t
        with Bell-McCaffrey df (``mean_df``); the PI integrates the noise model's uncertainty at C
        (``obs_sd``: its noise sd there; ``pi_df``: the effective df it rests on; ``pi_note`` when < 2;
        bounds of +-inf and a note without a noise model). ``method="bootstrap"``: the mean's interval
        by the restricted wild cluster bootstrap, the PI from wild draws of the mean's error plus the
        noise model's. ``cov_type="nonrobust"``: statsmodels' classical intervals (df n - p, one pooled
        variance). Intervals of ``power`` are computed on ln y and mapped back by exp (the mean's se by
        the delta method)."""
        res = self._res
        _check_alpha(alpha)
        if method not in CI_METHODS:
            raise AnalysisError(f"unknown interval method {method!r}: expected one of {', '.join(CI_METHODS)}")
        if res._ols is not None:
            sf = self._linear(alpha, method, B, seed)
        else:
            if method == "bootstrap":
                raise AnalysisError(f"method='bootstrap' is implemented for the linear-in-parameter forms "
                                    f"(log-linear, linear, power), not {res.form!r}: use method='analytic'")
            mean, se = res._delta_prediction(self.C)
            t = stats.t.ppf(1 - alpha / 2, res.df_resid)
            obs = np.sqrt(se ** 2 + res.scale)
            sf = pd.DataFrame({"mean": mean, "mean_se": se, "mean_df": float(res.df_resid),
                               "mean_ci_lower": mean - t * se, "mean_ci_upper": mean + t * se,
                               "obs_sd": math.sqrt(res.scale), "pi_df": float(res.df_resid),
                               "obs_ci_lower": mean - t * obs, "obs_ci_upper": mean + t * obs, "pi_note": ""})
        sf.index = pd.Index(self.C, name=res.x)
        return sf

    def _linear(self, alpha, method, B, seed) -> pd.DataFrame:
        res = self._res
        L = res.law.design(self.C)
        mean = L @ res.params.to_numpy()
        se = np.sqrt(np.einsum("ip,pq,iq->i", L, res.cov_params.to_numpy(), L))
        df = res._contrast_df(L)
        t = stats.t.ppf(1 - alpha / 2, df)
        lo, hi = mean - t * se, mean + t * se
        note = np.full(len(mean), "", dtype=object)
        if res.cov_type == "nonrobust" and res.weights != "measurement":
            sf = res._ols.get_prediction(L).summary_frame(alpha=alpha)
            pi_lo, pi_hi = sf["obs_ci_lower"].to_numpy(), sf["obs_ci_upper"].to_numpy()
            obs_sd, pi_df = np.full(len(mean), math.sqrt(res.scale)), np.full(len(mean), float(res.df_resid))
        elif res.noise is None:
            pi_lo, pi_hi = np.full(len(mean), -math.inf), np.full(len(mean), math.inf)
            obs_sd, pi_df = np.full(len(mean), math.nan), np.full(len(mean), math.nan)
            note[:] = NO_NOISE_MODEL
        else:
            m, v = res.noise.log_var(self.C)
            obs_sd, pi_df = np.exp(m / 2), res.noise.effective_df(self.C)
            if method == "bootstrap":
                pi_lo, pi_hi = self._bootstrap_pi(mean, L, m, v, alpha, B, seed)
            else:
                pi_lo, pi_hi = noise.interval(mean, se, df, m, v, alpha)
            for i in np.flatnonzero(pi_df < noise.NOTE_DF):
                note[i] = PI_NOTE.format(df=pi_df[i])
        if method == "bootstrap":
            for i, row in enumerate(L):
                lo[i], hi[i] = boot.wild_interval(res._clusters(), mean[i], row, alpha, B=B, seed=seed)
        # a new run's interval holds its mean's: the bootstrap's inversion can be the wider with few capacities,
        # and with a mean's df near 1 the PI's quadrature over the t's scale misses the tails that the CI's t has
        pi_lo, pi_hi = np.minimum(pi_lo, lo), np.maximum(pi_hi, hi)
        sf = pd.DataFrame({"mean": mean, "mean_se": se, "mean_df": df, "mean_ci_lower": lo, "mean_ci_upper": hi,
                           "obs_sd": obs_sd, "pi_df": pi_df, "obs_ci_lower": pi_lo, "obs_ci_upper": pi_hi,
                           "pi_note": note})
        if res.law.log_y:  # back from ln y: bounds by exp, the mean's se by the delta method
            for col in ("mean", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"):
                sf[col] = np.exp(sf[col])
            sf["mean_se"] = sf["mean"] * sf["mean_se"]
            sf["obs_sd"] = sf["mean"] * sf["obs_sd"]
        return sf

    def _bootstrap_pi(self, mean, L, m, v, alpha, B, seed) -> tuple[np.ndarray, np.ndarray]:
        """PI from B draws of a new run's error: the mean's (wild cluster bootstrap-t draws,
        ``bootstrap.wild_mean_errors``) plus the noise's (sigma from the noise model with its
        uncertainty, times a normal); widened where needed to hold the mean's interval."""
        res = self._res
        lo, hi = np.empty_like(mean), np.empty_like(mean)
        for i, row in enumerate(L):
            eta = boot.wild_mean_errors(res._clusters(), row, B=B, seed=seed)
            rng = np.random.default_rng([seed, 1])
            sig = np.exp((m[i] + math.sqrt(max(v[i], 0.0)) * rng.standard_normal(len(eta))) / 2)
            d = eta + sig * rng.standard_normal(len(eta))
            q_lo, q_hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
            lo[i], hi[i] = mean[i] + q_lo, mean[i] + q_hi
        return lo, hi


def _check_alpha(alpha) -> None:
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")


class FitResults:
    """A fitted scaling law, in the statsmodels manner (see the module docstring)."""

    def __init__(self, law: Law, C, y, x: str, y_name: str, weights=None, ols=None, sat=None, yse=None,
                 ids=None, cov_type: str = "CR2", w=None):
        self.law, self.x, self.y = law, x, y_name
        self.form = law.name
        self.C, self.yobs = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
        # y's measurement error per row (None: the rows had no <y>_se column) and the rows' ids
        self.yse = None if yse is None else np.asarray(yse, dtype=float)
        self._ids = list(range(len(self.yobs))) if ids is None else list(ids)
        self.weights = weights          # None or the name of the weighting
        self._w = None
        self._ols = ols
        self.cov_type = cov_type
        self._noise: noise.NoiseModel | None | bool = False   # the noise model of a linear form (PI); False: not yet
        self._cl = None
        self._sat = sat
        self.auto_scores: pd.Series | None = None   # cross-validated RMSE per form when form="auto"
        self.auto_ineligible: list[str] = []        # forms form="auto" scored but could not choose (not identified)
        self.identified, self.warnings = True, []    # the saturating law's identification (others: always)
        names = list(law.param_names)
        if ols is not None:
            self._w = None if w is None else np.asarray(w, dtype=float)
            self.params = pd.Series(np.asarray(ols.params), index=names, name="params")
            self.nobs, self.df_resid = int(ols.nobs), int(ols.df_resid)
            cov = self._linear_cov(ols)
            self.cov_params = pd.DataFrame(cov, index=names, columns=names)
            self.bse = pd.Series(np.sqrt(np.diag(cov)), index=names, name="bse")
            self.df_params = pd.Series(self._contrast_df(np.eye(len(names))), index=names, name="df")
            self.rsquared, self.rsquared_adj = float(ols.rsquared), float(ols.rsquared_adj)
            self.aic, self.bic, self.scale = float(ols.aic), float(ols.bic), float(ols.scale)
            self.ssr = float(ols.ssr)
        else:  # sat: a saturating.SaturatingFit
            self.identified, self.warnings = sat.identified, list(sat.warnings)
            self.params = pd.Series(sat.params, index=names, name="params")
            self.cov_params = pd.DataFrame(sat.cov, index=names, columns=names)
            self.bse = pd.Series(np.sqrt(np.diag(sat.cov)), index=names, name="bse")
            n, p = len(self.yobs), len(names)
            self.nobs, self.df_resid = n, n - p
            resid = self.yobs - law.predict(sat.params, self.C)
            self.ssr = float(resid @ resid)
            sst = float(((self.yobs - self.yobs.mean()) ** 2).sum())
            self.rsquared = 1 - self.ssr / sst
            self.rsquared_adj = 1 - (1 - self.rsquared) * (n - 1) / (n - p)
            self.scale = sat.scale   # SSR / (n - p)
            self.df_params = pd.Series(float(n - p), index=names, name="df")
            llf = -n / 2 * (math.log(2 * math.pi) + math.log(max(self.ssr / n, 1e-300)) + 1)  # 0 on exact data
            self.aic, self.bic = -2 * llf + 2 * p, -2 * llf + p * math.log(n)

    def _linear_cov(self, ols) -> np.ndarray:
        """The params' covariance: CR2 with capacities as clusters (``analysis.robust``); with
        ``weights="measurement"`` the known-variance (X'WX)^-1; ``nonrobust``: OLS/WLS's s^2 (X'WX)^-1.
        With measurement weights the noise of a new run is their own trend (``noise``)."""
        if self.weights == "measurement":
            X = self.law.design(self.C)
            # the measurement variances' own trend in log C: a new run's is read off it (known, no df)
            Z = np.column_stack([np.ones_like(self.C), np.log10(self.C)])
            g, *_ = np.linalg.lstsq(Z, -np.log(self._w), rcond=None)
            self._noise = noise.NoiseModel(g, np.zeros((2, 2)))
            return np.linalg.inv((X * self._w[:, None]).T @ X)
        if self.cov_type == "nonrobust":
            return np.asarray(ols.cov_params())
        return robust.cr2_cov(self._clusters())

    @property
    def noise(self) -> noise.NoiseModel | None:
        """The noise model of a linear form's rows (``analysis.noise``; None where it cannot be fitted),
        fitted on first use: a fit that predicts no PI (a cross-validation fold) never pays for it."""
        if self._noise is False:
            self._noise = noise.fit(self.C, self.law.to_fit_space(self.yobs)) if self._ols is not None else None
        return self._noise

    def _clusters(self) -> robust.Clusters:
        if self._cl is None:
            X = self.law.design(self.C)
            resid = self.law.to_fit_space(self.yobs) - X @ self.params.to_numpy()
            self._cl = robust.clusters(X, resid, self.C, self._w)
        return self._cl

    def _contrast_df(self, L) -> np.ndarray:
        """Degrees of freedom of the t for contrasts L (rows): Bell-McCaffrey under CR2, inf with known
        (measurement) variances, n - p otherwise."""
        L = np.atleast_2d(L)
        if self.weights == "measurement":
            return np.full(len(L), math.inf)
        if self.cov_type == "CR2" and self._ols is not None:
            return robust.bm_df(self._clusters(), L)
        return np.full(len(L), float(self.df_resid))

    @property
    def tvalues(self) -> pd.Series:
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(2 * stats.t.sf(np.abs(self.tvalues), self.df_params), index=self.params.index)

    def conf_int(self, alpha: float = 0.05, method: str = "analytic", B: int = 9_999, kind: str = "wild",
                 seed=0) -> pd.DataFrame:
        """Intervals for the params. ``analytic``: t with each param's df (``df_params``: Bell-McCaffrey
        under CR2); the saturating law's are profile-likelihood ones (NaN when not identified).
        ``bootstrap``: ``kind="wild"`` (default) inverts the restricted wild cluster bootstrap-t test
        (``bootstrap.wild_interval``); ``"residual"`` and ``"case"`` are the i.i.d. resamplings of
        ``analysis.bootstrap`` (constant noise, no clusters: kept for comparison)."""
        if method not in CI_METHODS:
            raise AnalysisError(f"unknown interval method {method!r}: expected one of {', '.join(CI_METHODS)}")
        _check_alpha(alpha)
        if method == "analytic" and self._sat is not None:
            ci = self._sat.conf_int(alpha)
        elif method == "analytic":
            t = stats.t.ppf(1 - alpha / 2, self.df_params.to_numpy())
            ci = np.column_stack([self.params - t * self.bse, self.params + t * self.bse])
        else:
            if not self.law.linear:
                raise AnalysisError(f"method='bootstrap' is implemented for the linear-in-parameter forms "
                                    f"(log-linear, linear, power), not {self.form!r}: use method='analytic'")
            if kind not in BOOTSTRAP_KINDS:
                raise AnalysisError(f"unknown bootstrap kind {kind!r}: expected one of {', '.join(BOOTSTRAP_KINDS)}")
            if kind == "wild":
                p = len(self.params)
                ci = np.array([boot.wild_interval(self._clusters(), self.params.iloc[j], np.eye(p)[j], alpha,
                                                  B=B, seed=seed) for j in range(p)])
            else:
                ci = boot.conf_int(self.law.design(self.C), self.law.to_fit_space(self.yobs), alpha=alpha, B=B,
                                   kind=kind, weights=self._w, seed=seed)
        return pd.DataFrame(ci, index=self.params.index, columns=["lower", "upper"])

    def predict(self, C) -> np.ndarray:
        """The law's y at capacities C."""
        C = np.atleast_1d(np.asarray(C, dtype=float))
        self.law.check(C, x_name=self.x)
        return self.law.predict(self.params.to_numpy(), C)

    def get_prediction(self, C) -> PredictionResults:
        return PredictionResults(self, C)

    def _delta_prediction(self, C) -> tuple[np.ndarray, np.ndarray]:
        """Saturating law: the mean at C and its se by the delta method (``SaturatingFit.prediction``:
        NaN outside the fitted range when the fit is not identified)."""
        return self._sat.prediction(C)

    def lack_of_fit(self) -> LackOfFit | None:
        """F = (SS_lof / (m - p)) / (SS_pe / (n - m)); None without replicates (or m = p)."""
        yfit = self.law.to_fit_space(self.yobs)
        pred = self.law.to_fit_space(self.law.predict(self.params.to_numpy(), self.C))
        w = self._w if self._w is not None else np.ones_like(yfit)
        caps = np.unique(self.C)
        n, m, p = len(yfit), len(caps), len(self.params)
        if n - m <= 0 or m - p <= 0:
            return None
        sse = float((w * (yfit - pred) ** 2).sum())
        ss_pe = 0.0
        for c in caps:
            sel = self.C == c
            mean = np.average(yfit[sel], weights=w[sel])
            ss_pe += float((w[sel] * (yfit[sel] - mean) ** 2).sum())
        ss_lof = max(sse - ss_pe, 0.0)
        df_num, df_den = m - p, n - m
        if ss_pe <= 0:
            return LackOfFit(math.inf, df_num, df_den, 0.0 if ss_lof > 0 else 1.0, ss_lof, ss_pe)
        F = (ss_lof / df_num) / (ss_pe / df_den)
        return LackOfFit(F, df_num, df_den, float(stats.f.sf(F, df_num, df_den)), ss_lof, ss_pe)

    def measurement_error(self) -> measurement.MeasurementError | None:
        """How much of the residual scatter the rows' measurement error (``<y>_se``) accounts for;
        None when a fitted row has no finite positive se (``measurement_error_lines`` says why)."""
        if measurement.why_not(self.yse, se_column(self.y), self._ids) is not None:
            return None
        return measurement.assess(self.law, self.C, self.yobs, self.yse, self.params.to_numpy(), self._w,
                                  self.scale, se_column(self.y))

    def measurement_error_lines(self) -> list[str]:
        """The summary's measurement-error lines: the assessment, why there is none, or nothing (no se column)."""
        reason = measurement.why_not(self.yse, se_column(self.y), self._ids)
        if reason is None:
            return self.measurement_error().summary_lines()
        return [f"Measurement error: {reason}"] if reason else []

    def summary(self, alpha: float = 0.05) -> str:
        """A text summary: the law, fit statistics, the parameter table, the lack-of-fit test and, where the
        rows carry their measurement error, how much of the residual scatter it accounts for."""
        ci = self.conf_int(alpha)
        lo, hi = f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"
        space = " (on ln y)" if self.law.log_y else ""
        lines = [f"Scaling law: {self.law.equation}   (form {self.form!r}, C = {self.x}, y = {self.y})",
                 f"No. observations: {self.nobs}   distinct capacities: {len(np.unique(self.C))}   "
                 f"weights: {self.weights or 'none'}",
                 f"R-squared{space}: {self.rsquared:.4f}   adj. R-squared: {self.rsquared_adj:.4f}   "
                 f"AIC: {self.aic:.3f}   BIC: {self.bic:.3f}",
                 "", f"{'':>8}{'coef':>12}{'std err':>12}{'t':>9}{'P>|t|':>9}{lo:>12}{hi:>12}"]
        for name in self.params.index:
            if not self.identified:
                lines.append(f"{name:>8}{self.params[name]:>12.5g}{'not identified':>27}")
                continue
            lines.append(f"{name:>8}{self.params[name]:>12.5g}{self.bse[name]:>12.4g}{self.tvalues[name]:>9.3f}"
                         f"{self.pvalues[name]:>9.3g}{ci.loc[name, 'lower']:>12.5g}{ci.loc[name, 'upper']:>12.5g}")
        if self._ols is not None:
            lines.append(self._cov_line())
        if self._sat is not None:
            lines.append("Not identified: " + "; ".join(self.warnings) + ": no parameter intervals" if
                         not self.identified else "Intervals: profile likelihood; std err: Huber sandwich")
        lof = self.lack_of_fit()
        lines.append("")
        lines.append("Lack of fit: no replicates" if lof is None else
                     f"Lack of fit: F({lof.df_num}, {lof.df_den}) = {lof.F:.4g}, p = {lof.pvalue:.4g}")
        lines += self.measurement_error_lines()
        if self.auto_scores is not None:
            lines.append(f"Form chosen by {AUTO_RULE}: " +
                         ", ".join(f"{k} {v:.4g}" + (" (not identified)" if k in self.auto_ineligible else "")
                                   for k, v in self.auto_scores.items()))
        return "\n".join(lines)

    def _cov_line(self) -> str:
        if self.weights == "measurement":
            return "Std err: known measurement variances (weights 1/se²); intervals: normal"
        if self.cov_type == "nonrobust":
            return f"Std err: classical (one pooled variance); intervals: t({self.df_resid})"
        dfs = ", ".join(f"{k} {v:.3g}" for k, v in self.df_params.items())
        return f"Std err: CR2, capacities as clusters; intervals: t with Bell-McCaffrey df ({dfs})"

    def to_dict(self, alpha: float = 0.05, ci_method: str = "analytic") -> dict:
        """A JSON-ready dict: form, x, y, n, params, bse, conf_int, ci_method, r2, r2_adj, aic, bic, ...,
        measurement_error (``MeasurementError.to_dict()``; None without a finite positive se on every row)."""
        ci = self.conf_int(alpha, method=ci_method)
        lof = self.lack_of_fit()
        me = self.measurement_error()
        return {"form": self.form, "equation": self.law.equation, "x": self.x, "y": self.y, "n": self.nobs,
                "n_capacities": int(len(np.unique(self.C))), "weights": self.weights, "cov_type": self._cov_name(),
                "params": {k: float(v) for k, v in self.params.items()},
                "bse": {k: float(v) for k, v in self.bse.items()},
                "df": {k: float(v) for k, v in self.df_params.items()},
                "conf_int": {k: [float(ci.loc[k, "lower"]), float(ci.loc[k, "upper"])] for k in ci.index},
                "ci_method": ci_method, "alpha": alpha,
                "r2": self.rsquared, "r2_adj": self.rsquared_adj, "aic": self.aic, "bic": self.bic,
                "lack_of_fit": None if lof is None else {"F": lof.F, "df_num": lof.df_num, "df_den": lof.df_den,
                                                         "pvalue": lof.pvalue},
                "measurement_error": None if me is None else me.to_dict(),
                "auto_scores": None if self.auto_scores is None else
                {k: float(v) for k, v in self.auto_scores.items()},
                "identified": self.identified, "warnings": list(self.warnings)}

    def _cov_name(self) -> str:
        """What the params' covariance is: CR2 | nonrobust | known (measurement) | huber (saturating)."""
        if self._sat is not None:
            return "huber"
        return "known" if self.weights == "measurement" else self.cov_type

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"<FitResults {self.form}: {ps}; R2={self.rsquared:.3f}, n={self.nobs}>"


# --- fitting ---------------------------------------------------------------------------------


def fit(df, x: str | None = None, y: str | None = None, form: str = "log-linear", weights=None,
        cov_type: str = "CR2") -> FitResults:
    """Fit ``form`` (or ``"auto"``: chosen by cross-validation over capacities, ``_fit_auto``) to the rows of ``df``.

    ``df`` is a DataFrame or the ``Table`` from ``load`` (whose x and y are then the defaults;
    otherwise ``params`` and ``rfid``). ``weights``: None (OLS), ``"seed-variance"`` (feasible GLS by
    the noise model's variance at each capacity) or ``"measurement"`` (WLS by 1 / ``<y>_se``^2, taken
    as known: right when the measurement error is all the scatter there is, see ``measurement_error``).
    ``cov_type``: ``"CR2"`` (default: cluster-robust by capacity, Bell-McCaffrey df) or ``"nonrobust"``.
    """
    x, y = _names(df, x, y)
    if weights not in WEIGHTS:
        raise AnalysisError(f"unknown weights {weights!r}: expected None, 'seed-variance' or 'measurement'")
    if cov_type not in COV_TYPES:
        raise AnalysisError(f"unknown cov_type {cov_type!r}: expected one of {', '.join(COV_TYPES)}")
    if form != "auto":
        get_law(form)
    C, Y, se, ids = _columns(df, x, y)
    _check_capacities(C, x, source=_source(df))
    if form != "auto":
        _check_positive(get_law(form), C, x, ids, _source(df))
    if form == "auto":
        return _fit_auto(C, Y, x, y, weights, yse=se, ids=ids, cov_type=cov_type)
    return _fit_arrays(get_law(form), C, Y, x, y, weights, yse=se, ids=ids, cov_type=cov_type)


def _fit_arrays(law: Law, C, Y, x: str, y: str, weights=None, yse=None, ids=None,
                cov_type: str = "CR2") -> FitResults:
    law.check(C, Y, x_name=x, y_name=y)
    if not law.linear:
        _check_capacities(C, x, need=len(law.param_names) + 1)
        if weights:
            raise AnalysisError(f"weights={weights!r} is implemented for the linear-in-parameter forms, "
                                f"not {law.name!r}")
        return FitResults(law, C, Y, x, y, sat=sat_law.fit_saturating(C, Y), yse=yse, ids=ids)
    X, yt = law.design(C), law.to_fit_space(Y)
    w = None
    if weights == "seed-variance":
        w = _seed_variance_weights(C, yt, x)
    elif weights == "measurement":
        w = _measurement_weights(law, Y, yse, y, list(range(len(Y))) if ids is None else ids)
    model = sm.OLS(yt, X) if w is None else sm.WLS(yt, X, weights=w)
    return FitResults(law, C, Y, x, y, weights=weights, ols=model.fit(), yse=yse, ids=ids, cov_type=cov_type, w=w)


def _folds(C: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's fold: its capacity's rank modulo ``AUTO_FOLDS`` (one capacity per fold when there are
    at most ``AUTO_FOLDS``: leave-one-capacity-out), and the number of folds."""
    _, inv = np.unique(C, return_inverse=True)
    K = min(int(inv.max()) + 1, AUTO_FOLDS)
    return inv % K, K


def _fold_mse(law: Law, C, Y, x, y, weights, fold, K, full: FitResults | None, full_yse=None) -> np.ndarray:
    """(K,) mean squared error (in y) of each fold's rows predicted from a fit without them. The
    saturating law refits each fold from the full fit's optimum (``saturating.refit``)."""
    mse = np.empty(K)
    for k in range(K):
        out = fold == k
        keep = ~out
        if full is not None and full._sat is not None:
            pred = law.predict(sat_law.refit(full._sat, C[keep], Y[keep]), C[out])
        else:
            yse = None if full_yse is None else full_yse[keep]
            pred = _fit_arrays(law, C[keep], Y[keep], x, y, weights, yse=yse, cov_type="nonrobust").predict(C[out])
        mse[k] = np.mean((pred - Y[out]) ** 2)
    return mse


def _fit_auto(C, Y, x, y, weights, yse=None, ids=None, cov_type: str = "CR2") -> FitResults:
    """The form chosen by cross-validation over capacities (``AUTO_RULE``): each form's mean squared
    error per fold; among the forms within one standard error of the best (the se of the per-fold
    differences from it, paired), the one with the fewest parameters, ties going to the first in
    ``FORMS`` (log-linear, the default: data that cannot tell the forms apart keep it). The
    saturating law takes part only when identified on all rows: otherwise it fits as well as the
    log-linear law only by letting E and A run off, and its extrapolation means nothing."""
    fold, K = _folds(C)
    mse, full = {}, {}
    for name, law in FORMS.items():
        try:
            law.check(C, Y)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not law.linear:
                    full[name] = _fit_arrays(law, C, Y, x, y, weights, yse=yse, ids=ids, cov_type=cov_type)
                mse[name] = _fold_mse(law, C, Y, x, y, weights, fold, K, full.get(name), yse)
        except (AnalysisError, np.linalg.LinAlgError, ValueError):
            continue
    if not mse:
        raise AnalysisError("form='auto': no form could be fitted with a fold of capacities left out")
    eligible = [k for k in mse if k not in full or full[k].identified]
    if not eligible:
        raise AnalysisError("form='auto': the only form that could be fitted (saturating) is not identified")
    best = min(eligible, key=lambda k: mse[k].mean())

    def close(k):   # within one se of the best, paired by fold
        d = mse[k] - mse[best]
        return k == best or d.mean() <= d.std(ddof=1) / math.sqrt(K)

    order = list(FORMS)     # log-linear first: the paper's law and the default
    chosen = min((k for k in eligible if close(k)), key=lambda k: (len(FORMS[k].param_names), order.index(k)))
    res = full.get(chosen) or _fit_arrays(FORMS[chosen], C, Y, x, y, weights, yse=yse, ids=ids, cov_type=cov_type)
    sizes = np.bincount(fold, minlength=K)
    res.auto_scores = pd.Series({k: math.sqrt(float(v @ sizes) / sizes.sum()) for k, v in mse.items()},
                                name="cv_rmse").sort_values()
    res.auto_ineligible = [k for k in mse if k not in eligible]
    return res
