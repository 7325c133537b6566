"""One Markdown report per sweep: the results table, the fitted law, predictions, backtest, figures.

    from analysis import load
    from analysis.report import write_report
    write_report(load("results/default"), "results/default/report.md", figures_dir="results/default/figures")

The report is written atomically (``drorae_io.atomic_path``: a temporary file in the same folder, then
``os.replace``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from analysis.backtest import backtest
from analysis.errors import AnalysisError
from analysis.fit import FitResults, fit
from analysis.schema import se_column
from drorae_io import atomic_path

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("params", "rfid", "psnr", "ssim", "lpips", "status")
DEFAULT_MULTIPLES = (10, 100)        # untried capacities: 10x and 100x the largest trained one
BOOTSTRAP_B = 10_000


# --- formatting ------------------------------------------------------------------------------


def _num(v) -> str:
    """A cell: integers with thousands separators, floats to 4 significant digits, '' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return str(v)
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return out


def _interval(lo, hi) -> str:
    return f"[{_num(lo)}, {_num(hi)}]"


# --- sections --------------------------------------------------------------------------------


def _results_section(table) -> list[str]:
    lines = ["## Results", ""]
    for title, df, id_col in (("Grid trials (fitted)", table.points, "trial_id"),
                              ("Controls (never fitted)", table.controls, "point_id")):
        lines += [f"### {title}", ""]
        if df is None or not len(df):
            lines += ["None.", ""]
            continue
        ids = [c for c in (id_col, "trial_id" if id_col == "point_id" else "point_id") if c in df.columns]
        cols = ids + [c for c in dict.fromkeys((table.x, table.y, se_column(table.y)) + TABLE_COLUMNS)
                      if c in df.columns]
        df = df.sort_values([c for c in (table.x, "trial_id") if c in df.columns], kind="stable") \
            if table.x in df.columns else df
        lines += _md_table(cols, df[cols].values.tolist()) + [""]
    return lines


def _fit_section(res: FitResults, alpha: float) -> list[str]:
    level = f"{100 * (1 - alpha):g}%"
    analytic = res.conf_int(alpha)
    try:
        bootstrap = res.conf_int(alpha, method="bootstrap", B=BOOTSTRAP_B)
    except AnalysisError as exc:
        log.info("bootstrap intervals not in the report: %s", exc)
        bootstrap = None
    lines = ["## Fitted law", "",
             f"Form `{res.form}`: {res.law.equation}, with C = `{res.x}` and y = `{res.y}`.", ""]
    if res.form == "log-linear":
        lines += [f"Slope b = {res.params['b']:.4g} {res.y} per decade of {res.x} "
                  f"({level} CI {_interval(*analytic.loc['b'])}).", ""]
    header = ["param", "estimate", "std err", f"{level} CI (analytic)", f"{level} CI (bootstrap)"]
    rows = [[k, res.params[k], res.bse[k], _interval(*analytic.loc[k]),
             _interval(*bootstrap.loc[k]) if bootstrap is not None else "n/a"] for k in res.params.index]
    lines += _md_table(header, rows) + [""]
    space = " (on ln y)" if res.law.log_y else ""
    lines += [f"- n = {res.nobs} observations at {len(np.unique(res.C))} distinct capacities",
              f"- R²{space} = {res.rsquared:.4f}, adjusted R² = {res.rsquared_adj:.4f}",
              f"- AIC = {res.aic:.4g}, BIC = {res.bic:.4g}"]
    lof = res.lack_of_fit()
    if lof is None:
        lines.append("- Lack of fit: not testable (no replicate seeds)")
    else:
        lines.append(f"- Lack of fit: F({lof.df_num}, {lof.df_den}) = {lof.F:.4g}, p = {lof.pvalue:.4g}")
    if res.auto_scores is not None:
        lines.append("- Form chosen by leave-one-capacity-out RMSE: " +
                     ", ".join(f"{k} {v:.4g}" for k, v in res.auto_scores.items()))
    return lines + [""] + _measurement_section(res)


def _measurement_section(res: FitResults) -> list[str]:
    """How much of the residual scatter the runs' measurement error accounts for (nothing without ``<y>_se``)."""
    lines = res.measurement_error_lines()
    if not lines:
        return []
    head = ["### Measurement error", ""]
    me = res.measurement_error()
    if me is None:
        return head + [lines[0] + ".", ""]
    space = (f" on ln {res.y}, with se(ln y) = se(y) / y (the delta method)" if me.space == "ln y" else "")
    verdict = ("the runs scatter more than their measurement error: the law misfits, or runs vary beyond their "
               "evaluation error (e.g. from seed to seed)" if me.pvalue < 0.05 else
               "no evidence of scatter beyond measurement error")
    share = (f"measurement error accounts for about {me.variance_ratio:.0%} of the residual scatter"
             if me.variance_ratio <= 1 else "measurement error alone would scatter the runs as much or more")
    out = head + [f"Each run's `{me.se_column}` is its measurement error (the standard error over the evaluation "
                  f"images){space}. Measurement error alone would give a residual variance of "
                  f"{me.measurement_var:.4g}; the fit's is {me.residual_var:.4g}: a ratio of "
                  f"{me.variance_ratio:.3g}, i.e. {share}.", "",
                  f"- chi2({me.dof}) = {me.chi2:.4g} (the law refitted with weights 1/se²), p = {me.pvalue:.4g}: "
                  f"{verdict}"]
    s = me.between_seeds
    if s is not None:
        seeds = ("seeds differ more than their measurement error (training noise)" if s.pvalue < 0.05 else
                 "no evidence that seeds differ beyond their measurement error")
        out.append(f"- Between seeds (same capacity): pure-error variance {s.pure_error_var:.4g} against "
                   f"{s.measurement_var:.4g} from measurement error (ratio {s.variance_ratio:.3g}); "
                   f"chi2({s.dof}) = {s.chi2:.4g}, p = {s.pvalue:.4g}: {seeds}")
    return out + ["- Runs scored on the same evaluation images share part of their error, which mostly shifts "
                  "all points alike: the ratio is then an upper bound and the p-value conservative.", ""]


