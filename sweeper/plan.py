"""The resolved plan of a sweep: model configs, grid points x seeds, controls, sizes and costs.

``build_plan(spec)`` is pure apart from reading timm's architecture table (on the meta device, no
weights): it checks what only the model can check (encoder name, layer counts) and prints nothing.

A unit's cost: its model FLOPs in closed form (``model.cost``: each phase's training step times
its steps and batch, for each of its trials, plus the evaluation's reconstructions of the
evaluation images; the FID Inception, the metric's cost, is not a model FLOP and not counted, nor
are the loss's networks, LPIPS and a discriminator, which are counted in a trial's train_flops);
its seconds are its training FLOPs times seconds per FLOP plus its evaluated images times seconds
per image (``Rates``): constants per device, or, once a results table of the same spec exists,
measured on its completed trials (``measured_rates``: train_seconds / train_flops summed over
them, eval_seconds over the images they evaluated).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace

from model import DecoderConfig, EncoderConfig, PhaseConfig, fusion_param_count
from model.config import did_you_mean, exception_line, short_repr
from model.cost import ModelShape, closed_reconstruction, closed_step
from model.data import DataConfig
from model.encoder import EncoderArchitecture, encoder_architecture, on_meta
from model.errors import ConfigError, UserError

from .shared import feature_bytes
from .spec import SpecError, SweepSpec
from .trial_config import Control

# Rough sustained throughputs for the cost estimate until a sweep has measured its own (the tiny
# phase-2 step runs ~60 GFLOP/s on 2 CPU cores; the FID Inception ~6 images/s there).
FLOPS_PER_S = {"cpu": 5e10, "gpu": 3e14}
FID_IMAGES_PER_S = {"cpu": 6.0, "gpu": 1500.0}
# What the spec digest leaves out: fields that change neither what a trial runs nor where it is recorded.
NOT_IN_DIGEST = {"description", "results_dir", "storage_path", "cache_dir", "tracking", "law", "stop"}


@dataclass(frozen=True)
class Rates:
    """Seconds per training FLOP and per evaluated image, and where they come from (one line for the dry run)."""

    seconds_per_flop: float
    eval_seconds_per_image: float
    source: str

    @classmethod
    def constants(cls, device: str, why: str = "") -> Rates:
        return cls(1 / FLOPS_PER_S[device], 1 / FID_IMAGES_PER_S[device],
                   f"constants for a {device} ({FLOPS_PER_S[device]:.3g} FLOP/s, {FID_IMAGES_PER_S[device]:g} "
                   f"evaluated images/s){why}")


def spec_digest(spec: SweepSpec) -> str:
    """A hash of what the spec's trials run (everything but ``NOT_IN_DIGEST``): the results table records it."""
    dump = spec.model_dump(mode="json", exclude=NOT_IN_DIGEST)
    return hashlib.sha1(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:12]


def select_layers(depth: int, k: int) -> tuple[int, ...]:
    """k block indices spread evenly over the depth, always ending at the last block.

    k = 1 is the last block alone (the plain RAE's source); k = depth is every block.
    """
    return tuple(sorted({round((i + 1) * depth / k) - 1 for i in range(k)}))


