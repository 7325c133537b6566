"""The ``drorae`` command line: one subcommand per stage of the tool.

``sweep`` runs (or, with ``--dry-run``, only plans) a capacity sweep. The analysis stages (``fit``,
``predict``, ``backtest``, ``figures``, ``report``) are further subcommands: each is a pair
``_add_<name>(subparsers)`` / ``_cmd_<name>(args) -> int`` listed in ``COMMANDS``.

Every ``model.errors.UserError`` (a bad spec, override, path or asset) becomes one line on stderr,
``drorae: error: <message>``, and its exit code (2), with no traceback. Heavy imports (torch, timm,
Ray) happen inside the commands, so ``drorae --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
    from .tracking import summary

    log.debug("plan:\n%s", format_plan(plan))
    df = run_sweep(plan, restart=args.restart, address=args.address)
    if df is not None:
        print(summary(df))
    return 0


# --- the command line ------------------------------------------------------------------------

# Subcommands in the order `drorae --help` lists them; each adds its parser and sets `func`.
COMMANDS: tuple[Callable, ...] = (_add_sweep,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_HelpFormatter,
        description="Capacity-scaling sweeps of DRoRAE tokenizers: Ray Tune trials, Optuna search,\n"
                    "MLflow tracking, scaling-law analysis.",
        epilog="examples:\n"
               "  drorae sweep sweeps/default.yaml --dry-run   # what would run, and its cost\n"
               "  drorae sweep sweeps/default.yaml             # run (or resume) the sweep\n\n"
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


def _is_user_error(err: BaseException) -> bool:
    # model.errors is imported lazily by the commands; if it never was, no UserError was raised.
    errors = sys.modules.get("model.errors")
    return errors is not None and isinstance(err, errors.UserError)


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
