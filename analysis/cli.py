"""The analysis commands of ``drorae`` (fit, predict, next, backtest, figures, report) and the command-line rules.

``drorae fit ...`` (``sweeper.cli`` adds these commands to ``drorae``) and ``python -m analysis fit ...``
run the same code. Each command is a pair ``add_<name>(subparsers)`` / ``_cmd_<name>(args) -> int``,
listed in ``COMMANDS``; they read a results table or MLflow and never import torch, Ray or ``model``.

The rules every ``drorae`` command follows live here too (``sweeper.cli`` uses them): the help layout
(``HelpFormatter``), ``-v`` (``common_options``), warnings (dropped rows, failed trials) as one
``PROG: warning: ...`` line each (``warnings_as_lines``), and ``run_command``: a ``UserInputError``
(``model.errors.UserError``: a bad spec, override, path or asset; ``analysis.errors.AnalysisError``:
a bad table, column, capacity or form) becomes one line ``PROG: error: <message>`` on stderr and its
exit code (2), with no traceback; Ctrl-C exits 130 with one line.
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

from analysis import laws
from analysis.robust import COV_TYPES
from drorae_io import UserInputError, check_output_dir, check_output_file

log = logging.getLogger(__name__)


# --- the command-line rules ------------------------------------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written; wider help column."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging (default: info)")
    return p


@contextlib.contextmanager
def warnings_as_lines(prog: str):
    """Warnings (dropped rows, failed trials) as one ``PROG: warning: ...`` line each on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.showwarning = lambda message, *_a, **_k: print(
            f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        yield


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
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


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:  # our own debug lines, not every library's
        for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "fsspec", "git"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting logs each glyph


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command (its ``func``) and return the exit code (see the module)."""
    args = parse_args(parser, argv)
    args.prog = parser.prog
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return 130
    except UserInputError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return err.exit_code


# --- the analysis commands: shared options ------------------------------------------------------------------

# The forms of the law: analysis.laws.FORMS, plus "auto".
FORMS = (*laws.FORMS, "auto")

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


def _capacities(args: argparse.Namespace) -> list[float]:
    """The --capacity values as numbers: AnalysisError naming --capacity for text, NaN, inf or <= 0."""
    return [_capacity(text, "--capacity", "2e8") for text in args.capacity or []]


def _capacity(text: str, option: str, example: str) -> float:
    """``text`` as a capacity: AnalysisError naming ``option`` for text, NaN, inf or <= 0."""
    from analysis.errors import AnalysisError

    try:
        value = float(text)
    except ValueError:
        raise AnalysisError(f"{option} {text!r}: expected a number, e.g. {example}") from None
    if not (math.isfinite(value) and value > 0):
        raise AnalysisError(f"{option} {text}: expected a finite capacity > 0, in the units of --x "
                            f"(e.g. {example} trainable parameters)")
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
        p.add_argument("--weights", choices=("seed-variance", "measurement"), default=None,
                       help="seed-variance: feasible GLS by the noise model's variance at each capacity (log "
                            "variance linear in log C, from the seeds; needs 2+ seeds per capacity); "
                            "measurement: weights 1 / <y>_se^2 taken as known variances (right when the "
                            "measurement error is all the scatter; see the fit's measurement-error line); "
                            "default: unweighted")
        p.add_argument("--cov", choices=COV_TYPES, default="CR2",
                       help="the parameters' errors: CR2 (default: cluster-robust with capacities as clusters, "
                            "t with Bell-McCaffrey df; holds when the noise changes with capacity) or "
                            "nonrobust (one pooled variance, t with n - p df)")
    p.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                   help="intervals at level 1 - A (default: 0.05, i.e. 95%%)")
    return p


def _command(sub, name: str, func: Callable, epilog: str, *, weights: bool = True,
             options: argparse.ArgumentParser | None = None, **kwargs):
    """The parser of analysis command ``name``: the shared options (or ``options``: a command that fits no
    scaling law), ``epilog``'s examples, ``func`` to run."""
    options = _fit_options(weights=weights) if options is None else options
    p = sub.add_parser(name, parents=[common_options(), options], formatter_class=HelpFormatter,
                       epilog=epilog, **kwargs)
    p.set_defaults(func=func, parser=p)
    return p


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (warnings stay on stderr)")


def _load(args: argparse.Namespace):
    from analysis import load

    return load(args.results, x=args.x, y=args.y, where=args.where or None)


def _fit(args: argparse.Namespace):
    """The table and the law fitted to it, as the shared options ask."""
    from analysis import fit

    table = _load(args)
    return table, fit(table, form=args.form, weights=getattr(args, "weights", None),
                      cov_type=getattr(args, "cov", "CR2"))


def json_ready(obj):
    """obj with NaN / inf floats as None: stdout stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_json(obj) -> None:
    print(json.dumps(json_ready(obj), indent=2, allow_nan=False))


# --- drorae fit ------------------------------------------------------------------------------

FIT_EPILOG = """\
examples:
  drorae fit results/default                         # law, params with CIs, R², lack of fit
  drorae fit results/default --x fused_layers --form linear --where expert_hidden=512
  drorae fit published.csv --where panel=capacity    # select the rows of one panel of a table
  drorae fit results/default --ci bootstrap          # wild cluster bootstrap intervals
  drorae fit results/default --form auto             # the form with the lowest leave-one-out error
  drorae fit mlflow:default --json                   # straight from the tracking store, as JSON
  drorae fit published.csv --x params --y rfid       # any table with a capacity and a metric column
  drorae fit results/default --x train_flops         # rFID against each run's training FLOPs (or train_seconds)
  make fit RESULTS_DIR=results/default

Only completed grid trials are fitted (the best trial of each searched point); control runs
(kind=control) never are. Failed trials and rows with NaN/inf are dropped with a warning that
lists them. Fewer than 3 distinct capacities, a non-positive capacity for a log form (named
with its rows: a cost column such as train_flops is 0 for a run that trained nothing), or a
missing column stop with one line naming it, exit code 2. A cost axis (--x train_flops,
train_seconds) is fitted like any capacity; train_seconds differs between the seeds of one
point, so under CR2 each run is then its own cluster.

Where every fitted row has its metric's measurement error (a <y>_se column, e.g. rfid_se),
the fit also says how much of the residual scatter it accounts for: measurement variance /
residual variance, and a chi-square test of whether the runs scatter more than their
measurement error (analysis/measurement.py).
"""


def add_fit(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "fit", _cmd_fit, FIT_EPILOG,
        help="fit a scaling law to a sweep's results: params with CIs, R², diagnostics",
        description="Fit a scaling law y = f(C) to the completed trials of RESULTS (seeds kept as rows, not\n"
                    "averaged) and print the law, its parameters with intervals, R², AIC/BIC, a\n"
                    "lack-of-fit F-test when seeds repeat a capacity, and the share of the scatter that\n"
                    "the runs' measurement error (<y>_se) accounts for where the table has it.")
    _ci_option(p, "parameter intervals")
    _json_option(p, "one object: form, x, y, n, params, bse, conf_int, ci_method, r2, r2_adj, aic, bic, "
                    "lack_of_fit, measurement_error (null without <y>_se on every row), ...")
    return p


def _cmd_fit(args: argparse.Namespace) -> int:
    with warnings_as_lines(args.prog):
        table, res = _fit(args)
        if args.json:
            out = res.to_dict(alpha=args.alpha, ci_method=args.ci)
            out["dropped"] = [str(d) for d in table.dropped]
            _print_json(out)
            return 0
        text = res.summary(alpha=args.alpha)
        if args.ci == "bootstrap":
            ci = res.conf_int(args.alpha, method="bootstrap")
            text += f"\n\nBootstrap {1 - args.alpha:.0%} intervals ({BOOTSTRAP_WORDS}):\n" + \
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
  drorae predict results/default --target-rfid 25                 # which capacity reaches rFID 25, at what cost
  drorae predict results/default --target-rfid 25 --x train_flops # which training FLOPs reach it
  make predict CAPACITY=2e8

For each capacity: the law's mean, the (1 - alpha) interval of that mean (ci) and the prediction
interval for one new trial at that capacity (pi), which also holds the run-to-run noise there: the
noise model (log variance linear in log C, fitted to the residuals or the seeds) read at that
capacity, with its own uncertainty. Where that rests on few degrees of freedom (one seed per
capacity, far beyond the largest), the PI is wide and a note says so; with too few capacities to
fit a noise model it is unbounded.

--target-rfid Y (instead of --capacity) answers the inverse question: the capacity C0 where the
law reaches Y (in the units of --y). Log-linear, linear and power laws are inverted, and their
intervals are the fit's own bands inverted: the CI is every capacity whose (1 - alpha) CI of the
mean holds Y (the Fieller / inverse-prediction interval), the calibration interval every capacity
whose prediction interval holds Y (where one trained run could land at Y); both found on the bands
`drorae figures` draws (CR2 errors with their df, the noise model), searched up to 6 decades beyond
the fitted capacities. The saturating law's intervals are percentiles of 999 residual-bootstrap
refits. "BEYOND WHAT THE LAW SUPPORTS" (exit 0; in --json supported false and beyond saying why)
when the slope's CI includes 0 (the Fieller set is unbounded), the CI runs past the search's edge,
Y lies past the saturating law's E (or inside E's CI), or no positive capacity reaches Y. An open
calibration interval (the PI's extrapolated noise holds Y far out) is a note, not that.
At what cost: where --x is not a cost column and the table has train_flops and/or train_seconds,
cost = c0 + c1 C (c0, c1 >= 0: a fixed part, e.g. the frozen decoder's FLOPs, and one proportional to
the capacity) is fitted to the fitted (grid) runs, and the capacity and both intervals are mapped
through it (a point map: it adds no uncertainty of its own).
"""


def add_predict(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "predict", _cmd_predict, PREDICT_EPILOG,
        help="predict the metric at untried capacities, with the mean's CI and a prediction interval",
        description="Fit the law to RESULTS (as `drorae fit` does) and predict the metric at each --capacity.")
    p.add_argument("--capacity", metavar="C", action="append", default=None,
                   help="a capacity in the units of --x (a finite number > 0), e.g. 2e8 trainable parameters; "
                        "repeat for several")
    p.add_argument("--target-rfid", metavar="Y", default=None,
                   help="the inverse question instead of --capacity: which capacity (and at what training cost) "
                        "reaches the metric value Y, in the units of --y (rfid unless --y says otherwise), with "
                        "the CI and the calibration interval")
    _ci_option(p, "the mean's CI and the PI")
    _json_option(p, "a list with one entry per capacity: capacity, mean, mean_se, mean_df, ci [low, high], "
                    "pi [low, high], obs_sd, pi_df, pi_note; with --target-rfid one object: target, x, y, form, "
                    "method, estimate, ci, calibration (null: unbounded on that side, see ci_bounded), supported, "
                    "beyond (why not, or null), notes, cost (per cost column: model, c0, c1, estimate, ci, "
                    "calibration), law")
    return p


BOOTSTRAP_WORDS = "restricted wild cluster bootstrap, capacities as clusters, 9,999 Webb draws"


def _ci_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ci", choices=("analytic", "bootstrap"), default="analytic",
                   help=f"{what}: analytic (default: t with Bell-McCaffrey df on CR2 errors) or bootstrap "
                        f"({BOOTSTRAP_WORDS}; linear-in-parameter forms only)")


