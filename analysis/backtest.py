"""Backtest a law: fit on the smaller capacities, predict the larger ones, check the intervals.

- ``backtest``: hold out the K largest distinct capacities, fit the rest, predict each held-out run.
- ``rollout``: an expanding window, as in OLMo's ladder analysis: for every k from 3 up, fit on the
  k smallest distinct capacities and predict every larger one. Each split is a ``RolloutSplit``;
  every metric (per split and over all of them) is read off the splits' rows by one function,
  ``rollout_metrics``.

Rollout metrics, over the held-out runs i of a split (or of every split, pooled: a run predicted by
several splits counts once per split), with ŷ_i the law's prediction at the run's capacity C_i and
y_i the run's metric:

- ``bias`` = mean(ŷ_i - y_i), the signed error in the metric's units (> 0: the law predicts too high);
- ``mae`` = mean |ŷ_i - y_i|;
- ``weighted_rel_error`` = sum_i d_i |ŷ_i - y_i| / |y_i|  /  sum_i d_i, with d_i = log10(C_i / C_max)
  the decades the prediction reaches beyond the largest capacity the split fitted (C_max): a miss two
  decades out counts twice as much as one a decade out. Runs with y_i = 0 have no relative error and
  are left out of it (and of ``mean_rel_error``, the same mean unweighted);
- ``coverage`` = the share of runs inside the law's (1 - alpha) prediction interval at C_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.fit import FitResults, _columns, _names, _source, fit

#: The first split fits this many of the smallest capacities (the fewest a law is fitted to).
ROLLOUT_START = 3
#: The weighting of ``weighted_rel_error``, in words (the CLI's JSON and the report quote it).
ROLLOUT_WEIGHTING = ("each held-out run's |relative error| weighted by d = log10(C / C_max), the decades "
                     "between its capacity C and the largest capacity C_max the split was fitted on")


def _prediction(res: FitResults, C: np.ndarray, alpha: float) -> pd.DataFrame:
    """The law's mean and (1 - alpha) prediction interval at capacities C (``summary_frame``'s columns)."""
    sf = res.get_prediction(C).summary_frame(alpha)
    return pd.DataFrame({"mean": sf["mean"].to_numpy(float), "pi_lower": sf["obs_ci_lower"].to_numpy(float),
                         "pi_upper": sf["obs_ci_upper"].to_numpy(float)})


def _fit_smallest(C: np.ndarray, Y: np.ndarray, k: int, caps: np.ndarray, x: str, y: str, form: str, weights,
                  cache: dict | None) -> FitResults:
    """The law fitted on the rows at the k smallest capacities ``caps[:k]`` (C sorted ascending).

    ``cache``: a dict that calls on the same table share (``backtest`` and ``rollout`` in one report):
    the law of (k, form, weights) is then fitted once.
    """
    key = (k, form, weights)
    if cache is not None and key in cache:
        return cache[key]
    n_fit = int(np.searchsorted(C, caps[k - 1], side="right"))
    res = fit(pd.DataFrame({x: C[:n_fit], y: Y[:n_fit]}), x=x, y=y, form=form, weights=weights)
    if cache is not None:
        cache[key] = res
    return res


def _sorted_columns(df, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite (C, y) rows, in order of C (stable: seeds keep their order)."""
    C, Y, _se, _ids = _columns(df, x, y)
    order = np.argsort(C, kind="stable")
    return C[order], Y[order]


def backtest(df, holdout: int = 1, form: str = "log-linear", alpha: float = 0.05, x: str | None = None,
             y: str | None = None, weights=None, cache: dict | None = None) -> pd.DataFrame:
    """One row per held-out observation: capacity, truth, mean, PI, error, covered.

    The law is fitted on every row whose capacity is not among the ``holdout`` largest distinct
    capacities; ``pi_lower`` / ``pi_upper`` are its (1 - alpha) prediction interval for a new
    observation, ``error`` is predicted minus truth and ``rel_error`` that over the truth.
    ``cache``: shared with ``rollout`` on the same table, the law it fitted on the same rows is reused.
    """
    if not isinstance(holdout, (int, np.integer)) or holdout < 1:
        raise AnalysisError(f"holdout must be a positive number of capacities, got {holdout!r}")
    x, y = _names(df, x, y)
    C, Y = _sorted_columns(df, x, y)
    caps = np.unique(C)
    if len(caps) - holdout < 3:
        left = max(len(caps) - holdout, 0)
        raise AnalysisError(f"{_source(df)}holdout={holdout} leaves {left} distinct "
                            f"capacit{'y' if left == 1 else 'ies'} in {x!r} to fit (of {len(caps)}): "
                            "a backtest needs at least 3 left")
    cut = caps[-holdout]
    res = _fit_smallest(C, Y, len(caps) - holdout, caps, x, y, form, weights, cache)
    test_C, truth = C[C >= cut], Y[C >= cut]
    out = pd.concat([pd.DataFrame({"capacity": test_C, "truth": truth}), _prediction(res, test_C, alpha)], axis=1)
    out["error"] = out["mean"] - out["truth"]
    out["rel_error"] = out["error"] / out["truth"].abs()
    out["covered"] = (out["truth"] >= out["pi_lower"]) & (out["truth"] <= out["pi_upper"])
    out.attrs["form"] = res.form
    return out                                  # in order of capacity (C was sorted)


