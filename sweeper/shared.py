"""Shared work of a sweep, done once per content hash and reused by every trial and later sweeps.

- the offline default encoder's pretraining (``model.ensure_encoder_weights``),
- the frozen-encoder feature cache (train + validation features, when they fit the budget),
- the FID reference statistics of the evaluation images,
- the phase-1 decoder (a plain RAE on z_base) and its final training state.

Everything lands in the cache directory under a name derived from what determines it, written
atomically; a second sweep with other capacities finds it all there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from drorae_io import atomic_path
from model import DRoRAE, DRoRAEConfig, FeatureSet, ensure_encoder_weights, train_decoder
from model.data import ImageBatches, load_split
from model.features import load_feature_cache, save_feature_cache
from model.train import save_atomic
from model.version import code_version

from .splits import Splits, split, splits_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shared:
    """Where a sweep's shared artifacts are; passed to every trial."""

    encoder_checkpoint: str | None
    decoder_path: str
    decoder_state_path: str  # phase 1's final training state (optimizer, discriminator): decoder_only continues it
    phase1: dict  # metrics of the phase-1 decoder (val_l1 on the selection split, seconds)
    features_path: str | None  # FeatureSet file {"train": ..., "val": ...}; None: encode on the fly
    fid_key: str  # key of the cached FID reference statistics
    splits: Splits  # the selection and evaluation images (sweeper.splits)
    seconds: dict  # wall time of each piece of shared work in this run (0 when it came from the cache)


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir(spec_cache_dir: str | None) -> Path:
    if spec_cache_dir:
        return Path(spec_cache_dir).expanduser()
    from model.assets import cache_root

    return cache_root()


def feature_bytes(n_images: int, depth: int, tokens: int, dim: int) -> int:
    """fp16 bytes of every block's tokens plus z_base for ``n_images`` images."""
    return n_images * (depth + 1) * tokens * dim * 2


def prepare(plan, device: str = "cpu") -> Shared:
    """Do (or find) all shared work of ``plan``; runs inside one Ray task.

    Reproducible for a given spec and code from an empty cache: the work runs on
    ``resources.shared_threads`` threads (a parallel reduction's rounding depends on how many), with
    deterministic algorithms, every random draw seeded from the spec's ``seed``; every cache key holds
    the model code's version. What stays machine-dependent is the CPU's own kernels (README).
    """
    import torch

    spec = plan.spec
    root = cache_dir(spec.cache_dir)
    torch.set_num_threads(spec.resources.shared_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    version = (code_version(), spec.resources.shared_threads)
    seconds = {}
    t = time.perf_counter()
    encoder = ensure_encoder_weights(plan.encoder, plan.data, seed=spec.seed)
    seconds["encoder"] = time.perf_counter() - t
    enc_all = replace(encoder, layers=None)
    torch.manual_seed(spec.seed)  # the phase-1 decoder's initialization
    rae = DRoRAE.from_config(DRoRAEConfig(encoder=enc_all, decoder=plan.decoder, image_size=spec.data.resolution))
    rae.to(device)
    # Datasets, never stacked whole: an ImageFolder (ImageNet) streams through DataLoaders below.
    train_images, val_images = load_split(plan.data, "train"), load_split(plan.data, "val")
    splits = splits_of(spec, len(train_images), len(val_images))

    # Frozen-encoder features: when they fit the budget, computed once and memory-mapped by trials.
    data_id = _digest(encoder.hash(), plan.data.key, len(train_images), len(val_images), version)
    n_bytes = feature_bytes(len(train_images) + len(val_images), plan.depth, plan.tokens, plan.dim)
    features_path = None
    t = time.perf_counter()
    if n_bytes <= spec.feature_cache.max_gb * 1e9:
        features_path = root / "features" / f"{data_id}.pt"
        if not features_path.exists():
            log.info("feature cache: encoding %d + %d images (%.0f MiB)", len(train_images), len(val_images),
                     n_bytes / 2**20)
            save_feature_cache(features_path, FeatureSet.encode(rae, train_images), FeatureSet.encode(rae, val_images))
    else:
        log.info("feature cache: %.1f GB exceeds feature_cache.max_gb=%s; trials encode on the fly",
                 n_bytes / 1e9, spec.feature_cache.max_gb)
    seconds["features"] = time.perf_counter() - t
    train, select, evaluate = split(splits, train_images, val_images)

    # FID reference statistics of the evaluation images (the first eval.n_images of the val split).
    t = time.perf_counter()
    from model.metrics import reference_stats

    fid_key = f"{plan.data.key}-{_digest(*version)[:8]}"
    reference_stats(ImageBatches(evaluate, spec.eval.batch_size), fid_key, spec.eval.n_images,
                    batch_size=spec.eval.batch_size, device=device, runtime=spec.eval.inception_runtime)
    seconds["fid_stats"] = time.perf_counter() - t

    # Phase 1: the decoder on z_base, shared by every trial. Checkpointed, so it resumes too.
    t = time.perf_counter()
    p1_id = _digest(data_id, asdict(plan.decoder), asdict(plan.phase1), spec.data.resolution, spec.seed,
                    splits.describe())
    decoder_path = root / "decoders" / f"{p1_id}.pt"
    state_path = decoder_path.with_suffix(".state.pt")
    metrics_path = decoder_path.with_suffix(".json")
    if not decoder_path.exists():
        if features_path is not None:
            train, select, _ = split(splits, *load_feature_cache(features_path))
        log.info("phase 1: training the decoder on z_base for %d steps", plan.phase1.steps)
        metrics = train_decoder(rae, plan.phase1, train, select, checkpoint=state_path)
        with atomic_path(metrics_path) as tmp:
            tmp.write_text(json.dumps(metrics))
        save_atomic(rae.decoder.state_dict(), decoder_path)  # last: its presence means phase 1 is done
        log.info("phase 1: selection-split L1 %.4f after %d steps (%.0f s)", metrics["val_l1"], plan.phase1.steps,
                 metrics["train_seconds"])
    seconds["phase1"] = time.perf_counter() - t
    return Shared(encoder_checkpoint=encoder.checkpoint, decoder_path=str(decoder_path),
                  decoder_state_path=str(state_path), phase1=json.loads(metrics_path.read_text()),
                  features_path=str(features_path) if features_path else None, fid_key=fid_key, splits=splits,
                  seconds=seconds)
