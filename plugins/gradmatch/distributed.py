"""Lightning Fabric as the engine of ``gradmatch train``: processes, devices, precision, collectives.

``--accelerator``, ``--devices``, ``--num-nodes``, ``--strategy`` and ``--precision`` keep
Lightning's meanings. Fabric launches the processes (one per device; on a Slurm allocation it
reads the ranks from Slurm), places the model, and provides autocast and the collectives;
:class:`FabricBackend` binds the learners' five calls (:mod:`gradmatch.backend`) to it:

- gradients: after each backward, the gradients of the parameters about to step are averaged
  over the processes in one collective per dtype (the inner Fish steps, ERM steps, warm-up);
- ``16-mixed``: the loss is scaled by a ``torch.amp.GradScaler`` before each backward; each
  optimizer step unscales, skips itself if a gradient is not finite (on every process alike,
  since the gradients were averaged first) and updates the scale;
- ``bf16-mixed``: autocast to bfloat16, no scaling.

The learners do not wrap the model in ``DistributedDataParallel``: Fish trains an inner copy
and interpolates, and the averaged-gradient step keeps every replica identical (checked at
every checkpoint, :func:`replica_digest`).
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, List, Optional, Sequence

import numpy as np
import torch

from .backend import Backend, _params_of, average_in_place
from .choices import parse_devices  # noqa: F401 (re-exported)

#: ``--precision`` values (Lightning's names) and their aliases
PRECISIONS = {"32-true": "32-true", "32": "32-true", "bf16-mixed": "bf16-mixed",
              "bf16": "bf16-mixed", "16-mixed": "16-mixed", "16": "16-mixed"}
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
#: ``--strategy`` values: one process, or processes launched by Fabric with gradient averaging
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


class EngineConfigError(ValueError):
    """A bad ``--accelerator/--devices/--strategy/--precision`` combination."""


def check_precision(precision: str, accelerator: str) -> str:
    if precision not in PRECISIONS:
        raise EngineConfigError(
            f"--precision {precision!r} is not supported; choose one of 32-true, bf16-mixed, "
            "16-mixed (fp16 with gradient scaling, CUDA only)")
    precision = PRECISIONS[precision]
    if precision == "16-mixed" and accelerator == "cpu":
        raise EngineConfigError("--precision 16-mixed needs a CUDA device: use --precision "
                                "bf16-mixed on a CPU")
    return precision


def build_fabric(accelerator: str = "auto", devices: Any = "auto", strategy: str = "auto",
                 precision: str = "32-true", num_nodes: int = 1):
    """A launched-later ``lightning.fabric.Fabric`` with Lightning's meanings of the arguments."""
    try:
        from lightning.fabric import Fabric
    except ImportError as err:  # pragma: no cover - lightning is a dependency
        raise ImportError("gradmatch train needs lightning (pip install lightning)") from err
    if strategy not in STRATEGIES:
        raise EngineConfigError(
            f"--strategy {strategy!r} is not supported by gradmatch train; choose one of "
            f"{', '.join(STRATEGIES)} (Fish interpolates a whole inner copy, so sharded "
            "strategies such as fsdp or deepspeed do not apply)")
    precision = check_precision(precision, accelerator)
    if strategy.startswith("ddp"):
        from lightning.fabric.strategies import DDPStrategy

        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork",
                 "ddp_notebook": "fork"}[strategy]
        chosen: Any = DDPStrategy(start_method=start)
    else:
        chosen = "auto"
    try:
        return Fabric(accelerator=accelerator, devices=devices, strategy=chosen,
                      precision=precision, num_nodes=num_nodes)
    except (ValueError, RuntimeError, TypeError) as err:
        raise EngineConfigError(f"cannot set up accelerator={accelerator!r} devices={devices!r} "
                                f"strategy={strategy!r} precision={precision!r}: {err}") from err


class FabricBackend(Backend):
    """The learners' backend on a launched ``Fabric`` (see the module docstring)."""

    def __init__(self, fabric, precision: str = "32-true") -> None:
        self.fabric = fabric
        self.world_size = fabric.world_size
        self.rank = fabric.global_rank
        self.precision = PRECISIONS[precision]
        self.device = fabric.device
        self.scaler: Optional[torch.amp.GradScaler] = None
        if self.precision == "16-mixed":
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self) -> ContextManager:
        """``torch.autocast`` to bfloat16 / float16 on the run's device (what Fabric's
        ``MixedPrecision`` plugin does), or nothing for ``32-true``."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.all_reduce_gradients(_params_of(optimizer))
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def all_reduce_gradients(self, params: Sequence[torch.Tensor]) -> None:
        # A parameter without a gradient keeps none, as with one process (an optimizer skips it).
        self._average([p.grad for p in params if p.grad is not None])

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.clone()
        return self.fabric.all_reduce(tensor.detach().clone(), reduce_op="sum").div_(self.world_size)

    def sync_buffers(self, buffers: Iterable[torch.Tensor]) -> None:
        self._average([b for b in buffers if b.is_floating_point()])

    def _average(self, tensors: Sequence[torch.Tensor]) -> None:
        """Each tensor replaced by its mean over the processes (one all-reduce per dtype)."""
        if self.world_size > 1:
            average_in_place(tensors, lambda flat: self.fabric.all_reduce(flat, reduce_op="sum"),
                             self.world_size)

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # ---- helpers for the runner
    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (a Ctrl-C that reached only some of them)."""
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.fabric.device)
        return bool(self.fabric.all_reduce(value, reduce_op="sum").item() > 0)

    def all_gather_object(self, obj: Any) -> List[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Concatenate every process's ``rows`` (process r holds ``counts[r]`` rows), in rank
        order, on every process."""
        if self.world_size == 1:
            return rows
        longest = max(counts)
        padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        gathered = self.fabric.all_gather(padded.to(self.fabric.device)).cpu()
        return torch.cat([gathered[r, :counts[r]] for r in range(self.world_size)])


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Process ``rank``'s equal, contiguous part of one batch's ``indices``."""
    if len(indices) % world_size:
        raise EngineConfigError(
            f"a batch of {len(indices)} examples cannot be split evenly over {world_size} "
            f"processes: use a --batch-size divisible by {world_size}")
    size = len(indices) // world_size
    return indices[rank * size:(rank + 1) * size]


def eval_shards(num_examples: int, world_size: int) -> List[np.ndarray]:
    """Contiguous parts of ``range(num_examples)``, one per process: every example exactly once."""
    return np.array_split(np.arange(num_examples), world_size)


def replica_digest(module: torch.nn.Module) -> str:
    """A SHA-1 of every parameter and buffer of ``module`` (bitwise: equal digests on two
    processes mean identical replicas)."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
