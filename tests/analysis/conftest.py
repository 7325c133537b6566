import numpy as np
import pandas as pd
import pytest


@pytest.fixture
def loglinear_df():
    """8 capacities x 3 seeds of y = 5 - 0.5 log10 C + N(0, 0.05^2)."""
    rng = np.random.default_rng(42)
    C = np.repeat(np.geomspace(1e6, 1e9, 8), 3)
    y = 5.0 - 0.5 * np.log10(C) + rng.normal(0, 0.05, C.size)
    return pd.DataFrame({"params": C, "rfid": y, "trial_id": [f"t{i}" for i in range(C.size)]})


@pytest.fixture
def fit_calls(monkeypatch):
    """Every call of ``analysis.fit.fit`` from the analysis and the sweeper, as (x, y, form, weights, data
    digest); each module's own ``fit`` name is wrapped, so a refit anywhere is seen."""
    import importlib
    import sys
    import warnings

    for name in ("analysis.backtest", "analysis.panels", "analysis.plots", "analysis.points", "analysis.report",
                 "analysis.cli", "sweeper.results", "sweeper.cli"):
        importlib.import_module(name)  # imported before wrapping, so that every module's name is wrapped
    fit_module = sys.modules["analysis.fit"]  # (the package's ``analysis.fit`` is the function)
    real, calls = fit_module.fit, []

    def counted(df, x=None, y=None, form="log-linear", weights=None):
        xs, ys = fit_module._names(df, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            C, Y, _se, _ids = fit_module._columns(df, xs, ys)
        calls.append((xs, ys, form, weights, C.tobytes() + Y.tobytes()))
        return real(df, x=x, y=y, form=form, weights=weights)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("analysis", "sweeper") and getattr(module, "fit", None) is real:
            monkeypatch.setattr(module, "fit", counted)
    monkeypatch.setattr(fit_module, "fit", counted)
    return calls
