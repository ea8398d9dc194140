"""Checkpoint files and the run log: atomic writes, CPU loading, RNG states, ``log.jsonl``."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: a kill never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, always onto the CPU (``weights_only``): the learner's ``load_state_dict``
    moves tensors to the run's device, and the RNG states must stay CPU byte tensors
    (``torch.set_rng_state`` rejects others), whatever device the run that wrote it used."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """This process's torch, numpy, Python (and CUDA) RNG states, as CPU tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                        pos, has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (the tensors must be on the CPU)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class RunLog:
    """``log.jsonl``: one JSON record per line, written by process 0 only. ``records`` counts
    what was logged (on every process), so a checkpoint can say how much of the log it covers;
    on resume the lines after that are dropped (the resumed run writes them again)."""

    def __init__(self, path: Path, records: int = 0, writer: bool = True):
        self.path, self.records, self.writer = Path(path), records, writer
        self._file = None

    def open(self) -> "RunLog":
        if self.writer:
            self._file = open(self.path, "a")
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        self.records += 1

    def truncate(self, records: int) -> None:
        """Keep the first ``records`` lines (those a checkpoint covers)."""
        if not self.path.exists():
            self.records = 0
            return
        keep = self.path.read_text().splitlines()[:records]
        if self.writer:
            self.path.write_text("".join(line + "\n" for line in keep))
        self.records = len(keep)
