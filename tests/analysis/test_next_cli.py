"""`drorae next`: the ranked candidates through the command line (JSON against the module and numpy,
the text's header and table, --candidates, --per, --interval) and its one-line exit-2 refusals."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import design, fit, load
from helpers import drorae_call as call

WIDTHS = [2, 8, 32, 128, 512, 2048]
H0, H1 = 5286, 1158                       # params = H0 + H1 h, as DRoRAE's fusion at 6 layers


def results_table(seconds=True, seed=0) -> pd.DataFrame:
    """A sweep's table: 6 widths x 2 seeds, one searched unit with an extra (unevaluated) trial, a control."""
    rng = np.random.default_rng(seed)
    rows = []
    for h in WIDTHS:
        c = H0 + H1 * h
        for s in (0, 1):
            row = {"trial_id": f"h{h}-k6-s{s}-t0", "unit_id": f"h{h}-k6-s{s}", "point_id": f"h{h}-k6", "kind": "grid",
                   "status": "completed", "expert_hidden": h, "fused_layers": 6, "seed": s, "params": c,
                   "rfid": 41.6 - 1.6 * math.log10(c) + 0.4 * rng.standard_normal(), "best": True}
            if seconds:
                row.update(train_seconds=30 * c ** 0.1 * math.exp(0.05 * rng.standard_normal()), eval_seconds=20.0)
            rows.append(row)
    extra = dict(rows[-1], trial_id="h2048-k6-s1-t1", best=False, rfid=np.nan)
    if seconds:
        extra.update(train_seconds=100.0, eval_seconds=np.nan)
    rows.append(extra)
    rows.append({"trial_id": "rae-s0-t0", "unit_id": "rae-s0", "point_id": "rae", "kind": "control",
                 "status": "completed", "expert_hidden": np.nan, "fused_layers": 0, "seed": 0, "params": 0,
                 "rfid": 36.6, "best": True, **({"train_seconds": 1.0, "eval_seconds": 20.0} if seconds else {})})
    return pd.DataFrame(rows)


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results" / "t"
    d.mkdir(parents=True)
    results_table().to_parquet(d / "trials.parquet")
    return d


