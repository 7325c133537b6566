import copy
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

# A spec small enough to plan in a fraction of a second: the tiny encoder preset (d = 96,
# 6 blocks, 8 x 8 tokens) and the tiny decoder.
TINY = {
    "name": "t",
    "phase1": {"steps": 10},
    "phase2": {"steps": 10},
    "grid": {"expert_hidden": [2, 8, 32]},
    "eval": {"n_images": 16},
    "data": {"num_val": 32},
}


@pytest.fixture
def tiny_raw() -> dict:
    """A fresh copy of the tiny spec as a mapping, to mutate."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(raw_or_text, name="spec.yaml") -> path of a spec file under tmp_path."""

    def write(content, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "smoke.yaml"


@pytest.fixture
def local_ray():
    """A real local one-node Ray (dashboard off, 127.0.0.1), shut down after the test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def smoke_plan(tmp_path, *overrides):
    """The smoke spec with its results (table, Ray storage, MLflow db) under tmp_path."""
    from sweeper.plan import build_plan
    from sweeper.spec import load_spec

    return build_plan(load_spec(SMOKE, [f"results_dir={tmp_path / 'results'}", *overrides]))


def mlflow_trial_runs(tmp_path, experiment: str):
    """The nested (trial) runs of the experiment in the test's SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def wait_healthy(proc, url: str, timeout: float, log_tail, what: str) -> None:
    """Wait until the server that ``proc`` started answers ``url``/health; fail with its log if it dies or never does."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /health answer on {url} within {timeout} s:\n{log_tail()}")


def stop_group(proc, grace: float = 30) -> None:
    """Stop exactly the process group that ``proc`` leads (started with start_new_session=True):
    SIGTERM, then SIGKILL if any of it lingers past ``grace`` seconds."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        proc.poll()  # reap the leader
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
