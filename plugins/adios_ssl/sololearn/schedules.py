"""The masker's learning-rate schedule: a copy of the encoder scheduler's shape and interval."""
from __future__ import annotations

from typing import Any

import torch

from .config import ADIOSConfigError


def same_schedule(encoder_schedule: Any, optimizer: torch.optim.Optimizer, lr: float) -> Any:
    """A scheduler for the masker with the encoder scheduler's shape and interval."""
    config = dict(encoder_schedule) if isinstance(encoder_schedule, dict) else None
    scheduler = config["scheduler"] if config else encoder_schedule
    name = type(scheduler).__name__
    if name == "LinearWarmupCosineAnnealingLR":
        start = scheduler.warmup_start_lr if scheduler.warmup_epochs > 0 else lr
        masker_scheduler = type(scheduler)(optimizer, warmup_epochs=scheduler.warmup_epochs,
                                           max_epochs=scheduler.max_epochs,
                                           warmup_start_lr=start, eta_min=scheduler.eta_min)
    elif isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        masker_scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, sorted(scheduler.milestones.elements()), gamma=scheduler.gamma)
    else:
        raise ADIOSConfigError(f"no masker schedule for the encoder scheduler {name}: use "
                               "scheduler.name warmup_cosine, step or none")
    if config is None:
        return masker_scheduler
    config["scheduler"] = masker_scheduler
    return config
