"""Which Tune storage paths a cluster's nodes can share (the rule; the refusal itself runs on a real
two-host Ray cluster in test_faults.py)."""

import pytest

from model.errors import UserError
from sweeper.storage import check_shared_storage, mount_of

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
