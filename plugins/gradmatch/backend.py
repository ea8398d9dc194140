"""How a learner runs its forward, backward and optimizer steps: one process, or data-parallel.

The learners (:class:`gradmatch.fish.Fish`, :class:`gradmatch.erm.ERM`) stay framework-free:
every loss they compute goes through :meth:`Backend.loss`, every backward through
:meth:`Backend.backward`, and every optimizer step through :meth:`Backend.step`, which first
averages the gradients over the processes. :class:`Backend` is the plain single-process,
full-precision version; :class:`gradmatch.wilds.engine.FabricBackend` binds the same five calls
to Lightning Fabric (several processes, mixed precision, fp16 gradient scaling).

With data parallelism each process computes the loss on its shard of every batch (equal
shards), so the mean of the shard gradients is the gradient of the full batch's mean loss and
every process takes the same optimizer step: the replicas stay identical.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class Backend:
    """One process, the model's own precision (the default of every learner)."""

    world_size = 1

    def autocast(self) -> ContextManager:
        """The context the forward passes run in (mixed precision: ``torch.autocast``)."""
        return nullcontext()

    def loss(self, loss_fn: LossFn, model: nn.Module, batch: Any) -> torch.Tensor:
        """``loss_fn(model, batch)`` under :meth:`autocast` (the losses in
        :mod:`gradmatch.losses` run in float32 under autocast)."""
        with self.autocast():
            return loss_fn(model, batch)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` (fp16: on the scaled loss)."""
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of ``optimizer``'s parameters over the processes, then step
        (fp16: unscale first, skip the step if a gradient is not finite)."""
        self.all_reduce_gradients(_params_of(optimizer))
        optimizer.step()

    def all_reduce_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each ``p.grad`` by its mean over the processes (no-op for one process)."""

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the processes (a copy)."""
        return tensor.clone()

    def sync_buffers(self, buffers: Iterable[torch.Tensor]) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the processes."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _params_of(optimizer: torch.optim.Optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


LOCAL = Backend()


def gradient_buckets(params: Sequence[torch.Tensor]) -> list:
    """The parameters that have a gradient, grouped by gradient dtype and device: one
    collective per group. A parameter without a gradient keeps none (as for one process, so an
    optimizer skips it the same way); every process of one model takes the same code path, so
    the groups match across processes."""
    buckets: dict = {}
    for p in params:
        if p.grad is not None:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    return list(buckets.values())


def flatten_gradients(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous vector of the gradients of ``params`` (one bucket of
    :func:`gradient_buckets`); :func:`unflatten_gradients` writes it back."""
    return torch.cat([p.grad.reshape(-1) for p in params])


def unflatten_gradients(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Copy the consecutive slices of ``flat`` into each ``p.grad``."""
    start = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[start:start + n].view_as(p.grad))
        start += n