# --- rollout ---------------------------------------------------------------------------------

#: The columns of a split's rows: one row per predicted capacity, its runs summarised.
ROLLOUT_COLUMNS = ("k", "fitted_max", "capacity", "decades", "n", "truth", "mean", "pi_lower", "pi_upper",
                   "error", "abs_error", "rel_error", "n_rel", "coverage")


@dataclass(frozen=True)
class RolloutSplit:
    """One split: the law fitted on the ``k`` smallest capacities (up to ``fitted_max``), predicting each larger one.

    ``rows``: one per predicted capacity (``ROLLOUT_COLUMNS``): its ``decades`` = log10(capacity /
    fitted_max), its ``n`` runs, their mean ``truth``, the prediction ``mean`` and its PI, and over
    the runs: ``error`` = mean(ŷ - y), ``abs_error`` = mean |ŷ - y|, ``rel_error`` = mean |ŷ - y| / |y|
    (over the ``n_rel`` runs with y != 0; NaN with none) and ``coverage`` = the share inside the PI.
    """

    k: int
    fitted_max: float
    form: str
    n_fitted: int
    rows: pd.DataFrame

    def metrics(self) -> dict:
        """``rollout_metrics`` of this split's rows."""
        return rollout_metrics(self.rows)


def rollout_metrics(rows: pd.DataFrame) -> dict:
    """bias, mae, mean_rel_error, weighted_rel_error, coverage (see the module docstring) over the runs
    that ``rows`` (a split's, or several splits' concatenated) summarise; with n, n_capacities, max_decades."""
    n = rows["n"].to_numpy(float)
    n_rel = rows["n_rel"].to_numpy(float)
    d = rows["decades"].to_numpy(float)
    rel = np.nan_to_num(rows["rel_error"].to_numpy(float))      # NaN only where n_rel = 0
    total, total_rel, total_d = n.sum(), n_rel.sum(), (d * n_rel).sum()
    return {"n": int(total), "n_capacities": len(rows), "max_decades": float(d.max()) if len(d) else math.nan,
            "bias": float((n * rows["error"]).sum() / total) if total else math.nan,
            "mae": float((n * rows["abs_error"]).sum() / total) if total else math.nan,
            "mean_rel_error": float((n_rel * rel).sum() / total_rel) if total_rel else math.nan,
            "weighted_rel_error": float((d * n_rel * rel).sum() / total_d) if total_d > 0 else math.nan,
            "coverage": float((n * rows["coverage"]).sum() / total) if total else math.nan}


@dataclass(frozen=True)
class Rollout:
    """Every split of an expanding-window backtest (``rollout``), and the ones the law could not be fitted on."""

    form: str
    x: str
    y: str
    alpha: float
    splits: tuple[RolloutSplit, ...]
    skipped: tuple[tuple[int, str], ...] = ()       # (k, why)

    @property
    def rows(self) -> pd.DataFrame:
        """Every split's rows, in order of k then capacity."""
        return pd.concat([s.rows for s in self.splits], ignore_index=True)

    def table(self) -> pd.DataFrame:
        """One row per split: k, fitted_max, form, n_fitted and ``rollout_metrics``."""
        return pd.DataFrame([{"k": s.k, "fitted_max": s.fitted_max, "form": s.form, "n_fitted": s.n_fitted,
                              **s.metrics()} for s in self.splits])

    def overall(self) -> dict:
        """``rollout_metrics`` over every split's held-out runs pooled, and the number of splits."""
        return {"splits": len(self.splits), **rollout_metrics(self.rows)}

    def to_dict(self) -> dict:
        """A JSON-ready dict: form, x, y, alpha, weighting, splits (each with its rows), overall, skipped."""
        return {"form": self.form, "x": self.x, "y": self.y, "alpha": self.alpha, "weighting": ROLLOUT_WEIGHTING,
                "splits": [{"k": s.k, "fitted_max": s.fitted_max, "form": s.form, "n_fitted": s.n_fitted,
                            **s.metrics(), "rows": s.rows.drop(columns=["k", "fitted_max"]).to_dict("records")}
                           for s in self.splits],
                "overall": self.overall(),
                "skipped": [{"k": k, "reason": why} for k, why in self.skipped]}


