"""The frozen pretrained ViT encoder: every block's tokens plus the base latent z_base.

DRoRAE (Zhu et al. 2026) reads *every* block of a frozen ViT (DINOv2-B with registers in the
paper). timm's ``forward_intermediates`` gives each block's output with the prefix (class and
register) tokens dropped. ``z_base``, the latent a plain RAE feeds its decoder, is the last block's
patch tokens under a LayerNorm *without* its affine: RAE (Zheng et al. 2025) switches the DINOv2
final LayerNorm's elementwise affine off and keeps its eps (1e-6), so every token of z_base has zero
mean and unit variance over its d channels (docs/design-notes.md).

Offline, no pretrained ViT can be downloaded, so the embedded default encoder is a tiny timm ViT
that the tool pretrains itself, supervised, on the default dataset, once, cached by a hash of its
config (``pretrain_tiny_encoder``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .config import BadValue, Float, Int, PositiveFloat, PositiveInt, Text, exception_line, short_repr, validated
from .errors import AssetError, ConfigError
from .progress import Progress
from .version import code_version

log = logging.getLogger(__name__)

SELF_PRETRAINED = "self-pretrained"  # weights source: the tool pretrains the encoder on the data


# Keys of timm.create_model (and of its builder) that are not sizes of the architecture: they would load a
# file (checkpoint_path: a FIFO or /dev/zero would hang the plan), fetch weights, or place the model on a real
# device, where the plan builds it on the meta device. The tool sets the others itself.
NOT_MODEL_KWARGS = {
    **dict.fromkeys(("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                     "pretrained_strict", "pretrained_filter_fn", "pretrained_model_args"),
                    "the weights are encoder.weights and encoder.checkpoint"),
    **dict.fromkeys(("device", "dtype"), "the sweep places the model (resources.gpu)"),
    **dict.fromkeys(("img_size",), "set encoder.input_size"),
    **dict.fromkeys(("num_classes", "features_only", "feature_cfg", "kwargs_filter", "model_cfg", "scriptable",
                     "exportable", "no_jit"), "the tool sets it"),
}


# The largest number a model_kwargs value may hold: timm does work in Python per block before it builds one
# (its drop-path rates: depth 10^6 took 9 s and 650 MB), and the largest real ViT sizes are a few thousand.
MAX_MODEL_KWARG = 2**16


def _too_big(value):
    """The first number in ``value`` (a model_kwargs value, maybe a list or mapping) over MAX_MODEL_KWARG, or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if not abs(value) <= MAX_MODEL_KWARG else None  # NaN too
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((big for big in map(_too_big, items) if big is not None), None)


@validated("encoder")
class EncoderConfig:
    """Which timm ViT, from which weights, fusing which blocks."""

    name: Text  # timm model name, optionally with a pretrained tag (".lvd142m")
    weights: Literal["hub", "none", "self-pretrained"] = "hub"  # timm's pretrained source, random, or our own
    checkpoint: Text | None = None  # local weights file; wins over `weights` when set
    input_size: PositiveInt = 224  # encoder input resolution; images are resized to it when they differ
    layers: Annotated[tuple[Int, ...], Field(min_length=1)] | None = None  # fused blocks (<0: from the end); None: all
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm create_model overrides (sizes, patch)
    mean: tuple[Float, Float, Float] | None = None  # input normalization; None: the model's own
    std: tuple[Float, Float, Float] | None = None
    # Self-pretraining (only with weights="self-pretrained"): supervised, short, cached by hash.
    pretrain_steps: PositiveInt = 400  # 400 steps x 128: 73% test accuracy on Fashion-MNIST, ~3.5 min on 2 cores
    pretrain_batch_size: PositiveInt = 128
    pretrain_lr: PositiveFloat = 1e-3

    def __post_init__(self):
        for key, value in self.model_kwargs.items():
            if key in NOT_MODEL_KWARGS:
                raise BadValue(f"model_kwargs.{key}", f"not an argument of the model's architecture; "
                                                      f"{NOT_MODEL_KWARGS[key]}")
            big = _too_big(value)
            if big is not None:
                raise BadValue(f"model_kwargs.{key}", f"{short_repr(big, 40)} is out of range for a size of the "
                                                      "architecture; expected a finite number of at most "
                                                      f"{MAX_MODEL_KWARG} in magnitude")
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().is_file():
            raise AssetError(f"encoder.checkpoint: no such file {self.checkpoint}")

    @property
    def arch(self) -> str:
        """The timm architecture name without its pretrained tag."""
        return self.name.split(".", 1)[0]

    def hash(self) -> str:
        """Content hash of what determines the encoder's weights (for caches; what the code computes from
        them is in the caches' keys as ``model.version.code_version``)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("layers", "checkpoint")}
        if self.checkpoint is not None:  # its content, not where it is: a moved cache keeps its keys
            path = Path(self.checkpoint).expanduser().resolve()
            st = path.stat()
            keep["checkpoint"] = _file_digest(str(path), st.st_size, st.st_mtime_ns)
        return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-1 of a checkpoint's tensors (names and bytes), once per (path, size, mtime) in a process.

    The tensors, not the file's bytes: torch.save names the archive inside the file after the file, so
    the same weights written under two names (an atomic write's temporary name) differ as bytes.
    A file that is not a state dict of tensors is hashed as bytes. A ViT-B checkpoint: about 1 s.
    """
    digest = hashlib.sha1()
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a torch file (timm also reads safetensors and others): its bytes
        state = None
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        for name in sorted(state):
            t = state[name].detach().contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _base_tiny() -> EncoderConfig:
    # The prototype's encoder: patch 4 on 32 px -> 8x8 tokens, dim 96, depth 6, 3 heads (683k params).
    return EncoderConfig(
        name="vit_tiny_patch16_224", weights=SELF_PRETRAINED, input_size=32,
        model_kwargs=dict(patch_size=4, embed_dim=96, depth=6, num_heads=3),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )


