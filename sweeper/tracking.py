"""Tracking: one MLflow parent run per sweep with a nested run per trial, and the results table.

Only the driver writes to MLflow (a Ray Tune ``Callback``), so a SQLite store is safe with any
number of trials and a cluster needs the tracking server only on the driver's side. The results
table ``results/<sweep>/trials.parquet`` (and ``.csv``) is rewritten atomically as trials finish,
before and without waiting for MLflow: a tracking server that goes away mid-sweep only delays the
MLflow writes (``Outbox``), which are delivered when it is back, reconciled with the table at the
end, or kept in ``results/<sweep>/mlflow-pending.json`` for the sweep's next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from ray.tune import Callback

from model.assets import atomic_path
from model.errors import UserError

log = logging.getLogger(__name__)

COLUMNS = ["trial_id", "point_id", "kind", "status", "expert_hidden", "fused_layers", "seed", "params",
           "rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds", "report_seconds",
           "startup_seconds", "error", "best", "retries", "unit_id", "node_id", "mlflow_run_id"]


def tracking_uri(spec) -> str:
    """MLFLOW_TRACKING_URI, else the spec's, else a SQLite file beside the results."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spec.tracking.uri
    if uri:
        return uri
    return f"sqlite:///{Path(spec.results_dir).resolve() / 'mlflow.db'}"


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any trial, when an http(s) tracking server does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"MLflow tracking URI {uri}: no server answers ({exc.strerror or exc}); start one "
                        "(make mlflow-server) or unset MLFLOW_TRACKING_URI") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- results table ---------------------------------------------------------------------------

# Numeric columns; report_seconds and startup_seconds are what orchestration cost the trial (trial.py).
NUMERIC = ("rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds", "report_seconds",
           "startup_seconds")


class ResultsTable:
    """One row per trial, keyed by trial_id; every write replaces the files atomically."""

    def __init__(self, sweep_dir: Path):
        self.dir = Path(sweep_dir)
        self.path = self.dir / "trials.parquet"
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for row in pd.read_parquet(self.path).to_dict("records"):
                self.rows[row["trial_id"]] = row

    def upsert(self, row: dict) -> None:
        self.rows[row["trial_id"]] = {**self.rows.get(row["trial_id"], {}), **row}
        self.write()

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(list(self.rows.values()))
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = None
        extra = sorted(c for c in df.columns if c not in COLUMNS)
        df = df[COLUMNS + extra]
        for col in NUMERIC:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return df.sort_values(["kind", "fused_layers", "params", "seed", "trial_id"], na_position="last",
                              ignore_index=True)

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        with atomic_path(self.dir / "trials.parquet") as tmp:
            df.to_parquet(tmp, index=False)
        with atomic_path(self.dir / "trials.csv") as tmp:
            df.to_csv(tmp, index=False)


def row_from(config: dict, result: dict | None, status: str, error: str | None = None) -> dict:
    result = result or {}
    row = {k: config.get(k) for k in ("trial_id", "unit_id", "point_id", "kind", "expert_hidden",
                                      "fused_layers", "seed", "params")}
    row.update(status=status, error=error, node_id=result.get("node_id"),
               best=config.get("n_trials", 1) == 1 and status == "completed")
    for key in NUMERIC:
        value = result.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else math.nan
    for k, v in config.get("hp", {}).items():
        row[f"hp.{k}"] = v
    return row


def error_line(trial) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text()
    text = text or str(getattr(trial, "error_msg", "") or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:500]
    return lines[-1][:500] if lines else "unknown error"


def summary(df: pd.DataFrame) -> str:
    """The final table a user sees: each point's result row and every trial that did not complete."""
    cols = ["trial_id", "status", "params", "val_l1", "rfid", "psnr", "train_seconds", "error"]
    view = df[df.best.fillna(False).astype(bool) | (df.status != "completed")][cols].copy()
    view["error"] = view["error"].fillna("").astype(str).str.slice(0, 60)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        return view.to_string(index=False)


# --- MLflow ----------------------------------------------------------------------------------

#: MLflow's HTTP client retries a failed request 7 times with backoff factor 2 and waits up to
#: 120 s for an answer: about 4 minutes per write to a server that is down, while Tune's event loop
#: (where the tracker runs) stands still. A sweep's process bounds that to seconds (a value already
#: in the environment wins) and leaves the patient retrying to the tracker's ``Outbox``.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # one immediate retry (a stale pooled connection)
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: Seconds the end of a sweep keeps retrying writes that an unreachable server has not taken.
FLUSH_TIMEOUT_ENV, FLUSH_TIMEOUT_S = "DRORAE_MLFLOW_FLUSH_TIMEOUT", 60.0
#: Writes still undelivered when a sweep ends: in results/<sweep>/, delivered first by its next run.
PENDING_FILE = "mlflow-pending.json"
FINAL_METRICS = ("rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds")
CURVE_METRICS = ("loss", "l1", "lpips", "adv_g", "adv_d", "lr", "val_l1", "phase")
# Curve terms logged under another name in MLflow, where a final metric has theirs: the training
# LPIPS loss would otherwise hide the evaluated LPIPS as the run's latest "lpips".
CURVE_NAMES = {"lpips": "lpips_loss"}
RUN_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}  # terminal table statuses