def _prediction_section(res: FitResults, capacities, alpha: float) -> list[str]:
    level = f"{100 * (1 - alpha):g}%"
    sf = res.get_prediction(capacities).summary_frame(alpha)
    header = [f"{res.x}", f"predicted {res.y}", f"{level} CI (mean)", f"{level} PI (new run)"]
    rows = [[c, r["mean"], _interval(r["mean_ci_lower"], r["mean_ci_upper"]),
             _interval(r["obs_ci_lower"], r["obs_ci_upper"])] for c, r in zip(sf.index, sf.to_dict("records"))]
    return ["## Predictions for untried capacities", ""] + _md_table(header, rows) + [""]


def _backtest_section(table, holdout: int, alpha: float, form: str) -> list[str]:
    lines = [f"## Backtest (largest {holdout} capacit{'y' if holdout == 1 else 'ies'} held out)", ""]
    try:
        bt = backtest(table, holdout=holdout, form=form, alpha=alpha)
    except AnalysisError as exc:
        return lines + [f"Not run: {exc}", ""]
    header = [table.x, f"true {table.y}", "predicted", f"{100 * (1 - alpha):g}% PI", "error", "rel. error",
              "covered"]
    rows = [[r["capacity"], r["truth"], r["mean"], _interval(r["pi_lower"], r["pi_upper"]), r["error"],
             f"{100 * r['rel_error']:.1f}%", bool(r["covered"])] for r in bt.to_dict("records")]
    return lines + _md_table(header, rows) + [
        "", f"{int(bt['covered'].sum())} of {len(bt)} held-out runs inside their prediction interval.", ""]


def _dropped_section(table) -> list[str]:
    lines = ["## Failed and dropped trials", ""]
    if not table.dropped:
        return lines + ["None.", ""]
    return lines + [f"- {d}" for d in table.dropped] + [""]


def _figures_section(paths: list[Path], out_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    pngs = [p for p in paths if p.suffix == ".png" and p.stem != "scaling_panels"] or \
        [p for p in paths if p.suffix == ".png"]
    for png in pngs:
        rel = Path(os.path.relpath(png, out_dir)).as_posix()
        pdf = png.with_suffix(".pdf")
        link = f" ([PDF]({Path(os.path.relpath(pdf, out_dir)).as_posix()}))" if pdf in paths else ""
        lines += [f"![{png.stem.replace('_', ' ')}]({rel}){link}", ""]
    combined = [p for p in paths if p.stem == "scaling_panels"]
    if combined and len(pngs) > 1:
        lines += ["All panels side by side: " + ", ".join(
            f"[{p.suffix[1:].upper()}]({Path(os.path.relpath(p, out_dir)).as_posix()})" for p in combined), ""]
    return lines


# --- the report ------------------------------------------------------------------------------


def default_capacities(res: FitResults, multiples=DEFAULT_MULTIPLES) -> list[float]:
    """10x and 100x the largest trained capacity."""
    top = float(np.max(res.C))
    return [m * top for m in multiples]


def write_report(table, out_path, figures_dir=None, capacities=None, holdout: int = 1, alpha: float = 0.05,
                 form: str = "log-linear", title: str | None = None) -> Path:
    """Write the sweep's Markdown report to ``out_path`` (atomically) and return its path.

    ``table``: an ``analysis.Table`` (from ``load``). ``capacities``: where to predict (default 10x
    and 100x the largest trained capacity). ``figures_dir``: when given, ``scaling_figures`` writes
    the paper's panels there and the report embeds them with relative links. A fit, backtest or
    figure that the data do not allow is named in the report instead of failing it.
    """
    from analysis.plots import scaling_figures  # matplotlib only when figures are asked for

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    heading = title or f"Scaling report: {out_path.parent.name or 'sweep'}"
    lines = [f"# {heading}", "",
             f"{len(table.points)} grid trial(s) fitted, {len(table.controls)} control run(s), "
             f"{len(table.dropped)} dropped. Intervals at {100 * (1 - alpha):g}%.", ""]
    lines += _results_section(table)
    try:
        res = fit(table, form=form)
    except AnalysisError as exc:
        res = None
        lines += ["## Fitted law", "", f"No fit: {exc}", ""]
    if res is not None:
        lines += _fit_section(res, alpha)
        caps = default_capacities(res) if capacities is None else list(capacities)
        if caps:
            lines += _prediction_section(res, caps, alpha)
        lines += _backtest_section(table, holdout, alpha, res.form)
    lines += _dropped_section(table)
    if figures_dir is not None:
        try:
            paths = scaling_figures(table, figures_dir, alpha=alpha, form=res.form if res else form)
        except AnalysisError as exc:
            lines += ["## Figures", "", f"None: {exc}", ""]
        else:
            lines += _figures_section(paths, out_path.parent)
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("wrote %s", out_path)
    return out_path
