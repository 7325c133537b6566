"""The results table: one row per trial in ``results/<sweep>/trials.parquet`` (and ``.csv``).

Its columns are ``analysis.schema``'s, the reader's too. The driver writes it (``SweepTracker``, then
``run_sweep``) as trials start and end, each write an atomic replace, never waiting for MLflow.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from analysis.schema import COLUMNS, HP_PREFIX, METADATA_KEY, NUMERIC, SORT_BY
from drorae_io import atomic_path


def read_metadata(path: Path) -> dict:
    """The sweep-level metadata of a results table written by ``ResultsTable`` ({} for none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


class ResultsTable:
    """One row per trial, keyed by trial_id; every write replaces the files atomically.

    ``metadata`` (what holds for every row, e.g. the selection and evaluation splits) is kept in the
    parquet file's schema metadata, merged into what the file already holds.
    """

    def __init__(self, sweep_dir: Path, metadata: dict | None = None):
        self.dir = Path(sweep_dir)
        self.path = self.dir / "trials.parquet"
        self.rows: dict[str, dict] = {}
        self.metadata: dict = {}
        if self.path.exists():
            for row in pd.read_parquet(self.path).to_dict("records"):
                self.rows[row["trial_id"]] = row
            self.metadata = read_metadata(self.path)
        self.metadata.update(metadata or {})

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
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(self.metadata).encode()}
        with atomic_path(self.dir / "trials.parquet") as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        with atomic_path(self.dir / "trials.csv") as tmp:
            df.to_csv(tmp, index=False)


def row_from(config: dict, result: dict | None, status: str, error: str | None = None) -> dict:
    """A trial's row from its config and its last Tune result (None: it has reported nothing)."""
    result = result or {}
    row = {k: config.get(k) for k in ("trial_id", "unit_id", "point_id", "kind", "expert_hidden",
                                      "fused_layers", "seed", "params", "lr_source")}
    row.update(status=status, error=error, node_id=result.get("node_id"), device=result.get("device"),
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


_FIT_HERE = object()  # summary's default: fit the law itself


def summary(df: pd.DataFrame, alpha: float = 0.05, law=_FIT_HERE) -> str:
    """The lines a user sees at the end of a sweep: each point's rFID with its interval, then every trial
    that did not complete.

    A point's interval (``analysis.points``) is the t-interval of its mean over its seeds when it has
    several, else the log-linear law's interval of the mean at its capacity (``analysis.fit``, fitted to
    the sweep's points; no interval while it cannot be fitted, e.g. under 3 capacities); each line
    says which. Controls are listed without one: they are never fitted. ``law``: that law when the
    caller has fitted it already (None: it could not be; the end of a sweep fits it once), by default
    fitted here.
    """
    from analysis import AnalysisError, fit, load
    from analysis.points import LAW, point_intervals

    level = f"{1 - alpha:.0%}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped rows: the sweep's analysis names them once, after this
        table = load(df)
        if law is _FIT_HERE:
            try:
                law = fit(table)
            except AnalysisError:
                law = None
    rows = [["point", "params", "seeds", "val L1", "rFID", "rFID se", f"{level} interval", "the interval is"]]
    for p in point_intervals(table, law, alpha).itertuples():
        how = (f"the {law.form} law's CI of the mean at its params" if p.source == LAW else
               f"the t-interval of the mean of its {p.n} seeds" if p.source else "none: one seed, and no law fitted")
        rows.append([p.point_id, f"{p.params:,.0f}", str(p.n), _num(_mean(table.points, p.point_id, "val_l1")),
                     _num(p.mean), _num(_se_of_mean(table.points, p.point_id)), _interval(p.lower, p.upper), how])
    for point_id, c in table.controls.groupby("point_id", sort=False):
        rows.append([point_id, f"{c.params.iloc[0]:,.0f}", str(len(c)), _num(c.val_l1.mean()), _num(c.rfid.mean()),
                     _num(_se_of_mean(table.controls, point_id)), "", "none: a control, never fitted"])
    lines = [f"Each point's rFID (the mean over its seeds) with its {level} interval:"]
    lines += _columns(rows) if len(rows) > 1 else ["(no point completed)"]
    undone = df[df.status != "completed"]
    if len(undone):
        lines += ["", "Trials that did not complete:"]
        lines += _columns([["trial", "status", "error"]] + [[r.trial_id, r.status, str(r.error or "")[:100]]
                                                            for r in undone.itertuples()])
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    """Aligned columns: numbers (a digit or sign first) to the right, text to the left."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = [all(r[i][:1].isdigit() or r[i][:1] in "-+" for r in rows[1:] if r[i]) for i in range(len(widths))]
    return ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip() for row in rows]


def _num(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "-"


def _mean(points: pd.DataFrame, point_id: str, column: str) -> float:
    return float(points.loc[points.point_id == point_id, column].mean())


def _se_of_mean(points: pd.DataFrame, point_id: str, column: str = "rfid_se") -> float:
    """The measurement error of a point's mean over its k seeds, sqrt(sum se^2) / k (NaN where unmeasured)."""
    if column not in points.columns:
        return math.nan
    se = points.loc[points.point_id == point_id, column].astype(float)
    return math.sqrt((se ** 2).sum()) / len(se) if len(se) and se.notna().all() else math.nan


def _interval(lower: float, upper: float) -> str:
    return f"[{lower:.4g}, {upper:.4g}]" if math.isfinite(lower) and math.isfinite(upper) else ""
