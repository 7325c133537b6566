"""Sweep specs: YAML in ``sweeps/`` -> one typed, validated ``SweepSpec``, before anything runs.

``load_spec(path, overrides)`` is the one pure function from text to config. Every problem is a
``SpecError`` whose message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model import DECODER_PRESETS, ENCODER_PRESETS
from model.errors import UserError

from .trial_config import Control


class SpecError(UserError):
    """A sweep spec or override that cannot run."""


def _did_you_mean(value: str, known) -> str:
    close = difflib.get_close_matches(str(value), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderSpec(_Strict):
    """A preset, optionally with overrides of its fields (``model.EncoderConfig``)."""

    preset: str | None = "tiny"
    name: str | None = None
    weights: Literal["hub", "none", "self-pretrained"] | None = None
    checkpoint: str | None = None
    input_size: int | None = Field(None, gt=0)
    model_kwargs: dict[str, Any] | None = None
    pretrain_steps: int | None = Field(None, gt=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v):
        if v is not None and v not in ENCODER_PRESETS:
            raise ValueError(f"unknown encoder preset {v!r}{_did_you_mean(v, ENCODER_PRESETS)}; expected one of "
                             f"{', '.join(ENCODER_PRESETS)}")
        return v

    @model_validator(mode="after")
    def _preset_or_name(self):
        if self.preset is None and self.name is None:
            raise ValueError("give a preset or a timm model name")
        return self


class DecoderSpec(_Strict):
    preset: str = "tiny"
    dim: int | None = Field(None, gt=0)
    depth: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    noise_tau: float | None = Field(None, ge=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v):
        if v not in DECODER_PRESETS:
            raise ValueError(f"unknown decoder preset {v!r}{_did_you_mean(v, DECODER_PRESETS)}; expected one of "
                             f"{', '.join(DECODER_PRESETS)}")
        return v


class DataSpec(_Strict):
    name: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    resolution: int = Field(32, ge=8)
    root: str | None = None
    num_train: int | None = Field(None, gt=0)
    num_val: int = Field(1000, gt=0)


class LossSpec(_Strict):
    l1: float = Field(1.0, ge=0)
    lpips: float = Field(0.0, ge=0)
    lpips_net: Literal["alex", "vgg"] = "alex"
    adv: float = Field(0.0, ge=0)
    adv_start_step: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _some_weight(self):
        if self.l1 == 0 and self.lpips == 0 and self.adv == 0:
            raise ValueError("every loss weight is 0; set l1 (or lpips, adv) > 0")
        return self


class PhaseSpec(_Strict):
    steps: int = Field(gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    loss: LossSpec = LossSpec()
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    amp: bool = True
    compile: bool = False


class GridSpec(_Strict):
    expert_hidden: list[int] = Field(min_length=1)
    fused_layers: list[int] | None = None  # None: all of the encoder's blocks
    seeds: list[int] = Field([0], min_length=1)

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
    low: float | None = None
    high: float | None = None
    choices: list[Any] | None = None

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


class SearchSpec(_Strict):
    """Per-point Optuna search over phase-2 hyperparameters, on the cheap validation loss."""

    params: dict[str, ParamSpec] = Field(min_length=1)
    n_trials: int = Field(4, gt=0)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    metric: Literal["val_l1"] = "val_l1"

    @field_validator("params")
    @classmethod
    def _searchable(cls, v):
        bad = [k for k in v if k not in SEARCHABLE]
        if bad:
            raise ValueError(f"cannot search {bad[0]!r}; expected some of {', '.join(SEARCHABLE)}")
        return v


class ControlsSpec(_Strict):
    """Control runs beside the grid, to attribute the gain (design.md section 5)."""

    runs: list[Control] = []
    last_layer_hidden: int | None = Field(None, gt=0)  # None: the grid's largest width


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # per trial; fractional: trials share a GPU
    # GPU share of the trials of given expert widths, e.g. {128: 0.25, 512: 0.5}: four of the
    # smallest points train on one GPU at once; other widths and the controls take `gpu`.
    gpu_share: dict[int, float] = {}
    max_concurrent: int = Field(0, ge=0)  # 0: as many as the resources allow
    max_failures: int = Field(1, ge=0)  # retries of a failed trial (Ray Tune FailureConfig)
    reuse_actors: bool = True  # Tune runs the next trial in a finished trial's process: no new worker
    # importing torch per trial (about 5-8 s each on a laptop); false gives every trial a fresh process

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
    n_images: int = Field(gt=1)  # the same for every trial of a sweep: FID depends on it
    batch_size: int = Field(32, gt=0)
    lpips_net: Literal["alex", "vgg"] = "alex"


class FeatureCacheSpec(_Strict):
    max_gb: float = Field(4.0, ge=0)  # frozen-encoder features are cached when they fit; 0 disables


class TrackingSpec(_Strict):
    uri: str | None = None  # None: sqlite:///<results>/mlflow.db; MLFLOW_TRACKING_URI wins when set
    experiment: str | None = None  # None: the sweep's name


class FaultsSpec(_Strict):
    """Deliberate faults, for testing the sweep's failure handling on real trials."""

    nan_loss: list[str] = []  # unit ids whose training images are NaN (a real NaN loss)
    raise_error: list[str] = []  # unit ids whose trial raises before training
    inf_loss: list[str] = []  # unit ids whose training images are +inf (a real non-finite loss)
    oom: list[str] = []  # unit ids whose trial asks the allocator for far more memory than there is


