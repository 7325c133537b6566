"""Fit a scaling law and return a results object in the statsmodels manner.

    res = fit(df, x="params", y="rfid", form="log-linear")
    res.params, res.bse, res.conf_int(0.05, method="analytic" | "bootstrap")
    res.rsquared, res.rsquared_adj, res.aic, res.bic, res.nobs
    res.predict(C), res.get_prediction(C).summary_frame(alpha), res.summary(), res.to_dict()
    res.lack_of_fit(), res.measurement_error()

Linear-in-parameters forms (log-linear, linear, power) are statsmodels OLS (or WLS with
``weights="seed-variance"``) on the form's design matrix, and their predictions are statsmodels'
own ``get_prediction``. ``power`` is fitted on ln y: its R², AIC and intervals live in that space,
and predictions are mapped back with exp (the mean's se by the delta method). ``saturating`` is a
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
from analysis import measurement
from analysis import saturating as sat_law
from analysis.errors import AnalysisError
from analysis.laws import FORMS, Law, get_law
from analysis.schema import se_column

CI_METHODS = ("analytic", "bootstrap")
WEIGHTS = (None, "seed-variance")
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


def _seed_variance_weights(C: np.ndarray, y: np.ndarray, x: str) -> np.ndarray:
    """1 / (per-capacity sample variance), normalised to mean 1 (a new point then has weight 1)."""
    var = np.empty_like(y)
    for c in np.unique(C):
        sel = C == c
        if sel.sum() < 2:
            raise AnalysisError(f"weights='seed-variance' needs at least 2 seeds at every capacity; "
                                f"{x}={c:g} has 1")
        v = np.var(y[sel], ddof=1)
        if v <= 0:
            raise AnalysisError(f"weights='seed-variance': the seeds at {x}={c:g} all have the same value, "
                                "their variance is 0")
        var[sel] = v
    w = 1.0 / var
    return w / w.mean()


# --- results ---------------------------------------------------------------------------------


class PredictionResults:
    """Predictions at new capacities: ``summary_frame(alpha)`` with the mean's CI and the observation PI."""

    def __init__(self, res: FitResults, C):
        self._res = res
        self.C = np.atleast_1d(np.asarray(C, dtype=float))
        res.law.check(self.C, x_name=res.x)

    @property
    def predicted_mean(self) -> np.ndarray:
        return self._res.predict(self.C)

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        res = self._res
        if res._ols is not None:
            sf = res._ols.get_prediction(res.law.design(self.C)).summary_frame(alpha=alpha)
            sf = sf[["mean", "mean_se", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"]].copy()
            if res.law.log_y:  # back from ln y: bounds by exp, the mean's se by the delta method
                for col in ("mean", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"):
                    sf[col] = np.exp(sf[col])
                sf["mean_se"] = sf["mean"] * sf["mean_se"]
        else:
            mean, se = res._delta_prediction(self.C)
            t = stats.t.ppf(1 - alpha / 2, res.df_resid)
            obs = np.sqrt(se ** 2 + res.scale)
            sf = pd.DataFrame({"mean": mean, "mean_se": se, "mean_ci_lower": mean - t * se,
                               "mean_ci_upper": mean + t * se, "obs_ci_lower": mean - t * obs,
                               "obs_ci_upper": mean + t * obs})
        sf.index = pd.Index(self.C, name=res.x)
        return sf


class FitResults:
    """A fitted scaling law, in the statsmodels manner (see the module docstring)."""

    def __init__(self, law: Law, C, y, x: str, y_name: str, weights=None, ols=None, sat=None, yse=None,
                 ids=None):
        self.law, self.x, self.y = law, x, y_name
        self.form = law.name
        self.C, self.yobs = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
        # y's measurement error per row (None: the rows had no <y>_se column) and the rows' ids
        self.yse = None if yse is None else np.asarray(yse, dtype=float)
        self._ids = list(range(len(self.yobs))) if ids is None else list(ids)
        self.weights = weights          # None or the name of the weighting
        self._w = None
        self._ols = ols
        self._sat = sat
        self.auto_scores: pd.Series | None = None   # cross-validated RMSE per form when form="auto"
        self.auto_ineligible: list[str] = []        # forms form="auto" scored but could not choose (not identified)
        self.identified, self.warnings = True, []    # the saturating law's identification (others: always)
        names = list(law.param_names)
        if ols is not None:
            self._w = ols.model.weights if weights else None
            self.params = pd.Series(np.asarray(ols.params), index=names, name="params")
            self.bse = pd.Series(np.asarray(ols.bse), index=names, name="bse")
            self.cov_params = pd.DataFrame(np.asarray(ols.cov_params()), index=names, columns=names)
            self.nobs, self.df_resid = int(ols.nobs), int(ols.df_resid)
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
            llf = -n / 2 * (math.log(2 * math.pi) + math.log(max(self.ssr / n, 1e-300)) + 1)  # 0 on exact data
            self.aic, self.bic = -2 * llf + 2 * p, -2 * llf + p * math.log(n)

    @property
    def tvalues(self) -> pd.Series:
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(2 * stats.t.sf(np.abs(self.tvalues), self.df_resid), index=self.params.index)

    def conf_int(self, alpha: float = 0.05, method: str = "analytic", B: int = 10_000, kind: str = "residual",
                 seed=0) -> pd.DataFrame:
        """Intervals for the params: t-based (``analytic``) or the studentized residual bootstrap.
        The saturating law's ``analytic`` intervals are profile-likelihood ones (NaN when not identified)."""
        if method not in CI_METHODS:
            raise AnalysisError(f"unknown interval method {method!r}: expected one of {', '.join(CI_METHODS)}")
        if not 0 < alpha < 1:
            raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
        if method == "analytic" and self._sat is not None:
            ci = self._sat.conf_int(alpha)
        elif method == "analytic":
            t = stats.t.ppf(1 - alpha / 2, self.df_resid)
            ci = np.column_stack([self.params - t * self.bse, self.params + t * self.bse])
        else:
            if not self.law.linear:
                raise AnalysisError(f"method='bootstrap' is implemented for the linear-in-parameter forms "
                                    f"(log-linear, linear, power), not {self.form!r}: use method='analytic'")
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

    def to_dict(self, alpha: float = 0.05, ci_method: str = "analytic") -> dict:
        """A JSON-ready dict: form, x, y, n, params, bse, conf_int, ci_method, r2, r2_adj, aic, bic, ...,
        measurement_error (``MeasurementError.to_dict()``; None without a finite positive se on every row)."""
        ci = self.conf_int(alpha, method=ci_method)
        lof = self.lack_of_fit()
        me = self.measurement_error()
        return {"form": self.form, "equation": self.law.equation, "x": self.x, "y": self.y, "n": self.nobs,
                "n_capacities": int(len(np.unique(self.C))), "weights": self.weights,
                "params": {k: float(v) for k, v in self.params.items()},
                "bse": {k: float(v) for k, v in self.bse.items()},
                "conf_int": {k: [float(ci.loc[k, "lower"]), float(ci.loc[k, "upper"])] for k in ci.index},
                "ci_method": ci_method, "alpha": alpha,
                "r2": self.rsquared, "r2_adj": self.rsquared_adj, "aic": self.aic, "bic": self.bic,
                "lack_of_fit": None if lof is None else {"F": lof.F, "df_num": lof.df_num, "df_den": lof.df_den,
                                                         "pvalue": lof.pvalue},
                "measurement_error": None if me is None else me.to_dict(),
                "auto_scores": None if self.auto_scores is None else
                {k: float(v) for k, v in self.auto_scores.items()},
                "identified": self.identified, "warnings": list(self.warnings)}

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"<FitResults {self.form}: {ps}; R2={self.rsquared:.3f}, n={self.nobs}>"


# --- fitting ---------------------------------------------------------------------------------


def fit(df, x: str | None = None, y: str | None = None, form: str = "log-linear", weights=None) -> FitResults:
    """Fit ``form`` (or ``"auto"``: chosen by cross-validation over capacities, ``_fit_auto``) to the rows of ``df``.

    ``df`` is a DataFrame or the ``Table`` from ``load`` (whose x and y are then the defaults;
    otherwise ``params`` and ``rfid``). ``weights="seed-variance"``: WLS by 1 / per-capacity variance.
    """
    x, y = _names(df, x, y)
    if weights not in WEIGHTS:
        raise AnalysisError(f"unknown weights {weights!r}: expected None or 'seed-variance'")
    if form != "auto":
        get_law(form)
    C, Y, se, ids = _columns(df, x, y)
    _check_capacities(C, x, source=_source(df))
    if form == "auto":
        return _fit_auto(C, Y, x, y, weights, yse=se, ids=ids)
    return _fit_arrays(get_law(form), C, Y, x, y, weights, yse=se, ids=ids)


def _fit_arrays(law: Law, C, Y, x: str, y: str, weights=None, yse=None, ids=None) -> FitResults:
    law.check(C, Y, x_name=x, y_name=y)
    if not law.linear:
        _check_capacities(C, x, need=len(law.param_names) + 1)
        if weights:
            raise AnalysisError(f"weights={weights!r} is implemented for the linear-in-parameter forms, "
                                f"not {law.name!r}")
        return FitResults(law, C, Y, x, y, sat=sat_law.fit_saturating(C, Y), yse=yse, ids=ids)
    X, yt = law.design(C), law.to_fit_space(Y)
    if weights == "seed-variance":
        model = sm.WLS(yt, X, weights=_seed_variance_weights(C, yt, x))
    else:
        model = sm.OLS(yt, X)
    return FitResults(law, C, Y, x, y, weights=weights, ols=model.fit(), yse=yse, ids=ids)


def _folds(C: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's fold: its capacity's rank modulo ``AUTO_FOLDS`` (one capacity per fold when there are
    at most ``AUTO_FOLDS``: leave-one-capacity-out), and the number of folds."""
    _, inv = np.unique(C, return_inverse=True)
    K = min(int(inv.max()) + 1, AUTO_FOLDS)
    return inv % K, K


def _fold_mse(law: Law, C, Y, x, y, weights, fold, K, full: FitResults | None) -> np.ndarray:
    """(K,) mean squared error (in y) of each fold's rows predicted from a fit without them. The
    saturating law refits each fold from the full fit's optimum (``saturating.refit``)."""
    mse = np.empty(K)
    for k in range(K):
        out = fold == k
        keep = ~out
        if full is not None and full._sat is not None:
            pred = law.predict(sat_law.refit(full._sat, C[keep], Y[keep]), C[out])
        else:
            pred = _fit_arrays(law, C[keep], Y[keep], x, y, weights).predict(C[out])
        mse[k] = np.mean((pred - Y[out]) ** 2)
    return mse


def _fit_auto(C, Y, x, y, weights, yse=None, ids=None) -> FitResults:
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
                    full[name] = _fit_arrays(law, C, Y, x, y, weights, yse=yse, ids=ids)
                mse[name] = _fold_mse(law, C, Y, x, y, weights, fold, K, full.get(name))
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
    res = full.get(chosen) or _fit_arrays(FORMS[chosen], C, Y, x, y, weights, yse=yse, ids=ids)
    sizes = np.bincount(fold, minlength=K)
    res.auto_scores = pd.Series({k: math.sqrt(float(v @ sizes) / sizes.sum()) for k, v in mse.items()},
                                name="cv_rmse").sort_values()
    res.auto_ineligible = [k for k in mse if k not in eligible]
    return res
