"""What training costs in model FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode``.

``step_flops`` runs one real training step of a phase (``model.train._Trainer``: the latent, the
decoder, the loss and its backward, the discriminator's when it is on) on a copy of the model under
the counter; the optimizer's elementwise updates are not counted. A step with cached features does
not run the frozen encoder, so its FLOPs are not counted either: the count is what the phase runs.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from .drorae import DRoRAE

COUNT_IMAGES = 4  # FLOPs scale with the batch: count a few images, scale to the batch


def step_flops(model: DRoRAE, phase: int, cfg, train, images: int = COUNT_IMAGES) -> float:
    """Model FLOPs of one training step of ``phase`` at ``cfg.batch_size``, counted on ``images`` images.

    The step runs on a deep copy (the model and the global RNG are left as they were), with
    attention in PyTorch's math kernel (the one the counter knows).
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
                trainer.step(0)
        finally:
            trainer.close_stream()
    finally:
        torch.set_rng_state(rng)
    return counter.get_total_flops() / n * cfg.batch_size


def phase_flops(model: DRoRAE, phase: int, cfg, train) -> float:
    """Model FLOPs of a whole phase: ``cfg.steps`` steps at the first step's count."""
    return step_flops(model, phase, cfg, train) * cfg.steps
