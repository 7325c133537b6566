"""The MLflow tracking server goes down mid-sweep and comes back: nothing is missing at the end.

Real processes only, on 127.0.0.1: ``mlflow server`` (SQLite backend, local artifact store) in its
own process group, stopped with ``os.killpg`` on that group and restarted on the same port, database
and artifact directory; the sweep runs through the real CLI (``python -m sweeper sweep``).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers import REPO, SMOKE, stop_group, wait_healthy

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120  # the server starts in ~15-20 s on the 2-core development machine, more when it is busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1:``port`` over ``root``/mlflow.db and ``root``/artifacts."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner processes: not needed here
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        assert os.getpgid(self.proc.pid) == self.proc.pid  # its own group: stopping it touches nothing else
        wait_healthy(self.proc, self.uri, START_TIMEOUT_S, self.log, "mlflow server")

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL if it lingers; returns once the port is closed."""
        if self.proc is None:
            return
        stop_group(self.proc)
        self.proc = None
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()

    def log(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text()[-3000:]


def completed(table_path: Path) -> set[str]:
    try:
        t = pd.read_parquet(table_path)
    except (OSError, ValueError):  # not written yet
        return set()
    return set(t.loc[t.status == "completed", "trial_id"])


def test_server_stopped_mid_sweep_and_restarted_leaves_nothing_missing(tmp_path):
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path, free_port())
    results = tmp_path / "results"
    table_path = results / "smoke" / "trials.parquet"
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short (socket paths), and private
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))},
           "MLFLOW_TRACKING_URI": server.uri,
           # The sweep's own Ray: never one that another process on this machine started (ray_current_cluster).
           "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={results}",
           "grid.expert_hidden=[2,4,8]", "resources.max_concurrent=1"]
    sweep_log = tmp_path / "sweep.log"
    sweep = None
    t0 = time.monotonic()
    try:
        server.start()
        with open(sweep_log, "w") as out:
            sweep = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while not completed(table_path) and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        before = completed(table_path)
        assert before, f"no trial completed in time:\n{sweep_log.read_text()[-3000:]}"

        server.stop()  # mid-sweep
        down_at = time.monotonic()
        deadline = down_at + 120
        while completed(table_path) <= before and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        during = completed(table_path) - before
        assert during, "no trial completed while the server was down"
        outage = time.monotonic() - down_at
        server.start()  # the same port, database and artifacts

        assert sweep.wait(timeout=400) == 0, sweep_log.read_text()[-3000:]
        sweep_seconds = time.monotonic() - t0
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.send_signal(signal.SIGINT)
            try:
                sweep.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(sweep.pid, signal.SIGKILL)
                sweep.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if sweep is None or sweep.returncode != 0:
            server.stop()

    try:
        log = sweep_log.read_text()
        # One warning when the server went away, one when the backlog was delivered; none per write.
        assert log.count("sweeper.outbox: MLflow tracking server") == 2, log[-3000:]
        assert log.count(f"MLflow tracking server {server.uri} unreachable") == 1
        assert log.count(f"MLflow tracking server {server.uri} answers again: delivered the") == 1
        table = pd.read_parquet(table_path).set_index("trial_id")
        assert sorted(table.index) == sorted(f"h{h}-k6-s0-t0" for h in (2, 4, 8))
        assert (table.status == "completed").all(), table[["status", "error"]]
        assert not (results / "smoke" / "mlflow-pending.json").exists()

        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("smoke")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "FINISHED" and parent.data.metrics["failed_trials"] == 0
        nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["trial_id"] for r in nested) == sorted(table.index)  # exactly one run each
        for run in nested:
            trial_id = run.data.tags["trial_id"]
            row = table.loc[trial_id]
            assert run.info.status == "FINISHED", trial_id
            assert run.data.metrics["rfid"] == pytest.approx(row.rfid, rel=1e-12), trial_id
            assert row.mlflow_run_id == run.info.run_id, trial_id
            assert client.get_metric_history(run.info.run_id, "loss"), f"{trial_id}: no training curve"
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["reconstructions.png"], trial_id
        print(f"\nsweep {sweep_seconds:.0f} s; server down {outage:.0f} s while {sorted(during)} completed")
    finally:
        server.stop()


