"""The `drorae` command line: help, dry run, one-line errors with exit code 2, the sweep call."""

import os
import subprocess
import sys
import types

import pytest

from sweeper.cli import build_parser, main


def drorae(*args, cwd=None, timeout=60):
    """The real command line in a fresh interpreter (`python -m sweeper` is `drorae`)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "sweeper", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _options(parser):
    return [s for a in parser._actions for s in a.option_strings] + [
        a.metavar for a in parser._actions if not a.option_strings and a.metavar and a.nargs != "A..."]


def test_help_explains_every_option():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.nargs == "A..."]
    top = drorae("--help")
    assert top.returncode == 0 and top.stderr == ""
    for name in subparsers.choices:
        assert name in top.stdout
    assert "--version" in top.stdout and "examples:" in top.stdout
    for name, sub in subparsers.choices.items():
        out = drorae(name, "--help")
        assert out.returncode == 0, out.stderr
        for action in sub._actions:
            assert action.help, f"{name}: {action.dest} has no help"
        for option in _options(sub):
            assert option in out.stdout, f"{name} --help does not mention {option}"
    sweep = drorae("sweep", "--help").stdout
    for example in ("--dry-run", "sweeps/paper_capacity.yaml", "RAY_ADDRESS=ray://head:10001",
                    "MLFLOW_TRACKING_URI=http://mlflow:5000", "phase2.lr=3e-4", "grid.seeds=[0,1]", "make sweep"):
        assert example in sweep


@pytest.mark.slow  # a fresh interpreter (torch, timm) per command, like the two tests below
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, write_spec, tiny_raw):
    spec = write_spec(tiny_raw)
    results = tmp_path / "results"
    out = drorae("sweep", spec, "--dry-run", f"results_dir={results}", "grid.seeds=[0,1]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trial unit" in out.stdout and "h32-k6-s1" in out.stdout
    assert out.stdout.splitlines()[-1].startswith("total: 6 units, 6 trials")
    assert not results.exists()
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]  # nothing else, not even in the working directory


@pytest.mark.slow  # make test-fast runs the in-process variants (test_user_errors_in_process)
@pytest.mark.parametrize("case", ["bad-spec", "bad-override"])
def test_user_error_is_one_line_exit_2(tmp_path, write_spec, tiny_raw, case):
    if case == "bad-spec":
        tiny_raw["eval"]["n_images"] = 64
        args = [write_spec(tiny_raw)]
    else:
        args = [write_spec(tiny_raw), "phase2.lr"]
    out = drorae("sweep", *args, "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drorae: error: "), out.stderr
    assert ("eval.n_images" if case == "bad-spec" else "phase2.lr") in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


# --- in-process: the same entry point, without a fresh interpreter each time ----------------------


@pytest.mark.parametrize("change, overrides, words", [
    (None, ["grid.fused_layers=[7]"], ["grid.fused_layers", "6 blocks"]),  # found by build_plan
    (None, ["encoder.preset=null", "encoder.name=vit_bse_patch16_224"], ["did you mean vit_base_patch16_224"]),
    (None, ["phase2.stepz=3"], ["phase2.stepz: unknown key"]),
    (None, ["grid.expert_hidden=[]"], ["grid.expert_hidden"]),
    ("missing", [], ["no such file or directory (expected a spec file)"]),
], ids=["too-many-layers", "unknown-timm-model", "unknown-key", "empty-grid", "missing-file"])
def test_user_errors_in_process(capsys, write_spec, tiny_raw, tmp_path, change, overrides, words):
    spec = tmp_path / "nope.yaml" if change == "missing" else write_spec(tiny_raw)
    assert main(["sweep", str(spec), *overrides, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"drorae: error: {spec}: "), err
    for word in words:
        assert word in err


@pytest.fixture
def fake_run(monkeypatch):
    """A stand-in `sweeper.run` whose run_sweep records its call (or raises `fake_run.raises`)."""
    module = types.ModuleType("sweeper.run")
    module.calls, module.raises = [], None

    def run_sweep(plan, *, restart, address, adaptive=0):
        module.calls.append((plan, restart, address))
        module.adaptive = adaptive
        if module.raises is not None:
            raise module.raises

    module.run_sweep = run_sweep
    monkeypatch.setitem(sys.modules, "sweeper.run", module)
    return module


def test_sweep_calls_run_sweep(fake_run, monkeypatch, capsys, write_spec, tiny_raw):
    spec = str(write_spec(tiny_raw))
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    # options before, between and after the overrides
    assert main(["sweep", spec, "--restart", "grid.seeds=[0,1]", "-v", "phase2.lr=3e-4"]) == 0
    plan, restart, address = fake_run.calls[-1]
    assert restart is True and address == "ray://head:10001"
    assert plan.spec.grid.seeds == [0, 1] and plan.spec.phase2.lr == 3e-4
    assert main(["sweep", spec, "--address", "auto"]) == 0
    assert fake_run.calls[-1][1:] == (False, "auto")
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["sweep", spec]) == 0
    assert fake_run.calls[-1][2] is None  # run_sweep starts a local Ray
    assert main(["sweep", spec, "--dry-run"]) == 0 and len(fake_run.calls) == 3  # a dry run starts nothing
    assert main(["sweep", spec, "--adaptive", "2", "law.target=1e8"]) == 0 and fake_run.adaptive == 2


def test_interrupt_and_user_errors_from_the_run(fake_run, capsys, write_spec, tiny_raw):
    from model.errors import UserError

    spec = str(write_spec(tiny_raw))
    fake_run.raises = KeyboardInterrupt()
    assert main(["sweep", spec]) == 130
    assert capsys.readouterr().err.splitlines() == ["drorae: interrupted; rerun the same command to resume the sweep"]
    fake_run.raises = UserError("RAY_ADDRESS: no Ray cluster at\nray://nowhere:10001")
    assert main(["sweep", spec]) == 2
    assert capsys.readouterr().err == "drorae: error: RAY_ADDRESS: no Ray cluster at ray://nowhere:10001\n"
    fake_run.raises = RuntimeError("a bug")  # not the user's mistake: the traceback stays
    with pytest.raises(RuntimeError):
        main(["sweep", spec])


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["sweep"], ["nosuch"], ["sweep", "x.yaml", "--nosuch"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "unrecognized arguments: --nosuch" in capsys.readouterr().err


@pytest.mark.parametrize("env,words", [
    ({"RAY_ADDRESS": "127.0.0.1:1"}, "RAY_ADDRESS 127.0.0.1:1: no Ray cluster answers"),
    ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "MLFLOW_TRACKING_URI http://127.0.0.1:1: no server answers"),
])
@pytest.mark.slow  # a sweep in a fresh interpreter, up to its connection checks
def test_unreachable_ray_or_mlflow_fails_fast_before_any_trial(tmp_path, env, words):
    import time

    from helpers import SMOKE

    results = tmp_path / "results"
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    full_env.update(env)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sweeper", "sweep", str(SMOKE), f"results_dir={results}"],
                         capture_output=True, text=True, env=full_env, timeout=60)
    assert time.monotonic() - start < 30
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"drorae: error: {words}" + out.stderr.split(words, 1)[1].rstrip()]
    assert "Traceback" not in out.stderr
    assert not results.exists()  # nothing written


# --- outputs and endpoints a sweep cannot use: one line, before anything is written ----------------


NO_RAY = "127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture
def refused_sweep(tmp_path, monkeypatch, capsys):
    """refused_sweep(*args) -> the one error line of `drorae sweep sweeps/smoke.yaml ARGS`, run in this process.

    RAY_ADDRESS points where no Ray answers: should a bad input ever pass its check, the run stops at
    the Ray check (and the test fails on the message) instead of starting a sweep. The test's tmp_path
    is the working directory and holds the shared cache: the caller checks that nothing was written.
    """
    from helpers import SMOKE

    monkeypatch.setenv("RAY_ADDRESS", NO_RAY)
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def sweep(*args) -> str:
        assert main(["sweep", str(SMOKE), *map(str, args)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("drorae: error: "), err
        return lines[0].removeprefix("drorae: error: ")

    return sweep


def test_a_results_dir_that_cannot_hold_results_is_one_line_and_nothing_is_written(tmp_path, refused_sweep):
    (tmp_path / "table.csv").write_text("x\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = {"/proc/drorae-results": "/proc is on a proc file system (mounted at /proc)",
             "/sys/drorae/results": "/sys is on a sysfs file system (mounted at /sys)",
             tmp_path / "table.csv": f"{tmp_path / 'table.csv'} is a regular file, not a directory",
             tmp_path / "table.csv" / "a" / "b": f"{tmp_path / 'table.csv'} is a regular file, not a directory",
             tmp_path / "loop" / "results": f"{tmp_path / 'loop' / 'results'}: a symbolic link loop"}
    for results, words in cases.items():
        line = refused_sweep(f"results_dir={results}")
        assert line.startswith(f"results_dir {results}: ") and words in line, line
        assert not os.path.lexists(f"{results}") or results == tmp_path / "table.csv"
    assert sorted(os.listdir(tmp_path)) == ["loop", "table.csv"]  # no results, no cache, no mlflow.db


def test_a_refused_sweep_leaves_none_of_a_nested_results_dir(tmp_path, refused_sweep):
    results = tmp_path / "a" / "b" / "c"
    assert refused_sweep(f"results_dir={results}").startswith(f"RAY_ADDRESS {NO_RAY}: no Ray cluster answers")
    assert refused_sweep(f"results_dir={results}", "--address", "127.0.0.1:99999") == \
        "--address '127.0.0.1:99999': not a valid address (Port out of range 0-65535)"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("variable, value, message", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:99999", "not a valid address (Port out of range 0-65535)"),
    ("MLFLOW_TRACKING_URI", "http://[::1", "not a valid address (Invalid IPv6 URL)"),
    ("RAY_ADDRESS", "127.0.0.1:99999", "not a valid address (Port out of range 0-65535)"),
    ("RAY_ADDRESS", "http://[::1", "not a valid address (Invalid IPv6 URL)"),
])
def test_an_endpoint_from_the_environment_that_does_not_parse_is_one_line_naming_the_variable(
        tmp_path, refused_sweep, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    assert refused_sweep(f"results_dir={tmp_path / 'results'}") == f"{variable} {value!r}: {message}"
    assert sorted(os.listdir(tmp_path)) == []


def test_a_tracking_server_that_never_answers_refuses_the_sweep_in_seconds_and_nothing_is_written(
        tmp_path, refused_sweep, monkeypatch):
    import time

    from helpers import SilentServer

    with SilentServer() as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.port}")
        start = time.monotonic()
        line = refused_sweep(f"results_dir={tmp_path / 'a' / 'b'}")
        seconds = time.monotonic() - start
        assert server.accepted >= 1
    assert line.startswith(f"MLFLOW_TRACKING_URI http://127.0.0.1:{server.port}: no server answers within 5 s")
    assert seconds < 30, seconds  # the spec and its plan, then the check's 5 s; no MLflow retries for minutes
    assert os.listdir(tmp_path) == []


def test_a_sweep_refused_after_its_lock_leaves_none_of_a_nested_results_dir(tmp_path, refused_sweep, monkeypatch):
    """The issue's case: results_dir=a/b/c, refused after the lock (the Tune experiment on the shared storage
    belongs to another results directory); the lock's own cleanup removed c, and a/b stayed."""
    from sweeper.storage import TuneExperiment

    storage = tmp_path / "storage"
    TuneExperiment(str(storage), "smoke", tmp_path / "theirs").claim()
    monkeypatch.delenv("RAY_ADDRESS")  # a local Ray; the refusal comes before it is started
    line = refused_sweep(f"results_dir={tmp_path / 'a' / 'b' / 'c'}", f"storage_path={storage}")
    assert line.startswith("sweep 'smoke': its Ray Tune experiment") and str(tmp_path / "theirs") in line, line
    assert sorted(os.listdir(tmp_path)) == ["storage"]  # no a/, no a/b/
