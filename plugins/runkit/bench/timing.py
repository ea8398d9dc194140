"""Wall-clock timing of calls on one device, and the statistics of the samples.

Variants are timed interleaved (:func:`interleaved`): warm-up repetitions first, then timed
repetitions with the order alternating ABC, CBA, ABC, ... so that slow drifts of the machine's
speed hit every variant alike, each call bracketed by a device sync (CUDA) so that the time is
the work's, not its launch's. A :class:`Deadline` caps the wall time: repetitions stop once it
has passed (after at least ``min_reps``), and the result says so.

Units: samples are **seconds** (``s``); :func:`summarize` scales them (``scale=1e3``, ``unit="ms"``
for milliseconds). CPU times come from ``getrusage`` (this process, all threads), in seconds.
"""
from __future__ import annotations

import gc
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

try:
    import resource
except ImportError:  # not on Windows
    resource = None

Sync = Callable[[], None]


def no_sync() -> None:
    """The sync of a CPU device: nothing to wait for."""


def make_sync(device) -> Sync:
    """A no-argument function that waits for ``device`` (CUDA) or does nothing (CPU)."""
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return no_sync


def rusage() -> dict:
    """This process's CPU time so far (``user_s``, ``sys_s``, seconds) and minor page faults
    (``minflt``); zeros where the OS has no ``getrusage``."""
    if resource is None:
        return {"user_s": 0.0, "sys_s": 0.0, "minflt": 0}
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minflt": r.ru_minflt}


