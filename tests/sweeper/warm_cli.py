"""A warm `python -m sweeper`: the CLI's heavy imports done once, then one forked child per command.

`python -m sweeper sweep ...` spends ~7 s importing torch and timm before it reads its spec; the
bad-input suite runs some forty commands. This server imports what the commands import, then for
each request forks a child that is a process of its own (its own working directory, environment,
stdout/stderr files, session and exit status) and runs ``sweeper/__main__.py`` exactly as
``python -m sweeper ARGS`` does (``runpy``), exit functions included, without paying the imports
again. tests/sweeper/test_bad_input.py checks that its answers match a fresh interpreter's.

Protocol, one JSON object per line: the server prints ``{"ready": true}`` once its imports are done,
then ``{"maxrss_kb": its own peak resident memory}``; then each request ``{"argv": [...], "cwd": ...,
"env": {...}, "stdout": path, "stderr": path, "timeout": seconds}`` gets ``{"rc": exit status,
"maxrss_kb": the child's peak resident memory}`` (``{"rc": null, "timeout": true}`` when the command
ran past its timeout: its whole session is then killed).
"""

import atexit
import json
import os
import resource
import runpy
import signal
import sys
import time
import traceback

sys.path[0] = os.getcwd()  # as `python -m` has it (the server starts in the repository root), not this folder

import analysis.backtest  # noqa: E402, F401  pandas, statsmodels, scipy: what the analysis commands import
import analysis.fit  # noqa: E402, F401
import analysis.plots  # noqa: E402, F401  matplotlib
import analysis.report  # noqa: E402, F401
import sweeper.cli  # noqa: E402, F401
import sweeper.plan  # noqa: E402, F401  torch, timm, model: what `drorae sweep` imports before it validates


def _child(req: dict) -> None:
    """Become `python -m sweeper ARGV` in the request's cwd and environment; never returns."""
    code = 1
    try:
        os.setsid()  # a session of its own, so that a timeout can kill whatever it started
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        sys.argv = ["-m", *req["argv"]]  # runpy puts sweeper/__main__.py's path in argv[0], as `-m` does
        try:
            runpy.run_module("sweeper", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:  # the interpreter's own handling of sys.exit(code)
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:  # the child's peak resident memory, in KiB (counting what it shares with this server)
            return {"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return {"rc": None, "timeout": True}
        time.sleep(0.01)


def main() -> None:
    answer = sys.stdout
    print(json.dumps({"ready": True}), file=answer, flush=True)
    # Each answer gives its child's peak memory; this server's own (before any child) is the baseline.
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=answer, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(json.dumps(_wait(pid, req.get("timeout", 120))), file=answer, flush=True)


if __name__ == "__main__":
    main()
