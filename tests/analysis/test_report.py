"""The Markdown report: its numbers parsed back and checked against numpy; every law fitted once; atomic.

The references are computed here (numpy least squares, hand formulas), never by formatting the
code's own results with the report's format codes.
"""

import os
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import load
from analysis import report as report_module
from analysis.report import write_report
from helpers import cost_table, real_or_stand_in, sweep_table


@pytest.fixture
def table():
    with pytest.warns(UserWarning, match="failed"):
        return load(sweep_table(layers=(4,)))


# --- reading the report back -----------------------------------------------------------------


def _number(cell: str) -> float:
    return float(cell.strip().replace(",", ""))


def _pair(cell: str) -> tuple[float, float]:
    lo, hi = cell.strip().strip("[]").split(",")
    return _number(lo), _number(hi)


def _section(text: str, heading: str) -> str:
    """The text of the section whose heading starts with ``heading``, up to the next ``## ``."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 3)
    return text[start:] if end < 0 else text[start:end]


def _table_rows(section: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows (header and rule skipped)."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _value(pattern: str, text: str) -> float:
    return _number(re.search(pattern, text).group(1))


def _lstsq(C, y):
    """(a, b), the residuals and R² of y = a + b log10 C by numpy."""
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    return coef, r, 1 - (r @ r) / ((y - y.mean()) ** 2).sum()


def _cy(table):
    return table.points["params"].to_numpy(float), table.points["rfid"].to_numpy(float)


FOUR_DIGITS = 5e-4   # the report prints 4 significant digits: relative rounding at most 5e-4


# --- the sections --------------------------------------------------------------------------


def test_report_numbers_match_numpy(table, tmp_path):
    out = write_report(table, tmp_path / "report.md", capacities=(1e9, 2.5e10), holdout=1)
    assert out == tmp_path / "report.md"
    text = out.read_text()
    C, y = _cy(table)
    (a, b), _r, r2 = _lstsq(C, y)
    for tid in table.points["trial_id"]:
        assert f"| {tid} |" in text
    assert "| rae |" in text and "| decoder_only |" in text          # the controls, listed apart

    law = _section(text, "Fitted law")
    assert _value(r"Slope b = (\S+) rfid per decade", law) == pytest.approx(b, rel=FOUR_DIGITS)
    params = {row[0]: row for row in _table_rows(law)}
    assert _number(params["a"][1]) == pytest.approx(a, rel=FOUR_DIGITS)
    assert _number(params["b"][1]) == pytest.approx(b, rel=FOUR_DIGITS)
    lo, hi = _pair(params["b"][3])
    assert lo < b < hi
    assert _value(r"R² = (\S+),", law) == pytest.approx(r2, abs=5e-5)
    assert "CI (bootstrap)" in law and "Lack of fit: F(" in law       # 2 seeds: replicates exist

    pred = _table_rows(_section(text, "Predictions"))
    assert [_number(r[0]) for r in pred] == [1e9, 2.5e10]
    for row in pred:
        assert _number(row[1]) == pytest.approx(a + b * np.log10(_number(row[0])), rel=FOUR_DIGITS)
        ci, pi = _pair(row[2]), _pair(row[3])
        assert pi[0] < ci[0] < _number(row[1]) < ci[1] < pi[1]

    held = _table_rows(_section(text, "Backtest"))
    top = C.max()
    (ha, hb), _, _ = _lstsq(C[C < top], y[C < top])
    assert sorted(_number(r[1]) for r in held) == pytest.approx(sorted(y[C == top]), rel=FOUR_DIGITS)
    for row in held:
        assert _number(row[0]) == top
        assert _number(row[2]) == pytest.approx(ha + hb * np.log10(top), rel=FOUR_DIGITS)
    errors = sorted(ha + hb * np.log10(top) - y[C == top])
    assert sorted(_number(r[4]) for r in held) == pytest.approx(errors, rel=FOUR_DIGITS)
    assert "held-out runs inside their prediction interval" in text
    assert "- h2048-k4-s0-t0" in text                                  # the failed trial
    assert "## Figures" not in text                                    # none asked for
    assert sorted(os.listdir(tmp_path)) == ["report.md"]               # no temporary file left


def test_the_rollout_table_matches_numpy(table, tmp_path):
    """4 capacities: one split, k = 3, predicting the largest; its bias, error and reach by hand."""
    text = write_report(table, tmp_path / "r.md").read_text()
    C, y = _cy(table)
    caps = np.unique(C)
    (ra, rb), _, _ = _lstsq(C[C <= caps[2]], y[C <= caps[2]])
    err = ra + rb * np.log10(C[C == caps[3]]) - y[C == caps[3]]
    section = _section(text, "Rollout backtest")
    assert "log10(C / C_max)" in section
    rows = {r[0]: r for r in _table_rows(section)}
    assert set(rows) == {"3", "all"}
    for key in ("3", "all"):
        n, reach, bias, mae = rows[key][2:6]
        assert int(n) == 2 and _number(reach) == pytest.approx(np.log10(caps[3] / caps[2]), abs=5e-3)
        assert _number(bias) == pytest.approx(err.mean(), rel=FOUR_DIGITS)
        assert _number(mae) == pytest.approx(np.abs(err).mean(), rel=FOUR_DIGITS)
        rel = float(rows[key][6].rstrip("%")) / 100           # one predicted capacity: every weight alike
        assert rel == pytest.approx(np.mean(np.abs(err) / np.abs(y[C == caps[3]])), abs=6e-4)


def test_default_predictions_are_10x_and_100x_the_largest_capacity(table, tmp_path):
    text = write_report(table, tmp_path / "r.md").read_text()
    top = table.points["params"].max()
    assert [_number(r[0]) for r in _table_rows(_section(text, "Predictions"))] == [10 * top, 100 * top]


def test_report_embeds_figures_with_relative_links(table, tmp_path):
    out = write_report(table, tmp_path / "sweep" / "report.md", figures_dir=tmp_path / "sweep" / "figures")
    text = out.read_text()
    for name in ("capacity_scaling", "unified_scaling", "rollout_error"):
        assert f"](figures/{name}.png)" in text and f"](figures/{name}.pdf)" in text
        assert (out.parent / "figures" / f"{name}.png").stat().st_size > 0
    assert "layer_scaling" not in text                                 # one fused_layers value
    assert not [p for p in (tmp_path / "sweep").rglob("*.tmp")]


def test_report_write_is_atomic(table, tmp_path, monkeypatch):
    out = tmp_path / "report.md"
    out.write_text("previous report\n")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(table, out)
    assert out.read_text() == "previous report\n"
    assert sorted(os.listdir(tmp_path)) == ["report.md"]


def test_too_few_capacities_is_named_in_the_report_not_raised(tmp_path):
    df = sweep_table(layers=(4,), widths=(8, 32), failed=False)
    with pytest.warns(UserWarning, match="no law fitted"):
        text = write_report(load(df), tmp_path / "r.md").read_text()
    assert "No fit: column 'params' has 2 distinct capacities" in text


def test_a_constant_metric_is_named_in_the_report_with_a_warning(tmp_path):
    df = sweep_table(layers=(4,), failed=False).assign(rfid=3.25)
    with pytest.warns(UserWarning, match="no law fitted"):
        text = write_report(load(df), tmp_path / "r.md", figures_dir=tmp_path / "figs").read_text()
    assert "No fit: column 'rfid' has the same value (3.25) in all 8 rows to fit" in text
    assert "R² =" not in text and not re.search(r"\b(nan|-?inf)\b", text, re.IGNORECASE)


def test_report_on_the_real_results_table_or_a_stand_in(tmp_path):
    raw = pd.read_parquet(real_or_stand_in(tmp_path))
    t = load(tmp_path)
    text = write_report(t, tmp_path / "report.md", holdout=2).read_text()
    for tid in raw["trial_id"]:
        assert f"| {tid} |" in text
    (_a, b), _, _ = _lstsq(*_cy(t))
    params = {row[0]: row for row in _table_rows(_section(text, "Fitted law"))}
    assert _number(params["b"][1]) == pytest.approx(b, rel=FOUR_DIGITS)
    assert "largest 2 capacities held out" in text


def test_a_long_table_is_summarised_per_capacity(table, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_LISTED_TRIALS", 5)
    text = write_report(table, tmp_path / "r.md").read_text()
    section = _section(text, "Results")
    assert "8 trials: too many to list one by one" in section
    C, y = _cy(table)
    rows = _table_rows(section.split("### Controls")[0])
    assert [_number(r[0]) for r in rows] == list(np.unique(C))
    for row in rows:
        sel = y[C == _number(row[0])]
        assert int(row[1]) == len(sel)
        assert _number(row[2]) == pytest.approx(sel.mean(), rel=FOUR_DIGITS)
        assert _number(row[3]) == pytest.approx(sel.std(ddof=1), rel=FOUR_DIGITS)
    assert "| rae |" in text                                            # 2 controls: still listed


def test_report_has_a_measurement_error_section_only_with_se(table, tmp_path):
    """se = 0.05 on every run: measurement variance 0.05² (the leverages sum to p), chi2 = RSS / 0.05²,
    between seeds chi2 = the pure-error SS / 0.05², all by hand."""
    assert "Measurement error" not in write_report(table, tmp_path / "a.md").read_text()
    pts = table.points.assign(rfid_se=0.05)
    se_table = load(pd.concat([pts, table.controls.assign(rfid_se=0.05)], ignore_index=True))
    text = write_report(se_table, tmp_path / "b.md").read_text()
    assert "### Measurement error" in text and "| trial_id | point_id | params | rfid | rfid_se |" in text
    C, y = _cy(se_table)
    _coef, r, _ = _lstsq(C, y)
    n, p = len(y), 2
    residual_var = (r @ r) / (n - p)
    chi2 = (r @ r) / 0.05 ** 2
    assert _value(r"a ratio of (\S+),", text) == pytest.approx(0.05 ** 2 / residual_var, rel=5e-3)  # 3 digits
    assert _value(r"chi2\(6\) = (\S+) \(the law refitted", text) == pytest.approx(chi2, rel=FOUR_DIGITS)
    assert _value(r"weights 1/se²\), p = (\S+):", text) == pytest.approx(stats.chi2.sf(chi2, n - p), rel=FOUR_DIGITS)
    pure = sum(((y[C == c] - y[C == c].mean()) ** 2).sum() for c in np.unique(C))
    assert _value(r"Between seeds.*chi2\(4\) = (\S+),", text) == pytest.approx(pure / 0.05 ** 2, rel=FOUR_DIGITS)


# --- fit once ------------------------------------------------------------------------------


def test_the_report_fits_each_law_once(table, tmp_path, fit_calls):
    """One layer count: the capacity panel is the unified law (fitted once, for the report, its sections and
    the figures); then one fit on the 3 smallest capacities, for both the held-out backtest and the
    rollout's only split."""
    write_report(table, tmp_path / "r.md", figures_dir=tmp_path / "figs")
    assert len(fit_calls) == 2 and len(set(fit_calls)) == 2
    whole = np.sort(table.points["params"].to_numpy(float))
    assert sum(len(call[4]) == 2 * 8 * len(whole) for call in fit_calls) == 1   # the law of all 8 rows, once


