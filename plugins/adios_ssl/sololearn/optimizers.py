"""The masker's optimizer and scheduler next to the encoder's that solo-learn's ``BaseMethod``
builds, the encoder schedule shortened as the official code runs it, and the schedulers stepped
by hand (manual optimisation).

A part of :class:`~adios_ssl.sololearn.mixin.ADIOSMixin`: it reads the attributes the mixin's
``__init__`` sets (``masker``, ``mask_lr``, ``train_mask_epoch``).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict

from .schedules import same_schedule


class MaskerOptimizers:
    """``configure_optimizers``: ``[encoder optimizer(s)..., masker optimizer]`` and the
    schedulers (the masker's a copy of the encoder's shape, at ``mask_lr``)."""

    def configure_optimizers(self):
        configured = super().configure_optimizers()
        if isinstance(configured, (list, tuple)):
            optimizers, schedulers = list(configured[0]), list(configured[1])
        else:
            optimizers, schedulers = [configured], []
        if self.masker is None:
            return optimizers, schedulers
        masker_opt = self._OPTIMIZERS[self.optimizer](
            [{"name": "masker", "params": list(self.masker.parameters())}],
            lr=self.mask_lr, weight_decay=self.weight_decay, **self.extra_optimizer_args)
        if schedulers:
            schedulers.append(same_schedule(schedulers[0], masker_opt, self.mask_lr))
            self._shorten_encoder_schedule(schedulers[0])  # after the masker's copy of it
        return optimizers + [masker_opt], schedulers

    def _shorten_encoder_schedule(self, schedule: Any) -> None:
        """The official ADIOS code runs the encoder's warm-up + cosine schedule over
        ``max_epochs - train_mask_epoch`` epochs (the masker's over ``max_epochs``;
        ``train_mask_epoch`` is 10 for BYOL-ADIOS, 0 otherwise), after which the cosine climbs
        back up. Where that leaves no cosine phase (``max_epochs - train_mask_epoch <=
        warmup_epochs``; the official code divides by zero or runs the cosine backwards) the
        schedule is left whole."""
        scheduler = schedule["scheduler"] if isinstance(schedule, dict) else schedule
        if not self.train_mask_epoch or type(scheduler).__name__ != "LinearWarmupCosineAnnealingLR":
            return
        if self.max_epochs - self.train_mask_epoch <= self.warmup_epochs:
            warnings.warn(f"method_kwargs.train_mask_epoch={self.train_mask_epoch} leaves no "
                          f"cosine phase with max_epochs={self.max_epochs} and warmup_epochs="
                          f"{self.warmup_epochs}: the encoder's schedule runs over max_epochs")
            return
        per_epoch = scheduler.max_epochs / self.max_epochs  # 1, or batches per epoch (step)
        scheduler.max_epochs -= int(round(self.train_mask_epoch * per_epoch))

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Keep the checkpoint loadable with ``torch.load(weights_only=True)`` (torch>=2.6,
        ``main_linear.py``, resume): solo-learn's ``static_lr`` groups (SimSiam's predictor)
        patch ``scheduler.get_lr`` with a ``functools.partial`` that would land in the
        scheduler's state; ``configure_optimizers`` sets it again on resume."""
        super_hook = getattr(super(), "on_save_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        for state in checkpoint.get("lr_schedulers", []):
            state.pop("get_lr", None)

    def _step_schedulers(self) -> None:
        """Manual optimization: step each scheduler per batch (``interval: step``) or at the
        last batch of the epoch (``interval: epoch``)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" or self.trainer.is_last_batch:
                config.scheduler.step()
