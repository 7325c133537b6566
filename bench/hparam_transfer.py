"""The hyperparameter law's backtest on a real sweep: the largest searched width at the law's lr vs its own search.

Runs ``sweeper.transfer.backtest_transfer`` on ``--spec`` (default: the embedded default sweep) with the
search block ``--search`` (default: the learning rate searched at h = 2, 32 and 512, 4 trials each at the
same log-spaced rates, unpruned; the other three widths take the law's lr): the sweep, then h = 512 once
more at the lr the law of h = 2 and 32 predicts. Reported: both learning rates and rFIDs (each with its
bootstrap measurement error), whether the transferred point is within its own measurement error of the
searched one, and the trials a sweep that searched only h = 2 and 32 needs against one that searches every
width. Nothing is timed: the numbers are the same on a busy machine.

    python bench/hparam_transfer.py [--spec sweeps/default.yaml] [--results DIR] [--json out.json]

Its results stay in ``--results`` (default results/): ``drorae hparams results/<name>`` draws the law.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# sampler: grid: every searched width tries the same 4 rates, log-spaced over the range (random draws left a
# width with no rate above 2e-3 and its optimum at the edge of what it tried); pruner: none: the law locates
# each width's optimum from all of its trials (a pruned trial has no final loss)
SEARCH = ("search={params: {lr: {type: loguniform, low: 3.0e-4, high: 3.0e-2}}, n_trials: 4, sampler: grid, "
          "pruner: none, transfer: law, searched: [2, 32, 512]}")


def main() -> int:
    from sweeper.spec import SpecError
    from sweeper.transfer import as_json, backtest_transfer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/default.yaml")
    ap.add_argument("--search", default=SEARCH, help=f"the search block, as an override (default: {SEARCH})")
    ap.add_argument("--name", default=None, help="the sweep's name (default: <the spec's>-hparams)")
    ap.add_argument("--results", default="results", help="results_dir of both sweeps (default: results)")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more spec overrides")
    args = ap.parse_args()
    from analysis.cli import configure_logging
    from sweeper.spec import load_spec

    configure_logging(verbose=False)  # the sweeps' lines, as `drorae sweep` shows them

    try:
        name = args.name or f"{load_spec(args.spec).name}-hparams"
        overrides = [args.search, f"name={name}", f"results_dir={args.results}", "stop=null", *args.overrides]
        t = time.perf_counter()
        result = backtest_transfer(args.spec, overrides)
    except SpecError as err:
        print(f"bench/hparam_transfer.py: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"({time.perf_counter() - t:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({**as_json(result), "spec": args.spec, "search": args.search}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
