"""The ``drorae`` command line: one subcommand per stage of the tool.

``sweep`` runs (or, with ``--dry-run``, only plans) a capacity sweep. The analysis stages (``fit``,
``predict``, ``backtest``, ``figures``, ``report``) are further subcommands: each is a pair
``_add_<name>(subparsers)`` / ``_cmd_<name>(args) -> int`` listed in ``COMMANDS``.

Every ``model.errors.UserError`` (a bad spec, override, path or asset) and every
``analysis.errors.AnalysisError`` (a bad table, column, capacity or form) becomes one line on stderr,
``drorae: error: <message>``, and its exit code (2), with no traceback. Heavy imports (torch, timm,
Ray, and numpy / pandas / statsmodels for the analysis) happen inside the commands, so
``drorae --help`` answers at once; the analysis commands never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable

PROG = "drorae"
log = logging.getLogger(__name__)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written; wider help column."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging (default: info)")
    return p


# --- drorae sweep ----------------------------------------------------------------------------

SWEEP_EPILOG = """\
examples:
  make sweep                                     # the embedded default: local Ray, SQLite MLflow, CPU
  drorae sweep sweeps/default.yaml --dry-run     # the resolved plan: points, parameter counts, cost
  drorae sweep sweeps/paper_capacity.yaml        # the paper's capacity sweep, on whatever Ray it finds
  RAY_ADDRESS=ray://head:10001 MLFLOW_TRACKING_URI=http://mlflow:5000 drorae sweep SPEC
  drorae sweep SPEC phase2.lr=3e-4 'grid.seeds=[0,1]'   # dotted overrides, validated like the file

Overrides are KEY=VALUE with a dotted key into the spec and a YAML value; quote values with
brackets or spaces for your shell. A bad spec or override stops with one line naming the key,
exit code 2, and nothing written. Rerunning the same command resumes an interrupted sweep; no
completed trial runs twice.

environment:
  RAY_ADDRESS          Ray cluster to run on (default for --address); unset: a local one-node Ray
  MLFLOW_TRACKING_URI  MLflow tracking server; wins over the spec's tracking.uri
  DRORAE_CACHE         shared caches (encoder, features, FID statistics, phase 1), unless the spec
                       sets cache_dir; default ~/.cache/drorae-scaling
  DRORAE_MLFLOW_FLUSH_TIMEOUT  seconds the end of a sweep waits for an unreachable tracking
                       server (default 60) before keeping its writes in mlflow-pending.json
"""


def _add_sweep(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep", parents=[_common()], formatter_class=_HelpFormatter, epilog=SWEEP_EPILOG,
        help="run a capacity sweep as Ray Tune trials (or print its plan with --dry-run)",
        description="Run the capacity sweep that SPEC describes: the shared work once (encoder, feature\n"
                    "cache, FID statistics, phase-1 decoder), then one Ray Tune trial per grid point x seed\n"
                    "(with its own Optuna search when the spec has one), each tracked in MLflow, into\n"
                    "results/<sweep>/trials.parquet.")
    p.add_argument("spec", metavar="SPEC", help="sweep spec, a YAML file (see sweeps/)")
    p.add_argument("overrides", metavar="OVERRIDE", nargs="*",
                   help="dotted KEY=VALUE replacing a value of the spec, e.g. phase2.lr=3e-4 or "
                        "'grid.seeds=[0,1]'; applied in order, then validated like the file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (every grid point with its parameter count and "
                        "estimated cost, and the totals); start nothing, write nothing")
    p.add_argument("--restart", action="store_true",
                   help="start the sweep over instead of resuming its earlier trials (the shared "
                        "caches are kept)")
    p.add_argument("--address", metavar="ADDR", default=os.environ.get("RAY_ADDRESS") or None,
                   help="Ray cluster address, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS; "
                        "unset: a local one-node Ray on 127.0.0.1)")
    p.set_defaults(func=_cmd_sweep, parser=p, intermixed="overrides",
                   interrupted="interrupted; rerun the same command to resume the sweep")
    return p


def _cmd_sweep(args: argparse.Namespace) -> int:
    from model.errors import UserError

    from .plan import build_plan, format_plan
    from .spec import SpecError, load_spec

    spec = load_spec(args.spec, args.overrides)
    try:
        plan = build_plan(spec)
    except UserError as err:  # what only the model can check: name the spec it came from
        raise SpecError(f"{args.spec}: {err}") from None
    if args.dry_run:
        print(format_plan(plan))
        return 0
    from .run import run_sweep
    from .results import summary

    log.debug("plan:\n%s", format_plan(plan))
    df = run_sweep(plan, restart=args.restart, address=args.address)
    if df is not None:
        print(summary(df))
        _analyze_sweep(spec.sweep_dir)
    return 0


def _analyze_sweep(sweep_dir) -> None:
    """A sweep ends with its law: the fit, the paper's figures and the Markdown report."""
    from analysis import fit, load
    from analysis.errors import AnalysisError
    from analysis.report import write_report

    try:
        with _warnings_as_lines():
            table = load(sweep_dir)
            result = fit(table)
            report = write_report(table, sweep_dir / "report.md", figures_dir=sweep_dir / "figures")
    except AnalysisError as err:  # e.g. fewer than 3 capacities completed: the sweep itself is fine
        log.warning("no scaling-law fit for this sweep: %s", err)
        return
    lo, hi = result.conf_int(0.05).loc["b"]
    print(f"\nlog-linear law: rFID = {result.params['a']:.4g} + ({result.params['b']:.4g}) log10(params), "
          f"slope 95% CI [{lo:.4g}, {hi:.4g}], R^2 = {result.rsquared:.3f}, n = {int(result.nobs)}")
    print(f"report: {report}; figures: {sweep_dir / 'figures'}")