def _summarise(k: int, top: float, C: np.ndarray, Y: np.ndarray, pred: pd.DataFrame,
               caps: np.ndarray) -> pd.DataFrame:
    """A split's rows: the runs (C, Y) at the predicted capacities ``caps`` (sorted), ``pred`` there."""
    g = np.searchsorted(caps, C)                                        # each run's capacity, as an index
    m = len(caps)
    yhat, lo, hi = (pred[c].to_numpy()[g] for c in ("mean", "pi_lower", "pi_upper"))
    err = yhat - Y
    nonzero = Y != 0
    rel = np.where(nonzero, np.abs(err) / np.where(nonzero, np.abs(Y), 1.0), 0.0)

    def total(v):
        return np.bincount(g, weights=v, minlength=m)

    n, n_rel = total(np.ones_like(Y)), total(nonzero.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_mean = np.where(n_rel > 0, total(rel) / n_rel, np.nan)
    return pd.DataFrame({"k": k, "fitted_max": top, "capacity": caps, "decades": np.log10(caps / top),
                         "n": n.astype(int), "truth": total(Y) / n, "mean": pred["mean"].to_numpy(),
                         "pi_lower": pred["pi_lower"].to_numpy(), "pi_upper": pred["pi_upper"].to_numpy(),
                         "error": total(err) / n,
                         "abs_error": total(np.abs(err)) / n, "rel_error": rel_mean, "n_rel": n_rel.astype(int),
                         "coverage": total(((Y >= lo) & (Y <= hi)).astype(float)) / n})


def rollout(df, form: str = "log-linear", alpha: float = 0.05, x: str | None = None, y: str | None = None,
            weights=None, start: int = ROLLOUT_START, cache: dict | None = None) -> Rollout:
    """The expanding-window backtest: for k = ``start``, ..., m - 1 (m distinct capacities), fit ``form`` on the
    rows at the k smallest capacities and predict the rows at every larger one (see the module docstring).

    Capacities need to be positive (the reach is in decades). A split the law cannot be fitted on
    (e.g. ``saturating`` on 3 capacities, or a constant metric) is skipped and listed in ``skipped``
    with the reason; an error when no split is left, or there are fewer than ``start`` + 1 capacities.
    ``cache``: shared with ``backtest`` on the same table, a law fitted on the same rows is reused.
    """
    if not isinstance(start, (int, np.integer)) or start < 1:
        raise AnalysisError(f"start must be a positive number of capacities, got {start!r}")
    x, y = _names(df, x, y)
    C, Y = _sorted_columns(df, x, y)
    if np.any(C <= 0):
        raise AnalysisError(f"{_source(df)}column {x!r} has a non-positive value ({C[C <= 0][0]:g}): a rollout "
                            "measures its reach in decades of the capacity and needs every value > 0")
    caps = np.unique(C)
    if len(caps) < start + 1:
        raise AnalysisError(f"{_source(df)}column {x!r} has {len(caps)} distinct capacit"
                            f"{'y' if len(caps) == 1 else 'ies'}: a rollout fits at least {start} and predicts "
                            f"a larger one, so it needs at least {start + 1}")
    splits, skipped = [], []
    for k in range(start, len(caps)):
        top = caps[k - 1]
        n_fit = int(np.searchsorted(C, top, side="right"))              # rows at the k smallest capacities
        try:
            res = _fit_smallest(C, Y, k, caps, x, y, form, weights, cache)
        except AnalysisError as exc:
            skipped.append((k, str(exc)))
            continue
        ahead = caps[k:]
        rows = _summarise(k, float(top), C[n_fit:], Y[n_fit:], _prediction(res, ahead, alpha), ahead)
        splits.append(RolloutSplit(k, float(top), res.form, n_fit, rows))
    if not splits:
        k, why = skipped[0]
        raise AnalysisError(f"{_source(df)}no rollout split could be fitted (k = {k}: {why})")
    return Rollout(form, x, y, alpha, tuple(splits), tuple(skipped))