def _target_value(text: str, y: str) -> float:
    """--target-rfid as a number: AnalysisError naming it for text, NaN or inf."""
    from analysis.errors import AnalysisError

    try:
        value = float(text)
    except ValueError:
        raise AnalysisError(f"--target-rfid {text!r}: expected a number, a value of {y!r} (the --y column), "
                            "e.g. 25") from None
    if not math.isfinite(value):
        raise AnalysisError(f"--target-rfid {text}: expected a finite value of {y!r} (the --y column), e.g. 25")
    return value


def _cmd_predict(args: argparse.Namespace) -> int:
    from analysis.errors import AnalysisError

    if (args.capacity is None) == (args.target_rfid is None):
        raise AnalysisError("predict: expected exactly one of --capacity C (the metric at a capacity) and "
                            "--target-rfid Y (the capacity that reaches a metric value)")
    if args.target_rfid is not None:
        return _cmd_target(args)
    capacities = _capacities(args)
    with warnings_as_lines(args.prog):
        _table, res = _fit(args)
        sf = res.get_prediction(capacities).summary_frame(args.alpha, method=args.ci)
    rows = [{"capacity": float(c), "mean": float(r["mean"]), "mean_se": float(r["mean_se"]),
             "mean_df": float(r["mean_df"]), "ci": [float(r["mean_ci_lower"]), float(r["mean_ci_upper"])],
             "pi": [float(r["obs_ci_lower"]), float(r["obs_ci_upper"])], "obs_sd": float(r["obs_sd"]),
             "pi_df": float(r["pi_df"]), "pi_note": r["pi_note"], "ci_method": args.ci}
            for c, (_, r) in zip(capacities, sf.iterrows())]
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
    for r in rows:
        if r["pi_note"]:
            print(f"note at {r['capacity']:.4g}: {r['pi_note']}")
    if args.ci == "bootstrap":
        print(f"intervals: {BOOTSTRAP_WORDS}")
    return 0


