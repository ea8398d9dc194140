"""The machine a measurement ran on, and the torch set-up it ran with.

Imports no torch at module level: :func:`size_thread_pools_from_argv` must run before torch is
imported, so that its OpenMP/MKL pools start at the asked size.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Optional, Sequence


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> Optional[list]:
    """The 1, 5 and 15 minute load averages, or None where the OS does not say."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def threads_from_argv(argv: Sequence[str]) -> str:
    """The value of ``--threads`` in ``argv`` (``"1"`` when absent)."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


def size_thread_pools_from_argv(argv: Optional[Sequence[str]] = None) -> None:
    """Set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (unless set) from ``--threads`` in ``argv``
    (default ``sys.argv``). Call before torch is imported."""
    argv = sys.argv[1:] if argv is None else argv
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads_from_argv(argv))


def set_threads(threads: int) -> None:
    """``threads`` intra- and inter-op torch threads (the inter-op pool can only be sized once
    per process; a later call leaves it as it is)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already fixed by earlier parallel work; environment() records the actual value


def setup_torch(device_name: str, threads: int):
    """The ``torch.device`` to time on, with ``threads`` torch threads (:func:`set_threads`) and
    cuDNN autotuning on CUDA. Exits with a message if CUDA is asked for and missing."""
    import torch

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    set_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def environment(device, **extra) -> dict:
    """Machine and library facts for a result file: date, Python, platform, torch (+
    torchvision, numpy), device, CPU model and count, thread pools, load average; the CUDA device
    where there is one; then ``extra``."""
    import datetime

    import numpy as np
    import torch

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "numpy": np.__version__, "device": str(device),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": load_average(),
    }
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if getattr(device, "type", str(device)) == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda_version"] = torch.version.cuda
    env.update(extra)
    return env


def machine_line(env: dict, threads: str) -> str:
    """``"<device> (<CPU or GPU model>), <threads>, torch <version>, <date>"`` for plot titles."""
    device = str(env["device"])
    hardware = env.get("cuda_device") if device.startswith("cuda") else env["cpu_model"]
    return f"{device} ({hardware}), {threads}, torch {env['torch']}, {env['date'][:10]}"
