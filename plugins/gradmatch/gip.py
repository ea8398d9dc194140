"""Gradient inner product between domains (GIP), the quantity Fish implicitly maximises."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .backend import LOCAL, Backend
from .losses import LossFn, check_finite


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of ``model`` that require gradients, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_gradient(grads: Sequence[Optional[torch.Tensor]], params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Concatenate per-parameter gradients into one ``(P,)`` vector (zeros where unused)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])


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
        grads.append(flat_gradient(g, params))
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


def gradient_inner_product(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn,
                           backend: Backend = LOCAL) -> Dict[str, float]:
    """GIP at the current weights: ``gip`` (mean pairwise ``G_i . G_j``) and ``gip_cos`` (mean
    pairwise cosine similarity), one extra forward/backward per domain. Empty dict for one domain.
    With a data-parallel ``backend`` each domain gradient is averaged over the processes (the
    full batch's gradient) before the products.

    Streams over domains: besides one domain's gradient it keeps two running sums of size P
    (``sum G_i`` and ``sum G_i / |G_i|``), whatever the number of domains.
    """
    s = len(batches)
    if s < 2:
        return {}
    params = trainable_parameters(model)
    # The extra forwards must not move BatchNorm running statistics.
    saved = [b.detach().clone() for b in model.buffers()]
    total = unit_total = None
    squares = unit_squares = 0.0
    try:
        for i, batch in enumerate(batches):
            loss = backend.loss(loss_fn, model, batch)
            check_finite(backend.mean(loss.detach()), f"on domain batch {i}")
            g = flat_gradient(torch.autograd.grad(loss, params, allow_unused=True), params)
            g = backend.mean(g) if backend.world_size > 1 else g
            squared = g.dot(g)
            unit = g / squared.sqrt().clamp_min(1e-12)
            squares = squares + squared
            unit_squares = unit_squares + unit.dot(unit)
            total = g if total is None else total.add_(g)
            unit_total = unit if unit_total is None else unit_total.add_(unit)
    finally:
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)
    pairs = s * (s - 1)
    return {
        "gip": ((total.dot(total) - squares) / pairs).item(),
        "gip_cos": ((unit_total.dot(unit_total) - unit_squares) / pairs).item(),
    }
