"""Sweeps end to end on real Ray, real Optuna and a real SQLite MLflow store (the smoke spec)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPO, SMOKE, smoke_plan

pytestmark = pytest.mark.slow

TABLE_COLUMNS = ["trial_id", "point_id", "status", "expert_hidden", "fused_layers", "seed", "params", "rfid",
                 "psnr", "ssim", "lpips", "train_seconds", "eval_seconds", "report_seconds", "startup_seconds",
                 "train_flops", "eval_flops", "device", "error"]


def test_sweep_end_to_end_leaves_table_mlflow_runs_and_caches(smoke_sweep):
    from mlflow.tracking import MlflowClient

    from sweeper.plan import build_plan
    from sweeper.spec import load_spec
    from sweeper.trial_config import Control

    plan = build_plan(load_spec(SMOKE, [f"results_dir={smoke_sweep.results}", *smoke_sweep.args]))
    sweep = smoke_sweep.results / "smoke"
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
    # What orchestration cost each trial: training waited on the driver for its reports, and with
    # actor reuse (the default) 5 trials on 2 CPUs started at most 2 new processes, and some none.
    trained = table[table.point_id != "rae"]
    assert (trained.report_seconds > 0).all() and (trained.report_seconds < trained.train_seconds).all()
    assert 1 <= (table.startup_seconds > 0).sum() <= 2 and (table.startup_seconds == 0).sum() >= 3
    # What each trial cost: model FLOPs (model.cost's closed forms, the plan's estimate, equal what the trials
    # counted), seconds, and the device; the table records its spec, so the dry run reads its seconds per FLOP.
    for u in plan.units:
        row = table.set_index("unit_id").loc[u.unit_id]
        control = Control(u.point_id) if u.kind != "grid" else None
        train, evaluation = plan.flops(u.expert_hidden, u.fused_layers, control)
        assert row.train_flops == pytest.approx(train, rel=1e-9)
        assert row.eval_flops == pytest.approx(evaluation, rel=1e-9)
    assert table.loc[table.point_id == "rae", "train_flops"].item() == 0 and (trained.train_flops > 0).all()
    assert table.device.str.endswith("(1 threads)").all()  # resources.cpu: 1
    from sweeper.plan import format_plan, measured_rates, spec_digest
    from sweeper.results import read_metadata

    assert read_metadata(sweep / "trials.parquet")["spec"] == spec_digest(plan.spec)
    rates = measured_rates(plan)
    assert rates.source.startswith("measured on 4 completed trials")  # the rae control trains nothing
    assert rates.seconds_per_flop == pytest.approx(trained.train_seconds.sum() / trained.train_flops.sum())
    assert "measured on 4 completed trials" in format_plan(build_plan(plan.spec, rates))

    client = MlflowClient(f"sqlite:///{smoke_sweep.results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(table.trial_id)
    run = next(r for r in runs if r.data.tags["trial_id"] == "h16-k6-s0-t0")
    assert run.data.params["expert_hidden"] == "16" and "phase" in run.data.metrics
    assert run.data.metrics["rfid"] == pytest.approx(table.set_index("trial_id").rfid["h16-k6-s0-t0"])
    assert run.data.metrics["eval_flops"] == table.set_index("trial_id").eval_flops["h16-k6-s0-t0"]
    assert run.data.tags["device"] == table.set_index("trial_id").device["h16-k6-s0-t0"]
    assert run.data.tags.get("mlflow.source.git.commit")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["reconstructions.png"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 3  # the training curve
    # Shared work is cached for the next sweep: the phase-1 decoder, features, FID statistics.
    timing = json.loads((sweep / "timing.json").read_text())
    assert set(timing["shared"]) == {"encoder", "features", "fid_stats", "phase1"}


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


# The cheapest real sweep: one or two capacities, 8 steps each.
CHEAP = ("phase2.steps=8",)


def _trial_dirs(experiment) -> list[str]:
    """The Tune trial directories of an experiment (named <trial_id>_<Tune's id>)."""
    return sorted(p.name for p in experiment.glob("h*") if p.is_dir())


def test_sweeps_on_one_storage_path_get_their_own_experiments_restart_reruns_and_another_results_dir_is_refused(
        tmp_path, local_ray, monkeypatch):
    """One explicit storage_path (a cluster's shared one): two sweep names each get their own Tune
    experiment and trials; --restart reruns every trial and keeps the earlier run; the same sweep from
    another results directory is refused in one line naming the owner's, writing nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sweeper.run import run_sweep
    from sweeper.storage import CLAIM

    storage = tmp_path / "shared" / "ray-results"
    plans = {name: smoke_plan(tmp_path, "grid.expert_hidden=[2]", *CHEAP, f"storage_path={storage}", f"name={name}")
             for name in ("smoke", "other")}
    tables = {name: run_sweep(plan) for name, plan in plans.items()}
    for name, table in tables.items():  # each ran its own trial, in its own experiment
        assert list(table.trial_id) == ["h2-k6-s0-t0"] and (table.status == "completed").all()
        assert len(_trial_dirs(storage / name)) == 1
        claim = json.loads((storage / name / CLAIM).read_text())
        assert claim["results_dir"] == str(tmp_path / "results") and claim["sweep"] == name
    assert _trial_dirs(storage / "smoke") != _trial_dirs(storage / "other")
    assert tables["smoke"].mlflow_run_id.item() != tables["other"].mlflow_run_id.item()
    assert sorted(p.name for p in storage.iterdir()) == ["other", "smoke"]

    # --restart: every trial trains again (a new Tune trial, a new MLflow run), none restored; the
    # earlier experiment and the earlier results are set aside, not deleted.
    first, first_dirs = tables["smoke"].set_index("trial_id"), _trial_dirs(storage / "smoke")
    second = run_sweep(plans["smoke"], restart=True).set_index("trial_id")
    assert list(second.index) == ["h2-k6-s0-t0"] and (second.status == "completed").all()
    (earlier,) = storage.glob("smoke.before-restart-*")
    assert _trial_dirs(earlier) == first_dirs
    assert len(_trial_dirs(storage / "smoke")) == 1 and not set(_trial_dirs(storage / "smoke")) & set(first_dirs)
    assert not set(second.mlflow_run_id) & set(first.mlflow_run_id)
    (kept,) = (tmp_path / "results").glob("smoke.before-restart-*")
    assert list(pd.read_parquet(kept / "trials.parquet").mlflow_run_id) == list(first.mlflow_run_id)
    assert len(_trial_dirs(storage / "other")) == 1  # the other sweep untouched

    # The same sweep on the same storage from another results directory: one line naming the owner's.
    elsewhere = tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={elsewhere}",
                          f"storage_path={storage}", "grid.expert_hidden=[2]", *CHEAP],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    claim = json.loads((storage / "smoke" / CLAIM).read_text())
    assert out.stderr.splitlines() == [
        f"drorae: error: sweep 'smoke': its Ray Tune experiment {storage}/smoke (storage_path) belongs to the "
        f"sweep of results_dir {tmp_path / 'results'} (claimed from {claim['host']} on {claim['claimed']}): run "
        "the sweep with that results_dir, or give this one another storage_path or name"]
    assert not elsewhere.exists()  # nothing written
    assert len(_trial_dirs(storage / "smoke")) == 1


def test_address_local_starts_the_same_pinned_local_ray_as_no_address():
    """`--address local` (or RAY_ADDRESS=local): a new one-node Ray of its own on 127.0.0.1, dashboard off,
    as without an address; never Ray's own defaults (the machine's outward address, a dashboard).
    In a fresh interpreter, whose environment does not pin Ray to 127.0.0.1 as the tests' does."""
    import os
    import subprocess
    import sys

    code = ("import json, sys, ray\n"
            "from sweeper.run import init_ray\n"
            "init_ray(sys.argv[1] or None)\n"
            "info = ray._private.worker._global_node.address_info\n"
            "print(json.dumps({'ip': info['node_ip_address'], 'dashboard': info.get('webui_url') or None,\n"
            "                  'nodes': sorted(n['NodeManagerAddress'] for n in ray.nodes())}))\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # an address in the environment: `local` wins over it
    seen = {}
    for address in ("local", ""):
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        seen[address] = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["local"] == seen[""] == {"ip": "127.0.0.1", "dashboard": None, "nodes": ["127.0.0.1"]}
