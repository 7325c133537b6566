"""The three decoupled training phases of DRoRAE (Zhu et al. 2026, section 3.3).

1. ``train_decoder``   trains the decoder on z_base: a plain RAE. Shared by every trial of a sweep.
2. ``train_fusion``    freezes encoder and decoder and trains only the fusion module: the frozen
                       decoder is an implicit constraint on the fused latent's distribution.
3. ``finetune_decoder`` freezes the fusion module and fine-tunes the decoder on z_final.

Each is a plain function ``(model, PhaseConfig, train, val, report) -> metrics`` that knows
nothing of Ray, Optuna or MLflow. ``report(dict)`` receives the training curve. Training data is
a tensor of images (N, 3, H, W) in [0, 1], a ``FeatureSet`` of cached encoder features, or a
Dataset of (image, label): a TensorDataset is gathered from directly like a tensor, any other
(an ImageFolder) streams through a DataLoader in the same batch order, never stacked whole.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import nn
from torch.utils.data import Dataset

from .assets import atomic_path
from .config import validated
from .data import ImageBatches, images_of, make_loader, unwrap
from .drorae import DRoRAE
from .errors import ConfigError
from .losses import LossConfig, ReconstructionLoss

log = logging.getLogger(__name__)

Report = Callable[[dict], None]
PHASES = {1: "decoder", 2: "fusion", 3: "finetune"}


@validated("phase")
class PhaseConfig:
    """Budget and optimizer of one training phase."""

    steps: PositiveInt
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    weight_decay: NonNegativeFloat = 0.0  # the fusion gate and experts start at a chosen point; no pull to zero
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1  # cosine decay to lr * min_lr_ratio
    grad_clip: NonNegativeFloat = 1.0  # 0 disables
    loss: LossConfig = field(default_factory=LossConfig)
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0  # 0: evaluate only at the end
    checkpoint_every: NonNegativeInt = 0  # 0: no periodic checkpoint
    val_batch_size: PositiveInt = 256
    seed: int = 0  # a sweep sets it: its own seed for phase 1, each unit's seed for phases 2 and 3
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the trainable module (CUDA)


@dataclass
class FeatureSet:
    """Images with their frozen-encoder features, computed once (a feature cache).

    images (N, 3, H, W); layers (N, L, T, D); base (N, T, D). Features may be fp16 on disk; they
    are cast to float on use.
    """

    images: torch.Tensor
    layers: torch.Tensor
    base: torch.Tensor
    layer_index: tuple[int, ...] | None = None  # the fused blocks among the cached ones; None: all

    def __len__(self) -> int:
        return len(self.images)

    def select(self, layer_index) -> "FeatureSet":
        """The same features with only the blocks ``layer_index`` fused (no copy)."""
        return FeatureSet(self.images, self.layers, self.base, tuple(layer_index))

    def head(self, n: int) -> "FeatureSet":
        """The first ``n`` images and their features."""
        return FeatureSet(self.images[:n], self.layers[:n], self.base[:n], self.layer_index)

    def state_dict(self) -> dict:
        return {"images": self.images, "layers": self.layers, "base": self.base}

    @classmethod
    @torch.no_grad()
    def encode(cls, model: DRoRAE, images: torch.Tensor | Dataset, batch_size: int = 256,
               dtype: torch.dtype = torch.float16) -> "FeatureSet":
        """Encode ``images`` (a tensor, or a Dataset of (image, label) decoded batch by batch).

        The outputs are filled in place, so the peak is the cache itself plus one batch.
        """
        device = _device_of(model)
        images = unwrap(images)
        n = len(images)
        out = None
        start = 0
        for batch in ImageBatches(images, batch_size, pin_memory=device.type == "cuda"):
            ly, b = model.encoder(batch.to(device, non_blocking=True))  # (L, B, T, D), (B, T, D)
            if out is None:
                stacked = images if isinstance(images, torch.Tensor) else torch.empty((n, *batch.shape[1:]))
                out = cls(stacked, torch.empty((n, ly.shape[0], *ly.shape[2:]), dtype=dtype),
                          torch.empty((n, *b.shape[1:]), dtype=dtype))
            end = start + len(batch)
            if out.images is not images:
                out.images[start:end] = batch
            out.layers[start:end] = ly.transpose(0, 1)  # (B, L, T, D)
            out.base[start:end] = b
            start = end
        if out is None:
            raise ValueError("FeatureSet.encode: no images")
        return out


def _device_of(model: nn.Module) -> torch.device:
    return next(model.decoder.parameters()).device


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


def _take(src: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``src[idx]`` on ``device``.

    From host memory to a GPU the rows are gathered straight into pinned memory: a non-blocking
    copy from pageable memory (a plain gather, a memory-mapped cache) is a synchronous one.
    """
    if device.type == "cuda" and src.device.type == "cpu":
        out = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
        return torch.index_select(src, 0, idx, out=out).to(device, non_blocking=True)
    return src[idx].to(device, non_blocking=True)


