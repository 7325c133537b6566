"""Sweeps end to end on real Ray, real Optuna and a real SQLite MLflow store (the smoke spec)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO, SMOKE, mlflow_trial_runs, smoke_plan

pytestmark = pytest.mark.slow

TABLE_COLUMNS = ["trial_id", "point_id", "status", "expert_hidden", "fused_layers", "seed", "params", "rfid",
                 "psnr", "ssim", "lpips", "train_seconds", "eval_seconds", "error"]


def test_sweep_end_to_end_leaves_table_mlflow_runs_and_caches(tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sweeper.run import run_sweep

    plan = smoke_plan(tmp_path, "controls.runs=[rae,last_layer]")
    df = run_sweep(plan)
    sweep = tmp_path / "results" / "smoke"
    table = pd.read_parquet(sweep / "trials.parquet")
    assert set(TABLE_COLUMNS) <= set(table.columns)
    assert pd.read_csv(sweep / "trials.csv").shape[0] == len(table) == 5
    assert (table.status == "completed").all(), table[["trial_id", "status", "error"]]
    assert sorted(table.point_id) == sorted(["h2-k6", "h16-k6", "h128-k6", "rae", "last_layer"])
    grid = table[table.kind == "grid"].sort_values("params")
    assert list(grid.params) == [u.params for u in plan.units if u.kind == "grid"]
    assert table.rfid.notna().all() and (table.rfid > 0).all()
    assert table.psnr.between(5, 60).all() and table.ssim.between(0, 1).all()
    assert table.loc[table.point_id == "rae", "params"].item() == 0
    assert table.loc[table.point_id == "last_layer", "fused_layers"].item() == 1

    client, runs = mlflow_trial_runs(tmp_path, "smoke")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(table.trial_id)
    run = next(r for r in runs if r.data.tags["trial_id"] == "h16-k6-s0-t0")
    assert run.data.params["expert_hidden"] == "16" and "phase" in run.data.metrics
    assert run.data.metrics["rfid"] == pytest.approx(table.set_index("trial_id").rfid["h16-k6-s0-t0"])
    assert run.data.tags.get("mlflow.source.git.commit")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["reconstructions.png"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 3  # the training curve
    # Shared work is cached for the next sweep: the phase-1 decoder, features, FID statistics.
    timing = json.loads((sweep / "timing.json").read_text())
    assert set(timing["shared"]) == {"encoder", "features", "fid_stats", "phase1"}


def test_failing_trial_is_retried_then_recorded_with_its_error_and_the_sweep_completes(tmp_path, local_ray):
    from sweeper.run import run_sweep

    plan = smoke_plan(tmp_path, "faults.nan_loss=[h16-k6-s0]", "faults.raise_error=[h2-k6-s0]",
                      "resources.max_failures=1")
    table = run_sweep(plan).set_index("unit_id")
    assert table.loc["h128-k6-s0", "status"] == "completed"
    assert table.loc["h16-k6-s0", "status"] == "failed"
    assert "FloatingPointError: phase 2 (fusion): loss is nan at step 0" in table.loc["h16-k6-s0", "error"]
    assert table.loc["h2-k6-s0", "status"] == "failed"
    assert "injected fault in h2-k6-s0" in table.loc["h2-k6-s0", "error"]
    assert table.loc["h16-k6-s0", "retries"] == 1 and table.loc["h2-k6-s0", "retries"] == 1
    _, runs = mlflow_trial_runs(tmp_path, "smoke")
    failed = [r for r in runs if r.data.tags["trial_id"] == "h16-k6-s0-t0"]
    assert failed[0].info.status == "FAILED" and "nan" in failed[0].data.tags["error"]


def test_per_point_optuna_search_makes_the_best_trial_the_points_row(tmp_path, local_ray):
    import optuna

    from sweeper.run import run_sweep

    plan = smoke_plan(tmp_path, "grid.expert_hidden=[16]",
                      "search={params: {lr: {type: loguniform, low: 1.0e-4, high: 3.0e-2}}, n_trials: 4}")
    table = run_sweep(plan)
    assert len(table) == 4 and set(table.unit_id) == {"h16-k6-s0"}
    done = table[table.status.isin(["completed", "pruned"])]
    assert len(done) == 4 and done["hp.lr"].nunique() == 4
    best = table[table.best.astype(bool)]
    assert len(best) == 1
    completed = table[table.status == "completed"]
    assert best.trial_id.item() == completed.loc[completed.val_l1.idxmin(), "trial_id"]
    assert best.rfid.notna().all() and table[~table.best.astype(bool)].rfid.isna().all()
    study = optuna.load_study(study_name="smoke/h16-k6-s0",
                              storage=f"sqlite:///{tmp_path / 'results' / 'smoke' / 'optuna.db'}")
    assert len(study.trials) == 4
    assert study.best_value == pytest.approx(completed.val_l1.min())


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from sweeper.run import run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        table = run_sweep(smoke_plan(tmp_path, "grid.expert_hidden=[2,4,8,16]"), address=cluster.address)
        assert (table.status == "completed").all()
        nodes = {n["NodeID"] for n in ray.nodes()}
        assert set(table.node_id) <= nodes and table.node_id.nunique() == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_interrupted_sweep_resumes_and_runs_every_trial_exactly_once(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={results}",
           "grid.expert_hidden=[2,4,8,16]", "resources.max_concurrent=1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    table_path = results / "smoke" / "trials.parquet"
    deadline = time.monotonic() + 240
    first = None
    while time.monotonic() < deadline and proc.poll() is None:
        if table_path.exists():
            t = pd.read_parquet(table_path)
            if (t.status == "completed").any():
                first = t[t.status == "completed"].iloc[0]
                break
        time.sleep(0.5)
    assert first is not None, "no trial completed in time"
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    proc.wait(timeout=120)
    before = pd.read_parquet(table_path)
    assert (before.status == "completed").sum() < 4, "the sweep had finished before the interrupt"

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    after = pd.read_parquet(table_path)
    assert sorted(after.trial_id) == sorted(f"h{h}-k6-s0-t0" for h in (2, 4, 8, 16))
    assert (after.status == "completed").all()
    again = after.set_index("trial_id").loc[first.trial_id]
    assert again.train_seconds == first.train_seconds and again.mlflow_run_id == first.mlflow_run_id
    _, runs = mlflow_trial_runs(tmp_path, "smoke")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(after.trial_id)  # one run per trial
    # The completed trial was not run again: Tune's record of it holds one final result.
    trial_dirs = list((results / "smoke" / "ray" / "tune").glob(f"{first.trial_id}_*"))
    assert len(trial_dirs) == 1
    finals = [json.loads(line) for line in (trial_dirs[0] / "result.json").read_text().splitlines()]
    assert sum(1 for r in finals if r.get("final")) == 1
    # The command ends with the law: its fit, the figures and the report.
    assert "log-linear law: rFID =" in out.stdout
    assert (results / "smoke" / "report.md").exists()
    assert (results / "smoke" / "figures" / "capacity_scaling.pdf").exists()
