"""Execute a sweep: check the endpoints, start (or join) Ray, do the shared work once, run every
unit's trials as Ray Tune trials, evaluate each searched unit's best trial, write the results.

Rerunning the same command resumes (``Tuner.restore``, errored trials resumed): a completed trial
never runs twice. ``restart=True`` starts over on purpose, after moving the old results aside.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from ray.tune import Callback

from drorae_io import atomic_path, check_endpoint, check_output_dir, made_dirs

from .adaptive import AdaptiveChooser
from .experiment import check_tracking, git_commit, log_parent_params, parent_run, tracking_uri, ui_url
from .live import LiveLaw, skipped_rows
from .lock import SweepLock, lock_path
from .plan import spec_digest
from .results import ResultsTable
from .storage import TuneExperiment, check_shared_storage, cluster_hosts
from .tracking import SweepTracker
from .trial_config import TrialConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when the Ray address does not parse or points at nothing (Ray itself would wait for minutes).

    The message names it as the user gave it: ``--address``, or ``RAY_ADDRESS`` (its default).
    """
    if address in ("auto", "local"):
        return
    source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else "--address"
    check_endpoint(address, source, "expected host:port, ray://host:port, auto or local; start a cluster (ray start "
                   "--head), or use a local one (--address local, or no address)", http=False, timeout=timeout,
                   default_scheme="ray", server="Ray cluster")