def test_next_json_is_the_modules_ranking_with_the_fits_interval_and_the_cost_fit(results_dir):
    rc, out, err = call("next", results_dir, "--target", "2.4e7", "--json", "--criterion", "c-optimal")
    assert rc == 0 and err == ""
    got = json.loads(out)
    assert got["criterion"].startswith("c-optimal") and got["interval"] == "pi" and got["per"] == "cost"
    table = load(results_dir)
    res = fit(table)
    expected = design.rank(res, table, 2.4e7, rows=results_table())
    cands = got["candidates"]
    assert [c["capacity"] for c in cands] == pytest.approx(expected.table["capacity"].tolist())
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    scores = [c["reduction_per_second"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert {c["capacity"] for c in cands if c["kind"] == "seed"} == {H0 + H1 * h for h in WIDTHS}
    assert all(c["width"] is not None and c["capacity"] == H0 + H1 * c["width"] for c in cands)
    # the fit's own PI now: what `drorae predict` says at the target
    rc, pred, _ = call("predict", results_dir, "--capacity", "2.4e7", "--json")
    (p,) = json.loads(pred)
    assert got["actual"]["pi_width"] == pytest.approx(p["pi"][1] - p["pi"][0])
    # the cost model: ln(unit seconds) on log10 capacity, the unevaluated trial counted in its unit
    df = results_table()
    grid = df[df["kind"] == "grid"]
    s = (grid["train_seconds"] + grid["eval_seconds"].fillna(0)).groupby(grid["unit_id"]).sum()
    c = grid.groupby("unit_id")["params"].first()
    c1, c0 = np.polyfit(np.log10(c[s.index]), np.log(s), 1)
    assert (got["cost_model"]["c0"], got["cost_model"]["c1"]) == pytest.approx((c0, c1), rel=1e-9)
    assert got["width_map"]["intercept"] == H0 and got["width_map"]["slope"] == H1


def test_next_text_names_the_criterion_the_law_the_interval_now_and_ranks_every_candidate(results_dir):
    rc, out, err = call("next", results_dir, "--target", "2.4e7", "--per", "trial", "--criterion", "c-optimal")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Design criterion: c-optimal sequential design")
    assert "95% prediction interval (PI) of one new run at params = 2.4e+07, per trial" in lines[1]
    assert lines[2].startswith("Law: y = a + b log10(C)")
    assert lines[3].startswith("Now at 2.4e+07 (the fit's own intervals)") and "95% PI [" in lines[3]
    assert "Cost: ln(seconds) =" in out and "Widths: params = 5286 + 1158 * expert_hidden" in out
    head = lines.index(next(ln for ln in lines if ln.split()[:1] == ["rank"]))
    assert "per trial" in lines[head] and "width" in lines[head]
    body = lines[head + 1:]
    n = len(design.default_candidates([H0 + H1 * h for h in WIDTHS], 2.4e7)) + len(WIDTHS)
    assert [int(ln.split()[0]) for ln in body] == list(range(1, n + 1))


def test_candidates_replace_the_new_capacities_and_ci_ranks_the_mean(results_dir):
    rc, out, _ = call("next", results_dir, "--target", "2.4e7", "--candidates", "1e5, 3e6", "--interval", "ci",
                      "--json")
    assert rc == 0
    got = json.loads(out)
    new = sorted(c["width"] for c in got["candidates"] if c["kind"] == "new")
    assert new == [round((1e5 - H0) / H1), round((3e6 - H0) / H1)]
    assert got["interval"] == "ci" and got["now"]["width"] < got["actual"]["pi_width"]


def test_per_trial_needs_no_seconds_and_per_cost_says_it_does(tmp_path):
    path = tmp_path / "trials.csv"
    results_table(seconds=False).to_csv(path, index=False)
    rc, out, err = call("next", path, "--target", "1e8", "--per", "trial", "--json")
    assert rc == 0 and json.loads(out)["cost_model"] is None
    rc, out, err = call("next", path, "--target", "1e8")
    assert rc == 2 and out == ""
    assert err.splitlines() == ["drorae: error: per cost needs the trials' measured seconds, but the table has no "
                                "train_seconds or eval_seconds column: rank per trial instead (--per trial)"]


@pytest.mark.parametrize("argv, words", [
    (["--target", "0"], "--target 0: expected a finite capacity > 0"),
    (["--target", "nan"], "--target nan: expected a finite capacity > 0"),
    (["--target=-inf"], "--target -inf: expected a finite capacity > 0"),
    (["--target", "big"], "--target 'big': expected a number"),
    (["--target", "1e8", "--candidates", "1e5,abc"], "--candidates: 'abc' is not a number"),
    (["--target", "1e8", "--candidates", "1e5,-3"], "--candidates: -3 is not a finite capacity > 0"),
    (["--target", "1e8", "--candidates", ","], "--candidates ',': expected comma-separated capacities"),
    (["--target", "1e8", "--per", "money"], "--per 'money': expected one of cost, trial"),
    (["--target", "1e8", "--interval", "mean"], "--interval 'mean': expected one of pi, ci"),
    (["--target", "1e8", "--form", "saturating"], "the 'saturating' law is not linear in its parameters"),
])
def test_bad_input_is_one_line_exit_2(results_dir, argv, words):
    rc, out, err = call("next", results_dir, *argv)
    assert rc == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("drorae: error: ") and words in line, line


def test_criterion_tool_names_itself_and_counts_bell_mccaffrey_df(results_dir):
    rc, out, _ = call("next", results_dir, "--target", "2.4e7", "--criterion", "tool", "--json")
    assert rc == 0
    got = json.loads(out)
    assert got["criterion_name"] == "tool" and got["criterion"].startswith("expected width of the tool's own interval")
    assert got["df_rule"].startswith("Bell-McCaffrey df of the design")
    assert got["now"]["df"] == pytest.approx(got["actual"]["mean_df"], rel=1e-9)   # the design's df is the fit's
    rc, out, err = call("next", results_dir, "--target", "2.4e7", "--criterion", "x")
    assert rc == 2 and err.splitlines() == ["drorae: error: --criterion 'x': expected one of c-optimal, tool"]


def test_next_ranks_by_the_tool_criterion_unless_told_otherwise(results_dir):
    rc, out, err = call("next", results_dir, "--target", "2.4e7", "--json")
    assert rc == 0 and err == ""
    got = json.loads(out)
    table = load(results_dir)
    expected = design.rank(fit(table), table, 2.4e7, rows=results_table(), criterion="tool")
    assert got["criterion_name"] == "tool" and got["criterion"] == expected.criterion
    assert [c["capacity"] for c in got["candidates"]] == pytest.approx(expected.table["capacity"].tolist())