# --- analysis: shared options ------------------------------------------------------------------

# The forms of analysis.laws.FORMS, plus "auto"; spelled out here so `drorae --help` needs no numpy
# (tests/sweeper/test_cli_analysis.py checks the two agree).
FORMS = ("log-linear", "linear", "power", "saturating", "auto")

RESULTS_HELP = ("a results directory (its trials.parquet or trials.csv), a .parquet / .csv table, or "
                "mlflow:EXPERIMENT (the store is $MLFLOW_TRACKING_URI, else results/mlflow.db)")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _fit_options(*, weights: bool = True) -> argparse.ArgumentParser:
    """The options that choose the rows and the law: every analysis command takes them."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("results", metavar="RESULTS", help=RESULTS_HELP)
    p.add_argument("--x", metavar="COLUMN", default="params",
                   help="capacity column (default: params, the trainable parameters; e.g. expert_hidden, "
                        "fused_layers)")
    p.add_argument("--y", metavar="COLUMN", default="rfid", help="metric column (default: rfid)")
    p.add_argument("--form", choices=FORMS, default="log-linear",
                   help="the law: log-linear (y = a + b log10 C, the paper's; default), linear (y = a + b C), "
                        "power (ln y = a + b ln C), saturating (y = E + A C^-alpha) or auto (the best by "
                        "leave-one-capacity-out error)")
    p.add_argument("--where", metavar="KEY=VALUE", action="append", default=[],
                   help="fit only the rows whose column KEY equals VALUE, e.g. --where fused_layers=6; "
                        "repeat (or join with commas) for several")
    if weights:
        p.add_argument("--weights", choices=("seed-variance",), default=None,
                       help="seed-variance: weighted least squares by 1 / the per-capacity variance over "
                            "seeds (needs 2+ seeds per capacity; default: unweighted)")
    p.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                   help="intervals at level 1 - A (default: 0.05, i.e. 95%%)")
    return p


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (warnings stay on stderr)")


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings (dropped rows, failed trials) as one `drorae: warning: ...` line each on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.showwarning = lambda message, *_a, **_k: print(
            f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        yield


def _load(args: argparse.Namespace):
    from analysis import load

    return load(args.results, x=args.x, y=args.y, where=args.where or None)


def _fit(args: argparse.Namespace):
    """The table and the law fitted to it, as the shared options ask."""
    from analysis import fit

    table = _load(args)
    return table, fit(table, form=args.form, weights=getattr(args, "weights", None))


def _finite(obj):
    """obj with NaN / inf floats as None: stdout stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_json(obj) -> None:
    print(json.dumps(_finite(obj), indent=2, allow_nan=False))


# --- drorae fit ------------------------------------------------------------------------------

FIT_EPILOG = """\
examples:
  drorae fit results/default                         # law, params with CIs, R², lack of fit
  drorae fit results/default --x fused_layers --form linear --where expert_hidden=512
  drorae fit published.csv --where panel=capacity    # select the rows of one panel of a table
  drorae fit results/default --ci bootstrap          # studentized residual-bootstrap intervals
  drorae fit results/default --form auto             # the form with the lowest leave-one-out error
  drorae fit mlflow:default --json                   # straight from the tracking store, as JSON
  drorae fit published.csv --x params --y rfid       # any table with a capacity and a metric column
  make fit RESULTS_DIR=results/default

Only completed grid trials are fitted (the best trial of each searched point); control runs
(kind=control) never are. Failed trials and rows with NaN/inf are dropped with a warning that
lists them. Fewer than 3 distinct capacities, a non-positive capacity for a log form, or a
missing column stop with one line naming it, exit code 2.
"""


