"""The ``drorae`` command line: one subcommand per stage of the tool.

``sweep`` runs (or, with ``--dry-run``, only plans) a capacity sweep; it is a pair
``_add_sweep(subparsers)`` / ``_cmd_sweep(args) -> int``. The analysis stages (``fit``, ``predict``,
``backtest``, ``figures``, ``report``) are ``analysis.cli``'s commands, added here beside it; so are
the rules every command follows (``analysis.cli.run_command``): a user error (``drorae_io.UserInputError``:
a bad spec, override, path, asset, table, column, capacity or form) becomes one line on stderr,
``drorae: error: <message>``, and its exit code (2), with no traceback. Heavy imports (torch, timm,
Ray) happen inside ``sweep``; the analysis commands never import them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from analysis.cli import COMMANDS as ANALYSIS_COMMANDS
from analysis.cli import HelpFormatter, common_options, run_command, warnings_as_lines

PROG = "drorae"
log = logging.getLogger(__name__)


# --- drorae sweep ----------------------------------------------------------------------------

SWEEP_EPILOG = """\
examples:
  make sweep                                     # the embedded default: local Ray, SQLite MLflow, CPU
  drorae sweep sweeps/default.yaml --dry-run     # the resolved plan: points, parameter counts, FLOPs, seconds
  drorae sweep sweeps/paper_capacity.yaml        # the paper's capacity sweep, on whatever Ray it finds
  RAY_ADDRESS=ray://head:10001 MLFLOW_TRACKING_URI=http://mlflow:5000 drorae sweep SPEC
  drorae sweep SPEC phase2.lr=3e-4 'grid.seeds=[0,1]'   # dotted overrides, validated like the file
  drorae sweep sweeps/default.yaml --adaptive 3  # 3 more points, each chosen as it starts (drorae next's ranking)
  drorae sweep SPEC 'stop={target: 1.0e+8, pi_width_below: 2.0}'  # end once the PI at 1e8 is that narrow

Overrides are KEY=VALUE with a dotted key into the spec and a YAML value; quote values with
brackets or spaces for your shell. A bad spec or override stops with one line naming the key,
exit code 2, and nothing written. Rerunning the same command resumes an interrupted sweep; no
completed trial runs twice.

While it runs, the driver refits the law whenever a point's rFID arrives (the spec's law: block):
one console line, metrics on the MLflow parent run, results/<sweep>/law.json; a stop: block ends
the sweep once the interval at its target is narrow enough (the trials never started are recorded
as skipped).

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
        "sweep", parents=[common_options()], formatter_class=HelpFormatter, epilog=SWEEP_EPILOG,
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
                   help="print the resolved plan (every grid point with its parameter count, model FLOPs and "
                        "estimated seconds, and the totals; the seconds per FLOP measured on the sweep's results "
                        "table once it has completed trials of the same spec); start nothing, write nothing")
    p.add_argument("--restart", action="store_true",
                   help="start the sweep over instead of resuming its earlier trials (the shared "
                        "caches are kept)")
    p.add_argument("--adaptive", metavar="N", type=_count, default=0,
                   help="N more points beyond the spec's grid, each chosen as it starts by how much it is expected "
                        "to narrow the law's interval at the spec's target (law.target or stop.target) per "
                        "second; N counts all of the sweep's adaptive points: rerun to resume, a larger N adds "
                        "the difference (see README, Deciding what to train)")
    p.add_argument("--address", metavar="ADDR", default=os.environ.get("RAY_ADDRESS") or None,
                   help="Ray cluster address, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS; "
                        "unset: a local one-node Ray on 127.0.0.1)")
    p.set_defaults(func=_cmd_sweep, parser=p, intermixed="overrides",
                   interrupted="interrupted; rerun the same command to resume the sweep")
    return p