@dataclass(frozen=True)
class Unit:
    """One (grid point or control, seed): a row of the results table per trial it runs."""

    unit_id: str
    point_id: str
    kind: str  # "grid" or "control"
    expert_hidden: int | None  # None: no fusion module (the rae and decoder_only controls)
    fused_layers: int
    layers: tuple[int, ...]
    seed: int
    params: int  # trainable parameters of the trial (fusion params; decoder params for decoder_only)
    n_trials: int  # Optuna trials for this unit (1 without search)
    gflop: float  # model GFLOP of the unit in closed form: n_trials trainings + one evaluation's reconstructions
    seconds: float  # estimated seconds of the unit's trials on the spec's device, run one after another
    # Where its phase-2 learning rate comes from: "searched" (its own Optuna study), "law" (the hyperparameter
    # law of the searched widths: search.transfer), "spec" (phase2.lr, or no fusion training at all).
    lr_source: str = "spec"


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    encoder: EncoderConfig
    decoder: DecoderConfig
    data: DataConfig
    phase1: PhaseConfig
    phase2: PhaseConfig
    phase3: PhaseConfig | None
    dim: int
    depth: int
    tokens: int
    units: tuple[Unit, ...]
    enc_params: int = 0  # the encoder's parameters (its forward pass is a trial's cost without a feature cache)
    dec_params: int = 0  # the decoder's
    features_cached: bool = True  # whether trials read cached features instead of running the encoder
    arch: EncoderArchitecture | None = None  # the encoder's sizes, for the closed-form FLOPs
    patch: int = 1  # the decoder's patch size
    rates: Rates | None = None  # seconds per FLOP and per evaluated image; None: the device's constants

    @property
    def n_trials(self) -> int:
        return sum(u.n_trials for u in self.units)

    @property
    def device(self) -> str:
        return "gpu" if self.spec.resources.gpu > 0 else "cpu"

    @property
    def n_search(self) -> int:
        """Trials per searched grid unit: the search's, else 1."""
        return self.spec.search.n_trials if self.spec.search else 1

    @property
    def n_new_width(self) -> int:
        """Trials of a width the grid does not list (an adaptive point): 1 where the law gives its learning rate."""
        return 1 if self.spec.search and self.spec.search.transfer == "law" else self.n_search

    def lr_source(self, expert_hidden: int) -> str:
        """Where a grid width's learning rate comes from (``Unit.lr_source``)."""
        search = self.spec.search
        if search is None:
            return "spec"
        if search.transfer == "law" and expert_hidden not in search.searched:
            return "law"
        return "searched"

    def flops(self, expert_hidden: int | None, fused_layers: int,
              control: Control | None = None) -> tuple[float, float]:
        """(training FLOPs of one trial, FLOPs of its evaluation) of a unit, in closed form (``model.cost``)."""
        from .trial import phases_of

        shape = ModelShape(self.arch, self.decoder, self.patch, fused_layers, expert_hidden)
        cached = self.features_cached
        train = sum(closed_step(shape, phase, cached).total * cfg.batch_size * cfg.steps
                    for phase, cfg in phases_of(self, control))
        return train, closed_reconstruction(shape, cached).total * self.spec.eval.n_images

    def cost(self, expert_hidden: int | None, fused_layers: int, control: Control | None = None,
             n: int = 1) -> tuple[float, float]:
        """(GFLOP, seconds) of n trainings of a unit and its evaluation, at the plan's ``rates``."""
        rates = self.rates or Rates.constants(self.device)
        train, evaluation = self.flops(expert_hidden, fused_layers, control)
        seconds = n * train * rates.seconds_per_flop + self.spec.eval.n_images * rates.eval_seconds_per_image
        return (n * train + evaluation) / 1e9, seconds

    def grid_unit(self, expert_hidden: int, fused_layers: int, seed: int) -> Unit:
        """The grid unit of width ``expert_hidden`` over ``fused_layers`` blocks at ``seed`` (planned or not)."""
        layers = select_layers(self.depth, fused_layers)
        params = fusion_param_count(self.dim, len(layers), expert_hidden)
        source = self.lr_source(expert_hidden)
        n = self.n_search if source == "searched" else 1
        gflop, sec = self.cost(expert_hidden, len(layers), None, n)
        pid = f"h{expert_hidden}-k{fused_layers}"
        return Unit(f"{pid}-s{seed}", pid, "grid", expert_hidden, fused_layers, layers, seed, params, n, gflop, sec,
                    source)


