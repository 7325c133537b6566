"""The embedded default sweep's first run, old code against new, side by side (issue 17's B-A-B).

Runs ``python -m sweeper sweep <spec>`` from empty caches (a fresh ``DRORAE_CACHE`` and results
folder per run; the virtual environment is this one, so it is not timed) for each revision in
``--order``: by default the base (B), the new code (A), the base again (B), one after another on
this machine, so that a machine's drift shows as the gap between the two B runs. Each revision runs
from its own ``git archive`` export, imported first through PYTHONPATH (Ray's workers inherit it).

Per run: the wall time of ``python -m model fetch`` (the offline assets into the empty cache, what
``make install`` adds to the venv) and the sweep, the sweep's own phases (timing.json: Ray start, shared work by
part, the trials), the trials' summed train and eval seconds (trials.parquet), and the law
(law.json). Then the ratio A / mean(B) of each, and whether the law held in substance: the same
widths, A's slope within B's slope CI, A's CI still excluding 0, each point's rfid_se at most 1.3x
B's.

    python bench/default_sweep.py [--base 7d0ad6e] [--new HEAD] [--order BAB] [--spec sweeps/default.yaml]
                                  [--set KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# main before issue 17 (2026-12-03): the baseline its 0.5x target is measured against
BASE = "7d0ad6e"
SE_LIMIT = 1.3
TARGET = 0.5


def export(rev: str, into: Path) -> str:
    """``git archive`` of ``rev`` into ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def run_sweep(tree: Path, work: Path, spec: str, sets: list[str]) -> dict:
    """One sweep of ``tree``'s code from empty caches; its numbers."""
    import pandas as pd

    cache, results = work / "cache", work / "results"
    env = {**os.environ, "DRORAE_CACHE": str(cache), "PYTHONPATH": str(tree), "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "sweeper", "sweep", spec, *sets, f"results_dir={results}"]
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sweep.log"
    t = time.perf_counter()
    with open(log, "w") as f:  # make sweep = make install (the venv: not timed here; the offline assets) + sweep
        proc = subprocess.run([sys.executable, "-m", "model", "fetch"], cwd=tree, env=env, stdout=f,
                              stderr=subprocess.STDOUT)
        fetch = time.perf_counter() - t
        if proc.returncode == 0:
            proc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"bench/default_sweep.py: the sweep in {tree} failed (exit {proc.returncode}); "
                         f"its log: {log}\n" + "\n".join(tail))
    (sweep_dir,) = [p for p in results.iterdir() if (p / "timing.json").is_file()]
    timing = json.loads((sweep_dir / "timing.json").read_text())
    law = json.loads((sweep_dir / "law.json").read_text())["law"]
    table = pd.read_parquet(sweep_dir / "trials.parquet")
    points = {r.point_id: {"rfid": float(r.rfid), "rfid_se": float(r.rfid_se), "params": int(r.params)}
              for r in table.itertuples() if r.status == "completed"}
    return {
        "wall_s": wall,
        "assets_s": fetch,
        "sweep_s": timing["wall_seconds"],
        "ray_start_s": timing["ray_start_seconds"],
        "shared_s": timing["shared_seconds"],
        "shared": timing["shared"],
        "trials_s": timing["tune_seconds"],
        "train_s_sum": float(table["train_seconds"].sum()),
        "eval_s_sum": float(table["eval_seconds"].sum()),
        "slope": law["params"]["b"],
        "slope_ci": law["conf_int"]["b"],
        "intercept": law["params"]["a"],
        "r2": law["r2"],
        "fitted_params": sorted(int(p) for p in table.loc[table["kind"] == "grid", "params"]),
        "points": points,
        "onnx_export_cached": (cache / "fid_onnx").is_dir(),
    }


def compare(runs: list[dict]) -> dict:
    """A against the mean of the B runs: time ratios and the law's checks."""
    base = [r for r in runs if r["label"] == "B"]
    new = next(r for r in runs if r["label"] == "A")

    def mean_b(get):
        return sum(get(r) for r in base) / len(base)

    ratios = {"wall": new["wall_s"] / mean_b(lambda r: r["wall_s"]),
              "sweep": new["sweep_s"] / mean_b(lambda r: r["sweep_s"]),
              "shared": new["shared_s"] / mean_b(lambda r: r["shared_s"]),
              "trials": new["trials_s"] / mean_b(lambda r: r["trials_s"]),
              "train_sum": new["train_s_sum"] / mean_b(lambda r: r["train_s_sum"]),
              "eval_sum": new["eval_s_sum"] / mean_b(lambda r: r["eval_s_sum"])}
    for part in new["shared"]:
        if all(part in r["shared"] for r in base):
            ratios[f"shared.{part}"] = new["shared"][part] / mean_b(lambda r, p=part: r["shared"][p])
    b0 = base[0]
    lo, hi = b0["slope_ci"]
    se_ratios = {p: new["points"][p]["rfid_se"] / b0["points"][p]["rfid_se"]
                 for p in b0["points"] if p in new["points"]}
    checks = {
        "same_widths": [len(r["fitted_params"]) for r in runs] == [len(b0["fitted_params"])] * len(runs)
        and new["fitted_params"] == b0["fitted_params"],
        "slope_within_base_ci": lo <= new["slope"] <= hi,
        "ci_excludes_zero": new["slope_ci"][1] < 0 or new["slope_ci"][0] > 0,
        "rfid_se_ratio_max": max(se_ratios.values()),
        "rfid_se_within": max(se_ratios.values()) <= SE_LIMIT,
        "wall_within_target": ratios["wall"] <= TARGET,
    }
    checks["met"] = all(v for k, v in checks.items() if k not in ("rfid_se_ratio_max",))
    return {"ratios": ratios, "se_ratios": se_ratios, "checks": checks}


