"""Deterministic, resumable batch plans for training on a WILDS subset.

A plan is a list of steps; a step is a list of index arrays (one per domain for Fish, one for
ERM), each indexing the training subset. Plans depend only on ``(seed, epoch)``, so a run that
is resumed mid-epoch rebuilds the same plan and skips the steps already taken: no data is
loaded to fast-forward, and the resumed run sees exactly the batches the uninterrupted one would.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

Plan = List[List[np.ndarray]]


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


class DomainBatchPlanner:
    """The official Fish epoch (fish:src/main.py:149-192, datasets.py ``reset_batch``).

    Each epoch, every domain's indices are shuffled and cut into batches of ``batch_size``.
    Each step draws ``meta_steps`` distinct domains uniformly among those with batches left and
    takes the next batch of each. The epoch ends when fewer than ``meta_steps`` domains have
    batches left. Two departures from the official code: a domain's last, incomplete batch is
    filled up with other examples of the same domain drawn at random (the official code keeps
    it short: with plain SGD a step on many short batches at once is a large noisy kick that
    can diverge), and each batch is used once per epoch (the official code keeps returning a
    domain's last batch once it is down to one).
    """

    stream = 1

    def __init__(self, domains: Sequence[torch.Tensor], batch_size: int, meta_steps: int, seed: int):
        self.domains = [np.asarray(d) for d in domains if len(d) > 0]
        if meta_steps > len(self.domains):
            raise ValueError(
                f"meta_steps={meta_steps} but the training split has only {len(self.domains)} "
                "non-empty domains; lower --meta-steps")
        self.batch_size, self.meta_steps, self.seed = batch_size, meta_steps, seed

    def plan(self, epoch: int) -> Plan:
        rng = _rng(self.seed, epoch, self.stream)
        queues = [list(self._batches(d, rng)) for d in self.domains]
        steps: Plan = []
        while True:
            alive = [i for i, q in enumerate(queues) if q]
            if len(alive) < self.meta_steps:
                return steps
            chosen = rng.choice(alive, size=self.meta_steps, replace=False)
            steps.append([queues[i].pop(0) for i in chosen])

    def _batches(self, domain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(ceil(n / B), B)`` shuffled indices of one domain; the last row topped up at random."""
        perm = rng.permutation(domain)
        missing = -len(perm) % self.batch_size
        if missing:
            fill = rng.choice(domain, size=missing, replace=missing > len(domain))
            perm = np.concatenate([perm, fill])
        return perm.reshape(-1, self.batch_size)


class PooledBatchPlanner:
    """Shuffled pooled batches of ``batch_size`` (last incomplete batch dropped): ERM and warm-up."""

    stream = 0

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise ValueError(f"the training split has {num_examples} examples, fewer than "
                             f"batch size {batch_size}; lower --batch-size")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed

    def plan(self, epoch: int) -> Plan:
        perm = _rng(self.seed, epoch, self.stream).permutation(self.num_examples)
        usable = self.num_examples - self.num_examples % self.batch_size
        return [[b] for b in perm[:usable].reshape(-1, self.batch_size)]
