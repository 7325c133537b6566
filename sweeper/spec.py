"""Sweep specs: YAML in ``sweeps/`` -> one typed, validated ``SweepSpec``, before anything runs.

``load_spec(path, overrides)`` is the one pure function from text to config. Every problem is a
``SpecError`` whose message is one line naming the file and the dotted key (or the line and column).

Nothing a spec or an override says can hang the tool or exhaust its memory: the file is read only if
it is a regular file of at most 1 MB; the YAML may nest at most 50 levels and hold at most 20,000 values
counting every alias as the values it stands for (a "billion laughs" of 1.2 KB is refused at once);
every integer fits in 64 bits and every float is finite; a sweep has at most 10,000 units.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from drorae_io import UserInputError, read_regular_file
from model import DECODER_PRESETS, ENCODER_PRESETS, DecoderConfig, EncoderConfig, FusionConfig, PhaseConfig
from model.config import (
    CONFIG,
    INT64_MAX,
    INT64_MIN,
    BadValue,
    Float,
    Int,
    Text,
    check_keys,
    describe,
    did_you_mean,
    kind_of,
    short_repr,
)
from model.data import DataConfig
from model.errors import UserError
from model.fusion import BetaMax
from model.losses import LpipsNet

from .trial_config import Control


class SpecError(UserError):
    """A sweep spec or override that cannot run."""


# Bounds on what a spec may ask for (module docstring); each is far beyond any real sweep.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_VALUES = 20_000  # scalars, lists and mappings, each alias counted as all the values it stands for
MAX_YAML_DEPTH = 50
MAX_UNITS = 10_000
MAX_NAME = 100

# A seed: what torch.manual_seed, numpy's generators and Optuna's samplers all accept.
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]


class _Strict(BaseModel):
    """A section of the sweep's own: frozen, an unknown key is an error with a did-you-mean hint, and (as
    in every model config: ``model.config``) no float is infinite or NaN, no boolean or string a number."""

    model_config = ConfigDict(**CONFIG, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw):
        if isinstance(raw, dict):
            check_keys(raw, cls.model_fields)
        return raw


# --- sections that are model configs ---------------------------------------------------------
# The model's own configs validate these (model.config): their fields, defaults and bounds live there.
# A few of their fields the sweep sets from keys of its own; a section that sets one is an error.


def _not_set_here(raw, owned: dict[str, str]):
    """``raw``, unless it sets a field that the sweep sets itself (``owned``: field -> the sweep's key for it)."""
    for key, where in owned.items():
        if isinstance(raw, dict) and key in raw:
            raise BadValue(key, f"set by the sweep ({where}); remove it here")
    return raw


def _dump(cfg, owned: dict[str, str]) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in owned}


_PHASE_OWNED = {"seed": "the top-level seed for phase 1, grid.seeds for phases 2-3"}
Phase = Annotated[PhaseConfig, BeforeValidator(lambda raw: _not_set_here(raw, _PHASE_OWNED)),
                  PlainSerializer(lambda cfg: _dump(cfg, _PHASE_OWNED))]


class _PresetSection(BaseModel):
    """A model config given as a preset (a name in ``PRESETS``) with any of the config's fields over it.

    The spec file writes the section flat (``decoder: {preset: tiny, depth: 4}``); ``config`` is the
    resolved model config, and the section dumps flat again, resolved.
    """

    model_config = ConfigDict(**CONFIG, frozen=True)
    KIND: ClassVar[str]
    PRESETS: ClassVar[dict]
    OWNED: ClassVar[dict[str, str]] = {}  # config fields the sweep sets: the sweep's key for each

    preset: str | None
    config: Any

    @classmethod
    def default_preset(cls, raw: dict) -> str | None:
        return "tiny"

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, raw):
        if not isinstance(raw, dict):
            return raw  # a resolved section, or not a mapping (pydantic says so)
        config_type = cls.model_fields["config"].annotation
        check_keys(raw, ["preset", *config_type.__pydantic_fields__])
        fields = dict(_not_set_here(raw, cls.OWNED))
        preset = fields.pop("preset", cls.default_preset(raw))
        if preset is not None and not isinstance(preset, str):
            raise BadValue("preset", f"expected the name of a {cls.KIND} preset, got {kind_of(preset)}; expected one "
                                     f"of {', '.join(cls.PRESETS)}")
        if preset is not None and preset not in cls.PRESETS:
            raise BadValue("preset", f"unknown {cls.KIND} preset {preset!r}{did_you_mean(preset, cls.PRESETS)}; "
                                     f"expected one of {', '.join(cls.PRESETS)}")
        base = asdict(cls.PRESETS[preset]) if preset is not None else {}
        return {"preset": preset, "config": TypeAdapter(config_type).validate_python({**base, **fields})}

    @model_serializer
    def _flat(self) -> dict:
        return {"preset": self.preset, **_dump(self.config, self.OWNED)}


