"""Reconstruction losses: L1 + LPIPS + an optional adversarial term that starts late.

Weights are configurable per phase; the adversarial term uses a small PatchGAN discriminator
with the hinge loss, switched on at ``adv_start_step`` (as RAE and most tokenizers do, so that
the reconstruction is good before the discriminator can push on it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import NonNegativeFloat, NonNegativeInt, validated

LpipsNet = Literal["alex", "vgg"]  # torchmetrics' LPIPS backbones that model.assets fetches


@validated("loss")
class LossConfig:
    """Weights of the loss terms."""

    l1: NonNegativeFloat = 1.0
    lpips: NonNegativeFloat = 0.0  # off by default on CPU: LPIPS doubles a tiny step's cost
    lpips_net: LpipsNet = "alex"
    adv: NonNegativeFloat = 0.0
    adv_start_step: NonNegativeInt = 0  # step of the phase at which the adversarial term switches on

    def __post_init__(self):
        if self.l1 == 0 and self.lpips == 0 and self.adv == 0:
            raise ValueError("every loss weight is 0; set l1 (or lpips, adv) > 0")


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: real/fake logits per patch for images (B, 3, H, W) in [0, 1]."""

    def __init__(self, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers, c_in = [], 3
        for i in range(num_layers):
            c_out = channels * 2 ** i
            layers += [nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, 4, 2 if i < num_layers - 1 else 1, 1)),
                       nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)  # (B, 1, h, w)


class ReconstructionLoss(nn.Module):
    """Weighted L1 + LPIPS + adversarial (generator side); ``discriminator_loss`` for the critic."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.config = cfg
        self.lpips = None
        if cfg.lpips > 0:
            from .metrics import load_lpips

            self.lpips = load_lpips(cfg.lpips_net)
        self.discriminator = PatchDiscriminator() if cfg.adv > 0 else None

    def adversarial_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.adv_start_step

    def forward(self, recon: torch.Tensor, target: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """Total generator loss and its terms, for recon/target (B, 3, H, W) in [0, 1]."""
        cfg = self.config
        terms = {"l1": F.l1_loss(recon, target)}
        total = cfg.l1 * terms["l1"]
        if self.lpips is not None:
            terms["lpips"] = self.lpips(recon, target).mean()
            total = total + cfg.lpips * terms["lpips"]
        if self.adversarial_on(step):
            terms["adv_g"] = -self.discriminator(recon).mean()
            total = total + cfg.adv * terms["adv_g"]
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def discriminator_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hinge loss of the discriminator on detached reconstructions."""
        real = self.discriminator(target)
        fake = self.discriminator(recon.detach())
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
