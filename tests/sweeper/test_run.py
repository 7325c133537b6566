"""Sweeps end to end on real Ray, real Optuna and a real SQLite MLflow store (the smoke spec)."""

import json

import pandas as pd
import pytest

from helpers import mlflow_trial_runs, smoke_plan

pytestmark = pytest.mark.slow

TABLE_COLUMNS = ["trial_id", "point_id", "status", "expert_hidden", "fused_layers", "seed", "params", "rfid",
                 "psnr", "ssim", "lpips", "train_seconds", "eval_seconds", "report_seconds", "startup_seconds",
                 "error"]


def test_sweep_end_to_end_leaves_table_mlflow_runs_and_caches(tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sweeper.run import run_sweep

    plan = smoke_plan(tmp_path, "controls.runs=[rae,last_layer]")
    run_sweep(plan)
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
    # What orchestration cost each trial: training waited on the driver for its reports, and with
    # actor reuse (the default) 5 trials on 2 CPUs started at most 2 new processes, and some none.
    trained = table[table.point_id != "rae"]
    assert (trained.report_seconds > 0).all() and (trained.report_seconds < trained.train_seconds).all()
    assert 1 <= (table.startup_seconds > 0).sum() <= 2 and (table.startup_seconds == 0).sum() >= 3

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
