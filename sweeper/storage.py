"""Is the sweep's Ray Tune storage shared by every node of the cluster it runs on?

Trials write their checkpoints to ``storage_path`` and a trial retried on another node (a lost node,
a preempted spot instance) restarts from there; so on a cluster whose nodes are on more than one
host the path must be one that every node reaches: an object-store URI (``s3://``, ``gs://``,
``abfs://``, ...) or a directory on a network or cluster file system. A path on a local disk is
refused before anything runs.

A sweep's Tune experiment is ``<storage_path>/<sweep name>/`` (``TuneExperiment``), claimed by the
results directory whose sweep runs it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from drorae_io.files import mount_of
from model.errors import UserError

log = logging.getLogger(__name__)

# File systems that several hosts mount as one (kernel names as /proc/mounts writes them).
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
             "ocfs2", "gfs2", "wekafs", "panfs", "fuse.glusterfs", "fuse.cephfs", "fuse.ceph-fuse",
             "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.blobfuse2",
             "fuse.sshfs", "fuse.weka", "9p", "virtiofs"}


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


# --- the sweep's Tune experiment -------------------------------------------------------------

#: The file in a sweep's Tune experiment directory that names the results directory owning it.
CLAIM = "drorae-claim.json"


def is_local(storage: str) -> bool:
    """Whether a storage path is a directory of this machine's file system (no URI scheme, or file://)."""
    scheme = urlparse(storage).scheme
    return not scheme or scheme == "file" or len(scheme) == 1


