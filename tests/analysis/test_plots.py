"""Figures: what plot_scaling draws equals the results object's predictions; controls alike in every panel;
error bars say what they are; one legend for the combined figure; plots never refit; files are column-sized."""

import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import imread

from analysis import fit, load, rollout
from analysis.panels import fit_panels
from analysis.plots import (
    COLUMN_WIDTH_IN,
    DPI,
    combined_figure,
    panel_figure,
    plot_rollout,
    plot_scaling,
    rollout_figure,
    scaling_figures,
)
from helpers import cost_table, real_or_stand_in, sweep_table


@pytest.fixture
def table():
    with pytest.warns(UserWarning, match="failed"):
        return load(sweep_table())


def _with_last_layer(df: pd.DataFrame) -> pd.DataFrame:
    """A third control, drawn on both the capacity (params) and the layer (fused_layers = 1) panels."""
    row = df[df.point_id == "decoder_only"].iloc[0].to_dict()
    row.update(trial_id="last_layer-s0-t0", point_id="last_layer", params=500_000, fused_layers=1, rfid=34.0)
    return pd.concat([df, pd.DataFrame([row])], ignore_index=True)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _lstsq_b_r2(points):
    """The log-linear law's slope b and R² of the table's points, by numpy least squares."""
    C, y = points["params"].to_numpy(float), points["rfid"].to_numpy(float)
    X = np.column_stack([np.ones_like(C), np.log10(C)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    return coef[1], 1 - (r @ r) / ((y - y.mean()) ** 2).sum()


def _read_b_r2(texts, unit):
    """b and R² read back from the legend entry 'b = ... <unit>, R² = ...' (3 significant digits, 2 decimals)."""
    (m,) = [m for m in (re.fullmatch(rf"b = (\S+) {unit}, R² = (\S+)", t) for t in texts) if m]
    return float(m.group(1)), float(m.group(2))


def _band(ax, gid):
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == gid]
    return band, np.concatenate([p.vertices[:, 1] for p in band.get_paths()])


def test_plot_draws_the_fit_line_its_ci_band_and_a_lighter_pi_band_from_the_results_object(table):
    res = fit(table)
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, res, table.controls, alpha=0.1)

    fit_lines = [ln for ln in ax.get_lines() if ln.get_gid() == "fit"]
    assert len(fit_lines) == 1
    grid, mean = fit_lines[0].get_xdata(), fit_lines[0].get_ydata()
    sf = res.get_prediction(grid).summary_frame(0.1)
    np.testing.assert_allclose(mean, sf["mean"].to_numpy())
    assert grid.min() == table.points["params"].min() and grid.max() == table.points["params"].max()

    assert sorted(c.get_gid() for c in ax.collections if isinstance(c, PolyCollection)) == ["ci", "pi"]
    for gid, (low, high) in (("ci", ("mean_ci_lower", "mean_ci_upper")), ("pi", ("obs_ci_lower", "obs_ci_upper"))):
        _, ys = _band(ax, gid)
        for bound in (low, high):
            gaps = np.abs(ys[:, None] - sf[bound].to_numpy()[None, :]).min(axis=0)
            assert gaps.max() < 1e-9, bound
        assert ys.min() == pytest.approx(sf[low].min()) and ys.max() == pytest.approx(sf[high].max())
    ci, pi = _band(ax, "ci")[0], _band(ax, "pi")[0]
    assert pi.get_alpha() < ci.get_alpha()                                  # the PI band is the lighter one
    assert (sf["obs_ci_lower"] < sf["mean_ci_lower"]).all() and (sf["obs_ci_upper"] > sf["mean_ci_upper"]).all()

    assert ax.get_xscale() == "log"
    legend = _legend(ax)
    b, r2 = _lstsq_b_r2(table.points)
    got_b, got_r2 = _read_b_r2(legend, "per decade")
    assert got_b == pytest.approx(b, rel=5e-3) and got_r2 == pytest.approx(r2, abs=5e-3)
    assert "90% CI (mean)" in legend and "90% PI (new run)" in legend


