"""The law while the sweep runs, and the rule that ends the sweep once the answer is known.

Whenever a grid point's rFID arrives (a trial completes with it, or the driver evaluates a searched
point's best trial), the driver refits the spec's law (``law:``: panel, form, target capacity, level)
with the analysis package, from the results table as written (``analysis.load``,
``analysis.panels.fit_panels``: never a second implementation), and shows it three ways:

- one console line, e.g. ``law after 5 of 9 points: rFID = 41.2 - 2.1 log10(params), b 95% CI
  [-3.0, -1.2]; at 1e+08: 24.3, CI [22.1, 26.5], PI [21.0, 27.6]``;
- metrics on the MLflow parent run (``law.*``) with the number of points as the step, so the MLflow
  UI draws the law converging;
- ``results/<sweep>/law.json``, written atomically: the fit (``FitResults.to_dict``), the prediction
  at the target, the stop rule's state and the history of every update.

Fewer points than the law needs is a quiet "waiting" line, never an error.

The stop rule (``stop:``) ends the sweep as soon as the interval at its target (the prediction
interval of a new run, or the interval of the law's mean) is narrower than asked, from its
``min_points``-th point on. From then on the searcher hands Tune no new trial (``UnitSearcher``):
trials Tune has already started, or queued for a free CPU, finish; the plan's trials that never
started are recorded in the results table as ``skipped``, with the reason (``skipped_rows``). A rerun
of the same command re-reads the table, finds the rule met and starts nothing; with another
threshold (or no stop rule) the skipped trials run.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from analysis import AnalysisError, load
from analysis.cli import json_ready
from analysis.panels import fit_panels
from drorae_io import atomic_path

log = logging.getLogger(__name__)

LAW_FILE = "law.json"
_UNSEEN = object()
PANELS = {"unified": "unified_scaling", "capacity": "capacity_scaling"}
#: The parent run's metrics of the live law, at step = number of points: "law.<param>" and its interval,
#: "law.r2", and at the target "law.target_mean", "law.target_ci_width", "law.target_pi_width".
METRIC_PREFIX = "law."


def _g(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def _interval(lo: float, hi: float) -> str:
    return f"[{_g(lo)}, {_g(hi)}]"


def equation(res) -> str:
    """The fitted law as a line: ``rFID = 41.2 - 2.1 log10(params)`` (the form's own equation otherwise)."""
    p = res.params
    y = "rFID" if res.y == "rfid" else res.y
    if res.form in ("log-linear", "linear", "power"):
        a, b = p["a"], p["b"]
        term = {"log-linear": f"log10({res.x})", "linear": res.x, "power": f"ln({res.x})"}[res.form]
        lhs = f"ln({y})" if res.form == "power" else y
        return f"{lhs} = {_g(a)} {'-' if b < 0 else '+'} {_g(abs(b))} {term}"
    return f"{y} = {_g(p['E'])} + {_g(p['A'])} {res.x}^-{_g(p['alpha'])}"


class LiveLaw:
    """The spec's law refitted from the results table (``update``), and its stop rule's verdict (``stopped``).

    ``log_metrics(metrics, step)`` takes the parent run's metrics (``SweepTracker.log_parent``);
    ``n_planned`` is how many points the sweep plans (the console line's "of N").
    """

    def __init__(self, sweep_dir: Path, spec, n_planned: int,
                 log_metrics: Callable[[dict, int], None] | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.law, self.stop, self.target = spec.law, spec.stop, spec.target
        self.n_planned = n_planned
        self.log_metrics = log_metrics
        self.result = None  # the last FitResults (None while waiting)
        self.points = None  # the rows it was fitted to
        self.stopped: dict | None = None  # the stop rule's verdict once met (sticky for this run)
        self.state: dict = {}
        self._seen: object = _UNSEEN  # the (trial_id, y) of the points last fitted
        self._history: list[dict] = self._read_history()

    @property
    def path(self) -> Path:
        return self.sweep_dir / LAW_FILE

    def _read_history(self) -> list[dict]:
        """The updates an earlier run of this sweep recorded (law.json), continued by this run."""
        try:
            history = json.loads(self.path.read_text()).get("history", [])
            return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
        except (OSError, ValueError, AttributeError):
            return []

    def __call__(self) -> None:
        """``update``, for the sweep's hooks: a law that cannot be shown is a warning, never the sweep's end."""
        try:
            self.update()
        except Exception as exc:  # noqa: BLE001  (the trials' results are safe in the table either way)
            log.warning("live law: not updated (%s: %s)", type(exc).__name__, exc)

    def update(self) -> bool:
        """Refit when the table's points changed since the last call; True when it did.

        Shows the law (console line, parent-run metrics, law.json) and applies the stop rule.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dropped running/failed rows: the end of the sweep names them
                table = load(self.sweep_dir)
        except AnalysisError:  # no table yet, or no row with an rFID
            table = None
        points = None if table is None else table.points
        seen = None if points is None else tuple(sorted(zip(points["trial_id"].astype(str), points[table.y])))
        if seen == self._seen:
            return False
        self._seen = seen
        n = 0 if points is None else len(points)
        res, why = None, None
        if table is not None and n:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    panels = fit_panels(table, self.law.form)
                panel = next((p for p in panels.panels if p.name == PANELS[self.law.panel]), None)
                res = None if panel is None else panel.result
                why = panels.errors.get(PANELS[self.law.panel])
            except AnalysisError as err:
                why = str(err)
        if res is None:
            self.result, self.points = None, points
            line = f"law after {n} of {self.n_planned} points: waiting for {_needs(why)}"
            log.info(line)
            self._write({"status": "waiting", "n_points": n, "waiting_for": _needs(why), "detail": why, "line": line})
            return True
        self.result, self.points = res, points
        self._show(res, n)
        return True

    def _show(self, res, n: int) -> None:
        alpha = self.law.alpha
        level = f"{1 - alpha:.0%}"
        ci = res.conf_int(alpha)
        slope = "b" if "b" in res.params.index else "alpha"
        parts = [f"{equation(res)}", f"{slope} {level} CI {_interval(*ci.loc[slope])}", f"R^2 {res.rsquared:.3f}"]
        metrics = {"n_points": float(n), "r2": res.rsquared}
        for name, value in res.params.items():
            metrics[name] = float(value)
            metrics[f"{name}_ci_lower"], metrics[f"{name}_ci_upper"] = map(float, ci.loc[name])
        at = None
        if self.target is not None:
            sf = res.get_prediction([self.target]).summary_frame(alpha).iloc[0]
            at = {"capacity": self.target, "mean": float(sf["mean"]),
                  "ci": [float(sf["mean_ci_lower"]), float(sf["mean_ci_upper"])],
                  "pi": [float(sf["obs_ci_lower"]), float(sf["obs_ci_upper"])]}
            at["ci_width"], at["pi_width"] = at["ci"][1] - at["ci"][0], at["pi"][1] - at["pi"][0]
            parts.append(f"at {self.target:g}: {_g(at['mean'])}, CI {_interval(*at['ci'])}, PI {_interval(*at['pi'])}")
            metrics.update(target_mean=at["mean"], target_ci_width=at["ci_width"], target_pi_width=at["pi_width"])
        line = f"law after {n} of {self.n_planned} points: " + "; ".join(parts)
        log.info(line)
        self._apply_stop(at, n)
        if self.log_metrics is not None:
            self.log_metrics({METRIC_PREFIX + k: v for k, v in metrics.items() if math.isfinite(v)}, n)
        self._history.append({"time": time.time(), "n_points": n,
                              "params": {k: float(v) for k, v in res.params.items()},
                              "conf_int": {k: [float(ci.loc[k, "lower"]), float(ci.loc[k, "upper"])] for k in ci.index},
                              "r2": res.rsquared, "target": at})
        self._write({"status": "fitted", "n_points": n, "line": line, "panel": self.law.panel,
                     "law": res.to_dict(alpha), "target": at})

    def _apply_stop(self, at: dict | None, n: int) -> None:
        stop = self.stop
        if stop is None or self.stopped is not None or at is None or n < stop.min_points:
            return
        width = at[f"{stop.interval}_width"]
        if not width < stop.width_below:  # NaN or inf (no PI yet) never stops the sweep
            return
        what = "prediction interval" if stop.interval == "pi" else "interval of the mean"
        level = f"{1 - self.law.alpha:.0%}"
        self.stopped = {"rule": f"{stop.interval}_width_below", "threshold": stop.width_below, "width": width,
                        "target": self.target, "n_points": n,
                        "reason": f"stop rule met after {n} points: the {level} {what} at {self.target:g} is "
                                  f"{width:.4g} wide, below {stop.width_below:g}"}
        log.warning("%s; no new trial starts (trials already started finish)", self.stopped["reason"])

    def _write(self, state: dict) -> None:
        self.state = {"sweep_dir": str(self.sweep_dir), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "n_planned": self.n_planned, "form": self.law.form, "alpha": self.law.alpha,
                      "stop_rule": None if self.stop is None else self.stop.model_dump(), **state,
                      "stopped": self.stopped, "history": self._history}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(json_ready(self.state), indent=1, allow_nan=False))


def _needs(why: str | None) -> str:
    """What the law is waiting for, in a few words."""
    if why and "distinct" in why:
        return "3 points at distinct capacities"
    return "3 points" if not why else why.split(": ")[-1][:120]


def skipped_rows(plan_units, rows: dict, reason: str) -> list[dict]:
    """Rows of the trials that never started: each unit's trials (``<unit_id>-t<index>``) without a row."""
    out = []
    for unit in plan_units:
        for index in range(unit.n_trials):
            trial_id = f"{unit.unit_id}-t{index}"
            if trial_id in rows and rows[trial_id].get("status") != "skipped":
                continue
            out.append({"trial_id": trial_id, "unit_id": unit.unit_id, "point_id": unit.point_id, "kind": unit.kind,
                        "expert_hidden": unit.expert_hidden, "fused_layers": unit.fused_layers, "seed": unit.seed,
                        "params": unit.params, "status": "skipped", "error": reason, "best": False})
    return out