def _cmd_target(args: argparse.Namespace) -> int:
    """``predict --target-rfid Y``: the capacity that reaches Y, its intervals and its cost (``analysis.inverse``)."""
    from analysis.errors import AnalysisError
    from analysis.inverse import inverse_predict, with_cost

    target = _target_value(args.target_rfid, args.y)
    if args.ci == "bootstrap":
        raise AnalysisError("--ci bootstrap does not apply to --target-rfid: a linear law's intervals invert its "
                            "own bands, a saturating law's are bootstrapped already")
    with warnings_as_lines(args.prog):
        table, res = _fit(args)
        inv = with_cost(inverse_predict(res, target, alpha=args.alpha), table.points)
    if args.json:
        out = inv.to_dict()
        out["law"] = {"equation": res.law.equation, "params": {k: float(v) for k, v in res.params.items()},
                      "n": res.nobs, "r2": res.rsquared, "cov_type": res._cov_name()}
        out["dropped"] = [str(d) for d in table.dropped]
        _print_json(out)
        return 0
    print("\n".join(target_lines(inv, res)))
    return 0


def _bounds(lo: float, hi: float) -> str:
    """[lo, hi] with an open side as 0 / inf said in words."""
    if math.isnan(lo) or math.isnan(hi):
        return "none"
    return f"[{'0 (open)' if lo == 0 else f'{lo:.4g}'}, {'inf (open)' if hi == math.inf else f'{hi:.4g}'}]"


