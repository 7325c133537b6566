"""What one trial runs: the control runs a sweep may add, and the typed config of one Tune trial.

Tune carries a trial's config as a flat dict (its searcher suggests dicts, its experiment state and
the MLflow params and results table read them): ``TrialConfig.to_tune`` writes that dict,
``TrialConfig.from_tune`` reads it back where the trial runs, so the code that runs a trial reads
typed fields, never dict keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum


class Control(StrEnum):
    """A control run beside the grid, to attribute the gain (design.md section 5); its value is its point id."""

    RAE = "rae"  # the shared phase-1 decoder on z_base, evaluated as it is: the plain RAE baseline
    DECODER_ONLY = "decoder_only"  # the decoder trained further on z_base for the phase-2 budget, no fusion
    LAST_LAYER = "last_layer"  # fusion of the last block alone, at one width


@dataclass(frozen=True)
class TrialConfig:
    """One trial of one unit (a grid point or a control, at one seed)."""

    trial_id: str  # "<unit_id>-t<index>"
    unit_id: str
    point_id: str  # "h<width>-k<layers>" for a grid point; a control's name
    kind: str  # "grid" or "control"
    expert_hidden: int | None  # None: no fusion module (the rae and decoder_only controls)
    fused_layers: int
    layers: tuple[int, ...]  # the fused encoder blocks; () for no fusion
    seed: int
    params: int  # trainable parameters (the capacity on the x-axis)
    hp: dict = field(default_factory=dict)  # the searched hyperparameters (empty without search)
    evaluate: bool = True  # rFID after training (with search only the unit's best trial is, by the driver)
    n_trials: int = 1  # the unit's trials (Optuna's), for the scheduler's per-unit pruning
    lr_source: str = "spec"  # where hp's lr comes from: "searched", "law" (search.transfer) or "spec" (phase2.lr)

    @property
    def control(self) -> Control | None:
        """Which control this trial is, None for a grid point."""
        return Control(self.point_id) if self.kind == "control" else None

    @classmethod
    def of(cls, unit, hp: dict, evaluate: bool, index: int) -> TrialConfig:
        """Trial ``index`` of ``unit`` (a ``plan.Unit``) with the hyperparameters ``hp``."""
        return cls(trial_id=f"{unit.unit_id}-t{index}", unit_id=unit.unit_id, point_id=unit.point_id,
                   kind=unit.kind, expert_hidden=unit.expert_hidden, fused_layers=unit.fused_layers,
                   layers=tuple(unit.layers), seed=unit.seed, params=unit.params, hp=dict(hp), evaluate=evaluate,
                   n_trials=unit.n_trials, lr_source=unit.lr_source)

    def to_tune(self) -> dict:
        """The dict Tune carries: these fields, layers as a list (as the MLflow params show them)."""
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_tune(cls, config: dict) -> TrialConfig:
        """The trial of a Tune config ``to_tune`` wrote (also one of an earlier run of the sweep, resumed)."""
        values = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        return cls(**{**values, "layers": tuple(values["layers"]), "hp": dict(values.get("hp") or {})})