class EncoderSection(_PresetSection):
    """``encoder:`` a preset of ``model.ENCODER_PRESETS`` (or a timm ``name``), with EncoderConfig fields over it."""

    KIND, PRESETS, OWNED = "encoder", ENCODER_PRESETS, {"layers": "grid.fused_layers"}
    config: EncoderConfig

    @classmethod
    def default_preset(cls, raw: dict) -> str | None:
        # A timm name without an explicit preset starts from EncoderConfig's defaults, not the tiny preset's.
        return None if "name" in raw else "tiny"


class DecoderSection(_PresetSection):
    """``decoder:`` a preset of ``model.DECODER_PRESETS``, with DecoderConfig fields over it."""

    KIND, PRESETS = "decoder", DECODER_PRESETS
    config: DecoderConfig


# --- the sweep's own sections ----------------------------------------------------------------


class GridSpec(_Strict):
    expert_hidden: list[Int] = Field(min_length=1)
    fused_layers: list[Int] | None = None  # None: all of the encoder's blocks
    seeds: list[Seed] = Field([0], min_length=1)

    @property
    def n_units(self) -> int:
        """Grid points x seeds (the controls come on top)."""
        return len(self.fused_layers or [None]) * len(self.expert_hidden) * len(self.seeds)

    @field_validator("expert_hidden", "fused_layers")
    @classmethod
    def _positive_unique(cls, v):
        if v is None:
            return v
        bad = [x for x in v if x < 1]
        if bad:
            raise ValueError(f"expected positive integers, got {bad[0]} in {v}")
        dup = _first_duplicate(v)
        if dup is not None:
            raise ValueError(f"duplicate value {dup} in {v}; each grid point must be listed once")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v):
        dup = _first_duplicate(v)
        if dup is not None:
            raise ValueError(f"duplicate seed {dup} in {v}; each seed must be listed once")
        return v


def _first_duplicate(values):
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


class ParamSpec(_Strict):
    """One searched hyperparameter of phase 2."""

    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    choices: list[Any] | None = None  # checked against the searched value's type (SearchSpec)

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


SEARCHABLE = ("lr", "weight_decay", "warmup_steps", "batch_size", "beta_max")


@cache
def searched_type(name: str) -> tuple[TypeAdapter, bool]:
    """The validator of a searchable value (phase 2's field, or the fusion's beta_max) and whether it is an int."""
    if name == "beta_max":
        return TypeAdapter(BetaMax), False
    field = PhaseConfig.__pydantic_fields__[name]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)], config=CONFIG), field.annotation is int


def _check_param(name: str, p: ParamSpec) -> None:
    """BadValue unless every value ``p`` can draw is one that phase 2 (or the fusion) accepts for ``name``."""
    adapter, integer = searched_type(name)
    where = "the fusion's beta_max" if name == "beta_max" else f"phase2.{name}"
    if integer and p.type in ("uniform", "loguniform"):
        raise BadValue(f"{name}.type", f"{p.type} draws real numbers, but {where} is an integer; "
                                       "expected type int or categorical")
    values = ([(f"choices.{i}", c) for i, c in enumerate(p.choices)] if p.type == "categorical"
              else [("low", p.low), ("high", p.high)])
    for key, value in values:
        if p.type == "int" and not float(value).is_integer():
            raise BadValue(f"{name}.{key}", f"expected a whole number for type int, got {kind_of(value)}")
        try:
            adapter.validate_python(int(value) if p.type == "int" else value)
        except ValidationError as err:
            raise BadValue(f"{name}.{key}", f"{describe(err)} (what {where} accepts)") from None


