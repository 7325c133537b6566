"""The paper's scaling figures: points with error bars, the fitted law with its CI and PI bands, the
controls; the rollout backtest's error against the extrapolation distance; and the hyperparameter law
(``hparam_figure``: the searched trials, each point's optimum, the law of the best learning rate).

Plotting takes results objects and never refits: ``plot_scaling`` draws one panel from a
``FitResults``, ``plot_rollout`` a ``backtest.Rollout``; ``scaling_figures`` saves the panels that
``analysis.panels.fit_panels`` fitted (it fits them only when not given them) as PDF and PNG sized
for one paper column, one combined figure with the panels side by side and a single legend, and,
given a rollout, its figure.

Every panel draws a control with the same marker and colour (``control_styles``: by the control's
place among the table's controls, not among those a panel can draw), and puts a tick at each drawn
control's x. Error bars: a point's measurement error where the table has one (± 2 se of the mean
over its seeds), else the spread of its seeds (± their std); the legend says which.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state, no
display needed) and written atomically (``drorae_io.atomic_path``: a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

if "matplotlib.pyplot" not in sys.modules:  # headless: figures are files; a notebook keeps its backend
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.errors import AnalysisError  # noqa: E402
from analysis.fit import FitResults  # noqa: E402
from analysis.panels import Panel, Panels, fit_panels  # noqa: E402
from analysis.points import seed_stats  # noqa: E402
from analysis.schema import COST_AXES, se_column  # noqa: E402
from drorae_io import atomic_path, make_output_dir  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["Panel", "control_styles", "hparam_figure", "plot_hparam_law", "plot_rollout", "plot_scaling",
           "scaling_figures", "slope_text"]

COLUMN_WIDTH_IN = 3.5        # one column of a two-column paper
PANEL_HEIGHT_IN = 3.0        # the legend sits below the axes, clear of the data
DPI = 300                    # PNG: 1050 px wide at one column
STYLE = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 6.5,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 4,
         "pdf.fonttype": 42}  # TrueType in the PDF: editable, accepted by paper submission systems

LABELS = {"params": "trainable parameters", "fused_layers": "fused layers", "expert_hidden": "expert width",
          "train_flops": "training FLOPs", "train_seconds": "training seconds",
          "rfid": "rFID", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
CONTROL_NAMES = {"rae": "RAE baseline", "decoder_only": "decoder only", "last_layer": "last layer only"}
CONTROL_MARKERS = ("s", "^", "D", "v", "P", "X", "*")
RAE = "rae"                  # the control drawn as a horizontal line (the paper's baseline)
POINTS, FIT = "C0", "C1"     # the colours of the points and of the law; controls take C2, C3, ...
CI_ALPHA, PI_ALPHA = 0.3, 0.12   # the mean's CI band, and the lighter prediction band beside it
# Error bars: measurement error thick and pale, the seeds' spread thin and capped.
BAR_STYLE = {"measurement": {"elinewidth": 2.5, "capsize": 0}, "seeds": {"elinewidth": 0.8, "capsize": 2}}
ROLLOUT_LEGEND_MAX = 8       # more splits than this: a colour bar instead of a legend entry each
MIN_TICK_GAP = 0.1           # decades between two capacities labelled each (closer: the axis's own ticks)


# --- labels ----------------------------------------------------------------------------------


def slope_text(result: FitResults, log_axis: bool = True) -> str:
    """The law's rate in words: ``b = -2.23 per decade`` for log-linear on a log axis.

    "Per decade" is said only where the x axis is logarithmic (a decade is then a fixed width); on a
    linear axis the log-linear slope is given as what it is, per unit of log10 C.
    """
    p = result.params
    if result.form == "log-linear":
        return f"b = {p['b']:.3g} per decade" if log_axis else f"b = {p['b']:.3g} per unit of log10 C"
    if result.form == "linear":
        return f"b = {p['b']:.3g} per unit"
    if result.form == "power":
        return f"exponent b = {p['b']:.3g}"
    if result.form == "saturating":
        return f"α = {p['alpha']:.3g}, E = {p['E']:.3g}"
    return ", ".join(f"{k} = {v:.3g}" for k, v in p.items())


def fit_label(result: FitResults, log_axis: bool = True) -> str:
    """The legend's line for the law: its rate and R², and "not identified" where the fit says so."""
    text = f"{slope_text(result, log_axis)}, R² = {result.rsquared:.2f}"
    return text if getattr(result, "identified", True) else text + " (not identified)"


