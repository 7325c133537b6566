"""The rows a scaling law is fitted to, from a results directory, a table file or MLflow.

A sweep's table (``results/<sweep>/trials.parquet``, written by ``sweeper.results``; its columns
and the MLflow names are ``analysis.schema``) has one row per trial. The rows fitted are the grid's
completed trials, and where a ``best`` column exists only the best trial of each point (a searched
point has several trials; only the best was evaluated). Control runs (``kind == 'control'``, e.g.
the RAE baseline) are returned apart: never fitted. Any other table with a capacity and a metric
column works too (published points): without ``kind`` / ``status`` / ``best`` columns every row is
a point.

A metric's measurement error (``<metric>_se``, e.g. ``rfid_se``) and the training cost
(``train_steps``, ``train_flops``) are read as numbers wherever the source has them: table columns,
or the metrics of a trial's MLflow run. Older sweeps lack them; their rows then carry no such column
(or NaN) and nothing about measurement error is claimed.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import schema
from analysis.errors import AnalysisError


@dataclass
class Table:
    """The rows to fit (``points``), the control runs (never fitted), and the trial ids dropped."""

    points: pd.DataFrame
    controls: pd.DataFrame
    dropped: list = field(default_factory=list)
    x: str = "params"
    y: str = "rfid"
    source: str | None = None  # the file (or mlflow:EXPERIMENT) the rows came from; None: a DataFrame


def load(source, x: str = "params", y: str = "rfid", where=None) -> Table:
    """Read ``source`` (results dir, ``.parquet`` / ``.csv`` file, ``mlflow:EXPERIMENT`` or a DataFrame).

    ``where``: ``"col=value"`` (several joined by ``,``, or a list) selects the fitted rows.
    Failed trials and rows whose x or y is NaN/inf are dropped with a warning that lists them.
    """
    df = _read(source)
    if df.empty and len(df.columns):
        raise AnalysisError(f"{_name(source)}: no rows, only the columns {', '.join(map(str, df.columns))}; "
                            "expected one row per trial")
    table = select(df, x=x, y=y, where=where, source=_name(source))
    table.source = None if isinstance(source, pd.DataFrame) else str(source)
    return table


def _name(source) -> str:
    return "the table" if isinstance(source, pd.DataFrame) else str(source)


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, str) and source.startswith("mlflow:"):
        return _read_mlflow(source[len("mlflow:"):])
    path = Path(source)
    if path.is_dir():
        for name in ("trials.parquet", "trials.csv"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise AnalysisError(f"{source}: no trials.parquet or trials.csv in this results directory")
    if not path.exists():
        raise AnalysisError(f"{source}: no such file or directory (expected a results directory, "
                            "a .parquet or .csv table, or mlflow:EXPERIMENT)")
    if path.suffix in (".parquet", ".csv") and path.is_file() and path.stat().st_size == 0:
        raise AnalysisError(f"{path}: the file is empty; expected a {path.suffix[1:]} table with a header "
                            "row and one row per trial")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # a corrupt or truncated file: name it, one line
        raise AnalysisError(f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}: {exc})") from None
    raise AnalysisError(f"{source}: unknown table format {path.suffix!r} (expected .parquet or .csv)")


def _read_mlflow(experiment: str) -> pd.DataFrame:
    """The nested trial runs of an MLflow experiment as table rows (params, then metrics, as columns).

    The store is MLFLOW_TRACKING_URI, else the sweep's default ``results/mlflow.db`` when it exists.
    A run's ``best`` is its ``best`` tag (a searched point's evaluated trial) or ``n_trials`` <= 1.
    """
    from mlflow.tracking import MlflowClient  # lazily: the analysis needs MLflow only for this source

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and Path("results/mlflow.db").is_file():
        uri = f"sqlite:///{Path('results/mlflow.db').resolve()}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"mlflow:{experiment}: no such experiment in {uri or 'the default MLflow store'}")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if schema.PARENT_RUN_TAG not in tags:
                continue                                   # the sweep's parent run
            row = {**run.data.params, **run.data.metrics}  # metrics win (params is logged as both)
            row.update({k: tags[k] for k in schema.TRIAL_TAGS if k in tags})
            row["status"] = schema.TABLE_STATUS.get(run.info.status, "running")
            if "n_trials" in row or schema.BEST_TAG in tags:
                row["best"] = (tags.get(schema.BEST_TAG) == "true"
                               or str(row.get("n_trials", "")).strip() in ("0", "1"))
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        raise AnalysisError(f"mlflow:{experiment}: no nested trial runs in this experiment")
    return pd.DataFrame(rows)


def _parse_where(where) -> list[tuple[str, str]]:
    if where is None:
        return []
    items = [where] if isinstance(where, str) else list(where)
    conds = []
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise AnalysisError(f"where {part.strip()!r}: expected COLUMN=VALUE, e.g. fused_layers=12")
            col, value = part.split("=", 1)
            conds.append((col.strip(), value.strip()))
    return conds


def _numeric(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    """The column as float; AnalysisError naming it, and its first text cell, when it holds text."""
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or not (pd.api.types.is_numeric_dtype(s)):
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna().to_numpy() & s.notna().to_numpy()
        bad &= ~s.astype(str).str.strip().str.lower().isin(["", "nan", "inf", "-inf", "none"]).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])  # the row's position as read (the header not counted)
            trial = f" (trial {df['trial_id'].iloc[first]})" if "trial_id" in df.columns else ""
            more = f", and {bad.sum() - 1} more row(s)" if bad.sum() > 1 else ""
            raise AnalysisError(f"{source}: column {col!r} must be numeric but holds text: {s.iloc[first]!r} in "
                                f"row {first + 1}{trial}{more}")
        s = num
    return s.astype(float)


def _truthy(v) -> bool:
    """A ``best`` cell: True, 1, "true" (a CSV or MLflow tag) are true; NaN, None, "False" are not."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def _ids(rows: pd.DataFrame) -> list:
    return list(rows["trial_id"]) if "trial_id" in rows.columns else [f"row {i}" for i in rows.index]