def _add_fit(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fit", parents=[_common(), _fit_options()], formatter_class=_HelpFormatter, epilog=FIT_EPILOG,
        help="fit a scaling law to a sweep's results: params with CIs, R², diagnostics",
        description="Fit a scaling law y = f(C) to the completed trials of RESULTS (seeds kept as rows, not\n"
                    "averaged) and print the law, its parameters with intervals, R², AIC/BIC and a\n"
                    "lack-of-fit F-test when seeds repeat a capacity.")
    p.add_argument("--ci", choices=("analytic", "bootstrap"), default="analytic",
                   help="parameter intervals: analytic (t-based; default) or bootstrap (studentized "
                        "residual bootstrap, 10,000 resamples; linear-in-parameter forms only)")
    _json_option(p, "one object: form, x, y, n, params, bse, conf_int, ci_method, r2, r2_adj, aic, bic, ...")
    p.set_defaults(func=_cmd_fit, parser=p)
    return p


def _cmd_fit(args: argparse.Namespace) -> int:
    with _warnings_as_lines():
        table, res = _fit(args)
        if args.json:
            out = res.to_dict(alpha=args.alpha, ci_method=args.ci)
            out["dropped"] = [str(d) for d in table.dropped]
            _print_json(out)
            return 0
        text = res.summary(alpha=args.alpha)
        if args.ci == "bootstrap":
            ci = res.conf_int(args.alpha, method="bootstrap")
            text += f"\n\nBootstrap {1 - args.alpha:.0%} intervals (studentized residual, 10,000 resamples):\n" + \
                "\n".join(f"{name:>8}  [{ci.loc[name, 'lower']:.5g}, {ci.loc[name, 'upper']:.5g}]"
                          for name in ci.index)
    print(text)
    return 0


# --- drorae predict --------------------------------------------------------------------------

PREDICT_EPILOG = """\
examples:
  drorae predict results/default --capacity 2e8 --capacity 5e8
  drorae predict results/default --capacity 1e7 --form power --alpha 0.1
  drorae predict results/default --capacity 4096 --x expert_hidden --where fused_layers=6 --json
  make predict CAPACITY=2e8

For each capacity: the law's mean, the (1 - alpha) interval of that mean (ci) and the prediction
interval for one new trial at that capacity (pi), which also holds the seed-to-seed noise.
"""


def _add_predict(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict", parents=[_common(), _fit_options()], formatter_class=_HelpFormatter, epilog=PREDICT_EPILOG,
        help="predict the metric at untried capacities, with the mean's CI and a prediction interval",
        description="Fit the law to RESULTS (as `drorae fit` does) and predict the metric at each --capacity.")
    p.add_argument("--capacity", metavar="C", type=float, action="append", required=True,
                   help="a capacity in the units of --x, e.g. 2e8 trainable parameters; repeat for several")
    _json_option(p, "a list with one entry per capacity: capacity, mean, mean_se, ci [low, high], pi [low, high]")
    p.set_defaults(func=_cmd_predict, parser=p)
    return p


def _cmd_predict(args: argparse.Namespace) -> int:
    with _warnings_as_lines():
        _table, res = _fit(args)
        sf = res.get_prediction(args.capacity).summary_frame(args.alpha)
    rows = [{"capacity": float(c), "mean": float(r["mean"]), "mean_se": float(r["mean_se"]),
             "ci": [float(r["mean_ci_lower"]), float(r["mean_ci_upper"])],
             "pi": [float(r["obs_ci_lower"]), float(r["obs_ci_upper"])]}
            for c, (_, r) in zip(args.capacity, sf.iterrows())]
    if args.json:
        _print_json(rows)
        return 0
    level = f"{1 - args.alpha:.0%}"
    ps = ", ".join(f"{k} = {v:.5g}" for k, v in res.params.items())
    print(f"{res.law.equation}   ({ps}; C = {res.x}, y = {res.y}, n = {res.nobs}, R² = {res.rsquared:.4f})")
    head = f"{'capacity':>12}{'mean':>12}{level + ' CI':>26}{level + ' PI':>26}"
    print(head)
    for r in rows:
        ci, pi = (f"[{lo:.5g}, {hi:.5g}]" for lo, hi in (r["ci"], r["pi"]))
        print(f"{r['capacity']:>12.4g}{r['mean']:>12.5g}{ci:>26}{pi:>26}")
    return 0