def _short(v: float) -> str:
    """A compact tick label: 8, 1.5k, 2.4M, 3.1T; 1.2e+16 beyond 1000T (training FLOPs)."""
    if abs(v) >= 1e15:
        return f"{v:.2g}"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


# --- controls --------------------------------------------------------------------------------


def _control_ids(controls_df: pd.DataFrame) -> pd.Series:
    if "point_id" in controls_df.columns:
        return controls_df["point_id"].astype(str)
    return pd.Series([f"control {i}" for i in range(len(controls_df))], index=controls_df.index)


def control_styles(controls_df) -> dict[str, tuple[str, str]]:
    """(marker, colour) per control drawn as a point: by its place among all the table's controls (sorted
    by name; the RAE baseline is a line), so every panel draws a control alike."""
    if controls_df is None or not len(controls_df):
        return {}
    names = sorted(n for n in _control_ids(controls_df).unique() if n != RAE)
    return {n: (CONTROL_MARKERS[i % len(CONTROL_MARKERS)], f"C{i + 2}") for i, n in enumerate(names)}


def _se_of_mean(rows: pd.DataFrame, col: str) -> float:
    """The measurement error of the mean of ``rows[col]``'s runs: sqrt(sum se^2) / k; NaN if one lacks it."""
    if col not in rows.columns:
        return float("nan")
    se = pd.to_numeric(rows[col], errors="coerce").astype(float).to_numpy()
    return float(np.sqrt((se ** 2).sum()) / len(se)) if len(se) and np.isfinite(se).all() else float("nan")


def _spread(values: pd.Series, se: float) -> tuple[float, str]:
    """A mean's error bar: (half-width, kind): ± 2 se ("se") where measured, else ± the std over its
    runs ("std"), else none (NaN, "")."""
    if math.isfinite(se):
        return 2 * se, "se"
    if len(values) > 1:
        return float(values.std(ddof=1)), "std"
    return math.nan, ""


def _controls(controls_df, x: str, y: str) -> list[dict]:
    """The controls to draw: name, label, mean y, its error bar, and x (None for a line across the panel:
    the RAE line, and on a cost axis any control that trained nothing, ``free``; the others only where
    their x is positive)."""
    if controls_df is None or not len(controls_df) or y not in controls_df.columns:
        return []
    se_col, out = se_column(y), []
    for name, rows in controls_df.groupby(_control_ids(controls_df), sort=True):
        val = pd.to_numeric(rows[y], errors="coerce").astype(float)
        val = val[np.isfinite(val)]
        if val.empty:
            continue
        cx = pd.to_numeric(rows.loc[val.index, x], errors="coerce").astype(float) if x in rows.columns \
            else pd.Series(np.nan, index=val.index)
        free = x in COST_AXES and bool((cx == 0).all())   # on a cost axis: a control that trained nothing
        if name == RAE or free:
            half, kind = _spread(val, _se_of_mean(rows.loc[val.index], se_col))
            out.append({"name": name, "x": None, "y": float(val.mean()), "half": half, "kind": kind, "free": free})
            continue
        ok = np.isfinite(cx) & (cx > 0)
        if not ok.any():
            log.info("control %r has no positive %r: not drawn on the %s panel", name, x, x)
            continue
        half, kind = _spread(val[ok], _se_of_mean(rows.loc[ok[ok].index], se_col))
        out.append({"name": name, "x": float(cx[ok].mean()), "y": float(val[ok].mean()), "half": half, "kind": kind})
    return out


# --- one panel -------------------------------------------------------------------------------


