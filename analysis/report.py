"""One Markdown report per sweep: the results table, the fitted law, predictions, backtests, the
hyperparameter law (where the sweep searched the learning rate), figures.

    from analysis import load
    from analysis.report import write_report
    write_report(load("results/default"), "results/default/report.md", figures_dir="results/default/figures")

Each law is fitted once (``analysis.panels.fit_panels``: one ``FitResults`` per panel; the unified
panel's is the report's law) and the backtests once, in ``write_report``; the sections and the
figures only format and draw those results. A table too long to list trial by trial (over
``MAX_LISTED_TRIALS`` rows) is summarised per capacity. The report is written atomically
(``drorae_io.atomic_path``: a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.backtest import ROLLOUT_WEIGHTING, Rollout, backtest, rollout
from analysis.errors import AnalysisError
from analysis.fit import FitResults
from analysis.hparams import HparamLaw, law_from_table
from analysis.panels import COST, COST_X, Panels, fit_panels
from analysis.schema import se_column
from drorae_io import atomic_path, check_output_file

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("params", "rfid", "psnr", "ssim", "lpips", "status")
DEFAULT_MULTIPLES = (10, 100)        # untried capacities: 10x and 100x the largest trained one
BOOTSTRAP_B = 9_999
MAX_LISTED_TRIALS = 500              # longer tables: one row per capacity instead of one per trial
MAX_LISTED_DROPPED = 100
MAX_ROLLOUT_ROWS = 30                # more splits: this many, evenly spaced, and the overall row


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
    """[lo, hi]; "not identified" for an interval the fit could not give (NaN: a saturating fit that
    does not pin down its parameters)."""
    if isinstance(lo, float | np.floating) and isinstance(hi, float | np.floating) and np.isnan(lo) and np.isnan(hi):
        return "not identified"
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
        if len(df) > MAX_LISTED_TRIALS and table.x in df.columns and table.y in df.columns:
            lines += _per_capacity(df, table.x, table.y)
            continue
        ids = [c for c in (id_col, "trial_id" if id_col == "point_id" else "point_id") if c in df.columns]
        cols = ids + [c for c in dict.fromkeys((table.x, table.y, se_column(table.y)) + TABLE_COLUMNS)
                      if c in df.columns]
        df = df.sort_values([c for c in (table.x, "trial_id") if c in df.columns], kind="stable") \
            if table.x in df.columns else df
        lines += _md_table(cols, df[cols].values.tolist()) + [""]
    return lines


def _per_capacity(df: pd.DataFrame, x: str, y: str) -> list[str]:
    """A long table in brief: per capacity, its number of trials and the mean, std, min and max of y."""
    g = pd.to_numeric(df[y], errors="coerce").groupby(df[x])
    per = pd.DataFrame({"n": g.size(), "mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max()})
    rows = [[c, int(r["n"]), r["mean"], r["std"], r["min"], r["max"]] for c, r in per.iterrows()]
    return [f"{len(df):,} trials: too many to list one by one; per capacity instead.", ""] + \
        _md_table([x, "trials", f"mean {y}", "std", "min", "max"], rows) + [""]


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
    rows = [[k, res.params[k], res.bse[k] if res.identified else "not identified", _interval(*analytic.loc[k]),
             _interval(*bootstrap.loc[k]) if bootstrap is not None else "n/a"] for k in res.params.index]
    lines += _md_table(header, rows) + [""]
    lines += [f"- Intervals: {_errors_note(res)}"]
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
    lines += _fit_warnings(res)
    return lines + [""] + _measurement_section(res)


def _errors_note(res: FitResults) -> str:
    """Which errors the table's intervals use (the fit's own words for the linear forms)."""
    if res._ols is not None:
        return res._cov_line().removeprefix("Std err: ") + "; bootstrap: restricted wild cluster bootstrap-t"
    return "profile likelihood (std err: Huber sandwich); no bootstrap for this form"


def _fit_warnings(res: FitResults) -> list[str]:
    """What the fit says about itself (``identified``, ``warnings``; absent on fits that say nothing)."""
    lines = [] if getattr(res, "identified", True) else ["- **Not identified**: the data do not pin down "
                                                        "every parameter of this law; its intervals do not hold"]
    return lines + [f"- Warning: {w}" for w in (getattr(res, "warnings", None) or [])]


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
    notes = [f"- At {c:g}: {note}" for c, note in zip(sf.index, sf["pi_note"]) if note]
    return ["## Predictions for untried capacities", ""] + _md_table(header, rows) + [""] + \
        (notes + [""] if notes else [])


def _backtest_section(bt, holdout: int, x: str, y: str, alpha: float) -> list[str]:
    """The held-out backtest's rows (``bt``: ``backtest``'s frame, or the AnalysisError it raised)."""
    lines = [f"## Backtest (largest {holdout} capacit{'y' if holdout == 1 else 'ies'} held out)", ""]
    if isinstance(bt, AnalysisError):
        return lines + [f"Not run: {bt}", ""]
    header = [x, f"true {y}", "predicted", f"{100 * (1 - alpha):g}% PI", "error", "rel. error", "covered"]
    rows = [[r["capacity"], r["truth"], r["mean"], _interval(r["pi_lower"], r["pi_upper"]), r["error"],
             f"{100 * r['rel_error']:.1f}%", bool(r["covered"])] for r in bt.to_dict("records")]
    return lines + _md_table(header, rows) + [
        "", f"{int(bt['covered'].sum())} of {len(bt)} held-out runs inside their prediction interval.", ""]


def _rollout_section(ro, alpha: float) -> list[str]:
    """The rollout's table: one row per split, then every split pooled (``ro``: a ``Rollout``, or the error)."""
    lines = ["## Rollout backtest (fit the k smallest capacities, predict every larger one)", ""]
    if isinstance(ro, AnalysisError):
        return lines + [f"Not run: {ro}", ""]
    level = f"{100 * (1 - alpha):g}%"
    table = ro.table()
    shown = table if len(table) <= MAX_ROLLOUT_ROWS else \
        table.iloc[np.unique(np.linspace(0, len(table) - 1, MAX_ROLLOUT_ROWS).round().astype(int))]
    header = ["k", f"fitted up to {ro.x}", "predicted runs", "reach (decades)", "bias", "mean abs. error",
              "weighted rel. error", f"in {level} PI"]

    def cells(m: dict) -> list:
        return [m["n"], f"{m['max_decades']:.2f}", m["bias"], m["mae"], _percent(m["weighted_rel_error"]),
                _percent(m["coverage"])]

    rows = [[int(r["k"]), r["fitted_max"], *cells(r)] for r in shown.to_dict("records")]
    overall = ro.overall()
    rows.append(["all", f"{overall['splits']} split{'s' if overall['splits'] != 1 else ''}", *cells(overall)])
    lines += [f"Form `{ro.form}`; bias is predicted minus true {ro.y} (mean over the predicted runs); the "
              f"relative error is {ROLLOUT_WEIGHTING}."]
    if len(shown) < len(table):
        lines[-1] += f" {len(shown)} of the {len(table)} splits shown; `drorae backtest --rollout --json` has all."
    lines += [""] + _md_table(header, rows) + [""]
    return lines + [f"- Split k = {k} not fitted: {why}" for k, why in ro.skipped] + ([""] if ro.skipped else [])


