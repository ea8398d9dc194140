"""How a learner runs its forward, backward and optimizer steps: one process, or data-parallel.

The learners (:class:`gradmatch.fish.Fish`, :class:`gradmatch.erm.ERM`) stay framework-free:
every loss they compute goes through :meth:`Backend.loss`, every backward through
:meth:`Backend.backward`, and every optimizer step through :meth:`Backend.step`, which first
averages the gradients over the processes. :class:`Backend` is the plain single-process,
full-precision version; :class:`gradmatch.distributed.FabricBackend` binds the same calls
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


def average_in_place(tensors: Sequence[torch.Tensor],
                     all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], world_size: int) -> None:
    """Replace each tensor by its mean over ``world_size`` processes: the tensors are grouped by
    dtype and device, and each group is flattened into one vector for one ``all_reduce_sum``
    call (which returns the sum over the processes). Every process of one model passes the same
    tensors in the same order, so the groups match across processes."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group in groups.values():
            flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in group])).div_(world_size)
            for t, value in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(value.view_as(t))
