import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from helpers import REPO, SMOKE, stop_group

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


@pytest.fixture
def local_ray():
    """A real local one-node Ray (dashboard off, 127.0.0.1), shut down after the test; a new one even where
    another Ray runs on this machine (ray.init() would join that one)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


# The smoke sweep's controls in SMOKE_SWEEP: the plain RAE and last-layer fusion beside the 3 widths.
SMOKE_SWEEP_ARGS = ("controls.runs=[rae,last_layer]",)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One smoke sweep (3 widths and 2 controls) through the real CLI, ``python -m sweeper sweep``, on a
    private local Ray: its results directory and what it printed (stdout, stderr). Run once per session,
    for every test that only reads what a finished sweep leaves (test_run.py, test_sweep_shows.py)."""
    root = tmp_path_factory.mktemp("sweep")
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short (socket paths), and private
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))},
           "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={root / 'results'}", *SMOKE_SWEEP_ARGS]
    with open(root / "stdout", "w") as out, open(root / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    stdout, stderr = (root / "stdout").read_text(), (root / "stderr").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    return SimpleNamespace(results=root / "results", stdout=stdout, stderr=stderr, args=SMOKE_SWEEP_ARGS)