def fake_trial(h: int, last_result=None, checkpoint=None):
    config = {"trial_id": f"h{h}-k6-s0-t0", "unit_id": f"h{h}-k6-s0", "point_id": f"h{h}-k6", "kind": "grid",
              "expert_hidden": h, "fused_layers": 6, "seed": 0, "params": 1000 * h, "layers": None, "hp": {},
              "n_trials": 1, "evaluate": True}
    return SimpleNamespace(config=config, last_result=last_result, checkpoint=checkpoint, trial_id=f"t{h}",
                           error_file=None, error_msg=None)


def test_server_down_for_the_whole_end_of_a_sweep_leaves_a_pending_file_that_the_next_run_delivers(
        tmp_path, monkeypatch, caplog):
    """Down at the end: the writes are saved, not lost, and the sweep's next run delivers them first."""
    import logging

    from mlflow.tracking import MlflowClient

    from sweeper.outbox import HTTP_RETRY_DEFAULTS
    from sweeper.results import ResultsTable
    from sweeper.tracking import PENDING_FILE, SweepTracker

    for key, value in HTTP_RETRY_DEFAULTS.items():  # the sweep's own bounds, undone after the test
        monkeypatch.setenv(key, value)
    server = MlflowServer(tmp_path, free_port())
    # The sweep's experiment and parent run, in the database the server will serve once it is up.
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = store.create_experiment("pending", artifact_location="mlflow-artifacts:/pending")
    parent = store.create_run(exp_id, tags={"mlflow.runName": "pending"}).info.run_id
    sweep_dir = tmp_path / "results" / "pending"
    png = tmp_path / "ckpt" / "reconstructions.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG not really")

    # The server is down (nothing listens on its port) while the trial ends and the sweep ends.
    tracker = SweepTracker(server.uri, "pending", parent, str(sweep_dir), {"sweep": "pending"}, None)
    final = {"final": True, "rfid": 31.25, "psnr": 18.5, "ssim": 0.5, "lpips": 0.25, "val_l1": 0.125,
             "train_seconds": 3.0, "eval_seconds": 1.0}
    tracker.on_trial_start(0, [], fake_trial(4))
    tracker.on_trial_result(0, [], fake_trial(4), {"step": 4, "loss": 0.5, "phase": 2})
    tracker.on_trial_complete(0, [], fake_trial(4, final, SimpleNamespace(path=str(png.parent))))
    tracker.on_experiment_end([])
    table = ResultsTable(sweep_dir)
    assert table.rows["h4-k6-s0-t0"]["status"] == "completed"  # the table did not wait
    t = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        out = tracker.finish(table, {"wall_seconds": 12.0, "failed_trials": 0}, "FINISHED", timeout=3)
    finish_seconds = time.monotonic() - t
    assert out["pending"] == 7 and out["reconciled"] is None
    assert finish_seconds < 30
    pending = json.loads((sweep_dir / PENDING_FILE).read_text())
    assert [op["op"] for op in pending["ops"]] == ["run", "metrics", "metrics", "artifact", "status", "metrics",
                                                   "status"]
    assert any(f"7 writes could not be delivered to {server.uri}" in r.getMessage() for r in caplog.records)

    server.start()
    try:
        again = SweepTracker(server.uri, "pending", parent, str(sweep_dir), {"sweep": "pending"}, None)
        assert not again.outbox.queue and not (sweep_dir / PENDING_FILE).exists()  # delivered first
        out = again.finish(ResultsTable(sweep_dir), {"wall_seconds": 2.0, "failed_trials": 0}, "FINISHED",
                           timeout=30)
        assert out == {"pending": 0, "reconciled": 0, "rejected": 0}
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")
        assert run.data.tags["trial_id"] == "h4-k6-s0-t0" and run.info.status == "FINISHED"
        assert run.data.metrics["rfid"] == 31.25 and run.data.params["expert_hidden"] == "4"
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["reconstructions.png"]
        assert client.get_run(parent).info.status == "FINISHED"
        assert ResultsTable(sweep_dir).rows["h4-k6-s0-t0"]["mlflow_run_id"] == run.info.run_id
        print(f"\nfinish with the server down: {finish_seconds:.1f} s")
    finally:
        server.stop()
