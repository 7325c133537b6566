"""The tracker's outbox: MLflow writes that wait, in order, while the tracking server is unreachable.

Real MLflow clients only: a SQLite store is the server that answers, a closed port on 127.0.0.1 the
one that does not (connection refused, as from a stopped ``mlflow server``).
"""

import json
import logging
import os
import socket
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import requests

from sweeper.outbox import HTTP_RETRY_DEFAULTS, Outbox, bound_http_retries, server_unreachable
from sweeper.results import ResultsTable
from sweeper.tracking import PENDING_FILE, SweepTracker


@pytest.fixture(autouse=True)
def _fast_client(monkeypatch):
    """One attempt per write (no MLflow HTTP retries); restored after the test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store (created once: its schema migration takes seconds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


def down_client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(closed_port_uri())


def config(h: int) -> dict:
    return {"trial_id": f"h{h}-k6-s0-t0", "unit_id": f"h{h}-k6-s0", "point_id": f"h{h}-k6", "kind": "grid",
            "expert_hidden": h, "fused_layers": 6, "seed": 0, "params": 1000 * h, "layers": None, "hp": {},
            "n_trials": 1, "evaluate": True}


def trial(h: int, last_result=None, checkpoint=None):
    return SimpleNamespace(config=config(h), last_result=last_result, checkpoint=checkpoint, trial_id=f"t{h}",
                           error_file=None, error_msg=None)


FINAL = {"final": True, "rfid": 31.25, "psnr": 18.5, "ssim": 0.5, "lpips": 0.25, "val_l1": 0.125,
         "train_seconds": 3.0, "eval_seconds": 1.0, "train_flops": 2.5e12, "eval_flops": 4e9,
         "device": "Some CPU @ 2.0GHz (2 threads)"}


def new_sweep(store, tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp_id = client.create_experiment(experiment)
    parent = client.create_run(exp_id, tags={"mlflow.runName": experiment}).info.run_id
    return client, exp_id, parent


def trial_runs(client, exp_id, parent):
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_errors_of_an_unreachable_server_are_told_from_refused_writes_and_bugs(store):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.raises(MlflowException) as down:
        down_client().log_metric("0" * 32, "loss", 1.0)
    assert server_unreachable(down.value)
    assert server_unreachable(requests.ConnectionError("refused"))
    with pytest.raises(MlflowException) as refused:
        MlflowClient(store).log_metric("0" * 32, "loss", 1.0)  # no such run: the server says no
    assert not server_unreachable(refused.value)
    assert not server_unreachable(ValueError("a bug"))


class Flaky:
    """An ``apply`` that fails like a stopped server while ``down``; records what it delivered."""

    def __init__(self):
        self.down, self.calls, self.done = False, 0, []

    def __call__(self, op):
        self.calls += 1
        if self.down:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        self.done.append(op["n"])


def test_outbox_keeps_the_order_backs_off_and_warns_once_each_way(caplog):
    apply = Flaky()
    box = Outbox(apply, "http://mlflow", min_wait=0.2, max_wait=0.4)
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        box.submit({"op": "metrics", "n": 0})
        apply.down = True
        for n in range(1, 5):
            box.submit({"op": "metrics", "n": n})
        assert apply.calls == 2  # one failed try; the later writes queued behind it without a try
        assert [op["n"] for op in box.queue] == [1, 2, 3, 4]
        assert not box.flush()  # not due yet: no try
        assert apply.calls == 2
        time.sleep(0.25)
        assert not box.flush()  # due, still down: one try, and the next wait is longer
        assert apply.calls == 3
        apply.down = False
        time.sleep(0.1)
        assert not box.flush() and apply.calls == 3  # 0.4 s have not passed
        box.submit({"op": "metrics", "n": 5})
        assert box.drain(5.0)
    assert apply.done == [0, 1, 2, 3, 4, 5] and not box.queue
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "unreachable" in messages[0] and "Connection refused" in messages[0]
    assert "answers again: delivered the 5 writes" in messages[1]


def test_outbox_drops_a_refused_write_and_raises_a_bug(caplog):
    from mlflow.exceptions import MlflowException

    def apply(op):
        if op["n"] == 1:
            raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")
        if op["n"] == 2:
            raise KeyError("trial_id")
        done.append(op["n"])

    done = []
    box = Outbox(apply, "http://mlflow")
    box.submit({"op": "tags", "run": "r", "n": 0})
    box.submit({"op": "tags", "run": "r", "n": 1})
    assert box.rejected == ["tags of run r: RESOURCE_DOES_NOT_EXIST: no such run"] and not box.queue
    with pytest.raises(KeyError):
        box.submit({"op": "tags", "run": "r", "n": 2})
    assert not box.queue
    box.submit({"op": "tags", "run": "r", "n": 3})
    assert done == [0, 3]


def test_a_trial_that_runs_while_the_server_is_down_gets_one_complete_run_when_it_is_back(store, tmp_path, caplog):
    client, exp_id, parent = new_sweep(store, tmp_path, "outage")
    tracker = SweepTracker(store, "outage", parent, str(tmp_path), {"sweep": "outage"}, "abc123")
    tracker.on_trial_start(0, [], trial(2))
    tracker.on_trial_result(0, [], trial(2), {"step": 4, "loss": 0.5, "phase": 2})
    up = tracker._client
    tracker._client = down_client()  # the server stops
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        tracker.on_trial_result(0, [], trial(2), {"step": 8, "loss": 0.4, "phase": 2})
        tracker.on_trial_complete(0, [], trial(2, FINAL))
        tracker.on_trial_start(0, [], trial(16))  # starts during the outage
        for step in (4, 8):
            tracker.on_trial_result(0, [], trial(16), {"step": step, "loss": 1.0 / step, "phase": 2})
        tracker.on_trial_complete(0, [], trial(16, {**FINAL, "rfid": 30.5}))
        # The results table never waited for MLflow.
        table = ResultsTable(tmp_path)
        assert {t: r["status"] for t, r in table.rows.items()} == {"h2-k6-s0-t0": "completed",
                                                                   "h16-k6-s0-t0": "completed"}
        assert pd.isna(table.rows["h16-k6-s0-t0"].get("mlflow_run_id"))
        assert len(trial_runs(client, exp_id, parent)) == 1
        assert (tmp_path / PENDING_FILE).exists()  # the backlog is kept on disk while it waits

        tracker._client = up  # the server is back
        tracker.outbox._next_try = 0.0
        tracker.on_step_end(0, [])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "unreachable" in messages[0] and "answers again" in messages[1], messages
    assert not tracker.outbox.queue and not (tmp_path / PENDING_FILE).exists()

    runs = {r.data.tags["trial_id"]: r for r in trial_runs(client, exp_id, parent)}
    assert sorted(runs) == ["h16-k6-s0-t0", "h2-k6-s0-t0"]
    run = runs["h16-k6-s0-t0"]
    assert run.info.status == "FINISHED" and run.data.metrics["rfid"] == 30.5
    # The trial's cost: its FLOPs as metrics, its device as a tag and a table column.
    assert run.data.metrics["train_flops"] == 2.5e12 and run.data.metrics["eval_flops"] == 4e9
    assert run.data.tags["device"] == "Some CPU @ 2.0GHz (2 threads)"
    row = ResultsTable(tmp_path).rows["h16-k6-s0-t0"]
    assert (row["device"], row["eval_flops"], row["train_flops"]) == ("Some CPU @ 2.0GHz (2 threads)", 4e9, 2.5e12)
    assert run.data.params["expert_hidden"] == "16" and run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [4, 8]
    assert [m.step for m in client.get_metric_history(runs["h2-k6-s0-t0"].info.run_id, "loss")] == [4, 8]
    assert ResultsTable(tmp_path).rows["h16-k6-s0-t0"]["mlflow_run_id"] == run.info.run_id


def test_a_run_created_before_the_server_went_away_gets_its_params_on_retry(store, tmp_path):
    client, exp_id, parent = new_sweep(store, tmp_path, "half")
    tracker = SweepTracker(store, "half", parent, str(tmp_path), {"sweep": "half"}, None)
    spec = tracker._run_spec(config(8))
    client.create_run(exp_id, tags=spec["tags"])  # created, then the connection broke before its params
    tracker.on_trial_start(0, [], trial(8))
    (run,) = trial_runs(client, exp_id, parent)
    assert run.data.params["expert_hidden"] == "8" and run.data.params["sweep"] == "half"


def test_finish_saves_what_a_down_server_did_not_take_and_the_next_run_delivers_it(store, tmp_path, caplog):
    client, exp_id, parent = new_sweep(store, tmp_path, "ending")
    tracker = SweepTracker(store, "ending", parent, str(tmp_path), {"sweep": "ending"}, None)
    tracker._client = down_client()  # down from here to the end of the sweep
    png = tmp_path / "ckpt" / "reconstructions.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG not really")
    tracker.on_trial_start(0, [], trial(4))
    tracker.on_trial_result(0, [], trial(4), {"step": 4, "loss": 0.5, "phase": 2})
    tracker.on_trial_complete(0, [], trial(4, FINAL, SimpleNamespace(path=str(png.parent))))
    tracker.on_experiment_end([])
    table = ResultsTable(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        t = time.monotonic()
        out = tracker.finish(table, {"wall_seconds": 12.0, "failed_trials": 0}, "FINISHED", timeout=0.5)
        assert time.monotonic() - t < 10
    assert out["pending"] == 8 and out["reconciled"] is None  # run, metrics x2, tags, artifact, status, parent x2
    pending = json.loads((tmp_path / PENDING_FILE).read_text())
    assert [op["op"] for op in pending["ops"]] == ["run", "metrics", "metrics", "tags", "artifact", "status",
                                                   "metrics", "status"]
    assert pending["runs"]["h4-k6-s0-t0"]["params"]["expert_hidden"] == "4"
    assert any("8 writes could not be delivered" in r.getMessage() and PENDING_FILE in r.getMessage()
               for r in caplog.records)
    assert trial_runs(client, exp_id, parent) == []

    # The next run of the sweep (the server answers again) delivers them first, then reconciles.
    again = SweepTracker(store, "ending", parent, str(tmp_path), {"sweep": "ending"}, None)
    assert not again.outbox.queue and not (tmp_path / PENDING_FILE).exists()
    out = again.finish(ResultsTable(tmp_path), {"wall_seconds": 3.0, "failed_trials": 0}, "FINISHED", timeout=5)
    assert out == {"pending": 0, "reconciled": 0, "rejected": 0}
    (run,) = trial_runs(client, exp_id, parent)
    assert run.info.status == "FINISHED" and run.data.metrics["rfid"] == 31.25
    assert run.data.tags["device"] == FINAL["device"] and run.data.metrics["eval_flops"] == FINAL["eval_flops"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["reconstructions.png"]
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.metrics["wall_seconds"] == 3.0


def test_reconcile_logs_what_mlflow_lacks_from_the_table(store, tmp_path, caplog):
    client, exp_id, parent = new_sweep(store, tmp_path, "reconcile")
    tracker = SweepTracker(store, "reconcile", parent, str(tmp_path), {"sweep": "reconcile"}, None)
    tracker.on_trial_start(0, [], trial(2))
    tracker.on_trial_complete(0, [], trial(2, FINAL))
    tracker.on_trial_start(0, [], trial(32))
    tracker.on_trial_result(0, [], trial(32), {"step": 4, "loss": 0.5, "lpips": 0.9, "phase": 2})
    table = ResultsTable(tmp_path)
    # Its end never reached MLflow (e.g. a backlog lost with its process): the table has it.
    table.upsert({**table.rows["h32-k6-s0-t0"], "status": "failed", "error": "RuntimeError: boom", "rfid": 40.0})
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        out = tracker.finish(table, {"wall_seconds": 1.0, "failed_trials": 1}, "FAILED", timeout=5)
    assert out == {"pending": 0, "reconciled": 3, "rejected": 0}  # metrics, error tag, status
    assert any("for 1 trials (h32-k6-s0-t0)" in r.getMessage() for r in caplog.records)
    runs = {r.data.tags["trial_id"]: r for r in trial_runs(client, exp_id, parent)}
    failed = runs["h32-k6-s0-t0"]
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == "RuntimeError: boom"
    assert failed.data.metrics["rfid"] == 40.0 and failed.data.metrics["params"] == 32000
    # The training LPIPS loss is a curve of its own, apart from the evaluated "lpips".
    assert failed.data.metrics["lpips_loss"] == 0.9 and "lpips" not in failed.data.metrics
    # Agreed already: the completed trial (its eval lpips sits at step 0 under the curve's lpips).
    assert runs["h2-k6-s0-t0"].info.status == "FINISHED"
    assert tracker.reconcile(table) == 0
    # A trial the table has as pruned: its run (FINISHED, as a completed one's) gets the tag that tells them apart.
    table.upsert({**table.rows["h2-k6-s0-t0"], "status": "pruned"})
    assert tracker.reconcile(table) == 1 and tracker.finish(table, {}, "FINISHED", timeout=5)["pending"] == 0
    runs = {r.data.tags["trial_id"]: r for r in trial_runs(client, exp_id, parent)}
    assert runs["h2-k6-s0-t0"].data.tags["status"] == "pruned" and tracker.reconcile(table) == 0


def test_a_resumed_sweeps_tuner_reports_to_this_runs_tracker_and_the_restored_copy_delivers_nothing(
        store, tmp_path):
    """Tuner.restore unpickles the first run's tracker: a copy that writes nothing; this run's takes its place."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from sweeper.run import resume_tuner

    _, _, parent = new_sweep(store, tmp_path, "restored")
    # A write the sweep's last run could not deliver: the live tracker delivers it, once, when Tune starts.
    (tmp_path / PENDING_FILE).write_text(json.dumps(
        {"version": 1, "tracking_uri": store, "runs": {},
         "ops": [{"op": "metrics", "run": parent, "metrics": [["late", 1.0, 0, 0]]}]}))

    def trainable(config):
        pass

    first = SweepTracker(store, "restored", parent, str(tmp_path), {"sweep": "restored"}, None, start=False)
    tune.Tuner(trainable, run_config=tune.RunConfig(name="tune", storage_path=str(tmp_path / "ray"),
                                                    callbacks=[first]))
    assert (tmp_path / PENDING_FILE).exists()
    tuner = tune.Tuner.restore(str(tmp_path / "ray" / "tune"), trainable=trainable)
    (copy,) = tuner._local_tuner.get_run_config().callbacks
    assert copy is not first and copy.parent == parent and (tmp_path / PENDING_FILE).exists()  # it took up nothing

    live = SweepTracker(store, "restored", parent, str(tmp_path), {"sweep": "restored"}, None)  # this run's
    assert not (tmp_path / PENDING_FILE).exists()  # delivered first
    reporter = tune.CLIReporter()
    tuner = resume_tuner(str(tmp_path / "ray" / "tune"), trainable, live, reporter)
    run_config = tuner._local_tuner.get_run_config()
    assert run_config.callbacks == [live] and run_config.progress_reporter is reporter
    live.setup()  # Tune's first call: nothing more to deliver
    assert [m.value for m in MlflowClient(store).get_metric_history(parent, "late")] == [1.0]


def test_the_sweeps_http_bounds_do_not_override_the_users(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