def _point_bars(stats_: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each point's error bar: its kind ("measurement": ± 2 se of its mean; "seeds": ± the std over its
    seeds; "none": one run without a measurement error) and half-width."""
    se = stats_["se"].to_numpy(float) if "se" in stats_.columns else np.full(len(stats_), np.nan)
    several = stats_["n"].to_numpy() > 1
    kind = np.where(np.isfinite(se), "measurement", np.where(several, "seeds", "none"))
    half = np.where(kind == "measurement", 2 * se, np.where(kind == "seeds", stats_["std"].to_numpy(float), np.nan))
    return kind, half


def _point_labels(kind: np.ndarray, several: bool) -> dict[str, str]:
    mean = "mean" if several else "run"
    return {"measurement": f"{mean} ± 2 se (measurement)", "seeds": "mean ± std over seeds",
            "none": "run (one seed, no bar)" if (kind != "none").any() else "runs"}


def plot_scaling(ax, points_df, result: FitResults, controls_df=None, x: str = "params", y: str = "rfid",
                 alpha: float = 0.05, label: str | None = None, legend: bool = True, xscale: str | None = None):
    """Draw one scaling panel on ``ax`` from ``result`` (never refitted): points with error bars, the law,
    its CI and PI bands, the controls.

    Points: the mean of each capacity's seeds, drawn per kind of error bar (``_point_bars``): line gid
    ``"points:<kind>"``, bars gid ``"bars:<kind>"``, kind ``measurement`` (± 2 se of the mean, se =
    sqrt(sum se_j^2) / k over its k seeds, where every seed has its ``<y>_se``), ``seeds`` (± the std
    over its seeds) or ``none`` (one run, no se); the legend names each kind drawn. The law (gid
    ``"fit"``), the (1 - alpha) CI of its mean (gid ``"ci"``) and, lighter, the prediction interval of
    a new run (gid ``"pi"``) come from ``result.get_prediction(grid).summary_frame(alpha)`` on a grid
    over the points' range (no bands where the fit says it is not identified). Controls: the RAE
    baseline (point_id ``'rae'``) is a dashed line (gid ``"control:rae"``) with a band (gid
    ``"control:rae:se"`` or ``":std"``); the others are points at their own positive x (gid
    ``"control:<id>"``, bars ``"control:<id>:se"`` or ``":std"``), styled by ``control_styles``, each
    with a tick at its x on a top axis. On a cost axis (``schema.COST_AXES``) a control that trained
    nothing (cost 0) is a line across the panel too (dotted, in its colour; gid ``"control:<id>"``),
    and every such line is labelled "no training cost" on the panel (gid ``"control:<id>:free"``).
    The x axis is logarithmic where every x is positive (``xscale``).
    ``legend=False`` leaves the legend to the caller (one for a combined figure). Returns ``ax``.
    """
    if not isinstance(points_df, pd.DataFrame) and hasattr(points_df, "points"):  # a Table
        points_df = points_df.points
    for col in (x, y):
        if col not in points_df.columns:
            raise AnalysisError(f"plot_scaling: the points have no column {col!r}")
    se_col = se_column(y)
    stats_ = seed_stats(points_df, x, y, se=se_col if se_col in points_df.columns else None)
    caps, means = stats_.index.to_numpy(dtype=float), stats_["mean"].to_numpy(float)
    controls = _controls(controls_df, x, y)
    control_x = [c["x"] for c in controls if c["x"] is not None]
    if xscale is None:
        xscale = "log" if np.all(np.concatenate([caps, control_x]) > 0) else "linear"
    log_axis = xscale == "log"

    kind, half = _point_bars(stats_)
    labels = _point_labels(kind, bool((stats_["n"] > 1).any()))
    for k in ("measurement", "seeds", "none"):
        sel = kind == k
        if not sel.any():
            continue
        style = BAR_STYLE.get(k, {})
        bars = ax.errorbar(caps[sel], means[sel], yerr=half[sel] if style else None, fmt="o", color=POINTS,
                           ecolor=to_rgba(POINTS, 0.45) if k == "measurement" else POINTS, zorder=3,
                           label=labels[k], **style)
        bars.lines[0].set_gid(f"points:{k}")
        if style:
            bars.lines[2][0].set_gid(f"bars:{k}")

    lo, hi = float(caps.min()), float(caps.max())
    grid = np.geomspace(lo, hi, 200) if log_axis and lo > 0 else np.linspace(lo, hi, 200)
    sf = result.get_prediction(grid).summary_frame(alpha)
    ax.plot(grid, sf["mean"].to_numpy(), color=FIT, label=label or fit_label(result, log_axis), zorder=2, gid="fit")
    level = f"{100 * (1 - alpha):g}%"
    if getattr(result, "identified", True):
        bands = (("pi", ("obs_ci_lower", "obs_ci_upper"), PI_ALPHA, "PI (new run)", 0.5),
                 ("ci", ("mean_ci_lower", "mean_ci_upper"), CI_ALPHA, "CI (mean)", 1))
        for gid, (low, high), shade, what, z in bands:
            band = sf[low].to_numpy(float), sf[high].to_numpy(float)
            if np.isfinite(band).all():
                ax.fill_between(grid, *band, color=FIT, alpha=shade, linewidth=0, label=f"{level} {what}",
                                zorder=z, gid=gid)

    styles = control_styles(controls_df)
    for c in controls:
        name, nice = c["name"], CONTROL_NAMES.get(c["name"], c["name"])
        how = {"se": "± 2 se", "std": "± std over seeds"}.get(c["kind"], "")
        if c["x"] is None:  # the RAE baseline, or a control without training cost: a line across the panel
            color, style = ("0.3", "--") if name == RAE else (styles[name][1], ":")
            word = f"{nice} (band: {how})" if how else nice
            ax.axhline(c["y"], color=color, linestyle=style, linewidth=1.0, zorder=2, gid=f"control:{name}",
                       label=word if name == RAE else f"{word}, no training cost")
            if how:
                ax.axhspan(c["y"] - c["half"], c["y"] + c["half"], color=color, alpha=0.12, linewidth=0, zorder=1,
                           gid=f"control:{name}:{c['kind']}")
            if c.get("free"):
                ax.annotate(f"{nice}: no training cost", (0.98, c["y"]), xycoords=("axes fraction", "data"),
                            xytext=(0, 2), textcoords="offset points", ha="right", va="bottom", fontsize=6,
                            color=color, gid=f"control:{name}:free")
            continue
        marker, color = styles[name]
        bars = ax.errorbar(c["x"], c["y"], yerr=c["half"] if how else None, fmt=marker, color=color, capsize=2,
                           label=f"{nice} ({how})" if how else nice, zorder=4)
        bars.lines[0].set_gid(f"control:{name}")
        if how:
            bars.lines[2][0].set_gid(f"control:{name}:{c['kind']}")

    _x_axis(ax, caps, log_axis)
    _control_ticks(ax, [(c["x"], styles[c["name"]][1]) for c in controls if c["x"] is not None])
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    if legend:
        # Below the axes: the RAE line spans the full width, so no corner inside is reliably free.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
                  handlelength=1.6, columnspacing=1.0)
    return ax


def _x_axis(ax, caps: np.ndarray, log_axis: bool) -> None:
    """The x scale and ticks: under two decades (8 capacities or fewer) a tick at each capacity."""
    lo, hi = float(caps.min()), float(caps.max())
    if log_axis:
        ax.set_xscale("log")
    gaps = np.diff(np.log10(caps)) if log_axis and lo > 0 and len(caps) > 1 else np.ones(1)
    if log_axis and hi > lo > 0 and hi / lo < 100 and len(caps) <= 8 and gaps.min() >= MIN_TICK_GAP:
        # Under two decades a log axis gets labels like 3x10^0: label the tried values instead (unless two
        # lie so close that their labels would overlap, as training costs with a large fixed part do).
        ax.set_xticks(caps, [_short(c) for c in caps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _control_ticks(ax, ticks: list[tuple[float, str]]) -> None:
    """A tick at each drawn control's x, on a top axis (gid ``"control_ticks"``) so that its label, in the
    control's colour, never collides with the capacities' below."""
    if not ticks:
        return
    top = ax.secondary_xaxis("top")
    top.set_gid("control_ticks")
    xs = [x for x, _ in ticks]
    top.set_xticks(xs, [_short(x) for x in xs], rotation=40, ha="left", rotation_mode="anchor")
    top.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    for label, (_, color) in zip(top.get_xticklabels(), ticks):
        label.set_color(color)
    top.tick_params(axis="x", which="major", length=3, pad=1)


# --- the paper's panels ------------------------------------------------------------------------


def panel_figure(panel: Panel, controls_df, y: str, alpha: float = 0.05) -> Figure:
    """One panel, one column wide, its legend below the axes."""
    fig = Figure(figsize=(COLUMN_WIDTH_IN, PANEL_HEIGHT_IN), layout="constrained")
    ax = fig.add_subplot()
    plot_scaling(ax, panel.points, panel.result, controls_df, x=panel.x, y=y, alpha=alpha)
    ax.set_title(panel.title)
    return fig


def combined_figure(panels: list[Panel], controls_df, y: str, alpha: float = 0.05) -> Figure:
    """The panels side by side with one legend below them; each panel's law (rate, R²) in its title."""
    fig = Figure(figsize=(COLUMN_WIDTH_IN * len(panels), PANEL_HEIGHT_IN), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        plot_scaling(ax, p.points, p.result, controls_df, x=p.x, y=y, alpha=alpha, label="fitted law", legend=False)
        ax.set_title(f"{p.title}\n{fit_label(p.result, ax.get_xscale() == 'log')}")
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)           # the same entry from several panels: once
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(4, len(handles)),
               frameon=False, handlelength=1.6, columnspacing=1.0)
    return fig