def test_points_are_seed_means_with_std_bars_without_a_measurement_error(table):
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, fit(table))
    pts = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("points:")]
    assert [ln.get_gid() for ln in pts] == ["points:seeds"]                 # 2 seeds everywhere, no se column
    C, y = table.points["params"].to_numpy(float), table.points["rfid"].to_numpy(float)
    caps = np.unique(C)
    means = np.array([y[C == c].mean() for c in caps])
    sds = np.array([np.sqrt(((y[C == c] - y[C == c].mean()) ** 2).sum() / (len(y[C == c]) - 1)) for c in caps])
    np.testing.assert_allclose(pts[0].get_xdata(), caps)
    np.testing.assert_allclose(pts[0].get_ydata(), means)
    np.testing.assert_allclose(_segments(ax, "bars:seeds"), list(zip(caps, means - sds, means + sds)), rtol=1e-12)
    assert "mean ± std over seeds" in _legend(ax)
    assert not [c for c in ax.collections if c.get_gid() == "bars:measurement"]


def _segments(ax, gid):
    """The (x, low, high) of each vertical bar of the collection with this gid."""
    cols = [c for c in ax.collections if c.get_gid() == gid]
    assert len(cols) == 1, gid
    return sorted((s[0, 0], s[:, 1].min(), s[:, 1].max()) for s in cols[0].get_segments())


def test_error_bars_are_the_measurement_se_where_the_table_has_it_else_the_seed_spread():
    """±2 se of each point's mean, se = sqrt(se_1^2 + se_2^2) / 2; a single-seed point gets its own se; the
    point whose seeds lack an se gets ± the std over its seeds; the legend says which is which."""
    pts = pd.DataFrame({"params": [1e4, 1e4, 1e5, 1e5, 1e6, 1e6, 1e7, 1e8, 1e8],
                        "rfid": [9.0, 9.4, 7.1, 6.9, 5.2, 4.8, 3.0, 1.2, 0.6],
                        "rfid_se": [0.3, 0.4, 0.1, 0.1, 0.2, 0.6, 0.5, np.nan, 0.2]})
    ax = Figure().add_subplot()
    plot_scaling(ax, pts, fit(pts))
    half = [2 * math.hypot(0.3, 0.4) / 2, 2 * math.hypot(0.1, 0.1) / 2, 2 * math.hypot(0.2, 0.6) / 2, 2 * 0.5]
    means = [9.2, 7.0, 5.0, 3.0]
    want = [(c, m - h, m + h) for c, m, h in zip([1e4, 1e5, 1e6, 1e7], means, half)]
    np.testing.assert_allclose(_segments(ax, "bars:measurement"), want, rtol=1e-12)
    sd = abs(1.2 - 0.6) / math.sqrt(2)
    np.testing.assert_allclose(_segments(ax, "bars:seeds"), [(1e8, 0.9 - sd, 0.9 + sd)], rtol=1e-12)
    legend = _legend(ax)
    assert "mean ± 2 se (measurement)" in legend and "mean ± std over seeds" in legend


def test_one_seed_without_se_draws_no_bar_and_says_so():
    pts = pd.DataFrame({"params": [1e4, 1e5, 1e6, 1e7], "rfid": [9.0, 7.1, 5.2, 3.0]})
    ax = Figure().add_subplot()
    plot_scaling(ax, pts, fit(pts))
    assert [ln.get_gid() for ln in ax.get_lines() if str(ln.get_gid()).startswith("points:")] == ["points:none"]
    assert not [c for c in ax.collections if str(c.get_gid()).startswith("bars:")]
    assert "runs" in _legend(ax)


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
    assert len(dec) == 1 and dec[0].get_marker() != "o"
    np.testing.assert_allclose(dec[0].get_xydata(), [[400_000, 36.0]])
    assert len([ln for ln in ax.get_lines() if ln.get_gid() == "fit"]) == 1


