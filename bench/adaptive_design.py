"""Does choosing the next capacity by ``analysis.design`` reach a sure prediction sooner than adding
capacities uniformly in log space? Simulated sweeps of a known log-linear law, side by side.

Truth: y = a + b log10(C) + N(0, sd^2), with (a, b) and sd the default sweep's: the law fitted to its
results and the residual sd of that fit (sqrt of the fit's scale), read from
``--results`` (a fresh ``make sweep``'s ``results/default``) when it exists, else the README's
"Measured" points (the run of 2026-12-01, commit ``2117e55``); ``--sd`` overrides the sd. Each
simulated sweep starts from one trial at each of 3 capacities, the default sweep's smallest, middle
and largest fusion params (h = 2, 128, 2048), and aims at the target capacity 10x the largest. Two
policies then add one trial at a time, each refitting with ``analysis.fit`` (the tool's defaults: CR2
errors, Bell-McCaffrey df, the noise model's PI) after every trial, until the fit's actual 95% PI
at the target (``summary_frame``: obs_ci_upper - obs_ci_lower) is narrower than ``--width`` (or
``--cap`` trials were added):

- adaptive: the best candidate of ``analysis.design.rank(..., per="trial")`` (the c-optimal
  criterion's expected PI width, ``drorae next``'s default): one more seed at any capacity tried so
  far, or a new capacity at the geometric midpoint of two adjacent ones;
- adaptive-tool: the same with ``criterion="tool"`` (the expected width of the tool's own PI: the
  design's Bell-McCaffrey df and the noise model's uncertainty at the target);
- uniform: a new capacity at the geometric midpoint of the widest gap in log10 C (the lowest such gap
  on a tie): the design fills the range uniformly in log space, coarse to fine.

Both stay inside the start range [smallest, largest] (the capacities a researcher can afford), so
neither is given capacities the other lacks; capacities are continuous (no rounding to an integer
width). Both policies of one sweep see the same random numbers for the start and the same stream
for their added trials. With ``--cost`` each adaptive policy also runs ranked per expected second
(``-cost``: the cost model fitted to simulated seconds, seconds = exp(c0 + c1 log10 C) from the
default sweep's train + eval seconds, or, without a fresh sweep, its train FLOPs from the README),
and the cost to reach the width is compared too. Seeded and deterministic.

    python bench/adaptive_design.py [--sweeps 200] [--quick] [--width W] [--cap 40] [--sd SD]
                                    [--criterion c-optimal|tool|both] [--cost] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import design, fit, load

ROOT = Path(__file__).resolve().parent.parent
FRESH = Path("/tmp/fc/results/default")
#: The README's "Measured" default sweep (2026-12-01, commit 2117e55): params, rFID, train FLOPs.
README_POINTS = pd.DataFrame({
    "params": [7602, 14550, 42342, 153510, 598182, 2376870],
    "rfid": [35.71, 35.07, 33.96, 32.30, 32.06, 31.87],
    "train_flops": [1.16e12, 1.18e12, 1.28e12, 1.69e12, 3.32e12, 9.84e12]})
START = (0, 3, 5)                # the default grid's h = 2, 128, 2048: smallest, middle (in log10 params), largest
ALPHA = 0.05


def truth(results: Path | None) -> dict:
    """The law, its residual sd and a cost law, from a fresh default sweep's results or the README's points."""
    pts, why = None, "--results none" if results is None else f"no {results}/trials.parquet"
    if results is not None and (results / "trials.parquet").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = load(results)
        if table.points["params"].nunique() >= len(README_POINTS):
            pts = table.points.sort_values("params")
            source = f"{results}/trials.parquet"
            secs = (pts["train_seconds"] + pts["eval_seconds"]).to_numpy(float)
            cost_source = "train + eval seconds of its grid trials"
        else:
            why = (f"{results}/trials.parquet has {table.points['params'].nunique()} completed grid capacities, "
                   f"not the default sweep's {len(README_POINTS)}")
    if pts is None:
        pts = README_POINTS
        source = f"README 'Measured' (2026-12-01, commit 2117e55; {why})"
        secs = README_POINTS["train_flops"].to_numpy(float)
        cost_source = "train FLOPs of its grid points (README), as relative cost"
    res = fit(pts, x="params", y="rfid")
    caps = pts["params"].to_numpy(float)
    ok = np.isfinite(secs) & (secs > 0)
    c1, c0 = np.polyfit(np.log10(caps[ok]), np.log(secs[ok]), 1)
    return {"source": source, "a": float(res.params["a"]), "b": float(res.params["b"]),
            "sd": math.sqrt(res.scale), "capacities": [float(c) for c in np.unique(caps)],
            "cost": {"c0": float(c0), "c1": float(c1), "source": cost_source}}


def pi_width(res, target: float) -> float:
    sf = res.get_prediction([target]).summary_frame(ALPHA).iloc[0]
    return float(sf["obs_ci_upper"] - sf["obs_ci_lower"])


def uniform_next(caps: list[float]) -> float:
    """The geometric midpoint of the widest gap in log10 C (the lowest on a tie)."""
    logs = np.log10(np.unique(caps))
    gaps = np.diff(logs)
    i = int(np.flatnonzero(gaps >= gaps.max() * (1 - 1e-9))[0])
    return float(10 ** ((logs[i] + logs[i + 1]) / 2))


def adaptive_next(res, df: pd.DataFrame, target: float, lo: float, hi: float, per: str, criterion: str) -> float:
    caps = np.unique(df["params"])
    cands = design.default_candidates(caps, target)
    cands = cands[(cands >= lo * (1 - 1e-9)) & (cands <= hi * (1 + 1e-9))]
    return float(design.rank(res, df, target, cands, per=per, criterion=criterion).table["capacity"].iloc[0])


def policy_words(policy: str) -> tuple[str, str]:
    """(criterion, per) of an adaptive policy's name: adaptive[-tool][-cost]."""
    return ("tool" if "-tool" in policy else "c-optimal"), ("cost" if policy.endswith("-cost") else "trial")


