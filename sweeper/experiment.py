"""A sweep's MLflow experiment: where the tracking store is, that it answers, and the sweep's parent run.

Only the driver writes to MLflow. A sweep is one experiment (the spec's ``tracking.experiment``, else
its name) with one parent run that holds the whole spec as params; its trials are runs nested under
that parent (``sweeper.tracking``). The parent run is created once and reused when the sweep resumes
(its id is kept in ``results/<sweep>/sweep.json``).

What the MLflow UI (3.17) shows first: the experiment is tagged as model training
(``EXPERIMENT_KIND``), and it has a saved view of its runs table (``TRIALS_VIEW``: every trial of
the sweep with its params, rFID and val L1, smallest capacity first); ``ui_url`` is the link that
opens it. The UI otherwise lands on its GenAI overview (its own model-training / GenAI switch, kept
in the browser, decides that; the tag alone does not) and shows the parent run only, its trials
folded under it and no metric columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode, urlparse

from analysis.schema import GIT_COMMIT_TAG, PARENT_RUN_TAG, RUN_NAME_TAG, SWEEP_TAG
from drorae_io import atomic_path, check_endpoint, check_output_dir, endpoint


def tracking_uri(spec) -> str:
    """MLFLOW_TRACKING_URI, else the spec's, else a SQLite file beside the results."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spec.tracking.uri
    if uri:
        return uri
    return f"sqlite:///{Path(spec.results_dir).resolve() / 'mlflow.db'}"


#: Seconds the sweep waits, in all, for the tracking server's answer before any trial (under 10).
TRACKING_CHECK_S = 5.0


def tracking_source(uri: str) -> str:
    """Where ``uri`` came from, as the user named it: MLFLOW_TRACKING_URI (which wins) or the spec's tracking.uri."""
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else "tracking.uri"


def check_tracking(uri: str, timeout: float = TRACKING_CHECK_S) -> None:
    """Fail fast, before anything is written, when the tracking URI cannot be used.

    It must parse (a port in range, brackets closed); an http(s) server must answer an HTTP request
    within ``timeout`` seconds in all (one that accepts connections and never replies fails too:
    ``drorae_io.check_endpoint``); a SQLite store's directory must be one that can hold it.
    """
    source = tracking_source(uri)
    ep = endpoint(uri, source)
    if ep.scheme in ("http", "https"):
        undo = "unset MLFLOW_TRACKING_URI" if source == "MLFLOW_TRACKING_URI" else "change the spec's tracking.uri"
        check_endpoint(uri, source, f"start one (make mlflow-server) or {undo}", http=True, timeout=timeout)
    elif ep.scheme == "sqlite" and ep.path.lstrip("/") not in ("", ":memory:"):
        check_output_dir(Path(ep.path[1:]).parent, f"{source} {uri}: the directory")


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


#: MLflow's experiment-kind tag, as the UI's experiment-type selector writes it: model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: The saved view of the runs table (an experiment tag ``mlflow.sharedViewState.<id>``, the UI's "Views").
TRIALS_VIEW_ID, TRIALS_VIEW_NAME = "drorae-trials", "Trials: params, rFID, val L1"
#: Its columns (the UI orders each group's alphabetically: the three metrics first, in this order).
TRIALS_VIEW_COLUMNS = ("metrics.`params`", "metrics.`rfid`", "metrics.`rfid_se`", "metrics.`val_l1`",
                       "params.`expert_hidden`", "params.`fused_layers`", "params.`seed`")
#: Where ``make mlflow-ui`` serves a SQLite store (its MLFLOW_PORT's default).
MLFLOW_UI = "http://127.0.0.1:5000"


class ParentRun(NamedTuple):
    run_id: str
    experiment_id: str


def parent_run(uri: str, experiment: str, sweep_dir: Path, spec) -> ParentRun:
    """The sweep's MLflow parent run, created once and reused when the sweep resumes; the experiment's UI tags."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    state_path = sweep_dir / "sweep.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        try:
            run = client.get_run(state["mlflow_parent_run_id"])
            if run.info.experiment_id == exp_id:
                client.set_terminated(run.info.run_id, "RUNNING")
                tag_experiment(client, exp_id, run.info.run_id)
                return ParentRun(run.info.run_id, exp_id)
        except mlflow.exceptions.MlflowException:
            pass
    tags = {RUN_NAME_TAG: spec.name, SWEEP_TAG: spec.name}
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    run = client.create_run(exp_id, tags=tags)
    params = [Param(k, str(v)[:6000]) for k, v in flatten(spec.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    with atomic_path(state_path) as tmp:
        tmp.write_text(json.dumps({"mlflow_parent_run_id": run.info.run_id, "experiment": experiment,
                                   "tracking_uri": uri}))
    tag_experiment(client, exp_id, run.info.run_id)
    return ParentRun(run.info.run_id, exp_id)


def log_parent_params(uri: str, parent_run_id: str, params: dict) -> None:
    """Log ``params`` on the sweep's parent run; a resumed sweep logs the same values again, which MLflow allows."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).log_batch(parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def tag_experiment(client, experiment_id: str, parent_run_id: str) -> None:
    """Mark the experiment as model training and save its trials view (the trials of ``parent_run_id``)."""
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    state = {"searchFilter": f"tags.{PARENT_RUN_TAG} = '{parent_run_id}'", "orderByKey": TRIALS_VIEW_COLUMNS[0],
             "orderByAsc": True, "selectedColumns": list(TRIALS_VIEW_COLUMNS)}
    now = int(time.time() * 1000)
    view = {"name": TRIALS_VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW_ID}", json.dumps(view))


def ui_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI's page of the experiment's trials view: on the tracking server, else `make mlflow-ui`'s."""
    base = uri.rstrip("/") if urlparse(uri).scheme in ("http", "https") else MLFLOW_UI
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": TRIALS_VIEW_ID})
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"
