"""The three decoupled training phases of DRoRAE (Zhu et al. 2026, section 3.3).

1. ``train_decoder``   trains the decoder on z_base: a plain RAE. Shared by every trial of a sweep.
2. ``train_fusion``    freezes encoder and decoder and trains only the fusion module: the frozen
                       decoder is an implicit constraint on the fused latent's distribution.
3. ``finetune_decoder`` freezes the fusion module and fine-tunes the decoder on z_final.

Each is a plain function ``(model, PhaseConfig, train, val, report) -> metrics`` that knows
nothing of Ray, Optuna or MLflow: ``run_phase`` with the phase's row of ``PHASES`` (the module it
trains, the latent it decodes); ``_Trainer`` steps, saves and restores a phase. ``report(dict)``
receives the training curve. Training data is a tensor of images (N, 3, H, W) in [0, 1], a
``FeatureSet`` of cached encoder features (``model.features``), or a Dataset of (image, label): a
TensorDataset is gathered from directly like a tensor, any other (an ImageFolder) streams through a
DataLoader in the same batch order, never stacked whole.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from drorae_io import atomic_path

from .config import Float, Int, NonNegativeFloat, NonNegativeInt, PositiveInt, validated
from .data import ImageBatches, images_of, make_loader, unwrap
from .drorae import DRoRAE
from .errors import ConfigError
from .features import FeatureSet, device_of, take
from .losses import LossConfig, ReconstructionLoss
from .progress import Progress

log = logging.getLogger(__name__)

Report = Callable[[dict], None]


@validated("phase")
class PhaseConfig:
    """Budget and optimizer of one training phase."""

    steps: PositiveInt
    batch_size: PositiveInt = 64
    lr: Annotated[Float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    weight_decay: NonNegativeFloat = 0.0  # the fusion gate and experts start at a chosen point; no pull to zero
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.1  # cosine decay to lr * min_lr_ratio
    grad_clip: NonNegativeFloat = 1.0  # 0 disables
    loss: LossConfig = field(default_factory=LossConfig)
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0  # 0: evaluate only at the end
    checkpoint_every: NonNegativeInt = 0  # 0: no periodic checkpoint
    val_batch_size: PositiveInt = 256
    seed: Int = 0  # a sweep sets it: its own seed for phase 1, each unit's seed for phases 2 and 3
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the trainable module (CUDA)


def _streams(data) -> bool:
    """Whether ``data`` is decoded by a DataLoader rather than gathered from memory."""
    return not isinstance(data, (torch.Tensor, FeatureSet))


class _Batches:
    """Random batches (with replacement across epochs) of indices into images, a FeatureSet or a Dataset."""

    def __init__(self, data, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def next_indices(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = torch.randperm(len(self.data), generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self.order, "pos": torch.tensor(self.pos)}

    def load_state_dict(self, state: dict):
        self.gen.set_state(state["gen"])
        self.order, self.pos = state["order"], int(state["pos"])


class _BatchSampler(torch.utils.data.Sampler):
    """A DataLoader's batch sampler: the next ``count`` index batches of a ``_Batches``, from its state now.

    It draws from a copy, so the DataLoader may prefetch ahead while the training loop's own
    ``_Batches`` advances only with the batches trained on: that is the state a checkpoint saves.
    """

    def __init__(self, batches: _Batches, count: int):
        self.n, self.batch_size, self.count = len(batches.data), batches.batch_size, count
        self.state = {k: v.clone() for k, v in batches.state_dict().items()}

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        ahead = _Batches(range(self.n), self.batch_size, 0)
        ahead.load_state_dict({k: v.clone() for k, v in self.state.items()})
        for _ in range(self.count):
            yield ahead.next_indices().tolist()


class _Stream:
    """Training batches of a Dataset, decoded ahead by a DataLoader in the order of a ``_Batches``.

    The loader's batch sampler yields the next ``count`` index batches of ``batches`` (from a copy
    of its state), so a streamed phase trains on the same batches as one gathering from the same
    images stacked in memory, and a resumed one continues the sequence where its checkpoint was.
    Workers persist for the phase and prefetch; batches are pinned on CUDA for non-blocking copies.
    """

    def __init__(self, data: Dataset, batches: _Batches, count: int, device: torch.device):
        self.device = device
        self.loader = make_loader(data, batch_sampler=_BatchSampler(batches, count),
                                  pin_memory=device.type == "cuda", persistent=True)
        self.it = iter(self.loader)

    def next(self) -> torch.Tensor:
        """The next batch of images (B, 3, H, W) on the device."""
        return images_of(next(self.it)).to(self.device, non_blocking=True)

    def close(self):
        it, self.it, self.loader = self.it, None, None
        shutdown = getattr(it, "_shutdown_workers", None)  # a multi-process iterator; its __del__ would, later
        if shutdown is not None:
            shutdown()


def _features(model: DRoRAE, data, idx: torch.Tensor, device: torch.device):
    """(images, layers (L, B, T, D), base (B, T, D)) for the batch ``idx`` of a tensor or a FeatureSet."""
    if isinstance(data, FeatureSet):
        return data.batch(idx, device)
    return _encoded(model, take(data, idx, device))


def _encoded(model: DRoRAE, images: torch.Tensor):
    """(images, layers (L, B, T, D), base (B, T, D)) of a batch on the model's device, by the frozen encoder."""
    layers, base = model.encoder(images)
    return images, layers, base


def _in_order(model: DRoRAE, data, batch_size: int):
    """(images, layers, base) batches over ``data`` in order: gathered, or decoded by a sequential DataLoader."""
    device = device_of(model)
    data = unwrap(data)
    if _streams(data):
        for images in ImageBatches(data, batch_size, pin_memory=device.type == "cuda"):
            yield _encoded(model, images.to(device, non_blocking=True))
        return
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        yield _features(model, data, idx, device)


@torch.no_grad()
def reconstruct(model: DRoRAE, data, batch_size: int = 256, use_fusion: bool = True):
    """Yield (images, clamped reconstructions) batches over ``data`` (images, a FeatureSet or a Dataset)."""
    use_fusion = use_fusion and model.fusion is not None
    for images, layers, base in _in_order(model, data, batch_size):
        z = model.latent(layers, base) if use_fusion else base
        yield images, model.decode(z).float().clamp(0, 1)


@torch.no_grad()
def validation_l1(model: DRoRAE, val, batch_size: int = 256, phase: int | None = None) -> float:
    """Mean absolute error of clamped reconstructions over the validation set."""
    total, count = 0.0, 0
    for images, recon in reconstruct(model, val, batch_size, use_fusion=phase is None or PHASES[phase].fused):
        total += (recon - images).abs().sum().item()
        count += images.numel()
    return total / count


@dataclass(frozen=True)
class Phase:
    """What one phase trains and on which latent; everything else is the same in every phase."""

    name: str
    trains: str  # the DRoRAE module it trains ("decoder" or "fusion"); every other module is frozen
    fused: bool  # the decoder reads z_final (the fusion of the layers), not z_base
    noise: bool  # the latent gets the decoder's noise_tau augmentation (RAE's recipe for a decoder on z_base)


PHASES = {
    1: Phase("decoder", trains="decoder", fused=False, noise=True),
    2: Phase("fusion", trains="fusion", fused=True, noise=False),
    3: Phase("finetune", trains="decoder", fused=True, noise=False),
}


def _trainable(model: DRoRAE, phase: int) -> nn.Module:
    spec = PHASES[phase]
    module = getattr(model, spec.trains)
    if module is None:
        raise ConfigError(f"phase {phase}: the model has no {spec.trains} module (expert_hidden is null)")
    return module


def _set_trainable(model: DRoRAE, phase: int) -> nn.Module:
    module = _trainable(model, phase)
    model.requires_grad_(False)
    module.requires_grad_(True)
    model.train()
    return module