# --- the rollout backtest --------------------------------------------------------------------


def plot_rollout(ax, rollout, legend: bool = True):
    """Draw a ``backtest.Rollout`` on ``ax``: each split's error at each capacity it predicted against the
    decades it reached beyond its largest fitted capacity.

    A point is predicted minus the mean of the runs at that capacity (the split's ``error``); its bar
    is the (1 - alpha) prediction interval shifted the same way, [pi_lower, pi_upper] - truth, so a bar
    that crosses the dashed zero line holds the truth. One colour per split (gid ``"rollout:<k>"`` on
    its points), darker for fewer capacities fitted; a legend entry each up to ``ROLLOUT_LEGEND_MAX``
    splits, a colour bar beyond. Returns ``ax``.
    """
    splits = rollout.splits
    ks = [s.k for s in splits]
    norm = Normalize(min(ks), max(max(ks), min(ks) + 1))
    cmap = matplotlib.colormaps["viridis"]
    for s in splits:
        r = s.rows
        err = r["error"].to_numpy(float)
        lower = r["mean"].to_numpy(float) - r["pi_lower"].to_numpy(float)
        upper = r["pi_upper"].to_numpy(float) - r["mean"].to_numpy(float)
        bars = ax.errorbar(r["decades"].to_numpy(float), err, yerr=[lower, upper], fmt="o", markersize=3,
                           color=cmap(norm(s.k)), capsize=2, elinewidth=0.8, zorder=3,
                           label=f"fitted on {s.k} smallest (≤ {_short(s.fitted_max)})")
        bars.lines[0].set_gid(f"rollout:{s.k}")
    ax.axhline(0.0, color="0.3", linestyle="--", linewidth=0.8, zorder=1, gid="zero")
    ax.set_xlabel("decades beyond the largest fitted capacity")
    ax.set_ylabel(f"predicted − true {LABELS.get(rollout.y, rollout.y)}")
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    level = f"{100 * (1 - rollout.alpha):g}%"
    if legend and len(splits) <= ROLLOUT_LEGEND_MAX:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
                  title=f"bars: the {level} prediction interval, less the truth", title_fontsize=6.5)
    elif legend:
        ax.figure.colorbar(ScalarMappable(norm, cmap), ax=ax, label="capacities fitted (k)")
        ax.set_title(f"bars: the {level} prediction interval, less the truth", fontsize=6.5)
    return ax