def test_the_end_of_a_sweep_fits_each_panels_law_once(tmp_path, capsys, fit_calls):
    """The summary's intervals, the law printed, the report and its figures share one fit per panel."""
    from sweeper.cli import _end_of_sweep

    df = sweep_table().assign(val_l1=0.1, error=None)
    df.to_parquet(tmp_path / "trials.parquet")
    _end_of_sweep(df, tmp_path, "drorae")
    out = capsys.readouterr().out
    # 3 panels (capacity, layer count, unified); 6 capacities: 3 rollout splits, the last the held-out backtest's
    assert len(fit_calls) == 6 and len(set(fit_calls)) == 6
    assert (tmp_path / "report.md").is_file() and (tmp_path / "figures" / "rollout_error.png").is_file()
    with pytest.warns(UserWarning):
        (a, b), _, _ = _lstsq(*_cy(load(df)))
    line = next(ln for ln in out.splitlines() if ln.startswith("log-linear law: rFID = "))
    got_a, got_b = (float(v) for v in re.match(r"log-linear law: rFID = (\S+) \+ \((\S+)\)", line).groups())
    assert got_a == pytest.approx(a, rel=FOUR_DIGITS) and got_b == pytest.approx(b, rel=FOUR_DIGITS)
    assert "the log-linear law's CI" in out or "t-interval" in out     # the summary came first


