"""``drorae sweep SPEC --adaptive N``: N more points beyond the spec's grid, each chosen when it starts.

The choice is ``analysis.design``'s: the expected width of the tool's own interval at the spec's
target capacity after the trial (criterion ``tool``: the c-optimal variance of the law's mean with
the Bell-McCaffrey df and noise-model uncertainty the design will have), per expected second of the
cost model fitted to the table's measured seconds (bench/results.md: over 200 simulated sweeps it
needed 1.43x fewer trials than uniform log spacing on the mean, at about the same cost), among new widths
(geometric midpoints of the trained ones, and two steps beyond the largest, never beyond the
target) and one more seed at a trained width. The live law
(``sweeper.live``) supplies the fit; the trials already running, or chosen and not yet measured, are
in the design as pending, so two trials running at once are not chosen alike.

An adaptive point is a grid unit like the plan's (``Plan.grid_unit``: its own trial id, row,
MLflow run and, with a search block, its own Optuna study) at the layer count of the law's points.
``N`` is how many adaptive points the sweep has in all: rerunning the same command resumes them,
a larger N adds the difference.
"""

from __future__ import annotations

import logging

import pandas as pd

from .live import LiveLaw

log = logging.getLogger(__name__)


class AdaptiveChooser:
    """``chooser(pending, units)``: the next adaptive grid unit, or None while the law cannot choose.

    ``pending``: the units whose trials run or wait (their capacity is in the design without a y);
    ``units``: every unit of the sweep so far (a chosen width or seed is never one of them).
    """

    def __init__(self, plan, law: LiveLaw, per: str = "cost", criterion: str = "tool"):
        self.plan, self.law, self.per, self.criterion = plan, law, per, criterion
        self.interval = plan.spec.stop.interval if plan.spec.stop else "pi"
        self.why_not: str | None = None  # why the last call chose nothing

    def __call__(self, pending, units) -> object | None:
        from analysis import AnalysisError
        from analysis.design import rank

        law = self.law
        law()  # the table as it is now
        if law.result is None:
            self.why_not = "the law is not fitted yet (" + str(law.state.get("waiting_for", "too few points")) + ")"
            return None
        rows = _rows(law.sweep_dir)
        layers = self._layers(law.points)
        try:
            per = self.per if _has_seconds(rows) else "trial"
            ranking = rank(law.result, law.points, law.target, rows=rows, per=per, interval=self.interval,
                           alpha=law.law.alpha, criterion=self.criterion,
                           pending=[u.params for u in pending if u.kind == "grid"])
        except AnalysisError as err:
            self.why_not = str(err)
            return None
        taken = {u.unit_id for u in units}
        for cand in ranking.table.itertuples():
            unit = self._unit(cand, layers, units, taken)
            if unit is not None:
                what = "a new width" if cand.kind == "new" else "one more seed"
                log.info("adaptive: next %s (%s, %s params, ~%.0f s): the expected %s width at %g goes from %.4g to "
                         "%.4g (%s; the fit's own %s is %.4g wide now)", unit.unit_id, what, f"{unit.params:,}",
                         cand.seconds, ranking.interval.upper(), law.target, cand.width_now, cand.width_after,
                         f"ranked per {ranking.per}", ranking.interval.upper(),
                         ranking.actual[f"{ranking.interval}_width"])
                self.why_not = None
                return unit
        self.why_not = "no candidate width or seed is left"
        return None

    def _layers(self, points: pd.DataFrame) -> int:
        """The layer count of the adaptive points: the law's points' most common one."""
        if "fused_layers" in points.columns and points["fused_layers"].notna().any():
            counts = points["fused_layers"].value_counts()
            return int(counts.index[counts.to_numpy() == counts.max()].max())
        return int((self.plan.spec.grid.fused_layers or [self.plan.depth])[0])

    def _unit(self, cand, layers: int, units, taken: set):
        plan = self.plan
        width = getattr(cand, "width", None)
        if width is None or pd.isna(width):
            width = self._width_of(cand.capacity, layers)
        width = int(width)
        if width < 1:
            return None
        point = f"h{width}-k{layers}"
        if cand.kind == "new":
            seed = plan.spec.grid.seeds[0]
            unit = plan.grid_unit(width, layers, seed)
            return None if unit.unit_id in taken or any(u.point_id == point for u in units) else unit
        seeds = [u.seed for u in units if u.point_id == point]
        if not seeds:
            return None
        unit = plan.grid_unit(width, layers, max(seeds) + 1)
        return None if unit.unit_id in taken else unit

    def _width_of(self, capacity: float, layers: int) -> int:
        """The integer width whose fusion has the parameter count nearest ``capacity`` (linear in the width)."""
        p1, p2 = self.plan.grid_unit(1, layers, 0).params, self.plan.grid_unit(2, layers, 0).params
        return max(1, round((capacity - p1) / (p2 - p1)) + 1)


def _rows(sweep_dir) -> pd.DataFrame:
    """Every row of the sweep's table (a searched unit's trials all count for its cost)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = sweep_dir / "trials.parquet"
    return pq.read_table(pa.BufferReader(path.read_bytes())).to_pandas() if path.exists() else pd.DataFrame()


def _has_seconds(rows: pd.DataFrame) -> bool:
    done = rows[rows.get("status", pd.Series(dtype=str)) == "completed"] if len(rows) else rows
    return any(c in done.columns and pd.to_numeric(done[c], errors="coerce").notna().any()
               for c in ("train_seconds", "eval_seconds"))
