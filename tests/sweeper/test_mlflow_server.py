"""`make mlflow-server` for real: a tracking server on 127.0.0.1 only, over the sweeps' SQLite file,
that takes runs and artifacts over http (as a sweep's driver on a cluster sends them)."""

import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, stop_group, wait_healthy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc (Linux)"),
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
]

# The server starts in ~16-24 s on the 2-core development machine; others' sweeps may share the cores.
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> dict[int, str]:
    """{socket inode: local address} of the TCP sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            # The kernel prints each 32-bit word of the address in host byte order.
            raw = b"".join(struct.pack("=I", int(addr_hex[i:i + 8], 16)) for i in range(0, len(addr_hex), 8))
            family = socket.AF_INET if width == 4 else socket.AF_INET6
            found[int(fields[9])] = socket.inet_ntop(family, raw)
    return found


def _group_sockets(pgid: int) -> set[int]:
    """Inodes of the sockets held open by the processes of process group ``pgid``."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # fields after "(comm)": state ppid pgrp
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile, or not ours to read
    return inodes


def test_mlflow_server_listens_on_loopback_only_and_stores_runs_and_artifacts_in_results(tmp_path):
    from mlflow.tracking import MlflowClient

    venv = Path(sys.prefix)  # the venv running the tests: make uses it as it is, builds nothing
    assert (venv / "bin" / "python").exists()
    results, port, log = tmp_path / "results", _free_port(), tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_HOST", "MLFLOW_WORKERS", "MLFLOW_ARGS", "MLFLOW_JOBS", "MLFLOW_TRACKING_URI",
                        "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "mlflow-server", f"VENV={venv}", f"RESULTS={results}", f"MLFLOW_PORT={port}"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = os.getpgid(proc.pid)
    assert pgid == proc.pid  # its own session and group: stopping it touches nothing else
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", START_TIMEOUT_S, lambda: log.read_text()[-3000:],
                     "make mlflow-server")

        listening = _listening(port)
        assert listening, f"nothing listens on port {port}"
        assert set(listening.values()) == {"127.0.0.1"}, listening  # never 0.0.0.0 or ::
        assert set(listening) <= _group_sockets(pgid), "the listening socket is not the server's"

        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp_id = client.create_experiment("server-check")
        run = client.create_run(exp_id, tags={"trial_id": "h16-k6-s0-t0"})
        run_id = run.info.run_id
        client.log_param(run_id, "expert_hidden", "16")
        client.log_metric(run_id, "rfid", 31.5, step=0)
        grid = tmp_path / "reconstructions.txt"
        grid.write_text("a reconstruction grid")
        client.log_artifact(run_id, str(grid))
        client.set_terminated(run_id, "FINISHED")

        # In the SQLite file the sweeps use by default ...
        with sqlite3.connect(results / "mlflow.db") as db:
            assert db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchall() == [("FINISHED",)]
            assert db.execute("select value from metrics where run_uuid = ? and key = 'rfid'",
                              (run_id,)).fetchall() == [(31.5,)]
            assert db.execute("select value from params where run_uuid = ? and key = 'expert_hidden'",
                              (run_id,)).fetchall() == [("16",)]
        # ... and the artifact, uploaded through the server, in results/mlartifacts.
        stored = list((results / "mlartifacts").rglob("reconstructions.txt"))
        assert len(stored) == 1 and run_id in stored[0].parts, stored
        assert stored[0].read_text() == "a reconstruction grid"
        assert [a.path for a in client.list_artifacts(run_id)] == ["reconstructions.txt"]
    finally:
        stop_group(proc)

    with pytest.raises(OSError):  # stopped: the port no longer answers
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
