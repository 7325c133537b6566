"""load(): results directories and table files, controls apart, dropped rows warned, bad input."""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, Table, fit, load
from helpers import SilentServer, closed_port, within


def sweep_table() -> pd.DataFrame:
    """A sweep-shaped table: 4 grid points x 2 seeds, a searched point, a failure, a NaN, a control."""
    rows = []
    for h, params in zip([2, 8, 32, 128], [1e6, 4e6, 1.6e7, 6.4e7]):
        for seed in (0, 1):
            rows.append(dict(trial_id=f"h{h}-s{seed}", point_id=f"h{h}", kind="grid", status="completed",
                             expert_hidden=h, fused_layers=12, seed=seed, params=params,
                             rfid=5 - 0.5 * np.log10(params) + 0.01 * seed, best=True))
    # A searched point: three trials, only the best evaluated.
    for t, best in enumerate([False, True, False]):
        rows.append(dict(trial_id=f"h512-t{t}", point_id="h512", kind="grid", status="completed",
                         expert_hidden=512, fused_layers=12, seed=0, params=2.56e8,
                         rfid=1.0 if best else np.nan, best=best))
    rows.append(dict(trial_id="h2-s2", point_id="h2", kind="grid", status="failed", expert_hidden=2,
                     fused_layers=12, seed=2, params=1e6, rfid=np.nan, best=False))
    rows.append(dict(trial_id="h8-s2", point_id="h8", kind="grid", status="completed", expert_hidden=8,
                     fused_layers=12, seed=2, params=4e6, rfid=np.nan, best=True))
    rows.append(dict(trial_id="h8-k6", point_id="h8-k6", kind="grid", status="completed", expert_hidden=8,
                     fused_layers=6, seed=0, params=2e6, rfid=2.5, best=True))
    rows.append(dict(trial_id="rae", point_id="rae", kind="control", status="completed", expert_hidden=0,
                     fused_layers=1, seed=0, params=5e5, rfid=0.9, best=True))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_load_results_dir_and_file(tmp_path, fmt):
    df = sweep_table()
    path = tmp_path / f"trials.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    for source in (tmp_path, path, str(path)):
        with pytest.warns(UserWarning) as record:
            table = load(source)
        assert isinstance(table, Table)
        assert sorted(table.points.trial_id) == sorted(
            [f"h{h}-s{s}" for h in (2, 8, 32, 128) for s in (0, 1)] + ["h512-t1", "h8-k6"])
        assert list(table.controls.trial_id) == ["rae"]
        assert sorted(table.dropped) == ["h2-s2", "h8-s2"]
        messages = " ".join(str(w.message) for w in record)
        assert "h2-s2" in messages and "failed" in messages and "h8-s2" in messages


def test_where_and_fit_on_the_table(tmp_path):
    sweep_table().to_parquet(tmp_path / "trials.parquet")
    with pytest.warns(UserWarning):
        table = load(tmp_path, where="fused_layers=12")
    assert "h8-k6" not in set(table.points.trial_id) and len(table.points) == 9
    res = fit(table)
    assert res.nobs == 9 and res.params["b"] < 0
    assert len(load(tmp_path, where="point_id=h512").points) == 1   # nothing dropped there: no warning


def test_best_as_text(tmp_path):
    df = sweep_table()
    df["best"] = df["best"].map({True: "true", False: "False"})
    with pytest.warns(UserWarning):
        assert "h512-t0" not in set(load(df).points.trial_id)


def test_plain_published_table(tmp_path):
    path = tmp_path / "paper.csv"
    pd.DataFrame({"C": [1e6, 1e7, 1e8], "gfid": [2.0, 1.5, 1.0]}).to_csv(path, index=False)
    table = load(path, x="C", y="gfid")
    assert len(table.points) == 3 and table.controls.empty
    assert fit(table, x="C", y="gfid").params["b"] == pytest.approx(-0.5)
    assert fit(table).params["b"] == pytest.approx(-0.5)   # the Table's own x and y