def _cmd_sweep(args: argparse.Namespace) -> int:
    from model.errors import UserError

    from .plan import build_plan, format_plan, measured_rates
    from .spec import SpecError, load_spec

    spec = load_spec(args.spec, args.overrides)
    try:
        plan = build_plan(spec)
    except UserError as err:  # what only the model can check: name the spec it came from
        raise SpecError(f"{args.spec}: {err}") from None
    if args.adaptive:
        if spec.target is None:
            raise SpecError(f"--adaptive: {args.spec} names no target capacity to choose the points for; set "
                            "law.target (e.g. law.target=1e8) or a stop rule's target")
        if spec.law.form == "saturating":
            raise SpecError("--adaptive: the points are chosen by a law linear in its parameters (law.form "
                            "log-linear, linear or power), not saturating")
    if args.dry_run:
        plan = build_plan(spec, measured_rates(plan))  # seconds from the sweep's own table, once it has one
        print(format_plan(plan))
        if args.adaptive:
            print(f"then {args.adaptive} adaptive point(s), each chosen as it starts (--adaptive)")
        return 0
    from .run import run_sweep

    log.debug("plan:\n%s", format_plan(plan))
    df = run_sweep(plan, restart=args.restart, address=args.address, adaptive=args.adaptive)
    if df is not None:
        _end_of_sweep(df, spec.sweep_dir, args.prog)
    return 0


def _count(text: str) -> int:
    """--adaptive's N: a whole number >= 0 (argparse turns the ValueError into one line, exit 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of points >= 0, got {text!r}") from None
    if not 0 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a whole number of points from 0 to 10000, got {n}")
    return n


def _end_of_sweep(df, sweep_dir, prog: str) -> None:
    """A sweep ends with each point's rFID, then its law, the paper's figures and the Markdown report.

    The law of each panel is fitted once (``analysis.panels.fit_panels``) and passed on: the summary's
    intervals, the law printed here, the report and its figures all read the same ``FitResults``.
    """
    from analysis import load
    from analysis.errors import AnalysisError
    from analysis.panels import fit_panels
    from analysis.report import write_report

    from .results import summary

    try:
        with warnings_as_lines(prog):
            table = load(sweep_dir)
            panels = fit_panels(table)
    except AnalysisError as err:  # e.g. no trial completed: the summary still lists the points
        print(summary(df))
        log.warning("no scaling-law fit for this sweep: %s", err)
        return
    result = panels.law
    print(summary(df, law=result))
    if result is None:  # e.g. fewer than 3 capacities completed: the sweep itself is fine
        log.warning("no scaling-law fit for this sweep: %s", panels.law_error)
        return
    try:
        with warnings_as_lines(prog):
            report = write_report(table, sweep_dir / "report.md", figures_dir=sweep_dir / "figures", panels=panels)
    except AnalysisError as err:
        log.warning("no report for this sweep: %s", err)
        report = None
    lo, hi = result.conf_int(0.05).loc["b"]
    print(f"\nlog-linear law: rFID = {result.params['a']:.4g} + ({result.params['b']:.4g}) log10(params), "
          f"slope 95% CI [{lo:.4g}, {hi:.4g}], R^2 = {result.rsquared:.3f}, n = {int(result.nobs)}")
    if report is not None:
        print(f"report: {report}; figures: {sweep_dir / 'figures'}")


# --- the command line ------------------------------------------------------------------------

# Subcommands in the order `drorae --help` lists them; each adds its parser and sets `func`.
COMMANDS = (_add_sweep, *ANALYSIS_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Capacity-scaling sweeps of DRoRAE tokenizers: Ray Tune trials, Optuna search,\n"
                    "MLflow tracking, scaling-law analysis.",
        epilog="examples:\n"
               "  drorae sweep sweeps/default.yaml --dry-run   # what would run, and its cost\n"
               "  drorae sweep sweeps/default.yaml             # run (or resume) the sweep\n"
               "  drorae fit results/default                   # the scaling law, with CIs and R²\n"
               "  drorae predict results/default --capacity 2e8\n"
               "  drorae backtest results/default --holdout 2\n"
               "  drorae next results/default --target 2.4e7     # which width to train next\n"
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``drorae`` console script; returns the exit code."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
