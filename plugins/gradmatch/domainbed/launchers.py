"""A ``submitit`` command launcher for DomainBed's sweep: each job command is one Slurm job.

:func:`register_launchers` (called by :func:`gradmatch.domainbed.register.register`) adds it to
DomainBed's ``command_launchers.REGISTRY``, so both the wrapper and the startup hook accept::

    python -m gradmatch.domainbed.sweep launch --command_launcher submitit ...

Like DomainBed's ``local`` launcher, each command runs through the shell (``subprocess``), in
the submitting directory and environment; the launcher submits them all (a Slurm job array),
waits for every job, and raises ``RuntimeError`` listing the failed ones with their logs.

Options come from environment variables (unset or empty: the default):

- ``GRADMATCH_SUBMITIT_EXECUTOR``: ``auto`` (default: Slurm where ``srun`` exists, else local),
  ``slurm``, or ``local`` (every job at once, as processes on this machine: for small tests).
- ``GRADMATCH_SUBMITIT_FOLDER``: submitit's logs and pickles (default ``./submitit_logs``).
- ``GRADMATCH_SUBMITIT_PARTITION``: Slurm partition (default: the cluster's).
- ``GRADMATCH_SUBMITIT_TIMEOUT_MIN``: minutes per job (default 1440).
- ``GRADMATCH_SUBMITIT_GPUS``: GPUs per job (default 1; 0 for CPU-only jobs).
- ``GRADMATCH_SUBMITIT_CPUS``: CPUs per job (default 8, DomainBed's data loader workers).
- ``GRADMATCH_SUBMITIT_MEM_GB``: memory per job in GB (default: the cluster's).
- ``GRADMATCH_SUBMITIT_ARRAY_PARALLELISM``: most jobs running at once on Slurm (default:
  submitit's, 256).
"""
from __future__ import annotations

import os
import subprocess
from typing import List

ENV_PREFIX = "GRADMATCH_SUBMITIT_"
CLUSTERS = {"auto": None, "slurm": "slurm", "local": "local"}  # EXECUTOR -> AutoExecutor cluster


def _env(name: str, default=None, kind=str):
    """``$GRADMATCH_SUBMITIT_<name>`` converted by ``kind``; ``default`` when unset or empty."""
    value = os.environ.get(ENV_PREFIX + name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"${ENV_PREFIX}{name} must be {kind.__name__}, got {value!r}") from None


def executor_from_env():
    """A ``submitit.AutoExecutor`` configured from the ``GRADMATCH_SUBMITIT_*`` variables."""
    import submitit

    choice = _env("EXECUTOR", "auto")
    if choice not in CLUSTERS:
        raise ValueError(f"${ENV_PREFIX}EXECUTOR must be one of {sorted(CLUSTERS)}, got {choice!r}")
    parameters = dict(
        name="domainbed", timeout_min=_env("TIMEOUT_MIN", 1440, int), gpus_per_node=_env("GPUS", 1, int),
        cpus_per_task=_env("CPUS", 8, int), mem_gb=_env("MEM_GB", None, float),
        slurm_partition=_env("PARTITION"), slurm_array_parallelism=_env("ARRAY_PARALLELISM", None, int))
    executor = submitit.AutoExecutor(folder=_env("FOLDER", "./submitit_logs"), cluster=CLUSTERS[choice])
    executor.update_parameters(**parameters)  # None = not set; slurm_* are ignored off Slurm
    return executor


def submitit_launcher(commands: List[str]) -> List[subprocess.CompletedProcess]:
    """Run each shell command as a submitit job; wait for all. Returns their ``CompletedProcess``
    (in order); raises ``RuntimeError`` naming every job that exited non-zero or did not finish."""
    from submitit.core.utils import UncompletedJobError

    executor = executor_from_env()
    with executor.batch():
        jobs = [executor.submit(subprocess.run, command, shell=True) for command in commands]
    print(f"submitit: {len(jobs)} jobs on the {executor.cluster} executor, logs in {executor.folder}")
    results, failures = [], []
    for command, job in zip(commands, jobs):
        try:
            result = job.result()
        except UncompletedJobError:
            result, why = None, f"did not finish (state {job.state})"
        else:
            why = f"exit status {result.returncode}"
        results.append(result)
        if result is None or result.returncode != 0:
            failures.append(f"  job {job.job_id}: {why}: {command}\n    log: {job.paths.stderr}")
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(jobs)} submitit jobs failed:\n" + "\n".join(failures) +
            "\nTo rerun them: the sweep's `delete_incomplete`, then `launch`, with the same arguments.")
    return results


def register_launchers() -> None:
    """Add :func:`submitit_launcher` to DomainBed's ``command_launchers.REGISTRY`` as ``submitit``
    (a launcher already registered under that name is kept)."""
    from domainbed import command_launchers

    command_launchers.REGISTRY.setdefault("submitit", submitit_launcher)