@pytest.mark.parametrize("change, match", [
    (lambda df: df.drop(columns="rfid"), "column 'rfid'"),
    (lambda df: df.assign(rfid=df.rfid.astype(object).where(df.trial_id != "h2-s0", "oops")), "'rfid'.*text"),
    (lambda df: df.assign(params=df.params.astype(str).where(df.trial_id != "h8-s1", "1.6M")), "'params'.*text"),
])
def test_bad_columns(tmp_path, change, match):
    change(sweep_table()).to_csv(tmp_path / "trials.csv", index=False)
    with pytest.raises(AnalysisError, match=match) as exc:
        load(tmp_path)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_bad_sources_and_where(tmp_path):
    with pytest.raises(AnalysisError, match="no trials.parquet or trials.csv"):
        load(tmp_path)
    with pytest.raises(AnalysisError, match="no such file"):
        load(tmp_path / "missing.parquet")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(AnalysisError, match="format"):
        load(tmp_path / "t.json")
    sweep_table().to_parquet(tmp_path / "trials.parquet")
    with pytest.raises(AnalysisError, match="no column 'panel'"):
        load(tmp_path, where="panel=capacity")
    with pytest.raises(AnalysisError, match="COLUMN=VALUE"):
        load(tmp_path, where="fused_layers")


def test_fewer_than_three_capacities(tmp_path):
    df = sweep_table()
    df[df.expert_hidden.isin([2, 8]) & (df.fused_layers == 12)].to_parquet(tmp_path / "trials.parquet")
    with pytest.warns(UserWarning):
        table = load(tmp_path)
    with pytest.raises(AnalysisError, match="2 distinct capacities"):
        fit(table)


def test_analysis_imports_no_heavy_packages():
    code = ("import sys, analysis; heavy = [m for m in ('torch', 'ray', 'mlflow', 'model', 'sweeper') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_load_from_mlflow(tmp_path, monkeypatch):
    """Nested trial runs of an experiment become rows; the parent run and unevaluated trials do not."""
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # a file store keeps the test fast
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    client = mlflow_tracking.MlflowClient()
    exp = client.create_experiment("sweep")
    parent = client.create_run(exp).info.run_id
    trials = [("a", 1e6, 2.0, "FINISHED", "1"), ("b", 1e7, 1.5, "FINISHED", "1"), ("c", 1e8, 1.0, "FINISHED", "1"),
              ("d", 1e9, None, "FAILED", "1"), ("e", 1e9, None, "FINISHED", "3"), ("f", 1e9, None, "FINISHED", "3")]
    for tid, params, rfid, status, n_trials in trials:
        tags = {"mlflow.parentRunId": parent, "trial_id": tid, "kind": "grid", **({"status": "pruned"} if tid == "f"
                                                                                  else {})}
        run = client.create_run(exp, tags=tags).info.run_id
        client.log_param(run, "params", str(int(params)))
        client.log_param(run, "n_trials", n_trials)
        if rfid is not None:
            client.log_metric(run, "rfid", rfid)
        client.set_terminated(run, status)
    with pytest.warns(UserWarning, match="failed trial.*d"):
        table = load("mlflow:sweep")
    assert sorted(table.points.trial_id) == ["a", "b", "c"]
    status = dict(zip(table.trials.trial_id, table.trials.status))
    assert status["e"] == "completed" and status["f"] == "pruned"  # a pruned run is FINISHED, tagged pruned
    assert fit(table).params["b"] == pytest.approx(-0.5)
    with pytest.raises(AnalysisError, match="no such experiment"):
        load("mlflow:nope")


# --- RESULTS that is no regular file; mlflow:EXPERIMENT from a store that is not there or never answers ----

FORMS = "(expected a results directory, a .parquet or .csv table, or mlflow:EXPERIMENT)"


def test_results_that_is_no_regular_file_is_one_line_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "zero.csv").symlink_to("/dev/zero")  # read as a table it would fill the memory
    (tmp_path / "loop.parquet").symlink_to(tmp_path / "loop.parquet")
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "trials.csv")  # a results directory whose table is a FIFO
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "fifo.csv": f"{tmp_path / 'fifo.csv'}: a named pipe (FIFO), not a regular file {FORMS}",
             tmp_path / "zero.csv": f"{tmp_path / 'zero.csv'}: a character device, not a regular file {FORMS}",
             Path("/dev/zero"): f"/dev/zero: a character device, not a regular file {FORMS}",
             tmp_path / "loop.parquet": f"{tmp_path / 'loop.parquet'}: a symbolic link loop {FORMS}",
             tmp_path / "run": f"{tmp_path / 'run' / 'trials.csv'}: a named pipe (FIFO), not a regular file {FORMS}",
             tmp_path / "empty": f"{tmp_path / 'empty'}: no trials.parquet or trials.csv in this results directory"}
    for source, message in cases.items():
        with pytest.raises(AnalysisError) as err:
            within(20, load, str(source))
        assert str(err.value) == message