class TuneExperiment:
    """Where a sweep's Ray Tune experiment lives: ``<storage_path>/<sweep name>/``, owned by one results
    directory.

    Tune runs it as ``RunConfig(storage_path=self.storage, name=self.name)``, so sweeps of different
    names never share one, whatever storage they share. The directory holds ``drorae-claim.json``: the
    results directory whose sweep owns the experiment (its lock, trials table and Optuna studies are
    there), so that a sweep of the same name on the same storage from another results directory is
    refused instead of resuming (and writing into) the other's trials. On a file system the claim is
    made atomically; on an object store it is checked, not atomic. ``--restart`` sets the old
    experiment aside (``set_aside``): on a file system it is moved to
    ``<sweep>.before-restart-<time>``; an object store cannot move a directory, so the new run
    becomes ``<sweep>.restart-<time>`` beside the old one, and the claim names it as current.

    ``filesystem``: a pyarrow file system for ``storage`` (a URI), as Tune's ``storage_filesystem``;
    by default pyarrow resolves it from the URI.
    """

    def __init__(self, storage: str, sweep: str, results_dir, filesystem=None):
        import pyarrow.fs

        self.sweep = sweep
        self.results_dir = str(results_dir)
        self.local = filesystem is None and is_local(storage)
        if self.local:
            path = urlparse(storage).path if storage.startswith("file:") else storage
            self.storage = os.path.abspath(os.path.expanduser(path))
            self._fs, self._root = pyarrow.fs.LocalFileSystem(), self.storage
        else:
            self.storage = storage.rstrip("/")
            if filesystem is not None:
                parsed = urlparse(self.storage)
                self._fs, self._root = filesystem, f"{parsed.netloc}{parsed.path}".rstrip("/")
            else:
                try:
                    self._fs, self._root = pyarrow.fs.FileSystem.from_uri(self.storage)
                except (OSError, ValueError) as exc:  # pyarrow.lib.ArrowInvalid is a ValueError
                    raise UserError(f"storage_path {self.storage}: {_reason(exc)}; expected a directory or "
                                    "an object-store URI (s3://bucket/prefix, gs://bucket/prefix)") from None
                self._root = self._root.rstrip("/")
        self.name = sweep  # the Tune experiment's name under storage (another after a restart on an object store)

    @property
    def path(self) -> str:
        """The Tune experiment: a directory or a URI (``Tuner.restore``, ``Tuner.can_restore``)."""
        return f"{self.storage}/{self.name}"

    def _fs_path(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def _exists(self, fs_path: str) -> bool:
        import pyarrow.fs

        try:
            return self._fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound
        except OSError as exc:
            raise UserError(f"storage_path {self.storage}: cannot read it ({_reason(exc)})") from None

    def read_claim(self) -> dict | None:
        """The claim of the sweep's experiment directory, None where there is none."""
        claim_path = self._fs_path(self.sweep, CLAIM)
        if not self._exists(claim_path):
            return None
        try:
            with self._fs.open_input_stream(claim_path) as f:
                claim = json.loads(f.read(65536).decode())
        except (OSError, ValueError) as exc:
            raise UserError(f"storage_path {self.storage}: {self.sweep}/{CLAIM}: unreadable ({_reason(exc)}); "
                            "expected the JSON that drorae writes there (remove it if no other sweep owns "
                            "this experiment)") from None
        if not isinstance(claim, dict) or not isinstance(claim.get("results_dir"), str):
            raise UserError(f"storage_path {self.storage}: {self.sweep}/{CLAIM}: expected a JSON object "
                            "naming its results_dir (remove it if no other sweep owns this experiment)")
        return claim

    def check(self) -> None:
        """Raise UserError when another results directory owns the experiment; else take its current name."""
        claim = self.read_claim()
        if claim is None:
            return
        self._check_owner(claim)
        current = claim.get("experiment")
        if not self.local and isinstance(current, str) and current.startswith(self.sweep) and "/" not in current:
            self.name = current

    def _check_owner(self, claim: dict) -> None:
        if claim["results_dir"] != self.results_dir:
            raise UserError(
                f"sweep {self.sweep!r}: its Ray Tune experiment {self.storage}/{self.sweep} (storage_path) "
                f"belongs to the sweep of results_dir {claim['results_dir']} (claimed from {claim.get('host')} "
                f"on {claim.get('claimed')}): run the sweep with that results_dir, or give this one another "
                "storage_path or name")

    def claim(self) -> None:
        """Name this results directory (and the current experiment) in the experiment directory."""
        claim = self.read_claim()
        if claim is not None:
            self._check_owner(claim)  # another results directory may have claimed it meanwhile
            if claim.get("experiment", self.sweep) == self.name:
                return
        body = json.dumps({"sweep": self.sweep, "results_dir": self.results_dir, "host": socket.gethostname(),
                           "claimed": time.strftime("%Y-%m-%d %H:%M:%S"), "experiment": self.name},
                          indent=1).encode()
        if not self.local:  # an object store: written whole (checked above, not atomic)
            try:
                self._fs.create_dir(self._fs_path(self.sweep), recursive=True)
                with self._fs.open_output_stream(self._fs_path(self.sweep, CLAIM)) as f:
                    f.write(body)
            except OSError as exc:
                raise UserError(f"storage_path {self.storage}: cannot write {self.sweep}/{CLAIM} "
                                f"({_reason(exc)})") from None
            return
        directory = Path(self.storage) / self.sweep
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{CLAIM}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(body)
            try:  # a hard link appears whole or not at all, and never replaces a claim made meanwhile
                os.link(tmp, directory / CLAIM)
            except FileExistsError:
                self._check_owner(self.read_claim() or {"results_dir": self.results_dir})
            except OSError:  # a file system without hard links: the results directory's lock is held
                os.replace(tmp, directory / CLAIM)
        finally:
            tmp.unlink(missing_ok=True)

    def set_aside(self, stamp: str | None = None) -> str | None:
        """``--restart``: keep the earlier experiment (never delete what a user ran); returns where it is."""
        if not self._exists(self._fs_path(self.name)):
            return None
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        if self.local:
            dest = _free(lambda n: os.path.exists(n), f"{self.storage}/{self.sweep}.before-restart-{stamp}")
            shutil.move(self.path, dest)
            log.info("restart: moved the earlier Ray Tune experiment to %s", dest)
            return dest
        earlier = self.path
        name = _free(lambda n: self._exists(self._fs_path(n)), f"{self.sweep}.restart-{stamp}")
        self.name = name
        log.info("restart: storage_path %s is an object store, where the earlier Ray Tune experiment stays at "
                 "%s; this run's is %s", self.storage, earlier, self.path)
        return earlier


def _free(exists, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... where it is taken."""
    candidate, n = name, 1
    while exists(candidate):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split()) or type(exc).__name__