def _hparam_section(law, alpha: float) -> list[str]:
    """The hyperparameter law (``analysis.hparams``): its equation and intervals, and each point's optimum;
    or why it could not be fitted."""
    lines = ["## Hyperparameter law", ""]
    if isinstance(law, AnalysisError):
        return lines + [f"Not fitted: {law}", ""]
    level = f"{100 * (1 - alpha):g}%"
    ci = law.conf_int(alpha)
    lines += [f"The best {law.param} (least {law.metric}) of each searched point, against {law.x}: "
              f"`{law.form}`, fitted to {law.nobs} points ({len(law.trials)} completed search trials).", "",
              f"**{law.equation}**", ""]
    lines += _md_table(["", "coef", "std err", f"{level} CI"],
                       [[name, law.params[name], law.bse[name],
                         _interval(ci.loc[name, "lower"], ci.loc[name, "upper"])] for name in law.params.index])
    lines += [""] + [f"- {note}" for note in law.notes()] + [""]
    lines += _md_table(["point", law.x, f"{law.param}*", "se (log10)", "method", "trials", f"best {law.metric}"],
                       [[r.point_id, r.capacity, r.optimum, r.optimum_se_log10, r.method, r.n_trials, r.best_value]
                        for r in law.points.itertuples()])
    return lines + [""]


def _cost_section(panels: Panels, controls, alpha: float) -> list[str]:
    """The metric against training cost: the cost panel's law (``fit_panels``), and the controls at their
    cost (a control that trained nothing at 0). Nothing where the table has no training cost."""
    panel = next((p for p in panels.panels if p.name == COST), None)
    lines = ["## Against training cost", ""]
    if panel is None:
        return lines + [f"Not fitted: {panels.errors[COST]}", ""] if COST in panels.errors else []
    res, level = panel.result, f"{100 * (1 - alpha):g}%"
    ci = res.conf_int(alpha)
    lines += [f"Form `{res.form}`: {res.law.equation}, with C = `{res.x}` (each grid run's model FLOPs of "
              f"training) and y = `{res.y}`; n = {res.nobs} runs at {len(np.unique(res.C))} distinct costs, "
              f"R² = {res.rsquared:.4f}.", ""]
    if res.form == "log-linear":
        lines += [f"Slope b = {res.params['b']:.4g} {res.y} per decade of training FLOPs "
                  f"({level} CI {_interval(*ci.loc['b'])}).", ""]
    rows = [[k, res.params[k], res.bse[k] if res.identified else "not identified", _interval(*ci.loc[k])]
            for k in res.params.index]
    lines += _md_table(["param", "estimate", "std err", f"{level} CI"], rows) + [""]
    lines += [f"- Intervals: {_errors_note(res).split('; bootstrap')[0]}"] + _fit_warnings(res)
    if controls is not None and len(controls) and COST_X in controls.columns and res.y in controls.columns:
        ids = controls["point_id"].astype(str) if "point_id" in controls.columns else controls.index.astype(str)
        cost = pd.to_numeric(controls[COST_X], errors="coerce").groupby(ids).mean()
        val = pd.to_numeric(controls[res.y], errors="coerce").groupby(ids).mean()
        lines += ["", "Controls at their training cost (never fitted):", ""]
        def shown(c: float) -> str:
            return "0 (trains nothing)" if c == 0 else "" if math.isnan(c) else f"{c:.4g}"

        lines += _md_table(["control", COST_X, res.y], [[name, shown(cost[name]), val[name]] for name in cost.index])
    return lines + [""]