def rollout_figure(rollout) -> Figure:
    """The rollout's error against its extrapolation distance, one column wide."""
    fig = Figure(figsize=(COLUMN_WIDTH_IN, PANEL_HEIGHT_IN + 0.4), layout="constrained")
    plot_rollout(fig.add_subplot(), rollout)
    fig.suptitle(f"Rollout backtest ({rollout.form})", fontsize=8)
    return fig


# --- the hyperparameter law ------------------------------------------------------------------


def plot_hparam_law(ax, law, alpha: float | None = None, legend: bool = True):
    """Draw an ``analysis.hparams.HparamLaw`` on ``ax`` (log-log, never refitted): every completed search
    trial's value against its capacity as faint points (gid ``"trials"``), each point's optimum (gid
    ``"optima:vertex"`` with ± 2 se bars in log10, gid ``"bars:vertex"``; ``"optima:best"`` hollow, no
    bar: the best value tried has no se), the law (gid ``"fit"``) and the (1 - alpha) CI of its mean
    (gid ``"ci"``, none with 2 points). Returns ``ax``."""
    alpha = law.alpha if alpha is None else alpha
    tr, pts = law.trials, law.points
    ax.scatter(tr["capacity"], tr["value"], s=6, color="0.55", alpha=0.35, linewidths=0, zorder=1, gid="trials",
               label=f"search trials ({len(tr)})")
    vertex = pts[pts["method"] == "vertex"]
    if len(vertex):
        u, se = np.log10(vertex["optimum"].to_numpy(float)), vertex["optimum_se_log10"].to_numpy(float)
        y = 10 ** u
        bars = ax.errorbar(vertex["capacity"], y, yerr=[y - 10 ** (u - 2 * se), 10 ** (u + 2 * se) - y], fmt="o",
                           color=POINTS, ecolor=to_rgba(POINTS, 0.6), capsize=2, elinewidth=0.9, zorder=3,
                           label="optimum: vertex ± 2 se")
        bars.lines[0].set_gid("optima:vertex")
        bars.lines[2][0].set_gid("bars:vertex")
    best = pts[pts["method"] == "best"]
    if len(best):
        ax.plot(best["capacity"], best["optimum"], "o", markerfacecolor="none", color=POINTS, zorder=3,
                gid="optima:best", label="optimum: best tried (no se)")
    lo, hi = float(pts["capacity"].min()), float(pts["capacity"].max())
    grid = np.geomspace(lo, hi, 200)
    sf = law.get_prediction(grid).summary_frame(alpha)
    ax.plot(grid, sf["mean"], color=FIT, zorder=2, gid="fit",
            label=f"law: {law.param}* ∝ {law.x}^{law.params['b']:.3g}")
    band = sf["mean_ci_lower"].to_numpy(float), sf["mean_ci_upper"].to_numpy(float)
    if np.isfinite(band).all():
        ax.fill_between(grid, *band, color=FIT, alpha=CI_ALPHA, linewidth=0, zorder=1.5, gid="ci",
                        label=f"{100 * (1 - alpha):g}% CI (law)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(LABELS.get(law.x, law.x))
    ax.set_ylabel(law.param)
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    if legend:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, handlelength=1.6,
                  columnspacing=1.0)
    return ax