def init_ray(address: str | None):
    """Join the cluster at ``address``; without one, or with ``local``, start a local one-node Ray of our own."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "local":
        ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level=logging.WARNING)
    else:  # a new local one-node cluster, private to this machine (never a `ray start` one found here)
        from ray._private import ray_constants

        # Ray swaps 127.0.0.1 for this machine's outward address unless told this is no cluster (its switch
        # for Windows and macOS, read when ray is imported): told so here and in the processes it starts.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True,
                 configure_logging=True, logging_level=logging.WARNING)


def _archive(sweep_dir: Path) -> Path | None:
    """Move an earlier run of the sweep aside (never delete what a user ran)."""
    if not sweep_dir.exists():
        return None
    dest = sweep_dir.with_name(f"{sweep_dir.name}.before-restart-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(sweep_dir), dest)
    log.info("restart: moved the earlier results to %s", dest)
    return dest


def _prepare_remote(plan, device):
    import ray

    from .shared import prepare

    @ray.remote(max_retries=1)
    def shared_work(plan, device):
        logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
        return prepare(plan, device)  # on resources.shared_threads threads

    res = plan.spec.resources
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = max(res.cpu, min(node_cpus, res.shared_threads))  # its threads' CPUs, as far as a node has them
    gpus = 1 if res.gpu > 0 else 0
    return ray.get(shared_work.options(num_cpus=cpus, num_gpus=gpus).remote(plan, device))


EVAL_METRICS = ("rfid", "rfid_se", "psnr", "psnr_se", "ssim", "ssim_se", "lpips", "lpips_se", "eval_seconds",
                "eval_flops")


def _evaluate_task(plan, shared, trial: TrialConfig, checkpoint, expert_hidden):
    """The Ray task that evaluates a searched unit's best trial from its Tune checkpoint (wherever the storage
    is: a local or shared directory, an object store); returns its object ref."""
    import ray

    from .trial import tune_evaluate_checkpoint

    res = plan.spec.resources
    fn = ray.remote(tune_evaluate_checkpoint).options(num_cpus=res.cpu, num_gpus=res.gpu_for(expert_hidden))
    return fn.remote(plan, shared, trial, checkpoint)


def _record_evaluation(table: ResultsTable, tracker: SweepTracker, sweep_dir: Path, trial_id: str, metrics: dict,
                       png: bytes, law: LiveLaw | None) -> None:
    """A searched unit's best trial, evaluated: its metrics in the table (and ``best`` on its unit's rows), its
    reconstruction grid under best/, the metrics and grid on its MLflow run, its point to the live law."""
    unit_id = table.rows[trial_id].get("unit_id")
    for tid, row in table.rows.items():
        if row.get("unit_id") == unit_id:
            row["best"] = tid == trial_id
    table.upsert({"trial_id": trial_id, "best": True, **{k: v for k, v in metrics.items() if k in EVAL_METRICS}})
    image = sweep_dir / "best" / trial_id / "reconstructions.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(image) as tmp:
        tmp.write_bytes(png)
    tracker.log_final(table.rows[trial_id].get("mlflow_run_id"), metrics, str(image), trial_id=trial_id)
    if law is not None:
        law()  # the point's rFID is in the table: the live law takes it


def _best_to_evaluate(rows: list[dict]) -> dict | None:
    """Of a searched unit's rows, the completed trial of lowest val_l1, unless it is evaluated already."""
    done = [r for r in rows if r.get("status") == "completed" and _finite(r.get("val_l1"))]
    if not done:
        return None
    best = min(done, key=lambda r: r["val_l1"])
    return None if bool(best.get("best")) and _finite(best.get("rfid")) else best


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class BestEvaluator(Callback):
    """Evaluates a searched unit's best trial as soon as the unit's last trial ends (a Ray task beside the
    trials), so that its point reaches the live law and the stop rule while the sweep runs, not after it.

    A Ray Tune callback, listed after the tracker (whose table holds the trial's row by then). ``collect``
    records the evaluations that have finished (at every step of Tune's loop); the end of the sweep waits
    for the rest (``collect(None, table)``), and ``_evaluate_best`` does whatever is left (a failed
    evaluation, a resumed sweep's units). Never pickled with the experiment: a restored sweep has its own.
    """

    def __init__(self, plan, shared, tracker: SweepTracker, sweep_dir: Path, law: LiveLaw):
        self.plan, self.shared, self.tracker, self.sweep_dir, self.law = plan, shared, tracker, sweep_dir, law
        self.jobs: dict[str, tuple[str, object]] = {}  # unit_id -> (its best trial_id, the evaluation's ref)

    def trial_ended(self, trial, trials) -> None:
        config = TrialConfig.from_tune(trial.config)
        if config.n_trials < 2 or config.unit_id in self.jobs:
            return
        rows = [r for r in self.tracker.table.rows.values() if r.get("unit_id") == config.unit_id]
        if sum(r.get("status") in ("completed", "pruned", "failed") for r in rows) < config.n_trials:
            return  # the unit's search goes on
        best = _best_to_evaluate(rows)
        found = None if best is None else next(
            (t for t in trials if t.config.get("trial_id") == best["trial_id"] and t.checkpoint is not None), None)
        if found is None:
            return  # nothing to evaluate here, or its checkpoint is not at hand: the end of the sweep sees to it
        ref = _evaluate_task(self.plan, self.shared, TrialConfig.from_tune(found.config), found.checkpoint,
                             config.expert_hidden)
        self.jobs[config.unit_id] = (best["trial_id"], ref)
        log.info("evaluating %s, the best of %s's %d trials", best["trial_id"], config.unit_id, config.n_trials)

    def collect(self, timeout: float | None = 0, table: ResultsTable | None = None) -> None:
        """Record the evaluations done within ``timeout`` seconds (None: wait for all) into ``table`` (default:
        the tracker's, while Tune runs); one that failed is left to the end of the sweep."""
        import ray

        pending = [(unit, tid, ref) for unit, (tid, ref) in self.jobs.items() if ref is not None]
        if not pending:
            return
        refs = [ref for _, _, ref in pending]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for unit, trial_id, ref in pending:
            if ref not in ready:
                continue
            self.jobs[unit] = (trial_id, None)
            try:
                metrics, png = ray.get(ref)
            except Exception as exc:  # noqa: BLE001  (retried by the end of the sweep)
                log.warning("evaluating %s failed (%s); the end of the sweep tries again", trial_id, exc)
                del self.jobs[unit]
                continue
            _record_evaluation(table or self.tracker.table, self.tracker, self.sweep_dir, trial_id, metrics, png,
                               self.law)

    def __reduce__(self):  # Tune pickles callbacks with the experiment: a no-op stands in (resume_tuner)
        return (Callback, ())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.trial_ended(trial, trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.trial_ended(trial, trials)

    def on_step_end(self, iteration, trials, **info):
        self.collect(0)


def _evaluate_best(plan, shared, table: ResultsTable, tracker: SweepTracker, results, sweep_dir: Path,
                   law: LiveLaw | None = None, units=None):
    """For each searched unit (of ``units``, default the plan's), evaluate its best completed trial (lowest
    val_l1) once, unless that is done already (``BestEvaluator``, or an earlier run of the sweep).

    ``results`` is Tune's ResultGrid: each trial's final checkpoint, wherever the storage is (a local
    or shared directory, an object store); the evaluation runs as a Ray task that reads it from there.
    """
    import ray

    finished = {r.config["trial_id"]: r for r in results if r.config and r.checkpoint}
    searched = [u for u in (plan.units if units is None else units) if u.n_trials > 1]
    jobs = []
    for unit in searched:
        best = _best_to_evaluate([r for r in table.rows.values() if r.get("unit_id") == unit.unit_id])
        if best is None:
            continue  # nothing completed, or evaluated already
        result = finished.get(best["trial_id"])
        if result is None:
            log.warning("no checkpoint for %s: cannot evaluate it", best["trial_id"])
            continue
        trial = TrialConfig.from_tune(result.config)
        jobs.append((best["trial_id"], _evaluate_task(plan, shared, trial, result.checkpoint, unit.expert_hidden)))
    for trial_id, ref in jobs:
        metrics, png = ray.get(ref)
        _record_evaluation(table, tracker, sweep_dir, trial_id, metrics, png, law)


#: Tune's table: each trial's params, step, val L1 and rFID (a column once some trial has it), at most
#: every 30 s (Ray's own heartbeat; the reporter's 5 s default floods a long sweep's terminal) and at the end.
TABLE_METRICS = {"step": "step", "val_l1": "val L1", "rfid": "rFID"}
TABLE_PARAMS = {"params": "params"}
TABLE_EVERY_S = 30


def progress_reporter():
    """Tune's progress table (see ``TABLE_METRICS``)."""
    from ray import tune

    # The reporter takes effect in Tune's classic output (RAY_AIR_NEW_OUTPUT=0): the newer one, Ray's
    # default, takes no reporter and picks its table's metrics itself, once, from the trials' first
    # results (the training curve's first four keys: never rFID).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tune.CLIReporter(metric_columns=TABLE_METRICS, parameter_columns=TABLE_PARAMS,
                            max_report_frequency=TABLE_EVERY_S, print_intermediate_tables=True)


