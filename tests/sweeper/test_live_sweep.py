"""The live law, the stop rule, ``--adaptive`` and ``drorae next`` end to end: the real CLI on the smoke spec, on
real local Ray, Optuna and a SQLite MLflow store, run three times on one results directory.

1. four widths, one trial at a time, a stop rule any finite interval meets: the law is shown from its third
   point on, the sweep stops there, the fourth width is recorded as skipped;
2. the same command again: the rule still holds, nothing runs;
3. another threshold and ``--adaptive 1``: the skipped width runs, then one point the design chooses.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import REPO, SMOKE, mlflow_trial_runs, stop_group

pytestmark = pytest.mark.slow

WIDTHS = "grid.expert_hidden=[2,8,32,128]"
QUICK = ("phase2.steps=16", "resources.max_concurrent=1", WIDTHS)
STOP = "stop={target: 1.0e+8, pi_width_below: 1.0e+12}"  # any finite PI: met at the law's first fit (3 points)


def _sweep(root, *args, timeout=900):
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))},
           "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={root / 'results'}", *QUICK, *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    sweep_dir = root / "results" / "smoke"
    _, parent = _parent(root)
    _, trial_runs = mlflow_trial_runs(root, "smoke")
    return SimpleNamespace(out=out + err, err=err, n_runs=len(trial_runs),
                           table=pd.read_parquet(sweep_dir / "trials.parquet"),
                           law=json.loads((sweep_dir / "law.json").read_text()),
                           report=(sweep_dir / "report.md").read_text(), ended=parent.data.tags.get("ended"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    first = _sweep(root, STOP)
    again = _sweep(root, STOP)
    more = _sweep(root, "stop={target: 1.0e+8, pi_width_below: 1.0e-9}", "--adaptive", "1")
    return SimpleNamespace(root=root, first=first, again=again, more=more, dir=root / "results" / "smoke")


def _parent(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return client, parents[0]


def test_the_law_is_shown_as_points_arrive_and_the_stop_rule_skips_the_rest(runs):
    first = runs.first
    assert "law after 1 of 4 points: waiting for 3 points at distinct capacities" in first.err
    assert "law after 3 of 4 points: rFID = " in first.err and "at 1e+08: " in first.err
    assert "stop rule met after 3 points" in first.err
    t = first.table.set_index("trial_id")
    assert (t.status == "completed").sum() == 3
    skipped = t[t.status == "skipped"]
    assert len(skipped) == 1 and skipped.error.iloc[0].startswith("stop rule met after 3 points: the 95% prediction")
    assert first.law["status"] == "fitted" and first.law["n_points"] == 3 and first.law["stopped"]["n_points"] == 3
    # the law shown is the analysis package's fit of the table
    from analysis import fit, load

    ref = fit(load(first.table))
    assert first.law["history"][0]["params"] == pytest.approx(dict(ref.params), rel=1e-9)


def test_the_same_command_again_starts_nothing_and_another_threshold_runs_the_skipped(runs):
    first, again, more = runs.first, runs.again, runs.more
    pd.testing.assert_frame_equal(first.table[["trial_id", "status"]], again.table[["trial_id", "status"]])
    assert first.n_runs == again.n_runs == 3 and more.n_runs == 5  # no trial started in the second run
    assert "adaptive point" not in again.err
    done = more.table[more.table.status == "completed"]
    assert len(done) == 5 and not (more.table.status == "skipped").any()
    skipped_id = first.table.trial_id[first.table.status == "skipped"].iloc[0]
    assert skipped_id in set(done.trial_id)
    grid = {f"h{h}-k6" for h in (2, 8, 32, 128)}
    adaptive = done[~done.point_id.isin(grid)]
    seeds = done[done.point_id.isin(grid) & (done.seed > 0)]
    assert len(adaptive) + len(seeds) == 1  # one adaptive point: a new width, or one more seed at a width
    assert "adaptive point 1 of 1" in more.err and more.law["n_points"] == 5 and more.law["stopped"] is None


def test_mlflow_draws_the_law_converging_and_says_why_the_sweep_ended(runs):
    client, parent = _parent(runs.root)
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "law.b")]
    assert 3 in steps and 5 in steps and set(steps) <= {3, 4, 5}
    _, trial_runs = mlflow_trial_runs(runs.root, "smoke")
    assert len({r.data.tags["trial_id"] for r in trial_runs}) == 5  # skipped trials never had a run
    history = runs.more.law["history"]
    assert [h["n_points"] for h in history][:1] == [3] and history[-1]["n_points"] == 5


def test_the_table_mlflow_and_report_say_why_each_run_ended(runs):
    for run in (runs.first, runs.again):
        assert run.ended.startswith("stop rule met after 3 points") and run.ended.endswith("1 planned trial(s) skipped")
        assert f"Why the sweep ended: {run.ended}." in run.report
    assert runs.more.ended == "every planned trial ran"
    assert "Why the sweep ended: every planned trial ran." in runs.more.report
    from analysis import load

    assert load(runs.dir).metadata["ended"]["by"] == "plan"


def test_drorae_next_ranks_candidates_of_the_finished_sweep(runs):
    proc = subprocess.run([sys.executable, "-m", "sweeper", "next", str(runs.dir), "--target", "1e8", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["criterion_name"] == "tool" and out["per"] == "cost"
    cands = pd.DataFrame(out["candidates"])
    assert {"new", "seed"} <= set(cands.kind) and cands["rank"].tolist() == list(range(1, len(cands) + 1))
    score = cands["reduction_per_second"].to_numpy()
    assert np.all(score[:-1] >= score[1:] - 1e-12)  # best first
    assert out["cost_model"]["units"] == 5
