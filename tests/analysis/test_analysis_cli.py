"""The analysis commands (`drorae fit|predict|backtest|figures|report`, also `python -m analysis ...`):
JSON checked against numpy least squares, one-line exit-2 errors (fuzzed), and no torch in the process."""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.cli import FORMS, build_parser, run_command

A, B = 40.0, -2.0                                    # the synthetic law: rfid = A + B log10(params)
CAPS = [1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7]


def results_table(caps=CAPS, seeds=(0, 1), noise=0.3, extra=True, seed=2) -> pd.DataFrame:
    """A sweep's trials table: grid trials (several seeds), a control, and (extra) one failed trial."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, c in enumerate(caps):
        for s in seeds:
            rows.append({"trial_id": f"h{i}-k6-s{s}-t0", "point_id": f"h{i}-k6", "kind": "grid",
                         "status": "completed", "expert_hidden": float(2 ** i), "fused_layers": 6, "seed": s,
                         "params": int(c), "rfid": A + B * np.log10(c) + noise * rng.standard_normal(),
                         "best": True})
    if extra:
        rows.append({"trial_id": "rae-s0-t0", "point_id": "rae", "kind": "control", "status": "completed",
                     "expert_hidden": np.nan, "fused_layers": 0, "seed": 0, "params": 0, "rfid": 35.0,
                     "best": True})
        rows.append({"trial_id": "h99-k6-s0-t0", "point_id": "h99-k6", "kind": "grid", "status": "failed",
                     "expert_hidden": 4096.0, "fused_layers": 6, "seed": 0, "params": int(1e8), "rfid": np.nan,
                     "best": True})
    return pd.DataFrame(rows)


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results" / "t"
    d.mkdir(parents=True)
    results_table().to_parquet(d / "trials.parquet")
    return d


def reference(df: pd.DataFrame):
    """Independent reference: numpy least squares of rfid on log10(params) over the fitted rows."""
    pts = df[(df["kind"] == "grid") & (df["status"] == "completed")]
    C, y = pts["params"].to_numpy(float), pts["rfid"].to_numpy(float)
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r2 = 1 - ((y - X @ coef) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return coef, r2, len(y)


def main(argv):
    """The commands as `drorae` runs them."""
    return run_command(build_parser(prog="drorae"), argv)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_forms_are_the_analysis_forms():
    import analysis

    assert FORMS == (*analysis.FORMS, "auto")


def test_fit_json_matches_numpy_least_squares(results_dir, capsys):
    rc, out, err = run(capsys, "fit", results_dir, "--json")
    assert rc == 0
    res = json.loads(out)                            # stdout is pure JSON; the warning went to stderr
    assert "h99-k6-s0-t0" in err and err.startswith("drorae: warning: ")
    for key in ("form", "x", "y", "n", "params", "conf_int", "ci_method", "r2", "r2_adj"):
        assert key in res
    assert (res["form"], res["x"], res["y"], res["ci_method"]) == ("log-linear", "params", "rfid", "analytic")
    (a, b), r2, n = reference(results_table())
    assert res["n"] == n == 16
    assert res["params"]["a"] == pytest.approx(a, rel=1e-9)
    assert res["params"]["b"] == pytest.approx(b, rel=1e-9)
    assert res["r2"] == pytest.approx(r2, rel=1e-9)
    for name, value in res["params"].items():
        lo, hi = res["conf_int"][name]
        assert lo < value < hi
    lo, hi = res["conf_int"]["b"]
    assert lo < B < hi                               # the known slope, recovered within its CI


def test_fit_text_and_bootstrap_and_where(results_dir, capsys):
    rc, out, _ = run(capsys, "fit", results_dir)
    assert rc == 0 and "y = a + b log10(C)" in out and "R-squared" in out
    rc, out, _ = run(capsys, "fit", results_dir, "--ci", "bootstrap", "--json")
    res = json.loads(out)
    assert rc == 0 and res["ci_method"] == "bootstrap"
    assert res["conf_int"]["b"][0] < res["params"]["b"] < res["conf_int"]["b"][1]
    rc, out, _ = run(capsys, "fit", results_dir, "--where", "seed=0", "--json")
    assert rc == 0 and json.loads(out)["n"] == len(CAPS)
    rc, out, _ = run(capsys, "fit", results_dir, "--form", "power", "--weights", "seed-variance", "--json")
    res = json.loads(out)
    assert rc == 0 and res["form"] == "power" and res["weights"] == "seed-variance"


def test_fit_reads_a_csv_table(tmp_path, capsys):
    path = tmp_path / "published.csv"
    results_table(extra=False)[["params", "rfid"]].to_csv(path, index=False)
    rc, out, err = run(capsys, "fit", path, "--json")
    (a, b), _, _ = reference(results_table(extra=False))
    assert rc == 0 and err == ""
    assert json.loads(out)["params"]["b"] == pytest.approx(b, rel=1e-9)


def test_predict_json_entries(results_dir, capsys):
    rc, out, _ = run(capsys, "predict", results_dir, "--capacity", "2e8", "--capacity", "5e8", "--json")
    assert rc == 0
    entries = json.loads(out)
    (a, b), _, _ = reference(results_table())
    assert [e["capacity"] for e in entries] == [2e8, 5e8]
    for e in entries:
        assert e["mean"] == pytest.approx(a + b * np.log10(e["capacity"]), rel=1e-9)
        assert e["pi"][0] < e["ci"][0] < e["mean"] < e["ci"][1] < e["pi"][1]
    rc, out, _ = run(capsys, "predict", results_dir, "--capacity", "2e8")
    assert rc == 0 and "2e+08" in out and "95% PI" in out


def test_backtest_json(results_dir, capsys):
    rc, out, _ = run(capsys, "backtest", results_dir, "--holdout", "2", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["holdout"] == 2 and res["form"] == "log-linear"
    assert sorted({r["capacity"] for r in res["rows"]}) == CAPS[-2:]
    assert len(res["rows"]) == 4                                   # 2 capacities x 2 seeds
    for r in res["rows"]:
        assert r["error"] == pytest.approx(r["mean"] - r["truth"])
        assert r["covered"] == (r["pi"][0] <= r["truth"] <= r["pi"][1])
    assert 0 <= res["coverage"] <= 1
    rc, out, _ = run(capsys, "backtest", results_dir, "--holdout", "1")
    assert rc == 0 and "inside their 95% prediction interval" in out


@pytest.mark.parametrize("case, words", [
    ("two-capacities", ["'params'", "2 distinct", "at least 3"]),
    ("non-positive", ["'params'", "non-positive", "log-linear"]),
    ("predict-non-positive", ["--capacity -1", "finite capacity > 0"]),
    ("missing-column", ["'loss'"]),
    ("missing-file", ["nope.parquet", "no such file"]),
    ("holdout-too-large", ["holdout=7", "at least 3"]),
    ("unknown-form", ["--form", "invalid choice", "'quadratic'"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, words):
    df = results_table(extra=False)
    if case == "two-capacities":
        df = results_table(caps=[1e4, 1e5], extra=False)
    elif case == "non-positive":
        df.loc[0, "params"] = 0
    path = tmp_path / "trials.parquet"
    df.to_parquet(path)
    argv = {"predict-non-positive": ["predict", path, "--capacity", "-1"],
            "missing-column": ["fit", path, "--y", "loss"],
            "missing-file": ["fit", tmp_path / "nope.parquet"],
            "holdout-too-large": ["backtest", path, "--holdout", "7"],
            "unknown-form": ["fit", path, "--form", "quadratic"]}.get(case, ["fit", path])
    try:
        rc, out, err = run(capsys, *argv)
    except SystemExit as exc:        # argparse's own errors: usage lines, then `drorae fit: error: ...`
        rc, captured = exc.code, capsys.readouterr()
        out, err = captured.out, captured.err.splitlines()[-1] + "\n"
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drorae") and "error: " in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["trials.parquet"]                # nothing written


@pytest.mark.parametrize("module, prog", [("sweeper", "drorae"), ("analysis", "python -m analysis")])
def test_analysis_commands_never_import_torch(results_dir, module, prog):
    """`python -m sweeper|analysis fit|predict|next|backtest` in a fresh interpreter: torch, ray and model stay out."""
    code = (
        "import runpy, sys\n"
        "module, calls, codes = sys.argv[1], sys.argv[2:], []\n"
        "for argv in calls:\n"
        "    sys.argv = ['-m', *argv.split('|')]\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exc:\n"
        "        codes.append(exc.code)\n"
        "print('MODULES', codes, sorted(m for m in ('torch', 'ray', 'model', 'timm') if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    calls = [f"fit|{results_dir}|--json", f"predict|{results_dir}|--capacity|2e8",
             f"next|{results_dir}|--target|1e9|--per|trial", f"backtest|{results_dir}|--holdout|2",
             f"fit|{results_dir}|--y|nope"]
    out = subprocess.run([sys.executable, "-c", code, module, *calls],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "MODULES [0, 0, 0, 0, 2] []"
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith(f"{prog}: error: ") and "'nope'" in out.stderr


def test_figures_and_report(results_dir, tmp_path, capsys):
    figs = tmp_path / "figs"
    rc, out, _ = run(capsys, "figures", results_dir, "--out", figs)
    assert rc == 0
    paths = out.split()
    assert paths and all(os.path.isfile(p) and p.startswith(str(figs)) for p in paths)
    assert {os.path.splitext(p)[1] for p in paths} == {".pdf", ".png"}
    rc, out, _ = run(capsys, "report", results_dir, "--capacity", "2e8", "--holdout", "2")
    assert rc == 0
    report = results_dir / "report.md"                       # the default: RESULTS/report.md
    assert out.strip() == str(report) and report.is_file()
    text = report.read_text()
    assert "log10" in text and "h99-k6-s0-t0" in text        # the law, and the dropped failed trial
    assert any(name.endswith(".png") for name in os.listdir(results_dir / "figures"))


# --- outputs: only regular files, in places that hold files; nothing written when refused -------------


def refused(capsys, *argv) -> str:
    """The command's one error line (exit 2, nothing on stdout)."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("drorae: error: "), err
    return lines[0].removeprefix("drorae: error: ")