def test_each_control_has_the_same_marker_and_colour_in_every_panel_and_a_tick_at_its_x():
    """decoder_only has no positive fused_layers, so the layer panel cannot draw it; last_layer must keep
    its style there all the same (it used to take the first free colour of each panel)."""
    with pytest.warns(UserWarning, match="failed"):
        t = load(_with_last_layer(sweep_table()))
    panels = fit_panels(t)
    assert [p.name for p in panels.panels] == ["capacity_scaling", "layer_scaling", "unified_scaling"]
    fig = combined_figure(panels.panels, t.controls, t.y)
    styles = {}
    for ax, p in zip(fig.axes, panels.panels):
        for ln in ax.get_lines():
            gid = str(ln.get_gid())
            if gid.startswith("control:") and gid != "control:rae":
                styles.setdefault(gid, set()).add((ln.get_marker(), to_rgba(ln.get_color())))
                (top,) = [a for a in ax.child_axes if a.get_gid() == "control_ticks"]
                x = ln.get_xdata()[0]
                assert np.isclose(top.get_xticks(), x).any(), (p.name, gid, x)
                (label,) = [t for t, tx in zip(top.get_xticklabels(), top.get_xticks()) if np.isclose(tx, x)]
                assert to_rgba(label.get_color()) == to_rgba(ln.get_color())
    assert set(styles) == {"control:decoder_only", "control:last_layer"}
    assert all(len(s) == 1 for s in styles.values()), styles            # one style per control, every panel
    assert styles["control:decoder_only"] != styles["control:last_layer"]
    layer_ax = fig.axes[1]
    assert not [ln for ln in layer_ax.get_lines() if ln.get_gid() == "control:decoder_only"]
    assert [ln for ln in layer_ax.get_lines() if ln.get_gid() == "control:last_layer"]


def test_the_combined_figure_has_one_legend_and_each_panels_law_in_its_title(table):
    panels = fit_panels(table)
    fig = combined_figure(panels.panels, table.controls, table.y)
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(set(labels))
    assert {"fitted law", "95% CI (mean)", "95% PI (new run)", "mean ± std over seeds",
            "decoder only"} <= set(labels)
    for ax, p in zip(fig.axes, panels.panels):
        got = float(re.search(r"b = (\S+) per decade", ax.get_title()).group(1))
        assert got == pytest.approx(p.result.params["b"], rel=5e-3)


def test_per_decade_only_on_a_log_axis(table):
    res = fit(table)
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, res, xscale="linear")
    assert ax.get_xscale() == "linear"
    texts = _legend(ax)
    assert not any("per decade" in t for t in texts)
    b, r2 = _lstsq_b_r2(table.points)
    got_b, got_r2 = _read_b_r2(texts, "per unit of log10 C")
    assert got_b == pytest.approx(b, rel=5e-3) and got_r2 == pytest.approx(r2, abs=5e-3)
    lin = fit(table, form="linear")
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, lin)
    assert not any("per decade" in t for t in _legend(ax))


def test_an_unidentified_fit_draws_no_bands_and_says_so(table):
    law = fit(table)

    class Unidentified:                       # what a fit that cannot pin its parameters down reports
        identified = False

        def __getattr__(self, name):
            return getattr(law, name)

    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, Unidentified())
    assert not [c for c in ax.collections if c.get_gid() in ("ci", "pi")]
    assert any(t.endswith("(not identified)") for t in _legend(ax))


def test_plots_draw_what_they_are_given_and_never_fit(table, fit_calls, tmp_path):
    panels = fit_panels(table)
    ro = rollout(table)
    made = len(fit_calls)
    assert made == 3 + len(ro.splits)                        # three panels' laws, one per rollout split
    ax = Figure().add_subplot()
    plot_scaling(ax, table.points, panels.law, table.controls)
    panel_figure(panels.panels[0], table.controls, table.y)
    combined_figure(panels.panels, table.controls, table.y)
    rollout_figure(ro)
    paths = scaling_figures(table, tmp_path / "figs", panels=panels, rollout=ro)
    assert len(fit_calls) == made                                      # not one fit while drawing
    assert {p.stem for p in paths} == {"capacity_scaling", "layer_scaling", "unified_scaling", "scaling_panels",
                                       "rollout_error"}


def test_the_rollout_figure_draws_each_splits_error_and_pi_against_its_reach():
    rng = np.random.default_rng(3)
    C = np.repeat(np.geomspace(1e4, 1e8, 6), 2)
    ro = rollout(pd.DataFrame({"params": C, "rfid": 30 - 2 * np.log10(C) + rng.normal(0, 0.2, C.size)}))
    ax = Figure().add_subplot()
    plot_rollout(ax, ro)
    for split in ro.splits:
        (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == f"rollout:{split.k}"]
        r = split.rows
        np.testing.assert_allclose(line.get_xdata(), np.log10(r["capacity"] / split.fitted_max), rtol=1e-12)
        np.testing.assert_allclose(line.get_ydata(), r["mean"] - r["truth"], rtol=1e-12)
    (zero,) = [ln for ln in ax.get_lines() if ln.get_gid() == "zero"]
    np.testing.assert_allclose(zero.get_ydata(), [0, 0])
    assert ax.get_legend() is not None and len(_legend(ax)) == len(ro.splits)


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
    has_cost = "train_flops" in raw.columns and raw["train_flops"].notna().any()   # a sweep since costs were kept
    assert ("cost_scaling" in names) == has_cost
    _check_files(paths, tmp_path / "figs", n_panels=3 if has_cost else 2)


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
    legend = _legend(ax)
    assert "RAE baseline (band: ± 2 se)" in legend and "decoder only (± 2 se)" in legend