def lr_factor(cfg: PhaseConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based) as a fraction of ``cfg.lr``: linear warmup, then cosine decay
    to ``cfg.min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def save_atomic(obj, path: Path):
    """torch.save ``obj`` to ``path`` atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def noise_augment(z: torch.Tensor, tau: float) -> torch.Tensor:
    """``z`` plus RAE's latent noise: each sample draws a level sigma ~ U(0, tau), then adds sigma * N(0, 1).

    z: (B, N, D). One level per sample, as RAE's ``noising`` (src/stage1/rae.py) draws it: every batch
    spans the levels from clean to tau, rather than all of it at one level.
    """
    sigma = tau * torch.rand((z.shape[0],) + (1,) * (z.dim() - 1), device=z.device, dtype=z.dtype)  # (B, 1, 1)
    return z + sigma * torch.randn_like(z)


class _Trainer:
    """The optimization of one phase: its module (``PHASES[phase].trains``), optimizers, batch order and loss.

    ``step`` trains on the next batch; ``save`` and ``restore`` move the whole state, the global RNG's
    included, through a checkpoint file, so a resumed phase continues exactly where it stopped.
    """

    def __init__(self, model: DRoRAE, phase: int, cfg: PhaseConfig, train):
        self.model, self.phase, self.spec, self.cfg, self.train = model, phase, PHASES[phase], cfg, train
        self.device = device = device_of(model)
        self.module = _set_trainable(model, phase)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        fused_ok = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                                     fused=fused_ok or None)

        def lr_at(step: int) -> float:  # a plain function: LambdaLR keeps it out of its state_dict
            return lr_factor(cfg, step)

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.loss_fn = ReconstructionLoss(cfg.loss).to(device)  # a discriminator's init draws from the global RNG
        self.disc_opt = None
        if self.loss_fn.discriminator is not None:
            self.disc_opt = torch.optim.AdamW(self.loss_fn.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                              fused=fused_ok or None)
        self.batches = _Batches(train, cfg.batch_size, cfg.seed)
        self.stream: _Stream | None = None
        step_fn = self.module
        if cfg.compile and device.type == "cuda":
            step_fn = torch.compile(self.module)
        # The latent and the decoder of a step: the trained module through step_fn, the frozen one as it is.
        self.fuse = step_fn if self.spec.trains == "fusion" else model.latent
        self.decode = step_fn if self.spec.trains == "decoder" else model.decoder
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")

    def restore(self, path: Path) -> tuple[int, float]:
        """Load the state ``save`` wrote to ``path``; returns (steps done, seconds spent)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["phase"] != self.phase:
            raise ConfigError(f"checkpoint: {path} is from phase {state['phase']}, not phase {self.phase}")
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["rng"].cpu())
        if self.disc_opt is not None:
            self.loss_fn.discriminator.load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        return int(state["step"]), float(state["seconds"])

    def warm_start(self, path: Path):
        """Continue a finished phase's training from the state it saved to ``path``: its module, its
        optimizer's moments and its discriminator, under this phase's own schedule and batch order."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if PHASES[state["phase"]].trains != self.spec.trains:
            raise ConfigError(f"warm start: {path} trained the {PHASES[state['phase']].trains}, not the "
                              f"{self.spec.trains}")
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr  # this phase's schedule, not the finished phase's last rate
        if self.disc_opt is not None and "discriminator" in state:
            self.loss_fn.discriminator.load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
            for group in self.disc_opt.param_groups:
                group["lr"] = self.cfg.lr

    def save(self, path: Path, step: int, seconds: float):
        """Write the state after ``step`` steps and ``seconds`` of training to ``path`` atomically."""
        state = {"phase": self.phase, "step": step, "seconds": seconds, "module": self.module.state_dict(),
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "batches": self.batches.state_dict(), "rng": torch.get_rng_state(), "config": repr(self.cfg)}
        if self.disc_opt is not None:
            state["discriminator"] = self.loss_fn.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        save_atomic(state, path)

    def open_stream(self, steps: int):
        """Decode the next ``steps`` batches of a streamed Dataset ahead (nothing for tensors and FeatureSets)."""
        if _streams(self.train) and steps > 0:
            self.stream = _Stream(self.train, self.batches, steps, self.device)

    def close_stream(self):
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def step(self, step: int) -> tuple[torch.Tensor, dict]:
        """Train on the next batch; returns the loss and its terms."""
        model, spec = self.model, self.spec
        idx = self.batches.next_indices()
        with self.autocast:  # the frozen encoder too, when it runs on the fly: bf16 like the rest, not fp32
            if self.stream is None:
                images, layers, base = _features(model, self.train, idx, self.device)
            else:
                images, layers, base = _encoded(model, self.stream.next())
            z = self.fuse(layers, base) if spec.fused else base
            if spec.noise and model.decoder.config.noise_tau > 0:
                z = noise_augment(z, model.decoder.config.noise_tau)
            recon = self.decode(z)
            loss, terms = self.loss_fn(recon.float(), images, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"phase {self.phase} ({spec.name}): loss is {loss.item()} at step {step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.loss_fn.adversarial_on(step):
            d_loss = self.loss_fn.discriminator_loss(recon.float(), images)
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            terms["adv_d"] = float(d_loss.detach())
        return loss, terms


def run_phase(model: DRoRAE, phase: int, cfg: PhaseConfig, train, val, report: Report | None = None,
              checkpoint: str | Path | None = None, on_checkpoint: Callable[[int], None] | None = None,
              warm_start: str | Path | None = None) -> dict:
    """Train the module of ``phase`` (1, 2 or 3; see ``PHASES``) for ``cfg.steps``; returns final metrics.

    With ``checkpoint`` the phase saves its state every ``cfg.checkpoint_every`` steps and at the
    end, and resumes from that file when it exists (finished phases return at once);
    ``on_checkpoint(step)`` is called after each save. ``warm_start``: the final checkpoint of an
    earlier phase that trained the same module, continued (``_Trainer.warm_start``) unless resuming.
    """
    report = report or (lambda metrics: None)
    train, val = unwrap(train), unwrap(val)
    trainer = _Trainer(model, phase, cfg, train)
    torch.manual_seed(cfg.seed)  # the global RNG (latent noise, dropout) starts from the phase's seed
    start_step, elapsed = 0, 0.0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        start_step, elapsed = trainer.restore(ckpt_path)
        log.info("phase %d: resumed from %s at step %d", phase, ckpt_path, start_step)
    elif warm_start is not None:
        trainer.warm_start(Path(warm_start))
        log.info("phase %d: continues the training saved in %s", phase, warm_start)

    def save(step: int):
        if ckpt_path is None:
            return
        trainer.save(ckpt_path, step, elapsed)
        if on_checkpoint is not None:
            on_checkpoint(step)

    t0 = time.perf_counter() - elapsed
    trainer.open_stream(cfg.steps - start_step)
    progress = Progress(cfg.steps, f"phase {phase} ({trainer.spec.name})", log, initial=start_step)
    try:
        for step in range(start_step, cfg.steps):
            loss, terms = trainer.step(step)
            done = step + 1
            elapsed = time.perf_counter() - t0
            if done % cfg.log_every == 0 or done == cfg.steps:
                value = float(loss.detach())
                report({"phase": phase, "step": done, "loss": value, **terms, "lr": trainer.sched.get_last_lr()[0],
                        "seconds": elapsed})
                progress.note = f"loss {value:.4f}"
            progress.update()
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                report({"phase": phase, "step": done, "val_l1": validation_l1(model, val, cfg.val_batch_size, phase)})
                model.train()
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                save(done)
    finally:
        progress.close()
        trainer.close_stream()  # its workers, also when a step fails
    model.eval()
    steps_run = cfg.steps - start_step
    metrics = {"phase": phase, "steps": cfg.steps, "train_seconds": elapsed,
               "seconds_per_step": (elapsed / cfg.steps) if cfg.steps else 0.0,
               "val_l1": validation_l1(model, val, cfg.val_batch_size, phase)}
    if steps_run > 0:
        save(cfg.steps)
    report({"phase": phase, "step": cfg.steps, "val_l1": metrics["val_l1"], "final": True})
    return metrics


def train_decoder(model: DRoRAE, cfg: PhaseConfig, train, val, report: Report | None = None, checkpoint=None,
                  on_checkpoint=None):
    """Phase 1: the decoder on z_base (a plain RAE)."""
    return run_phase(model, 1, cfg, train, val, report, checkpoint, on_checkpoint)


def train_fusion(model: DRoRAE, cfg: PhaseConfig, train, val, report: Report | None = None, checkpoint=None,
                 on_checkpoint=None):
    """Phase 2: only the fusion module; encoder and decoder frozen."""
    return run_phase(model, 2, cfg, train, val, report, checkpoint, on_checkpoint)


def finetune_decoder(model: DRoRAE, cfg: PhaseConfig, train, val, report: Report | None = None,
                     checkpoint=None, on_checkpoint=None):
    """Phase 3: the decoder on z_final; encoder and fusion frozen."""
    return run_phase(model, 3, cfg, train, val, report, checkpoint, on_checkpoint)