def hparam_figure(law, alpha: float | None = None) -> Figure:
    """The hyperparameter law, one column wide (``plot_hparam_law``), its equation as the title."""
    fig = Figure(figsize=(COLUMN_WIDTH_IN, PANEL_HEIGHT_IN + 0.3), layout="constrained")
    plot_hparam_law(fig.add_subplot(), law, alpha=alpha)
    fig.suptitle(f"Hyperparameter law: {law.equation}", fontsize=7)
    return fig


def _hparam_law(table, alpha: float):
    """The table's learning-rate law, or None (fewer than 2 searched points, or it cannot be fitted: said in
    a log line; the other figures are drawn regardless)."""
    from analysis.hparams import law_from_table

    try:
        return law_from_table(table, alpha=alpha)
    except AnalysisError as exc:
        log.warning("no hyperparameter figure: %s", exc)
        return None


# --- files -----------------------------------------------------------------------------------


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


def scaling_figures(table, out_dir, alpha: float = 0.05, form: str = "log-linear", panels: Panels | None = None,
                    rollout=None, what: str | None = None, hparam_law=None) -> list[Path]:
    """Save the paper's panels as PDF and PNG (one column wide) plus a combined figure, and the rollout's.

    ``table`` is an ``analysis.Table`` (from ``load``); ``panels`` its ``fit_panels`` (fitted here,
    with ``form``, only when not given). Files: ``capacity_scaling``, ``layer_scaling`` (only with >= 3
    distinct fused_layers), ``unified_scaling``, ``cost_scaling`` (the metric against train_flops, only
    where the table has it), ``scaling_panels`` (all panels side by side), given a ``backtest.Rollout``,
    ``rollout_error``, and where the table's trials searched the learning rate at 2 or more points,
    ``hparam_scaling`` (``hparam_figure``; ``hparam_law``: the law when already fitted, False for none,
    None to fit it here: one that cannot be is a log line, never an error); each ``.pdf`` and ``.png``.
    Returns the paths.
    ``out_dir`` is made if missing; one that cannot hold files (``drorae_io.make_output_dir``) is a
    one-line error naming ``what`` (the option that gave it) and the path.
    """
    out_dir = Path(out_dir)
    if panels is None:
        panels = fit_panels(table, form=form)
    if not panels.panels:  # one error, before anything is written (the reasons are the panels' own)
        source = f"{table.source}: " if getattr(table, "source", None) else ""
        reason = panels.skipped[0][1].split(": ", 1)[-1] if panels.skipped else f"no rows to fit in {table.x!r}"
        raise AnalysisError(f"{source}no figure could be made: {reason}")
    for level, message in panels.skipped:
        log.log(level, message)
    make_output_dir(out_dir, what)
    written: list[Path] = []
    with matplotlib.rc_context(STYLE):
        for p in panels.panels:
            written += _save_both(panel_figure(p, table.controls, table.y, alpha), out_dir / p.name)
        written += _save_both(combined_figure(panels.panels, table.controls, table.y, alpha),
                              out_dir / "scaling_panels")
        if rollout is not None and rollout.splits:
            written += _save_both(rollout_figure(rollout), out_dir / "rollout_error")
        law = _hparam_law(table, alpha) if hparam_law is None else hparam_law
        if law:
            written += _save_both(hparam_figure(law, alpha), out_dir / "hparam_scaling")
    log.info("wrote %d figure files to %s", len(written), out_dir)
    return written
