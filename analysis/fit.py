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
robust Huber fit (``scipy.optimize.least_squares``) from a grid of starting values; its standard
errors and intervals come from the Jacobian at the optimum (delta method, t quantiles).
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
from scipy import optimize, stats

from analysis import bootstrap as boot
from analysis import measurement
from analysis.errors import AnalysisError
from analysis.laws import FORMS, Law, get_law
from analysis.schema import se_column

CI_METHODS = ("analytic", "bootstrap")
WEIGHTS = (None, "seed-variance")


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
        self.auto_scores: pd.Series | None = None   # leave-one-out RMSE per form when form="auto"
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
        else:
            self.params = pd.Series(sat["params"], index=names, name="params")
            self.cov_params = pd.DataFrame(sat["cov"], index=names, columns=names)
            self.bse = pd.Series(np.sqrt(np.diag(sat["cov"])), index=names, name="bse")
            n, p = len(self.yobs), len(names)
            self.nobs, self.df_resid = n, n - p
            resid = self.yobs - law.predict(sat["params"], self.C)
            self.ssr = float(resid @ resid)
            sst = float(((self.yobs - self.yobs.mean()) ** 2).sum())
            self.rsquared = 1 - self.ssr / sst
            self.rsquared_adj = 1 - (1 - self.rsquared) * (n - 1) / (n - p)
            self.scale = self.ssr / (n - p)
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
        """Intervals for the params: t-based (``analytic``) or the studentized residual bootstrap."""
        if method not in CI_METHODS:
            raise AnalysisError(f"unknown interval method {method!r}: expected one of {', '.join(CI_METHODS)}")
        if not 0 < alpha < 1:
            raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
        if method == "analytic":
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
        """Saturating law: the mean at C and its se by the delta method."""
        E, A, alpha = self.params.to_numpy()
        Ca = np.power(C, -alpha)
        grad = np.column_stack([np.ones_like(C), Ca, -A * Ca * np.log(C)])          # (m, 3)
        se = np.sqrt(np.einsum("ij,jk,ik->i", grad, self.cov_params.to_numpy(), grad))
        return E + A * Ca, se

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
            lines.append(f"{name:>8}{self.params[name]:>12.5g}{self.bse[name]:>12.4g}{self.tvalues[name]:>9.3f}"
                         f"{self.pvalues[name]:>9.3g}{ci.loc[name, 'lower']:>12.5g}{ci.loc[name, 'upper']:>12.5g}")
        lof = self.lack_of_fit()
        lines.append("")
        lines.append("Lack of fit: no replicates" if lof is None else
                     f"Lack of fit: F({lof.df_num}, {lof.df_den}) = {lof.F:.4g}, p = {lof.pvalue:.4g}")
        lines += self.measurement_error_lines()
        if self.auto_scores is not None:
            lines.append("Form chosen by leave-one-capacity-out RMSE: " +
                         ", ".join(f"{k} {v:.4g}" for k, v in self.auto_scores.items()))
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
                {k: float(v) for k, v in self.auto_scores.items()}}

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"<FitResults {self.form}: {ps}; R2={self.rsquared:.3f}, n={self.nobs}>"


# --- fitting ---------------------------------------------------------------------------------


def fit(df, x: str | None = None, y: str | None = None, form: str = "log-linear", weights=None) -> FitResults:
    """Fit ``form`` (or ``"auto"``: the best by leave-one-capacity-out error) to the rows of ``df``.

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
        return FitResults(law, C, Y, x, y, sat=_fit_saturating(C, Y), yse=yse, ids=ids)
    X, yt = law.design(C), law.to_fit_space(Y)
    if weights == "seed-variance":
        model = sm.WLS(yt, X, weights=_seed_variance_weights(C, yt, x))
    else:
        model = sm.OLS(yt, X)
    return FitResults(law, C, Y, x, y, weights=weights, ols=model.fit(), yse=yse, ids=ids)


def _fit_saturating(C: np.ndarray, y: np.ndarray, alphas=None) -> dict:
    """y = E + A C^-alpha by a robust Huber loss summed over points, from a grid of starts.

    Internally C is scaled by its geometric mean C0 (A' = A C0^-alpha) so the problem is well
    conditioned. For each alpha of the grid, E and A' are linear and solved exactly: that gives
    the starts; each start is refined by ``least_squares(loss="huber")`` and the lowest loss kept.
    The Huber threshold is 1.345 robust sigmas (MAD) of the residuals, re-estimated from the fit.
    """
    C0 = float(np.exp(np.mean(np.log(C))))
    u = C / C0
    alphas = np.geomspace(0.01, 3.0, 25) if alphas is None else alphas
    starts = []
    for a in alphas:
        X = np.column_stack([np.ones_like(u), u ** -a])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        r = y - X @ coef
        starts.append((float(r @ r), [coef[0], coef[1], a]))
    starts.sort(key=lambda s: s[0])

    def resid(theta):
        return theta[0] + theta[1] * u ** -theta[2] - y

    def huber_fit(thetas, delta):
        best = None
        for theta0 in thetas:
            sol = optimize.least_squares(resid, theta0, loss="huber", f_scale=delta, method="trf",
                                         bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, 10.0]),
                                         x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100)
            if best is None or sol.cost < best.cost:
                best = sol
        return best

    def threshold(r):
        sigma = 1.4826 * np.median(np.abs(r - np.median(r)))
        return 1.345 * sigma if sigma > 0 else 1e-6 * max(float(np.std(y)), 1e-12)

    # The threshold is re-estimated from the fit's own residuals (an outlier inflates the first).
    thetas = [theta for _, theta in starts[:5]]
    delta = threshold(resid(thetas[0]))
    for _ in range(5):
        best, used = huber_fit(thetas, delta), delta
        delta = threshold(best.fun)
        if abs(delta - used) <= 0.05 * used:
            break
        thetas = [best.x]  # later rounds refine the best solution
    E, Ap, alpha = best.x
    # Covariance from the (unweighted) Jacobian at the optimum, in (E, A', alpha), then to (E, A, alpha).
    r = resid(best.x)
    J = np.column_stack([np.ones_like(u), u ** -alpha, -Ap * u ** -alpha * np.log(u)])
    n, p = len(y), 3
    s2 = float(r @ r) / (n - p)
    cov_int = s2 * np.linalg.pinv(J.T @ J)
    A = Ap * C0 ** alpha
    T = np.array([[1, 0, 0], [0, C0 ** alpha, Ap * C0 ** alpha * np.log(C0)], [0, 0, 1]])
    return {"params": np.array([E, A, alpha]), "cov": T @ cov_int @ T.T, "huber_delta": used}


def _fit_auto(C, Y, x, y, weights, yse=None, ids=None) -> FitResults:
    """The form with the lowest leave-one-capacity-out RMSE (in y) among those the data allow."""
    caps = np.unique(C)
    scores = {}
    for name, law in FORMS.items():
        try:
            law.check(C, Y)
            errs = []
            for c in caps:
                keep = C != c
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = _fit_arrays(law, C[keep], Y[keep], x, y, weights)
                errs.append(res.predict(C[~keep]) - Y[~keep])
            scores[name] = float(np.sqrt(np.mean(np.concatenate(errs) ** 2)))
        except (AnalysisError, np.linalg.LinAlgError, ValueError):
            continue
    if not scores:
        raise AnalysisError("form='auto': no form could be fitted with one capacity left out")
    best = min(scores, key=scores.get)
    res = _fit_arrays(FORMS[best], C, Y, x, y, weights, yse=yse, ids=ids)
    res.auto_scores = pd.Series(scores, name="loo_rmse").sort_values()
    return res
