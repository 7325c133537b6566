"""``fit(form="auto")`` at 100,000 rows: time and peak memory, as ``drorae fit --form auto`` runs it.

Two tables of y = 0.5 + 3 C^-0.3 + N(0, 0.02^2) over C in 1e4..1e8 (saturating data, so the
saturating law is identified and its profile intervals are computed: the slow case):
20 capacities x 5,000 seeds, and 100,000 distinct capacities. Each is timed end to end: the
cross-validated choice of form (every form's folds), the chosen fit and its text summary (which
computes the intervals). Wall and CPU time (CPU time is what a busy machine does not inflate);
peak memory is Python's (tracemalloc, numpy's arrays included) during the run. Target (issue 13):
within 30 s.

    python bench/analysis_auto.py [--rows 100000] [--sigma 0.02] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import fit


def table(C: np.ndarray, sigma: float, seed: int = 0) -> pd.DataFrame:
    y = 0.5 + 3 * C ** -0.3 + np.random.default_rng(seed).normal(0, sigma, C.size)
    return pd.DataFrame({"params": C, "rfid": y})


def run(df: pd.DataFrame) -> dict:
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit(df, form="auto")
    res.summary()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": len(df), "capacities": int(df.params.nunique()), "form": res.form, "seconds": seconds,
            "cpu_seconds": cpu, "peak_mib": peak / 2 ** 20,
            "cv_rmse": {k: float(v) for k, v in res.auto_scores.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    seeds = args.rows // 20
    designs = {f"20 capacities x {seeds:,} seeds": np.repeat(np.geomspace(1e4, 1e8, 20), seeds),
               f"{args.rows:,} distinct capacities": np.geomspace(1e4, 1e8, args.rows)}
    out = {}
    for name, C in designs.items():
        r = run(table(C, args.sigma))
        out[name] = r
        print(f"{name:>32}: {r['seconds']:6.2f} s ({r['cpu_seconds']:.2f} s CPU), peak {r['peak_mib']:6.1f} MiB, "
              f"chose {r['form']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