class SweepSpec(_Strict):
    """Everything one sweep needs; validated before anything runs."""

    name: str
    description: str = ""
    encoder: EncoderSpec = EncoderSpec()
    decoder: DecoderSpec = DecoderSpec()
    data: DataSpec = DataSpec()
    beta_max: float = Field(1.0, gt=0)
    phase1: PhaseSpec
    phase2: PhaseSpec
    phase3: PhaseSpec | None = None
    grid: GridSpec
    search: SearchSpec | None = None
    controls: ControlsSpec = ControlsSpec()
    resources: ResourcesSpec = ResourcesSpec()
    eval: EvalSpec
    feature_cache: FeatureCacheSpec = FeatureCacheSpec()
    tracking: TrackingSpec = TrackingSpec()
    results_dir: str = "results"  # results/<name>/ holds the table, the Ray storage and the MLflow db
    storage_path: str | None = None  # Ray Tune storage; None: <results_dir>/<name>/ray (a shared path on clusters)
    cache_dir: str | None = None  # shared caches; None: $DRORAE_CACHE or ~/.cache/drorae-scaling
    seed: int = 0  # seed of the shared work (encoder pretraining, phase 1)
    faults: FaultsSpec = FaultsSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("expected letters, digits, '_', '-' or '.' (it names directories)")
        return v

    @model_validator(mode="after")
    def _eval_fits_validation(self):
        if self.eval.n_images > self.data.num_val:
            raise ValueError(f"eval.n_images ({self.eval.n_images}) exceeds data.num_val ({self.data.num_val})")
        return self

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir) / self.name


# --- loading ---------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `3e-4` as a float (YAML 1.2) rather than a string (YAML 1.1).

    A key given twice in one mapping is an error (YAML requires unique keys; PyYAML would silently
    keep the last, so a second `grid:` block would replace the first unnoticed).
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key_node.value!r} given twice (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. phase2.lr=3e-4")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError(f"override {text!r}: {key!r} is not a dotted key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else None
    except yaml.YAMLError:
        raise SpecError(f"override {key}: cannot parse value {raw!r} as YAML") from None
    return key.split("."), value


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


def _kind(value) -> str:
    """What a YAML value is, for 'expected X, got <kind>'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    for types_, word in ((str, "a string"), ((int, float), "a number"), (list, "a list"), (dict, "a mapping")):
        if isinstance(value, types_):
            if len(repr(value)) <= 40:
                return f"{word} {value!r}"
            return f"{word} of {len(value)} items" if isinstance(value, (list, dict)) else word
    return type(value).__name__


def _section(annotation):
    """The pydantic model (or dict / list type) that a field's annotation holds, without Optional."""
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return _section(arg)
    return annotation


def _known_keys(loc: tuple) -> list[str]:
    """The keys the spec section at ``loc`` takes (for an unknown key's hint); [] if unknown."""
    node = SweepSpec
    for part in loc:
        node = _section(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return []
            node = node.model_fields[part].annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        elif get_origin(node) is list:
            node = get_args(node)[0]
        else:
            return []
    node = _section(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "greater than or equal to"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "less than or equal to")}


def _expected(e: dict) -> str:
    """What pydantic expected, as 'expected ...' (its 'Input should be ...' without the parse detail)."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"expected a number {words} {ctx[key]:g}"
    if kind in ("model_type", "dict_type"):
        return "expected a mapping"
    if kind == "too_short":
        n = ctx["min_length"]
        return f"expected at least {n} item{'s' if n != 1 else ''}"
    msg = e["msg"]
    if msg.startswith("Input should be "):
        return "expected " + msg.removeprefix("Input should be ").split(", unable to")[0]
    return msg


def _one_line(err: ValidationError) -> str:
    """The first problem, as 'dotted.key: what is wrong; what was expected, got what'."""
    # An unknown key first: a misspelt key also makes its correct spelling "missing".
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    e, value = errors[0], errors[0].get("input")
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        known = _known_keys(e["loc"][:-1])
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1, cutoff=0.75)  # a typo, not a guess
        if close:
            msg = f"unknown key (did you mean {close[0]!r}?)"
            # ... and the correct spelling, missing because of the typo, is no further problem
            errors = [x for x in errors if not (x["type"] == "missing" and x["loc"] == (*e["loc"][:-1], close[0]))]
        else:
            msg = f"unknown key; expected one of {', '.join(known)}" if known else "unknown key"
    elif e["type"] == "missing":
        msg = "missing required key"
    elif e["type"] == "value_error":  # our own validators say what they expected and got
        msg = e["msg"].removeprefix("Value error, ")
    else:
        msg = f"{_expected(e)}, got {_kind(value)}"
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{extra}" if loc else f"{msg}{extra}"  # a cross-field check names its keys


def parse_spec(raw: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a parsed spec mapping into a ``SweepSpec``."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a YAML mapping at the top level, got {_kind(raw)}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {_one_line(err)}") from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a YAML spec (a safe loader: nothing in it executes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                        "expected a YAML spec saved as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    if raw is None:
        required = [name for name, f in SweepSpec.model_fields.items() if f.is_required()]
        raise SpecError(f"{path}: the file holds no spec (missing the required keys {', '.join(required)})")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a YAML mapping at the top level, got {_kind(raw)}")
    return parse_spec(apply_overrides(raw, overrides or []), str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' at line L, column C: what the parser expected (the construct it was in)' from PyYAML's error."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    out = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if problem:
        out += f": {problem}"
        if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
            out += f" ({context} at line {context_mark.line + 1})"
    return out