def select(df: pd.DataFrame, x: str = "params", y: str = "rfid", where=None, source: str = "the table") -> Table:
    """Split a results table into the rows to fit and the controls (see ``load``)."""
    for col, role in ((x, "capacity"), (y, "metric")):
        if col not in df.columns:
            raise AnalysisError(f"{source}: no column {col!r} for the {role} "
                                f"(columns: {', '.join(map(str, df.columns))})")
    df = df.copy()
    df[x], df[y] = _numeric(df, x, source), _numeric(df, y, source)
    for col in dict.fromkeys((*schema.MEASUREMENT_ERRORS, schema.se_column(y), *schema.COSTS)):
        if col in df.columns:
            df[col] = _numeric(df, col, source)
    kind = df["kind"].astype(str) if "kind" in df.columns else pd.Series("grid", index=df.index)
    status = df["status"].astype(str) if "status" in df.columns else pd.Series("completed", index=df.index)
    completed = status == "completed"
    controls = df[(kind == "control") & completed].reset_index(drop=True)
    grid = df[kind != "control"]
    for col, value in _parse_where(where):
        if col not in grid.columns:
            raise AnalysisError(f"where {col}={value}: {source} has no column {col!r}")
        if pd.api.types.is_numeric_dtype(grid[col]):
            try:
                grid = grid[grid[col] == float(value)]
            except ValueError:
                raise AnalysisError(f"where {col}={value}: column {col!r} is numeric, {value!r} is not") from None
        else:
            grid = grid[grid[col].astype(str) == value]
    dropped = []
    for state, what in (("failed", "failed"), ("running", "unfinished (running)")):
        rows = grid[status[grid.index] == state]
        if len(rows):
            warnings.warn(f"{source}: dropped {len(rows)} {what} trial(s): {', '.join(map(str, _ids(rows)))}",
                          stacklevel=3)
            dropped += _ids(rows)
    grid = grid[completed[grid.index]]
    if "best" in grid.columns:
        grid = grid[grid["best"].map(_truthy).astype(bool)]
    bad = ~(np.isfinite(grid[x]) & np.isfinite(grid[y]))
    if bad.any():
        ids = _ids(grid[bad])
        warnings.warn(f"{source}: dropped {len(ids)} row(s) with a NaN or infinite {x!r} or {y!r}: "
                      f"{', '.join(map(str, ids))}", stacklevel=3)
        dropped += ids
    return Table(grid[~bad].reset_index(drop=True), controls, dropped, x, y)