def bound_http_retries() -> None:
    """Short MLflow HTTP retries and timeout for this process, unless the environment sets them."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def server_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the tracking server did not answer or failed (5xx).

    Such a write is worth retrying later; a write the server refused (4xx) or a bug is not.
    """
    import requests
    import urllib3
    from mlflow.exceptions import MlflowException, RestException

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError, urllib3.exceptions.MaxRetryError,
                 urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError,
                 urllib3.exceptions.TimeoutError, ConnectionError, TimeoutError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, transient):
            return True
        response = getattr(exc, "response", None)
        if isinstance(exc, requests.HTTPError) and response is not None and response.status_code >= 500:
            return True  # the artifact proxy's answer
        if isinstance(exc, RestException) and exc.get_http_status_code() >= 500:
            return True
        if isinstance(exc, MlflowException) and re.search(r"failed with error code 5\d\d", exc.message):
            return True  # a 5xx answer that was not JSON (a proxy in front of the server)
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one short line: the root cause (e.g. 'Connection refused'), not the wrappers."""
    import urllib3

    seen = set()
    while id(exc) not in seen:  # MlflowException <- requests' ConnectionError <- urllib3's MaxRetryError
        seen.add(id(exc))
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
            break
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc = cause
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class Outbox:
    """MLflow writes, in order; while the tracking server cannot be reached they wait and are retried.

    ``apply(op)`` makes one write (``op`` is a JSON-able dict). A write that fails because the server
    is unreachable (``server_unreachable``) stays at the head of the queue and every later one queues
    behind it, so the order holds. The queue is retried by ``flush`` at most every ``wait`` seconds
    (doubling from ``min_wait`` to ``max_wait``), so that a down server is not asked on every Tune
    event and costs the caller one short attempt at a time. One warning when the server becomes
    unreachable, one when the backlog has been delivered. A write the server refuses is logged as an
    error, dropped and counted in ``rejected``; any other exception is a bug and propagates.
    """

    def __init__(self, apply, name: str, min_wait: float = 2.0, max_wait: float = 30.0):
        self.apply, self.name = apply, name
        self.queue: list[dict] = []
        self.rejected: list[str] = []
        self.tries = 0  # flushes that tried the queue
        self.min_wait, self.max_wait = min_wait, max_wait
        self._wait, self._next_try = min_wait, 0.0
        self._down_since: float | None = None
        self._late = 0  # writes delivered since the server became unreachable

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def submit(self, op: dict) -> None:
        """Write ``op`` now, or queue it behind the writes that wait."""
        self.queue.append(op)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Deliver the queue in order when a retry is due (always with ``force``); True once it is empty."""
        from mlflow.exceptions import MlflowException

        if not self.queue:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        self.tries += 1
        while self.queue:
            op = self.queue[0]
            try:
                with _quiet("urllib3.connectionpool", self.down):  # its "Retrying ..." once per try
                    self.apply(op)
            except Exception as exc:
                if server_unreachable(exc):
                    self.note_unreachable(exc)
                    return False
                self.queue.pop(0)
                if not isinstance(exc, MlflowException):
                    raise
                log.error("MLflow refused %s: %s", describe(op), _first_line(exc))
                self.rejected.append(f"{describe(op)}: {_first_line(exc)}")
                continue
            self.queue.pop(0)
            if self.down:
                self._late += 1
        if self.down:
            log.warning("MLflow tracking server %s answers again: delivered the %d writes queued during %.0f s",
                        self.name, self._late, time.monotonic() - self._down_since)
            self._down_since, self._late = None, 0
        self._wait, self._next_try = self.min_wait, 0.0
        return True

    def drain(self, timeout: float, poll: float = 5.0) -> bool:
        """Retry the queue until it is empty (True) or ``timeout`` seconds have passed (one try at least)."""
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
        return True

    def note_unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if not self.down:
            self._down_since = now
            log.warning("MLflow tracking server %s unreachable (%s): its writes wait, in order, and are retried "
                        "(the results table does not wait for them)", self.name, _first_line(exc))
        self._next_try = now + self._wait
        self._wait = min(2 * self._wait, self.max_wait)


@contextlib.contextmanager
def _quiet(logger: str, quiet: bool):
    """Only errors from ``logger`` meanwhile, when ``quiet``."""
    lg = logging.getLogger(logger)
    level = lg.level
    if quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def describe(op: dict) -> str:
    """One op in words, for logs: 'metrics of trial h16-k6-s0-t0'."""
    target = f"trial {op['trial']}" if "trial" in op else f"run {op.get('run')}"
    return f"{op['op']} of {target}"


