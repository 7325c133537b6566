"""Scaling-law analysis of a sweep's results table: load, fit, bootstrap, backtest (held-out and rollout).

Pure pandas / numpy / scipy / statsmodels: it never imports torch, Ray or ``model`` (MLflow only
lazily, inside ``load("mlflow:EXPERIMENT")``).

    from analysis import load, fit
    res = fit(load("results/default"), x="params", y="rfid", form="log-linear")
    res.summary(); res.conf_int(method="bootstrap"); res.get_prediction([2e8]).summary_frame()
"""

from analysis.backtest import Rollout, backtest, rollout
from analysis.errors import AnalysisError
from analysis.fit import FitResults, fit
from analysis.laws import FORMS, get_law
from analysis.load import Table, load

__all__ = ["AnalysisError", "FORMS", "FitResults", "Rollout", "Table", "backtest", "fit", "get_law", "load", "rollout"]
