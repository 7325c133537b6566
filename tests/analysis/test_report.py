"""The Markdown report: table rows, the fitted slope, predictions, backtest, figure links; atomic."""

import os

import pandas as pd
import pytest

from analysis import fit, load
from analysis.report import write_report
from helpers import real_or_stand_in, sweep_table


@pytest.fixture
def table():
    with pytest.warns(UserWarning, match="failed"):
        return load(sweep_table(layers=(4,)))


def test_report_has_table_fit_predictions_backtest_and_dropped(table, tmp_path):
    out = write_report(table, tmp_path / "report.md", capacities=(1e9, 2.5e10), holdout=1)
    assert out == tmp_path / "report.md"
    text = out.read_text()
    res = fit(table)
    for tid in table.points["trial_id"]:
        assert f"| {tid} |" in text
    assert "| rae |" in text and "| decoder_only |" in text          # the controls, listed apart
    assert f"Slope b = {res.params['b']:.4g} rfid per decade" in text
    assert f"| b | {res.params['b']:.4g} |" in text
    assert f"R² = {res.rsquared:.4f}" in text
    assert "CI (bootstrap)" in text and "Lack of fit: F(" in text       # 2 seeds: replicates exist
    sf = res.get_prediction([1e9, 2.5e10]).summary_frame()
    assert f"| 1,000,000,000 | {sf['mean'].iloc[0]:.4g} |" in text
    assert f"| 25,000,000,000 | {sf['mean'].iloc[1]:.4g} |" in text
    assert "## Backtest" in text and "held-out runs inside their prediction interval" in text
    assert "- h2048-k4-s0-t0" in text                                  # the failed trial
    assert "## Figures" not in text                                    # none asked for
    assert sorted(os.listdir(tmp_path)) == ["report.md"]               # no temporary file left


def test_default_predictions_are_10x_and_100x_the_largest_capacity(table, tmp_path):
    text = write_report(table, tmp_path / "r.md").read_text()
    top = int(table.points["params"].max())
    assert f"| {10 * top:,} |" in text and f"| {100 * top:,} |" in text


def test_report_embeds_figures_with_relative_links(table, tmp_path):
    out = write_report(table, tmp_path / "sweep" / "report.md", figures_dir=tmp_path / "sweep" / "figures")
    text = out.read_text()
    for name in ("capacity_scaling", "unified_scaling"):
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
    text = write_report(load(df), tmp_path / "r.md").read_text()
    assert "No fit: column 'params' has 2 distinct capacities" in text


def test_report_on_the_real_results_table_or_a_stand_in(tmp_path):
    raw = pd.read_parquet(real_or_stand_in(tmp_path))
    t = load(tmp_path)
    text = write_report(t, tmp_path / "report.md", holdout=2).read_text()
    for tid in raw["trial_id"]:
        assert f"| {tid} |" in text
    assert f"| b | {fit(t).params['b']:.4g} |" in text
    assert "largest 2 capacities held out" in text


def test_report_has_a_measurement_error_section_only_with_se(table, tmp_path):
    assert "Measurement error" not in write_report(table, tmp_path / "a.md").read_text()
    pts = table.points.assign(rfid_se=0.05)
    se_table = load(pd.concat([pts, table.controls.assign(rfid_se=0.05)], ignore_index=True))
    text = write_report(se_table, tmp_path / "b.md").read_text()
    me = fit(se_table).measurement_error()
    assert "### Measurement error" in text and "| trial_id | point_id | params | rfid | rfid_se |" in text
    assert f"a ratio of {me.variance_ratio:.3g}" in text
    assert f"chi2({me.dof}) = {me.chi2:.4g}" in text and f"p = {me.pvalue:.4g}" in text
    assert f"chi2({me.between_seeds.dof}) = {me.between_seeds.chi2:.4g}" in text