_LIVE: dict[str, SweepTracker] = {}  # sweep dir -> the tracker of the run of that sweep in this process


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
                 commit: str | None):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.sweep_dir, self.base_params, self.commit = sweep_dir, base_params, commit
        self._client = None
        self._table = None
        self._experiment_id = None
        self._specs: dict[str, dict] = {}  # trial_id -> the tags and params its run is created with
        self._run_ids: dict[str, str] = {}  # trial_id -> its MLflow run, once found or created
        self._pending_saved = False  # whether results/<sweep>/mlflow-pending.json holds writes
        self._saved_at = 0  # the outbox's tries when the pending file was last written
        self.outbox = Outbox(self._apply, uri)
        bound_http_retries()
        _LIVE[str(Path(sweep_dir).resolve())] = self
        self._load_pending()

    def __getstate__(self):
        return {k: self.__dict__[k] for k in ("uri", "experiment", "parent", "sweep_dir", "base_params", "commit")}

    def __setstate__(self, state):
        # Tuner.restore unpickles the callback of the sweep's first run: it becomes the tracker that
        # this run built (run_sweep's), so that Tune and the end of the sweep share one outbox.
        live = _LIVE.get(str(Path(state["sweep_dir"]).resolve()))
        if live is not None:
            self.__dict__ = live.__dict__
        else:
            self.__init__(state["uri"], state["experiment"], state["parent"], state["sweep_dir"],
                          state["base_params"], state["commit"])

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def table(self) -> ResultsTable:
        if self._table is None:
            self._table = ResultsTable(Path(self.sweep_dir))
        return self._table

    @property
    def pending_path(self) -> Path:
        return Path(self.sweep_dir) / PENDING_FILE

    # runs

    def _run_spec(self, config: dict) -> dict:
        tags = {"mlflow.parentRunId": self.parent, "mlflow.runName": config["trial_id"],
                "trial_id": config["trial_id"], "point_id": config["point_id"], "kind": config["kind"]}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
        params = {**self.base_params, **flatten({k: v for k, v in config.items() if k != "hp"}),
                  **{f"hp.{k}": v for k, v in config.get("hp", {}).items()}}
        return {"tags": tags, "params": {k: str(v)[:6000] for k, v in params.items()}}

    def _row_spec(self, trial_id: str) -> dict:
        """A run's tags and params from its table row (a trial whose config this process never saw)."""
        row = self.table.rows.get(trial_id, {})
        config = {k: row.get(k) for k in ("trial_id", "point_id", "kind", "unit_id", "expert_hidden",
                                          "fused_layers", "seed", "params")}
        config["trial_id"] = trial_id
        config["hp"] = {k[3:]: v for k, v in row.items() if k.startswith("hp.")}
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
        found = self.client.search_runs([exp_id], f"tags.trial_id = '{trial_id}' and "
                                                  f"tags.mlflow.parentRunId = '{self.parent}'", max_results=1)
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
                   if k in CURVE_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))]
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
        final = [[k, row[k], now, 0] for k in FINAL_METRICS if math.isfinite(row[k])]
        final.append(["params", float(config["params"]), now, 0])
        self.outbox.submit({"op": "metrics", "trial": trial_id, "metrics": final})
        if error:
            self.outbox.submit({"op": "tags", "trial": trial_id, "tags": {"error": error}})
        ckpt = trial.checkpoint
        if ckpt is not None:
            png = Path(ckpt.path) / "reconstructions.png"
            if png.exists():
                self.outbox.submit({"op": "artifact", "trial": trial_id, "path": str(png)})
        self.outbox.submit({"op": "status", "trial": trial_id,
                            "status": "FINISHED" if status != "failed" else "FAILED"})
        self._pump()

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
        values = [[k, float(v), now, 0] for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        self.outbox.submit({"op": "metrics", **ref, "metrics": values})
        self.outbox.submit({"op": "tags", **ref, "tags": {"best": "true"}})
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
        _LIVE.pop(str(Path(self.sweep_dir).resolve()), None)
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
            runs.setdefault(run.data.tags.get("trial_id"), run)
        now = int(time.time() * 1000)
        writes, trials = 0, []
        for trial_id, row in table.rows.items():
            status = RUN_STATUS.get(row.get("status"))
            if status is None:
                continue
            run = runs.get(trial_id)
            if run is not None:
                self._run_ids.setdefault(trial_id, run.info.run_id)
            ref = {"run": run.info.run_id} if run is not None else {"trial": trial_id}
            want = {k: float(row[k]) for k in (*FINAL_METRICS, "params") if _finite(row.get(k))}
            ops = [] if run is not None else [{"op": "run", **ref}]
            stale = [[k, v, now, 0] for k, v in want.items() if run is None or not self._has_final(run, k, v)]
            if stale:
                ops.append({"op": "metrics", **ref, "metrics": stale})
            error = row.get("error")
            if status == "FAILED" and isinstance(error, str) and error and (
                    run is None or run.data.tags.get("error") != error):
                ops.append({"op": "tags", **ref, "tags": {"error": error}})
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
            page = self.client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{self.parent}'",
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