# Presets: one table derived from a base (DINOv2 with registers, as in the paper).
_DINOV2 = EncoderConfig(name="vit_base_patch14_reg4_dinov2.lvd142m", input_size=224)
ENCODER_PRESETS: dict[str, EncoderConfig] = {
    "tiny": _base_tiny(),
    "dinov2-s": replace(_DINOV2, name="vit_small_patch14_reg4_dinov2.lvd142m"),
    "dinov2-b": _DINOV2,
    "dinov2-l": replace(_DINOV2, name="vit_large_patch14_reg4_dinov2.lvd142m"),
}


def check_model_name(name: str) -> None:
    """Fail with close matches when timm has no such model."""
    import timm

    arch = name.split(".", 1)[0]
    known = timm.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('vit*')"
        raise ConfigError(f"encoder.name: timm has no model {name!r}{hint}")


def _create_timm(cfg: EncoderConfig) -> nn.Module:
    import timm

    check_model_name(cfg.name)
    kwargs = dict(cfg.model_kwargs, num_classes=0, img_size=cfg.input_size)
    if cfg.checkpoint is not None:
        path = str(Path(cfg.checkpoint).expanduser())
        try:  # timm's own loader: filters/converts checkpoints (DINOv2, registers, pos-embed resize)
            return timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
        except Exception as exc:  # a checkpoint saved by this tool (plain state dict with a head)
            model = timm.create_model(cfg.name, pretrained=False, **kwargs)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.get("model", state).items() if not k.startswith("head.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise AssetError(f"encoder.checkpoint: {path} does not fit {cfg.name} ({exc})") from None
            return model
    if cfg.weights == "hub":
        try:
            return timm.create_model(cfg.name, pretrained=True, **kwargs)
        except Exception as exc:
            first = str(exc).split(". ")[0].splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise AssetError(
                f"encoder.name: could not load pretrained weights for {cfg.name} from the model hub ({first}); "
                "download them where the internet is reachable and set encoder.checkpoint to the file"
            ) from None
    if cfg.weights == SELF_PRETRAINED:
        raise ConfigError("encoder.weights: self-pretrained encoders are built by pretrain_tiny_encoder(); "
                          "pass its checkpoint")
    return timm.create_model(cfg.name, pretrained=False, **kwargs)


@dataclass(frozen=True)
class EncoderArchitecture:
    """What the rest of the model needs to know of an encoder's ViT, at the config's input size."""

    dim: int  # token width d
    depth: int  # blocks
    patch_size: int
    grid: int  # tokens per side: input_size / patch_size
    params: int
    prefix_tokens: int = 0  # class and register tokens, which every block also runs on (model.cost)
    mlp_hidden: int = 0  # the blocks' MLP hidden width (model.cost)

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def decoder_patch(self, image_size: int, key: str = "image_size") -> int:
        """The decoder's patch size for images of ``image_size`` px (``key`` names that size in errors)."""
        if image_size % self.grid:
            raise ConfigError(f"{key}: {image_size} px is not divisible by the encoder's token grid "
                              f"{self.grid}x{self.grid} (decoder patches must tile the image)")
        return image_size // self.grid


def architecture_of(vit: nn.Module, cfg: EncoderConfig) -> EncoderArchitecture:
    """The architecture of ``vit``, a timm model built from ``cfg``; ConfigError where it cannot serve."""
    if not hasattr(vit, "forward_intermediates") or not hasattr(vit, "patch_embed"):
        raise ConfigError(f"encoder.name: {cfg.name} is not a ViT with forward_intermediates")
    patch = vit.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if len(vit.blocks) < 1:
        raise ConfigError(f"encoder.model_kwargs: {cfg.name} with model_kwargs {short_repr(cfg.model_kwargs, 200)} "
                          "has no blocks; expected a ViT of at least one block")
    if cfg.input_size % patch:
        raise ConfigError(f"encoder.input_size: {cfg.input_size} px is not divisible by the patch size {patch}")
    mlp = getattr(vit.blocks[0], "mlp", None)
    return EncoderArchitecture(dim=vit.embed_dim, depth=len(vit.blocks), patch_size=patch,
                               grid=cfg.input_size // patch, params=sum(p.numel() for p in vit.parameters()),
                               prefix_tokens=int(getattr(vit, "num_prefix_tokens", 0)),
                               mlp_hidden=int(getattr(getattr(mlp, "fc1", None), "out_features", 0)))


# The most modules a plan builds for one model on the meta device: about 130 ViT blocks of ~19 modules each
# (the largest ViTs have 48). Building one takes ~10 ms even there, so this bounds a plan's time (a
# 10^6-block encoder asked through model_kwargs would take hours) while any real model fits.
MAX_META_MODULES = 2500


@contextlib.contextmanager
def on_meta(key: str, max_modules: int = MAX_META_MODULES):
    """Build modules on the meta device (shapes, no memory), refusing one of more than ``max_modules`` modules
    with a ConfigError naming ``key`` (raised while it is built, before the rest of it is)."""
    count = 0

    def hook(module, name, submodule):
        nonlocal count
        count += 1
        if count > max_modules:
            raise ConfigError(f"{key}: the model has more than {max_modules} modules (about "
                              f"{max_modules // 19} ViT blocks); expected a model of at most that size")

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        with torch.device("meta"):
            yield
    finally:
        handle.remove()


def encoder_architecture(cfg: EncoderConfig) -> EncoderArchitecture:
    """``cfg``'s architecture from timm's table, built on the meta device: no weights, nothing downloaded."""
    import timm

    check_model_name(cfg.name)
    try:
        with on_meta("encoder.model_kwargs"):
            vit = timm.create_model(cfg.name, pretrained=False, num_classes=0, img_size=cfg.input_size,
                                    **cfg.model_kwargs)
        arch = architecture_of(vit, cfg)
    except ConfigError:
        raise
    except Exception as exc:  # whatever timm or torch make of the kwargs: a key the ViT does not take (TypeError),
        # patch_size 0 (ZeroDivisionError), mlp_ratio -1 (RuntimeError: a negative dimension), sizes that overflow
        raise ConfigError(f"encoder.model_kwargs: timm cannot build {cfg.name} with input_size={cfg.input_size} and "
                          f"model_kwargs {short_repr(cfg.model_kwargs, 200)} ({exception_line(exc)})") from None
    return arch


class FrozenEncoder(nn.Module):
    """A frozen timm ViT returning the fused blocks' tokens and z_base (its last block, LayerNorm'd without affine)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        vit = _create_timm(cfg)
        self.arch = architecture_of(vit, cfg)
        self.vit = vit.eval().requires_grad_(False)
        self.norm_eps = float(getattr(vit.norm, "eps", 1e-6))  # the final norm's eps (DINOv2's: 1e-6, as in RAE)
        self.layers = self._resolve_layers(cfg.layers)
        mean = cfg.mean or vit.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.std or vit.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.arch.tokens

    def _resolve_layers(self, layers) -> tuple[int, ...]:
        depth = self.arch.depth
        if layers is None:
            return tuple(range(depth))
        out = []
        for i in layers:
            if not isinstance(i, int) or not -depth <= i < depth:
                raise ConfigError(f"encoder.layers: block index {i!r} is out of range for a {depth}-block "
                                  f"encoder (expected -{depth}..{depth - 1})")
            out.append(i % depth)
        if len(set(out)) != len(out):
            raise ConfigError(f"encoder.layers: repeated block index in {list(layers)}")
        return tuple(sorted(out))

    def train(self, mode: bool = True):
        """Always stays in eval mode: the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused layers (L, B, N, D) and z_base (B, N, D) for images (B, 3, H, W) in [0, 1]."""
        x = images
        if x.shape[-1] != self.config.input_size or x.shape[-2] != self.config.input_size:
            x = F.interpolate(x, size=self.config.input_size, mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        blocks = self.vit.forward_intermediates(x, indices=None, output_fmt="NLC", intermediates_only=True)
        layers = torch.stack([blocks[i] for i in self.layers])  # (L, B, N, D), prefix tokens dropped
        # RAE's z_base: the final LayerNorm without its affine. Per token, so dropping the prefix first changes nothing.
        base = F.layer_norm(blocks[-1], (self.arch.dim,), eps=self.norm_eps)  # (B, N, D)
        return layers, base


# --- the offline default: a tiny ViT pretrained by the tool ----------------------------------


def _cache_root() -> Path:
    from .assets import cache_root

    return cache_root()


def pretrain_tiny_encoder(cfg: EncoderConfig, images: torch.Tensor, labels: torch.Tensor,
                          data_key: str, cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Supervised pretraining of ``cfg``'s ViT on (images, labels), once; returns the cached file.

    The cache key hashes the encoder config, the dataset key, the seed and the model code's version,
    so a second call (or a second sweep) with the same inputs and code reuses the file.
    """
    import timm

    cache_dir = Path(cache_dir) if cache_dir is not None else _cache_root() / "encoders"
    key = hashlib.sha1(f"{cfg.hash()}|{data_key}|{len(images)}|{seed}|{code_version()}".encode()).hexdigest()[:12]
    path = cache_dir / f"{cfg.arch}-{key}.pt"
    if path.exists():
        log.info("encoder: reusing pretrained %s", path)
        return path
    check_model_name(cfg.name)
    num_classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    vit = timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, img_size=cfg.input_size,
                            **cfg.model_kwargs)
    mean = torch.tensor(cfg.mean or (0.5, 0.5, 0.5)).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std or (0.5, 0.5, 0.5)).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(vit.parameters(), lr=cfg.pretrain_lr, weight_decay=0.05)
    # OneCycleLR divides by its warm-up's length, pct_start * total_steps - 1 steps: zero at exactly 10
    # steps (a ZeroDivisionError), so there the warm-up is half a step longer; every other count as it was.
    pct_start = 0.1 if 0.1 * cfg.pretrain_steps != 1 else 0.15
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.pretrain_lr, total_steps=cfg.pretrain_steps,
                                                pct_start=pct_start)
    gen = torch.Generator().manual_seed(seed)
    vit.train()
    start = time.perf_counter()
    log.info("encoder: pretraining %s for %d steps on %d images", cfg.arch, cfg.pretrain_steps, len(images))
    with Progress(cfg.pretrain_steps, "pretrain encoder", log) as progress:
        for _ in range(cfg.pretrain_steps):
            idx = torch.randint(0, len(images), (cfg.pretrain_batch_size,), generator=gen)
            x = images[idx]
            if x.shape[-1] != cfg.input_size:
                x = F.interpolate(x, size=cfg.input_size, mode="bicubic", align_corners=False)
            loss = F.cross_entropy(vit((x - mean) / std), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update()
    log.info("encoder: pretrained %s for %d steps in %.0f s (last loss %.3f)", cfg.arch, cfg.pretrain_steps,
             time.perf_counter() - start, loss.item())
    from drorae_io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(vit.state_dict(), tmp)
    return path


def ensure_encoder_weights(cfg: EncoderConfig, data, seed: int = 0) -> EncoderConfig:
    """``cfg`` with its weights resolved: a self-pretrained encoder is trained (once) on ``data``.

    ``data`` is a ``model.data.DataConfig``; the result names the cached checkpoint.
    """
    if cfg.weights != SELF_PRETRAINED or cfg.checkpoint is not None:
        return cfg
    from .data import fashion_mnist, load_split

    if data.name == "fashion-mnist":
        images, labels = fashion_mnist("train", data.resolution, data.root, data.num_train)
    else:  # an ImageFolder: its class folders are the labels
        loader = torch.utils.data.DataLoader(load_split(data, "train"), batch_size=256)
        batches = list(loader)
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    path = pretrain_tiny_encoder(cfg, images, labels, data.key, seed=seed)
    return replace(cfg, checkpoint=str(path))
