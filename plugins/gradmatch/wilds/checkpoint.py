"""Checkpoint files and the run log: atomic, fsync'd writes that keep the previous checkpoint,
verified CPU loading with a fallback, RNG states, ``log.jsonl``; and :class:`Checkpoints`, a
run's persistence: a new run's folder, its checkpoints, and what resuming one means."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from runkit.jsonio import finite_or_none

from ..erm import ERM
from .run_config import EARLY_FILES, RunExistsError, RunWriteError, write_config


def atomic_save(obj, path: Path, keep_previous: bool = False) -> None:
    """``torch.save`` to a temporary file, ``fsync``, then an atomic rename: a kill or a power
    cut never leaves half a file. A dict gets its :func:`content_digest` under ``"digest"``, which
    :func:`load_checkpoint` checks. ``keep_previous``: the file being replaced is kept as
    :func:`previous_path` (``checkpoint.prev.pt``), a fallback should the new one be damaged."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if isinstance(obj, dict):
        obj = {**obj, DIGEST_KEY: content_digest(obj)}
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise
        raise OSError(errno.EIO, f"writing failed: {str(err).splitlines()[0][:120]}", str(path)) from None
    if keep_previous and path.exists():
        # A second name for the current file, then the rename: path never goes missing.
        prev_tmp = previous_path(path).with_suffix(".pt.tmp")
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(path, prev_tmp)
        except OSError:  # a file system without hard links
            shutil.copy2(path, prev_tmp)
        os.replace(prev_tmp, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


DIGEST_KEY = "digest"


def content_digest(obj) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every other value's ``repr``, in a
    fixed order (dict keys sorted; the ``"digest"`` entry itself left out). torch's loader does
    not check the bytes of the tensors it reads, so garbled weights would load without it."""
    h = hashlib.sha256()

    def walk(x):
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted((k for k in x if k != DIGEST_KEY), key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: the checkpoint before the latest one."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


class CheckpointDamaged(ValueError):
    """A checkpoint file that cannot be read back (truncated, empty, garbled or incomplete)."""


def load_checkpoint(path: Path, required=()) -> dict:
    """A checkpoint, always onto the CPU (``weights_only``): the learner's ``load_state_dict``
    moves tensors to the run's device, and the RNG states must stay CPU byte tensors
    (``torch.set_rng_state`` rejects others), whatever device the run that wrote it used.

    The file is verified: one that torch cannot read (truncated, empty, garbled), whose content
    does not match the digest :func:`atomic_save` wrote with it, or that lacks a key of ``required`` raises
    :class:`CheckpointDamaged` with one line naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise CheckpointDamaged(f"{path} is damaged and cannot be read ({reason[:120]})") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointDamaged(f"{path} is incomplete (no {', '.join(missing)})")
    if isinstance(state, dict) and DIGEST_KEY in state and content_digest(state) != state[DIGEST_KEY]:
        raise CheckpointDamaged(f"{path} is damaged: its content does not match the digest written with it")
    return state


def load_latest_checkpoint(path: Path, required=()):
    """``(state, path_read, warning)``: ``path`` verified, else the previous checkpoint
    (:func:`previous_path`) with a one-line ``warning`` saying why. Raises
    :class:`CheckpointDamaged` (both damaged) or ``FileNotFoundError`` (neither exists)."""
    path = Path(path)
    previous = previous_path(path)
    try:
        return load_checkpoint(path, required), path, None
    except (CheckpointDamaged, FileNotFoundError) as err:
        if not previous.exists():
            if isinstance(err, FileNotFoundError):
                raise
            raise CheckpointDamaged(f"{err}, and there is no previous checkpoint ({previous.name}) to "
                                    "fall back to: start a new run in another --out") from None
        problem = str(err) if isinstance(err, CheckpointDamaged) else f"{path} is missing"
        try:
            state = load_checkpoint(previous, required)
        except CheckpointDamaged as err2:
            raise CheckpointDamaged(f"{problem}; the previous one is damaged too ({err2}): start a "
                                    "new run in another --out") from None
        return state, previous, f"{problem}; resuming from the previous checkpoint {previous}"


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
            self._file.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")
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


class Checkpoints:
    """A run's ``checkpoint.pt`` and what goes with it (process 0 writes; every process of
    ``engine``, an :class:`.engine.Engine`, takes part): a new run's folder (:meth:`start`), the
    checkpoints (:meth:`save`), the resume (:meth:`resume`), ``log.jsonl`` (:attr:`log`). A failed
    write inside :meth:`writing` raises :class:`RunWriteError`, one line saying what was saved."""

    REQUIRED = ("learner", "epoch", "pos", "step", "rng", "log_records")

    def __init__(self, out: Path, engine):
        self.out, self.engine, self.writer = Path(out), engine, engine.is_global_zero
        self.path = self.out / "checkpoint.pt"
        self.log = RunLog(self.out / "log.jsonl", writer=self.writer)
        self.saved_step: Optional[int] = None

    @contextlib.contextmanager
    def writing(self):
        """Turn a failed write (disk full, permissions) into one line saying what was saved."""
        try:
            yield
        except OSError as err:
            if isinstance(err, RunWriteError):
                raise
            what = err.filename or "a file"
            why = err.strerror or str(err)
            if self.saved_step is None:
                kept = "no checkpoint was saved yet: fix the cause, then rerun the same command"
            else:
                kept = (f"the checkpoint of step {self.saved_step} ({self.path}) is "
                        "kept: fix the cause (free space, permissions), then rerun the same command "
                        "with --resume")
            raise RunWriteError(f"could not write {what} ({why}); {kept}") from None

    def write_log(self, record: dict) -> None:
        with self.writing():
            self.log.write(record)

    def start(self, folder_state: str, config: Callable[[], dict]) -> dict:
        """A new run (or one again from step 0 where an earlier one stopped before its first
        checkpoint: its files are replaced, and the note says which), with ``config()`` as
        ``config.json``; returns the position to start from."""
        if self.writer:
            with self.writing():
                self.out.mkdir(parents=True, exist_ok=True)
                if folder_state == "reuse":
                    stale = sorted(p.name for p in self.out.iterdir() if p.name in EARLY_FILES)
                    for name in stale:
                        (self.out / name).unlink()
                    print(f"note: {self.out} held a run that stopped before its first checkpoint "
                          f"({', '.join(stale)}); starting it again from step 0", file=sys.stderr)
                write_config(self.out / "config.json", config())
        return {"epoch": 0, "pos": 0, "step": 0, "best": None}

    def save(self, learner, phase: str, epoch: int, pos: int, step: int, evaluation: dict) -> None:
        """Every process calls this at the same step: process 0 writes the checkpoint, with
        every process's RNG state, after checking that the replicas are bitwise identical.
        ``evaluation``: the selection state (:meth:`.evaluation.Evaluations.state`)."""
        rng = self.engine.rng_states()
        digests = self.engine.replica_digests(learner.model, step)
        if self.writer:
            with self.writing():
                atomic_save({"learner": learner.state_dict(), "phase": phase, "epoch": epoch,
                             "pos": pos, "step": step, "best": evaluation["best"], "rng": rng,
                             "warmup_best": evaluation["warmup_best"],
                             "before_final": evaluation["before_final"],
                             "engine": self.engine.state_dict(digests),
                             "last_eval_step": evaluation["last_eval_step"],
                             "log_records": self.log.records},
                            self.path, keep_previous=True)
        self.saved_step = step

    def resume(self, learner, schedule, lr: float, config: Callable[[], dict]) -> dict:
        """Load the latest good checkpoint (the previous one if the latest is damaged), decide
        what resuming means, and only then touch the folder: an interrupted run continues; a
        finished one continues when more ``--max-steps``/``--epochs`` are asked (extended as
        one longer run: rolled back to before its final evaluation), else it is refused; one
        killed before its summary just finishes. Returns the position and selection state."""
        engine = self.engine
        state, _, warning = load_latest_checkpoint(self.path, self.REQUIRED)
        if warning and self.writer:
            print(f"warning: {warning}", file=sys.stderr)
        learner.load_state_dict(state["learner"])
        finished = schedule.finished(state["epoch"], state["step"])
        summary = self.out / "summary.json"
        if finished and summary.exists():
            raise RunExistsError(f"{self.out} holds a finished run (step {state['step']}, epoch "
                                 f"{state['epoch']}) and {schedule.until()} asks for no more: nothing "
                                 "to resume; to train it longer, "
                                 "pass a larger --max-steps or --epochs with --resume")
        extending = summary.exists() and not finished
        # Optimizer state dicts carry their lr: apply this invocation's (e.g. a lowered --lr).
        for optimizer in _optimizers(learner, state["learner"]):
            for group in optimizer.param_groups:
                group["lr"] = lr
        engine.backend.load_state_dict(state.get("engine", {}))
        before = state.get("before_final") if extending else None
        rng = (before or state)["rng"]
        rng = rng if isinstance(rng, list) else [rng]
        if engine.rank < len(rng):
            set_rng_state(rng[engine.rank])
        if len(rng) != engine.world_size and self.writer:
            print(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                  f"{engine.world_size}: the batches are the same, their split over processes and "
                  "the random transforms of the new processes differ from an uninterrupted run")
        with self.writing():
            self.log.truncate((before or state)["log_records"])
            if self.writer:
                if extending:
                    kept = self.out / "best_model.before_final.pt"
                    if before is not None and kept.exists():
                        os.replace(kept, self.out / "best_model.pt")
                    summary.unlink()
                    print(f"note: extending the finished run in {self.out} from step {state['step']}; "
                          "its summary.json and predictions are written again at the end", file=sys.stderr)
                write_config(self.out / "config.json", config(), step=state["step"])
        if before is not None:
            state = {**state, "best": before["best"], "last_eval_step": before["last_eval_step"]}
        self.saved_step = state["step"]
        return state


def _optimizers(learner, learner_state: dict) -> list:
    """The optimizers ``learner_state`` restored (Fish's warm-up one only if it was saved)."""
    if isinstance(learner, ERM):
        return [learner.optimizer]
    extra = [learner.erm_optimizer] if learner_state.get("erm_optimizer") is not None else []
    return [learner.inner_optimizer] + extra