def _features(model: DRoRAE, data, idx: torch.Tensor, device: torch.device):
    """(images, layers (L, B, T, D), base (B, T, D)) for the batch ``idx`` of a tensor or a FeatureSet."""
    if isinstance(data, FeatureSet):
        images = _take(data.images, idx, device)
        cached = data.layers  # (N, L_cached, T, D)
        if data.layer_index is None:
            layers = _take(cached, idx, device)  # (B, L, T, D)
        elif cached.is_contiguous():  # the fused blocks of the batch in one gather of B * L rows
            blocks = torch.tensor(data.layer_index)
            rows = (idx[:, None] * cached.shape[1] + blocks).flatten()  # (B * L,)
            layers = _take(cached.flatten(0, 1), rows, device)  # (B * L, T, D)
            layers = layers.unflatten(0, (len(idx), len(blocks)))  # (B, L, T, D)
        else:
            layers = cached[idx][:, list(data.layer_index)].to(device, non_blocking=True)  # (B, L, T, D)
        layers = layers.float().transpose(0, 1)  # (L, B, T, D)
        return images, layers, _take(data.base, idx, device).float()
    return _encoded(model, _take(data, idx, device))


def _encoded(model: DRoRAE, images: torch.Tensor):
    """(images, layers (L, B, T, D), base (B, T, D)) of a batch on the model's device, by the frozen encoder."""
    layers, base = model.encoder(images)
    return images, layers, base


def _latent(model: DRoRAE, phase: int, layers, base):
    return base if phase == 1 else model.latent(layers, base)


def _in_order(model: DRoRAE, data, batch_size: int):
    """(images, layers, base) batches over ``data`` in order: gathered, or decoded by a sequential DataLoader."""
    device = _device_of(model)
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
    for images, recon in reconstruct(model, val, batch_size, use_fusion=phase != 1):
        total += (recon - images).abs().sum().item()
        count += images.numel()
    return total / count


def _trainable(model: DRoRAE, phase: int) -> nn.Module:
    if phase == 2:
        if model.fusion is None:
            raise ConfigError("phase 2: the model has no fusion module (expert_hidden is null)")
        return model.fusion
    return model.decoder


def _set_trainable(model: DRoRAE, phase: int) -> nn.Module:
    module = _trainable(model, phase)
    model.requires_grad_(False)
    module.requires_grad_(True)
    model.train()
    return module