class SearchSpec(_Strict):
    """Per-point Optuna search over phase-2 hyperparameters, on the cheap validation loss."""

    params: dict[str, ParamSpec] = Field(min_length=1)
    n_trials: Int = Field(4, gt=0)
    # grid: the one real parameter's n_trials values, evenly spaced (in log10 for loguniform) over [low, high],
    # each tried once: every searched width sees the whole range and the same values (what transfer: law wants)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    metric: Literal["val_l1"] = "val_l1"
    # transfer: law searches only the widths in ``searched``; every other width trains once at the learning rate
    # of the hyperparameter law (analysis.hparams) fitted to the searched points' trials, once they have ended.
    transfer: Literal["none", "law"] = "none"
    searched: list[Int] | None = None

    @field_validator("params")
    @classmethod
    def _searchable(cls, v):
        bad = [k for k in v if k not in SEARCHABLE]
        if bad:
            raise ValueError(f"cannot search {bad[0]!r}; expected some of {', '.join(SEARCHABLE)}")
        for name, p in v.items():
            _check_param(name, p)
        return v

    @model_validator(mode="after")
    def _grid(self):
        if self.sampler == "grid":
            if len(self.params) != 1 or next(iter(self.params.values())).type not in ("uniform", "loguniform"):
                raise BadValue("sampler", "grid spaces one real parameter's n_trials values over [low, high]; "
                                          "expected params to be one parameter of type loguniform or uniform")
            if self.n_trials < 2:
                raise BadValue("n_trials", f"grid spaces n_trials values from low to high; expected at least 2, "
                                           f"got {self.n_trials}")
        return self

    @model_validator(mode="after")
    def _transfer(self):
        if self.transfer == "none":
            if self.searched is not None:
                raise BadValue("searched", "lists the widths whose learning rate is searched when the others take "
                                           "the law's; expected it only with transfer: law")
            return self
        if self.searched is None:
            raise BadValue("transfer", "law needs searched: the widths to search (at least 2; 3 or more give the "
                                       "law a confidence interval)")
        if set(self.params) != {"lr"}:
            raise BadValue("transfer", f"law transfers the learning rate alone; expected params to be just lr, got "
                                       f"{', '.join(self.params)}")
        if self.params["lr"].type not in ("loguniform", "uniform") or self.params["lr"].low <= 0:
            raise BadValue("params.lr", "transfer: law fits log10(lr) against log10(params); expected type "
                                        "loguniform (or uniform with low > 0)")
        dup = _first_duplicate(self.searched)
        if dup is not None:
            raise BadValue("searched", f"duplicate width {dup} in {self.searched}")
        if len(self.searched) < 2:
            raise BadValue("searched", f"a law needs at least 2 searched widths, got {self.searched}")
        return self


class ControlsSpec(_Strict):
    """Control runs beside the grid, to attribute the gain (design.md section 5)."""

    runs: list[Control] = []
    last_layer_hidden: Int | None = Field(None, gt=0)  # None: the grid's largest width

    @field_validator("runs")
    @classmethod
    def _once_each(cls, v):
        dup = _first_duplicate(v)
        if dup is not None:
            raise ValueError(f"duplicate control {dup.value!r} in {[c.value for c in v]}; each control must be "
                             "listed once")
        return v


