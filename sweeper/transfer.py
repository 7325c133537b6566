"""The hyperparameter law's backtest: would the largest searched width have done as well at the law's lr?

A sweep with ``search: {transfer: law, searched: [...]}`` searches the learning rate at a few widths and
gives every other width the lr of the law fitted to them (``analysis.hparams``). The backtest asks whether
that loses anything where it can be checked: it runs the sweep (or resumes it: a finished one starts
nothing), holds out the largest searched width, fits the law to the other searched widths' trials,
predicts the held-out width's best lr, and trains that width once more at the predicted lr (a second
sweep of one unit, ``<name>-transfer-h<width>``, on the same shared work). Compared: the rFID of the
searched width's evaluated best trial and the rFID at the predicted lr, each with its measurement error
(``rfid_se``, the bootstrap over the evaluation images); the transfer holds when they differ by less
than the transferred point's own ``rfid_se``. Trials: a sweep that searched only the other widths needs
(searched - 1) x n_trials + (widths - searched + 1) trials, against widths x n_trials with every width
searched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from .plan import build_plan
from .search import law_lr
from .spec import SpecError, load_spec


@dataclass(frozen=True)
class TransferBacktest:
    """The backtest's numbers (``asdict`` is its JSON)."""

    sweep: str
    held_out: int  # the width held out: the largest searched
    params: int
    fitted_on: list[int]  # the searched widths the law was fitted to
    law: str  # the law's equation, fitted without the held-out width
    lr_searched: float  # the held-out width's best trial's lr (its own study's)
    lr_predicted: float  # the law's value, within the search's range of lr (sweeper.search.law_lr)
    lr_ci: list[float]  # the law's CI of the mean at the held-out params (NaN without one: 2 points)
    rfid_searched: float
    rfid_searched_se: float
    rfid_transferred: float
    rfid_transferred_se: float
    difference: float  # rfid_transferred - rfid_searched
    within_error: bool  # |difference| <= rfid_transferred_se
    trials_all_searched: int  # every width searched
    trials_transfer: int  # the held-out width transferred instead of searched
    search_trials_all_searched: int
    search_trials_transfer: int

    def summary(self) -> str:
        ci = (f", 95% CI [{self.lr_ci[0]:.3g}, {self.lr_ci[1]:.3g}]" if all(map(math.isfinite, self.lr_ci))
              else " (no CI: a law through 2 points)")
        verdict = "within" if self.within_error else "NOT within"
        return "\n".join([
            f"hyperparameter transfer backtest, sweep {self.sweep}: width h = {self.held_out} ({self.params:,} "
            f"params) held out; law from h = {', '.join(map(str, self.fitted_on))}: {self.law}",
            f"  lr: searched {self.lr_searched:.4g}, predicted {self.lr_predicted:.4g}{ci}",
            f"  rFID: searched {self.rfid_searched:.4g} (se {self.rfid_searched_se:.3g}), at the predicted lr "
            f"{self.rfid_transferred:.4g} (se {self.rfid_transferred_se:.3g}): difference {self.difference:+.3g}, "
            f"{verdict} the transferred point's measurement error",
            f"  trials: {self.trials_transfer} with h = {self.held_out} transferred vs {self.trials_all_searched} "
            f"with every width searched ({self.trials_transfer / self.trials_all_searched:.2f}x; search trials "
            f"{self.search_trials_transfer} vs {self.search_trials_all_searched}, "
            f"{self.search_trials_transfer / self.search_trials_all_searched:.2f}x)"])


def backtest_transfer(spec_path, overrides: list[str] | None = None, address: str | None = None,
                      alpha: float = 0.05) -> TransferBacktest:
    """Run the backtest of the transfer sweep ``spec_path`` (with ``overrides``); raises SpecError on a spec
    without ``search.transfer: law`` over at least 3 searched widths."""
    from analysis.hparams import fit_hparam_law

    from .run import run_sweep

    overrides = list(overrides or [])
    spec = load_spec(spec_path, overrides)
    search = spec.search
    if search is None or search.transfer != "law" or len(search.searched) < 3:
        raise SpecError(f"{spec_path}: the backtest holds out one searched width and fits the law to the others; "
                        "expected search.transfer: law with at least 3 widths in search.searched")
    if len(spec.grid.fused_layers or [None]) > 1:
        raise SpecError(f"{spec_path}: grid.fused_layers: the backtest compares one layer count; expected one "
                        "(run it once per count, e.g. grid.fused_layers=[6])")
    table = run_sweep(build_plan(spec), address=address)
    held_out = max(search.searched)
    grid = table[(table.kind == "grid") & (table.lr_source == "searched")]
    rest = grid[grid.expert_hidden != held_out]
    law = fit_hparam_law(rest, param="lr", metric="val_l1", x="params", alpha=alpha)
    own = grid[(grid.expert_hidden == held_out) & grid.best.astype(bool) & grid.rfid.notna()]
    if own.empty:
        raise RuntimeError(f"sweep {spec.name}: the held-out width h = {held_out} has no evaluated best trial")
    params = int(own.params.iloc[0])
    frame = law.get_prediction([params]).summary_frame(alpha).iloc[0]
    lr = law_lr(law, params, search, f"h = {held_out} held out")  # as the sweep would have trained it
    second = load_spec(spec_path, [*overrides, f"name={spec.name}-transfer-h{held_out}",
                                   f"grid.expert_hidden=[{held_out}]", "search=null", f"phase2.lr={lr!r}",
                                   "controls.runs=[]", "stop=null", "law.target=null"])
    again = run_sweep(build_plan(second), address=address).query("kind == 'grid' and status == 'completed'")
    if again.empty:
        raise RuntimeError(f"sweep {second.name}: the trial at the predicted lr did not complete")
    searched_rfid, searched_se = _mean_and_se(own)
    rfid, se = _mean_and_se(again)
    seeds, n, k = len(spec.grid.seeds), search.n_trials, len(search.searched) - 1
    units = len(spec.grid.expert_hidden) * seeds
    return TransferBacktest(
        sweep=spec.name, held_out=held_out, params=params, fitted_on=sorted(set(search.searched) - {held_out}),
        law=law.equation, lr_searched=float(own["hp.lr"].iloc[0]), lr_predicted=lr,
        lr_ci=[float(frame["mean_ci_lower"]), float(frame["mean_ci_upper"])],
        rfid_searched=searched_rfid, rfid_searched_se=searched_se, rfid_transferred=rfid, rfid_transferred_se=se,
        difference=rfid - searched_rfid, within_error=abs(rfid - searched_rfid) <= se,
        trials_all_searched=units * n, trials_transfer=k * seeds * n + units - k * seeds,
        search_trials_all_searched=units * n, search_trials_transfer=k * seeds * n)


def _mean_and_se(rows: pd.DataFrame) -> tuple[float, float]:
    """The mean rFID over a point's seeds and its measurement error, sqrt(sum se^2) / k."""
    return float(rows.rfid.mean()), float(math.sqrt((rows.rfid_se.astype(float) ** 2).sum()) / len(rows))


def as_json(result: TransferBacktest) -> dict:
    """``result`` as JSON-ready values: a NaN (an undefined interval's bound) is null."""

    def ready(v):
        if isinstance(v, list):
            return [ready(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {k: ready(v) for k, v in asdict(result).items()}


