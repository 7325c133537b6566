"""Which Tune storage paths a cluster's nodes can share (the rule; the refusal itself runs on a real
two-host Ray cluster in test_faults.py), and where a sweep's Tune experiment lives under them: one per
sweep name, owned by one results directory, set aside by --restart (real sweeps on it in test_run.py)."""

import json
import logging

import pytest

from model.errors import UserError
from sweeper.storage import CLAIM, TuneExperiment, check_shared_storage, mount_of

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
fs-0123.efs.us-west-2.amazonaws.com:/ /mnt/shared nfs4 rw,vers=4.1 0 0
10.0.0.5@tcp:/lustre /mnt/lustre lustre rw 0 0
/dev/nvme1n1 /mnt/shared-local ext4 rw 0 0
"""
TWO_HOSTS = {"10.0.0.1", "10.0.0.2"}


@pytest.mark.parametrize("path, expected", [
    ("/mnt/shared/drorae/ray", ("/mnt/shared", "nfs4")),
    ("/mnt/shared-local/ray", ("/mnt/shared-local", "ext4")),  # a prefix of the name is not a parent
    ("/mnt/lustre", ("/mnt/lustre", "lustre")),
    ("/home/me/results/ray", ("/", "ext4")),
])
def test_mount_of_finds_the_longest_mount_point_holding_the_path(path, expected):
    assert mount_of(path, MOUNTS) == expected


@pytest.mark.parametrize("storage", ["s3://bucket/drorae", "gs://bucket/drorae", "abfs://c@acct.dfs.core.windows.net/x",
                                     "/mnt/shared/drorae", "file:///mnt/lustre/drorae"])
def test_object_stores_and_shared_file_systems_are_accepted_on_several_hosts(storage):
    check_shared_storage(storage, TWO_HOSTS, "10.0.0.1:6379", MOUNTS)


def test_a_local_path_is_accepted_when_every_node_is_on_one_host():
    check_shared_storage("/home/me/results/ray", {"127.0.0.1"}, "127.0.0.1:6379", MOUNTS)


@pytest.mark.parametrize("storage", ["/home/me/results/ray", "/mnt/shared-local/ray", "file:///dev/shm/ray"])
def test_a_local_path_is_refused_on_several_hosts_naming_path_file_system_and_fix(storage):
    with pytest.raises(UserError, match=r"storage_path /.*: a local (ext4|tmpfs) file system \(mounted at .*\), but "
                                        r"the Ray cluster at 10.0.0.1:6379 has nodes on 2 hosts \(10.0.0.1, "
                                        r"10.0.0.2\).*s3://bucket/prefix"):
        check_shared_storage(storage, TWO_HOSTS, "10.0.0.1:6379", MOUNTS)


# --- the sweep's Tune experiment -------------------------------------------------------------


def test_experiment_is_the_sweeps_name_under_storage_path_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = TuneExperiment("ray-results/", "smoke", tmp_path / "results")
    assert (exp.storage, exp.name, exp.path) == (str(tmp_path / "ray-results"), "smoke",
                                                 str(tmp_path / "ray-results" / "smoke"))
    assert TuneExperiment(f"file://{tmp_path}/s", "b", tmp_path).path == f"{tmp_path}/s/b"
    uri = TuneExperiment("s3://bucket/drorae/", "smoke", tmp_path, filesystem=_object_store(tmp_path))
    assert (uri.storage, uri.path) == ("s3://bucket/drorae", "s3://bucket/drorae/smoke")


def test_claim_names_the_results_dir_and_another_results_dir_is_refused_naming_it(tmp_path):
    storage = tmp_path / "shared"
    mine = TuneExperiment(str(storage), "smoke", tmp_path / "a" / "results")
    mine.check()  # nothing there yet
    mine.claim()
    claim = json.loads((storage / "smoke" / CLAIM).read_text())
    assert claim["results_dir"] == str(tmp_path / "a" / "results") and claim["experiment"] == "smoke"
    TuneExperiment(str(storage), "smoke", tmp_path / "a" / "results").check()  # the same one: resumes
    TuneExperiment(str(storage), "other", tmp_path / "b" / "results").check()  # another name: its own
    other = TuneExperiment(str(storage), "smoke", tmp_path / "b" / "results")
    for attempt in (other.check, other.claim):
        with pytest.raises(UserError, match=rf"^sweep 'smoke': its Ray Tune experiment {storage}/smoke "
                                            rf"\(storage_path\) belongs to the sweep of results_dir "
                                            rf"{tmp_path / 'a' / 'results'} \(claimed from .*\): run the sweep "
                                            "with that results_dir, or give this one another storage_path or name$"):
            attempt()
    assert json.loads((storage / "smoke" / CLAIM).read_text()) == claim  # the refused one changed nothing


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"results_dir": 3}'])
def test_a_claim_that_is_not_ours_is_refused_in_one_line_naming_it(tmp_path, content):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / CLAIM).write_text(content)
    with pytest.raises(UserError, match=rf"^storage_path {tmp_path}: smoke/{CLAIM}: .*expected .*JSON") as err:
        TuneExperiment(str(tmp_path), "smoke", tmp_path / "results").check()
    assert "\n" not in str(err.value)


def test_restart_on_a_file_system_moves_the_experiment_aside_and_claims_a_new_one(tmp_path, caplog):
    exp = TuneExperiment(str(tmp_path), "smoke", tmp_path / "results")
    assert exp.set_aside() is None  # nothing to set aside
    exp.claim()
    (tmp_path / "smoke" / "trial").mkdir()
    with caplog.at_level(logging.INFO, logger="sweeper.storage"):
        first = exp.set_aside("20261203-101010")
        exp.claim()
        (tmp_path / "smoke" / "trial").mkdir()
        second = exp.set_aside("20261203-101010")  # twice in one second: a name of its own
    assert first == f"{tmp_path}/smoke.before-restart-20261203-101010" and second == first + "-2"
    assert (tmp_path / "smoke.before-restart-20261203-101010" / "trial").is_dir()
    assert (tmp_path / "smoke.before-restart-20261203-101010-2" / CLAIM).exists()
    assert not (tmp_path / "smoke").exists() and exp.path == f"{tmp_path}/smoke"
    assert f"moved the earlier Ray Tune experiment to {first}" in caplog.text


def _object_store(root):
    """A real pyarrow file system with an object store's paths (bucket/key) under root."""
    import pyarrow.fs

    return pyarrow.fs.SubTreeFileSystem(str(root), pyarrow.fs.LocalFileSystem())


