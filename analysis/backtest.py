"""Backtest a law: fit on all but the largest capacities, predict those, check the intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.fit import _columns, _names, _source, fit


def backtest(df, holdout: int = 1, form: str = "log-linear", alpha: float = 0.05, x: str | None = None,
             y: str | None = None, weights=None) -> pd.DataFrame:
    """One row per held-out observation: capacity, truth, mean, PI, error, covered.

    The law is fitted on every row whose capacity is not among the ``holdout`` largest distinct
    capacities; ``pi_lower`` / ``pi_upper`` are its (1 - alpha) prediction interval for a new
    observation, ``error`` is predicted minus truth and ``rel_error`` that over the truth.
    """
    if not isinstance(holdout, (int, np.integer)) or holdout < 1:
        raise AnalysisError(f"holdout must be a positive number of capacities, got {holdout!r}")
    x, y = _names(df, x, y)
    C, Y, _se, _ids = _columns(df, x, y)
    caps = np.unique(C)
    if len(caps) - holdout < 3:
        left = max(len(caps) - holdout, 0)
        raise AnalysisError(f"{_source(df)}holdout={holdout} leaves {left} distinct "
                            f"capacit{'y' if left == 1 else 'ies'} in {x!r} to fit (of {len(caps)}): "
                            "a backtest needs at least 3 left")
    cut = caps[-holdout]
    train = pd.DataFrame({x: C[C < cut], y: Y[C < cut]})
    res = fit(train, x=x, y=y, form=form, weights=weights)
    test_C, truth = C[C >= cut], Y[C >= cut]
    sf = res.get_prediction(test_C).summary_frame(alpha)
    out = pd.DataFrame({"capacity": test_C, "truth": truth, "mean": sf["mean"].to_numpy(),
                        "pi_lower": sf["obs_ci_lower"].to_numpy(), "pi_upper": sf["obs_ci_upper"].to_numpy()})
    out["error"] = out["mean"] - out["truth"]
    out["rel_error"] = out["error"] / out["truth"].abs()
    out["covered"] = (out["truth"] >= out["pi_lower"]) & (out["truth"] <= out["pi_upper"])
    out.attrs["form"] = res.form
    return out.sort_values("capacity", ignore_index=True)
