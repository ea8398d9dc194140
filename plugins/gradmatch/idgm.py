"""The exact inter-domain gradient matching (IDGM) objective, second order, for small models.

``L_idgm(theta) = 1/S sum_i L_i(theta) - gamma * GIP(theta)`` with
``GIP = 2 / (S (S-1)) sum_{i<j} G_i . G_j`` and ``G_i = grad L_i``. Its gradient needs
Hessian-vector products (double backward), which is what Fish avoids.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch
from torch import nn

from .erm import OptimizerFactory
from .gip import domain_losses_and_gradients, mean_pairwise_inner_product
from .losses import LossFn, cross_entropy_loss


def idgm_terms(model: nn.Module, batches: Sequence[Any],
               loss_fn: LossFn = cross_entropy_loss) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ``(mean_i L_i, GIP)`` on one batch per domain (needs S >= 2)."""
    if len(batches) < 2:
        raise ValueError("the IDGM objective needs batches from at least two domains")
    losses, grads = domain_losses_and_gradients(model, batches, loss_fn, create_graph=True)
    return torch.stack(losses).mean(), mean_pairwise_inner_product(grads)


def idgm_objective(model: nn.Module, batches: Sequence[Any], gamma: float,
                   loss_fn: LossFn = cross_entropy_loss) -> torch.Tensor:
    """Differentiable scalar ``mean_i L_i - gamma * GIP``."""
    mean_loss, gip = idgm_terms(model, batches, loss_fn)
    return mean_loss - gamma * gip


class IDGM:
    """Gradient descent on the exact IDGM objective (one optimizer step per :meth:`step`)."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, gamma: float,
                 *, loss_fn: LossFn = cross_entropy_loss) -> None:
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.model = model
        self.gamma = float(gamma)
        self.loss_fn = loss_fn
        self.optimizer = optimizer(model.parameters())
        self.num_steps = 0

    def step(self, batches: Sequence[Any], *, track_gip: bool = False) -> dict:
        """One optimizer step on the objective; returns ``loss`` (mean domain loss),
        ``objective`` and ``gip`` (computed anyway, so always reported)."""
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss, gip = idgm_terms(self.model, batches, self.loss_fn)
        objective = mean_loss - self.gamma * gip
        objective.backward()
        self.optimizer.step()
        self.num_steps += 1
        return {"loss": mean_loss.item(), "objective": objective.item(), "gip": gip.item()}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = int(state["num_steps"])
