"""Per-point hyperparameter search: one Optuna study per unit, driven through one Ray Tune run.

Ray's ``OptunaSearch`` refuses a ``grid_search`` axis, and a single study over all capacities
would let the sampler trade capacity against learning rate. So ``UnitSearcher`` (a Tune
``Searcher``) keeps one real Optuna study per unit (grid point x seed) in an SQLite storage
beside the results, asks it for each new Tune trial of that unit and tells it the trial's final
validation loss. Units without a search block get exactly one trial with the spec's values.
``UnitMedianStopping`` prunes a trial whose validation loss is worse than the median of its own
unit's earlier trials at the same step (never across capacities).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import defaultdict
from dataclasses import asdict, replace

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher, SearchGenerator

from .trial_config import TrialConfig

log = logging.getLogger(__name__)


def distributions(search) -> dict:
    """Optuna distributions of a ``SearchSpec``."""
    out = {}
    for name, p in search.params.items():
        if p.type == "loguniform":
            out[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=True)
        elif p.type == "uniform":
            out[name] = optuna.distributions.FloatDistribution(p.low, p.high)
        elif p.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            out[name] = optuna.distributions.CategoricalDistribution(p.choices)
    return out


def grid_values(search, seed: int) -> list[dict]:
    """``sampler: grid``'s trials: the one parameter's ``n_trials`` values evenly spaced over [low, high] (in
    log10 for loguniform), ends included, in an order shuffled by ``seed`` (so that a pruner's median is not
    always set by the same end of the range). Optuna asks for them in that order (``Study.enqueue_trial``)."""
    import numpy as np

    (name, p), = search.params.items()
    values = (np.logspace(np.log10(p.low), np.log10(p.high), search.n_trials) if p.type == "loguniform"
              else np.linspace(p.low, p.high, search.n_trials))
    values[0], values[-1] = p.low, p.high  # exactly the bounds (10**log10 may round past them)
    return [{name: float(v)} for v in np.random.default_rng(seed).permutation(values)]


def law_lr(law, params: int, search, what: str) -> float:
    """The hyperparameter law's lr at ``params``, within the search's range [low, high] of lr: the range is where
    the spec says the learning rate may lie and where the searched widths looked, so a law extrapolated beyond it
    (e.g. a steep slope from two noisy optima) is clipped to the nearer bound, with a warning naming ``what``."""
    lr = float(law.predict([params])[0])
    p = search.params["lr"]
    clipped = min(max(lr, p.low), p.high)
    if clipped != lr:
        log.warning("%s: the hyperparameter law's lr = %.4g lies outside the searched range [%g, %g]; it trains at "
                    "%g, the nearer bound", what, lr, p.low, p.high, clipped)
    return clipped


class UnitSearcher(Searcher):
    """Suggests every unit's trials: fixed values, or asked from the unit's own Optuna study."""

    def __init__(self, units, search=None, storage: str | None = None, study_prefix: str = "", seed: int = 0):
        super().__init__()  # no Tune-level metric: results carry val_l1 only where it was measured
        # Longest first: the largest widths start at once instead of trailing behind the sweep.
        self.units = sorted(units, key=lambda u: -u.seconds / u.n_trials)
        self.search = search
        self.storage = storage
        self.study_prefix = study_prefix
        self.seed = seed
        self.asked = defaultdict(int)  # unit_id -> trials suggested
        self.live = {}  # tune trial id -> (unit_id, optuna trial number or None)
        self.law = None  # this run's sweeper.live.LiveLaw: once its stop rule is met, no new trial starts
        self.adaptive = 0  # how many adaptive points the sweep has in all (--adaptive N)
        self.adaptive_units = []  # those chosen so far (in self.units too), kept in the searcher's state
        self.chooser = None  # this run's sweeper.adaptive.AdaptiveChooser
        self._studies = {}
        self._hparam_laws = {}  # fused_layers -> the hyperparameter law (or why there is none), fitted once

    # Optuna studies are re-opened from their storage, never pickled (the hyperparameter laws are refitted from
    # them); the live law and chooser are this run's.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_studies={}, law=None, chooser=None, _hparam_laws={})
        return state

    def __setstate__(self, state):
        self.__dict__.update({"law": None, "adaptive": 0, "adaptive_units": [], "chooser": None, "_hparam_laws": {},
                              **state})

    def study(self, unit_id: str) -> optuna.Study:
        if unit_id not in self._studies:
            s = self.search
            # Each unit's sampler its own seed: one seed for all would try the same values at every width
            # (what the hyperparameter law then sees is a fixed grid, not the search space). Where a fixed grid
            # is what the user asked for (sampler: grid), the seed only shuffles its order.
            seed = (self.seed + zlib.crc32(unit_id.encode())) % 2**32
            sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, s.n_trials // 2))
                       if s.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
            study = optuna.create_study(study_name=f"{self.study_prefix}{unit_id}", storage=self.storage,
                                        sampler=sampler, direction="minimize", load_if_exists=True)
            if s.sampler == "grid" and not study.trials:  # a resumed study keeps its queue in its storage
                for params in grid_values(s, seed):
                    study.enqueue_trial(params)
            self._studies[unit_id] = study
        return self._studies[unit_id]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.law is not None and self.law.stopped is not None:
            return Searcher.FINISHED
        waiting = False  # a width whose learning rate comes from the law waits for the searched widths
        for unit in self.units:
            if self.asked[unit.unit_id] >= unit.n_trials:
                continue
            if unit.lr_source == "law":
                config = self.transferred(unit, trial_id)
                if config is None:
                    waiting = True
                    continue
                return config
            index = self.asked[unit.unit_id]
            self.asked[unit.unit_id] += 1
            if self.search is None or unit.kind == "control":
                self.live[trial_id] = (unit.unit_id, None)
                return TrialConfig.of(unit, {}, evaluate=True, index=index).to_tune()
            ot = self.study(unit.unit_id).ask(distributions(self.search))
            self.live[trial_id] = (unit.unit_id, ot.number)
            # With search, only the unit's best trial is evaluated (by the driver, once the unit's search ends).
            return TrialConfig.of(unit, dict(ot.params), evaluate=False, index=index).to_tune()
        if len(self.adaptive_units) < self.adaptive and self.chooser is not None:
            by_id = {u.unit_id: u for u in self.units}
            unit = self.chooser([by_id[uid] for uid, _ in self.live.values() if uid in by_id], self.units)
            if unit is not None:
                self.units.append(unit)
                self.adaptive_units.append(unit)
                log.info("adaptive point %d of %d: %s", len(self.adaptive_units), self.adaptive, unit.unit_id)
                return self.suggest(trial_id)
            if self.live:
                return None  # the law waits for the running trials: asked again on Tune's next step
            log.warning("adaptive: %d of %d adaptive points chosen; no more: %s", len(self.adaptive_units),
                        self.adaptive, self.chooser.why_not)
        return None if waiting else Searcher.FINISHED

    # --- search.transfer: law ------------------------------------------------------------------------

    def transferred(self, unit, trial_id: str) -> dict | None:
        """The Tune config of ``unit``'s one trial at the hyperparameter law's learning rate, or None while a
        searched width of its layer count has trials to start or running (Tune asks again on its next step).

        Where no law can be fitted (e.g. fewer than 2 searched widths completed a trial), the trial runs at
        phase2.lr, with ``lr_source`` "spec" and a warning saying why.
        """
        searched = [u for u in self.units if u.lr_source == "searched" and u.fused_layers == unit.fused_layers]
        running = {uid for uid, _ in self.live.values()}
        if any(self.asked[u.unit_id] < u.n_trials or u.unit_id in running for u in searched):
            return None
        law = self.hparam_law(unit.fused_layers, searched)
        index = self.asked[unit.unit_id]
        self.asked[unit.unit_id] += 1
        self.live[trial_id] = (unit.unit_id, None)
        if isinstance(law, str):
            log.warning("%s trains at phase2.lr: no hyperparameter law (%s)", unit.unit_id, law)
            return replace(TrialConfig.of(unit, {}, evaluate=True, index=index), lr_source="spec").to_tune()
        lr = law_lr(law, unit.params, self.search, unit.unit_id)
        log.info("%s (%d params) trains at the hyperparameter law's lr = %.4g", unit.unit_id, unit.params, lr)
        return TrialConfig.of(unit, {"lr": lr}, evaluate=True, index=index).to_tune()

    def hparam_law(self, fused_layers: int, searched):
        """The law of the best learning rate against params (``analysis.hparams``) fitted to every completed trial
        of the ``searched`` units' studies, once; a string saying why where it cannot be fitted."""
        if fused_layers not in self._hparam_laws:
            import pandas as pd

            from analysis import AnalysisError
            from analysis.hparams import fit_hparam_law

            rows = [{"point_id": u.point_id, "unit_id": u.unit_id, "kind": "grid", "status": "completed",
                     "seed": u.seed, "expert_hidden": u.expert_hidden, "fused_layers": u.fused_layers,
                     "params": u.params, "hp.lr": t.params["lr"], "val_l1": t.value, "lr_source": "searched"}
                    for u in searched for t in self.study(u.unit_id).get_trials(
                        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
            try:
                law = fit_hparam_law(pd.DataFrame(rows), param="lr", metric="val_l1", x="params")
                log.info("hyperparameter law from %d searched trials at %d widths: %s", len(rows),
                         len({r["point_id"] for r in rows}), law.equation)
            except AnalysisError as err:
                law = str(err)
            self._hparam_laws[fused_layers] = law
        return self._hparam_laws[fused_layers]

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        unit_id, number = self.live.pop(trial_id, (None, None))
        if number is None:
            return
        study = self.study(unit_id)
        value = None if result is None else result.get("val_l1")
        if error or value is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif not result.get("final", False):  # stopped early by the scheduler
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(number, float(value))

    # Tune saves a searcher's state into the experiment (``searcher-state-*.pkl``, a name of Tune's) and
    # hands it back on ``Tuner.restore``: written as JSON, read as JSON (never unpickled). The rest of
    # the searcher (units, search spec, storage) is this run's own; its Optuna studies are in SQLite.
    STATE_VERSION = 1

    def save(self, checkpoint_path: str):
        state = {"version": self.STATE_VERSION, "asked": dict(self.asked),
                 "live": {tid: [unit_id, number] for tid, (unit_id, number) in self.live.items()},
                 "adaptive_units": [{**asdict(u), "layers": list(u.layers)} for u in self.adaptive_units]}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)  # ValueError on anything but the JSON that save wrote
        if not isinstance(state, dict) or state.get("version") != self.STATE_VERSION:
            raise ValueError(f"{checkpoint_path}: not a UnitSearcher state (version {self.STATE_VERSION})")
        self.asked = defaultdict(int, {str(k): int(v) for k, v in state["asked"].items()})
        self.live = {str(tid): (str(unit_id), None if number is None else int(number))
                     for tid, (unit_id, number) in state["live"].items()}
        from .plan import Unit

        self.adaptive_units = [Unit(**{**u, "layers": tuple(u["layers"])}) for u in state.get("adaptive_units", [])]
        known = {u.unit_id for u in self.units}
        self.units = [*self.units, *(u for u in self.adaptive_units if u.unit_id not in known)]


class SweepSearch(SearchGenerator):
    """Tune's SearchGenerator around the sweep's searcher, which alone decides, on every run, when the
    sweep has no more trials.

    Tune saves whether the search had finished, and how many trials it was to create, with the
    experiment and restores both on ``Tuner.restore`` (a resumed ``Tuner.fit`` takes no
    ``num_samples``): a sweep ended by its stop rule would then never ask again, though rerun with
    another threshold. Restored here: only the count of trials created (and the experiment); the total
    is this run's ``num_samples`` (``total``, set before a resumed fit), and the search is finished
    only when the searcher says so again.
    """

    def __init__(self, searcher, total: int | None = None):
        super().__init__(searcher)
        self.total = total

    def set_state(self, state: dict):
        self._counter, self._experiment = state["counter"], state["experiment"]
        self._total_samples = state["total_samples"] if getattr(self, "total", None) is None else self.total


def unit_searcher(search_alg) -> UnitSearcher | None:
    """The UnitSearcher inside Tune's search algorithm (SweepSearch, ConcurrencyLimiter, ...)."""
    while search_alg is not None and not isinstance(search_alg, UnitSearcher):
        search_alg = getattr(search_alg, "searcher", None)
    return search_alg


class UnitMedianStopping(FIFOScheduler):
    """Stop a searched trial whose val_l1 is above the median of its unit's earlier trials at that step."""

    def __init__(self, min_trials: int = 2):
        super().__init__()
        self.min_trials = min_trials
        self.curves = defaultdict(dict)  # unit_id -> {tune trial id -> {step: val_l1}}

    def on_trial_result(self, tune_controller, trial, result):
        if "val_l1" not in result or result.get("final"):
            return TrialScheduler.CONTINUE
        config = TrialConfig.from_tune(trial.config)
        if config.n_trials < 2:
            return TrialScheduler.CONTINUE
        unit, step = config.unit_id, result.get("step")
        self.curves[unit].setdefault(trial.trial_id, {})[step] = result["val_l1"]
        others = [c[step] for tid, c in self.curves[unit].items() if tid != trial.trial_id and step in c]
        if len(others) >= self.min_trials:
            others.sort()
            median = others[len(others) // 2] if len(others) % 2 else 0.5 * (others[len(others) // 2 - 1]
                                                                               + others[len(others) // 2])
            if result["val_l1"] > median:
                log.info("pruning %s at step %s: val_l1 %.4f > unit median %.4f", config.trial_id, step,
                         result["val_l1"], median)
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE
