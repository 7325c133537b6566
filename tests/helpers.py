"""Helpers that several test modules share (conftest.py files hold only fixtures).

Imported explicitly, ``from helpers import ...``: pytest puts tests/ on sys.path (``pythonpath`` in
pyproject.toml). Heavy imports (the sweeper, MLflow) stay inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "smoke.yaml"
# The default sweep's results table, where `make sweep` has run in this clone.
DEFAULT_TRIALS = REPO / "results" / "default" / "trials.parquet"


# --- marks -----------------------------------------------------------------------------------

# Encoder presets whose random ViT takes seconds to build and run on CPU (ViT-B, ViT-L).
LARGE_ENCODERS = ("dinov2-b", "dinov2-l")


def encoder_presets() -> list:
    """Every encoder preset's name, for ``parametrize``; the large ones marked slow (make test-fast skips them)."""
    from model import ENCODER_PRESETS

    return [pytest.param(p, marks=pytest.mark.slow) if p in LARGE_ENCODERS else p for p in sorted(ENCODER_PRESETS)]


# --- sweeps ----------------------------------------------------------------------------------


def smoke_plan(tmp_path, *overrides):
    """The smoke spec with its results (table, Ray storage, MLflow db) under tmp_path."""
    from sweeper.plan import build_plan
    from sweeper.spec import load_spec

    return build_plan(load_spec(SMOKE, [f"results_dir={tmp_path / 'results'}", *overrides]))


def mlflow_trial_runs(tmp_path, experiment: str):
    """The nested (trial) runs of the experiment in the test's SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


# --- processes -------------------------------------------------------------------------------


def wait_healthy(proc, url: str, timeout: float, log_tail, what: str) -> None:
    """Wait until the server that ``proc`` started answers ``url``/health; fail with its log if it dies or
    never does."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /health answer on {url} within {timeout} s:\n{log_tail()}")


def stop_group(proc, grace: float = 30) -> None:
    """Stop exactly the process group that ``proc`` leads (started with start_new_session=True):
    SIGTERM, then SIGKILL if any of it lingers past ``grace`` seconds."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        proc.poll()  # reap the leader
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


# --- endpoints that do not answer ------------------------------------------------------------


class SilentServer:
    """A real TCP server on 127.0.0.1 that accepts every connection and never answers (``port``;
    ``accepted``: the connections it took, so a test can tell it was reached, not refused)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def accepted(self) -> int:
        return len(self.conns)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])  # and nothing is ever read or written
            except OSError:  # the accept timed out: look at the stop flag again
                continue

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def within(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread: a regression that blocks (reading a FIFO) fails the test after
    ``seconds`` instead of hanging it; fn's exception, if any, is raised here."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{getattr(fn, '__name__', fn)}{args} still ran after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (a connection is refused at once)."""
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as sock:
        return sock.getsockname()[1]


# --- results tables --------------------------------------------------------------------------


def sweep_table(layers=(2, 4, 8), widths=(8, 32, 128, 512), seeds=(0, 1), failed=True) -> pd.DataFrame:
    """A sweep's trials table: a width scan at the middle layer count, a layer scan at one width,
    controls (RAE baseline without params, decoder-only) and one failed trial."""
    rng = np.random.default_rng(0)
    mid = layers[len(layers) // 2]
    cells = {(mid, w) for w in widths} | {(k, widths[1]) for k in layers}
    rows = []
    for k, w in sorted(cells):
        for s in seeds:
            params = k * (w * 1000 + 5000)
            rows.append({"trial_id": f"h{w}-k{k}-s{s}-t0", "point_id": f"h{w}-k{k}", "kind": "grid",
                         "status": "completed", "expert_hidden": float(w), "fused_layers": k, "seed": s,
                         "params": params, "rfid": 40 - 2.0 * np.log10(params) + rng.normal(0, 0.1),
                         "psnr": 30.0 + s, "ssim": 0.9, "lpips": 0.01, "best": True})
    rows.append({"trial_id": "rae-s0-t0", "point_id": "rae", "kind": "control", "status": "completed",
                 "expert_hidden": np.nan, "fused_layers": 0, "seed": 0, "params": 0, "rfid": 35.5,
                 "psnr": 30.0, "ssim": 0.9, "lpips": 0.01, "best": True})
    rows.append({"trial_id": "decoder_only-s0-t0", "point_id": "decoder_only", "kind": "control",
                 "status": "completed", "expert_hidden": np.nan, "fused_layers": 0, "seed": 0,
                 "params": 400_000, "rfid": 36.0, "psnr": 30.0, "ssim": 0.9, "lpips": 0.01, "best": True})
    if failed:
        rows.append({"trial_id": "h2048-k4-s0-t0", "point_id": "h2048-k4", "kind": "grid", "status": "failed",
                     "expert_hidden": 2048.0, "fused_layers": mid, "seed": 0, "params": np.nan, "rfid": np.nan,
                     "psnr": np.nan, "ssim": np.nan, "lpips": np.nan, "best": False})
    return pd.DataFrame(rows)


def real_or_stand_in(tmp_path) -> Path:
    """A copy of the default sweep's table (one fused_layers value), or a made-up one of that shape."""
    src = tmp_path / "trials.parquet"
    if DEFAULT_TRIALS.is_file():
        shutil.copy(DEFAULT_TRIALS, src)
    else:  # no sweep has run here: the same shape of table, made up
        sweep_table(layers=(6,), widths=(2, 8, 32, 128, 512, 2048), seeds=(0,), failed=False).to_parquet(src)
    return src


def fgls_variance(C, y):
    """By hand, for the tests: each row's noise variance under the noise model of ``analysis.noise``:
    per-capacity sample variances (nu = seeds - 1) of y, log s^2 less E log(chi2_nu / nu) =
    digamma(nu/2) - log(nu/2), weighted by 1 / trigamma(nu/2), regressed on log10 C."""
    import numpy as np
    import pandas as pd
    from scipy.special import digamma, polygamma

    C, y = np.asarray(C, float), np.asarray(y, float)
    s = pd.Series(y).groupby(C)
    caps, var, nu = s.var(ddof=1).index.to_numpy(), s.var(ddof=1).to_numpy(), s.count().to_numpy() - 1.0
    z = np.log(var) - (digamma(nu / 2) - np.log(nu / 2))
    sw = 1 / np.sqrt(polygamma(1, nu / 2))
    Z = np.column_stack([np.ones_like(caps), np.log10(caps)])
    g, *_ = np.linalg.lstsq(Z * sw[:, None], z * sw, rcond=None)
    return np.exp(g[0] + g[1] * np.log10(C))


def cost_table(seeds=(0, 1), seed=3) -> pd.DataFrame:
    """A default-sweep-shaped table with training costs: six widths x seeds of a log-linear law, each run's
    train_flops (a fixed decoder part plus the fusion params, 150 steps of 64 images: the cost of the
    default spec's phase 2), train_seconds from them, and the three
    controls at their cost: rae trains nothing (train_flops 0), decoder_only and last_layer do."""
    rng = np.random.default_rng(seed)
    rows = []
    for h, p in zip((2, 8, 32, 128, 512, 2048), (7602, 14550, 42342, 153510, 598182, 2376870)):
        flops = 3.69e6 * (424e3 + p)
        for s in seeds:
            rows.append({"trial_id": f"h{h}-k6-s{s}", "point_id": f"h{h}-k6", "kind": "grid", "status": "completed",
                         "expert_hidden": float(h), "fused_layers": 6, "seed": s, "params": p,
                         "rfid": 40.5 - 1.3 * np.log10(p) + rng.normal(0, 0.15), "rfid_se": 0.1,
                         "train_flops": flops, "train_seconds": flops / 2e10 * (1 + 0.05 * rng.standard_normal()),
                         "eval_seconds": 40.0, "best": True})
    for name, params, flops, rfid in (("rae", 0, 0.0, 36.5), ("decoder_only", 424_000, 2.1e12, 35.9),
                                      ("last_layer", 20_000, 1.8e12, 35.2)):
        rows.append({"trial_id": f"{name}-s0", "point_id": name, "kind": "control", "status": "completed",
                     "expert_hidden": np.nan, "fused_layers": np.nan, "seed": 0, "params": params, "rfid": rfid,
                     "rfid_se": 0.1, "train_flops": flops, "train_seconds": flops / 2e10, "eval_seconds": 40.0,
                     "best": True})
    return pd.DataFrame(rows)


def drorae_call(*argv) -> tuple[int, str, str]:
    """``drorae ARGV`` (the analysis commands) in this process: its exit code, stdout and stderr (for Hypothesis,
    which cannot use capsys)."""
    import io

    from analysis.cli import build_parser, run_command

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = run_command(build_parser(prog="drorae"), [str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()
