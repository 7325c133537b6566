"""The cluster configs in sweeps/cluster/: what Ray's cluster launcher and KubeRay need, the driver's
Ray and Python in every image, shared storage on every node, token authentication, nothing public."""

import json
import re
import sys
from pathlib import Path

import pytest
import ray
import yaml

from helpers import REPO

CLUSTER = REPO / "sweeps" / "cluster"
LAUNCHER = CLUSTER / "gpu-cluster.yaml"
KUBERAY = CLUSTER / "kuberay.yaml"
PYTHON = f"py{sys.version_info.major}{sys.version_info.minor}"  # the driver's Python: py311
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)(?:-gpu|-cu\d+)?$")


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def launcher() -> dict:
    return load(LAUNCHER)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(KUBERAY)


def pod_specs(rc: dict) -> dict[str, dict]:
    """{group name: pod spec} for the head group and every worker group."""
    specs = {"head": rc["spec"]["headGroupSpec"]["template"]["spec"]}
    for group in rc["spec"]["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def ray_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay's Ray container is the first one


def assert_same_ray_and_python(image: str):
    m = IMAGE.match(image)
    assert m, f"{image}: expected rayproject/ray:<ray version>-py<python>[-gpu]"
    assert m["ray"] == ray.__version__, f"{image}: the driver runs Ray {ray.__version__}"
    assert m["py"] == PYTHON == "py311", f"{image}: the driver runs Python 3.11"


@pytest.mark.parametrize("path", [LAUNCHER, KUBERAY], ids=lambda p: p.name)
def test_cluster_configs_are_single_yaml_documents_that_safe_load(path):
    assert isinstance(load(path), dict)


# --- Ray's cluster launcher (ray up) ----------------------------------------------------------


def test_launcher_config_has_every_key_rays_cluster_launcher_requires(launcher):
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in launcher, key
    assert launcher["provider"]["type"]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    for name, node_type in types.items():
        assert {"node_config", "resources"} <= set(node_type), name
        assert node_type.get("max_workers", 0) <= launcher["max_workers"], name


def test_launcher_config_validates_against_the_schema_ray_ships(launcher):
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip(f"this Ray ships no {schema_path.name}")
    jsonschema.validate(launcher, json.loads(schema_path.read_text()))


def test_launcher_image_carries_the_drivers_ray_and_python(launcher):
    assert_same_ray_and_python(launcher["docker"]["image"])


def test_launcher_nodes_start_with_token_auth_and_a_loopback_dashboard(launcher):
    head = " ".join(launcher["head_start_ray_commands"])
    worker = " ".join(launcher["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--dashboard-host=127.0.0.1" in head
    assert "~/.ray/auth_token" in launcher["file_mounts"]  # the token reaches every node


@pytest.mark.parametrize("path", [LAUNCHER, KUBERAY], ids=lambda p: p.name)
def test_tracking_servers_the_configs_describe_bind_loopback(path):
    text = path.read_text()
    assert "mlflow server" in text
    hosts = re.findall(r"--host[= ](\S+)", text)
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts


# --- KubeRay (kubectl apply) ------------------------------------------------------------------


def test_kuberay_manifest_is_a_ray_io_v1_raycluster(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    assert raycluster["spec"]["workerGroupSpecs"]


def test_kuberay_images_carry_the_drivers_ray_and_python(raycluster):
    assert raycluster["spec"]["rayVersion"] == ray.__version__
    for pod in pod_specs(raycluster).values():
        for container in pod["containers"] + pod.get("initContainers", []):
            assert_same_ray_and_python(container["image"])


def test_kuberay_worker_group_requests_one_gpu_per_pod_and_autoscales_from_zero(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        resources = ray_container(group["template"]["spec"])["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1, group["groupName"]
        assert resources["requests"]["nvidia.com/gpu"] == 1, group["groupName"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1, group["groupName"]
    head = ray_container(spec["headGroupSpec"]["template"]["spec"])["resources"]
    assert "nvidia.com/gpu" not in head.get("limits", {})  # a CPU head: trials go to GPU pods


def test_every_kuberay_pod_mounts_the_same_shared_volume_at_the_same_path(raycluster):
    mounts = {}
    for group, pod in pod_specs(raycluster).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims = {m["mountPath"]: volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
                  for m in ray_container(pod)["volumeMounts"]
                  if "persistentVolumeClaim" in volumes[m["name"]] and not m.get("readOnly")}
        shm = [m for m in ray_container(pod)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", group
        mounts[group] = claims
    assert len({json.dumps(c, sort_keys=True) for c in mounts.values()}) == 1, mounts  # one path, one claim
    (path, claim), = next(iter(mounts.values())).items()
    assert path == "/mnt/shared"  # where the README's storage_path and cache_dir point


def _auth_env(env: list[dict]) -> dict:
    by_name = {e["name"]: e for e in env}
    assert by_name["RAY_AUTH_MODE"]["value"] == "token"
    token = by_name["RAY_AUTH_TOKEN"]
    assert "value" not in token, "the token belongs in a Secret, not in the manifest"
    return token["valueFrom"]["secretKeyRef"]


def test_kuberay_ray_processes_and_the_autoscaler_use_token_auth_from_one_secret(raycluster):
    refs = [_auth_env(ray_container(pod)["env"]) for pod in pod_specs(raycluster).values()]
    refs.append(_auth_env(raycluster["spec"]["autoscalerOptions"]["env"]))
    assert all(ref == refs[0] for ref in refs), refs
    assert refs[0]["name"] and refs[0]["key"] == "auth_token"


def test_kuberay_exposes_no_public_service_and_binds_the_dashboard_to_loopback(raycluster):
    head = raycluster["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress")
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for group, pod in pod_specs(raycluster).items():
        assert not pod.get("hostNetwork"), group
        for container in pod["containers"]:
            assert all("hostPort" not in p for p in container.get("ports", [])), group
    assert not re.search(r"^\s*type:\s*(LoadBalancer|NodePort)", KUBERAY.read_text(), re.M)
