"""The analysis at 100,000 rows: `drorae fit --ci bootstrap`, `drorae fit --form auto` and `drorae report`.

Builds a sweep-shaped results table of ``--rows`` trials (default 100,000) and writes it as the
loader reads it (``trials.parquet``, or ``trials.csv`` with ``--format csv``): a width scan of 40
expert widths at 4 fused layers and a layer scan (2, 4, 8) at one width, the seeds filling the
rows, rfid = 40 - 2 log10(params) + noise whose sd grows with the capacity, each run's rfid_se,
two controls and a few failed trials. Each command then runs in a fresh Python process (the
command's own ``main`` called in-process there, after the imports), which reports its wall time
and its peak resident memory (``ru_maxrss``; the imports alone are printed beside it).

Targets (issue 13): fit --ci bootstrap within 15 s and 1 GB, fit --form auto within 30 s, report
(with its figures) within 60 s.

    python bench/analysis_scale.py [--rows 100000] [--format parquet|csv] [--only report] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
#: (name, argv after RESULTS, target seconds, target peak memory in MB or None)
COMMANDS = (("fit --ci bootstrap", ["fit", "{results}", "--ci", "bootstrap", "--json"], 15.0, 1024.0),
            ("fit --form auto", ["fit", "{results}", "--form", "auto", "--json"], 30.0, None),
            ("report", ["report", "{results}", "--out", "{tmp}/report.md"], 60.0, None))
WIDTHS = np.geomspace(8, 8192, 40).round()


def build_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A sweep's trials table with ``rows`` grid trials (the cells' seeds fill it), controls and failures."""
    rng = np.random.default_rng(seed)
    cells = [(4, w) for w in WIDTHS] + [(k, WIDTHS[5]) for k in (2, 8)]
    i = np.arange(rows)
    k = np.array([c[0] for c in cells])[i % len(cells)]
    w = np.array([c[1] for c in cells])[i % len(cells)]
    s = i // len(cells)
    params = (k * (w * 1000 + 5000)).astype(float)
    sd = 0.2 * (1 + (np.log10(params) - 4.5) / 3)             # the noise sd grows with the capacity
    rfid = 40 - 2 * np.log10(params) + rng.normal(0, 1, rows) * sd
    point = np.char.add(np.char.add("h", w.astype(int).astype(str)), np.char.add("-k", k.astype(str)))
    df = pd.DataFrame({"trial_id": np.char.add(np.char.add(point, "-s"), s.astype(str)), "point_id": point,
                       "kind": "grid", "status": "completed", "expert_hidden": w, "fused_layers": k, "seed": s,
                       "params": params, "rfid": rfid, "rfid_se": np.abs(rng.normal(0.05, 0.01, rows)),
                       "psnr": 30.0, "ssim": 0.9, "lpips": 0.01, "best": True})
    df.loc[rng.choice(rows, 5, replace=False), ["status", "rfid"]] = ["failed", np.nan]
    controls = pd.DataFrame({"trial_id": ["rae-s0-t0", "decoder_only-s0-t0"], "point_id": ["rae", "decoder_only"],
                             "kind": "control", "status": "completed", "expert_hidden": np.nan, "fused_layers": 0,
                             "seed": 0, "params": [0.0, 4e5], "rfid": [35.5, 36.0], "rfid_se": 0.05, "psnr": 30.0,
                             "ssim": 0.9, "lpips": 0.01, "best": True})
    return pd.concat([df, controls], ignore_index=True)


def child(argv: list[str]) -> None:
    """Run one command in this process and print its seconds and peak memory as JSON (the last line)."""
    from analysis.cli import build_parser, run_command

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    devnull = open(os.devnull, "w")
    stdout, sys.stdout = sys.stdout, devnull
    t0 = time.perf_counter()
    try:
        rc = run_command(build_parser(prog="drorae"), argv)
    finally:
        sys.stdout = stdout
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_mb": peak, "imports_mb": base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="grid trials in the table")
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--only", action="append", choices=[c[0] for c in COMMANDS], metavar="COMMAND",
                    help="run only this command (repeat for several): " + ", ".join(repr(c[0]) for c in COMMANDS))
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        table = build_table(args.rows)
        path = Path(tmp) / f"trials.{args.format}"
        table.to_parquet(path) if args.format == "parquet" else table.to_csv(path, index=False)
        print(f"{len(table):,} rows ({args.rows:,} grid trials at {table.params.nunique() - 2} capacities), "
              f"{path.name} {path.stat().st_size / 1e6:.1f} MB")
        print(f"{'command':<22}{'seconds':>9}{'target':>8}{'peak MB':>9}{'(imports)':>10}{'target':>8}  met")
        for name, argv, target_s, target_mb in COMMANDS:
            if args.only and name not in args.only:
                continue
            argv = [a.format(results=path, tmp=tmp) for a in argv]
            proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True,
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                m = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                print(f"{name:<22} failed:\n{proc.stderr[-2000:]}")
                continue
            met = m["rc"] == 0 and m["seconds"] <= target_s and (target_mb is None or m["peak_mb"] <= target_mb)
            print(f"{name:<22}{m['seconds']:>9.1f}{target_s:>8.0f}{m['peak_mb']:>9.0f}{m['imports_mb']:>10.0f}"
                  f"{target_mb or '':>8}  {'yes' if met else 'NO'}" + ("" if m["rc"] == 0 else f" (exit {m['rc']})"))
            results.append({"command": name, **m, "target_s": target_s, "target_mb": target_mb, "met": met})
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "format": args.format, "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
