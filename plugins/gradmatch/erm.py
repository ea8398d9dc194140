"""Empirical risk minimisation with the same learner interface as :class:`gradmatch.fish.Fish`."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .backend import LOCAL, Backend
from .gip import gradient_inner_product
from .losses import LossFn, check_finite, cross_entropy_loss

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def erm_update(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Any],
               loss_fn: LossFn, where: str, backend: Backend = LOCAL) -> float:
    """One optimizer step on the mean of the batches' losses; returns that mean loss (over all
    processes). ``where`` names the step in the error raised for a NaN or infinite loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.stack([backend.loss(loss_fn, model, b) for b in batches]).mean()
    full = backend.mean(loss.detach())  # every process sees the same value, and stops together
    check_finite(full, where)
    backend.backward(loss)
    backend.step(optimizer)
    backend.sync_buffers([b for b in model.buffers() if b.is_floating_point()])
    return full.item()


class ERM:
    """One optimizer step per :meth:`step` on the mean of the given batches' losses."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory,
                 *, loss_fn: LossFn = cross_entropy_loss, backend: Backend = LOCAL) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.backend = backend
        self.optimizer = optimizer(model.parameters())
        self.num_steps = 0

    def step(self, batches: Sequence[Any], *, track_gip: bool = False) -> dict:
        """Returns ``loss`` and, if ``track_gip`` and there are >= 2 batches, ``gip``/``gip_cos``."""
        if len(batches) == 0:
            raise ValueError("ERM.step needs at least one batch")
        stats = (gradient_inner_product(self.model, batches, self.loss_fn, self.backend)
                 if track_gip else {})
        stats["loss"] = erm_update(self.model, self.optimizer, batches, self.loss_fn,
                                   f"in ERM step {self.num_steps}", self.backend)
        self.num_steps += 1
        return stats

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = int(state["num_steps"])
