"""Faults injected into real sweeps (real Ray, Optuna, MLflow; all on 127.0.0.1): a lost node, a
killed driver and a second sweep of the same name, trials that fail, and storage that the
cluster's nodes cannot share."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from helpers import REPO, SMOKE, mlflow_trial_runs, smoke_plan

pytestmark = pytest.mark.slow


def _results(trial_dir) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def _cluster(*ips):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": ips[0]})
    nodes = [cluster.add_node(num_cpus=1, node_ip_address=ip) for ip in ips[1:]]
    cluster.wait_for_nodes()
    return cluster, nodes


def test_lost_node_trial_resumes_from_its_checkpoint_elsewhere_and_every_trial_is_recorded_once(tmp_path):
    import ray

    from sweeper.run import run_sweep

    cluster, (worker,) = _cluster("127.0.0.1", "127.0.0.1")
    tune_dir = tmp_path / "results" / "smoke" / "ray" / "smoke"  # <storage_path>/<sweep>
    lost: dict = {}
    stop = threading.Event()

    def remove_worker_once_a_trial_on_it_has_a_checkpoint():
        while not stop.is_set():
            for trial_dir in tune_dir.glob("h*"):
                rows = _results(trial_dir)
                # The driver has taken a report after a checkpointed one (result.json is the driver's, in
                # order; a checkpoint directory alone may be one that the driver has not registered yet).
                if (rows and rows[-1].get("node_id") == worker.node_id and not rows[-1].get("final")
                        and rows[-1].get("step", 0) > plan.phase2.checkpoint_every
                        and any(trial_dir.glob("checkpoint_*"))):
                    lost.update(trial_id=rows[-1]["config"]["trial_id"], step=rows[-1].get("step"))
                    cluster.remove_node(worker)  # the node's raylet and its workers die at once
                    return
            time.sleep(0.1)

    # Two widths on two 1-CPU nodes: one trial on each, at once.
    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,4]", "phase2.steps=32", "resources.max_failures=2")
    watcher = threading.Thread(target=remove_worker_once_a_trial_on_it_has_a_checkpoint, daemon=True)
    try:
        ray.init(address=cluster.address)
        watcher.start()
        table = run_sweep(plan, address=cluster.address)
    finally:
        stop.set()
        watcher.join(timeout=10)
        ray.shutdown()
        cluster.shutdown()
    assert lost, "no trial ran on the worker node long enough to lose it"
    assert sorted(table.trial_id) == sorted(f"h{h}-k6-s0-t0" for h in (2, 4))  # each exactly once
    assert (table.status == "completed").all(), table[["trial_id", "status", "error"]]
    row = table.set_index("trial_id").loc[lost["trial_id"]]
    assert row.retries == 1 and row.node_id != worker.node_id  # finished on the head
    # Retried from its last checkpoint, not from step 0: after the restart (Tune's
    # iterations_since_restore starts again at 1) the first reported step is past the first checkpoint.
    rows = [r for r in _results(next(tune_dir.glob(f"{lost['trial_id']}_*"))) if "step" in r]
    assert {r["node_id"] for r in rows} == {worker.node_id, row.node_id}  # trials ran on both nodes
    restarts = [i for i, r in enumerate(rows) if i and r["iterations_since_restore"] == 1]
    assert len(restarts) == 1
    assert rows[restarts[0]]["step"] > plan.phase2.checkpoint_every
    _, runs = mlflow_trial_runs(tmp_path, "smoke")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(table.trial_id)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_killed_driver_blocks_no_one_and_its_rerun_finishes_without_rerunning_completed_trials(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={results}",
           "grid.expert_hidden=[2,4,8]", "resources.max_concurrent=1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Its own session: the driver and the local Ray it starts are one process group, killed together.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    table_path = results / "smoke" / "trials.parquet"
    first = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if table_path.exists():
                t = pd.read_parquet(table_path)
                if (t.status == "completed").any():
                    first = t[t.status == "completed"].iloc[0]
                    break
            time.sleep(0.3)
        assert first is not None, "no trial completed in time"

        # A second sweep of the same name stops at once, naming the running one; it writes nothing.
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"drorae: error: sweep 'smoke' is already running (pid {proc.pid} on {os.uname().nodename}, since "
            + second.stderr.split("since ")[1].split(";")[0] + f"; lock {results / '.smoke.lock'}): wait for it "
            "to finish or stop it, then rerun to resume"]
        assert "Traceback" not in second.stderr + second.stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every process of its session, no cleanup
        proc.wait()
    after_kill = pd.read_parquet(table_path)  # never half-written
    assert first.trial_id in set(after_kill.trial_id[after_kill.status == "completed"])
    assert (after_kill.status == "completed").sum() < 3, "the sweep had finished before the kill"
    assert json.loads((results / ".smoke.lock").read_text())["pid"] == proc.pid  # a stale lock is left

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"left by pid {proc.pid}" in out.stderr  # took the stale lock over
    final = pd.read_parquet(table_path)
    assert sorted(final.trial_id) == sorted(f"h{h}-k6-s0-t0" for h in (2, 4, 8))
    assert (final.status == "completed").all()
    again = final.set_index("trial_id").loc[first.trial_id]
    assert again.train_seconds == first.train_seconds and again.mlflow_run_id == first.mlflow_run_id
    _, runs = mlflow_trial_runs(tmp_path, "smoke")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(final.trial_id)  # one run per trial
    # The completed trial trained once: no training step was reported for it after the kill.
    trial_dir = next((results / "smoke" / "ray" / "smoke").glob(f"{first.trial_id}_*"))
    rows = _results(trial_dir)
    last_final = max(i for i, r in enumerate(rows) if r.get("final"))
    first_final = min(i for i, r in enumerate(rows) if r.get("final"))
    assert not any("loss" in r and not r.get("final") for r in rows[first_final:last_final + 1])
    assert not (results / ".smoke.lock").exists()
    # The command ends with the law: its fit, the figures and the report.
    assert "log-linear law: rFID =" in out.stdout
    assert (results / "smoke" / "report.md").exists()
    assert (results / "smoke" / "figures" / "capacity_scaling.pdf").exists()


def test_nan_inf_error_and_oom_trials_are_retried_then_fail_with_their_reason_and_are_left_out_of_fits(
        tmp_path, local_ray):
    from analysis.load import load
    from sweeper.run import run_sweep

    plan = smoke_plan(tmp_path, "grid.expert_hidden=[2,4,8,16,32,64]", "phase2.steps=8", "resources.max_failures=1",
                      "faults.nan_loss=[h2-k6-s0]", "faults.inf_loss=[h4-k6-s0]",
                      "faults.raise_error=[h8-k6-s0]", "faults.oom=[h16-k6-s0]")
    table = run_sweep(plan).set_index("unit_id")
    errors = table.error.fillna("")
    failed = ["h2-k6-s0", "h4-k6-s0", "h8-k6-s0", "h16-k6-s0"]
    assert (table.loc[failed, "status"] == "failed").all() and (table.loc[failed, "retries"] == 1).all()
    assert "FloatingPointError: phase 2 (fusion): loss is nan at step 0" in errors["h2-k6-s0"]
    assert "FloatingPointError: phase 2 (fusion): loss is inf at step 0" in errors["h4-k6-s0"]
    assert "injected fault in h8-k6-s0" in errors["h8-k6-s0"]
    assert errors["h16-k6-s0"].startswith("MemoryError: out of memory in trial h16-k6-s0-t0 on cpu: can't "
                                          "allocate memory: you tried to allocate 1125899906842624 bytes")
    assert (table.loc[["h32-k6-s0", "h64-k6-s0"], "status"] == "completed").all()
    assert table.loc[["h32-k6-s0", "h64-k6-s0"], "rfid"].notna().all()
    _, runs = mlflow_trial_runs(tmp_path, "smoke")
    assert "loss is inf" in next(r for r in runs if r.data.tags["trial_id"] == "h4-k6-s0-t0").data.tags["error"]
    status = {r.data.tags["trial_id"]: r.info.status for r in runs}
    assert status == {f"h{h}-k6-s0-t0": "FAILED" if h < 32 else "FINISHED" for h in (2, 4, 8, 16, 32, 64)}
    with pytest.warns(UserWarning, match=r"dropped 4 failed trial\(s\): h2-k6-s0-t0, h4-k6-s0-t0, h8-k6-s0-t0, "
                                         r"h16-k6-s0-t0"):
        kept = load(tmp_path / "results" / "smoke")
    assert sorted(kept.points.trial_id) == ["h32-k6-s0-t0", "h64-k6-s0-t0"]
    assert sorted(kept.dropped) == sorted(f"h{h}-k6-s0-t0" for h in (2, 4, 8, 16))


def test_local_storage_is_refused_on_a_cluster_of_two_hosts_before_anything_runs(tmp_path):
    cluster, _ = _cluster("127.0.0.1", "127.0.0.2")  # two addresses: two hosts, as Ray sees them
    try:
        results = tmp_path / "results"
        env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "RAY_ADDRESS": cluster.address}
        out = subprocess.run([sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={results}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    finally:
        cluster.shutdown()
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith(f"drorae: error: storage_path {results / 'smoke' / 'ray'}: a local ")
    assert "nodes on 2 hosts (127.0.0.1, 127.0.0.2)" in lines[0] and "s3://" in lines[0]
    assert not results.exists()  # nothing written