# --- drorae backtest -------------------------------------------------------------------------

BACKTEST_EPILOG = """\
examples:
  drorae backtest results/default --holdout 2       # fit without the 2 largest capacities, predict them
  drorae backtest results/default --holdout 1 --form power --json

Each held-out trial gets the prediction, its (1 - alpha) prediction interval, the error
(predicted - truth, and relative to the truth) and whether the truth fell inside the interval.
At least 3 distinct capacities must remain to fit.
"""


def _add_backtest(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "backtest", parents=[_common(), _fit_options()], formatter_class=_HelpFormatter, epilog=BACKTEST_EPILOG,
        help="fit on all but the largest capacities, predict those, check the intervals",
        description="Backtest the law on RESULTS: fit it without the --holdout largest distinct capacities and\n"
                    "compare its predictions there with the trials that were run.")
    p.add_argument("--holdout", metavar="K", type=int, default=1,
                   help="how many of the largest distinct capacities to hold out (default: 1)")
    _json_option(p, "one object: form, holdout, alpha, mae, coverage and rows (capacity, truth, mean, pi, "
                    "error, rel_error, covered)")
    p.set_defaults(func=_cmd_backtest, parser=p)
    return p


def _cmd_backtest(args: argparse.Namespace) -> int:
    from analysis import backtest

    with _warnings_as_lines():
        table = _load(args)
        bt = backtest(table, holdout=args.holdout, form=args.form, alpha=args.alpha, weights=args.weights)
    rows = [{"capacity": float(r.capacity), "truth": float(r.truth), "mean": float(r.mean),
             "pi": [float(r.pi_lower), float(r.pi_upper)], "error": float(r.error),
             "rel_error": float(r.rel_error), "covered": bool(r.covered)} for r in bt.itertuples()]
    summary = {"form": bt.attrs.get("form", args.form), "x": table.x, "y": table.y, "holdout": args.holdout,
               "alpha": args.alpha, "mae": float(bt["error"].abs().mean()),
               "mean_rel_error": float(bt["rel_error"].abs().mean()), "coverage": float(bt["covered"].mean()),
               "rows": rows}
    if args.json:
        _print_json(summary)
        return 0
    level = f"{1 - args.alpha:.0%}"
    print(f"Backtest of {summary['form']!r} ({table.y} over {table.x}): fitted without the {args.holdout} "
          f"largest capacit{'y' if args.holdout == 1 else 'ies'}")
    print(f"{'capacity':>12}{'truth':>12}{'predicted':>12}{level + ' PI':>26}{'error':>11}{'rel':>9}  inside")
    for r in rows:
        pi = f"[{r['pi'][0]:.5g}, {r['pi'][1]:.5g}]"
        print(f"{r['capacity']:>12.4g}{r['truth']:>12.5g}{r['mean']:>12.5g}{pi:>26}{r['error']:>11.4g}"
              f"{r['rel_error']:>9.2%}  {'yes' if r['covered'] else 'NO'}")
    print(f"mean |error| {summary['mae']:.4g}, mean |relative error| {summary['mean_rel_error']:.2%}, "
          f"{sum(r['covered'] for r in rows)}/{len(rows)} inside their {level} prediction interval")
    return 0


# --- drorae figures --------------------------------------------------------------------------

FIGURES_EPILOG = """\
examples:
  drorae figures results/default --out figures/     # the paper's panels, PDF + PNG
  drorae figures results/default --out figures/ --form power --alpha 0.1
  make figures RESULTS_DIR=results/default

The panels: expert-capacity scaling, layer-count scaling and the unified law over trainable
parameters; points with error bars over seeds, the fitted line with its CI band, R² and slope in
the legend, the control runs (the RAE baseline) as horizontal lines, never fitted.
"""


def _add_figures(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "figures", parents=[_common(), _fit_options(weights=False)], formatter_class=_HelpFormatter,
        epilog=FIGURES_EPILOG, help="draw the paper's scaling panels (PDF + PNG) from a sweep's results",
        description="Fit the law to each panel of RESULTS and draw the scaling figures into DIR, each as\n"
                    "PDF and PNG (the fits are the ones `drorae fit` prints; --alpha sets the CI band).")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder for the figures (created if missing)")
    p.set_defaults(func=_cmd_figures, parser=p)
    return p