def resume_tuner(experiment_path: str, trainable, tracker: SweepTracker, reporter, configure=None,
                 num_samples: int | None = None, callbacks: tuple = ()):
    """``Tuner.restore`` of the sweep's Tune experiment, its errored trials resumed, with this run's
    ``tracker`` (then ``callbacks``), progress ``reporter`` and ``num_samples``, its searcher set up by
    ``configure(searcher)``.

    Tune restores the RunConfig that the sweep's first run pickled into the experiment, callbacks
    included: a copy of that run's tracker (``SweepTracker.__reduce__``). This run's live tracker takes
    its place, so that Tune's events and the end of the sweep (the evaluation of searched points,
    ``finish``) share one outbox and one map of MLflow runs. The restored searcher gets this run's live
    law (its stop rule) and adaptive points (``configure``) and runs inside a ``SweepSearch`` (a sweep
    that its stop rule ended asks it again). Under Ray Client the Tuner runs on the cluster (there is no
    local one to hand them to) and uses its own copies, as a fresh sweep's does: there neither the stop
    rule nor --adaptive applies.
    """
    from ray import tune
    from ray.tune.search import Searcher

    from .search import SweepSearch, unit_searcher

    tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    local = tuner._local_tuner  # Ray 2.60's Tuner: its TunerInternal in this process, None under Ray Client
    if local is not None:
        run_config = local.get_run_config()
        run_config.callbacks, run_config.progress_reporter = [tracker, *callbacks], reporter
        tune_config = local._tune_config  # what Tuner.fit hands to Tune: the restored searcher, num_samples
        if isinstance(tune_config.search_alg, Searcher):  # an experiment from before SweepSearch
            tune_config.search_alg = SweepSearch(tune_config.search_alg)
        searcher = unit_searcher(tune_config.search_alg)
        if searcher is not None and configure is not None:
            configure(searcher)
        if num_samples is not None:
            tune_config.search_alg.total = num_samples
    return tuner


