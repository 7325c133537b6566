"""The resolved plan of a sweep: model configs, grid points x seeds, controls, sizes and costs.

``build_plan(spec)`` is pure apart from reading timm's architecture table (on the meta device, no
weights): it checks what only the model can check (encoder name, layer counts) and prints nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from model import DecoderConfig, EncoderConfig, PhaseConfig, fusion_param_count
from model.config import did_you_mean, exception_line, short_repr
from model.data import DataConfig
from model.encoder import encoder_architecture, on_meta
from model.errors import ConfigError, UserError

from .shared import feature_bytes
from .spec import SpecError, SweepSpec
from .trial_config import Control

# Rough sustained throughputs for the cost estimate (measured on this project's machines: the
# tiny phase-2 step runs ~60 GFLOP/s on 2 CPU cores; the FID Inception ~6 images/s there).
FLOPS_PER_S = {"cpu": 5e10, "gpu": 3e14}
FID_IMAGES_PER_S = {"cpu": 6.0, "gpu": 1500.0}


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
    gflop: float  # estimated cost of the unit: n_trials trainings + one rFID evaluation
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

    def cost(self, fusion_params: int, train_decoder: bool, evaluate: bool, n: int = 1) -> tuple[float, float]:
        """(GFLOP, seconds) of n trainings of a unit with ``fusion_params`` (and its rFID evaluation)."""
        spec, p2, p3, device = self.spec, self.phase2, self.phase3, self.device
        per_image = (0 if self.features_cached else 2 * self.enc_params) + 6 * fusion_params + 6 * self.dec_params
        flop = p2.steps * p2.batch_size * self.tokens * per_image
        if p3 is not None and not train_decoder:
            flop += p3.steps * p3.batch_size * self.tokens * (6 * fusion_params + 6 * self.dec_params)
        flop *= n
        seconds = flop / FLOPS_PER_S[device]
        if evaluate:
            seconds += spec.eval.n_images / FID_IMAGES_PER_S[device]
            flop += spec.eval.n_images * 5.7e9  # FID Inception at 299 px
        return flop / 1e9, seconds

    def grid_unit(self, expert_hidden: int, fused_layers: int, seed: int) -> Unit:
        """The grid unit of width ``expert_hidden`` over ``fused_layers`` blocks at ``seed`` (planned or not)."""
        layers = select_layers(self.depth, fused_layers)
        params = fusion_param_count(self.dim, len(layers), expert_hidden)
        source = self.lr_source(expert_hidden)
        n = self.n_search if source == "searched" else 1
        gflop, sec = self.cost(params, False, True, n)
        pid = f"h{expert_hidden}-k{fused_layers}"
        return Unit(f"{pid}-s{seed}", pid, "grid", expert_hidden, fused_layers, layers, seed, params, n, gflop, sec,
                    source)


def build_plan(spec: SweepSpec) -> Plan:
    """Resolve ``spec`` into units with parameter counts and costs; raises SpecError."""
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
                enc_params=enc_params, dec_params=dec_params, features_cached=cached)
    units: list[Unit] = [plan.grid_unit(h, k, seed) for k in layer_counts for h in spec.grid.expert_hidden
                         for seed in spec.grid.seeds]
    for control in spec.controls.runs:
        seed = spec.grid.seeds[0]
        uid = f"{control.value}-s{seed}"
        if control is Control.RAE:
            gflop, sec = spec.eval.n_images * 5.7, spec.eval.n_images / FID_IMAGES_PER_S[device]
            units.append(Unit(uid, control.value, "control", None, 0, (), seed, 0, 1, gflop, sec))
        elif control is Control.DECODER_ONLY:
            gflop, sec = plan.cost(0, True, True)
            units.append(Unit(uid, control.value, "control", None, 0, (), seed, dec_params, 1, gflop, sec))
        elif control is Control.LAST_LAYER:
            h = spec.controls.last_layer_hidden or max(spec.grid.expert_hidden)
            params = fusion_param_count(dim, 1, h)
            gflop, sec = plan.cost(params, False, True)
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