def test_report_refuses_a_device_as_out_and_leaves_it_a_device(results_dir, tmp_path, capsys):
    import stat

    dev = tmp_path / "full"
    try:  # a device like /dev/full, made here: as root the old atomic write replaced such a node with a file
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    line = refused(capsys, "report", results_dir, "--out", dev)
    assert line == f"--out {dev}: a character device, not a regular file; only regular files are written, never a " \
                   "device, a pipe or a socket"
    assert stat.S_ISCHR(os.lstat(dev).st_mode) and os.lstat(dev).st_rdev == os.makedev(1, 7)
    assert sorted(os.listdir(tmp_path)) == ["full", "results"] and not (results_dir / "figures").exists()


def test_report_and_figures_refuse_outputs_that_cannot_be_written_and_write_nothing(results_dir, tmp_path, capsys):
    table = results_dir / "trials.parquet"
    os.mkfifo(tmp_path / "pipe.md")
    cases = [
        (["report", results_dir, "--out", tmp_path / "pipe.md"], "a named pipe (FIFO), not a regular file"),
        (["report", results_dir, "--out", tmp_path], "a directory; expected the path of a file"),
        (["report", results_dir, "--out", table / "report.md"], f"{table} is a regular file, not a directory"),
        (["report", results_dir, "--out", tmp_path / "r.md", "--figures", table], f"{table} is a regular file"),
        (["report", results_dir, "--out", tmp_path / "r.md", "--figures", "/proc/figures"], "on a proc file system"),
        (["report", results_dir, "--out", "/sys/report.md"], "/sys is on a sysfs file system"),
        (["figures", results_dir, "--out", table], f"--out {table}: {table} is a regular file, not a directory"),
        (["figures", results_dir, "--out", "/proc/drorae/figures"], "/proc is on a proc file system"),
    ]
    before = sorted(os.listdir(tmp_path)), table.read_bytes()
    for argv, words in cases:
        assert words in refused(capsys, *argv), argv
    assert (sorted(os.listdir(tmp_path)), table.read_bytes()) == before
    assert os.listdir(results_dir) == ["trials.parquet"]