def _ended(plan, table: ResultsTable, law: LiveLaw, unchosen: int = 0) -> dict:
    """Why the sweep ended, in the table's metadata (the report says it) and returned; the trials that its
    stop rule kept from starting are rows of their own, status ``skipped``, the reason as their error.
    ``unchosen``: adaptive points asked for (--adaptive) and never chosen."""
    adaptive = f"; {unchosen} adaptive point(s) not chosen" if unchosen > 0 else ""
    if law.stopped is not None:
        rows = skipped_rows(plan.units, table.rows, law.stopped["reason"])
        for row in rows:
            table.rows[row["trial_id"]] = {**table.rows.get(row["trial_id"], {}), **row}
        ended = {"by": "stop rule", **law.stopped, "skipped": len(rows),
                 "reason": f"{law.stopped['reason']}; {len(rows)} planned trial(s) skipped{adaptive}"}
        log.warning("sweep ended by its stop rule: %s", ended["reason"])
    else:
        ended = {"by": "plan", "skipped": 0, "reason": f"every planned trial ran{adaptive}"}
    table.metadata["ended"] = ended
    return ended


def trial_resources(res, config: dict) -> dict:
    """What one trial asks Ray for: the spec's CPUs, and its GPU share (``resources.gpu_share``)."""
    return {"cpu": res.cpu, "gpu": res.gpu_for(config.get("expert_hidden"))}


def _trial_name(trial) -> str:
    """Tune trial names and directories carry the sweep's trial id (and Tune's, to stay unique)."""
    return f"{trial.config['trial_id']}_{trial.trial_id}"


def run_sweep(plan, restart: bool = False, address: str | None = None, adaptive: int = 0) -> pd.DataFrame:
    """Run (or resume) the sweep of ``plan``, with ``adaptive`` points beyond it in all (``sweeper.adaptive``);
    returns the results table.

    Checked before anything is written: results_dir can hold the results, the tracking server and the
    Ray cluster answer, no other process runs a sweep of this name (``SweepLock``), no other results
    directory owns the sweep's Tune experiment under ``storage_path`` (``TuneExperiment``), and on a
    cluster of several hosts the Tune storage is shared by all of them. A run refused after
    results_dir was made leaves none of the directories it made.
    """
    spec = plan.spec
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_output_dir(spec.results_dir, "results_dir")
    uri = tracking_uri(spec)
    check_tracking(uri)
    if address:
        check_ray_address(address)
    results_dir = Path(spec.results_dir).resolve()
    # results_dir made only now; a run refused from here on removes the directories it made (made_dirs)
    with made_dirs(spec.results_dir, "results_dir"), SweepLock(lock_path(results_dir, spec.name), spec.name):
        storage = spec.storage_path or str(spec.sweep_dir.resolve() / "ray")
        experiment = TuneExperiment(storage, spec.name, results_dir)
        experiment.check()
        t = time.perf_counter()
        init_ray(address)
        ray_seconds = time.perf_counter() - t
        if address:
            check_shared_storage(storage, cluster_hosts(), address)
        return _run(plan, restart, uri, experiment, ray_seconds, adaptive)


