"""The hyperparameter law's figure (drawn from the results object, never refitted: every search trial, each
point's optimum with its bar, the law and its CI band), the file scaling_figures writes where the table was
searched (and a log line, not a failure, where its law cannot be fitted), and the report's section."""

import logging
import math
import warnings

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from test_hparams import searched_table

from analysis import load, plots
from analysis.hparams import fit_hparam_law, law_from_table
from analysis.plots import hparam_figure, plot_hparam_law, scaling_figures
from analysis.report import write_report


def with_rfid(df):
    """A searched sweep's table with the rFID of every trial (the best one's is the point's)."""
    return df.assign(rfid=41.6 - 1.6 * np.log10(df["params"]) + 100 * (df["val_l1"] - 0.1))


def quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def test_the_figure_draws_the_trials_the_optima_and_the_law_from_the_results_object():
    df = searched_table(seed=31)
    last = df["point_id"] == "h512-k6"
    df = df[~last | df["trial_id"].isin(["h512-k6-s0-t0", "h512-k6-s0-t1", "h512-k6-s0-t2"])]  # a best point
    law = quiet(lambda: fit_hparam_law(df))
    ax = Figure().add_subplot()
    plot_hparam_law(ax, law, alpha=0.1)
    (trials,) = [c for c in ax.collections if c.get_gid() == "trials"]
    assert np.allclose(trials.get_offsets(), law.trials[["capacity", "value"]].to_numpy())
    vertex = law.points[law.points["method"] == "vertex"]
    (opt,) = [ln for ln in ax.get_lines() if ln.get_gid() == "optima:vertex"]
    assert np.allclose(opt.get_ydata(), vertex["optimum"])
    (bars,) = [c for c in ax.collections if c.get_gid() == "bars:vertex"]
    lows = np.array([seg[:, 1].min() for seg in bars.get_segments()])
    assert np.allclose(np.log10(lows), np.log10(vertex["optimum"]) - 2 * vertex["optimum_se_log10"])
    (best,) = [ln for ln in ax.get_lines() if ln.get_gid() == "optima:best"]
    assert best.get_markerfacecolor() == "none" and list(best.get_xdata()) == [law.points["capacity"].iloc[-1]]
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "fit"]
    assert np.allclose(line.get_ydata(), law.predict(line.get_xdata()))
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == "ci"]
    top = band.get_paths()[0].vertices[:, 1].max()
    grid = np.geomspace(law.points["capacity"].min(), law.points["capacity"].max(), 200)
    assert math.isclose(top, law.get_prediction(grid).summary_frame(0.1)["mean_ci_upper"].max(), rel_tol=1e-9)
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_two_points_draw_the_line_without_a_band():
    law = quiet(lambda: fit_hparam_law(searched_table(seed=32, widths=(8, 512))))
    fig = hparam_figure(law)
    assert not [c for c in fig.axes[0].collections if c.get_gid() == "ci"]
    assert law.equation in fig.get_suptitle()


def test_scaling_figures_write_the_hparam_law_of_a_searched_table_and_skip_a_broken_one(tmp_path, caplog):
    df = with_rfid(searched_table(seed=33, widths=(2, 32, 512), seeds=1, trials=5))
    table = quiet(lambda: load(df))
    assert len(table.trials) == len(df) and len(table.points) == 3      # the law: every trial; the panels: the best
    paths = scaling_figures(table, tmp_path / "ok")
    assert {p.name for p in paths} >= {"hparam_scaling.pdf", "hparam_scaling.png", "unified_scaling.png"}
    # A law that cannot be fitted is a log line and no figure (scaling_figures draws the others regardless).
    broken = quiet(lambda: load(df.assign(**{"hp.lr": df["hp.lr"].where(df.index != 3, 0.0)})))
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        assert plots._hparam_law(broken, 0.05) is None
    assert "no hyperparameter figure:" in caplog.text and "column 'hp.lr' holds 0" in caplog.text


def test_no_searched_points_no_figure_and_no_report_section(tmp_path):
    df = with_rfid(searched_table(seed=34)).drop(columns="hp.lr")
    table = quiet(lambda: load(df))
    assert law_from_table(table) is None
    text = quiet(lambda: write_report(table, tmp_path / "r.md")).read_text()
    assert "Hyperparameter law" not in text


def test_the_report_section_has_the_law_and_each_point_or_says_why_not(tmp_path):
    df = with_rfid(searched_table(seed=35))
    table = quiet(lambda: load(df))
    law = law_from_table(table)
    text = quiet(lambda: write_report(table, tmp_path / "r.md")).read_text()
    section = text.split("## Hyperparameter law", 1)[1].split("\n## ", 1)[0]
    assert law.equation in section and f"{law.params['b']:.4g}" in section
    lo, hi = law.conf_int().loc["b"]
    assert f"[{lo:.4g}, {hi:.4g}]" in section
    assert all(f"| {r.point_id} |" in section for r in law.points.itertuples())
    assert f"{len(law.trials)} completed search trials" in section
    broken = quiet(lambda: load(df.assign(**{"hp.lr": df["hp.lr"].where(df.index != 3, -1.0)})))
    text = quiet(lambda: write_report(broken, tmp_path / "b.md")).read_text()
    assert "## Hyperparameter law\n\nNot fitted: the table: column 'hp.lr' holds -1" in text


@pytest.mark.parametrize("where, n", [("seed=0", 5), ("expert_hidden=2,seed=1", 0)])
def test_the_table_s_trials_are_the_rows_its_where_selects(where, n):
    df = with_rfid(searched_table(seed=36))
    table = quiet(lambda: load(df, where=where))
    assert set(table.trials["seed"]) == {int(where.split("seed=")[1])}
    assert law_from_table(table) is None if n < 2 else law_from_table(table).nobs == n