def build_plan(spec: SweepSpec, rates: Rates | None = None) -> Plan:
    """Resolve ``spec`` into units with parameter counts and costs (seconds at ``rates``, by default the device's
    constants); raises SpecError."""
    enc, dec, data = spec.encoder.config, spec.decoder.config, spec.data
    try:
        arch = encoder_architecture(enc)
        patch = arch.decoder_patch(data.resolution, key="data.resolution")
    except UserError as err:
        raise SpecError(str(err)) from None
    dim, depth, tokens, enc_params = arch.dim, arch.depth, arch.tokens, arch.params
    dec_params = _decoder_params(dec, dim, arch.grid, patch)
    layer_counts = spec.grid.fused_layers or [depth]
    for k in layer_counts:
        if k > depth:
            raise SpecError(f"grid.fused_layers: {k} layers asked, but the encoder ({enc.name}) has {depth} "
                            f"blocks; expected layer counts from 1 to {depth}")
    device = "gpu" if spec.resources.gpu > 0 else "cpu"
    fc_bytes = feature_bytes((spec.data.num_train or 60000) + spec.data.num_val, depth, tokens, dim)
    cached = fc_bytes <= spec.feature_cache.max_gb * 1e9
    plan = Plan(spec=spec, encoder=enc, decoder=dec, data=data, phase1=replace(spec.phase1, seed=spec.seed),
                phase2=spec.phase2, phase3=spec.phase3, dim=dim, depth=depth, tokens=tokens, units=(),
                enc_params=enc_params, dec_params=dec_params, features_cached=cached, arch=arch, patch=patch,
                rates=rates or Rates.constants(device))
    units: list[Unit] = [plan.grid_unit(h, k, seed) for k in layer_counts for h in spec.grid.expert_hidden
                         for seed in spec.grid.seeds]
    for control in spec.controls.runs:
        seed = spec.grid.seeds[0]
        uid = f"{control.value}-s{seed}"
        if control is Control.RAE:
            gflop, sec = plan.cost(None, 0, control)
            units.append(Unit(uid, control.value, "control", None, 0, (), seed, 0, 1, gflop, sec))
        elif control is Control.DECODER_ONLY:
            gflop, sec = plan.cost(None, 0, control)
            units.append(Unit(uid, control.value, "control", None, 0, (), seed, dec_params, 1, gflop, sec))
        elif control is Control.LAST_LAYER:
            h = spec.controls.last_layer_hidden or max(spec.grid.expert_hidden)
            params = fusion_param_count(dim, 1, h)
            gflop, sec = plan.cost(h, 1, control)
            units.append(Unit(uid, control.value, "control", h, 1, (depth - 1,), seed, params, 1, gflop, sec))
    ids = [u.unit_id for u in units]
    if len(set(ids)) != len(ids):
        raise SpecError("grid: duplicate points")
    _check_faults(spec, ids)
    return replace(plan, units=tuple(units))


def _decoder_params(dec: DecoderConfig, dim: int, grid: int, patch: int) -> int:
    """The decoder's parameter count, from the decoder built on the meta device (no memory)."""
    from model import ViTDecoder

    try:
        with on_meta("decoder"):
            return sum(p.numel() for p in ViTDecoder(dec, dim, grid, patch).parameters())
    except ConfigError as err:  # more modules than a plan builds
        raise SpecError(str(err)) from None
    except Exception as exc:  # sizes whose tensors overflow (RuntimeError: "Storage size calculation overflowed")
        raise SpecError(f"decoder: cannot build a decoder of dim {dec.dim}, depth {dec.depth} on {grid}x{grid} "
                        f"tokens of width {dim} ({exception_line(exc)})") from None


def _check_faults(spec: SweepSpec, ids: list[str]) -> None:
    """SpecError for a unit a fault names that the sweep does not have (a typo would test nothing)."""
    known = set(ids)
    for key in type(spec.faults).model_fields:
        for uid in getattr(spec.faults, key):
            if uid not in known:
                hint = did_you_mean(uid, ids) or f"; expected unit ids such as {', '.join(ids[:3])}"
                raise SpecError(f"faults.{key}: no unit {short_repr(uid)} in this sweep{hint}")


def measured_rates(plan: Plan) -> Rates:
    """The rates measured by the results table of the plan's sweep (``results/<name>/trials.parquet``), when it
    is of the same spec (its recorded ``spec_digest``) and has completed trials with their costs; else the
    device's constants, saying why. A table that records no spec (written before it did) is taken as the same
    one, and said so."""
    import pandas as pd

    from .results import read_metadata

    device, path = plan.device, plan.spec.sweep_dir / "trials.parquet"
    if not path.exists():
        return Rates.constants(device, f" (no results table at {path} yet)")
    try:
        recorded, df = read_metadata(path).get("spec"), pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors
        return Rates.constants(device, f" ({path} cannot be read: {exception_line(exc)})")
    digest = spec_digest(plan.spec)
    if recorded is not None and recorded != digest:
        return Rates.constants(device, f" ({path} is of another spec: its digest {recorded}, this one's {digest})")
    done = df[df.status == "completed"] if "status" in df else df.iloc[:0]

    def col(name: str) -> pd.Series:
        return pd.to_numeric(done[name], errors="coerce") if name in done else pd.Series(0.0, index=done.index)

    train_s, train_f = col("train_seconds"), col("train_flops")
    trained = (train_s > 0) & (train_f > 0)
    if not trained.any():
        return Rates.constants(device, f" ({path} has no completed trial with train_seconds and train_flops)")
    eval_s = col("eval_seconds")
    evaluated = eval_s > 0
    per_image = (eval_s[evaluated].sum() / (evaluated.sum() * plan.spec.eval.n_images) if evaluated.any()
                 else 1 / FID_IMAGES_PER_S[device])
    how = (f"the evaluation's on {evaluated.sum()} evaluations" if evaluated.any()
           else f"the evaluation's the constant {FID_IMAGES_PER_S[device]:g} images/s (none measured)")
    same = "" if recorded is not None else "; the table records no spec: taken as this one"
    return Rates(train_s[trained].sum() / train_f[trained].sum(), per_image,
                 f"measured on {trained.sum()} completed trials of {path} ({how}{same})")


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"  # one decimal: 113.5M, not 113M (the paper's x-axis reads 113.5M)
    return f"{n:.0f}"