def test_a_table_over_the_size_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "trials.parquet"
    sweep_table().to_parquet(path)
    monkeypatch.setattr(importlib.import_module("analysis.load"), "TABLE_MAX_BYTES", path.stat().st_size - 1)
    with pytest.raises(AnalysisError, match=f"{path}: .* bytes, over the .* bytes a file may have here"):
        load(tmp_path)
    monkeypatch.setattr(importlib.import_module("analysis.load"), "TABLE_MAX_BYTES", path.stat().st_size)
    with pytest.warns(UserWarning):
        assert len(load(tmp_path).points) == len(load(sweep_table()).points)


def test_looking_an_experiment_up_never_creates_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(AnalysisError) as err:
        load("mlflow:nope")
    assert str(err.value) == (f"mlflow:nope: no MLflow store to read: MLFLOW_TRACKING_URI is unset and there is no "
                              f"results/mlflow.db in {tmp_path}; set MLFLOW_TRACKING_URI (e.g. "
                              "sqlite:///path/to/results/mlflow.db or http://host:5000) or run from the directory "
                              "above results/")
    for uri, words in [(f"sqlite:///{tmp_path}/none/mlflow.db", f"no such database file {tmp_path}/none/mlflow.db "
                                                                 "(reading an experiment never creates one)"),
                       ("sqlite:///mlflow.db", "no such database file mlflow.db"),
                       ("sqlite://", "an in-memory database holds no experiments"),
                       (f"file://{tmp_path}/mlruns", f"no such directory {tmp_path}/mlruns"),
                       ("mlruns", "no such directory mlruns")]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(AnalysisError) as err:
            load("mlflow:nope")
        assert str(err.value).startswith(f"mlflow:nope: MLFLOW_TRACKING_URI {uri}: {words}"), err.value
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/, no none/


@pytest.mark.parametrize("uri, why", [("http://127.0.0.1:99999", "Port out of range 0-65535"),
                                      ("http://[::1", "Invalid IPv6 URL")])
def test_a_tracking_uri_that_does_not_parse_is_one_line_naming_it(tmp_path, monkeypatch, uri, why):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(AnalysisError) as err:
        load("mlflow:sweep")
    assert str(err.value) == f"mlflow:sweep: MLFLOW_TRACKING_URI {uri!r}: not a valid address ({why})"