def target_lines(inv, res) -> list[str]:
    """``predict --target-rfid``'s text: the law, the capacity with its intervals, the costs, and any reason
    the answer is beyond what the law supports."""
    level = f"{1 - inv.alpha:.0%}"
    ps = ", ".join(f"{k} = {v:.5g}" for k, v in res.params.items())
    lines = [f"{res.law.equation}   ({ps}; C = {res.x}, y = {res.y}, n = {res.nobs}, R² = {res.rsquared:.4f})",
             f"{inv.y} = {inv.target:g} is reached at {inv.x} = "
             + (f"{inv.estimate:.4g}" if math.isfinite(inv.estimate) else "none (the law never reaches it)")]
    if math.isfinite(inv.estimate):
        how = ("capacities whose CI of the law's mean holds the target" if inv.method == "band" else
               f"percentile interval, {inv.B} bootstrap refits")
        lines += [f"  {level} CI:                   {_bounds(*inv.ci)}   ({how})",
                  f"  {level} calibration interval: {_bounds(*inv.calibration)}   (where one trained run lands at "
                  "the target" + (": capacities whose PI holds it)" if inv.method == "band" else ")")]
    for column, m in inv.costs.items():
        if math.isfinite(m.estimate):
            lines.append(f"  at a cost of {column} = {m.estimate:.4g}, CI {_bounds(*m.ci)}, calibration "
                         f"{_bounds(*m.calibration)}")
        lines.append(f"    cost model: {m.describe(inv.x)}")
    if inv.beyond:
        lines.append(f"BEYOND WHAT THE LAW SUPPORTS: {'; '.join(inv.beyond)}")
    lines += [f"note: {n}" for n in inv.notes]
    return lines


# --- drorae next ------------------------------------------------------------------------------

NEXT_EPILOG = """\
examples:
  drorae next results/default --target 1e8              # every candidate, best first
  drorae next results/default --target 1e8 --per trial  # ranked by the reduction alone, not per second
  drorae next results/default --target 1e8 --candidates 1e5,3e5,1e6 --interval ci --json

The criterion is a c-optimal sequential design: the expected variance of the law's mean at the
target C0. With x(C) the law's design row and w(C) = 1 / sigma^2(C) from the fit's noise model,
M = sum w x x' over the fitted rows, V = x0' M^-1 x0, and one more trial at C gives
V' = V - w (x0' M^-1 x)^2 / (1 + w x' M^-1 x). The expected PI width is 2 t sqrt(V' + sigma^2(C0))
(the mean's CI: 2 t sqrt(V')), t with df = distinct capacities - p under the default CR2 errors
(their Bell-McCaffrey df track capacities, not rows): a seed at a capacity already trained leaves df
as it was, a new capacity adds one. Candidates: every trained capacity (kind seed: one more seed)
and new ones (kind new): the geometric midpoints between adjacent capacities and 2 steps beyond the
largest at the median log spacing, never beyond the target, or --candidates. Where params is exactly
linear in expert_hidden, a new capacity is snapped to the nearest integer width (the width column).
--criterion tool ranks by the expected width of the tool's own interval instead: the same V', the
Bell-McCaffrey df the design will have, and the noise model's uncertainty at the target as the trial
leaves it (one more degree of freedom at its capacity).

Cost: ln(seconds) = c0 + c1 log10(C), fitted to the completed units' train_seconds + eval_seconds
(all trial rows of a searched unit); with fewer than 2 capacities that have seconds, the median
unit's seconds. --per cost (the default) ranks by reduction per expected second and needs those
columns; --per trial ranks by the reduction alone. The saturating law has no design matrix: use a
linear-in-parameters form.
"""


def add_next(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "next", _cmd_next, NEXT_EPILOG,
        help="rank the capacities worth training next by how much one more trial shrinks the interval at a target",
        description="Fit the law to RESULTS (as `drorae fit` does) and rank candidate capacities (new widths, and\n"
                    "one more seed at those trained) by the expected shrinking of the prediction interval (or the\n"
                    "mean's CI) at --target per expected second of training (or per trial).")
    p.add_argument("--target", metavar="C", required=True,
                   help="the capacity whose prediction should get surer, in the units of --x (a finite number > 0), "
                        "e.g. 1e8 trainable parameters")
    p.add_argument("--candidates", metavar="C1,C2,...", default=None,
                   help="new capacities to consider, comma-separated, in the units of --x (default: the geometric "
                        "midpoints of the trained ones and 2 steps beyond the largest, never beyond --target); "
                        "every trained capacity is a candidate for one more seed besides")
    p.add_argument("--per", metavar="cost|trial", default="cost",
                   help="cost (default): rank by the expected reduction per expected second (needs train_seconds / "
                        "eval_seconds in the table); trial: by the reduction alone")
    p.add_argument("--interval", metavar="pi|ci", default="pi",
                   help="pi (default): the prediction interval of one new run at --target; ci: the law's mean's")
    p.add_argument("--criterion", metavar="c-optimal|tool", default="tool",
                   help="tool (default): the expected width of the tool's own interval (the c-optimal variance "
                        "with the design's Bell-McCaffrey df and, for the PI, the noise model's uncertainty at the "
                        "target as the trial would leave it); c-optimal: the textbook expected width, t with df = "
                        "capacities - p (bench/results.md compares both)")
    _json_option(p, "one object: criterion, law, target, now (model-based width), actual (the fit's CI and PI "
                    "at the target), cost_model, width_map, candidates (ranked: capacity, kind, width, seconds, "
                    "width_now, width_after, reduction, reduction_per_second or _per_trial, df_after, rank)")
    return p


