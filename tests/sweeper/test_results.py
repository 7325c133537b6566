"""The results table's end-of-sweep summary: each point's rFID with its interval, and what did not complete."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import fit, load
from analysis.points import point_intervals
from sweeper.results import ResultsTable, summary


def sweep_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for h, seeds in ((2, [0]), (16, [0, 1, 2]), (128, [0]), (1024, [0])):
        for s in seeds:
            rows.append({"trial_id": f"h{h}-k6-s{s}-t0", "point_id": f"h{h}-k6", "kind": "grid", "status": "completed",
                         "params": 1000 * h + 114, "rfid": 200 - 10 * np.log10(h) + rng.normal(), "val_l1": 0.1,
                         "best": True, "seed": s})
    rows.append({"trial_id": "rae-s0-t0", "point_id": "rae", "kind": "control", "status": "completed", "params": 0,
                 "rfid": 150.0, "val_l1": 0.2, "best": True, "seed": 0})
    rows.append({"trial_id": "h4-k6-s0-t0", "point_id": "h4-k6", "kind": "grid", "status": "failed", "params": 4114,
                 "best": False, "seed": 0, "error": "RuntimeError: loss is nan at step 0"})
    return pd.DataFrame(rows)


def test_summary_gives_each_point_its_rfid_and_says_what_its_interval_is(tmp_path):
    table = ResultsTable(tmp_path)
    for row in sweep_table().to_dict("records"):
        table.rows[row["trial_id"]] = row
    df = table.frame()
    text = summary(df)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    with pytest.warns(UserWarning, match="dropped 1 failed trial"):
        points = load(df)
    expected = point_intervals(points, fit(points)).set_index("point_id")
    for point, source in (("h2-k6", "the log-linear law's CI of the mean at its params"),
                          ("h16-k6", "the t-interval of the mean of its 3 seeds"),
                          ("h1024-k6", "the log-linear law's CI of the mean at its params")):
        row = expected.loc[point]
        assert f"{row['mean']:.4g}" in lines[point] and lines[point].endswith(source), lines[point]
        assert f"[{row['lower']:.4g}, {row['upper']:.4g}]" in lines[point]
    assert lines["rae"].endswith("none: a control, never fitted") and "[" not in lines["rae"]
    assert "h4-k6-s0-t0  failed  RuntimeError: loss is nan at step 0" in lines["h4-k6-s0-t0"]
    assert text.index("h2-k6") < text.index("h16-k6") < text.index("h128-k6")  # smallest capacity first


def test_summary_without_a_law_still_lists_each_point():
    df = sweep_table()
    df = df[df.point_id.isin(["h2-k6", "rae"])]
    (line,) = [ln for ln in summary(df).splitlines() if ln.startswith("h2-k6")]
    assert line.endswith("none: one seed, and no law fitted") and "[" not in line
    assert not math.isnan(float(line.split()[4]))  # its rFID


def test_the_splits_travel_in_the_tables_metadata_and_survive_a_rewrite(tmp_path):
    from sweeper.results import read_metadata

    splits = {"select_from": "val", "selection_images": 700, "evaluation_images": 300, "rule": "..."}
    table = ResultsTable(tmp_path, {"splits": splits})
    table.upsert(sweep_table().to_dict("records")[0])
    assert read_metadata(tmp_path / "trials.parquet") == {"splits": splits}
    again = ResultsTable(tmp_path)  # a later writer that was not told: keeps what the file holds
    again.upsert(sweep_table().to_dict("records")[1])
    assert read_metadata(tmp_path / "trials.parquet") == {"splits": splits}
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 2


def test_summary_gives_each_points_measurement_error_of_its_mean(tmp_path):
    df = sweep_table()
    df["rfid_se"] = np.arange(len(df)) * 0.1 + 0.3
    table = ResultsTable(tmp_path)
    for row in df.to_dict("records"):
        table.rows[row["trial_id"]] = row
    lines = {line.split()[0]: line.split() for line in summary(table.frame()).splitlines() if line.strip()}
    assert lines["point"][5:8] == ["rFID", "rFID", "se"]
    col = 5  # point, params, seeds, val L1, rFID, rFID se: one word per cell in a row
    se16 = df.loc[df.point_id == "h16-k6", "rfid_se"].to_numpy()
    assert float(lines["h16-k6"][col]) == pytest.approx(np.sqrt(np.sum(se16 ** 2)) / 3, rel=1e-3)
    assert float(lines["h2-k6"][col]) == pytest.approx(df.loc[df.point_id == "h2-k6", "rfid_se"].iloc[0], rel=1e-3)
    assert float(lines["rae"][col]) == pytest.approx(df.loc[df.point_id == "rae", "rfid_se"].iloc[0], rel=1e-3)
