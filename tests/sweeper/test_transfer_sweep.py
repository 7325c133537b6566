"""search.transfer end to end: the hyperparameter backtest (bench/hparam_transfer.py) on the smoke spec, on real
local Ray, Optuna and a SQLite MLflow store, one trial at a time.

The transfer sweep searches the learning rate at h = 2, 16 and 128 (the same 3 rates each: sampler grid) and gives
h = 512 the law's; then the backtest trains h = 128 once more at the lr the law of h = 2 and 16 predicts. Being a
searched sweep, it also shows a searched point reaching the live law as soon as its own search ends.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers import REPO, mlflow_trial_runs, stop_group

pytestmark = pytest.mark.slow

SEARCH = ("search={params: {lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2}}, n_trials: 3, sampler: grid, "
          "pruner: none, transfer: law, searched: [2, 16, 128]}")
LOW, HIGH = 1.0e-3, 3.0e-2


def law_lr(law, params) -> float:
    """The law's lr at ``params`` within the search's range (what the sweep trains: sweeper.search.law_lr)."""
    return min(max(float(law.predict([params])[0]), LOW), HIGH)


@pytest.fixture(scope="module")
def backtest(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))},
           "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "bench/hparam_transfer.py", "--spec", "sweeps/smoke.yaml", "--search", SEARCH,
           "--results", str(root / "results"), "--json", str(root / "backtest.json"),
           "grid.expert_hidden=[2,16,128,512]", "phase2.steps=16", "resources.max_concurrent=1", "law.target=1.0e+8"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    results = root / "results"
    return SimpleNamespace(root=root, out=out, err=err, json=json.loads((root / "backtest.json").read_text()),
                           table=pd.read_parquet(results / "smoke-hparams" / "trials.parquet"),
                           again=pd.read_parquet(results / "smoke-hparams-transfer-h128" / "trials.parquet"))


def test_the_law_width_trains_once_at_the_laws_lr_after_every_searched_trial(backtest):
    from analysis.hparams import fit_hparam_law

    t = backtest.table
    searched, law = t[t.lr_source == "searched"], t[t.lr_source == "law"]
    assert sorted(searched.expert_hidden.unique()) == [2, 16, 128] and len(searched) == 9
    assert list(law.expert_hidden) == [512] and law.status.tolist() == ["completed"] and law.rfid.notna().all()
    expected = law_lr(fit_hparam_law(searched), int(law.params.iloc[0]))  # the law of the table's own rows
    assert law["hp.lr"].iloc[0] == pytest.approx(expected, rel=1e-9)
    for _unit, rows in searched.groupby("unit_id"):  # sampler: grid: the same 3 log-spaced rates at each width
        assert sorted(rows["hp.lr"]) == pytest.approx([LOW, (LOW * HIGH) ** 0.5, HIGH], rel=1e-9)
    client, runs = mlflow_trial_runs(backtest.root, "smoke-hparams")
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    law_run = by_id[law.trial_id.iloc[0]]
    assert law_run.data.params["lr_source"] == "law"
    assert {by_id[i].data.params["lr_source"] for i in searched.trial_id} == {"searched"}
    # it waited: it started after every searched trial's run had ended
    assert law_run.info.start_time >= max(by_id[i].info.end_time for i in searched.trial_id)
    assert "trains at the hyperparameter law's lr" in backtest.err


def test_a_searched_points_rfid_reaches_the_live_law_as_soon_as_its_search_ends(backtest):
    err = backtest.err
    # one unit at a time, the longest first: h128's best is evaluated (and its point shown) while h2 still trains
    assert err.index("law after 1 of 4 points") < err.index("evaluating h2-k6-s0-t")
    assert "law after 3 of 4 points: rFID = " in err and "law after 4 of 4 points: rFID = " in err
    best = backtest.table[backtest.table.best.astype(bool) & (backtest.table.lr_source == "searched")]
    assert sorted(best.unit_id) == ["h128-k6-s0", "h16-k6-s0", "h2-k6-s0"] and best.rfid.notna().all()
    for _unit, rows in backtest.table[backtest.table.lr_source == "searched"].groupby("unit_id"):
        assert rows.loc[rows.val_l1.idxmin(), "best"]  # each unit's best is its trial of lowest selection L1


def test_the_backtest_trains_the_held_out_width_at_the_lr_the_other_widths_predict(backtest):
    from analysis.hparams import fit_hparam_law

    r, t = backtest.json, backtest.table
    assert r["held_out"] == 128 and r["fitted_on"] == [2, 16]
    rest = t[(t.lr_source == "searched") & (t.expert_hidden != 128)]
    assert r["lr_predicted"] == pytest.approx(law_lr(fit_hparam_law(rest), r["params"]), rel=1e-9)
    again = backtest.again.iloc[0]
    assert len(backtest.again) == 1 and again.expert_hidden == 128 and again.lr_source == "spec"
    assert again.rfid == pytest.approx(r["rfid_transferred"])
    assert again.rfid_se == pytest.approx(r["rfid_transferred_se"])
    own = t[(t.expert_hidden == 128) & t.best.astype(bool)].iloc[0]
    assert r["lr_searched"] == own["hp.lr"] and r["rfid_searched"] == pytest.approx(own.rfid)
    assert r["difference"] == pytest.approx(again.rfid - own.rfid)
    assert r["within_error"] == (abs(again.rfid - own.rfid) <= again.rfid_se)
    # 4 widths x 3 trials, against h = 2 and 16 searched (6) + h = 128 and 512 transferred (2)
    assert (r["trials_all_searched"], r["trials_transfer"]) == (12, 8)
    assert (r["search_trials_all_searched"], r["search_trials_transfer"]) == (12, 6)
    assert f"h = 128 ({r['params']:,} params) held out" in backtest.out