def _cmd_figures(args: argparse.Namespace) -> int:
    from analysis.plots import scaling_figures

    with _warnings_as_lines():
        paths = scaling_figures(_load(args), args.out, alpha=args.alpha, form=args.form)
    for path in paths:
        print(path)
    return 0


# --- drorae report ---------------------------------------------------------------------------

REPORT_EPILOG = """\
examples:
  drorae report results/default                     # results/default/report.md, figures in results/default/figures/
  drorae report results/default --capacity 2e8 --capacity 5e8 --holdout 2
  drorae report results/default --out paper/report.md --figures paper/figures
  make report RESULTS_DIR=results/default
"""


def _add_report(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", parents=[_common(), _fit_options(weights=False)], formatter_class=_HelpFormatter,
        epilog=REPORT_EPILOG, help="write a Markdown report: results table, fits, predictions, backtest, figures",
        description="Write a Markdown report of RESULTS: the trials, the fitted law with its intervals,\n"
                    "predictions at the --capacity values, a backtest, and the figures.")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="the report file (default: RESULTS/report.md for a results directory, else ./report.md)")
    p.add_argument("--figures", metavar="DIR", default=None,
                   help="where the figures go (default: figures/ next to the report)")
    p.add_argument("--capacity", metavar="C", type=float, action="append", default=[],
                   help="a capacity to predict in the report; repeat for several (default: 10x and 100x "
                        "the largest trained capacity)")
    p.add_argument("--holdout", metavar="K", type=int, default=1,
                   help="largest capacities held out in the report's backtest (default: 1)")
    p.set_defaults(func=_cmd_report, parser=p)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis.report import write_report

    if args.out is not None:
        out = Path(args.out)
    elif os.path.isdir(args.results):
        out = Path(args.results) / "report.md"
    else:
        out = Path("report.md")
    figures = Path(args.figures) if args.figures is not None else out.parent / "figures"
    with _warnings_as_lines():
        path = write_report(_load(args), out, figures_dir=figures, capacities=tuple(args.capacity) or None,
                            holdout=args.holdout, alpha=args.alpha, form=args.form)
    print(path)
    return 0


# --- the command line ------------------------------------------------------------------------

# Subcommands in the order `drorae --help` lists them; each adds its parser and sets `func`.
COMMANDS: tuple[Callable, ...] = (_add_sweep, _add_fit, _add_predict, _add_backtest, _add_figures, _add_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_HelpFormatter,
        description="Capacity-scaling sweeps of DRoRAE tokenizers: Ray Tune trials, Optuna search,\n"
                    "MLflow tracking, scaling-law analysis.",
        epilog="examples:\n"
               "  drorae sweep sweeps/default.yaml --dry-run   # what would run, and its cost\n"
               "  drorae sweep sweeps/default.yaml             # run (or resume) the sweep\n"
               "  drorae fit results/default                   # the scaling law, with CIs and R²\n"
               "  drorae predict results/default --capacity 2e8\n"
               "  drorae backtest results/default --holdout 2\n"
               "  drorae figures results/default --out figures/\n"
               "  drorae report results/default                # Markdown report with table, fits, figures\n\n"
               f"'{PROG} COMMAND --help' explains a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drorae-scaling")
    except PackageNotFoundError:
        return "unknown"


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, letting a command's trailing positionals follow its options.

    argparse stops filling ``nargs="*"`` positionals at the first option, and its intermixed
    parser refuses subcommands; so leftovers that are not options go to the command's
    ``intermixed`` destination (`drorae sweep SPEC --dry-run a.b=1` keeps `a.b=1`).
    """
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "intermixed", None)
    bad = [a for a in extra if a.startswith("-") or dest is None]
    if bad:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        setattr(args, dest, [*getattr(args, dest), *extra])
    return args


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:  # our own debug lines, not every library's
        for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "fsspec", "git"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting logs each glyph


def _is_user_error(err: BaseException) -> bool:
    # model.errors and analysis.errors are imported lazily by the commands (the analysis ones must
    # not pull in torch); a module never imported raised nothing.
    for module, name in (("model.errors", "UserError"), ("analysis.errors", "AnalysisError")):
        errors = sys.modules.get(module)
        if errors is not None and isinstance(err, getattr(errors, name)):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``drorae`` console script; returns the exit code."""
    parser = build_parser()
    args = _parse(parser, argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return 130
    except Exception as err:
        if not _is_user_error(err):
            raise
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