def test_report_out_through_a_symbolic_link_replaces_the_file_it_points_to(results_dir, tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "report.md").write_text("last week's")
    link = tmp_path / "report.md"
    link.symlink_to(shared / "report.md")
    rc, out, _ = run(capsys, "report", results_dir, "--out", link, "--figures", tmp_path / "figs")
    assert rc == 0 and out.strip() == str(link)
    assert link.is_symlink() and os.readlink(link) == str(shared / "report.md")
    assert "log10" in (shared / "report.md").read_text()
    assert sorted(os.listdir(shared)) == ["report.md"]  # no temporary file left beside it


# --- backtest --rollout ------------------------------------------------------------------------


def test_backtest_rollout_json_matches_numpy(results_dir, capsys):
    """8 capacities x 2 seeds: splits k = 3..7; the pooled bias and weighted relative error by numpy."""
    rc, out, _ = run(capsys, "backtest", results_dir, "--rollout", "--json")
    assert rc == 0
    res = json.loads(out)
    assert [s["k"] for s in res["splits"]] == [3, 4, 5, 6, 7] and res["skipped"] == []
    assert "log10(C / C_max)" in res["weighting"]
    pts = results_table(extra=False)
    C, y = pts["params"].to_numpy(float), pts["rfid"].to_numpy(float)
    caps = np.unique(C)
    errs, rels, ds = [], [], []
    for k in range(3, len(caps)):
        tr, te = C <= caps[k - 1], C > caps[k - 1]
        X = np.column_stack([np.ones(tr.sum()), np.log10(C[tr])])
        coef, *_ = np.linalg.lstsq(X, y[tr], rcond=None)
        e = coef[0] + coef[1] * np.log10(C[te]) - y[te]
        errs.append(e)
        rels.append(np.abs(e) / np.abs(y[te]))
        ds.append(np.log10(C[te] / caps[k - 1]))
        split = res["splits"][k - 3]
        assert split["n"] == te.sum() and split["bias"] == pytest.approx(e.mean(), rel=1e-9)
    e, r, d = (np.concatenate(v) for v in (errs, rels, ds))
    overall = res["overall"]
    assert overall["n"] == len(e) == 2 * (5 + 4 + 3 + 2 + 1) and overall["splits"] == 5
    assert overall["bias"] == pytest.approx(e.mean(), rel=1e-9)
    assert overall["weighted_rel_error"] == pytest.approx((d * r).sum() / d.sum(), rel=1e-9)
    assert overall["max_decades"] == pytest.approx(np.log10(caps[-1] / caps[2]))
    assert 0 <= overall["coverage"] <= 1