def format_plan(plan: Plan) -> str:
    """The dry-run table: every unit with its parameter count and estimated cost, then totals."""
    s = plan.spec
    rows = [f"sweep {s.name}: encoder {plan.encoder.name} (d={plan.dim}, {plan.depth} blocks, "
            f"{plan.tokens} tokens), decoder {s.decoder.preset}, data {s.data.name} {s.data.resolution}px, "
            f"device {plan.device}",
            *_cost_notes(plan),
            f"{'trial unit':<22}{'kind':<9}{'h':>6}{'k':>4}{'seed':>6}{'params':>10}{'trials':>8}"
            f"{'GFLOP':>10}{'est. s':>9}  lr"]
    for u in plan.units:
        h = "-" if u.expert_hidden is None else str(u.expert_hidden)
        rows.append(f"{u.unit_id:<22}{u.kind:<9}{h:>6}{u.fused_layers:>4}{u.seed:>6}{_human(u.params):>10}"
                    f"{u.n_trials:>8}{u.gflop:>10.4g}{u.seconds:>9.0f}  {u.lr_source}")
    total_s = sum(u.seconds for u in plan.units)
    total_g = sum(u.gflop for u in plan.units)
    grid = [u for u in plan.units if u.kind == "grid"]
    span = ""
    if grid:
        lo, hi = min(u.params for u in grid), max(u.params for u in grid)
        span = f", fusion params {_human(lo)}..{_human(hi)} ({math.log10(hi / lo):.2f} decades)"
    conc = s.resources.max_concurrent or "auto"
    rows.append(f"total: {len(plan.units)} units, {plan.n_trials} trials{span}, {total_g:.4g} GFLOP, "
                f"~{total_s / 60:.1f} min of trial time (serial; {conc} concurrent), plus shared work "
                f"(encoder, feature cache, FID statistics, phase 1: {s.phase1.steps} steps)")
    if s.search is not None and s.search.transfer == "law":
        law = sorted({u.expert_hidden for u in grid if u.lr_source == "law"})
        rows.append(f"learning rate: searched at h = {', '.join(map(str, s.search.searched))} ({s.search.n_trials} "
                    f"trials each) first; h = {', '.join(map(str, law)) or '(none)'} then train once at the "
                    "hyperparameter law's lr (log10 lr linear in log10 params), fitted to the searched trials "
                    "once they have all ended")
    return "\n".join(rows)


def _cost_notes(plan: Plan) -> list[str]:
    """Where the GFLOP and est. s columns come from."""
    rates = plan.rates or Rates.constants(plan.device)
    encoder = "features cached" if plan.features_cached else "the encoder run on every batch"
    return [f"GFLOP: model FLOPs in closed form (model.cost; {encoder}), not the FID Inception"
            + (", nor the loss's LPIPS and discriminator" if _loss_networks(plan) else ""),
            f"est. s: {1e12 * rates.seconds_per_flop:.4g} s per TFLOP and {rates.eval_seconds_per_image:.3g} s per "
            f"evaluated image, {rates.source}"]


def _loss_networks(plan: Plan) -> bool:
    """Whether a phase's loss runs a network (LPIPS, a discriminator) that the closed forms leave out."""
    return any(p is not None and (p.loss.lpips > 0 or p.loss.adv > 0) for p in (plan.phase1, plan.phase2, plan.phase3))
