"""backtest(): fit the smaller capacities, predict the largest held out, check the intervals."""

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, backtest


def _data(rng, n_caps=8, seeds=3, sigma=0.05):
    C = np.repeat(np.geomspace(1e6, 1e9, n_caps), seeds)
    return pd.DataFrame({"params": C, "rfid": 5 - 0.5 * np.log10(C) + rng.normal(0, sigma, C.size)})


def test_columns_and_rows():
    out = backtest(_data(np.random.default_rng(0)), holdout=2)
    assert list(out.columns) == ["capacity", "truth", "mean", "pi_lower", "pi_upper", "error", "rel_error",
                                 "covered"]
    assert len(out) == 6 and out.capacity.nunique() == 2
    assert out.capacity.min() > 1e8
    np.testing.assert_allclose(out.error, out["mean"] - out.truth)
    assert (out.pi_lower < out["mean"]).all() and (out["mean"] < out.pi_upper).all()


def test_truth_inside_the_interval_for_the_right_law():
    """Held-out truths fall inside the 95% PI about 95% of the time (100 synthetic sweeps)."""
    rng = np.random.default_rng(11)
    covered = np.concatenate([backtest(_data(rng), holdout=2).covered.to_numpy() for _ in range(100)])
    assert 0.9 <= covered.mean() <= 0.99


def test_noiseless_backtest_is_exact():
    C = np.geomspace(1e6, 1e9, 6)
    df = pd.DataFrame({"params": C, "rfid": 5 - 0.5 * np.log10(C) + 1e-9 * np.sin(np.arange(6))})
    out = backtest(df, holdout=1)
    assert abs(out.error.iloc[0]) < 1e-6 and out.covered.all()


def test_too_few_capacities_left():
    with pytest.raises(AnalysisError, match="leaves 2 distinct capacities"):
        backtest(_data(np.random.default_rng(0), n_caps=4), holdout=2)