def _target(text: str) -> float:
    return _capacity(text, "--target", "1e8")


def _candidate_list(text: str | None) -> list[float] | None:
    """--candidates as numbers: AnalysisError naming --candidates and the item for text, NaN, inf or <= 0."""
    from analysis.errors import AnalysisError

    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise AnalysisError(f"--candidates {text!r}: expected comma-separated capacities, e.g. 1e5,3e5")
    out = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise AnalysisError(f"--candidates: {item!r} is not a number; expected comma-separated capacities "
                                "> 0, e.g. 1e5,3e5") from None
        if not (math.isfinite(value) and value > 0):
            raise AnalysisError(f"--candidates: {item} is not a finite capacity > 0; expected comma-separated "
                                "capacities in the units of --x, e.g. 1e5,3e5")
        out.append(value)
    return out


def _cmd_next(args: argparse.Namespace) -> int:
    from analysis import design
    from analysis.errors import AnalysisError
    from analysis.load import _read

    target = _target(args.target)
    candidates = _candidate_list(args.candidates)
    for value, allowed, what in ((args.per, design.PER, "--per"), (args.interval, design.INTERVALS, "--interval"),
                                 (args.criterion, tuple(design.CRITERIA), "--criterion")):
        if value not in allowed:
            raise AnalysisError(f"{what} {value!r}: expected one of {', '.join(allowed)}")
    if args.form != "auto" and not laws.get_law(args.form).linear:
        raise design.not_linear(f"the {args.form!r} law")     # before fitting it: no fit's warnings first
    with warnings_as_lines(args.prog):
        table, res = _fit(args)
        design.check_linear(res)
        rows = _read(args.results)    # every trial row, read again: a searched unit's unevaluated trials cost too
        rk = design.rank(res, table, target, candidates, rows=rows, per=args.per, interval=args.interval,
                         alpha=args.alpha, criterion=args.criterion)
    if args.json:
        out = rk.to_dict()
        out["dropped"] = [str(d) for d in table.dropped]
        _print_json(out)
        return 0
    print("\n".join(next_lines(rk)))
    return 0


def next_lines(rk) -> list[str]:
    """``drorae next``'s text: the criterion and law, the intervals now, the cost model, the ranked table."""
    import pandas as pd

    level = f"{1 - rk.alpha:.0%}"
    what = "prediction interval (PI) of one new run" if rk.interval == "pi" else "confidence interval (CI) of the mean"
    name = rk.interval.upper()
    a = rk.actual
    lines = [f"Design criterion: {rk.criterion}",
             f"  ranked by the expected reduction of the {level} {what} at {rk.x} = {rk.target:.4g}, "
             f"{'per expected second of training' if rk.per == 'cost' else 'per trial'}",
             f"Law: {rk.law}; C = {rk.x}, y = {rk.y}",
             f"Now at {rk.target:.4g} (the fit's own intervals): mean {a['mean']:.5g}, "
             f"{level} CI [{a['ci'][0]:.5g}, {a['ci'][1]:.5g}] (width {a['ci_width']:.4g}), "
             f"{level} PI [{a['pi'][0]:.5g}, {a['pi'][1]:.5g}] (width {a['pi_width']:.4g})",
             f"Model-based {name} width now: {rk.now['width']:.4g} (t with df {rk.now['df']:g}: "
             f"{rk.df_words})",
             "Cost: " + (rk.cost.describe(rk.x) if rk.cost is not None else "no train_seconds / eval_seconds: none")]
    if rk.widths is not None and rk.x != "expert_hidden":
        layers = "" if rk.widths.fused_layers is None else f" at fused_layers = {rk.widths.fused_layers:g}"
        lines.append(f"Widths: {rk.x} = {rk.widths.intercept:.10g} + {rk.widths.slope:.10g} * expert_hidden{layers}; "
                     "new capacities snapped to the nearest integer width")
    t = rk.table
    has_width = "width" in t.columns
    score = "per second" if rk.per == "cost" else "per trial"
    lines += ["", f"{'rank':>4}{'capacity':>12}{'kind':>6}" + (f"{'width':>8}" if has_width else "") +
              f"{'seconds':>10}{name + ' now':>10}{name + ' after':>10}{'reduction':>11}{score:>12}"]
    for _, r in t.iterrows():
        width = "" if not has_width else f"{'' if r['width'] is pd.NA else int(r['width']):>8}"
        lines.append(f"{int(r['rank']):>4}{r['capacity']:>12.4g}{r['kind']:>6}{width}{r['seconds']:>10.4g}"
                     f"{r['width_now']:>10.4g}{r['width_after']:>10.4g}{r['reduction']:>11.4g}"
                     f"{r[rk.score]:>12.4g}")
    lines += [f"note: {n}" for n in rk.notes]
    return lines


