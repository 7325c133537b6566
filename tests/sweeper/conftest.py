import copy
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


@pytest.fixture
def local_ray():
    """A real local one-node Ray (dashboard off, 127.0.0.1), shut down after the test; a new one even where
    another Ray runs on this machine (ray.init() would join that one)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()
