"""The rows a scaling law is fitted to, from a results directory, a table file or MLflow.

A sweep's table (``results/<sweep>/trials.parquet``, written by ``sweeper.results``; its columns
and the MLflow names are ``analysis.schema``) has one row per trial. The rows fitted are the grid's
completed trials, and where a ``best`` column exists only the best trial of each point (a searched
point has several trials; only the best was evaluated). Control runs (``kind == 'control'``, e.g.
the RAE baseline) are returned apart: never fitted. Any other table with a capacity and a metric
column works too (published points): without ``kind`` / ``status`` / ``best`` columns every row is
a point.

Rows in messages (``row_names``): a row is named by its ``trial_id`` where the table has that column,
else as ``row N``, N counting the source table's data rows from 1 (the header not counted: row 1 is
the first data row, on line 2 of a CSV). Every message of the analysis (dropped rows, text cells,
duplicates, rows without a measurement error) counts rows this way; ``Table.points`` and
``Table.controls`` keep the source's row positions as their index so a later fit can too.

A metric's measurement error (``<metric>_se``, e.g. ``rfid_se``) and the training cost
(``train_steps``, ``train_flops``) are read as numbers wherever the source has them: table columns,
or the metrics of a trial's MLflow run. Older sweeps lack them; their rows then carry no such column
(or NaN) and nothing about measurement error is claimed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import schema
from analysis.errors import AnalysisError
from drorae_io import UserInputError, check_endpoint, endpoint, open_regular


@dataclass
class Table:
    """The rows to fit (``points``), the control runs (never fitted), and the trial ids dropped."""

    points: pd.DataFrame
    controls: pd.DataFrame
    dropped: list = field(default_factory=list)
    x: str = "params"
    y: str = "rfid"
    source: str | None = None  # the file (or mlflow:EXPERIMENT) the rows came from; None: a DataFrame
    metadata: dict = field(default_factory=dict)  # a sweep's parquet table: what holds for every row (schema)
    #: Every grid row that ``where`` selects, whatever its status, all trials of a searched unit (not only
    #: its best): what the hyperparameter law is fitted to (``analysis.hparams``). None: not read from a table.
    trials: pd.DataFrame | None = None


def load(source, x: str = "params", y: str = "rfid", where=None) -> Table:
    """Read ``source`` (results dir, ``.parquet`` / ``.csv`` file, ``mlflow:EXPERIMENT`` or a DataFrame).

    ``where``: ``"col=value"`` (several joined by ``,``, or a list) selects the fitted rows; one that
    matches no row is an error naming it. Failed trials, rows whose x or y is NaN/inf and exact
    duplicate rows (every column equal to an earlier row's: a row written twice, not another seed)
    are dropped with a warning that lists them.
    """
    df = _read(source)
    if df.empty and len(df.columns):
        raise AnalysisError(f"{_name(source)}: no rows, only the columns {', '.join(map(str, df.columns))}; "
                            "expected one row per trial")
    table = select(df, x=x, y=y, where=where, source=_name(source))
    table.source = None if isinstance(source, pd.DataFrame) else str(source)
    table.metadata = dict(df.attrs.get("metadata", {}))
    return table


def _name(source) -> str:
    return "the table" if isinstance(source, pd.DataFrame) else str(source)


#: The largest table file read (a results table of 100,000 trials is ~20 MB): a device or a runaway file is
#: refused before it fills the memory.
TABLE_MAX_BYTES = 256 * 2**20
#: What RESULTS may be, as messages say it.
RESULTS_FORMS = "a results directory, a .parquet or .csv table, or mlflow:EXPERIMENT"
#: Seconds, in all, that reading mlflow:EXPERIMENT waits for an http(s) tracking server's first answer.
MLFLOW_ANSWER_S = 5.0
#: MLflow's HTTP client otherwise retries a failed request for minutes; a value set in the environment wins.
MLFLOW_HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, str) and source.startswith("mlflow:"):
        return _read_mlflow(source[len("mlflow:"):])
    path = Path(source)
    if path.is_dir():
        for name in ("trials.parquet", "trials.csv"):
            if os.path.lexists(path / name):  # there, if not a regular file: open_regular says what it is
                path = path / name
                break
        else:
            raise AnalysisError(f"{source}: no trials.parquet or trials.csv in this results directory")
    try:  # a regular file of at most TABLE_MAX_BYTES: never a FIFO (it would block), a device, a loop
        file = open_regular(path, limit=TABLE_MAX_BYTES, expected=RESULTS_FORMS)
    except UserInputError as err:
        raise AnalysisError(str(err)) from None
    with file:
        if path.suffix not in (".parquet", ".csv"):
            raise AnalysisError(f"{source}: unknown table format {path.suffix!r} (expected .parquet or .csv)")
        if os.fstat(file.fileno()).st_size == 0:
            raise AnalysisError(f"{path}: the file is empty; expected a {path.suffix[1:]} table with a header "
                                "row and one row per trial")
        try:
            if path.suffix == ".csv":
                return pd.read_csv(file)
            # Parquet from the bytes in memory (at most TABLE_MAX_BYTES): pyarrow reading a Python file
            # object calls back into Python from its own threads, and an interpreter exiting after that
            # aborted now and then ("terminate called without an active exception").
            import pyarrow as pa
            import pyarrow.parquet as pq

            data = pq.read_table(pa.BufferReader(file.read()))
            df = data.to_pandas()
            df.attrs["metadata"] = _metadata(data.schema.metadata)
            return df
        except Exception as exc:  # a corrupt or truncated file: name it, one line
            raise AnalysisError(f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}: {exc})") from None


def _metadata(meta: dict | None) -> dict:
    """A sweep table's own metadata (``schema.METADATA_KEY``); {} when absent or not a JSON object."""
    try:
        value = json.loads((meta or {})[schema.METADATA_KEY])
    except (KeyError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _tracking_store(name: str) -> tuple[str, str]:
    """The store that ``name`` (mlflow:EXPERIMENT) is read from, and where that came from, as the user knows it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, "MLFLOW_TRACKING_URI"
    default = Path("results/mlflow.db")
    if os.path.lexists(default):
        return f"sqlite:///{default.absolute()}", "results/mlflow.db"
    raise AnalysisError(f"{name}: no MLflow store to read: MLFLOW_TRACKING_URI is unset and there is no "
                        f"results/mlflow.db in {os.getcwd()}; set MLFLOW_TRACKING_URI (e.g. "
                        "sqlite:///path/to/results/mlflow.db or http://host:5000) or run from the directory above "
                        "results/")


def _check_store(name: str, uri: str, source: str) -> None:
    """Before MLflow is asked: the store must parse and be there; it is only read, never created.

    http(s): the server answers within ``MLFLOW_ANSWER_S`` (``drorae_io.check_endpoint``). SQLite: the
    database file exists and is a regular file (MLflow would create an empty one, and its directory).
    A file store (a path, file://): its directory exists. A database server (postgresql://, mysql://):
    it accepts a connection.
    """
    what = f"{name}: {source}" if source == "MLFLOW_TRACKING_URI" else f"{name}: the store"
    try:
        ep = endpoint(uri, what)
        if uri.strip() == "databricks" or ep.scheme.startswith("databricks"):
            return  # a Databricks workspace: its client has its own checks
        if ep.scheme in ("http", "https"):
            check_endpoint(uri, what, "start the tracking server or set MLFLOW_TRACKING_URI to a running one",
                           http=True, timeout=MLFLOW_ANSWER_S, server="tracking server")
        elif ep.scheme == "sqlite":
            db = ep.path[1:]  # sqlite:///relative.db, sqlite:////absolute.db
            if db in ("", ":memory:"):
                raise AnalysisError(f"{what} {uri}: an in-memory database holds no experiments; expected "
                                    "sqlite:///path/to/mlflow.db")
            if not os.path.exists(db):
                raise AnalysisError(f"{what} {uri}: no such database file {db} (reading an experiment never "
                                    "creates one); expected the mlflow.db of a sweep, e.g. results/mlflow.db")
            open_regular(db, f"{what} {uri}: the database", limit=2**62).close()
        elif ep.scheme in ("", "file"):
            root = ep.path if ep.scheme == "file" else uri
            if not os.path.isdir(root):
                raise AnalysisError(f"{what} {uri}: no such directory {root} (reading an experiment never creates "
                                    "a store)")
        elif ep.host:
            port = ep.port or SQL_PORTS.get(ep.scheme.split("+")[0])
            if port:
                check_endpoint(uri, what, "start it or set MLFLOW_TRACKING_URI to a store that runs", http=False,
                               timeout=MLFLOW_ANSWER_S, default_port=port, server="database server")
    except UserInputError as err:
        raise AnalysisError(str(err)) from None


#: Default ports of the database servers MLflow stores runs in (SQLAlchemy URIs).
SQL_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def _read_mlflow(experiment: str) -> pd.DataFrame:
    """The nested trial runs of an MLflow experiment as table rows (params, then metrics, as columns).

    The store is MLFLOW_TRACKING_URI, else the sweep's default ``results/mlflow.db`` when it exists
    (else an error: looking an experiment up never creates a store); it is checked first
    (``_check_store``), and whatever MLflow then reports about it is one line naming the store.
    A run's ``best`` is its ``best`` tag (a searched point's evaluated trial) or ``n_trials`` <= 1.
    """
    name = f"mlflow:{experiment}"
    uri, source = _tracking_store(name)
    _check_store(name, uri, source)
    for key, value in MLFLOW_HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)
    import logging

    from mlflow.exceptions import MlflowException  # lazily: the analysis needs MLflow only for this source
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's INFO lines are not the command's output
    try:
        return _mlflow_rows(MlflowClient(uri), experiment, name, uri)
    except MlflowException as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise AnalysisError(f"{name}: the MLflow store {uri} cannot be read ({text})") from None


def _mlflow_rows(client, experiment: str, name: str, uri: str) -> pd.DataFrame:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"{name}: no such experiment in {uri}")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if schema.PARENT_RUN_TAG not in tags:
                continue                                   # the sweep's parent run
            row = {**run.data.params, **run.data.metrics}  # metrics win (params is logged as both)
            row.update({k: tags[k] for k in (*schema.TRIAL_TAGS, schema.DEVICE_TAG) if k in tags})
            row["status"] = ("pruned" if tags.get(schema.STATUS_TAG) == "pruned"
                             else schema.TABLE_STATUS.get(run.info.status, "running"))
            if "n_trials" in row or schema.BEST_TAG in tags:
                row["best"] = (tags.get(schema.BEST_TAG) == "true"
                               or str(row.get("n_trials", "")).strip() in ("0", "1"))
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        raise AnalysisError(f"{name}: no nested trial runs in this experiment")
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
            first = int(np.flatnonzero(bad)[0])
            where = row_names(df.iloc[[first]], single=True)[0]
            more = f", and {bad.sum() - 1} more row(s)" if bad.sum() > 1 else ""
            raise AnalysisError(f"{source}: column {col!r} must be numeric but holds text: {s.iloc[first]!r} in "
                                f"{where}{more}")
        s = num
    return s.astype(float)


def _truthy(v) -> bool:
    """A ``best`` cell: True, 1, "true" (a CSV or MLflow tag) are true; NaN, None, "False" are not."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def row_names(rows: pd.DataFrame, single: bool = False) -> list[str]:
    """How messages name ``rows`` (see the module docstring): their trial_id, else ``row N`` (N = index + 1).

    ``rows`` is a slice of a table whose index is the source's 0-based row position (``select`` and
    ``fit`` make it so). ``single``: one row named alone, as ``trial T`` (``row N`` without trial ids).
    """
    if "trial_id" in rows.columns:
        names = rows["trial_id"].astype(str)
        return ("trial " + names).tolist() if single else names.tolist()
    if pd.api.types.is_integer_dtype(rows.index):  # vectorized: a fit of 100,000 rows names them all
        return np.char.add("row ", (rows.index.to_numpy() + 1).astype(str)).tolist()
    return [f"row {i}" for i in rows.index]


def listed(names, most: int = 20) -> str:
    """``names`` joined by commas, the first ``most`` of them and how many more: a warning stays readable."""
    names = list(map(str, names))
    return ", ".join(names[:most]) + (f", and {len(names) - most} more" if len(names) > most else "")


def _duplicates(df: pd.DataFrame) -> pd.Series:
    """True for each row every column of which equals an earlier row's (cells compared as text where unhashable)."""
    try:
        return df.duplicated(keep="first")
    except TypeError:  # a list or dict cell (an MLflow param): compare the rows' text
        return df.astype(str).duplicated(keep="first")


def _drop_duplicates(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """``df`` without its exact duplicate rows (the first copy kept), and those rows' names, with a warning."""
    dup = _duplicates(df)
    if not dup.any():
        return df, []
    copies = df[_duplicates(df) | _duplicates(df.iloc[::-1]).iloc[::-1]]  # every row that has a twin
    key = copies.astype(str).apply(tuple, axis=1)
    first: dict = {}
    for i, k in zip(copies.index, key):
        first.setdefault(k, i)
    names = [f"row {i + 1} (a copy of row {first[k] + 1})" for i, k in zip(copies.index, key) if first[k] != i]
    warnings.warn(f"{source}: dropped {len(names)} exact duplicate row(s), every column equal to an earlier "
                  f"row's (a row written twice, not another seed): {listed(names)}", stacklevel=4)
    return df[~dup], names


def _apply_where(grid: pd.DataFrame, where, source: str) -> pd.DataFrame:
    """The rows of ``grid`` that every ``COLUMN=VALUE`` of ``where`` selects; an error naming the first
    condition that leaves none (with the values its column does hold)."""
    done: list[str] = []
    for col, value in _parse_where(where):
        if col not in grid.columns:
            raise AnalysisError(f"where {col}={value}: {source} has no column {col!r}")
        before = grid
        if pd.api.types.is_numeric_dtype(grid[col]) and not pd.api.types.is_bool_dtype(grid[col]):
            try:
                grid = grid[grid[col] == float(value)]
            except ValueError:
                raise AnalysisError(f"where {col}={value}: column {col!r} is numeric, {value!r} is not") from None
        else:
            grid = grid[grid[col].astype(str) == value]
        if grid.empty and not before.empty:
            held = pd.unique(before[col].dropna())
            shown = listed(sorted((f"{v:g}" if isinstance(v, float) else str(v) for v in held[:200]), key=str), 10)
            among = f" among the rows where {', '.join(done)}" if done else ""
            raise AnalysisError(f"where {col}={value}: no row of {source} to fit has {col} = {value}{among} "
                                f"(its values there: {shown or 'none'})")
        done.append(f"{col}={value}")
    return grid


def select(df: pd.DataFrame, x: str = "params", y: str = "rfid", where=None, source: str = "the table") -> Table:
    """Split a results table into the rows to fit and the controls (see ``load``)."""
    for col, role in ((x, "capacity"), (y, "metric")):
        if col not in df.columns:
            raise AnalysisError(f"{source}: no column {col!r} for the {role} "
                                f"(columns: {', '.join(map(str, df.columns))})")
    df = df.reset_index(drop=True)  # the index is each row's position in the source (row_names)
    df, duplicates = _drop_duplicates(df, source)
    df[x], df[y] = _numeric(df, x, source), _numeric(df, y, source)
    for col in dict.fromkeys((*schema.MEASUREMENT_ERRORS, schema.se_column(y), *schema.COSTS)):
        if col in df.columns:
            df[col] = _numeric(df, col, source)
    kind = df["kind"].astype(str) if "kind" in df.columns else pd.Series("grid", index=df.index)
    status = df["status"].astype(str) if "status" in df.columns else pd.Series("completed", index=df.index)
    completed = status == "completed"
    controls = df[(kind == "control") & completed]
    grid = _apply_where(df[kind != "control"], where, source)
    trials = grid
    dropped = list(duplicates)
    for state, what in (("failed", "failed"), ("running", "unfinished (running)")):
        rows = grid[status[grid.index] == state]
        if len(rows):
            warnings.warn(f"{source}: dropped {len(rows)} {what} trial(s): {listed(row_names(rows))}", stacklevel=3)
            dropped += row_names(rows)
    grid = grid[completed[grid.index]]
    if "best" in grid.columns:
        grid = grid[grid["best"].map(_truthy).astype(bool)]
    bad = ~(np.isfinite(grid[x]) & np.isfinite(grid[y]))
    if bad.any():
        ids = row_names(grid[bad])
        warnings.warn(f"{source}: dropped {len(ids)} row(s) with a NaN or infinite {x!r} or {y!r}: "
                      f"{listed(ids)}", stacklevel=3)
        dropped += ids
    return Table(grid[~bad], controls, dropped, x, y, trials=trials)