def markdown(result: dict) -> str:
    runs = result["runs"]
    head = " | ".join(f"{r['label']} ({r['commit'][:7]})" for r in runs)
    rows = [f"| seconds | {head} | A / mean B |", "|---|" + "---:|" * (len(runs) + 1)]

    def row(name, get, ratio_key):
        vals = " | ".join(f"{get(r):.0f}" for r in runs)
        ratio = result["ratios"].get(ratio_key)
        rows.append(f"| {name} | {vals} | {'' if ratio is None else f'{ratio:.2f}x'} |")

    row("**wall (make sweep minus the venv)**", lambda r: r["wall_s"], "wall")
    row("offline assets into the cache", lambda r: r["assets_s"], None)
    row("sweep (timing.json)", lambda r: r["sweep_s"], "sweep")
    row("Ray start", lambda r: r["ray_start_s"], None)
    row("shared work", lambda r: r["shared_s"], "shared")
    for part in runs[0]["shared"]:
        row(f"&nbsp;&nbsp;{part}", lambda r, p=part: r["shared"].get(p, float("nan")), f"shared.{part}")
    row("trials (wall)", lambda r: r["trials_s"], "trials")
    row("&nbsp;&nbsp;train, summed over trials", lambda r: r["train_s_sum"], "train_sum")
    row("&nbsp;&nbsp;eval, summed over trials", lambda r: r["eval_s_sum"], "eval_sum")
    laws = "; ".join(f"{r['label']}: rFID = {r['intercept']:.2f} {r['slope']:+.3f} log10(params), CI "
                     f"[{r['slope_ci'][0]:.3f}, {r['slope_ci'][1]:.3f}], R^2 {r['r2']:.3f}" for r in runs)
    c = result["checks"]
    return "\n".join(rows) + (
        f"\n\nLaws: {laws}.\nChecks: same widths {c['same_widths']}; A's slope within B's CI "
        f"{c['slope_within_base_ci']}; A's CI excludes 0 {c['ci_excludes_zero']}; rfid_se A/B at most "
        f"{c['rfid_se_ratio_max']:.2f}x (limit {SE_LIMIT}x); wall A / mean B {result['ratios']['wall']:.2f}x "
        f"(target {TARGET}x): {'MET' if c['met'] else 'NOT MET'}.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=BASE, help=f"the baseline revision (default {BASE}: main before issue 17)")
    ap.add_argument("--new", default="HEAD", help="the new revision (default HEAD)")
    ap.add_argument("--order", default="BAB", help="runs in order, B = base, A = new (default BAB)")
    ap.add_argument("--spec", default="sweeps/default.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a spec override for every run")
    ap.add_argument("--work", help="where the exports, caches and results go (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    if set(args.order) - {"A", "B"} or "A" not in args.order or "B" not in args.order:
        ap.error(f"--order {args.order!r}: expected letters A and B, each at least once (e.g. BAB)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="drorae-bench-default-"))
    trees = {"B": work / "base", "A": work / "new"}
    commits = {"B": export(args.base, trees["B"]), "A": export(args.new, trees["A"])}
    runs = []
    for i, label in enumerate(args.order):
        print(f"[{i + 1}/{len(args.order)}] {label} ({commits[label][:7]}): {args.spec} from empty caches ...",
              flush=True)
        r = run_sweep(trees[label], work / f"run{i + 1}-{label}", args.spec, args.set)
        r.update(label=label, commit=commits[label])
        print(f"    {r['wall_s']:.0f} s (shared {r['shared_s']:.0f} s, trials {r['trials_s']:.0f} s); slope "
              f"{r['slope']:.3f} [{r['slope_ci'][0]:.3f}, {r['slope_ci'][1]:.3f}]", flush=True)
        runs.append(r)
    result = {"spec": args.spec, "sets": args.set, "order": args.order, "runs": runs, **compare(runs)}
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