def drorae_fit(source: str, cwd: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    """`drorae fit SOURCE` in a fresh interpreter, and how long it took."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **env}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sweeper", "fit", source], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    return out, time.monotonic() - start


@pytest.mark.slow  # a fresh interpreter, and a wait of its own for the silent server
@pytest.mark.parametrize("server", ["refused", "silent"])
def test_an_mlflow_server_that_refuses_or_never_answers_is_one_line_within_15_s(tmp_path, server):
    with SilentServer() as silent:
        port = silent.port if server == "silent" else closed_port()
        out, seconds = drorae_fit("mlflow:sweep", tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
        assert silent.accepted == (server == "silent")  # the silent one was reached: it accepted and said nothing
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    head = f"drorae: error: mlflow:sweep: MLFLOW_TRACKING_URI http://127.0.0.1:{port}: no tracking server answers"
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(head), out.stderr
    assert ("within 5 s" if server == "silent" else "(Connection refused)") in out.stderr
    assert seconds < 15, seconds  # today's MLflow client: 254 s (refused), still retrying at 330 s (silent)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh interpreter, and a new SQLite store (MLflow's schema takes seconds)
def test_an_experiment_missing_from_the_default_store_is_one_line(tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "results").mkdir()
    MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}").create_experiment("sweep")
    before = (tmp_path / "results" / "mlflow.db").read_bytes()
    out, _ = drorae_fit("mlflow:nope", tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"drorae: error: mlflow:nope: no such experiment in "
                                       f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"]
    assert os.listdir(tmp_path) == ["results"] and (tmp_path / "results" / "mlflow.db").read_bytes() == before


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_measurement_error_and_cost_columns_read_as_numbers(tmp_path, fmt):
    df = sweep_table()
    df["rfid_se"] = np.where(df.kind == "control", 0.2, 0.05)
    df["train_steps"], df["train_flops"] = 1000, 3.5e12
    path = tmp_path / f"trials.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    with pytest.warns(UserWarning):
        table = load(path)
    for col in ("rfid_se", "train_steps", "train_flops"):
        assert table.points[col].dtype == float and table.controls[col].dtype == float
    assert set(table.points.rfid_se) == {0.05} and list(table.controls.rfid_se) == [0.2]
    df.astype({"rfid_se": object}).assign(rfid_se=lambda d: d.rfid_se.where(d.trial_id != "h8-s0", "oops")) \
        .to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(AnalysisError, match="column 'rfid_se' must be numeric but holds text: 'oops'.*h8-s0"):
        load(tmp_path / "bad.csv")


def test_measurement_error_and_costs_from_mlflow_metrics(tmp_path, monkeypatch):
    """rfid_se and the costs come back from each trial run's metrics (the device from its tag); a run without
    them reads NaN."""
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    client = mlflow_tracking.MlflowClient()
    exp = client.create_experiment("sweep")
    parent = client.create_run(exp).info.run_id
    for tid, params, rfid, se in [("a", 1e6, 2.0, 0.1), ("b", 1e7, 1.5, 0.2), ("c", 1e8, 1.0, None)]:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": tid, "kind": "grid",
                                           "device": f"CPU {tid} (2 threads)"}).info.run_id
        client.log_param(run, "params", str(int(params)))
        metrics = {"rfid": rfid, "train_steps": 500.0, "train_flops": 2e12, "eval_flops": 3e9}
        metrics.update({} if se is None else {"rfid_se": se})
        for k, v in metrics.items():
            client.log_metric(run, k, v)
        client.set_terminated(run, "FINISHED")
    pts = load("mlflow:sweep").points.set_index("trial_id").sort_index()
    np.testing.assert_allclose(pts.rfid_se.to_numpy(), [0.1, 0.2, np.nan])
    assert (pts.train_steps == 500).all() and (pts.train_flops == 2e12).all() and (pts.eval_flops == 3e9).all()
    assert list(pts.device) == ["CPU a (2 threads)", "CPU b (2 threads)", "CPU c (2 threads)"]  # the device tag
    res = fit(load("mlflow:sweep"))
    assert res.measurement_error() is None and "1 of 3 fitted rows have no finite positive rfid_se (c)" in res.summary()


# --- rows: how messages count them, duplicates, a where that matches nothing ---------------------


def test_points_keep_their_row_in_the_source_table():
    df = sweep_table()
    with pytest.warns(UserWarning):
        table = load(df)
    for i, row in table.points.iterrows():
        assert df.loc[i, "trial_id"] == row["trial_id"]                 # index i: row i + 1 of the source
    assert list(table.controls.index) == list(df.index[df.kind == "control"])


def test_rows_without_trial_ids_are_named_by_their_data_row(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"params": [1e6, 1e7, 1e8, 1e9], "rfid": [2.0, 1.5, np.inf, 1.0],
                  "status": ["completed", "failed", "completed", "completed"]}).to_csv(path, index=False)
    with pytest.warns(UserWarning) as record:
        table = load(path)
    messages = [str(w.message) for w in record]
    assert any(m.endswith("dropped 1 failed trial(s): row 2") for m in messages), messages
    assert any(m.endswith("NaN or infinite 'params' or 'rfid': row 3") for m in messages), messages
    assert table.dropped == ["row 2", "row 3"]


def test_exact_duplicates_are_dropped_and_named_by_row():
    df = sweep_table()
    df = pd.concat([df, df.iloc[[2, 0]]], ignore_index=True)              # rows 3 and 1, written again
    n = len(sweep_table())
    with pytest.warns(UserWarning) as record:
        table = load(df)
    (message,) = [str(w.message) for w in record if "duplicate" in str(w.message)]
    assert "dropped 2 exact duplicate row(s)" in message and "not another seed" in message
    assert f"row {n + 1} (a copy of row 3), row {n + 2} (a copy of row 1)" in message
    assert table.points["trial_id"].is_unique and len(table.points) == 10
    assert {f"row {n + 1} (a copy of row 3)", f"row {n + 2} (a copy of row 1)"} <= set(table.dropped)


def test_rows_that_differ_in_one_column_are_not_duplicates():
    df = sweep_table()
    df = pd.concat([df, df.iloc[[0]].assign(seed=7, trial_id="h2-s7")], ignore_index=True)
    with pytest.warns(UserWarning) as record:
        table = load(df)
    assert not [w for w in record if "duplicate" in str(w.message)]
    assert "h2-s7" in set(table.points.trial_id)


@pytest.mark.parametrize("where, match", [
    ("fused_layers=7", r"where fused_layers=7: no row of the table to fit has fused_layers = 7 "
                       r"\(its values there: 12, 6\)"),
    ("fused_layers=6,expert_hidden=2", r"where expert_hidden=2: .* among the rows where fused_layers=6 "
                                       r"\(its values there: 8\)"),
    ("point_id=h9", r"point_id = h9 \(its values there: h128, h2, h32, h512, h8, h8-k6\)"),
])
def test_a_where_that_matches_nothing_says_so(where, match):
    with pytest.raises(AnalysisError, match=match):
        load(sweep_table(), where=where)
