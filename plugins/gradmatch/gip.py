"""Gradient inner product between domains (GIP), the quantity Fish implicitly maximises."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .losses import LossFn, check_finite


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of ``model`` that require gradients, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def domain_losses_and_gradients(
    model: nn.Module, batches: Sequence[Any], loss_fn: LossFn, *, create_graph: bool = False
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Per-domain losses ``L_i`` (scalars) and flattened gradients ``G_i`` (shape ``(P,)``).

    Gradients are taken with ``torch.autograd.grad``: ``.grad`` fields are left untouched.
    ``create_graph=True`` keeps them differentiable (for the second-order IDGM objective).
    Raises :class:`gradmatch.losses.NonFiniteLossError` on a NaN or infinite loss.
    """
    params = trainable_parameters(model)
    losses, grads = [], []
    for i, batch in enumerate(batches):
        loss = loss_fn(model, batch)
        check_finite(loss, f"on domain batch {i}")
        g = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                for gi, p in zip(g, params)]))
        losses.append(loss)
    return losses, grads


def mean_pairwise_inner_product(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``2 / (S (S-1)) * sum_{i<j} G_i . G_j`` computed as ``(|sum G|^2 - sum |G_i|^2) / (S (S-1))``."""
    s = len(grads)
    if s < 2:
        raise ValueError("the gradient inner product needs at least two domains")
    stacked = torch.stack(list(grads))
    total = stacked.sum(0)
    return (total.dot(total) - (stacked * stacked).sum()) / (s * (s - 1))


def gradient_inner_product(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn) -> Dict[str, float]:
    """GIP at the current weights: ``gip`` (mean pairwise ``G_i . G_j``) and ``gip_cos`` (mean
    pairwise cosine similarity), one extra forward/backward per domain. Empty dict for one domain.
    """
    if len(batches) < 2:
        return {}
    # The extra forwards must not move BatchNorm running statistics.
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        grads = [g.detach() for g in domain_losses_and_gradients(model, batches, loss_fn)[1]]
    finally:
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)
    unit = [g / g.norm().clamp_min(1e-12) for g in grads]
    return {
        "gip": mean_pairwise_inner_product(grads).item(),
        "gip_cos": mean_pairwise_inner_product(unit).item(),
    }
