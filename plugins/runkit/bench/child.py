"""Run one function in a fresh Python process and hand back the dict it returns.

For figures the parent's own allocations, imports and caches must not touch (peak memory).
The child is ``python -m runkit.bench.child MODULE:FUNCTION 'JSON keyword arguments'
[--threads N]``; it prints the function's result as one ``RESULT_JSON {...}`` line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Optional

MARK = "RESULT_JSON "
#: the folder that holds the ``runkit`` package: on the child's ``PYTHONPATH``
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_in_child(target: str, kwargs: dict, *, timeout_s: float, threads: Optional[int] = None) -> dict:
    """``MODULE:FUNCTION(**kwargs)`` in a fresh process (JSON-able ``kwargs``; the environment is
    this process's, with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``threads`` when given).

    Returns its dict plus ``seconds`` (wall time of the child, start-up included); on a failure
    or after ``timeout_s`` seconds, ``{"error": "<why>", "peak_mb": NaN, "seconds": ...}``.
    """
    cmd = [sys.executable, "-m", "runkit.bench.child", target, json.dumps(kwargs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
    if threads is not None:
        cmd += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:g} s", "peak_mb": float("nan"),
                "seconds": time.perf_counter() - t0}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK):]), "seconds": time.perf_counter() - t0}
    why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"rc {proc.returncode}: {why}", "peak_mb": float("nan"),
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="MODULE:FUNCTION")
    p.add_argument("kwargs", help="JSON object of keyword arguments")
    p.add_argument("--threads", type=int, help="torch intra- and inter-op threads")
    args = p.parse_args(argv)
    if args.threads is not None:
        from .env import set_threads

        set_threads(args.threads)
    module, name = args.target.split(":")
    result = getattr(importlib.import_module(module), name)(**json.loads(args.kwargs))
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