# --- drorae backtest -------------------------------------------------------------------------

BACKTEST_EPILOG = """\
examples:
  drorae backtest results/default --holdout 2       # fit without the 2 largest capacities, predict them
  drorae backtest results/default --holdout 1 --form power --json
  drorae backtest results/default --rollout         # fit the k smallest, predict every larger one, k = 3, 4, ...

Each held-out trial gets the prediction, its (1 - alpha) prediction interval, the error
(predicted - truth, and relative to the truth) and whether the truth fell inside the interval.
At least 3 distinct capacities must remain to fit.

--rollout (an expanding window, as in OLMo's ladder analysis): for every k from 3 up, the law
is fitted on the k smallest distinct capacities and predicts the trials at every larger one.
Per split and over all splits pooled: bias = mean(predicted - true), the mean absolute error,
the weighted relative error = sum d |predicted - true| / |true|  /  sum d, each held-out trial
weighted by d = log10(C / C_max), the decades between its capacity C and the largest capacity
C_max of the split's fit (so a miss far out counts more), and the share of trials inside their
prediction interval. Capacities must be > 0; splits the law cannot be fitted on are listed.
"""


def add_backtest(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "backtest", _cmd_backtest, BACKTEST_EPILOG,
        help="fit on all but the largest capacities, predict those, check the intervals (or --rollout)",
        description="Backtest the law on RESULTS: fit it without the --holdout largest distinct capacities and\n"
                    "compare its predictions there with the trials that were run; or, with --rollout, do so\n"
                    "for every split of the capacities into the k smallest and the larger ones.")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--holdout", metavar="K", type=int, default=None,
                     help="how many of the largest distinct capacities to hold out (default: 1)")
    how.add_argument("--rollout", action="store_true",
                     help="fit the k smallest capacities and predict every larger one, for k = 3, 4, ...: "
                          "bias, weighted relative error and PI coverage per split and overall")
    _json_option(p, "one object: form, holdout, alpha, mae, coverage and rows (capacity, truth, mean, pi, "
                    "error, rel_error, covered); with --rollout: form, weighting, splits (k, fitted_max, bias, "
                    "mae, weighted_rel_error, coverage, rows per predicted capacity), overall, skipped")
    return p


def _cmd_backtest(args: argparse.Namespace) -> int:
    if args.rollout:
        return _cmd_rollout(args)
    from analysis import backtest

    holdout = 1 if args.holdout is None else args.holdout
    with warnings_as_lines(args.prog):
        table = _load(args)
        bt = backtest(table, holdout=holdout, form=args.form, alpha=args.alpha, weights=args.weights)
    rows = [{"capacity": float(r.capacity), "truth": float(r.truth), "mean": float(r.mean),
             "pi": [float(r.pi_lower), float(r.pi_upper)], "error": float(r.error),
             "rel_error": float(r.rel_error), "covered": bool(r.covered)} for r in bt.itertuples()]
    summary = {"form": bt.attrs.get("form", args.form), "x": table.x, "y": table.y, "holdout": holdout,
               "alpha": args.alpha, "mae": float(bt["error"].abs().mean()),
               "mean_rel_error": float(bt["rel_error"].abs().mean()), "coverage": float(bt["covered"].mean()),
               "rows": rows}
    if args.json:
        _print_json(summary)
        return 0
    level = f"{1 - args.alpha:.0%}"
    print(f"Backtest of {summary['form']!r} ({table.y} over {table.x}): fitted without the {holdout} "
          f"largest capacit{'y' if holdout == 1 else 'ies'}")
    print(f"{'capacity':>12}{'truth':>12}{'predicted':>12}{level + ' PI':>26}{'error':>11}{'rel':>9}  inside")
    for r in rows:
        pi = f"[{r['pi'][0]:.5g}, {r['pi'][1]:.5g}]"
        print(f"{r['capacity']:>12.4g}{r['truth']:>12.5g}{r['mean']:>12.5g}{pi:>26}{r['error']:>11.4g}"
              f"{r['rel_error']:>9.2%}  {'yes' if r['covered'] else 'NO'}")
    print(f"mean |error| {summary['mae']:.4g}, mean |relative error| {summary['mean_rel_error']:.2%}, "
          f"{sum(r['covered'] for r in rows)}/{len(rows)} inside their {level} prediction interval")
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    """``backtest --rollout``: the splits' table and the pooled line, or all of it as JSON."""
    from analysis.backtest import rollout

    with warnings_as_lines(args.prog):
        table = _load(args)
        ro = rollout(table, form=args.form, alpha=args.alpha, weights=args.weights)
    if args.json:
        _print_json(ro.to_dict())
        return 0
    level = f"{1 - args.alpha:.0%}"
    print(f"Rollout backtest of {args.form!r} ({table.y} over {table.x}): fit the k smallest capacities, "
          "predict every larger one")
    print(f"{'k':>4}{'fitted up to':>14}{'form':>12}{'runs':>7}{'reach':>7}{'bias':>11}{'mean |err|':>12}"
          f"{'w. rel err':>12}{'in ' + level + ' PI':>11}")

    def line(head: str, top: str, form: str, m: dict) -> str:
        return (f"{head:>4}{top:>14}{form:>12}{m['n']:>7}{m['max_decades']:>7.2f}{m['bias']:>11.4g}{m['mae']:>12.4g}"
                f"{m['weighted_rel_error']:>12.2%}{m['coverage']:>11.1%}")

    for s in ro.splits:
        print(line(str(s.k), f"{s.fitted_max:.4g}", s.form, s.metrics()))
    overall = ro.overall()
    print(line("all", f"{overall['splits']} split{'s' if overall['splits'] != 1 else ''}", "", overall))
    for k, why in ro.skipped:
        print(f"split k = {k} not fitted: {why}")
    print("reach: decades beyond the largest fitted capacity; w. rel err: |relative error| weighted by the reach "
          "(drorae backtest --help)")
    return 0


