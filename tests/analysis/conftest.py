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
