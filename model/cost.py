"""What training and evaluation cost in model FLOPs: counted by torch, and in closed form.

FLOPs here are what ``torch.utils.flop_counter.FlopCounterMode`` counts: matrix products only
(linear layers, batched matmuls, convolutions, attention's QK^T and AV), 2 FLOPs per multiply-add;
normalizations, activations, softmax and the optimizer's elementwise updates are not counted.
Attention runs in PyTorch's math kernel under the counter, so it counts alike on every device.

**Counted.** ``count_step`` runs one real training step of a phase (``model.train._Trainer``: the
latent, the decoder, the loss and its backward, the discriminator's when it is on) on a copy of
the model under the counter; ``count_reconstruction`` runs the evaluation's forward
(``model.train.reconstruct``: encoder, fusion, decoder) on a few images. Both return a
``FlopCount`` per image, by module. A step or an evaluation that reads cached features does not
run the frozen encoder, so its encoder FLOPs are 0: the count is what runs. The FID Inception
network is the metric, not the model: evaluation counts do not include it.

**Closed forms**, per image, for N tokens of an encoder of width d, L fused layers, experts of
width h, a decoder of width D, depth n_b, MLP width M and patch p, T = N + prefix tokens:

    fusion forward      N (4 L d h  +  2 L^2 d  +  2 L d)        experts, router, aggregation (none for L = 1)
    decoder forward     2 N d D  +  n_b (2 N (3D^2 + D^2 + 2 D M)  +  4 N^2 D)  +  2 N D 3p^2
                        embed      qkv, proj, MLP                  QK^T, AV     head
    encoder forward     2 T' 3 p_e^2 d  +  n_e (2 T (4d^2 + 2 d M_e)  +  4 T^2 d)
                        patch conv (T' = N patches)   blocks over T tokens

A training step is a table of factors on those forwards (``PHASE_FACTORS``): a trained module's
matmuls run forward, input-gradient and weight-gradient products (3x forward), except where its
input needs no gradient (the decoder's embed on a frozen latent: 2x); a frozen module on the
gradient path (the decoder in phase 2) computes input gradients only: 2x its linear layers and
3x attention (the gradients of the softmax's inputs and of V both need their own products:
dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q); a frozen module off the gradient path runs
forward only (1x). The encoder is always frozen and off the path. The loss (LPIPS, a
discriminator) is counted, not formed: ``FlopCount.by_module["loss"]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from .decoder import DecoderConfig
from .drorae import DRoRAE
from .encoder import EncoderArchitecture

COUNT_IMAGES = 4  # FLOPs scale with the batch: count a few images, per image
MODULES = ("encoder", "fusion", "decoder", "loss")


@dataclass(frozen=True)
class FlopCount:
    """Model FLOPs per image: the total and its split over ``MODULES`` (the loss is the rest of the total)."""

    total: float
    by_module: dict[str, float]


# --- counted ---------------------------------------------------------------------------------


def _counted(model: DRoRAE, counter, images: int) -> FlopCount:
    """Per image, by module: the counter keys top-level module calls by their class name."""
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    by = {name: counts.get(type(module).__name__, 0) / images if module is not None else 0.0
          for name, module in (("encoder", model.encoder), ("fusion", model.fusion), ("decoder", model.decoder))}
    total = counter.get_total_flops() / images
    # The rest is the loss: FlopCounterMode credits LPIPS's backward to ReconstructionLoss.lpips, but not to
    # ReconstructionLoss itself (its output is a tuple with a dict), so it is read as the remainder.
    by["loss"] = total - sum(by.values())
    return FlopCount(total, by)


def count_step(model: DRoRAE, phase: int, cfg, train, images: int = COUNT_IMAGES, step: int = 0) -> FlopCount:
    """Model FLOPs per image of training step ``step`` of ``phase`` (``cfg``'s loss), counted on ``images`` images.

    The step runs on a deep copy (the model and the global RNG are left as they were), with
    attention in PyTorch's math kernel (the one the counter knows) and without torch.compile.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from .data import unwrap
    from .train import _Trainer

    train = unwrap(train)
    n = max(1, min(images, cfg.batch_size, len(train)))
    probe = copy.deepcopy(model)
    rng = torch.get_rng_state()
    try:
        trainer = _Trainer(probe, phase, replace(cfg, batch_size=n, compile=False), train)
        trainer.open_stream(1)  # a streamed Dataset's batch is decoded ahead, outside the count
        try:
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                trainer.step(step)  # the step's index only switches the adversarial term on
        finally:
            trainer.close_stream()
    finally:
        torch.set_rng_state(rng)
    return _counted(probe, counter, n)


def count_reconstruction(model: DRoRAE, data, images: int = COUNT_IMAGES, use_fusion: bool = True) -> FlopCount:
    """Model FLOPs per image of the evaluation's forward (``reconstruct``) on the first ``images`` of ``data``.

    ``data``: images (N, 3, H, W), a TensorDataset, a FeatureSet (no encoder then) or another Dataset.
    Not the FID Inception: that is the metric's cost, not the model's.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.data import Subset
    from torch.utils.flop_counter import FlopCounterMode

    from .data import unwrap
    from .features import FeatureSet
    from .train import reconstruct

    data = unwrap(data)
    n = max(1, min(images, len(data)))
    if isinstance(data, FeatureSet):
        head = data.head(n)
    elif isinstance(data, torch.Tensor):
        head = data[:n]
    else:
        head = Subset(data, range(n))
    was_training = model.training
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            for _ in reconstruct(model.eval(), head, batch_size=n, use_fusion=use_fusion):
                pass
    finally:
        model.train(was_training)
    return _counted(model, counter, n)


def step_flops(model: DRoRAE, phase: int, cfg, train, images: int = COUNT_IMAGES, step: int = 0) -> float:
    """Model FLOPs of training step ``step`` of ``phase`` at ``cfg.batch_size`` (``count_step`` scaled to the batch)."""
    return count_step(model, phase, cfg, train, images, step).total * cfg.batch_size


def phase_flops(model: DRoRAE, phase: int, cfg, train) -> float:
    """Model FLOPs of a whole phase: ``cfg.steps`` steps, counted once before and once after the step where the
    adversarial term (and the discriminator's own step) switches on, when that is inside the phase."""
    on = cfg.loss.adv_start_step if cfg.loss.adv > 0 else cfg.steps
    if not 0 < on < cfg.steps:  # the same step throughout: step 0's count
        return step_flops(model, phase, cfg, train) * cfg.steps
    return (step_flops(model, phase, cfg, train) * on
            + step_flops(model, phase, cfg, train, step=on) * (cfg.steps - on))


def device_description(device: torch.device) -> str:
    """What a trial ran on: the GPU's name and how many this process sees, or the CPU's model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# --- closed forms ----------------------------------------------------------------------------


def fusion_forward_flops(tokens: int, dim: int, num_layers: int, hidden: int) -> int:
    """Forward FLOPs of ``DepthRoutedFusion(dim, num_layers, hidden)`` on ``tokens`` tokens.

    Per token: L experts d -> h -> d (2 d h each way), the router L d -> L, the weighted sum of
    the L expert outputs (L d multiply-adds). With one layer (L = 1) that sum is one weight times
    one expert's output: torch's einsum runs it elementwise, not as a matmul, and it is not counted.
    """
    L, d, h = num_layers, dim, hidden
    aggregation = 2 * L * d if L > 1 else 0
    return tokens * (4 * L * d * h + 2 * L * L * d + aggregation)


@dataclass(frozen=True)
class DecoderFlops:
    """Forward FLOPs of the ViT decoder per image, in the parts the backward treats differently."""

    embed: int  # the latent's linear map d -> D: its input gradient is only needed when the latent has one
    linear: int  # every other weight: qkv, proj, MLP in each block, and the head
    attention: int  # QK^T and AV: products of activations, no weights

    @property
    def forward(self) -> int:
        return self.embed + self.linear + self.attention


def decoder_forward_flops(cfg: DecoderConfig, latent_dim: int, tokens: int, patch: int) -> DecoderFlops:
    """Forward FLOPs of ``ViTDecoder(cfg, latent_dim, grid, patch)`` on one image of ``tokens`` tokens.

    timm's Block: qkv D -> 3D, proj D -> D, MLP D -> M -> D with M = int(D * mlp_ratio); attention
    4 N D per token per block (QK^T and AV, 2 N D each); embed d -> D; head D -> 3 p^2.
    """
    N, D, M = tokens, cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    block = 2 * N * (3 * D * D + D * D + 2 * D * M)
    head = 2 * N * D * 3 * patch * patch
    return DecoderFlops(embed=2 * N * latent_dim * D, linear=cfg.depth * block + head,
                        attention=cfg.depth * 4 * N * N * D)


def encoder_forward_flops(arch: EncoderArchitecture) -> int:
    """Forward FLOPs of the frozen ViT per image: the patch convolution, then every block over the
    patch and prefix tokens (qkv, proj, MLP, attention). Resizing and normalizing are not matmuls."""
    d, T, N = arch.dim, arch.tokens + arch.prefix_tokens, arch.tokens
    patch = 2 * N * 3 * arch.patch_size ** 2 * d
    block = 2 * T * (4 * d * d + 2 * d * arch.mlp_hidden) + 4 * T * T * d
    return patch + arch.depth * block


@dataclass(frozen=True)
class Factors:
    """Multiples of a module's forward FLOPs that one training step of a phase runs."""

    fusion: int  # of the fusion forward
    embed: int  # of the decoder's embed
    linear: int  # of the decoder's other weights
    attention: int  # of the decoder's attention


# Trained: 3x (forward, input and weight gradients); the decoder's embed on a latent without a gradient: 2x.
# Frozen on the gradient path (the decoder in phase 2): input gradients only, 2x linear, 3x attention.
# Frozen off it (the fusion in phase 3): 1x. Not run (phase 1 has no fusion): 0.
PHASE_FACTORS = {
    1: Factors(fusion=0, embed=2, linear=3, attention=3),  # the decoder on z_base (frozen encoder's, no gradient)
    2: Factors(fusion=3, embed=2, linear=2, attention=3),  # the fusion; the frozen decoder passes its gradient back
    3: Factors(fusion=1, embed=2, linear=3, attention=3),  # the decoder on the frozen fusion's latent
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the closed forms read: the encoder, the fused layers and width, the decoder."""

    encoder: EncoderArchitecture
    decoder: DecoderConfig
    patch: int  # decoder patch: image_size / grid
    fused_layers: int
    hidden: int | None  # expert width; None: no fusion module

    @classmethod
    def of(cls, model: DRoRAE) -> ModelShape:
        f = model.fusion
        return cls(model.encoder.arch, model.decoder.config, model.decoder.patch_size, len(model.encoder.layers),
                   None if f is None else f.config.hidden)

    def fusion_forward(self) -> int:
        e = self.encoder
        return 0 if self.hidden is None else fusion_forward_flops(e.tokens, e.dim, self.fused_layers, self.hidden)

    def decoder_forward(self) -> DecoderFlops:
        return decoder_forward_flops(self.decoder, self.encoder.dim, self.encoder.tokens, self.patch)


def closed_step(shape: ModelShape, phase: int, cached: bool) -> FlopCount:
    """Model FLOPs per image of one training step of ``phase`` in closed form (the loss's network excluded:
    ``by_module["loss"]`` is 0); ``cached``: features read from the cache, no encoder."""
    f, dec = PHASE_FACTORS[phase], shape.decoder_forward()
    by = {"encoder": 0 if cached else encoder_forward_flops(shape.encoder),
          "fusion": f.fusion * shape.fusion_forward(),
          "decoder": f.embed * dec.embed + f.linear * dec.linear + f.attention * dec.attention,
          "loss": 0}
    return FlopCount(float(sum(by.values())), {k: float(v) for k, v in by.items()})


def closed_reconstruction(shape: ModelShape, cached: bool, use_fusion: bool = True) -> FlopCount:
    """Model FLOPs per image of the evaluation's forward in closed form (no FID Inception)."""
    by = {"encoder": 0 if cached else encoder_forward_flops(shape.encoder),
          "fusion": shape.fusion_forward() if use_fusion else 0,
          "decoder": shape.decoder_forward().forward, "loss": 0}
    return FlopCount(float(sum(by.values())), {k: float(v) for k, v in by.items()})