# --- the cost panel --------------------------------------------------------------------------


def test_the_cost_panel_draws_every_grid_run_at_its_flops_and_the_rae_as_a_labelled_line(tmp_path):
    t = load(cost_table())
    panels = fit_panels(t)
    assert [p.name for p in panels.panels] == ["capacity_scaling", "unified_scaling", "cost_scaling"]
    cost = panels.panels[-1]
    assert cost.x == "train_flops" and cost.result.nobs == len(t.points)
    b, a = np.polyfit(np.log10(t.points["train_flops"]), t.points["rfid"], 1)   # the law over the cost
    assert cost.result.params["b"] == pytest.approx(b, rel=1e-9)
    paths = scaling_figures(t, tmp_path / "figs", panels=panels)
    assert {"cost_scaling.pdf", "cost_scaling.png"} <= {p.name for p in paths}
    _check_files(paths, tmp_path / "figs", n_panels=3)
    fig = panel_figure(cost, t.controls, t.y)
    ax = fig.axes[0]
    (rae,) = [ln for ln in ax.get_lines() if ln.get_gid() == "control:rae"]
    np.testing.assert_allclose(rae.get_ydata(), [36.5, 36.5])                  # the RAE: trains nothing, a line
    (label,) = [c for c in ax.texts if c.get_gid() == "control:rae:free"]
    assert "no training cost" in label.get_text()
    for name, flops in (("decoder_only", 2.1e12), ("last_layer", 1.8e12)):      # the others at their cost
        (pt,) = [ln for ln in ax.get_lines() if ln.get_gid() == f"control:{name}"]
        assert pt.get_xdata()[0] == pytest.approx(flops)
    # the points: each capacity's mean at its mean flops
    pts = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("points:")]
    xs = np.sort(np.concatenate([ln.get_xdata() for ln in pts]))
    np.testing.assert_allclose(xs, np.sort(t.points["train_flops"].unique()))
    # the combined figure holds the cost panel too, with the others unchanged
    combined = combined_figure(panels.panels, t.controls, t.y)
    assert len(combined.axes) == 3 and combined.axes[2].get_xlabel() == "training FLOPs"
    assert [ax.get_xlabel() for ax in combined.axes[:2]] == ["trainable parameters"] * 2


def test_a_control_without_training_cost_is_a_line_on_the_cost_panel_never_dropped():
    df = cost_table()
    df.loc[df.point_id == "last_layer", "train_flops"] = 0.0                 # a control that trained nothing
    t = load(df)
    cost = fit_panels(t).panels[-1]
    ax = panel_figure(cost, t.controls, t.y).axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "control:last_layer"]
    np.testing.assert_allclose(line.get_ydata(), [35.2, 35.2])
    assert line.get_linestyle() == ":" and "no training cost" in line.get_label()
    assert [c for c in ax.texts if c.get_gid() == "control:last_layer:free"]
    # on the params panel it stays a point at its params
    ax = panel_figure(fit_panels(t).panels[0], t.controls, t.y).axes[0]
    (pt,) = [ln for ln in ax.get_lines() if ln.get_gid() == "control:last_layer"]
    assert pt.get_xdata()[0] == pytest.approx(20_000)


def test_no_cost_panel_without_train_flops_one_logged_line(table, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="analysis.plots"):
        paths = scaling_figures(table, tmp_path / "figs")
    assert "cost_scaling" not in {p.stem for p in paths}
    lines = [r.getMessage() for r in caplog.records if "cost_scaling" in r.getMessage()]
    assert lines == ["figure cost_scaling skipped: the table has no train_flops (a sweep written before training "
                     "costs were recorded)"]
