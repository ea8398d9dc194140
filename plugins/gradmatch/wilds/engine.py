"""The processes and device of a ``gradmatch train`` run: Lightning Fabric (:mod:`gradmatch.distributed`).

:class:`Engine` starts the processes (one per device; with one, just this one) and answers
everything the run asks of them: the learners' backend, a check made by process 0 alone with
its error raised on every process, waiting until process 0 has written a file, the RNG seeds
and states of every process, the replica check at every checkpoint, a Ctrl-C that reached any
process, and the run's provenance.
"""
from __future__ import annotations

import functools
import random
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from runkit.provenance import provenance

from .. import distributed as D
from .checkpoint import rng_state


class Engine:
    """The launched processes of one run (``cfg``: its accelerator, devices, strategy,
    precision and nodes); ``batch_size`` must split evenly over them."""

    def __init__(self, cfg, batch_size: int):
        self.precision = cfg.precision
        self.fabric = D.build_fabric(cfg.accelerator, cfg.devices, cfg.strategy, cfg.precision,
                                     cfg.num_nodes)
        self.world_size = self.fabric.world_size
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} cannot be split evenly over "
                             f"{self.world_size} processes: use a multiple of {self.world_size} "
                             "(each process takes an equal part of every batch)")
        self.fabric.launch()  # with several processes: starts (or joins) them
        self.backend = D.FabricBackend(self.fabric, cfg.precision)
        self.rank = self.fabric.global_rank
        self.is_global_zero = self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    def on_process_zero(self, check: Callable, *args) -> Any:
        """``check(*args)`` on process 0 only (the others could see files it has begun to
        write); its error, if any, is raised on every process, else its result returned."""
        error = result = None
        if self.is_global_zero:
            try:
                result = check(*args)
            except (FileExistsError, FileNotFoundError, ValueError) as err:
                error = err
        if self.world_size > 1:
            error = self.fabric.broadcast(error, src=0)
        if error is not None:
            raise error
        if self.world_size > 1:
            result = self.fabric.broadcast(result, src=0)
        return result

    def barrier(self) -> None:
        """Wait until every process is here (process 0 has written what the others read)."""
        if self.world_size > 1:
            self.fabric.barrier()

    def seed(self, seed: int) -> None:
        """Seed Python's, numpy's and torch's global RNGs."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def seed_per_process(self, seed: int) -> None:
        """From here on a different random stream on each process (process 0 keeps its own)."""
        if self.rank > 0:
            self.seed(seed + 7919 * self.rank)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This process's equal, contiguous part of one batch's ``indices``."""
        return D.shard(indices, self.rank, self.world_size)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (a Ctrl-C that reached only some of them)."""
        return self.backend.any(flag)

    def rng_states(self) -> List[dict]:
        """Every process's RNG states (:func:`.checkpoint.rng_state`), in rank order."""
        return self.backend.all_gather_object(rng_state())

    def replica_digests(self, model: torch.nn.Module, step: int) -> Optional[List[str]]:
        """Every process's :func:`gradmatch.distributed.replica_digest` of ``model``, checked to
        be equal (None with one process)."""
        if self.world_size == 1:
            return None
        digests = self.backend.all_gather_object(D.replica_digest(model))
        if len(set(digests)) > 1:
            raise RuntimeError(f"the model replicas differ between processes at step {step} "
                               f"(digests {digests}); please report this as a bug")
        return digests

    def state_dict(self, digests: Optional[List[str]]) -> dict:
        """What a checkpoint records of the engine (the fp16 gradient scaler's state included)."""
        return {"world_size": self.world_size, "precision": self.precision,
                "replica_digests": digests, **self.backend.state_dict()}

    @functools.cached_property
    def provenance(self) -> dict:
        """The code and engine of this run (:func:`runkit.provenance.provenance`: it reads git
        commits in subprocesses, so once per run, for config.json and summary.json alike)."""
        return provenance(self.device, self.world_size, self.precision)