def save_atomic(obj, path: Path):
    """torch.save ``obj`` to ``path`` atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def run_phase(model: DRoRAE, phase: int, cfg: PhaseConfig, train, val, report: Report | None = None,
              checkpoint: str | Path | None = None, on_checkpoint: Callable[[int], None] | None = None) -> dict:
    """Train the module of ``phase`` (1, 2 or 3) for ``cfg.steps``; returns final metrics.

    With ``checkpoint`` the phase saves its state every ``cfg.checkpoint_every`` steps and at the
    end, and resumes from that file when it exists (finished phases return at once);
    ``on_checkpoint(step)`` is called after each save.
    """
    report = report or (lambda metrics: None)
    device = _device_of(model)
    module = _set_trainable(model, phase)
    params = [p for p in module.parameters() if p.requires_grad]
    fused_ok = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            fused=fused_ok or None)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = ReconstructionLoss(cfg.loss).to(device)
    disc_opt = None
    if loss_fn.discriminator is not None:
        disc_opt = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                     fused=fused_ok or None)
    train, val = unwrap(train), unwrap(val)
    batches = _Batches(train, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    start_step, elapsed = 0, 0.0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state["phase"] != phase:
            raise ConfigError(f"checkpoint: {ckpt_path} is from phase {state['phase']}, not phase {phase}")
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["rng"].cpu())
        if disc_opt is not None:
            loss_fn.discriminator.load_state_dict(state["discriminator"])
            disc_opt.load_state_dict(state["disc_optimizer"])
        start_step, elapsed = int(state["step"]), float(state["seconds"])
        log.info("phase %d: resumed from %s at step %d", phase, ckpt_path, start_step)

    def save(step: int):
        if ckpt_path is None:
            return
        state = {"phase": phase, "step": step, "seconds": elapsed, "module": module.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "batches": batches.state_dict(), "rng": torch.get_rng_state(), "config": repr(cfg)}
        if disc_opt is not None:
            state["discriminator"] = loss_fn.discriminator.state_dict()
            state["disc_optimizer"] = disc_opt.state_dict()
        save_atomic(state, ckpt_path)
        if on_checkpoint is not None:
            on_checkpoint(step)

    step_fn = module
    if cfg.compile and device.type == "cuda":
        step_fn = torch.compile(module)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    name = PHASES[phase]
    t0 = time.perf_counter() - elapsed
    terms: dict = {}
    stream = None
    if _streams(train) and start_step < cfg.steps:
        stream = _Stream(train, batches, cfg.steps - start_step, device)
    try:
        for step in range(start_step, cfg.steps):
            idx = batches.next_indices()
            with autocast:  # the frozen encoder too, when it runs on the fly: bf16 like the rest, not fp32
                if stream is None:
                    images, layers, base = _features(model, train, idx, device)
                else:
                    images, layers, base = _encoded(model, stream.next())
                if phase == 2:
                    z = step_fn(layers, base)
                else:
                    z = _latent(model, phase, layers, base)
                    if phase == 1 and model.decoder.config.noise_tau > 0:
                        z = z + model.decoder.config.noise_tau * torch.rand(()) * torch.randn_like(z)
                recon = model.decoder(z) if phase == 2 else step_fn(z)
                loss, terms = loss_fn(recon.float(), images, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"phase {phase} ({name}): loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            if loss_fn.adversarial_on(step):
                d_loss = loss_fn.discriminator_loss(recon.float(), images)
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_opt.step()
                terms["adv_d"] = float(d_loss.detach())
            done = step + 1
            elapsed = time.perf_counter() - t0
            if done % cfg.log_every == 0 or done == cfg.steps:
                report({"phase": phase, "step": done, "loss": float(loss.detach()), **terms,
                        "lr": sched.get_last_lr()[0], "seconds": elapsed})
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                report({"phase": phase, "step": done, "val_l1": validation_l1(model, val, cfg.val_batch_size, phase)})
                model.train()
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                save(done)
    finally:
        if stream is not None:
            stream.close()  # its workers, also when a step fails
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


def phase_config_dict(cfg: PhaseConfig) -> dict:
    """Flat dict of a phase config, for logging as params."""
    out = asdict(cfg)
    loss = out.pop("loss")
    out.update({f"loss.{k}": v for k, v in loss.items()})
    return out
