"""Is the sweep's Ray Tune storage shared by every node of the cluster it runs on?

Trials write their checkpoints to ``storage_path`` and a trial retried on another node (a lost node,
a preempted spot instance) restarts from there; so on a cluster whose nodes are on more than one
host the path must be one that every node reaches: an object-store URI (``s3://``, ``gs://``,
``abfs://``, ...) or a directory on a network or cluster file system. A path on a local disk is
refused before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from model.errors import UserError

# File systems that several hosts mount as one (kernel names as /proc/mounts writes them).
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
             "ocfs2", "gfs2", "wekafs", "panfs", "fuse.glusterfs", "fuse.cephfs", "fuse.ceph-fuse",
             "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.blobfuse2",
             "fuse.sshfs", "fuse.weka", "9p", "virtiofs"}


def mount_of(path: str, mounts: str | None = None) -> tuple[str, str]:
    """(mount point, file-system type) of the mount that holds ``path`` (which may not exist yet)."""
    if mounts is None:
        mounts = Path("/proc/mounts").read_text()
    p = os.path.abspath(path)
    best = ("/", "unknown")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (p == point or p.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def check_shared_storage(storage: str, hosts: set[str], address: str, mounts: str | None = None) -> None:
    """Raise UserError when ``storage`` is a local path while the cluster spans several ``hosts``."""
    scheme = urlparse(storage).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # an object store or other remote URI
        return
    if len(hosts) <= 1:
        return
    path = urlparse(storage).path if scheme == "file" else storage
    point, fstype = mount_of(path, mounts)
    if fstype in SHARED_FS:
        return
    raise UserError(
        f"storage_path {path}: a local {fstype} file system (mounted at {point}), but the Ray cluster at "
        f"{address} has nodes on {len(hosts)} hosts ({', '.join(sorted(hosts))}), which cannot share it; set "
        "storage_path to a shared file system (NFS, EFS, Lustre, a ReadWriteMany volume) or an object "
        "store (s3://bucket/prefix, gs://bucket/prefix)")


def cluster_hosts() -> set[str]:
    """The addresses of the live nodes of the Ray cluster this process is connected to."""
    import ray

    return {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
