"""Which batches a run trains on, in which phase, and until when.

ERM trains epochs of pooled batches. Fish first takes its ERM warm-up on pooled batches (the
warm-up is the learner's: while ``Fish.in_warmup``), then epochs of per-domain batches; the
schedule only picks the batches while the warm-up lasts and starts Fish's epochs when it ends.
A run ends after ``max_steps`` steps when given, else after its epochs. Every process takes
its equal, contiguous shard of each batch (of each domain's batch for Fish).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..erm import ERM


class Schedule:
    """The batch plans of ``learner``'s run: ``pooled`` and ``per_domain`` planners
    (:mod:`.samplers`; ``per_domain`` None for ERM) over ``train_set``, sharded by ``engine``."""

    def __init__(self, learner, pooled, per_domain, engine, train_set, *, collate, epochs: int,
                 max_steps: Optional[int], seed: int, num_workers: int):
        self.learner, self.pooled, self.per_domain, self.engine = learner, pooled, per_domain, engine
        self.train_set, self.collate = train_set, collate
        self.epochs, self.max_steps, self.seed, self.num_workers = epochs, max_steps, seed, num_workers

    def phase(self) -> str:
        """``erm``, or Fish's ``warmup`` (ERM steps on pooled batches) then ``fish``."""
        if isinstance(self.learner, ERM):
            return "erm"
        return "warmup" if self.learner.in_warmup else "fish"

    def finished(self, epoch: int, step: int) -> bool:
        if self.max_steps is not None:
            return step >= self.max_steps
        return self.phase() != "warmup" and epoch >= self.epochs

    def until(self) -> str:
        """The flag that says where the run ends, as given."""
        return f"--max-steps {self.max_steps}" if self.max_steps is not None else f"--epochs {self.epochs}"

    def total_steps(self) -> Optional[int]:
        if self.max_steps is not None:
            return self.max_steps
        fish = not isinstance(self.learner, ERM)
        planner = self.per_domain if fish else self.pooled
        warm = self.learner.erm_warmup_steps if fish else 0
        return warm + self.epochs * len(planner.plan(0))

    def steps(self, phase: str, epoch: int, pos: int, step: int):
        """``(plan_length, steps)``: the length of ``epoch``'s plan in ``phase``, and this
        process's shards of its steps from position ``pos`` on, cut where the run or the
        warm-up ends."""
        plan = (self.per_domain if phase == "fish" else self.pooled).plan(epoch)
        steps = plan[pos:]
        if self.max_steps is not None:
            steps = steps[:self.max_steps - step]
        if phase == "warmup":
            steps = steps[:self.learner.erm_warmup_steps - self.learner.num_steps]
        return len(plan), [[self.engine.shard(i) for i in s] for s in steps]

    def advance(self, phase: str, epoch: int, pos: int, plan_len: int):
        """The position after a pass over (part of) an epoch's plan: the warm-up ended (Fish's
        epoch 0 starts), the epoch ended, or neither (stopped by --max-steps)."""
        if self.phase() != phase:
            return 0, 0
        if pos >= plan_len:
            return epoch + 1, 0
        return epoch, pos

    def loader(self, steps, epoch: int, pos: int) -> DataLoader:
        """The batches of ``steps``. The loader draws its base seed from its own generator,
        seeded by (seed, epoch, position, rank), not from the global RNG: creating it where a
        resumed run does (mid-epoch) must not shift the random draws of the transforms, which
        (with ``num_workers=0``) come from the global RNG that checkpoints save and restore."""
        flat = [np.concatenate(s).tolist() for s in steps]
        seed = np.random.default_rng([self.seed, epoch, pos, self.engine.rank]).integers(2 ** 62)
        return DataLoader(self.train_set, batch_sampler=flat, num_workers=self.num_workers,
                          collate_fn=self.collate, pin_memory=self.engine.device.type == "cuda",
                          generator=torch.Generator().manual_seed(int(seed)))

    def on_device(self, batch, indices) -> List[tuple]:
        """A collated ``(x, y, metadata)`` batch on the device, cut into one batch per domain
        of ``indices`` (the step's index arrays), or kept whole when it has one."""
        device = self.engine.device
        batch = tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)
        if len(indices) <= 1:
            return [batch]
        parts, start = [], 0
        for size in [len(i) for i in indices]:
            parts.append(tuple(t[start:start + size] for t in batch))
            start += size
        return parts


def phase_of(stats: dict) -> str:
    """The phase a learner step reports: Fish's ``phase`` 0.0 (ERM warm-up) / 1.0, or ERM."""
    if "phase" not in stats:
        return "erm"
    return "warmup" if stats["phase"] == 0.0 else "fish"
