"""Orchestration overhead of a sweep: the same trials through the whole tool against a plain loop.

Side by side in one run, with the shared work already cached (B's trials split around A):
  A. ``run_sweep``: Ray start, shared-work lookup, Tune trials with checkpoints, MLflow tracking,
     the results table;
  B. the same trials called directly (``sweeper.trial.train_trial``) one after another in this
     process, with the same threads, data and evaluation.
The overhead is (A - B) / A (target: at most 10%). To compare like with like, A runs one trial at a
time with all the cores (``resources.cpu`` = cores, ``max_concurrent`` = 1), as B does.

    python bench/orchestration.py [--spec sweeps/default.yaml] [--widths 2,32,512]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/default.yaml")
    ap.add_argument("--widths", default="2,32,512",
                    help="expert widths to run (a subset keeps it short); 'spec': the spec's whole grid and controls")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a spec override for both sides, e.g. resources.reuse_actors=true (repeatable)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
    from sweeper.plan import build_plan
    from sweeper.run import run_sweep
    from sweeper.shared import prepare
    from sweeper.spec import load_spec
    from sweeper.trial import train_trial
    from sweeper.trial_config import TrialConfig

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="drorae-bench-"))
    overrides = [f"resources.cpu={cores}", "resources.max_concurrent=1", f"results_dir={tmp / 'results'}"]
    if args.widths != "spec":
        overrides += [f"grid.expert_hidden=[{args.widths}]", "controls.runs=[]"]
    overrides += args.set
    plan = build_plan(load_spec(args.spec, overrides))
    prepare(plan)  # warm the shared caches so neither side pays for them

    # B: the trials alone, half of them before A and half after (B A B), so that a drift of the
    # machine's speed over the run hits both sides alike.
    torch.set_num_threads(cores)
    direct_compute, direct, per_trial, shared = 0.0, 0.0, {}, None

    def plain_loop(units):
        nonlocal direct_compute, direct, shared
        t = time.perf_counter()
        shared = shared or prepare(plan)  # its lookup once, as the sweep's
        for unit in units:
            work = tmp / "direct" / unit.unit_id
            work.mkdir(parents=True)
            m = train_trial(TrialConfig.of(unit, {}, True, 0), plan, shared, lambda m: None, work, lambda step: None)
            direct_compute += m["train_seconds"] + m.get("eval_seconds", 0.0)
            per_trial[unit.unit_id] = {"direct": m["train_seconds"] + m.get("eval_seconds", 0.0)}
        direct += time.perf_counter() - t

    plain_loop(plan.units[0::2])

    # A: the whole tool.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    run_sweep(plan)
    sweep = time.perf_counter() - t
    plain_loop(plan.units[1::2])
    timing = json.loads((tmp / "results" / plan.spec.name / "timing.json").read_text())
    import pandas as pd

    table = pd.read_parquet(tmp / "results" / plan.spec.name / "trials.parquet")
    compute = float((table.train_seconds.fillna(0) + table.eval_seconds.fillna(0)).sum())
    startup = float(table.startup_seconds.fillna(0).sum())
    for row in table.itertuples():
        per_trial.setdefault(row.unit_id, {})["ray"] = (row.train_seconds or 0.0) + (row.eval_seconds or 0.0)
    waits = float(table.report_seconds.fillna(0).sum())
    overhead = (sweep - direct) / sweep
    outside = (sweep - compute) / sweep  # the tool's own time: immune to the trials' speed varying
    parts = {"Ray start": timing["ray_start_seconds"],
             "shared-work lookup (the MLflow parent run beside it)": timing["shared_seconds"],
             "Tune around the trials (actors, checkpoints, results)": timing["tune_seconds"] - compute,
             "  of which: new trial processes starting (imports)": startup,
             "  of which: training waiting in tune.report (results, checkpoints)": waits,
             "end (best-trial evaluation, MLflow reconciliation)": timing["end_seconds"]}
    print(f"{len(plan.units)} trials of {args.spec} (h = {args.widths}), one at a time on {cores} cores:")
    print(f"  plain loop over the trials     {direct:7.1f} s")
    print(f"  drorae sweep (Ray+Tune+MLflow) {sweep:7.1f} s, of which trial compute {compute:.1f} s and")
    for name, sec in parts.items():
        print(f"    {name:66s} {sec:6.1f} s")
    print(f"    {'(the MLflow parent run took':66s} {timing['mlflow_start_seconds']:6.1f} s)")
    print(f"  the same trial compute took {compute:.1f} s inside Ray, {direct_compute:.1f} s alone "
          f"({(compute / direct_compute - 1) * 100:+.1f}%: cores shared with Ray and the driver)")
    print(f"  orchestration overhead {overhead * 100:.1f}% of the sweep's wall time (target <= 10%); "
          f"time outside trial compute {outside * 100:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"direct_s": direct, "sweep_s": sweep, "overhead": overhead,
                                               "outside_compute": outside,
                                               "trial_compute_s": compute,
                                               "direct_compute_s": direct_compute,
                                               "per_trial_compute_s": per_trial, "parts": parts, **timing}, indent=1))


if __name__ == "__main__":
    main()
