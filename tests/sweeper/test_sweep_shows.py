"""What a sweep shows its user: Tune's table with rFID and val L1, each point's rFID with its interval at
the end, and the MLflow UI (3.17, headless Chromium) opening on the sweep's trials with their params and rFID.

The smoke sweep through the real CLI (``python -m sweeper sweep``, the ``smoke_sweep`` fixture of
conftest.py, shared with test_run.py); then the MLflow UI as ``make mlflow-ui`` starts it, on
127.0.0.1 and a free port, over the sweep's SQLite store.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, stop_group, wait_healthy

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UI_START_TIMEOUT_S = 120  # `mlflow ui` starts in ~15-20 s on the 2-core development machine, more when busy
#: Set to a path to keep the screenshot there (the README's docs/mlflow-ui.png was made so).
SCREENSHOT_ENV = "DRORAE_MLFLOW_UI_SCREENSHOT"


def test_tunes_table_shows_rfid_and_val_l1_and_the_end_each_points_rfid_with_its_interval(smoke_sweep):
    out = smoke_sweep.stdout
    # Tune's progress table: a column for each, filled in for the trials that reported them.
    header = next((ln for ln in out.splitlines() if "val L1" in ln and "rFID" in ln), None)
    assert header is not None, out[-3000:]
    cols = [c.strip() for c in header.strip("|+ ").split("|")]
    rfid_col = cols.index("rFID")
    rows = [[c.strip() for c in ln.strip("| ").split("|")] for ln in out.splitlines()
            if ln.startswith("|") and re.search(r"h\d+-k6-s0-t0", ln)]
    assert any(re.fullmatch(r"\d+(\.\d+)?", r[rfid_col]) for r in rows if len(r) == len(cols)), out[-3000:]
    # The end: each point's rFID, the law's 95% CI of the mean at its capacity (one seed each).
    summary = out[out.index("Each point's rFID"):]
    for point in ("h2-k6", "h16-k6", "h128-k6"):
        (line,) = [ln for ln in summary.splitlines() if ln.startswith(point + " ")]
        assert re.search(r"\[[-\d.e+]+, [-\d.e+]+\]", line), line
        assert line.endswith("the log-linear law's CI of the mean at its params"), line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with a new profile; nothing reached but 127.0.0.1."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=30000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium)")
def test_the_mlflow_ui_opens_on_the_sweeps_trials_with_their_params_and_rfid(smoke_sweep, tmp_path):
    # The sweep's last log line gives the link (for `make mlflow-ui`'s default port).
    match = re.search(r"its trials in the MLflow UI \(make mlflow-ui\): (http://127\.0\.0\.1:5000(/\S+))",
                      smoke_sweep.stderr)
    assert match, smoke_sweep.stderr[-3000:]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + match.group(2)
    log = tmp_path / "ui.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners: not needed here
    with open(log, "w") as out:  # what `make mlflow-ui RESULTS=... MLFLOW_PORT=...` runs
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                 f"sqlite:///{smoke_sweep.results / 'mlflow.db'}", "--host", "127.0.0.1",
                                 "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, base, UI_START_TIMEOUT_S, lambda: log.read_text()[-3000:], "mlflow ui")
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke",
                                    timeout=30) as resp:
            tags = {t["key"]: t["value"] for t in json.load(resp)["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # model training, not GenAI
        view = json.loads(tags["mlflow.sharedViewState.drorae-trials"])
        assert json.loads(view["state"])["selectedColumns"][:2] == ["metrics.`params`", "metrics.`rfid`"]

        dom = _chromium(url, tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert "Trials: params, rFID, val L1" in page  # the saved view is the one open
        for trial in ("h2-k6-s0-t0", "h16-k6-s0-t0", "h128-k6-s0-t0"):  # every trial, unfolded
            assert trial in page, page[-2000:]
        for column in ("params", "rfid", "val_l1", "expert_hidden"):
            assert f">{column}<" in page, column  # their column headers

        png = tmp_path / "mlflow-ui.png"
        shot = _chromium(url, tmp_path, f"--screenshot={png}")
        assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
        assert _png_size(png) == (1400, 900)
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(png, os.environ[SCREENSHOT_ENV])
    finally:
        stop_group(proc)
