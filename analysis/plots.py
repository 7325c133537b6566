"""The paper's scaling figures: points with seed and measurement error bars, the fitted law, its CI band,
the controls.

Plotting takes a ``FitResults`` and never refits: ``plot_scaling`` draws one panel on an Axes;
``scaling_figures`` fits and saves the three panels of the paper (expert-capacity scaling,
layer-count scaling, unified law over trainable parameters) as PDF and PNG sized for one paper
column, plus one combined figure with the panels side by side.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state, no
display needed) and written atomically (``drorae_io.atomic_path``: a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

if "matplotlib.pyplot" not in sys.modules:  # headless: figures are files; a notebook keeps its backend
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.errors import AnalysisError  # noqa: E402
from analysis.fit import FitResults, fit  # noqa: E402
from analysis.points import seed_stats  # noqa: E402
from analysis.schema import se_column  # noqa: E402
from drorae_io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

COLUMN_WIDTH_IN = 3.5        # one column of a two-column paper
PANEL_HEIGHT_IN = 3.0        # the legend sits below the axes, clear of the data
DPI = 300                    # PNG: 1050 px wide at one column
STYLE = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 6.5,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 4,
         "pdf.fonttype": 42}  # TrueType in the PDF: editable, accepted by paper submission systems

LABELS = {"params": "trainable parameters", "fused_layers": "fused layers", "expert_hidden": "expert width",
          "rfid": "rFID", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
CONTROL_NAMES = {"rae": "RAE baseline", "decoder_only": "decoder only", "last_layer": "last layer only"}
CONTROL_MARKERS = ("s", "^", "D", "v", "P", "X", "*")
RAE = "rae"                  # the control drawn as a horizontal line (the paper's baseline)
# The measurement error bars: ±2 se, thick and pale under the seeds' thin capped ±std bars.
MEASUREMENT_STYLE = {"fmt": "none", "elinewidth": 3.0, "alpha": 0.4, "capsize": 0}


def slope_text(result: FitResults) -> str:
    """The law's rate in words: ``b = -2.23 per decade`` for log-linear."""
    p = result.params
    if result.form == "log-linear":
        return f"b = {p['b']:.3g} per decade"
    if result.form == "linear":
        return f"b = {p['b']:.3g} per unit"
    if result.form == "power":
        return f"exponent b = {p['b']:.3g}"
    if result.form == "saturating":
        return f"α = {p['alpha']:.3g}, E = {p['E']:.3g}"
    return ", ".join(f"{k} = {v:.3g}" for k, v in p.items())


def fit_label(result: FitResults) -> str:
    return f"{slope_text(result)}, R² = {result.rsquared:.2f}"


def _short(v: float) -> str:
    """A compact tick label: 8, 1.5k, 2.4M."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _measurement_bars(ax, cx, cy, se, color, gid: str, label: str | None = None):
    """±2 se bars (``MEASUREMENT_STYLE``) at the points whose se is finite; nothing where none is."""
    cx, cy, se = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (cx, cy, se))
    ok = np.isfinite(se)
    if not ok.any():
        return
    bars = ax.errorbar(cx[ok], cy[ok], yerr=2 * se[ok], ecolor=color, zorder=2.5, label=label,
                       **MEASUREMENT_STYLE)
    bars.lines[2][0].set_gid(gid)


def _se_of_mean(rows: pd.DataFrame, col: str) -> float:
    """The measurement error of the mean of ``rows[col]``'s runs: sqrt(sum se^2) / k; NaN if one lacks it."""
    if col not in rows.columns:
        return float("nan")
    se = pd.to_numeric(rows[col], errors="coerce").astype(float).to_numpy()
    return float(np.sqrt((se ** 2).sum()) / len(se)) if len(se) and np.isfinite(se).all() else float("nan")