def test_backtest_rollout_text(results_dir, capsys):
    rc, out, _ = run(capsys, "backtest", results_dir, "--rollout")
    assert rc == 0
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[2:8]] == ["3", "4", "5", "6", "7", "all"]
    assert "weighted by the reach" in lines[-1]


def test_rollout_and_holdout_together_are_refused(results_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["backtest", str(results_dir), "--rollout", "--holdout", "2"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# --- bad input: one line, exit 2 -----------------------------------------------------------


def call(*argv) -> tuple[int, str, str]:
    """The command in this process, its stdout and stderr captured (for Hypothesis, which cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def assert_clean(rc: int, err: str) -> list[str]:
    """Exit 0, or exit 2 with one error line; every stderr line a `drorae: warning:` or `drorae: error:` line."""
    lines = err.splitlines()
    assert rc in (0, 2), err
    assert "Traceback" not in err
    assert all(ln.startswith(("drorae: warning: ", "drorae: error: ")) for ln in lines), err
    errors = [ln for ln in lines if ln.startswith("drorae: error: ")]
    assert len(errors) == (rc == 2) and (rc == 0 or lines[-1] == errors[0]), err
    return errors


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "abc"])
@pytest.mark.parametrize("command", ["predict", "report"])
def test_a_bad_capacity_is_one_line_naming_capacity(results_dir, tmp_path, command, value):
    rc, out, err = call(command, results_dir, f"--capacity={value}", "--out", tmp_path / "r.md") \
        if command == "report" else call(command, results_dir, f"--capacity={value}")
    (line,) = assert_clean(rc, err)
    assert rc == 2 and out == ""
    assert line.startswith(f"drorae: error: --capacity {value!r}: expected a number" if value == "abc" else
                           f"drorae: error: --capacity {value}: expected a finite capacity > 0")
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("form", FORMS)
def test_a_constant_metric_is_exit_2_for_every_form(tmp_path, form):
    path = tmp_path / "trials.parquet"
    results_table(extra=False).assign(rfid=12.5).to_parquet(path)
    rc, out, err = call("fit", path, "--form", form)
    (line,) = assert_clean(rc, err)
    assert rc == 2 and out == ""
    assert "column 'rfid' has the same value (12.5) in all 16 rows to fit" in line


def test_exact_duplicate_rows_are_named_and_dropped(tmp_path):
    df = results_table(extra=False)
    df = pd.concat([df, df.iloc[[3]]], ignore_index=True)       # row 4 written twice: the copy is row 17
    df.to_csv(tmp_path / "t.csv", index=False)
    rc, out, err = call("fit", tmp_path / "t.csv", "--json")
    assert_clean(rc, err)
    assert rc == 0 and json.loads(out)["n"] == 16
    assert "dropped 1 exact duplicate row(s)" in err and "row 17 (a copy of row 4)" in err
    assert "not another seed" in err


def test_a_where_that_matches_nothing_says_so(results_dir):
    rc, _out, err = call("fit", results_dir, "--where", "seed=7")
    (line,) = assert_clean(rc, err)
    assert rc == 2 and "where seed=7: no row" in line and "seed = 7" in line and "its values there: 0, 1" in line
    rc, _out, err = call("fit", results_dir, "--where", "seed=0", "--where", "point_id=nope")
    (line,) = assert_clean(rc, err)
    assert "where point_id=nope" in line and "among the rows where seed=0" in line


def test_row_numbers_count_alike_in_every_message(tmp_path):
    """A table without trial ids: the NaN, the missing se, the duplicate and the text cell are each named by
    their data row (1 = the first row under the header), however many rows came before them were dropped."""
    df = pd.DataFrame({"params": [1e4, 1e5, 1e6, 1e7, 1e8, 1e5], "rfid": [9.0, np.nan, 7.0, 6.0, 5.1, np.nan],
                       "rfid_se": [0.1, 0.1, 0.1, np.nan, 0.1, 0.1]})
    df.to_csv(tmp_path / "t.csv", index=False)
    rc, out, err = call("fit", tmp_path / "t.csv")
    assert_clean(rc, err)
    assert rc == 0
    assert "row 6 (a copy of row 2)" in err                              # the duplicate: row 6 = row 2
    assert "NaN or infinite 'params' or 'rfid': row 2" in err            # the NaN metric, in row 2
    assert "no finite positive rfid_se (row 4)" in out                   # the missing se, in row 4
    df.astype({"params": object}).assign(params=lambda d: d.params.where(d.index != 4, "big")) \
        .to_csv(tmp_path / "bad.csv", index=False)
    rc, _out, err = call("fit", tmp_path / "bad.csv")
    (line,) = assert_clean(rc, err)
    assert "'big' in row 5" in line                                      # the text cell, in row 5


# --- fuzzing the input contracts -------------------------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.sampled_from(["nan", "-inf", "0", "-0", "-5", "1e400", "", " 2e8 ", "1_000", "0x10"]),
                       st.text(max_size=6)))
def test_fuzz_capacity(results_dir, value):
    rc, out, err = call("predict", results_dir, f"--capacity={value}", "--json")
    errors = assert_clean(rc, err)
    if rc == 0:
        (entry,) = json.loads(out)
        assert entry["capacity"] > 0 and np.isfinite(entry["capacity"])
    else:
        assert "--capacity" in errors[0]


@FUZZ
@given(where=st.one_of(st.text(alphabet="seedparmt_ol=,0123.x- ", max_size=14),
                       st.sampled_from(["seed=0", "seed=1", "seed=nan", "kind=grid", "point_id=h3-k6", "best=True",
                                        "fused_layers=6", "fused_layers=6.0", "=", ",", "seed=0,seed=1"])))
def test_fuzz_where(results_dir, where):
    rc, out, err = call("fit", results_dir, f"--where={where}", "--json")
    assert_clean(rc, err)
    if rc == 0:
        assert json.loads(out)["n"] >= 3


# Mostly tables a law can be fitted to, so that the fits, predictions and rollouts run too; now and then a
# zero, negative, NaN or infinite cell, a repeated value, a constant column or a duplicate row.
CAPACITIES = st.sampled_from([1e3, 1e4, 1e5, 1e6, 1e7, 1e8] * 4 + [0.0, -1.0, np.nan])
METRICS = st.one_of(st.floats(0.5, 50), st.floats(0.5, 50), st.floats(0.5, 50),
                    st.sampled_from([1.0, 0.0, -1.0, np.nan, np.inf, 1e6]))
RARELY = st.sampled_from([False, False, False, True])


@FUZZ
@given(rows=st.one_of(st.lists(st.tuples(CAPACITIES, METRICS), max_size=3),
                      st.lists(st.tuples(CAPACITIES, METRICS), min_size=8, max_size=24)),
       constant=RARELY, duplicate=RARELY, with_se=st.booleans(),
       form=st.sampled_from(FORMS), command=st.sampled_from(["fit", "predict", "backtest"]))
def test_fuzz_tables(rows, constant, duplicate, with_se, form, command):
    """Tables with constant, duplicate, NaN, infinite and non-positive cells: exit 0 or one error line."""
    df = pd.DataFrame(rows, columns=["params", "rfid"], dtype=float)
    if constant:
        df["rfid"] = 4.0
    if duplicate and len(df):
        df = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    if with_se:
        df["rfid_se"] = 0.1
    extra = {"predict": ["--capacity", "2e8"], "backtest": ["--rollout"]}.get(command, [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        df.to_csv(path, index=False)
        rc, _out, err = call(command, path, "--form", form, *extra)
    assert_clean(rc, err)
