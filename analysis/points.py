"""Each point of a sweep with its metric and an interval: the spread of its seeds, or the law's CI.

A point (a grid point: one capacity, several seeds) has one row per seed in ``Table.points``.
``seed_stats`` is the mean and standard deviation over seeds per capacity, and the measurement
error of that mean where the rows carry one (the figures' error bars); ``point_intervals`` gives
each point a (1 - alpha) interval and says which: with two seeds or more, the t-interval of their
mean; with one, the fitted law's interval of its mean at that capacity (``FitResults.get_prediction``;
none without a law).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import FitResults

SEEDS, LAW = "seeds", "law"  # where an interval comes from


def seed_stats(points: pd.DataFrame, x: str, y: str, se: str | None = None) -> pd.DataFrame:
    """Mean and std (ddof 1; 0 for a single seed) of y per capacity x, and their number ``n``.

    With ``se`` (the column of y's measurement error, e.g. ``rfid_se``) also ``se``: the measurement
    error of the mean of the k seeds, sqrt(sum of se_j^2) / k (the seeds' errors taken as independent);
    NaN where a seed lacks a finite se.
    """
    g = points.groupby(x)[y]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()})
    if se is not None:
        var = pd.to_numeric(points[se], errors="coerce").astype(float) ** 2
        total = var.groupby(points[x]).sum(min_count=1).where(var.notna().groupby(points[x]).all())
        out["se"] = np.sqrt(total) / out["n"]
    return out.sort_index()


def point_intervals(table, result: FitResults | None = None, alpha: float = 0.05,
                    by: str = "point_id") -> pd.DataFrame:
    """One row per point of ``table`` (an ``analysis.Table``): its capacity, the mean of y over its seeds,
    their number ``n`` and a (1 - alpha) interval [``lower``, ``upper``] from ``source``.

    ``source`` is ``"seeds"`` (2+ seeds: mean ± t(1 - alpha/2, n - 1) sd / sqrt(n)), ``"law"`` (one
    seed: ``result``'s interval of the mean at the point's capacity) or ``""`` (one seed and no law:
    no interval). Points are the ``by`` column's values (the capacity where there is no such column),
    in the order of their capacity.
    """
    x, y, pts = table.x, table.y, table.points
    key = by if by in pts.columns else x
    g = pts.groupby(key, sort=False)
    out = pd.DataFrame({"mean": g[y].mean(), "sd": g[y].std(ddof=1), "n": g.size()})
    if key != x:
        out.insert(0, x, g[x].first())
    out = out.rename_axis(key).reset_index().sort_values(x, kind="stable", ignore_index=True)
    several = out["n"] > 1
    half = stats.t.ppf(1 - alpha / 2, np.maximum(out["n"] - 1, 1)) * out["sd"] / np.sqrt(out["n"])
    out["lower"], out["upper"] = (out["mean"] - half).where(several), (out["mean"] + half).where(several)
    out["source"] = np.where(several, SEEDS, "")
    single = ~several
    if result is not None and single.any():
        frame = result.get_prediction(out.loc[single, x].to_numpy(float)).summary_frame(alpha)
        out.loc[single, "lower"] = frame["mean_ci_lower"].to_numpy()
        out.loc[single, "upper"] = frame["mean_ci_upper"].to_numpy()
        out.loc[single, "source"] = LAW
    return out.drop(columns="sd")
