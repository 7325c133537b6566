"""Coverage of the default intervals in every design a sweep produces (issue 13 part 1), by seeded
simulation: 6 and 8 capacities (1e4..1e7) x constant noise (sd 0.5) and noise whose sd doubles over
the range x 1 and 3 seeds per capacity, plus ``weights="seed-variance"``. y = 40 - 2 log10 C; the
mean and the PI are at 10x the largest capacity, where the rising noise has grown on to 2.33x.

Default intervals (300 data sets a cell): slope and mean 92-98%, PI at least 90%. The bootstrap
(``method="bootstrap"``, the first 100 data sets of each unweighted cell): slope at least 85% (6-8 clusters are
few for a wild cluster bootstrap), PI at least 90%. ``python tests/analysis/test_coverage.py``
prints the table the README shows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import fit

A, B = 40.0, -2.0
REPS, BOOT_REPS, BOOT_B = 300, 100, 499
DESIGNS = [(caps, seeds, rising, None) for caps in (6, 8) for seeds in (1, 3) for rising in (False, True)] + \
          [(caps, 3, rising, "seed-variance") for caps in (6, 8) for rising in (False, True)]


def _sd(logC, lo, hi, rising):
    return 0.5 * (1 + (logC - lo) / (hi - lo)) if rising else np.full_like(logC, 0.5)


def coverage(caps: int, seeds: int, rising: bool, weights=None, reps: int = REPS, boot_reps: int | None = None):
    """Percent of data sets whose interval holds the truth: slope, mean at 10x, PI at 10x, and the
    bootstrap's slope and PI (over the first ``boot_reps``: ``BOOT_REPS``, none with weights)."""
    boot_reps = (0 if weights else BOOT_REPS) if boot_reps is None else boot_reps
    rng = np.random.default_rng([caps, seeds, int(rising), weights is not None])
    cap = np.geomspace(1e4, 1e7, caps)
    C = np.repeat(cap, seeds)
    C0 = 10 * cap[-1]
    sd = _sd(np.log10(C), 4, 7, rising)
    sd0 = float(_sd(np.log10([C0]), 4, 7, rising)[0])
    m0 = A + B * np.log10(C0)
    hits = np.zeros(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(reps):
            y = A + B * np.log10(C) + rng.normal(0, sd)
            ynew = m0 + rng.normal(0, sd0)
            res = fit(pd.DataFrame({"params": C, "rfid": y}), weights=weights)
            lo, hi = res.conf_int(0.05).loc["b"]
            sf = res.get_prediction([C0]).summary_frame(0.05).iloc[0]
            hits[:3] += (lo <= B <= hi, sf.mean_ci_lower <= m0 <= sf.mean_ci_upper,
                         sf.obs_ci_lower <= ynew <= sf.obs_ci_upper)
            if r < boot_reps:
                lo, hi = res.conf_int(0.05, method="bootstrap", B=BOOT_B, seed=r).loc["b"]
                sb = res.get_prediction([C0]).summary_frame(0.05, method="bootstrap", B=BOOT_B, seed=r).iloc[0]
                hits[3:] += (lo <= B <= hi, sb.obs_ci_lower <= ynew <= sb.obs_ci_upper)
    return 100 * hits[:3] / reps, (100 * hits[3:] / boot_reps if boot_reps else np.full(2, np.nan))


def _name(caps, seeds, rising, weights):
    noise = "sd doubling" if rising else "constant noise"
    return f"{caps} capacities x {seeds} seed{'s' if seeds > 1 else ''}, {noise}" + (f", {weights}" if weights else "")


@pytest.mark.slow
@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: _name(*d).replace(" ", ""))
def test_default_and_bootstrap_intervals_cover(design):
    (slope, mean, pi), (b_slope, b_pi) = coverage(*design)
    assert 92 <= slope <= 98 and 92 <= mean <= 98 and pi >= 90, (slope, mean, pi)
    if design[3] is None:
        assert b_slope >= 85 and b_pi >= 90, (b_slope, b_pi)


def main() -> None:
    print("| design | slope | mean at 10x | PI at 10x | slope, bootstrap | PI, bootstrap |")
    print("|---|---|---|---|---|---|")
    for d in DESIGNS:
        (s, m, p), (bs, bp) = coverage(*d)
        boot = f"{bs:.0f}% | {bp:.0f}%" if np.isfinite(bs) else "- | -"
        print(f"| {_name(*d)} | {s:.1f}% | {m:.1f}% | {p:.1f}% | {boot} |", flush=True)


if __name__ == "__main__":
    main()