# --- drorae hparams --------------------------------------------------------------------------

HPARAMS_EPILOG = """\
examples:
  drorae hparams results/paper_capacity                   # the learning-rate law, its CI, each point's optimum
  drorae hparams results/paper_capacity --capacity 2e8 --capacity 1e9
  drorae hparams results/paper_capacity --where fused_layers=6 --json
  make hparams RESULTS_DIR=results/paper_capacity CAPACITY=2e8

Fitted to every completed search trial of the grid (a spec with a search block), not only each
point's winner; pruned trials (their metric is partial), failed ones and controls are left out,
and where the table has lr_source only its 'searched' trials (a 'law' trial is one run at a
transferred value). Per point (point_id, seeds pooled) the metric is fitted as a quadratic in
u = log10(value); with 4+ distinct values, a positive curvature and the vertex inside the tried
range, the optimum is the vertex -b1/(2 b2) with its delta-method standard error (method
vertex); otherwise the best value tried, without one (method best). The law is
log10(value*) = a + b log10(C) over the points: weighted by 1/(se^2 + tau^2) (tau^2 the law's
misfit, DerSimonian-Laird; Knapp-Hartung scale) when every optimum has a standard error, else
unweighted; t intervals with points - 2 df (undefined with 2 points: the line then passes
through both). Predictions are 10^(a + b log10 C) with that interval mapped back.

Bad input (no hp.<param> column, fewer than 2 searched points, a value or capacity <= 0) stops
with one line naming it, exit code 2.
"""


def _hparams_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("results", metavar="RESULTS", help=RESULTS_HELP)
    p.add_argument("--param", metavar="NAME", default="lr",
                   help="the searched hyperparameter, the table's column hp.NAME (default: lr)")
    p.add_argument("--metric", metavar="COLUMN", default="val_l1",
                   help="the selection metric the search minimized (default: val_l1)")
    p.add_argument("--x", metavar="COLUMN", default="params",
                   help="capacity column (default: params, the trainable parameters; e.g. expert_hidden)")
    p.add_argument("--where", metavar="KEY=VALUE", action="append", default=[],
                   help="only the rows whose column KEY equals VALUE, e.g. --where fused_layers=6; repeat (or "
                        "join with commas) for several")
    p.add_argument("--capacity", metavar="C", action="append", default=[],
                   help="a capacity to predict the optimum at, in the units of --x (a finite number > 0); "
                        "repeat for several")
    p.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                   help="intervals at level 1 - A (default: 0.05, i.e. 95%%)")
    return p


def add_hparams(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "hparams", _cmd_hparams, HPARAMS_EPILOG, options=_hparams_options(),
        help="fit the best learning rate (a searched hyperparameter) against capacity, and predict it",
        description="Locate each searched point's optimal hyperparameter from all its completed search trials,\n"
                    "fit log10(optimum) = a + b log10(capacity) over the points and print the law, its\n"
                    "intervals, each point's optimum and the predicted optimum at each --capacity.")
    _json_option(p, "one object: param, metric, x, equation, params, bse, conf_int, df_resid, weighting, tau2, "
                    "points (point_id, capacity, optimum, optimum_se_log10, method, n_trials, n_values, "
                    "best_value), skipped, notes, predictions (capacity, mean, ci [low, high])")
    return p


