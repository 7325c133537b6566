"""Lack-of-fit F-test against a hand computation of the pure-error decomposition."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import fit


def _hand(C, y, fitted, p):
    caps = np.unique(C)
    sse = ((y - fitted) ** 2).sum()
    ss_pe = sum(((y[C == c] - y[C == c].mean()) ** 2).sum() for c in caps)
    df_lof, df_pe = len(caps) - p, len(y) - len(caps)
    F = ((sse - ss_pe) / df_lof) / (ss_pe / df_pe)
    return F, df_lof, df_pe, stats.f.sf(F, df_lof, df_pe)


def test_matches_hand_computation(loglinear_df):
    res = fit(loglinear_df)
    C, y = loglinear_df.params.to_numpy(), loglinear_df.rfid.to_numpy()
    F, d1, d2, p = _hand(C, y, res.predict(C), 2)
    lof = res.lack_of_fit()
    assert (lof.df_num, lof.df_den) == (d1, d2) == (6, 16)
    assert lof.F == pytest.approx(F, rel=1e-9) and lof.pvalue == pytest.approx(p, rel=1e-9)
    assert lof.pvalue > 0.01  # the right law


def test_wrong_law_has_small_p():
    rng = np.random.default_rng(5)
    C = np.repeat(np.geomspace(1e6, 1e9, 6), 3)
    y = 0.5 + 40 * C ** -0.3 + rng.normal(0, 0.02, C.size)   # curved in log10 C
    lof = fit(pd.DataFrame({"params": C, "rfid": y}), form="log-linear").lack_of_fit()
    assert lof.pvalue < 1e-3


def test_none_without_replicates():
    C = np.geomspace(1e6, 1e9, 6)
    assert fit(pd.DataFrame({"params": C, "rfid": 5 - 0.5 * np.log10(C)})).lack_of_fit() is None