def test_restart_on_an_object_store_starts_a_new_experiment_beside_the_old_and_says_which(tmp_path, caplog):
    store = _object_store(tmp_path)
    uri = "s3://bucket/drorae"
    exp = TuneExperiment(uri, "smoke", tmp_path / "results", filesystem=store)
    exp.check()
    exp.claim()
    (tmp_path / "bucket" / "drorae" / "smoke" / "tuner.pkl").write_text("the first run")
    with caplog.at_level(logging.INFO, logger="sweeper.storage"):
        earlier = exp.set_aside("20261203-101010")
    assert earlier == f"{uri}/smoke" and exp.name == "smoke.restart-20261203-101010"
    assert exp.path == f"{uri}/smoke.restart-20261203-101010"
    assert (tmp_path / "bucket" / "drorae" / "smoke" / "tuner.pkl").read_text() == "the first run"  # left
    assert (f"storage_path {uri} is an object store, where the earlier Ray Tune experiment stays at {uri}/smoke; "
            f"this run's is {uri}/smoke.restart-20261203-101010") in caplog.text
    exp.claim()
    claim = json.loads((tmp_path / "bucket" / "drorae" / "smoke" / CLAIM).read_text())
    assert claim["experiment"] == "smoke.restart-20261203-101010"
    # The next run of the sweep (no --restart) resumes the new one; another results directory is refused.
    rerun = TuneExperiment(uri, "smoke", tmp_path / "results", filesystem=store)
    rerun.check()
    assert rerun.path == f"{uri}/smoke.restart-20261203-101010"
    with pytest.raises(UserError, match=f"belongs to the sweep of results_dir {tmp_path / 'results'} "):
        TuneExperiment(uri, "smoke", tmp_path / "elsewhere", filesystem=store).check()
    # A second restart of the same second: the name is free, and the first restart's run is left as well.
    (tmp_path / "bucket" / "drorae" / "smoke.restart-20261203-101010").mkdir()
    assert rerun.set_aside("20261203-101010") == f"{uri}/smoke.restart-20261203-101010"
    assert rerun.name == "smoke.restart-20261203-101010-2"


def test_an_unparseable_storage_uri_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^storage_path nosuchscheme://x/y: .*expected a directory or an "
                                        r"object-store URI"):
        TuneExperiment("nosuchscheme://x/y", "smoke", tmp_path)