def _cmd_hparams(args: argparse.Namespace) -> int:
    from analysis.errors import AnalysisError
    from analysis.hparams import fit_hparam_law
    from analysis.load import _apply_where, _drop_duplicates, _read

    capacities = _capacities(args)
    source = str(args.results)
    with warnings_as_lines(args.prog):
        df = _read(args.results).reset_index(drop=True)
        if df.empty:
            raise AnalysisError(f"{source}: no rows; expected one row per trial")
        df, _ = _drop_duplicates(df, source)
        grid = df[df["kind"].astype(str) != "control"] if "kind" in df.columns else df
        grid = _apply_where(grid, args.where or None, source)
        law = fit_hparam_law(grid, param=args.param, metric=args.metric, x=args.x, alpha=args.alpha, source=source)
        sf = law.get_prediction(capacities).summary_frame(args.alpha) if capacities else None
    rows = [] if sf is None else [
        {"capacity": float(c), "mean": float(r["mean"]), "mean_se_log10": float(r["mean_se_log10"]),
         "df": float(r["df"]), "ci": [float(r["mean_ci_lower"]), float(r["mean_ci_upper"])]}
        for c, (_, r) in zip(capacities, sf.iterrows())]
    if args.json:
        _print_json({**law.to_dict(args.alpha), "predictions": rows})
        return 0
    print(law.summary(args.alpha))
    if rows:
        level = f"{1 - args.alpha:.0%}"
        print(f"\nPredicted {args.param}* (10^(a + b log10 {args.x}), its {level} CI mapped back):")
        print(f"{'capacity':>14}{args.param + '*':>14}{level + ' CI':>28}")
        for r in rows:
            ci = f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
            print(f"{r['capacity']:>14.5g}{r['mean']:>14.4g}{ci:>28}")
    return 0


# --- drorae figures --------------------------------------------------------------------------

FIGURES_EPILOG = """\
examples:
  drorae figures results/default --out figures/     # the paper's panels, PDF + PNG
  drorae figures results/default --out figures/ --form power --alpha 0.1
  make figures RESULTS_DIR=results/default

The panels: expert-capacity scaling, layer-count scaling, the unified law over trainable
parameters and, where the table has train_flops, the metric against training cost (each grid
run at its training FLOPs; a control that trained nothing, as the RAE baseline, is a labelled
line: "no training cost"), each law fitted once; points with error bars (± 2 se of the mean where the table has
<y>_se, else ± the std over seeds: the legend says which), the fitted line with its CI band and,
lighter, its prediction interval, R² and slope in the legend (one legend for the combined
figure), the control runs drawn alike in every panel (the RAE baseline as a horizontal line),
never fitted.
"""


def add_figures(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "figures", _cmd_figures, FIGURES_EPILOG, weights=False,
        help="draw the paper's scaling panels (PDF + PNG) from a sweep's results",
        description="Fit the law to each panel of RESULTS and draw the scaling figures into DIR, each as\n"
                    "PDF and PNG (the fits are the ones `drorae fit` prints; --alpha sets the CI band).")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder for the figures (created if missing)")
    return p


def _cmd_figures(args: argparse.Namespace) -> int:
    from analysis.panels import fit_panels
    from analysis.plots import scaling_figures

    check_output_dir(args.out, "--out")  # before anything is read or computed
    with warnings_as_lines(args.prog):
        table = _load(args)
        paths = scaling_figures(table, args.out, alpha=args.alpha, panels=fit_panels(table, form=args.form),
                                what="--out")
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


def add_report(sub) -> argparse.ArgumentParser:
    p = _command(
        sub, "report", _cmd_report, REPORT_EPILOG, weights=False,
        description="Write a Markdown report of RESULTS: the trials, the fitted law with its intervals,\n"
                    "predictions at the --capacity values, a held-out and a rollout backtest (see `drorae\n"
                    "backtest --help`), and the figures (the panels, and the rollout's error against its reach).",
        help="write a Markdown report: results table, fits, predictions, backtests, figures")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="the report file (default: RESULTS/report.md for a results directory, else ./report.md)")
    p.add_argument("--figures", metavar="DIR", default=None,
                   help="where the figures go (default: figures/ next to the report)")
    p.add_argument("--capacity", metavar="C", action="append", default=[],
                   help="a capacity to predict in the report (a finite number > 0); repeat for several "
                        "(default: 10x and 100x the largest trained capacity)")
    p.add_argument("--holdout", metavar="K", type=int, default=1,
                   help="largest capacities held out in the report's backtest (default: 1)")
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
    capacities = _capacities(args)
    # Both outputs checked before anything is read or computed: a report whose figures cannot be written
    # is refused whole. The --figures default (figures/ beside the report) is named as that.
    check_output_file(out, "--out")
    check_output_dir(figures, "--figures" if args.figures is not None else "the figures directory (--figures)")
    with warnings_as_lines(args.prog):
        path = write_report(_load(args), out, figures_dir=figures, capacities=tuple(capacities) or None,
                            holdout=args.holdout, alpha=args.alpha, form=args.form)
    print(path)
    return 0


# --- the command line ------------------------------------------------------------------------

# The analysis commands, in the order `drorae --help` lists them; each adds its parser and sets `func`.
COMMANDS: tuple[Callable, ...] = (add_fit, add_predict, add_next, add_hparams, add_backtest, add_figures, add_report)


def build_parser(prog: str = "python -m analysis") -> argparse.ArgumentParser:
    """The analysis commands alone (``drorae`` has them too, beside ``sweep``)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Scaling-law analysis of a sweep's results (the same commands as `drorae fit` etc.).",
        epilog="examples:\n"
               f"  {prog} fit results/default\n"
               f"  {prog} predict results/default --capacity 2e8\n"
               f"  {prog} report results/default\n\n"
               f"'{prog} COMMAND --help' explains a command's options.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis``; returns the exit code."""
    return run_command(build_parser(), argv)