def run_policy(policy: str, law: dict, start_y: np.ndarray, rng: np.random.Generator, target: float, width: float,
               cap: int, seconds) -> dict:
    """Add trials by ``policy`` until the fit's PI at the target is narrower than ``width``: trials added, seconds."""
    caps0 = np.array(law["start"])
    df = pd.DataFrame({"params": caps0, "rfid": start_y, "train_seconds": seconds(caps0), "eval_seconds": 0.0})
    lo, hi = caps0.min(), caps0.max()
    spent = 0.0
    for added in range(cap + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit(df)
            w = pi_width(res, target)
            if w < width:
                return {"trials": added, "seconds": spent, "capped": False, "width": w}
            if added == cap:
                return {"trials": added, "seconds": spent, "capped": True, "width": w}
            if policy == "uniform":
                c = uniform_next(list(df["params"]))
            else:
                criterion, per = policy_words(policy)
                c = adaptive_next(res, df, target, lo, hi, per, criterion)
        y = law["a"] + law["b"] * math.log10(c) + law["sd"] * rng.standard_normal()
        s = float(seconds(np.array([c]))[0])
        spent += s
        df = pd.concat([df, pd.DataFrame({"params": [c], "rfid": [y], "train_seconds": [s], "eval_seconds": [0.0]})],
                       ignore_index=True)
    raise AssertionError("unreachable")


def summarize(runs: list[dict]) -> dict:
    """Trials and cost to reach the width (a sweep that hit the cap counts with the cap's), and the final widths."""
    t = np.array([r["trials"] for r in runs], dtype=float)
    s = np.array([r["seconds"] for r in runs], dtype=float)
    reached = [r["width"] for r in runs if not r["capped"]]
    return {"mean_trials": float(t.mean()), "median_trials": float(np.median(t)),
            "capped": int(sum(r["capped"] for r in runs)), "mean_seconds": float(s.mean()),
            "median_seconds": float(np.median(s)), "mean_final_width": float(np.mean(reached)) if reached else math.nan,
            "trials": [int(v) for v in t]}


def both_reached(x: list[dict], y: list[dict], key: str) -> tuple[float, int]:
    """mean(y) / mean(x) of ``key`` over the sweeps where neither policy hit the cap, and how many those are."""
    pairs = [(a[key], b[key]) for a, b in zip(x, y) if not a["capped"] and not b["capped"]]
    if not pairs:
        return math.nan, 0
    return float(np.mean([b for _, b in pairs]) / np.mean([a for a, _ in pairs])), len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", type=int, default=200, help="simulated sweeps (default 200)")
    ap.add_argument("--quick", action="store_true", help="20 sweeps")
    ap.add_argument("--width", type=float, default=None,
                    help="the PI width at the target to reach (default: 15%% of the true mean there)")
    ap.add_argument("--cap", type=int, default=40, help="most trials added per sweep (default 40)")
    ap.add_argument("--sd", type=float, default=None, help="the noise sd (default: the default sweep's residual sd)")
    ap.add_argument("--results", default=str(FRESH),
                    help=f"a default sweep's results directory to take the law from (default {FRESH}; "
                         "the README's points when it has no trials.parquet, or with none)")
    ap.add_argument("--cost", action="store_true", help="also each adaptive policy ranked per expected second")
    ap.add_argument("--criterion", choices=("c-optimal", "tool", "both"), default="both",
                    help="the adaptive policies' design criterion (default: both, side by side)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    n = 20 if args.quick else args.sweeps
    law = truth(Path(args.results) if args.results and args.results != "none" else None)
    if args.sd is not None:
        law["sd"], law["sd_source"] = args.sd, "--sd"
    else:
        law["sd_source"] = "the residual sd of that fit"
    caps = law["capacities"]
    law["start"] = [caps[i] for i in START] if len(caps) >= 6 else [caps[0], caps[len(caps) // 2], caps[-1]]
    target = 10 * max(law["start"])
    true_mean = law["a"] + law["b"] * math.log10(target)
    width = args.width if args.width is not None else 0.15 * true_mean
    cost = law["cost"]

    def seconds(C):
        return np.exp(cost["c0"] + cost["c1"] * np.log10(np.asarray(C, dtype=float)))

    print(f"truth: the law fitted to {law['source']}: y = {law['a']:.4g} {'+' if law['b'] >= 0 else '-'} "
          f"{abs(law['b']):.4g} log10(C), noise sd {law['sd']:.4g} ({law['sd_source']}); cost: {law['cost']['source']}")
    print(f"start: {', '.join(f'{c:.4g}' for c in law['start'])} (one trial each); target C0 = {target:.4g} "
          f"(true mean {true_mean:.4g}); stop when the fit's 95% PI at C0 < {width:.4g}; cap {args.cap} trials; "
          f"{n} sweeps; both policies within [{min(law['start']):.4g}, {max(law['start']):.4g}]")
    adaptive = {"c-optimal": ["adaptive"], "tool": ["adaptive-tool"],
                "both": ["adaptive", "adaptive-tool"]}[args.criterion]
    policies = ["uniform", *adaptive, *([f"{p}-cost" for p in adaptive] if args.cost else [])]
    runs: dict[str, list] = {p: [] for p in policies}
    t0 = time.perf_counter()
    for k in range(n):
        start_y = (law["a"] + law["b"] * np.log10(law["start"])
                   + law["sd"] * np.random.default_rng([args.seed, k, 0]).standard_normal(3))
        for p in policies:
            rng = np.random.default_rng([args.seed, k, 1])        # the same stream for every policy
            runs[p].append(run_policy(p, law, start_y, rng, target, width, args.cap, seconds))
    elapsed = time.perf_counter() - t0
    out = {"sweeps": n, "cap": args.cap, "target": target, "width": width, "true_mean": true_mean, "law": law,
           "seconds": elapsed, "criterion": design.CRITERION, "policies": {p: summarize(r) for p, r in runs.items()}}
    u = out["policies"]["uniform"]
    for p, st in out["policies"].items():
        print(f"{p:>23}: trials to reach it mean {st['mean_trials']:.2f}, median {st['median_trials']:.1f}; "
              f"{st['capped']} of {n} hit the cap; final PI width (reached) {st['mean_final_width']:.3g}; "
              f"cost mean {st['mean_seconds']:.4g}")
    out["ratios"] = {}
    for p in policies[1:]:
        a = out["policies"][p]
        r = {"mean_trials": u["mean_trials"] / a["mean_trials"],
             "median_trials": u["median_trials"] / a["median_trials"],
             "mean_cost": u["mean_seconds"] / a["mean_seconds"]}
        r["mean_trials_both_reached"], r["both_reached"] = both_reached(runs[p], runs["uniform"], "trials")
        r["mean_cost_both_reached"], _ = both_reached(runs[p], runs["uniform"], "seconds")
        out["ratios"][p] = r
        print(f"uniform / {p}: mean trials {r['mean_trials']:.2f}x, median {r['median_trials']:.2f}x, over the "
              f"{r['both_reached']} sweeps both reached {r['mean_trials_both_reached']:.2f}x; mean cost "
              f"{r['mean_cost']:.2f}x (both reached {r['mean_cost_both_reached']:.2f}x)")
    print(f"({elapsed:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
