"""`drorae hparams`: the law, its intervals, the points and the predictions through the command line, as text
and as JSON, against the module (itself tested against numpy in test_hparams.py); --where, --x; refusals."""

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from test_hparams import searched_table

from analysis.hparams import fit_hparam_law
from helpers import drorae_call as call


@pytest.fixture
def table():
    df = searched_table(seed=21)
    df.loc[df.index[:2], "status"] = "pruned"        # pruned: left out, silently (their metric is partial)
    return df


@pytest.fixture
def results_dir(tmp_path, table):
    d = tmp_path / "results" / "t"
    d.mkdir(parents=True)
    table.to_parquet(d / "trials.parquet")
    return d


def module_law(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_hparam_law(df, **kw)


def test_json_is_the_module_s_law_and_its_predictions(results_dir, table):
    rc, out, err = call("hparams", results_dir, "--capacity", "1e7", "--capacity", "2e8", "--alpha", "0.1", "--json")
    assert (rc, err) == (0, "")
    got = json.loads(out)
    law = module_law(table, alpha=0.1)
    assert got["params"] == pytest.approx(dict(law.params), rel=1e-12)
    assert got["bse"] == pytest.approx(dict(law.bse), rel=1e-12)
    ci = law.conf_int(0.1)
    assert got["conf_int"]["b"] == pytest.approx([ci.loc["b", "lower"], ci.loc["b", "upper"]], rel=1e-12)
    assert got["df_resid"] == 3 and got["weighting"] == "random-effects" and got["n_trials"] == len(table) - 2
    assert [p["point_id"] for p in got["points"]] == list(law.points["point_id"])
    sf = law.get_prediction([1e7, 2e8]).summary_frame(0.1)
    for row, (_, r) in zip(got["predictions"], sf.iterrows()):
        assert row["mean"] == pytest.approx(r["mean"], rel=1e-12)
        assert row["ci"] == pytest.approx([r["mean_ci_lower"], r["mean_ci_upper"]], rel=1e-12)


def test_text_prints_the_law_its_ci_each_point_and_each_prediction(results_dir, table):
    rc, out, err = call("hparams", results_dir, "--capacity", "2e8")
    assert (rc, err) == (0, "")
    law = module_law(table)
    assert law.equation in out
    (b_row,) = [ln for ln in out.splitlines() if ln.split()[:1] == ["b"]]
    lo, hi = law.conf_int().loc["b"]
    assert f"[{lo:.5g}, {hi:.5g}]" in b_row
    for r in law.points.itertuples():
        (line,) = [ln for ln in out.splitlines() if ln.split()[:1] == [r.point_id]]
        assert f"{r.optimum:.4g}" in line and r.method in line
    (pred,) = [ln for ln in out.splitlines() if ln.split()[:1] == ["2e+08"]]
    sf = law.get_prediction([2e8]).summary_frame()
    assert re.search(rf"{sf['mean'].iloc[0]:.4g}\s+\[{sf['mean_ci_lower'].iloc[0]:.4g}, "
                     rf"{sf['mean_ci_upper'].iloc[0]:.4g}\]", pred)


def test_where_and_x_choose_the_rows_and_the_capacity(results_dir, table):
    rc, out, _ = call("hparams", results_dir, "--x", "expert_hidden", "--where", "seed=0", "--json")
    assert rc == 0
    got = json.loads(out)
    law = module_law(table[table["seed"] == 0], x="expert_hidden")
    assert got["x"] == "expert_hidden" and got["params"] == pytest.approx(dict(law.params), rel=1e-12)
    assert [p["capacity"] for p in got["points"]] == [2, 8, 32, 128, 512]


def test_two_points_print_the_line_and_say_the_intervals_are_undefined(tmp_path):
    path = tmp_path / "two.csv"
    searched_table(seed=22, widths=(8, 512)).to_csv(path, index=False)
    rc, out, _ = call("hparams", path, "--capacity", "1e6")
    assert rc == 0 and "only 2 points" in out and "[nan, nan]" in out
    rc, out, _ = call("hparams", path, "--capacity", "1e6", "--json")
    got = json.loads(out)
    assert got["bse"] == {"a": None, "b": None} and got["predictions"][0]["ci"] == [None, None]
    assert got["predictions"][0]["mean"] > 0


def test_a_warning_line_names_points_left_out(tmp_path, table):
    one = table[table["point_id"] == "h2-k6"].iloc[2:3].assign(point_id="h4-k6", params=9918)
    path = tmp_path / "t.csv"
    pd.concat([table, one]).to_csv(path, index=False)
    rc, _, err = call("hparams", path)
    assert rc == 0
    assert len(err.splitlines()) == 1 and err.startswith("drorae: warning: ")
    assert "h4-k6 (1 trial(s) at 1 value(s) of lr: no optimum to locate)" in err


@pytest.mark.parametrize("argv, message", [
    (["--param", "wd"], "no column 'hp.wd' for the searched hyperparameter 'wd'; searched hyperparameters in the "
                        "table: hp.lr"),
    (["--where", "seed=7"], "where seed=7: no row of"),
    (["--capacity", "-1"], "--capacity -1: expected a finite capacity > 0"),
])
def test_bad_input_is_one_line_and_exit_code_2(results_dir, argv, message):
    rc, out, err = call("hparams", results_dir, *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("drorae: error: ") and message in err


def test_help_lists_the_command_and_its_examples():
    rc, out, _ = call("hparams", "--help")
    assert rc == 0 and "drorae hparams results/paper_capacity --capacity 2e8" in out and "--param NAME" in out
    assert np.any(["hparams" in ln for ln in call("--help")[1].splitlines()])
