"""The paper's panels of a sweep, each with its law fitted once: what the report, the figures and the
end of a sweep share.

A panel is a set of grid rows and a capacity column: expert-capacity scaling (the most common layer
count, over ``table.x``), layer-count scaling (one expert width, over ``fused_layers``), the
unified law (every grid row, over ``table.x``) and the metric against training cost (every grid row,
over ``train_flops``: the model FLOPs of each run's training; skipped with one logged line for a
table without them, or whose capacity axis is that column already). ``fit_panels`` fits one ``FitResults`` per
(panel, form), reusing it where two panels hold the same rows over the same column (a table with one
layer count: the capacity panel is the unified one). Its ``law`` (the unified panel's) is the law the
report prints and the sweep ends with; plotting and the report's sections only read these results.
No matplotlib here: a report without figures never imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from analysis.errors import AnalysisError
from analysis.fit import FitResults, fit
from analysis.schema import COST_AXES

log = logging.getLogger(__name__)

UNIFIED = "unified_scaling"      # the panel of every grid row: its fit is the sweep's law
COST = "cost_scaling"            # every grid row against its training cost
COST_X = COST_AXES[0]            # train_flops: the cost panel's axis


@dataclass
class Panel:
    """One of the paper's panels: its rows, x, the fit (already made) and a title."""

    name: str
    title: str
    points: pd.DataFrame
    x: str
    result: FitResults


@dataclass
class Panels:
    """The panels a table allows, in the paper's order, and why the others were skipped.

    ``skipped``: (logging level, message) per panel left out; ``errors``: the fit's error message per
    panel name whose law could not be fitted.
    """

    panels: list[Panel]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    form: str = "log-linear"

    @property
    def law(self) -> FitResults | None:
        """The unified law (every grid row over the table's capacity column); None where it could not be fitted."""
        return next((p.result for p in self.panels if p.name == UNIFIED), None)

    @property
    def law_error(self) -> str | None:
        """Why the unified law could not be fitted (None when it was)."""
        return self.errors.get(UNIFIED)


def _common(values: pd.Series):
    counts = values.value_counts()
    return counts.index[counts.to_numpy() == counts.max()].max()  # ties: the largest


def fit_panels(table, form: str = "log-linear") -> Panels:
    """Fit the paper's panels that ``table`` (an ``analysis.Table``) allows, each law once.

    The unified law is fitted first; with ``form="auto"`` the form it picks is used for the other
    panels too, so every panel draws the same kind of law. A panel whose law cannot be fitted is
    skipped, its reason kept in ``skipped`` (and in ``errors``) for the caller to report.
    """
    pts, y = table.points, table.y
    made: list[tuple[str, pd.Index, FitResults | AnalysisError]] = []
    out = Panels([], form=form)

    def law_of(rows: pd.DataFrame, x: str, panel_form: str) -> FitResults:
        # the same rows over the same column: the same law, not refitted
        res = next((r for made_x, index, r in made if made_x == x and index.equals(rows.index)), None)
        if res is None:
            try:
                res = fit(rows, x=x, y=y, form=panel_form)
            except AnalysisError as exc:
                res = exc
            made.append((x, rows.index, res))
        if isinstance(res, AnalysisError):
            raise res
        return res

    def add(name: str, title: str, rows: pd.DataFrame, x: str, panel_form: str) -> Panel | None:
        try:
            res = law_of(rows, x, panel_form)
        except AnalysisError as exc:
            out.errors[name] = str(exc)
            out.skipped.append((logging.WARNING, f"figure {name} skipped: {exc}"))
            return None
        return Panel(name, title, rows.reset_index(drop=True), x, res)

    unified = add(UNIFIED, "Unified law (all grid runs)", pts, table.x, form)
    others = form if unified is None else unified.result.form
    panels: list[Panel | None] = []
    has_layers = "fused_layers" in pts.columns

    # (1) expert-capacity scaling at the most common layer count
    if has_layers and len(pts):
        k = _common(pts["fused_layers"])
        panels.append(add("capacity_scaling", f"Expert capacity ({k:g} fused layers)",
                          pts[pts["fused_layers"] == k], table.x, others))
    else:
        panels.append(add("capacity_scaling", "Expert capacity", pts, table.x, others))

    # (2) layer-count scaling at one expert width
    n_layers = pts["fused_layers"].nunique() if has_layers else 0
    if n_layers < 3:
        out.skipped.append((logging.INFO, f"figure layer_scaling skipped: the table has {n_layers} distinct "
                                          "fused_layers value(s), a layer-count law needs at least 3"))
    else:
        rows, title = pts, "Layer count"
        if "expert_hidden" in pts.columns:
            spread = pts.groupby("expert_hidden")["fused_layers"].nunique()
            width = spread.index[spread.to_numpy() == spread.max()].max()
            rows, title = pts[pts["expert_hidden"] == width], f"Layer count (expert width {width:g})"
        panels.append(add("layer_scaling", title, rows, "fused_layers", others))

    # (3) the unified law over trainable parameters: every grid row
    panels.append(unified)

    # (4) the metric against training cost: every grid row at its train_flops
    if table.x == COST_X:
        out.skipped.append((logging.INFO, f"figure {COST} skipped: the capacity axis is {COST_X} already "
                                          f"(the {UNIFIED} panel)"))
    elif COST_X not in pts.columns or not pd.to_numeric(pts[COST_X], errors="coerce").notna().any():
        out.skipped.append((logging.INFO, f"figure {COST} skipped: the table has no {COST_X} (a sweep written "
                                          "before training costs were recorded)"))
    else:
        panels.append(add(COST, "Training cost (all grid runs)", pts, COST_X, others))
    out.panels = [p for p in panels if p is not None]
    return out