class ResourcesSpec(_Strict):
    cpu: Float = Field(1.0, gt=0)
    gpu: Float = Field(0.0, ge=0)  # per trial; fractional: trials share a GPU
    # GPU share of the trials of given expert widths, e.g. {128: 0.25, 512: 0.5}: four of the
    # smallest points train on one GPU at once; other widths and the controls take `gpu`.
    gpu_share: dict[Int, Float] = {}
    max_concurrent: Int = Field(0, ge=0)  # 0: as many as the resources allow
    max_failures: Int = Field(1, ge=0)  # retries of a failed trial (Ray Tune FailureConfig)
    reuse_actors: bool = True  # Tune runs the next trial in a finished trial's process: no new worker
    # importing torch per trial (about 5-8 s each on a laptop); false gives every trial a fresh process
    # torch threads of the shared work (encoder pretraining, features, phase 1): fixed, because a parallel
    # reduction's rounding depends on the thread count, so the shared work's result does not depend on the
    # machine's core count; part of its cache key
    shared_threads: Int = Field(2, gt=0)

    @field_validator("gpu_share", mode="before")
    @classmethod
    def _json_keys(cls, v):
        # JSON (the spec's dump: its MLflow params) writes a mapping's keys as strings: '128' is the width 128
        if isinstance(v, dict):
            return {int(k) if isinstance(k, str) and re.fullmatch(r"[0-9]{1,18}", k) else k: f for k, f in v.items()}
        return v

    @model_validator(mode="after")
    def _shares(self):
        if self.gpu_share and self.gpu <= 0:
            raise ValueError("gpu_share needs resources.gpu > 0 (the share of every other trial)")
        bad = {w: f for w, f in self.gpu_share.items() if w <= 0 or not 0 < f <= 1}
        if bad:
            raise ValueError(f"gpu_share: expected positive widths mapped to fractions in (0, 1], got {bad}")
        return self

    def gpu_for(self, expert_hidden: int | None) -> float:
        """The GPU share of a trial of this expert width (None: a control without fusion)."""
        return self.gpu_share.get(expert_hidden, self.gpu) if expert_hidden else self.gpu


class EvalSpec(_Strict):
    """The evaluation split (what is reported) and the selection split (what the search sees): sweeper.splits."""

    n_images: Int = Field(gt=1)  # the evaluation split: the first n_images validation images; FID depends on n
    batch_size: Int = Field(32, gt=0)
    lpips_net: LpipsNet = "alex"
    # Where the FID Inception runs: auto = ONNX Runtime on CPU (2.1-2.4x PyTorch's images/s; rFID within 1e-3 of
    # torch-fidelity's; PyTorch if it fails), PyTorch on CUDA; onnxruntime: the same, but an error where ONNX
    # Runtime is missing or fails; torch: PyTorch everywhere (torch-fidelity's features bit for bit).
    inception_runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    select_from: Literal["val", "train"] = "val"  # val: validation images after the evaluation ones; train: held out
    select_images: Int | None = Field(None, gt=0)  # the selection split's size; null with val: all the rest


class FeatureCacheSpec(_Strict):
    max_gb: Float = Field(4.0, ge=0)  # frozen-encoder features are cached when they fit; 0 disables


class TrackingSpec(_Strict):
    uri: Text | None = None  # None: sqlite:///<results>/mlflow.db; MLFLOW_TRACKING_URI wins when set
    experiment: Text | None = None  # None: the sweep's name


class FaultsSpec(_Strict):
    """Deliberate faults, for testing the sweep's failure handling on real trials."""

    # Each names units of the sweep's plan (sweeper.plan checks that they exist).
    nan_loss: list[str] = []  # unit ids whose training images are NaN (a real NaN loss)
    raise_error: list[str] = []  # unit ids whose trial raises before training
    inf_loss: list[str] = []  # unit ids whose training images are +inf (a real non-finite loss)
    oom: list[str] = []  # unit ids whose trial asks the allocator for far more memory than there is


class LawSpec(_Strict):
    """The live law (``sweeper.live``): refitted by the driver whenever a point's rFID arrives."""

    panel: Literal["unified", "capacity"] = "unified"  # every grid row, or the most common layer count's
    form: Literal["log-linear", "linear", "power", "saturating"] = "log-linear"
    target: Float | None = Field(None, gt=0)  # a capacity to predict at (default: stop.target, if any)
    alpha: Float = Field(0.05, gt=0, lt=1)  # the intervals' level: 1 - alpha


