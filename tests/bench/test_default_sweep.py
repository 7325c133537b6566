"""bench/default_sweep.py's verdict: the time ratio against the mean of the base runs and the law's checks."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "default_sweep.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("default_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(label, wall, slope, ci, se, params=(10, 100, 1000)):
    return {"label": label, "commit": "0" * 40, "wall_s": wall, "assets_s": 1.0, "sweep_s": wall - 10,
            "ray_start_s": 5.0,
            "shared_s": wall / 3, "shared": {"encoder": wall / 6, "phase1": wall / 6}, "trials_s": wall / 2,
            "train_s_sum": wall / 2, "eval_s_sum": wall / 2, "slope": slope, "slope_ci": list(ci), "intercept": 40.0,
            "r2": 0.9, "fitted_params": list(params),
            "points": {f"p{p}": {"rfid": 30.0, "rfid_se": s, "params": p} for p, s in zip(params, se)}}


def test_ratio_is_against_the_mean_of_the_base_runs(bench):
    runs = [_run("B", 1000, -2.0, (-3.0, -1.0), (1.0, 1.0, 1.0)), _run("A", 500, -1.8, (-2.9, -0.5), (1.1, 1.2, 1.0)),
            _run("B", 1200, -2.0, (-3.0, -1.0), (1.0, 1.0, 1.0))]
    out = bench.compare(runs)
    assert out["ratios"]["wall"] == pytest.approx(500 / 1100)
    assert out["ratios"]["shared.encoder"] == pytest.approx((500 / 6) / (1100 / 6))
    assert out["checks"]["rfid_se_ratio_max"] == pytest.approx(1.2)
    assert out["checks"]["met"]


@pytest.mark.parametrize("change, failed", [
    (dict(wall=560), "wall_within_target"),  # 560 / 1100 > 0.5
    (dict(slope=-3.2), "slope_within_base_ci"),  # outside B's [-3, -1]
    (dict(ci=(-2.9, 0.1)), "ci_excludes_zero"),
    (dict(se=(1.0, 1.31, 1.0)), "rfid_se_within"),  # one point's se 1.31x B's
    (dict(params=(10, 100, 2000)), "same_widths"),
])
def test_each_check_can_fail(bench, change, failed):
    new = dict(wall=500, slope=-1.8, ci=(-2.9, -0.5), se=(1.0, 1.0, 1.0)) | change
    runs = [_run("B", 1000, -2.0, (-3.0, -1.0), (1.0, 1.0, 1.0)), _run("A", **new),
            _run("B", 1200, -2.0, (-3.0, -1.0), (1.0, 1.0, 1.0))]
    checks = bench.compare(runs)["checks"]
    assert not checks[failed] and not checks["met"]
    assert all(v for k, v in checks.items() if k not in (failed, "met", "rfid_se_ratio_max"))


def test_order_must_name_both_revisions():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--order", "BB"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--order 'BB': expected letters A and B, each at least once" in proc.stderr
