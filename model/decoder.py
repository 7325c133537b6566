"""ViT pixel decoder, as in RAE: linear in, positional embedding, timm Blocks, norm, linear to
patch pixels, unpatchify.

The decoder maps N = g x g latent tokens of width d_enc to an image of side g * patch_size.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .config import BadValue, NonNegativeFloat, PositiveFloat, PositiveInt, validated
from .errors import ConfigError


@validated("decoder")
class DecoderConfig:
    """Width, depth and heads of the ViT decoder."""

    dim: PositiveInt = 768
    depth: PositiveInt = 12
    num_heads: PositiveInt = 12
    mlp_ratio: PositiveFloat = 4.0
    noise_tau: NonNegativeFloat = 0.0  # RAE trains its decoder on noise-augmented latents; 0 disables

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise BadValue("num_heads", f"{self.num_heads} does not divide decoder.dim {self.dim}")


# Presets from one base (RAE's ViT-B decoder); `tiny` is the prototype's CPU decoder (424k params).
_BASE = DecoderConfig()
DECODER_PRESETS: dict[str, DecoderConfig] = {
    "tiny": replace(_BASE, dim=128, depth=2, num_heads=4),
    "small": replace(_BASE, dim=384, depth=6, num_heads=6),
    "base": _BASE,
    "large": replace(_BASE, dim=1024, depth=24, num_heads=16),
    "xl": replace(_BASE, dim=1152, depth=28, num_heads=16),
}


class ViTDecoder(nn.Module):
    """Latent tokens (B, N, d_enc) -> image (B, 3, g*p, g*p)."""

    def __init__(self, cfg: DecoderConfig, latent_dim: int, grid: int, patch_size: int):
        super().__init__()
        if patch_size < 1:
            raise ConfigError(f"decoder: patch size must be >= 1, got {patch_size}")
        self.config, self.grid, self.patch_size = cfg, grid, patch_size
        self.embed = nn.Linear(latent_dim, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, cfg.dim))
        self.blocks = nn.Sequential(*[Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True)
                                      for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, patch_size * patch_size * 3)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, N, d_enc) -> images (B, 3, H, W), unbounded (about [0, 1])."""
        x = self.embed(z) + self.pos_embed  # (B, N, D)
        x = self.norm(self.blocks(x))  # (B, N, D)
        x = self.head(x)  # (B, N, p*p*3)
        return self.unpatchify(x)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, g, p = x.shape[0], self.grid, self.patch_size
        x = x.reshape(B, g, g, p, p, 3)  # (B, g, g, p, p, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)  # (B, 3, H, W)