class StopSpec(_Strict):
    """End the sweep once the law's interval at ``target`` is narrower than asked (``sweeper.live``).

    Exactly one of ``pi_width_below`` (the prediction interval of a new run there) and
    ``ci_width_below`` (the interval of the law's mean there). Trials Tune has already started, or
    queued for a free CPU, finish; the rest are recorded as ``skipped``.
    """

    target: Float | None = Field(None, gt=0)  # default: law.target
    pi_width_below: Float | None = Field(None, gt=0)
    ci_width_below: Float | None = Field(None, gt=0)
    min_points: Int = Field(3, ge=3)  # never before this many points of the law

    @model_validator(mode="after")
    def _one_width(self):
        if (self.pi_width_below is None) == (self.ci_width_below is None):
            raise ValueError("expected exactly one of pi_width_below (the prediction interval's width at the target) "
                             "and ci_width_below (the width of the mean's interval there)")
        return self

    @property
    def interval(self) -> str:
        """``pi`` or ``ci``: which interval's width ends the sweep."""
        return "pi" if self.pi_width_below is not None else "ci"

    @property
    def width_below(self) -> float:
        return self.pi_width_below if self.pi_width_below is not None else self.ci_width_below


class SweepSpec(_Strict):
    """Everything one sweep needs; validated before anything runs."""

    name: str
    description: str = ""
    encoder: EncoderSection = Field({}, validate_default=True)
    decoder: DecoderSection = Field({}, validate_default=True)
    data: DataConfig = DataConfig()
    beta_max: BetaMax = FusionConfig.beta_max  # the fusion's bound, unless searched
    phase1: Phase
    phase2: Phase
    phase3: Phase | None = None
    grid: GridSpec
    search: SearchSpec | None = None
    controls: ControlsSpec = ControlsSpec()
    resources: ResourcesSpec = ResourcesSpec()
    eval: EvalSpec
    feature_cache: FeatureCacheSpec = FeatureCacheSpec()
    tracking: TrackingSpec = TrackingSpec()
    results_dir: Text = "results"  # results/<name>/ holds the table, the Ray storage and the MLflow db
    storage_path: Text | None = None  # Ray Tune storage; None: <results_dir>/<name>/ray (a shared path on clusters)
    cache_dir: Text | None = None  # shared caches; None: $DRORAE_CACHE or ~/.cache/drorae-scaling
    seed: Seed = 0  # seed of the shared work (encoder pretraining, phase 1)
    faults: FaultsSpec = FaultsSpec()
    law: LawSpec = LawSpec()
    stop: StopSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return check_name(v)

    @model_validator(mode="after")
    def _units(self):
        n_controls = len(self.controls.runs)
        n = self.grid.n_units + n_controls
        if n > MAX_UNITS:
            g = self.grid
            layers = f"{len(g.fused_layers)} layer counts x " if g.fused_layers else ""
            raise ValueError(f"grid: {n} units ({layers}{len(g.expert_hidden)} widths x {len(g.seeds)} seeds"
                             f"{f' + {n_controls} controls' if n_controls else ''}); expected at most {MAX_UNITS}: "
                             "split the sweep into several")
        return self

    @model_validator(mode="after")
    def _stop_target(self):
        stop, law = self.stop, self.law
        if stop is None:
            return self
        if stop.target is None and law.target is None:
            raise ValueError("stop.target: required (the capacity whose interval ends the sweep), unless law.target "
                             "is set")
        if stop.target is not None and law.target is not None and stop.target != law.target:
            raise ValueError(f"stop.target ({stop.target:g}) differs from law.target ({law.target:g}); set one of "
                             "them (the stop rule and the live law predict at the same capacity)")
        return self

    @model_validator(mode="after")
    def _searched_in_grid(self):
        search = self.search
        if search is None or search.searched is None:
            return self
        missing = [h for h in search.searched if h not in self.grid.expert_hidden]
        if missing:
            raise ValueError(f"search.searched: width {missing[0]} is not in grid.expert_hidden "
                             f"{self.grid.expert_hidden}; expected some of its widths")
        return self

    @property
    def target(self) -> float | None:
        """The capacity the live law predicts at, and the stop rule reads: law.target, else stop.target."""
        return self.law.target if self.law.target is not None else (self.stop.target if self.stop else None)

    @model_validator(mode="after")
    def _eval_fits_validation(self):
        ev, data = self.eval, self.data
        if ev.n_images > data.num_val:
            raise ValueError(f"eval.n_images ({ev.n_images}) exceeds data.num_val ({data.num_val})")
        if ev.select_from == "val":
            rest = data.num_val - ev.n_images
            if rest < 1:
                raise ValueError(f"eval: no validation images are left for the selection split (data.num_val = "
                                 f"eval.n_images = {ev.n_images}); raise data.num_val or set eval.select_from: train")
            if ev.select_images is not None and ev.select_images > rest:
                raise ValueError(f"eval.select_images ({ev.select_images}) exceeds the {rest} validation images "
                                 f"after the evaluation ones (data.num_val - eval.n_images)")
        else:
            if ev.select_images is None:
                raise ValueError("eval.select_images: required with select_from: train (how many training images "
                                 "to hold out for selection)")
            if data.num_train is not None and ev.select_images >= data.num_train:
                raise ValueError(f"eval.select_images ({ev.select_images}) leaves no training images "
                                 f"(data.num_train = {data.num_train})")
        return self

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir) / self.name


