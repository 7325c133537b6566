"""Figures: what plot_scaling draws equals the results object's predictions; files are column-sized."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import imread

from analysis import fit, load
from analysis.plots import COLUMN_WIDTH_IN, DPI, plot_scaling, scaling_figures
from helpers import real_or_stand_in, sweep_table


@pytest.fixture
def table():
    with pytest.warns(UserWarning, match="failed"):
        return load(sweep_table())


def test_plot_draws_one_fit_line_and_one_ci_band_from_the_results_object(table):
    res = fit(table)
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, res, table.controls, alpha=0.1)

    fit_lines = [ln for ln in ax.get_lines() if ln.get_gid() == "fit"]
    assert len(fit_lines) == 1
    grid, mean = fit_lines[0].get_xdata(), fit_lines[0].get_ydata()
    sf = res.get_prediction(grid).summary_frame(0.1)
    np.testing.assert_allclose(mean, sf["mean"].to_numpy())
    assert grid.min() == table.points["params"].min() and grid.max() == table.points["params"].max()

    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and bands[0].get_gid() == "ci"
    ys = np.concatenate([p.vertices[:, 1] for p in bands[0].get_paths()])
    for bound in ("mean_ci_lower", "mean_ci_upper"):
        gaps = np.abs(ys[:, None] - sf[bound].to_numpy()[None, :]).min(axis=0)
        assert gaps.max() < 1e-9, bound
    assert ys.min() == pytest.approx(sf["mean_ci_lower"].min())
    assert ys.max() == pytest.approx(sf["mean_ci_upper"].max())

    assert ax.get_xscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"b = {res.params['b']:.3g} per decade, R² = {res.rsquared:.2f}" in legend


def test_points_are_seed_means_with_std_error_bars(table):
    res = fit(table)
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, res)
    pts = [ln for ln in ax.get_lines() if ln.get_gid() == "points"]
    assert len(pts) == 1
    g = table.points.groupby("params")["rfid"]
    np.testing.assert_allclose(pts[0].get_xdata(), g.mean().index.to_numpy(dtype=float))
    np.testing.assert_allclose(pts[0].get_ydata(), g.mean().to_numpy())


def test_controls_are_drawn_but_never_fitted(table):
    res = fit(table)
    assert res.nobs == len(table.points) == (sweep_table()["kind"].eq("grid") &
                                             sweep_table()["status"].eq("completed")).sum()
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, res, table.controls)
    rae = [ln for ln in ax.get_lines() if ln.get_gid() == "control:rae"]
    assert len(rae) == 1
    np.testing.assert_allclose(rae[0].get_ydata(), [35.5, 35.5])
    assert rae[0].get_linestyle() == "--"
    dec = [ln for ln in ax.get_lines() if ln.get_gid() == "control:decoder_only"]
    assert len(dec) == 1 and dec[0].get_marker() != pts_marker(ax)
    np.testing.assert_allclose(dec[0].get_xydata(), [[400_000, 36.0]])
    assert len([ln for ln in ax.get_lines() if ln.get_gid() == "fit"]) == 1


def pts_marker(ax):
    return next(ln for ln in ax.get_lines() if ln.get_gid() == "points").get_marker()


def _check_files(paths, out_dir, n_panels):
    for p in paths:
        assert p.parent == out_dir and p.stat().st_size > 0
    for p in [p for p in paths if p.suffix == ".pdf"]:
        assert p.read_bytes()[:5] == b"%PDF-"
    for p in [p for p in paths if p.suffix == ".png"]:
        width = imread(p).shape[1]
        panels = n_panels if p.stem == "scaling_panels" else 1
        assert width == round(COLUMN_WIDTH_IN * panels * DPI), p.name
    assert not [f for f in out_dir.iterdir() if f.name.endswith(".tmp")]


def test_scaling_figures_writes_three_panels_and_the_combined_figure(table, tmp_path):
    out = tmp_path / "figs"
    paths = scaling_figures(table, out)
    assert sorted(p.name for p in paths) == sorted(f"{n}.{e}" for n in ("capacity_scaling", "layer_scaling",
                                                                         "unified_scaling", "scaling_panels")
                                                   for e in ("pdf", "png"))
    _check_files(paths, out, n_panels=3)


def test_real_table_controls_unfitted_and_layer_panel_skipped(tmp_path, caplog):
    src = real_or_stand_in(tmp_path)
    raw = pd.read_parquet(src)
    assert raw.loc[raw["kind"] == "grid", "fused_layers"].nunique() == 1
    t = load(tmp_path)
    assert fit(t).nobs == ((raw["kind"] == "grid") & (raw["status"] == "completed")).sum()
    with caplog.at_level(logging.INFO, logger="analysis.plots"):
        paths = scaling_figures(t, tmp_path / "figs")
    names = {p.stem for p in paths}
    assert "layer_scaling" not in names and {"capacity_scaling", "unified_scaling", "scaling_panels"} <= names
    assert any("layer_scaling skipped" in r.getMessage() for r in caplog.records)
    _check_files(paths, tmp_path / "figs", n_panels=2)


def _segments(ax, gid):
    """The (x, low, high) of each vertical bar of the collection with this gid."""
    cols = [c for c in ax.collections if c.get_gid() == gid]
    assert len(cols) == 1, gid
    return sorted((s[0, 0], s[:, 1].min(), s[:, 1].max()) for s in cols[0].get_segments())


def test_measurement_bars_are_two_se_of_each_points_mean():
    """Two seeds per capacity: the bar is mean ± 2 sqrt(se_1^2 + se_2^2) / 2; a single-seed point gets its own se."""
    pts = pd.DataFrame({"params": [1e4, 1e4, 1e5, 1e5, 1e6, 1e6, 1e7], "rfid": [9.0, 9.4, 7.1, 6.9, 5.2, 4.8, 3.0],
                        "rfid_se": [0.3, 0.4, 0.1, 0.1, 0.2, 0.6, 0.5]})
    res = fit(pts)
    ax = Figure().add_subplot()
    plot_scaling(ax, pts, res)
    half = [2 * math.hypot(0.3, 0.4) / 2, 2 * math.hypot(0.1, 0.1) / 2, 2 * math.hypot(0.2, 0.6) / 2, 2 * 0.5]
    means = [9.2, 7.0, 5.0, 3.0]
    want = [(c, m - h, m + h) for c, m, h in zip([1e4, 1e5, 1e6, 1e7], means, half)]
    np.testing.assert_allclose(_segments(ax, "measurement"), want, rtol=1e-12)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "± 2 se of mean (measurement)" in legend and "trials (mean ± std over seeds)" in legend


def test_no_se_column_draws_no_measurement_bars(table):
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, fit(table), table.controls)
    assert not [c for c in ax.collections if str(c.get_gid()).endswith("se") or c.get_gid() == "measurement"]
    assert not any("se" in t.get_text().split() for t in ax.get_legend().get_texts())


def test_controls_get_a_two_se_band_or_bar():
    df = sweep_table()
    df["rfid_se"] = 0.25
    df.loc[df.point_id == "decoder_only", "rfid_se"] = 0.4
    with pytest.warns(UserWarning, match="failed"):
        t = load(df)
    ax = Figure().add_subplot()
    plot_scaling(ax, t.points, fit(t), t.controls)
    band = [c for c in ax.patches if c.get_gid() == "control:rae:se"]
    assert len(band) == 1
    lo, hi = band[0].get_y(), band[0].get_y() + band[0].get_height()            # a Rectangle, y in data units
    np.testing.assert_allclose([lo, hi], [35.5 - 0.5, 35.5 + 0.5])
    np.testing.assert_allclose(_segments(ax, "control:decoder_only:se"), [(400_000, 36.0 - 0.8, 36.0 + 0.8)])
    assert "RAE baseline (band: ± 2 se)" in [tx.get_text() for tx in ax.get_legend().get_texts()]
