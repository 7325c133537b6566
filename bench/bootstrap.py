"""Bootstrap speed: 10,000 resamples of a 100-point log-linear fit, vectorized, against statsmodels.

Times ``analysis.bootstrap.bootstrap`` (residual and case resampling, B = 10,000) and a loop of
statsmodels OLS fits on the same resamples; the loop runs ``--loop`` fits (default 200) and is
extrapolated linearly to 10,000 (said so in the output). Target: well under 0.5 s, at least 50x.

    python bench/bootstrap.py [--n 100] [--B 10000] [--loop 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import statsmodels.api as sm

from analysis.bootstrap import bootstrap
from analysis.laws import get_law


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="points in the fit")
    ap.add_argument("--B", type=int, default=10_000, help="bootstrap resamples")
    ap.add_argument("--loop", type=int, default=200, help="statsmodels fits actually timed")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    C = np.geomspace(1e6, 1e9, args.n)
    X = get_law("log-linear").design(C)
    y = 5.0 - 0.5 * np.log10(C) + rng.normal(0, 0.1, args.n)

    t_res = best_of(lambda: bootstrap(X, y, B=args.B, kind="residual", seed=1))
    t_case = best_of(lambda: bootstrap(X, y, B=args.B, kind="case", seed=1))

    idx = rng.integers(0, args.n, size=(args.loop, args.n))

    def loop():
        for i in range(args.loop):
            sm.OLS(y[idx[i]], X[idx[i]]).fit()

    t_loop = best_of(loop, repeat=1) * args.B / args.loop
    print(f"{args.B} bootstrap resamples of a {args.n}-point fit (vectorized, best of 3):")
    print(f"  residual resampling: {t_res * 1e3:8.1f} ms   ({t_loop / t_res:,.0f}x the statsmodels loop)")
    print(f"  case resampling:     {t_case * 1e3:8.1f} ms   ({t_loop / t_case:,.0f}x the statsmodels loop)")
    print(f"  statsmodels OLS loop: {t_loop:7.2f} s    (timed {args.loop} fits, extrapolated to {args.B})")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "B": args.B, "residual_s": t_res, "case_s": t_case,
                                               "statsmodels_s": t_loop, "speedup": t_loop / t_res}, indent=1))


if __name__ == "__main__":
    main()