# What a sweep's results_dir holds beside the sweeps' own directories, whose names a sweep therefore cannot
# take: the MLflow database (sweeper.experiment.tracking_uri) with SQLite's files beside it, and the
# directory --restart sets an earlier sweep aside as (sweeper.run._archive). The lock, .<name>.lock, starts
# with a '.', which no name does.
RESULTS_FILES = ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm")
ARCHIVE_MARK = ".before-restart-"


def check_name(name: str) -> str:
    """``name`` if it can name a sweep (its directory, lock and MLflow experiment), else ValueError saying why."""
    if len(name) > MAX_NAME:
        raise ValueError(f"{len(name)} characters; expected at most {MAX_NAME} (it names a directory and files)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"expected letters, digits, '_', '-' or '.', starting with a letter or digit (it names "
                         f"a directory and files), got {short_repr(name)}")
    if name.casefold() in RESULTS_FILES:
        raise ValueError(f"{name!r} is a file of results_dir (the MLflow database beside the sweeps); "
                         "choose another name")
    if ARCHIVE_MARK in name:
        raise ValueError(f"{name!r} is how --restart names an earlier sweep's directory "
                         f"('<name>{ARCHIVE_MARK}<time>'); choose another name")
    return name


# --- loading ---------------------------------------------------------------------------------


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a spec may not hold: too deep, too many values, an alias that holds
    itself, an integer out of 64 bits, a value its tag cannot make (``!!float abc``, a 13th month)."""


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `3e-4` as a float (YAML 1.2) rather than a string (YAML 1.1).

    A key given twice in one mapping is an error (YAML requires unique keys; PyYAML would silently
    keep the last, so a second `grid:` block would replace the first unnoticed).

    Bounded, while it composes (before anything is built): at most ``MAX_YAML_DEPTH`` levels of nesting
    (PyYAML's composer recurses: 3000 levels were a RecursionError) and ``MAX_YAML_VALUES`` values, an
    alias counting as every value of what it refers to (PyYAML shares an alias's node, but everything
    downstream walks it as a tree: 9 aliases of 9 aliases ... are 9^9 values, a "billion laughs").
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[yaml.Node, int] = {}  # a composed node -> the values it stands for

    def _count(self, n: int, mark) -> None:
        self._values += n
        if self._values > MAX_YAML_VALUES:
            raise _Refused(None, None, f"more than {MAX_YAML_VALUES} values (each alias counted as the values it "
                                       "stands for); expected a spec far smaller", mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self._sizes:  # still being composed: the alias is inside its own anchor
                raise _Refused(None, None, f"alias *{event.anchor} inside the value it refers to (a recursive "
                                           "alias)", event.start_mark)
            self._count(self._sizes[node], event.start_mark)
            return node
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        before = self._values
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event.start_mark)
        self._sizes[node] = self._values - before
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. `2001-13-45` (a timestamp: ValueError), `!!float abc`, `!!timestamp x`
            what = f"{short_repr(node.value)} as {node.tag.rsplit(':', 1)[-1]}" if isinstance(node, yaml.ScalarNode) \
                else f"this {node.id}"
            raise _Refused(None, None, f"cannot read {what} ({exc})", node.start_mark) from None

    def construct_yaml_int(self, node):
        digits = sum(c.isdigit() for c in node.value)
        value = super().construct_yaml_int(node) if digits <= 4000 else None  # Python's limit: 4300 digits
        if value is None or not INT64_MIN <= value <= INT64_MAX:
            raise _Refused(None, None, f"integer {short_repr(node.value, 40)[1:-1]} is out of range; expected a "
                                       f"64-bit integer (at most {INT64_MAX} in magnitude)", node.start_mark)
        return value

    def construct_document(self, node):
        try:
            return super().construct_document(node)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # from a collection's deferred part, which construct_object does not see
            raise _Refused(None, None, f"cannot read this YAML ({exc})", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():  # else: super() says so
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key_node.value!r} given twice (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _load_yaml(text: str):
    """The YAML document in ``text``, by ``_Loader``; yaml.YAMLError (``_problem`` says where and what)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _problem(exc: yaml.YAMLError, text: str, value: bool = False) -> str:
    """'not valid YAML at line L, column C: what' from PyYAML's error (without 'not valid YAML' where the YAML
    is valid but refused: ``_Refused``); ``value``: ``text`` is an override's value, placed by column alone."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow: a NUL, an ESC, ...
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        what = f"control character U+{exc.character:04X} is not allowed (expected printable text)"
    else:
        mark, what = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if mark is None:
            return "not valid YAML" + (f": {what}" if what else "")
        line, column = mark.line + 1, mark.column + 1
        if what and context and context_mark is not None and context_mark.line != mark.line:
            what += f" ({context} at line {context_mark.line + 1})"
    where = f"column {column}" if value and line == 1 else f"line {line}, column {column}"
    head = where if isinstance(exc, _Refused) else f"not valid YAML at {where}"
    return f"{head}: {what}" if what else head


MAX_KEY_PARTS = MAX_YAML_DEPTH


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"override {short_repr(text)}: expected KEY=VALUE with a dotted key, e.g. phase2.lr=3e-4")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError(f"override {short_repr(text)}: {short_repr(key)} is not a dotted key")
    path = key.split(".")
    if len(path) > MAX_KEY_PARTS:
        raise SpecError(f"override {short_repr(key)}: {len(path)} levels deep; expected at most {MAX_KEY_PARTS}")
    try:
        value = _load_yaml(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        problem = _problem(exc, raw, value=True)
        if not isinstance(exc, _Refused):
            problem = f"cannot parse value {short_repr(raw)} as YAML{problem.removeprefix('not valid YAML')}"
        raise SpecError(f"override {key}: {problem}") from None
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` with dotted ``key=value`` overrides applied (values parsed as YAML)."""
    out = _deep_copy(raw)
    for text in overrides:
        path, value = _parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"override {'.'.join(path)}: {part!r} is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d):
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def parse_spec(raw: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed spec mapping into a ``SweepSpec``."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a YAML mapping at the top level, got {kind_of(raw)}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {describe(err)}") from None
    except UserError as err:  # a check that is not about the value's form, e.g. a missing checkpoint file
        raise SpecError(f"{source}: {err}") from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a YAML spec (a safe loader: nothing in it executes)."""
    path = Path(path)
    try:
        data = read_regular_file(path, MAX_SPEC_BYTES, "spec file")
    except UserInputError as err:  # missing, a directory, a FIFO, a device, a symlink loop, over 1 MB
        raise SpecError(str(err)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                        "expected a YAML spec saved as UTF-8") from None
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: {_problem(exc, text)}") from None
    if raw is None:
        required = [name for name, f in SweepSpec.model_fields.items() if f.is_required()]
        raise SpecError(f"{path}: the file holds no spec (missing the required keys {', '.join(required)})")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a YAML mapping at the top level, got {kind_of(raw)}")
    return parse_spec(apply_overrides(raw, overrides or []), str(path))
