"""Depth-routed fusion of every encoder layer into the base latent (DRoRAE, Zhu et al. 2026).

"Beyond the Last Layer: Multi-Layer Representation Fusion for Visual Tokenization",
arXiv 2605.10780, section 3. For the L fused layers h_1..h_L of a frozen ViT (tokens, prefix
dropped) and the base latent z_base (the last block's tokens under a LayerNorm without its
affine, as RAE feeds its decoder; model/encoder.py):

1. Layer-wise experts project heterogeneous features onto a common scale:
       e_l = W2_l GELU(W1_l LN_l(h_l))                 W1_l: d -> h,  W2_l: h -> d
2. A per-token router gives one weight per layer from the token's normalized layer features:
       w = R [LN_1(h_1); ...; LN_L(h_L)] + r           w in R^L, any sign
   R starts with std gain / sqrt(L d) and r = 1: the input has squared norm L d at init, so the
   initial logits are 1 + N(0, gain^2) on any encoder, near the uniform mix, and negative with
   probability Phi(-1/gain). This initialization is ours.
3. Energy-constrained aggregation (not a softmax: a negative weight suppresses a layer):
       z_fuse = sum_l w_l e_l / sqrt(sum_l w_l^2 + eps)
4. Incremental correction, bounded per channel, zero at initialization:
       z_final = z_base + beta * z_fuse,   beta = beta_max * tanh(g),   g = 0 at init
   so at initialization z_final == z_base bit for bit and the frozen decoder sees exactly the
   latent it was trained on. The paper does not print its bound; tanh with beta_max is ours.

Capacity is the trainable parameter count of this module, in closed form: ``fusion_param_count``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .config import Float, PositiveFloat, PositiveInt, validated

BetaMax = Annotated[Float, Field(gt=0, allow_inf_nan=False)]  # a bound of the correction: positive, finite


@validated("fusion")
class FusionConfig:
    """Size and bounds of the fusion module; validated at construction."""

    dim: PositiveInt  # encoder width d
    num_layers: PositiveInt  # fused layers L
    hidden: PositiveInt  # expert hidden width h (the capacity axis)
    beta_max: BetaMax = 1.0  # bound of the per-channel correction; z_base is LayerNorm-scaled, so O(1)
    eps: PositiveFloat = 1e-6  # keeps the energy normalization finite when every weight is ~0
    # Std of the router's initial logits around their bias 1 (its weight std is gain / sqrt(L d)), whatever L and d:
    # 0.1 starts every token within ~10% of the uniform mix, a negative weight has probability Phi(-10) ~ 1e-23.
    router_init_gain: Annotated[Float, Field(ge=0, allow_inf_nan=False)] = 0.1


def fusion_param_count(dim: int, num_layers: int, hidden: int) -> int:
    """Trainable parameters of ``DepthRoutedFusion(dim, num_layers, hidden)``, in closed form.

    Per layer: LayerNorm (2d) + W1 with bias (dh + h) + W2 with bias (hd + d); router
    (L*d -> L, with bias); gate g (d).
    """
    d, L, h = dim, num_layers, hidden
    experts = L * (2 * d + (d * h + h) + (h * d + d))
    router = L * d * L + L
    gate = d
    return experts + router + gate


# --- 1. layer-wise experts -------------------------------------------------------------------


class LayerExperts(nn.Module):
    """L independent expert MLPs (LN -> d->h -> GELU -> h->d), batched over layers."""

    def __init__(self, dim: int, num_layers: int, hidden: int):
        super().__init__()
        L, d, h = num_layers, dim, hidden
        self.norm_weight = nn.Parameter(torch.ones(L, d))
        self.norm_bias = nn.Parameter(torch.zeros(L, d))
        # Stored as (L, in, out) so one batched matmul runs all experts at once.
        self.w1 = nn.Parameter(torch.empty(L, d, h))
        self.b1 = nn.Parameter(torch.zeros(L, h))
        self.w2 = nn.Parameter(torch.empty(L, h, d))
        self.b2 = nn.Parameter(torch.zeros(L, d))
        # nn.Linear's default init, per expert.
        nn.init.uniform_(self.w1, -1 / math.sqrt(d), 1 / math.sqrt(d))
        nn.init.uniform_(self.w2, -1 / math.sqrt(h), 1 / math.sqrt(h))

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """LN_l(h_l) for stacked layers ``h`` of shape (L, T, d)."""
        d = h.shape[-1]
        x = F.layer_norm(h, (d,))  # (L, T, d)
        return x * self.norm_weight[:, None] + self.norm_bias[:, None]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """e_l = W2_l GELU(W1_l x_l) for normalized ``x`` of shape (L, T, d)."""
        u = torch.baddbmm(self.b1[:, None], x, self.w1)  # (L, T, h)
        return torch.baddbmm(self.b2[:, None], F.gelu(u), self.w2)  # (L, T, d)


# --- 2.-4. router, energy-constrained aggregation, bounded correction ------------------------


def energy_aggregate(experts: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """z_fuse = sum_l w_l e_l / sqrt(sum_l w_l^2 + eps).

    experts: (L, T, d); weights: (T, L). Scaling a token's weights by c > 0 leaves its output
    unchanged (up to eps); a negative weight flips its layer's sign.
    """
    energy = torch.rsqrt(weights.pow(2).sum(-1, keepdim=True) + eps)  # (T, 1)
    mixed = torch.einsum("tl,ltd->td", weights, experts)  # (T, d)
    return mixed * energy


class DepthRoutedFusion(nn.Module):
    """Fuses L encoder layers into the base latent with per-token, energy-normalized routing."""

    def __init__(self, dim: int | None = None, num_layers: int | None = None,
                 hidden: int | None = None, *, config: FusionConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = FusionConfig(dim=dim, num_layers=num_layers, hidden=hidden, **kwargs)
        self.config = config
        d, L = config.dim, config.num_layers
        self.experts = LayerExperts(d, L, config.hidden)
        self.router = nn.Linear(L * d, L)
        # The router reads L*d LayerNorm'd features (squared norm ~L*d): a weight std scaled by the fan-in keeps
        # its initial logits at std router_init_gain whatever the encoder's size.
        nn.init.normal_(self.router.weight, std=config.router_init_gain / math.sqrt(L * d))
        # Equal positive weights at start: a uniform mix that the router then reshapes.
        nn.init.ones_(self.router.bias)
        self.gate = nn.Parameter(torch.zeros(d))  # g: beta = beta_max * tanh(g) = 0 at init

    @property
    def beta(self) -> torch.Tensor:
        """Per-channel correction scale, in (-beta_max, beta_max)."""
        return self.config.beta_max * torch.tanh(self.gate)

    def route(self, layers: Sequence[torch.Tensor] | torch.Tensor):
        """Expert outputs (L, T, d) and router logits (T, L) for L layer tensors of shape (B, N, d)."""
        h = self._stack(layers)  # (L, B, N, d)
        L, B, N, d = h.shape
        h = h.reshape(L, B * N, d)  # (L, T, d)
        x = self.experts.normalize(h)  # (L, T, d)
        logits = self.router(x.permute(1, 0, 2).reshape(B * N, L * d))  # (T, L)
        return self.experts.project(x), logits

    def fuse(self, layers: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """z_fuse (B, N, d) before the bounded correction."""
        first = layers[0]
        B, N, d = first.shape
        experts, logits = self.route(layers)
        return energy_aggregate(experts, logits, self.config.eps).reshape(B, N, d)

    def forward(self, layers: Sequence[torch.Tensor] | torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """z_final = z_base + beta * z_fuse.

        layers: L tensors (B, N, d), or one tensor (L, B, N, d); base: (B, N, d) -> (B, N, d).
        """
        z_fuse = self.fuse(layers).to(base.dtype)  # (B, N, d)
        return base + self.beta.to(base.dtype) * z_fuse

    def _stack(self, layers) -> torch.Tensor:
        L, d = self.config.num_layers, self.config.dim
        h = layers if isinstance(layers, torch.Tensor) else torch.stack(list(layers))
        if h.dim() != 4 or h.shape[0] != L or h.shape[-1] != d:
            raise ValueError(f"expected {L} layer tensors of shape (B, N, {d}), got {tuple(h.shape)}")
        return h
