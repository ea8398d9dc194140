"""Loss functions with the signature the learners use: ``loss_fn(model, batch) -> scalar``."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` (logits, shape ``(B, C)``) against ``y`` (``(B,)`` ints)."""
    x, y = batch[0], batch[1]
    return F.cross_entropy(model(x), y)


def mse_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean squared error of ``model(x)`` against ``y`` of the same shape (regression, e.g. Poverty)."""
    x, y = batch[0], batch[1]
    pred = model(x)
    return F.mse_loss(pred, y.reshape(pred.shape).to(pred.dtype))


def binary_cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean BCE-with-logits of ``model(x)`` (shape ``(B,)`` or ``(B, 1)``) against 0/1 ``y``."""
    x, y = batch[0], batch[1]
    logits = model(x).reshape(-1)
    return F.binary_cross_entropy_with_logits(logits, y.reshape(-1).to(logits.dtype))


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite."""


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise :class:`NonFiniteLossError` naming ``where`` if ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"non-finite loss ({loss.detach().item()}) {where}; lower the learning rate "
            "(inner lr / meta_lr), check the inputs for NaNs, or resume from an earlier checkpoint"
        )
