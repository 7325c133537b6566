"""DRoRAE: frozen encoder -> depth-routed fusion -> ViT decoder (Zhu et al. 2026, section 3).

With no fusion module it is a plain RAE: the decoder reads z_base.
"""

from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from .config import PositiveInt, validated
from .decoder import DECODER_PRESETS, DecoderConfig, ViTDecoder
from .encoder import ENCODER_PRESETS, EncoderConfig, FrozenEncoder
from .fusion import BetaMax, DepthRoutedFusion, FusionConfig


@validated(None)
class DRoRAEConfig:
    """Encoder, decoder, image size and (optionally) the fusion width of one model."""

    encoder: EncoderConfig = field(default_factory=lambda: ENCODER_PRESETS["tiny"])
    decoder: DecoderConfig = field(default_factory=lambda: DECODER_PRESETS["tiny"])
    image_size: PositiveInt = 32  # decoder output side; the encoder input is resized to encoder.input_size
    expert_hidden: PositiveInt | None = None  # fusion expert width h; None: a plain RAE (no fusion)
    beta_max: BetaMax = 1.0  # bound of the incremental correction (see fusion.py)


class DRoRAE(nn.Module):
    """encode (images -> latent tokens), decode (latent tokens -> images), forward (both)."""

    def __init__(self, encoder: FrozenEncoder, decoder: ViTDecoder, fusion: DepthRoutedFusion | None = None):
        super().__init__()
        self.encoder, self.decoder, self.fusion = encoder, decoder, fusion

    @classmethod
    def from_config(cls, cfg: DRoRAEConfig) -> DRoRAE:
        encoder = FrozenEncoder(cfg.encoder)
        arch = encoder.arch
        decoder = ViTDecoder(cfg.decoder, arch.dim, arch.grid, arch.decoder_patch(cfg.image_size))
        fusion = None
        if cfg.expert_hidden is not None:
            fusion = DepthRoutedFusion(config=FusionConfig(
                dim=arch.dim, num_layers=len(encoder.layers), hidden=cfg.expert_hidden, beta_max=cfg.beta_max))
        return cls(encoder, decoder, fusion)

    def latent(self, layers: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """z_final from encoder features: layers (L, B, N, D), base (B, N, D) -> (B, N, D)."""
        return base if self.fusion is None else self.fusion(layers, base)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> latent tokens (B, N, D)."""
        layers, base = self.encoder(images)
        return self.latent(layers, base)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent tokens (B, N, D) -> images (B, 3, H, W)."""
        return self.decoder(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> reconstructions (B, 3, H, W)."""
        return self.decode(self.encode(images))

    def fusion_params(self) -> int:
        """Trainable parameters of the fusion module (the capacity), 0 for a plain RAE."""
        return 0 if self.fusion is None else sum(p.numel() for p in self.fusion.parameters())
