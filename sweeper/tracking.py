"""The sweep's tracker: a Ray Tune callback that records every trial in the results table and in MLflow.

Only the driver writes to MLflow (this callback), so a SQLite store is safe with any number of
trials and a cluster needs the tracking server only on the driver's side. Each trial gets a row of
the results table (``sweeper.results``), rewritten as it starts and ends before and without waiting
for MLflow, and a run nested under the sweep's parent run (``sweeper.experiment``) with its config as
params, its curve and final metrics, its reconstruction grid and its status. A tracking server that
goes away mid-sweep only delays the MLflow writes (``sweeper.outbox``): they are delivered when it
is back, reconciled with the table at the end (``SweepTracker.finish``), or kept in
``results/<sweep>/mlflow-pending.json`` and delivered first by the sweep's next run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from ray.tune import Callback

from analysis import schema
from drorae_io import atomic_path
from model.errors import UserError

from .experiment import flatten
from .outbox import Outbox, bound_http_retries, server_unreachable
from .results import ResultsTable, error_line, row_from

log = logging.getLogger(__name__)

#: Seconds the end of a sweep keeps retrying writes that an unreachable server has not taken.
FLUSH_TIMEOUT_ENV, FLUSH_TIMEOUT_S = "DRORAE_MLFLOW_FLUSH_TIMEOUT", 60.0
#: Writes still undelivered when a sweep ends: in results/<sweep>/, delivered first by its next run.
PENDING_FILE = "mlflow-pending.json"
#: The training curve's terms, logged at their step as the trial reports them.
CURVE_METRICS = ("loss", "l1", "lpips", "adv_g", "adv_d", "lr", "val_l1", "phase")
# Curve terms logged under another name in MLflow, where a final metric has theirs: the training
# LPIPS loss would otherwise hide the evaluated LPIPS as the run's latest "lpips".
CURVE_NAMES = {"lpips": "lpips_loss"}


class SweepTracker(Callback):
    """Ray Tune callback: rows of the results table as trials start and end, a nested MLflow run per trial.

    The results table is written first and never waits for MLflow. Every MLflow write goes through
    one ``Outbox``: when the tracking server is unreachable the writes wait, in order, and are
    retried as Tune runs on. A trial's writes name the trial, not its run: the run is found (by its
    trial_id tag) or created when the first of them is delivered, so a trial that starts while the
    server is down still gets exactly one run. ``finish`` ends the sweep: the backlog, the results
    table reconciled into MLflow, the parent run, and a pending file for whatever a down server did
    not take (delivered first by the next run of the sweep).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, sweep_dir: str, base_params: dict,
                 commit: str | None, start: bool = True, table_metadata: dict | None = None):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.sweep_dir, self.base_params, self.commit = sweep_dir, base_params, commit
        self.table_metadata = table_metadata  # the results table's sweep-level metadata (ResultsTable)
        self._client = None
        self._table = None
        self._experiment_id = None
        self._specs: dict[str, dict] = {}  # trial_id -> the tags and params its run is created with
        self._run_ids: dict[str, str] = {}  # trial_id -> its MLflow run, once found or created
        self._started = False  # whether the pending file of an earlier run has been taken up (start)
        self._pending_saved = False  # whether results/<sweep>/mlflow-pending.json holds writes
        self._saved_at = 0  # the outbox's tries when the pending file was last written
        self.after_trial = None  # called once a trial's final row is written (run_sweep: the live law)
        self.outbox = Outbox(self._apply, uri)
        bound_http_retries()
        if start:
            self.start()

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment (tuner.pkl, which Tuner.restore reads back) and,
        # under Ray Client, into the Tuner that runs on the cluster. A tracker travels as the arguments
        # that build it, never with its queue or clients, and its copy is built unstarted: it writes
        # nothing unless Tune sets it up (a Tuner on the cluster). In this process run_sweep gives a
        # restored Tuner its live tracker instead (run.resume_tuner), and the copy is dropped unused.
        return (SweepTracker, (self.uri, self.experiment, self.parent, self.sweep_dir, self.base_params,
                               self.commit, False, self.table_metadata))

    def setup(self, **info):
        """Tune's first call on a callback: start a tracker built unstarted (a pickled copy)."""
        self.start()

    def start(self) -> None:
        """Deliver first the writes an earlier run of this sweep could not (its pending file); once,
        before this tracker writes anything (it would otherwise read back its own pending file)."""
        if not self._started:
            self._started = True
            self._load_pending()

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def table(self) -> ResultsTable:
        if self._table is None:
            self._table = ResultsTable(Path(self.sweep_dir), self.table_metadata)
        return self._table

    @property
    def pending_path(self) -> Path:
        return Path(self.sweep_dir) / PENDING_FILE

    # runs

    def _run_spec(self, config: dict) -> dict:
        tags = {schema.PARENT_RUN_TAG: self.parent, schema.RUN_NAME_TAG: config["trial_id"],
                **{k: config[k] for k in schema.TRIAL_TAGS}}
        if self.commit:
            tags[schema.GIT_COMMIT_TAG] = self.commit
        params = {**self.base_params, **flatten({k: v for k, v in config.items() if k != "hp"}),
                  **{f"{schema.HP_PREFIX}{k}": v for k, v in config.get("hp", {}).items()}}
        return {"tags": tags, "params": {k: str(v)[:6000] for k, v in params.items()}}

    def _row_spec(self, trial_id: str) -> dict:
        """A run's tags and params from its table row (a trial whose config this process never saw)."""
        row = self.table.rows.get(trial_id, {})
        config = {k: row.get(k) for k in ("trial_id", "point_id", "kind", "unit_id", "expert_hidden",
                                          "fused_layers", "seed", "params")}
        config["trial_id"] = trial_id
        config["hp"] = {k[len(schema.HP_PREFIX):]: v for k, v in row.items() if k.startswith(schema.HP_PREFIX)}
        return self._run_spec(config)

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise MlflowException(f"no experiment {self.experiment!r} in {self.uri}")
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _resolve(self, trial_id: str) -> str:
        """The trial's run: known, found by its trial_id tag (a resumed trial keeps its run) or created.

        Safe to repeat after a failure half-way: a run created without its params gets them then.
        """
        from mlflow.entities import Param

        if trial_id in self._run_ids:
            return self._run_ids[trial_id]
        spec = self._specs.get(trial_id) or self._row_spec(trial_id)
        exp_id = self._experiment()
        found = self.client.search_runs([exp_id], f"tags.{schema.TRIAL_ID_TAG} = '{trial_id}' and "
                                                  f"tags.{schema.PARENT_RUN_TAG} = '{self.parent}'", max_results=1)
        run = found[0] if found else self.client.create_run(exp_id, tags=spec["tags"])
        items = [Param(k, v) for k, v in spec["params"].items() if k not in run.data.params]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        self._run_ids[trial_id] = run.info.run_id
        return run.info.run_id

    def run_id(self, config: dict) -> str:
        """The trial's MLflow run, found or created now (raises when the server is unreachable)."""
        self._specs.setdefault(config["trial_id"], self._run_spec(config))
        return self._resolve(config["trial_id"])

    def _apply(self, op: dict) -> None:
        """One write of the outbox: ``op`` names its run, or the trial whose run it resolves now."""
        from mlflow.entities import Metric, RunTag

        run_id = op.get("run") or self._resolve(op["trial"])
        kind = op["op"]
        if kind == "metrics":
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "artifact":
            if Path(op["path"]).exists():
                self.client.log_artifact(run_id, op["path"])
            else:
                log.warning("MLflow: %s no longer exists; not logged to run %s", op["path"], run_id)
        elif kind == "status":
            self.client.set_terminated(run_id, op["status"])
        elif kind != "run":  # "run": finding or creating it was the write
            raise ValueError(f"unknown MLflow write {kind!r}")

    def _pump(self) -> None:
        """Retry the backlog when due; note the runs found meanwhile in the table; keep the backlog on disk."""
        if self.outbox.queue:
            self.outbox.flush()
            if self.outbox.queue and self.outbox.tries != self._saved_at:  # a try failed since (every 2-30 s)
                self._save_pending()  # an interrupted sweep delivers it when it resumes
                self._saved_at = self.outbox.tries
        if not self.outbox.queue and self._pending_saved:
            self.pending_path.unlink(missing_ok=True)
            self._pending_saved = False
        self._note_run_ids(self.table)

    def _note_run_ids(self, table: ResultsTable) -> None:
        changed = False
        for trial_id, run_id in self._run_ids.items():
            row = table.rows.get(trial_id)
            if row is not None and row.get("mlflow_run_id") != run_id:
                row["mlflow_run_id"], changed = run_id, True
        if changed:
            table.write()

    # Tune events

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = trial.config["trial_id"]
        self._specs[trial_id] = self._run_spec(trial.config)
        row = row_from(trial.config, None, "running")
        row.pop("error")
        if trial_id in self._run_ids:
            row["mlflow_run_id"] = self._run_ids[trial_id]
        self.table.upsert(row)
        self.outbox.submit({"op": "run", "trial": trial_id})
        self._pump()

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune retries (FailureConfig): counted, its error kept on the MLflow run."""
        row = self.table.rows.get(trial.config["trial_id"], {})
        self.table.upsert({"trial_id": trial.config["trial_id"], "retries": int(row.get("retries") or 0) + 1,
                           "error": error_line(trial)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final"):
            return
        step = int(result.get("step", 0) or 0)
        now = int(time.time() * 1000)
        metrics = [[CURVE_NAMES.get(k, k), float(v), now, step] for k, v in result.items()
                   if k in CURVE_METRICS and _finite(v)]
        if metrics:
            self.outbox.submit({"op": "metrics", "trial": trial.config["trial_id"], "metrics": metrics})
        self._pump()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        status = "completed" if result.get("final") else "pruned"
        self._finish(trial, result, status, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, trial.last_result or {}, "failed", error_line(trial))

    def on_step_end(self, iteration, trials, **info):
        self._pump()

    def on_experiment_end(self, trials, **info):
        self._pump()
        self._table = None  # after Tune, run_sweep's own table is the one that is written

    def _finish(self, trial, result: dict, status: str, error: str | None):
        config = trial.config
        trial_id = config["trial_id"]
        self._specs.setdefault(trial_id, self._run_spec(config))
        row = row_from(config, result, status, error)
        if trial_id in self._run_ids:
            row["mlflow_run_id"] = self._run_ids[trial_id]
        self.table.upsert(row)
        now = int(time.time() * 1000)
        final = [[k, row[k], now, 0] for k in schema.FINAL_METRICS if math.isfinite(row[k])]
        final.append(["params", float(config["params"]), now, 0])
        self.outbox.submit({"op": "metrics", "trial": trial_id, "metrics": final})
        tags = {k: v for k, v in ((schema.ERROR_TAG, error), (schema.DEVICE_TAG, row.get("device"))) if v}
        if status == "pruned":
            tags[schema.STATUS_TAG] = status
        if tags:
            self.outbox.submit({"op": "tags", "trial": trial_id, "tags": tags})
        ckpt = trial.checkpoint
        if ckpt is not None:
            png = Path(ckpt.path) / "reconstructions.png"
            if png.exists():
                self.outbox.submit({"op": "artifact", "trial": trial_id, "path": str(png)})
        self.outbox.submit({"op": "status", "trial": trial_id,
                            "status": "FINISHED" if status != "failed" else "FAILED"})
        self._pump()
        if self.after_trial is not None:
            self.after_trial()

    def log_parent(self, metrics: dict, step: int = 0) -> None:
        """Metrics on the sweep's parent run at ``step`` (the live law's: its number of points)."""
        now = int(time.time() * 1000)
        values = [[k, float(v), now, int(step)] for k, v in metrics.items() if _finite(v)]
        if values:
            self.outbox.submit({"op": "metrics", "run": self.parent, "metrics": values})

    def tag_parent(self, tags: dict) -> None:
        """Tags on the sweep's parent run (why the sweep ended)."""
        self.outbox.submit({"op": "tags", "run": self.parent, "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def log_final(self, run_id: str | None, metrics: dict, artifact: str | None = None,
                  trial_id: str | None = None):
        """Final metrics of an evaluation done after the trial (a searched unit's best)."""
        if isinstance(run_id, str) and run_id:
            ref = {"run": run_id}
        elif trial_id:
            ref = {"trial": trial_id}
        else:  # its run was never found (the server was down): the end of the sweep logs it from the table
            log.warning("MLflow: an evaluated trial has no known run yet; its metrics are logged from the results "
                        "table at the end of the sweep")
            return
        now = int(time.time() * 1000)
        values = [[k, float(v), now, 0] for k, v in metrics.items() if _finite(v)]
        self.outbox.submit({"op": "metrics", **ref, "metrics": values})
        self.outbox.submit({"op": "tags", **ref, "tags": {schema.BEST_TAG: "true"}})
        if artifact and Path(artifact).exists():
            self.outbox.submit({"op": "artifact", **ref, "path": str(artifact)})

    # the end of the sweep

    def finish(self, table: ResultsTable, parent_metrics: dict, parent_status: str,
               timeout: float | None = None) -> dict:
        """Deliver the backlog, make MLflow agree with ``table``, end the parent run; never raises for a down server.

        Waits up to ``timeout`` seconds (default ``$DRORAE_MLFLOW_FLUSH_TIMEOUT``, else 60) for an
        unreachable server. What it still cannot deliver is written to
        ``results/<sweep>/mlflow-pending.json`` (delivered first by the next run of the sweep) and
        reported in one warning. Returns counts: ``pending``, ``reconciled``, ``rejected``.
        """
        if timeout is None:
            timeout = float(os.environ.get(FLUSH_TIMEOUT_ENV) or FLUSH_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        self._table = table
        reconciled = self._reconcile(table) if self.outbox.drain(timeout) else None
        now = int(time.time() * 1000)
        values = [[k, float(v), now, 0] for k, v in parent_metrics.items()]
        self.outbox.submit({"op": "metrics", "run": self.parent, "metrics": values})
        self.outbox.submit({"op": "status", "run": self.parent, "status": parent_status})
        while self.outbox.queue and time.monotonic() < deadline:
            self.outbox.drain(deadline - time.monotonic())
        if reconciled is None and not self.outbox.queue:  # the server came back meanwhile
            reconciled = self._reconcile(table)
            if self.outbox.queue and time.monotonic() < deadline:
                self.outbox.drain(deadline - time.monotonic())
        self._note_run_ids(table)
        pending = len(self.outbox.queue)
        if pending:
            self._save_pending()
            log.warning("MLflow: %d writes could not be delivered to %s (no answer within %.0f s at the end of the "
                        "sweep)%s; they are saved in %s and delivered first when this sweep runs again",
                        pending, self.uri, timeout, "" if reconciled is not None else
                        ", and MLflow was not checked against the results table", self.pending_path)
        elif self._pending_saved or self.pending_path.exists():
            self.pending_path.unlink(missing_ok=True)
            self._pending_saved = False
        if self.outbox.rejected:
            log.warning("MLflow: %d writes were refused by %s (see the errors above); MLflow lacks them",
                        len(self.outbox.rejected), self.uri)
        return {"pending": pending, "reconciled": reconciled, "rejected": len(self.outbox.rejected)}

    def _reconcile(self, table: ResultsTable) -> int | None:
        """``reconcile``, or None when the server cannot be reached for it."""
        try:
            return self.reconcile(table)
        except Exception as exc:
            if not server_unreachable(exc):
                raise
            self.outbox.note_unreachable(exc)
            return None

    def reconcile(self, table: ResultsTable) -> int:
        """Queue the writes that make each ended trial's run agree with ``table``; returns how many.

        A trial in a terminal state (completed, pruned, failed) must have one run, its final metrics
        equal to the table's and the matching status (FINISHED, FAILED); what is missing or differs
        is logged from the table.
        """
        runs = {}
        for run in self._trial_runs():
            runs.setdefault(run.data.tags.get(schema.TRIAL_ID_TAG), run)
        now = int(time.time() * 1000)
        writes, trials = 0, []
        for trial_id, row in table.rows.items():
            status = schema.RUN_STATUS.get(row.get("status"))
            if status is None:
                continue
            run = runs.get(trial_id)
            if run is not None:
                self._run_ids.setdefault(trial_id, run.info.run_id)
            ref = {"run": run.info.run_id} if run is not None else {"trial": trial_id}
            want = {k: float(row[k]) for k in (*schema.FINAL_METRICS, "params") if _finite(row.get(k))}
            ops = [] if run is not None else [{"op": "run", **ref}]
            stale = [[k, v, now, 0] for k, v in want.items() if run is None or not self._has_final(run, k, v)]
            if stale:
                ops.append({"op": "metrics", **ref, "metrics": stale})
            error = row.get("error")
            if status == "FAILED" and isinstance(error, str) and error and (
                    run is None or run.data.tags.get(schema.ERROR_TAG) != error):
                ops.append({"op": "tags", **ref, "tags": {schema.ERROR_TAG: error}})
            if row.get("status") == "pruned" and (run is None or run.data.tags.get(schema.STATUS_TAG) != "pruned"):
                ops.append({"op": "tags", **ref, "tags": {schema.STATUS_TAG: "pruned"}})
            device = row.get("device")
            if isinstance(device, str) and device and (run is None or run.data.tags.get(schema.DEVICE_TAG) != device):
                ops.append({"op": "tags", **ref, "tags": {schema.DEVICE_TAG: device}})
            if run is None or run.info.status != status:
                ops.append({"op": "status", **ref, "status": status})
            if ops:
                trials.append(trial_id)
                writes += len(ops)
                for op in ops:
                    self.outbox.submit(op)
        if writes:
            log.warning("MLflow lacked or differed from the results table for %d trials (%s): logged %d writes from "
                        "the table", len(trials), ", ".join(trials[:10]) + (" ..." if len(trials) > 10 else ""),
                        writes)
        return writes

    def _trial_runs(self):
        exp_id, token = self._experiment(), None
        while True:
            page = self.client.search_runs([exp_id], f"tags.{schema.PARENT_RUN_TAG} = '{self.parent}'",
                                           max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _has_final(self, run, key: str, value: float) -> bool:
        """Whether ``run`` holds ``value`` as its final ``key`` (at step 0: a curve's later steps hide it)."""
        latest = run.data.metrics.get(key)
        if latest is not None and math.isclose(latest, value, rel_tol=1e-9):
            return True
        if key not in CURVE_METRICS:
            return False
        finals = [m for m in self.client.get_metric_history(run.info.run_id, key) if m.step == 0]
        return bool(finals) and math.isclose(max(finals, key=lambda m: m.timestamp).value, value, rel_tol=1e-9)

    # the pending file

    def _save_pending(self) -> None:
        trials = {op["trial"] for op in self.outbox.queue if "trial" in op}
        state = {"version": 1, "tracking_uri": self.uri, "experiment": self.experiment, "parent_run_id": self.parent,
                 "runs": {t: self._specs[t] for t in sorted(trials) if t in self._specs}, "ops": self.outbox.queue}
        with atomic_path(self.pending_path) as tmp:
            tmp.write_text(json.dumps(state, indent=1))
        self._pending_saved = True

    def _load_pending(self) -> None:
        """Writes an earlier run of this sweep could not deliver: first in the queue, tried now."""
        path = self.pending_path
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text())
            ops, runs = list(state["ops"]), dict(state.get("runs", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a file of pending MLflow writes ({exc}); move it aside to go on "
                            "without them") from None
        if state.get("tracking_uri") not in (None, self.uri):
            log.warning("%s: its writes were meant for %s; delivering them to %s", path, state["tracking_uri"],
                        self.uri)
        for trial_id, spec in runs.items():
            self._specs.setdefault(trial_id, spec)
        self.outbox.queue[:0] = ops
        log.info("MLflow: delivering first the %d writes an earlier run of this sweep left in %s", len(ops), path)
        self.outbox.flush(force=True)
        if self.outbox.queue:
            self._pending_saved = True
        else:
            path.unlink()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