def plot_scaling(ax, points_df, result: FitResults, controls_df=None, x: str = "params", y: str = "rfid",
                 alpha: float = 0.05, label: str | None = None):
    """Draw one scaling panel on ``ax``: points ± seed std and ± 2 se, the fit line, its CI band, the controls.

    Each point is the mean of its seeds: its thin capped bar (gid ``"points"``) is ± the std over
    the seeds (a single run's spread); where the rows carry y's measurement error (``<y>_se``) a
    thick pale bar (gid ``"measurement"``) is ± 2 se of the plotted mean, se = sqrt(sum se_j^2) / k
    over its k seeds (the run's own se for one seed). The std already holds the measurement error
    of each seed: the two bars are drawn side by side, never added, and the legend names both.
    The fit line (gid ``"fit"``) and the (1 - alpha) mean CI band (gid ``"ci"``) come from
    ``result.get_prediction(grid).summary_frame(alpha)`` on a log-spaced grid over the points'
    range. The RAE control (point_id ``'rae'``) is a dashed horizontal line (gid ``"control:rae"``);
    the other controls are distinct markers at their own x (gid ``"control:<point_id>"``) when it
    is positive; with a measurement error, the RAE line gets a ± 2 se band (gid ``"control:rae:se"``) and
    the others a ± 2 se bar (gid ``"control:<point_id>:se"``). Controls are only drawn, never fitted.
    Returns ``ax``.
    """
    if not isinstance(points_df, pd.DataFrame) and hasattr(points_df, "points"):  # a Table
        points_df = points_df.points
    for col in (x, y):
        if col not in points_df.columns:
            raise AnalysisError(f"plot_scaling: the points have no column {col!r}")
    se_col = se_column(y)
    stats_ = seed_stats(points_df, x, y, se=se_col if se_col in points_df.columns else None)
    caps = stats_.index.to_numpy(dtype=float)
    several = bool((stats_["n"] > 1).any())
    bars = ax.errorbar(caps, stats_["mean"].to_numpy(), yerr=stats_["std"].to_numpy(), fmt="o", color="C0",
                       ecolor="C0", capsize=2, elinewidth=0.8, zorder=3,
                       label="trials (mean ± std over seeds)" if several else "trials")
    bars.lines[0].set_gid("points")
    if "se" in stats_.columns:
        _measurement_bars(ax, caps, stats_["mean"], stats_["se"], "C0", "measurement",
                          label="± 2 se of mean (measurement)" if several else "± 2 se (measurement)")

    lo, hi = float(caps.min()), float(caps.max())
    grid = np.geomspace(lo, hi, 200) if lo > 0 else np.linspace(lo, hi, 200)
    sf = result.get_prediction(grid).summary_frame(alpha)
    ax.plot(grid, sf["mean"].to_numpy(), color="C1", label=label or fit_label(result), zorder=2, gid="fit")
    ax.fill_between(grid, sf["mean_ci_lower"].to_numpy(), sf["mean_ci_upper"].to_numpy(), color="C1",
                    alpha=0.25, linewidth=0, label=f"{100 * (1 - alpha):g}% CI", zorder=1, gid="ci")

    if controls_df is not None and len(controls_df) and y in controls_df.columns:
        pid = controls_df["point_id"].astype(str) if "point_id" in controls_df.columns else \
            pd.Series([f"control {i}" for i in range(len(controls_df))], index=controls_df.index)
        k = 0
        for name, rows in controls_df.groupby(pid, sort=True):
            val = pd.to_numeric(rows[y], errors="coerce").astype(float)
            val = val[np.isfinite(val)]
            if val.empty:
                continue
            nice = CONTROL_NAMES.get(name, name)
            if name == RAE:
                se = _se_of_mean(rows.loc[val.index], se_col)
                mean = float(val.mean())
                ax.axhline(mean, color="0.3", linestyle="--", linewidth=1.0, zorder=2, gid=f"control:{name}",
                           label=f"{nice} (band: ± 2 se)" if np.isfinite(se) else nice)
                if np.isfinite(se):
                    ax.axhspan(mean - 2 * se, mean + 2 * se, color="0.3", alpha=0.12, linewidth=0, zorder=1,
                               gid=f"control:{name}:se")
                continue
            cx = pd.to_numeric(rows.loc[val.index, x], errors="coerce").astype(float) if x in rows.columns \
                else pd.Series(np.nan, index=val.index)
            ok = np.isfinite(cx) & (cx > 0)
            if not ok.any():
                log.info("control %r has no positive %r: not drawn on the %s panel", name, x, x)
                continue
            bars = ax.errorbar(cx[ok].mean(), val[ok].mean(), yerr=val[ok].std(ddof=1) if ok.sum() > 1 else None,
                               fmt=CONTROL_MARKERS[k % len(CONTROL_MARKERS)], color=f"C{k + 2}", capsize=2,
                               label=nice, zorder=4)
            bars.lines[0].set_gid(f"control:{name}")
            _measurement_bars(ax, cx[ok].mean(), val[ok].mean(), _se_of_mean(rows.loc[ok[ok].index], se_col),
                              f"C{k + 2}", f"control:{name}:se")
            k += 1

    ax.set_xscale("log")
    if hi > lo > 0 and hi / lo < 100 and len(caps) <= 8:
        # Under two decades a log axis gets labels like 3x10^0: label the tried values instead.
        ax.set_xticks(caps, [_short(c) for c in caps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    # Below the axes: the RAE line spans the full width, so no corner inside is reliably free.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
              handlelength=1.6, columnspacing=1.0)
    return ax


# --- the paper's panels ------------------------------------------------------------------------


@dataclass
class Panel:
    """One of the paper's panels: its rows, x, the fit (already made) and a title."""

    name: str
    title: str
    points: pd.DataFrame
    x: str
    result: FitResults


def _common(values: pd.Series):
    counts = values.value_counts()
    return counts.index[counts.to_numpy() == counts.max()].max()  # ties: the largest


def scaling_panels(table, form: str = "log-linear", skipped: list | None = None) -> list[Panel]:
    """Fit the paper's three panels that this table allows.

    A skipped panel is logged with its reason, or, when ``skipped`` is a list, appended to it as
    ``(logging level, message)`` for the caller to report.
    """
    pts, y = table.points, table.y
    panels: list[Panel] = []
    has_layers = "fused_layers" in pts.columns

    def skip(level, message, *args):
        if skipped is None:
            log.log(level, message, *args)
        else:
            skipped.append((level, message % args))

    def add(name, title, rows, x):
        try:
            res = fit(rows, x=x, y=y, form=form)
        except AnalysisError as exc:
            skip(logging.WARNING, "figure %s skipped: %s", name, exc)
            return
        panels.append(Panel(name, title, rows.reset_index(drop=True), x, res))

    # (1) expert-capacity scaling at the most common layer count
    if has_layers and len(pts):
        k = _common(pts["fused_layers"])
        add("capacity_scaling", f"Expert capacity ({k:g} fused layers)", pts[pts["fused_layers"] == k],
            table.x)
    else:
        add("capacity_scaling", "Expert capacity", pts, table.x)

    # (2) layer-count scaling at one expert width
    n_layers = pts["fused_layers"].nunique() if has_layers else 0
    if n_layers < 3:
        skip(logging.INFO, "figure layer_scaling skipped: the table has %d distinct fused_layers value(s), "
             "a layer-count law needs at least 3", n_layers)
    else:
        rows = pts
        if "expert_hidden" in pts.columns:
            spread = pts.groupby("expert_hidden")["fused_layers"].nunique()
            width = spread.index[spread.to_numpy() == spread.max()].max()
            rows = pts[pts["expert_hidden"] == width]
            title = f"Layer count (expert width {width:g})"
        else:
            title = "Layer count"
        add("layer_scaling", title, rows, "fused_layers")

    # (3) the unified law over trainable parameters: every grid row
    add("unified_scaling", "Unified law (all grid runs)", pts, table.x)
    return panels


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (a temporary file in the same folder, then os.replace)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=DPI)


