"""Coverage of the saturating law's 95% profile-likelihood intervals, by seeded simulation (issue 13 part 2).

Design: y = 0.5 + 3 C^-0.3 + N(0, sigma^2) at 8 capacities log-spaced over 1e4..1e8 (one seed each), sigma
0.005 and 0.02, ``REPS`` datasets per sigma. A fit that is not identified reports no interval: the share
identified is asserted on its own and coverage counts the identified fits.

Measured with 400 datasets per sigma: sigma 0.005, all identified, coverage E 95.8%, A 94.0%, alpha 94.5%;
sigma 0.02, 61% identified (the rest: E's lower bound does not close, the data cannot tell the curve from
a log-linear one), coverage 94.3%, 93.1%, 93.5%. With 150 datasets (what runs here) a coverage's binomial
se is 1.8% (2.3% among the ~90 identified at sigma 0.02): the bands are 95% -5/+4 points, about 2-3 se.
The calibration itself (F(1, n - 3), not chi2_1: that one still covers 91-93% here) is pinned by
test_fit_saturating.py's independent profile at the bounds.
"""

import numpy as np
import pandas as pd
import pytest

from analysis import fit

TRUTH = {"E": 0.5, "A": 3.0, "alpha": 0.3}
C = np.geomspace(1e4, 1e8, 8)
REPS = 150


def simulate(sigma: float, reps: int = REPS, seed: int = 0):
    """Per parameter, the share of identified fits whose 95% interval covers the truth; the share identified."""
    rng = np.random.default_rng(seed)
    hits = {k: [] for k in TRUTH}
    identified = 0
    for _ in range(reps):
        y = TRUTH["E"] + TRUTH["A"] * C ** -TRUTH["alpha"] + rng.normal(0, sigma, C.size)
        res = fit(pd.DataFrame({"params": C, "rfid": y}), form="saturating")
        if not res.identified:
            continue
        identified += 1
        ci = res.conf_int(0.05)
        for k, v in TRUTH.items():
            hits[k].append(ci.loc[k, "lower"] <= v <= ci.loc[k, "upper"])
    return {k: float(np.mean(h)) for k, h in hits.items()}, identified / reps


@pytest.mark.slow  # 300 fits with profile intervals: about 30 s on one core
@pytest.mark.parametrize("sigma, min_identified", [(0.005, 0.97), (0.02, 0.45)])
def test_profile_intervals_cover(sigma, min_identified):
    cover, identified = simulate(sigma)
    print(f"sigma {sigma}: identified {identified:.1%}, coverage {cover}")
    assert identified >= min_identified
    for k, c in cover.items():
        assert 0.90 <= c <= 0.99, (k, c)
