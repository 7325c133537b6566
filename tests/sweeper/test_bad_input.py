"""Bad input through the real command line: one clear line, exit code 2, nothing written.

Each case of tests/data/bad/cases.yaml (a malformed spec, override or results table) runs as a
process of its own, `drorae ARGS` from the repository root, on a copy of tests/data/bad in
tmp_path. It must exit 2 with exactly one stderr line, `drorae: error: ` and the case's expected
text, print nothing on stdout, show no traceback, and write nothing: the copied inputs are
byte-identical afterwards, and neither the sweep's results_dir nor the command's --out, nor the
shared cache (DRORAE_CACHE), nor a new entry in the repository root exists.

Sweep cases run without --dry-run, because validation must stop a real run. As a guard,
RAY_ADDRESS points at a port where no Ray answers: should a bad spec ever pass validation, the run
stops seconds later on that address, instead of starting a sweep, and the case fails on its message.

The commands run in a warm interpreter (tests/sweeper/warm_cli.py forks one child per command after
importing torch and timm once): a fresh `python -m sweeper sweep` spends ~7 s on those imports, 40
of them would take minutes on 2 cores. A test below checks that the warm runner answers exactly like
a fresh `python -m sweeper`; DRORAE_BAD_INPUT_FRESH=1 runs every case in a fresh interpreter instead.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad"
MANIFEST = BAD / "cases.yaml"
CASES = yaml.safe_load(MANIFEST.read_text())
NO_RAY = "127.0.0.1:1"  # nothing listens on port 1
TIMEOUT = 120


# --- running `drorae` ----------------------------------------------------------------------------


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_ADDRESS=NO_RAY, DRORAE_CACHE=str(tmp / "cache"))
    return env


def fresh_drorae(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python -m sweeper ARGS` in a fresh interpreter, from the repository root."""
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
        out, err = proc.communicate()
        pytest.fail(f"drorae {' '.join(args)} still ran after {TIMEOUT} s: did the bad input pass validation?")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class WarmDrorae:
    """`python -m sweeper ARGS`, each in a child forked from tests/sweeper/warm_cli.py."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.n = 0
        # One-threaded numeric libraries: no BLAS / OpenMP thread pools for the forks to inherit.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_cli.py"))], cwd=REPO,
                                       env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.server.stdout.readline() or "{}") == {"ready": True}, "warm_cli.py did not start"
        self.server_maxrss_kb = json.loads(self.server.stdout.readline())["maxrss_kb"]
        self.last: dict = {}  # the last answer: rc, and the child's maxrss_kb

    def __call__(self, args: list[str], env: dict, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        self.n += 1
        out, err = self.scratch / f"{self.n}.out", self.scratch / f"{self.n}.err"
        request = {"argv": args, "cwd": str(REPO), "env": env, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = self.last = json.loads(self.server.stdout.readline() or "{}")
        if answer.get("timeout"):
            pytest.fail(f"drorae {' '.join(args)} still ran after {timeout} s: did the bad input pass validation?")
        assert "rc" in answer, "warm_cli.py died"
        return subprocess.CompletedProcess(args, answer["rc"], out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=30)


@pytest.fixture(scope="module")
def drorae(tmp_path_factory):
    """drorae(args, env) -> CompletedProcess: the command line, as each case runs it."""
    if os.environ.get("DRORAE_BAD_INPUT_FRESH"):
        yield fresh_drorae
        return
    warm = WarmDrorae(tmp_path_factory.mktemp("drorae-output"))
    yield warm
    warm.close()


# --- the cases -----------------------------------------------------------------------------------


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare(case: dict, tmp: Path) -> tuple[list[str], str, dict]:
    """The case's argv and expected text with {data} (a copy of tests/data/bad) and {out} filled in."""
    data, out = tmp / "data", tmp / "out"
    shutil.copytree(BAD, data)
    fill = {"{data}": str(data), "{out}": str(out)}

    def sub(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    args = [sub(str(a)) for a in case["args"]]
    for name in {a.removeprefix("{data}/") for a in map(str, case["args"]) if a.startswith("{data}/")}:
        if name.startswith("fifo_"):  # a FIFO no one writes to: reading it would wait forever
            os.mkfifo(data / name)
        elif name.startswith("loop_"):  # a symlink to itself: ELOOP
            (data / name).symlink_to(name)
    if args[0] == "sweep":
        args.append(f"results_dir={tmp / 'results'}")
    return args, sub(case["error"]), _env(tmp)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_stops_with_one_error_line_exit_code_2_and_writes_nothing(drorae, tmp_path, case):
    args, expected, env = _prepare(case, tmp_path)
    inputs = _files(tmp_path / "data")
    repo_entries = set(os.listdir(REPO))

    out = drorae(args, env)

    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drorae: error: "), out.stderr
    assert expected in lines[0].removeprefix("drorae: error: ")
    # nothing written: the inputs as they were, no results, no output folder, no cache, nothing new in the repo
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert _files(tmp_path / "data") == inputs
    assert set(os.listdir(REPO)) <= repo_entries


# --- the suite itself ----------------------------------------------------------------------------


def test_every_file_in_the_bad_input_folder_is_used_by_a_case():
    ids = [c["id"] for c in CASES]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    # a file's name, also where a case names a path below it ({data}/table_empty.csv/report.md)
    used = {a.removeprefix("{data}/").split("/")[0] for c in CASES for a in map(str, c["args"])
            if a.startswith("{data}/")}
    present = {p.name for p in BAD.iterdir()} - {MANIFEST.name}
    assert present - used == set(), "files no case uses (add a case, or delete the file)"
    missing = {name for name in used - present if not name.startswith(("no_such_", "fifo_", "loop_"))}
    assert missing == set(), "cases name files that are not in tests/data/bad"
    for c in CASES:
        assert set(c) == {"id", "args", "error"} and c["error"].strip(), c


@pytest.mark.parametrize("case_id", ["spec-more-fused-layers-than-blocks", "table-text-in-numeric-column"])
def test_the_warm_runner_answers_exactly_like_a_fresh_python_m_sweeper(drorae, tmp_path, case_id):
    case = next(c for c in CASES if c["id"] == case_id)
    args, _, env = _prepare(case, tmp_path)
    warm, fresh = drorae(args, env), fresh_drorae(args, env)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
