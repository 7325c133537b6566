"""The results table: one row per trial in ``results/<sweep>/trials.parquet`` (and ``.csv``).

Its columns are ``analysis.schema``'s, the reader's too. The driver writes it (``SweepTracker``, then
``run_sweep``) as trials start and end, each write an atomic replace, never waiting for MLflow.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.schema import COLUMNS, HP_PREFIX, NUMERIC, SORT_BY
from drorae_io import atomic_path


class ResultsTable:
    """One row per trial, keyed by trial_id; every write replaces the files atomically."""

    def __init__(self, sweep_dir: Path):
        self.dir = Path(sweep_dir)
        self.path = self.dir / "trials.parquet"
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for row in pd.read_parquet(self.path).to_dict("records"):
                self.rows[row["trial_id"]] = row

    def upsert(self, row: dict) -> None:
        self.rows[row["trial_id"]] = {**self.rows.get(row["trial_id"], {}), **row}
        self.write()

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(list(self.rows.values()))
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = None
        extra = sorted(c for c in df.columns if c not in COLUMNS)
        df = df[[*COLUMNS, *extra]]
        for col in NUMERIC:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return df.sort_values(list(SORT_BY), na_position="last", ignore_index=True)

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        with atomic_path(self.dir / "trials.parquet") as tmp:
            df.to_parquet(tmp, index=False)
        with atomic_path(self.dir / "trials.csv") as tmp:
            df.to_csv(tmp, index=False)


def row_from(config: dict, result: dict | None, status: str, error: str | None = None) -> dict:
    """A trial's row from its config and its last Tune result (None: it has reported nothing)."""
    result = result or {}
    row = {k: config.get(k) for k in ("trial_id", "unit_id", "point_id", "kind", "expert_hidden",
                                      "fused_layers", "seed", "params")}
    row.update(status=status, error=error, node_id=result.get("node_id"),
               best=config.get("n_trials", 1) == 1 and status == "completed")
    for key in NUMERIC:
        value = result.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) else math.nan
    for k, v in config.get("hp", {}).items():
        row[f"{HP_PREFIX}{k}"] = v
    return row


def error_line(trial) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text()
    text = text or str(getattr(trial, "error_msg", "") or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:500]
    return lines[-1][:500] if lines else "unknown error"


def summary(df: pd.DataFrame) -> str:
    """The final table a user sees: each point's result row and every trial that did not complete."""
    cols = ["trial_id", "status", "params", "val_l1", "rfid", "psnr", "train_seconds", "error"]
    view = df[df.best.fillna(False).astype(bool) | (df.status != "completed")][cols].copy()
    view["error"] = view["error"].fillna("").astype(str).str.slice(0, 60)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        return view.to_string(index=False)
