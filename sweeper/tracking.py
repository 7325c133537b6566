"""Tracking: one MLflow parent run per sweep with a nested run per trial, and the results table.

Only the driver writes to MLflow (a Ray Tune ``Callback``), so a SQLite store is safe with any
number of trials and a cluster needs the tracking server only on the driver's side. The results
table ``results/<sweep>/trials.parquet`` (and ``.csv``) is rewritten atomically as trials finish.
"""

from __future__ import annotations

import json
import logging
import math
import os
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
           "rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds", "error", "best",
           "retries", "unit_id", "node_id", "mlflow_run_id"]


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
        for col in ("rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds"):
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
    for key in ("rfid", "psnr", "ssim", "lpips", "val_l1", "train_seconds", "eval_seconds"):
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


class SweepTracker(Callback):
    """Ray Tune callback: a nested MLflow run per trial, rows of the results table as trials end."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, sweep_dir: str, base_params: dict,
                 commit: str | None):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.sweep_dir, self.base_params, self.commit = sweep_dir, base_params, commit
        self._client = None
        self._table = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = state["_table"] = None
        return state

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

    def run_id(self, config: dict) -> str:
        """The trial's MLflow run: found by its trial_id tag (a resumed trial keeps its run), else created."""
        exp = self.client.get_experiment_by_name(self.experiment)
        found = self.client.search_runs([exp.experiment_id],
                                        f"tags.trial_id = '{config['trial_id']}' and "
                                        f"tags.mlflow.parentRunId = '{self.parent}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"mlflow.parentRunId": self.parent, "mlflow.runName": config["trial_id"],
                "trial_id": config["trial_id"], "point_id": config["point_id"], "kind": config["kind"]}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
        run = self.client.create_run(exp.experiment_id, tags=tags)
        params = {**self.base_params, **flatten({k: v for k, v in config.items() if k != "hp"}),
                  **{f"hp.{k}": v for k, v in config.get("hp", {}).items()}}
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial.config)
        row = {**row_from(trial.config, None, "running"), "mlflow_run_id": run_id}
        row.pop("error")
        self.table.upsert(row)

    def _log_metrics(self, run_id: str, result: dict):
        from mlflow.entities import Metric

        step = int(result.get("step", 0) or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
                   and k in ("loss", "l1", "lpips", "adv_g", "adv_d", "lr", "val_l1", "phase")]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune retries (FailureConfig): counted, its error kept on the MLflow run."""
        row = self.table.rows.get(trial.config["trial_id"], {})
        self.table.upsert({"trial_id": trial.config["trial_id"], "retries": int(row.get("retries") or 0) + 1,
                           "error": error_line(trial)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.table.rows.get(trial.config["trial_id"], {}).get("mlflow_run_id") or self.run_id(trial.config)
        if not result.get("final"):
            self._log_metrics(run_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        status = "completed" if result.get("final") else "pruned"
        self._finish(trial, result, status, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, trial.last_result or {}, "failed", error_line(trial))

    def log_final(self, run_id: str, metrics: dict, artifact: str | None = None):
        """Final metrics of an evaluation done after the trial (a searched unit's best)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                               if isinstance(v, (int, float)) and math.isfinite(float(v))])
        self.client.set_tag(run_id, "best", "true")
        if artifact and Path(artifact).exists():
            self.client.log_artifact(run_id, artifact)

    def _finish(self, trial, result: dict, status: str, error: str | None):
        from mlflow.entities import Metric

        config = trial.config
        run_id = self.table.rows.get(config["trial_id"], {}).get("mlflow_run_id") or self.run_id(config)
        row = {**row_from(config, result, status, error), "mlflow_run_id": run_id}
        self.table.upsert(row)
        now = int(time.time() * 1000)
        final = [Metric(k, float(row[k]), now, 0) for k in ("rfid", "psnr", "ssim", "lpips", "val_l1",
                                                             "train_seconds", "eval_seconds")
                 if isinstance(row[k], float) and math.isfinite(row[k])]
        final.append(Metric("params", float(config["params"]), now, 0))
        self.client.log_batch(run_id, metrics=final)
        if error:
            self.client.set_tag(run_id, "error", error)
        ckpt = trial.checkpoint
        if ckpt is not None:
            png = Path(ckpt.path) / "reconstructions.png"
            if png.exists():
                self.client.log_artifact(run_id, str(png))
        self.client.set_terminated(run_id, "FINISHED" if status != "failed" else "FAILED")