def _run(plan, restart: bool, uri: str, tune_experiment: TuneExperiment, ray_seconds: float = 0.0,
         adaptive: int = 0) -> pd.DataFrame:
    from ray import tune

    from .search import SweepSearch, UnitMedianStopping, UnitSearcher
    from .trial import tune_trainable

    spec = plan.spec
    t_start = time.perf_counter()
    sweep_dir = spec.sweep_dir.resolve()
    if restart:
        _archive(sweep_dir)
        tune_experiment.set_aside()  # the experiment under an explicit storage_path, moved or left
    tune_experiment.claim()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    experiment = spec.tracking.experiment or spec.name
    device = "cuda" if spec.resources.gpu > 0 else "cpu"

    def start_parent_run():  # MLflow's parent run (a new store's schema takes seconds) beside the shared work
        t = time.perf_counter()
        return parent_run(uri, experiment, sweep_dir, spec), time.perf_counter() - t

    log.info("shared work: encoder, feature cache, FID statistics, phase-1 decoder")
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        parent_future = pool.submit(start_parent_run)
        shared = _prepare_remote(plan, device)
        (parent, experiment_id), mlflow_seconds = parent_future.result()
    shared_seconds = time.perf_counter() - t
    log.info("shared work done in %.0f s (%s)", shared_seconds,
             ", ".join(f"{k} {v:.0f}s" for k, v in shared.seconds.items()))

    experiment_path = tune_experiment.path  # <storage_path>/<sweep>: a directory or an object-store URI
    res = spec.resources
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, plan=plan, shared=shared),
                                    functools.partial(trial_resources, res))
    splits = shared.splits.describe()
    log.info("splits: %s", splits["rule"])
    log_parent_params(uri, parent, {f"splits.{k}": v for k, v in splits.items()})
    tracker = SweepTracker(uri, experiment, parent, str(sweep_dir),
                           {"sweep": spec.name, "shared.decoder": shared.decoder_path,
                            "shared.phase1_val_l1": shared.phase1.get("val_l1")}, git_commit(),
                           table_metadata={"splits": splits, "spec": spec_digest(spec)})
    reporter = progress_reporter()
    # The law as points arrive (console, the parent run's metrics, law.json) and the stop rule: shown now
    # for a resumed sweep's points, then after every trial and every evaluation of a searched point.
    law = LiveLaw(sweep_dir, spec, sum(u.kind == "grid" for u in plan.units) + adaptive, tracker.log_parent)
    law()
    tracker.after_trial = law
    chooser = AdaptiveChooser(plan, law) if adaptive else None
    evaluator = BestEvaluator(plan, shared, tracker, sweep_dir, law)  # a searched point's rFID as its search ends
    n_trials = plan.n_trials + adaptive * plan.n_new_width

    searchers = []

    def configure(searcher):  # this run's live law (its stop rule) and adaptive points, on a new or restored searcher
        searcher.law, searcher.adaptive, searcher.chooser = law, adaptive, chooser
        searchers.append(searcher)

    if tune.Tuner.can_restore(experiment_path):
        log.info("resuming the sweep from %s", experiment_path)
        tuner = resume_tuner(experiment_path, trainable, tracker, reporter, configure, n_trials, (evaluator,))
    else:
        searcher = UnitSearcher(plan.units, spec.search, storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
                                study_prefix=f"{spec.name}/", seed=spec.seed)
        configure(searcher)
        search_alg = searcher
        if res.max_concurrent:
            from ray.tune.search import ConcurrencyLimiter

            search_alg = ConcurrencyLimiter(searcher, max_concurrent=res.max_concurrent)
        scheduler = UnitMedianStopping() if spec.search and spec.search.pruner == "median" else None
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=SweepSearch(search_alg), scheduler=scheduler, num_samples=n_trials,
                                        reuse_actors=res.reuse_actors, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=tune_experiment.name, storage_path=tune_experiment.storage, callbacks=[tracker, evaluator],
                progress_reporter=reporter,
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=1))
    t = time.perf_counter()
    results = tuner.fit()
    trials_seconds = time.perf_counter() - t
    t = time.perf_counter()
    table = ResultsTable(sweep_dir, {"splits": splits, "spec": spec_digest(spec)})
    units = searchers[-1].units if searchers else plan.units  # the plan's, and the adaptive points chosen
    evaluator.collect(None, table)
    _evaluate_best(plan, shared, table, tracker, results, sweep_dir, law, units)
    ended = _ended(plan, table, law, adaptive - (len(searchers[-1].adaptive_units) if searchers else 0))
    table.write()
    df = table.frame()
    wall = time.perf_counter() - t_start
    failed = int((df.status == "failed").sum())
    # The backlog of a down tracking server, the table reconciled into MLflow, the parent run ended;
    # what a still-down server cannot take waits in results/<sweep>/mlflow-pending.json.
    tracker.tag_parent({"ended": ended["reason"]})
    tracker.finish(table, {"wall_seconds": wall, "failed_trials": failed, "skipped_trials": ended["skipped"]},
                   "FINISHED" if failed == 0 else "FAILED")
    df = table.frame()
    timing = {"wall_seconds": wall + ray_seconds, "ray_start_seconds": ray_seconds,
              "mlflow_start_seconds": mlflow_seconds, "shared_seconds": shared_seconds,
              "tune_seconds": trials_seconds, "end_seconds": time.perf_counter() - t, "shared": shared.seconds}
    (sweep_dir / "timing.json").write_text(json.dumps(timing, indent=1))
    skipped = f", {ended['skipped']} skipped" if ended["skipped"] else ""
    log.info("sweep %s: %d trials (%d failed%s) in %.1f min; results: %s; MLflow: %s (experiment %s); its trials "
             "in the MLflow UI%s: %s", spec.name, len(df) - ended["skipped"], failed, skipped, wall / 60,
             sweep_dir / "trials.parquet", uri,
             experiment, "" if uri.startswith("http") else " (make mlflow-ui)", ui_url(uri, experiment_id))
    return df