class Deadline:
    """A time cap of ``seconds`` from construction (``None``: no cap, never passes)."""

    def __init__(self, seconds: Optional[float] = None):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"a time cap must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since construction."""
        return time.perf_counter() - self.start

    def left(self) -> Optional[float]:
        """Seconds left before the cap (>= 0), or None without a cap."""
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def passed(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


def time_call(fn: Callable, sync: Sync = no_sync, calls: int = 1) -> float:
    """Seconds per call of ``fn`` (averaged over ``calls`` back-to-back calls, synced around)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls


def calibrate(fn: Callable, sync: Sync, min_sample_s: float, *, probe_calls: int = 3,
              max_calls: int = 1000) -> int:
    """Back-to-back calls per timing sample so that one sample lasts about ``min_sample_s``
    seconds: ``fn`` once (warm), then ``probe_calls`` timed calls; between 1 and ``max_calls``."""
    fn()
    t = max(time_call(fn, sync, probe_calls), 1e-7)
    return int(min(max_calls, max(1, math.ceil(min_sample_s / t))))


def interleaved(fns: Mapping[str, Callable], sync: Sync = no_sync, *, reps: int, warmup: int = 0,
                calls: Optional[Mapping[str, int]] = None, deadline: Optional[Deadline] = None,
                min_reps: int = 1, keep_returns: bool = False) -> dict:
    """Time each of ``fns`` ``reps`` times after ``warmup`` untimed repetitions, the order
    alternating ABC, CBA, ... per repetition; ``gc.collect()`` between warm-up and timing.

    ``calls[name]``: back-to-back calls per sample (default 1; the sample is seconds per call).
    ``deadline``: no further repetition (warm-up or timed) starts once it has passed, but at
    least ``min_reps`` timed ones run. ``keep_returns``: each call returns a dict of numbers
    (e.g. sub-step seconds it timed itself), kept per key next to the sample.

    Returns ``{"samples": {name: {"s": [...], "user_s": [...], "sys_s": [...],
    "minor_faults": [...], "warmup_s": [...], <returned keys>: [...]}}, "reps": timed
    repetitions done, "warmup_reps": warm-up repetitions done, "capped": bool}``; ``capped``
    says the deadline cut the warm-up or the timed repetitions short.
    """
    names = list(fns)
    calls = {n: 1 for n in names} if calls is None else dict(calls)
    deadline = deadline or Deadline(None)
    rec: Dict[str, Dict[str, list]] = {
        n: {"s": [], "user_s": [], "sys_s": [], "minor_faults": [], "warmup_s": []} for n in names}
    warm_done = 0
    for i in range(warmup):
        if deadline.passed():
            break
        for n in (names if i % 2 == 0 else names[::-1]):
            rec[n]["warmup_s"].append(time_call(fns[n], sync, calls[n]))
        warm_done += 1
    sync()
    gc.collect()
    done = 0
    for i in range(reps):
        if done >= min_reps and deadline.passed():
            break
        for n in (names if i % 2 == 0 else names[::-1]):
            r = rec[n]
            before = rusage()
            sync()
            t0 = time.perf_counter()
            for _ in range(calls[n]):
                out = fns[n]()
            sync()
            r["s"].append((time.perf_counter() - t0) / calls[n])
            after = rusage()
            r["user_s"].append(after["user_s"] - before["user_s"])
            r["sys_s"].append(after["sys_s"] - before["sys_s"])
            r["minor_faults"].append(after["minflt"] - before["minflt"])
            if keep_returns:
                for k, v in out.items():
                    r.setdefault(k, []).append(v)
        done += 1
    return {"samples": rec, "reps": done, "warmup_reps": warm_done,
            "capped": done < reps or warm_done < warmup}


def time_pieces(pieces: Mapping[str, Callable], sync: Sync, samples: int, min_sample_s: float, *,
                warmup: int = 0, probe_calls: int = 3, max_calls: int = 1000,
                deadline: Optional[Deadline] = None) -> dict:
    """Small pieces of work, each alone: one sample = :func:`calibrate`'s number of back-to-back
    calls (lasting >= ``min_sample_s`` seconds), ``samples`` samples interleaved.

    Returns ``{name: {**summarize(ms), "calls_per_sample": int, "raw_ms": [ms per call]}}``
    (milliseconds per call); a deadline that cut the samples short shows as ``n < samples``.
    """
    calls = {k: calibrate(fn, sync, min_sample_s, probe_calls=probe_calls, max_calls=max_calls)
             for k, fn in pieces.items()}
    run = interleaved(pieces, sync, reps=samples, warmup=warmup, calls=calls, deadline=deadline)
    out = {}
    for k in pieces:
        raw_ms = [1e3 * s for s in run["samples"][k]["s"]]
        out[k] = {**summarize(raw_ms), "calls_per_sample": calls[k], "raw_ms": raw_ms}
    return out


def summarize(samples: Sequence[float], unit: str = "ms", scale: float = 1.0) -> dict:
    """Median, quartiles, IQR and minimum of ``samples`` (multiplied by ``scale``), keys
    suffixed with ``unit`` (``median_ms``, ...), and the count ``n``."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64) * scale
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {f"median_{unit}": float(med), f"q25_{unit}": float(q25), f"q75_{unit}": float(q75),
            f"iqr_{unit}": float(q75 - q25), f"min_{unit}": float(x.min()), "n": int(x.size)}


def median(samples: Sequence[float]) -> float:
    import numpy as np

    return float(np.median(np.asarray(samples, dtype=np.float64)))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict:
    """``a`` over ``b`` (samples of two interleaved variants): the ratio of their medians
    (``of_medians``) and the median, quartiles and extremes of the per-repetition ratios
    ``a[i] / b[i]`` (``paired_*``), which slow drifts of the machine's speed do not move."""
    import numpy as np

    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    paired = pa / pb
    q25, med, q75 = np.percentile(paired, [25, 50, 75])
    return {"of_medians": float(np.median(pa) / np.median(pb)), "paired_median": float(med),
            "paired_q25": float(q25), "paired_q75": float(q75),
            "paired_min": float(paired.min()), "paired_max": float(paired.max())}


def cpu_per_wall(record: Mapping[str, List[float]]) -> float:
    """Median of (user + system CPU time) / wall time over the samples of one variant of
    :func:`interleaved`: about the thread count when the cores were the process's own, less
    when the machine was shared."""
    import numpy as np

    cpu = np.asarray(record["user_s"]) + np.asarray(record["sys_s"])
    return float(np.median(cpu / np.asarray(record["s"])))