def _save_both(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.pdf and ``stem``.png; the layout solved for the first is kept for the second."""
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    _save(fig, paths[0])
    fig.set_layout_engine("none")  # constrained layout is half the drawing time: solve it once
    _save(fig, paths[1])
    return paths


def scaling_figures(table, out_dir, alpha: float = 0.05, form: str = "log-linear") -> list[Path]:
    """Fit and save the paper's panels as PDF and PNG (one column wide) plus a combined figure.

    ``table`` is an ``analysis.Table`` (from ``load``). Files: ``capacity_scaling``,
    ``layer_scaling`` (only with >= 3 distinct fused_layers), ``unified_scaling`` and
    ``scaling_panels`` (all panels side by side), each ``.pdf`` and ``.png``. Returns the paths.
    """
    out_dir = Path(out_dir)
    skipped: list = []
    panels = scaling_panels(table, form=form, skipped=skipped)
    if not panels:  # one error, before anything is written (the reasons are the panels' own)
        source = f"{table.source}: " if getattr(table, "source", None) else ""
        reason = skipped[0][1].split(": ", 1)[-1] if skipped else f"no rows to fit in {table.x!r}"
        raise AnalysisError(f"{source}no figure could be made: {reason}")
    for level, message in skipped:
        log.log(level, message)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.rc_context(STYLE):
        for p in panels:
            fig = Figure(figsize=(COLUMN_WIDTH_IN, PANEL_HEIGHT_IN), layout="constrained")
            ax = fig.add_subplot()
            plot_scaling(ax, p.points, p.result, table.controls, x=p.x, y=table.y, alpha=alpha)
            ax.set_title(p.title)
            written += _save_both(fig, out_dir / p.name)
        fig = Figure(figsize=(COLUMN_WIDTH_IN * len(panels), PANEL_HEIGHT_IN), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, p in zip(axes, panels):
            plot_scaling(ax, p.points, p.result, table.controls, x=p.x, y=table.y, alpha=alpha)
            ax.set_title(p.title)
        written += _save_both(fig, out_dir / "scaling_panels")
    log.info("wrote %d figure files to %s", len(written), out_dir)
    return written