def test_the_cost_section_has_the_law_over_train_flops_and_the_controls_at_their_cost(tmp_path, fit_calls):
    t = load(cost_table())
    out = write_report(t, tmp_path / "report.md", figures_dir=tmp_path / "figs")
    text = out.read_text()
    sec = _section(text, "Against training cost")
    (a, b), _, r2 = _lstsq(t.points["train_flops"].to_numpy(float), t.points["rfid"].to_numpy(float))
    assert _value(r"Slope b = (\S+) rfid per decade of training FLOPs", sec) == pytest.approx(b, rel=FOUR_DIGITS)
    assert _value(r"R² = (\S+)\.", sec) == pytest.approx(r2, abs=1e-4)
    rows = {r[0]: r for r in _table_rows(sec)}
    assert _number(rows["a"][1]) == pytest.approx(a, rel=FOUR_DIGITS)
    assert rows["rae"][1] == "0 (trains nothing)" and _number(rows["rae"][2]) == 36.5
    assert _number(rows["decoder_only"][1]) == pytest.approx(2.1e12, rel=FOUR_DIGITS)
    assert "](figs/cost_scaling.png)" in text
    assert sum(call[0] == "train_flops" for call in fit_calls) == 1        # the cost law, fitted once


def test_no_cost_section_without_train_flops(table, tmp_path):
    assert "## Against training cost" not in write_report(table, tmp_path / "r.md").read_text()
