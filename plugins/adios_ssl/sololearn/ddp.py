"""What ADIOS needs from ``torch.distributed`` under Lightning's DDP (see
:mod:`adios_ssl.sololearn.mixin`): the DDP wrapper, a backward outside its reducer, the
masker's gradient average and broadcast, and a finite-loss check that stops every process."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def by_dtype(tensors: Sequence[torch.Tensor]) -> Dict[tuple, List[torch.Tensor]]:
    """``tensors`` grouped by (dtype, device): one collective per group."""
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def ignore_in_ddp(module: torch.nn.Module, names: Sequence[str]) -> None:
    """Tell DDP (and Lightning, which reads the same attribute) to leave these parameters and
    buffers of ``module`` out of its reducer and broadcasts."""
    ignore = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if ignore is not None:
        ignore(module, list(names))
    else:  # pragma: no cover - depends on the torch version
        module._ddp_params_and_buffers_to_ignore = list(names)


def ddp_wrapper(trainer) -> Optional[DistributedDataParallel]:
    """The DistributedDataParallel module a Lightning trainer runs its module in, if any."""
    model = getattr(trainer.strategy, "model", None) if trainer is not None else None
    return model if isinstance(model, DistributedDataParallel) else None


@contextlib.contextmanager
def outside_reducer(ddp: Optional[DistributedDataParallel]) -> Iterator[None]:
    """A backward that DDP's reducer takes no part in: inside ``no_sync`` Lightning's
    ``manual_backward`` does not re-arm the reducer, so a backward that reaches only some of
    the parameters DDP manages (the masker's, or none) is allowed."""
    with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
        yield


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the processes (missing gradients
    count as zeros), in one all-reduce per dtype."""
    if world_size() < 2:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _flat_collective([p.grad for p in params], lambda flat: dist.all_reduce(flat),
                     divisor=world_size())


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Give every process ``src``'s values of ``tensors`` (in place)."""
    if world_size() < 2:
        return
    _flat_collective(list(tensors), lambda flat: dist.broadcast(flat, src=src))


def _flat_collective(tensors: Sequence[torch.Tensor], collective, divisor: int = 1) -> None:
    """Run the in-place ``collective`` once per (dtype, device) group of ``tensors``, on the
    group flattened into one vector, and write the result (divided by ``divisor``) back."""
    with torch.no_grad():
        for group in by_dtype(tensors).values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            collective(flat)
            if divisor != 1:
                flat /= divisor
            for t, value in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(value.view_as(t))


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process (one MIN all-reduce with several): a
    process that raised alone would leave the others waiting in the next collective."""
    finite = torch.isfinite(value.detach()).all().reshape(1).to(torch.int32)
    if world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)