def _percent(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _dropped_section(table) -> list[str]:
    lines = ["## Failed and dropped trials", ""]
    if not table.dropped:
        return lines + ["None.", ""]
    more = len(table.dropped) - MAX_LISTED_DROPPED
    return lines + [f"- {d}" for d in table.dropped[:MAX_LISTED_DROPPED]] + \
        ([f"- ... and {more} more"] if more > 0 else []) + [""]


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
                 form: str = "log-linear", title: str | None = None, panels: Panels | None = None) -> Path:
    """Write the sweep's Markdown report to ``out_path`` (atomically) and return its path.

    ``table``: an ``analysis.Table`` (from ``load``). ``panels``: its laws, ``fit_panels(table, form)``
    (fitted here when not given): the unified panel's law is the report's. ``capacities``: where to
    predict (default 10x and 100x the largest trained capacity). The held-out backtest and the rollout
    use the law's form. ``figures_dir``: when given, ``scaling_figures`` draws the panels and the
    rollout there and the report embeds them with relative links. A fit, backtest or figure that the
    data do not allow is named in the report instead of failing it (and, without a law, warned of).
    """
    from analysis.plots import scaling_figures  # matplotlib only when figures are asked for

    out_path = Path(out_path)
    check_output_file(out_path)  # before the work: a report that cannot be written is one line, now
    panels = fit_panels(table, form=form) if panels is None else panels
    res = panels.law
    bt = ro = None
    if res is not None:
        laws: dict = {}  # the held-out backtest's law is the rollout's split k = m - holdout: fitted once
        bt, ro = (_attempt(lambda: backtest(table, holdout=holdout, form=res.form, alpha=alpha, cache=laws)),
                  _attempt(lambda: rollout(table, form=res.form, alpha=alpha, cache=laws)))
    else:
        warnings.warn(f"no law fitted, the report says why: {panels.law_error}", stacklevel=2)

    heading = title or f"Scaling report: {out_path.parent.name or 'sweep'}"
    lines = [f"# {heading}", "",
             f"{len(table.points)} grid trial(s) fitted, {len(table.controls)} control run(s), "
             f"{len(table.dropped)} dropped. Intervals at {100 * (1 - alpha):g}%.", ""]
    ended = getattr(table, "metadata", {}).get("ended")
    if isinstance(ended, dict) and ended.get("reason"):  # a sweep's table: why it ended (sweeper.live)
        lines += [f"Why the sweep ended: {ended['reason']}.", ""]
    lines += _results_section(table)
    if res is None:
        lines += ["## Fitted law", "", f"No fit: {panels.law_error}", ""]
    else:
        lines += _fit_section(res, alpha)
        caps = default_capacities(res) if capacities is None else list(capacities)
        if caps:
            lines += _prediction_section(res, caps, alpha)
        lines += _backtest_section(bt, holdout, table.x, table.y, alpha)
        lines += _rollout_section(ro, alpha)
    lines += _cost_section(panels, table.controls, alpha)
    hparam_law = _attempt(lambda: law_from_table(table, alpha=alpha))  # None: no searched points
    if hparam_law is not None:
        lines += _hparam_section(hparam_law, alpha)
    lines += _dropped_section(table)
    if figures_dir is not None:
        try:
            paths = scaling_figures(table, figures_dir, alpha=alpha, panels=panels,
                                    rollout=ro if isinstance(ro, Rollout) else None,
                                    hparam_law=hparam_law if isinstance(hparam_law, HparamLaw) else False)
        except AnalysisError as exc:
            lines += ["## Figures", "", f"None: {exc}", ""]
        else:
            lines += _figures_section(paths, out_path.parent)
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("wrote %s", out_path)
    return out_path


def _attempt(make):
    """``make()``, or the AnalysisError it raised (the report names it in the section)."""
    try:
        return make()
    except AnalysisError as exc:
        return exc
