"""What an experiment is: its jobs (shell-free commands, each with the file that marks it
finished), their states, and its report.

An :class:`Experiment` turns a scale and an output folder into a list of :class:`Job` and turns
a finished folder into a :class:`Report`. Launchers (:mod:`reproduction.launch`) only run
commands, so the same jobs run on this machine, on Slurm, or are printed.

Resumable by construction: a job whose ``done`` file exists is skipped; a job whose
``resume_if`` file exists (an interrupted run's checkpoint) gets ``resume_argv`` appended. A job
that exits non-zero is recorded in ``<out>/jobs/<name>.failed.json`` with the tail of its log.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

STATES = ("done", "failed", "blocked", "resumable", "todo")   # what job_states reports, in this order


@dataclass(frozen=True)
class Job:
    """One command of an experiment.

    name: unique within the experiment and path-safe ("n15/fish_seed0"); its log is
        ``<out>/jobs/<name>.log``.
    argv: the command (``argv[0]`` is usually ``sys.executable``); run without a shell.
    done: path, relative to the output folder, that exists once the job has finished.
    resume_if / resume_argv: when ``resume_if`` (relative path) exists, ``resume_argv`` is
        appended (e.g. a checkpoint and ``--resume``).
    cwd: working folder relative to the output folder (created); default: the output folder.
    env: extra environment variables.
    minutes: rough CPU-minutes on the 2-core reference machine (paper scale: GPU-hours x 60 is
        not implied; the dry run prints it as given).
    after: names of jobs that must have finished first.
    """

    name: str
    argv: Tuple[str, ...]
    done: str
    resume_if: Optional[str] = None
    resume_argv: Tuple[str, ...] = ()
    cwd: Optional[str] = None
    env: Mapping[str, str] = field(default_factory=dict)
    minutes: float = 0.0
    after: Tuple[str, ...] = ()

    def command(self, out: Path) -> List[str]:
        """The argv to run now (with ``resume_argv`` when there is something to resume)."""
        argv = list(self.argv)
        if self.resume_if and (out / self.resume_if).exists():
            argv += list(self.resume_argv)
        return argv

    def is_done(self, out: Path) -> bool:
        return (out / self.done).exists()


@dataclass
class Report:
    """What :func:`reproduction.report.write_report` publishes for one experiment.

    markdown: the body (headline table first); ``figures`` are linked after it.
    data: JSON-serialisable results (also the source of every number in ``markdown``).
    figures: PNG file names written into the output folder.
    compare: ``{(dataset, method, metric): measured value}`` set beside the published numbers.
    """

    markdown: str
    data: dict
    figures: List[str] = field(default_factory=list)
    compare: Dict[Tuple[str, str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """An entry of :data:`reproduction.EXPERIMENTS`.

    jobs(scale, out) -> jobs of that scale, writing under ``out``.
    report(out, scale) -> the :class:`Report` of the finished (or partly finished) jobs.
    scales: scale -> one-line description (budget, what is reduced and how).
    """

    name: str
    title: str
    scales: Mapping[str, str]
    jobs: Callable[[str, Path], List[Job]]
    report: Callable[[Path, str], Report]


#: the line the launcher writes into a job's log before each start (time and command follow)
LOG_HEADER = "=== "


def job_dir(out: Path) -> Path:
    return out / "jobs"


def failed_path(out: Path, job: Job) -> Path:
    return job_dir(out) / f"{job.name}.failed.json"


def describe_failure(record: dict) -> str:
    """One line for a ``.failed.json`` record: its reason and, when its log has one, the log's
    last non-empty line (the job's own error message, e.g. ``gradmatch: error: non-finite loss
    ...``)."""
    last = next((line.strip() for line in reversed(record.get("log_tail") or [])
                 if line.strip() and not line.startswith(LOG_HEADER)), "")
    return f"{record['why']}: {last}" if last and last not in record["why"] else record["why"]


def read_failure(out: Path, job: Job) -> str:
    """:func:`describe_failure` of ``job``'s failure record."""
    return describe_failure(json.loads(failed_path(out, job).read_text()))


def log_path(out: Path, job: Job) -> Path:
    return job_dir(out) / f"{job.name}.log"


def check_jobs(jobs: Sequence[Job]) -> None:
    """Unique names, and every ``after`` names an earlier job."""
    seen = set()
    for job in jobs:
        if job.name in seen:
            raise ValueError(f"two jobs are named {job.name!r}")
        missing = [a for a in job.after if a not in seen]
        if missing:
            raise ValueError(f"job {job.name!r} runs after {missing}, which are not earlier jobs")
        seen.add(job.name)


def job_states(out: Path, jobs: Sequence[Job]) -> Dict[str, str]:
    """``name -> state``, a state of :data:`STATES`."""
    states: Dict[str, str] = {}
    for job in jobs:
        if job.is_done(out):
            states[job.name] = "done"
        elif failed_path(out, job).exists():
            states[job.name] = "failed"
        elif any(states[a] in ("failed", "blocked") for a in job.after):
            states[job.name] = "blocked"
        elif job.resume_if and (out / job.resume_if).exists():
            states[job.name] = "resumable"
        else:
            states[job.name] = "todo"
    return states


def state_summary(states: Mapping[str, str]) -> str:
    """``"20 done, 1 failed, 22 todo"``: how many jobs are in each state (states with none left out)."""
    counts = {s: list(states.values()).count(s) for s in STATES}
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v)


def threads_env(threads: int) -> Dict[str, str]:
    """The environment that holds a job's math libraries to ``threads`` threads."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def format_jobs(out: Path, jobs: Sequence[Job]) -> str:
    """The dry run: every job with its state and the command it would run now."""
    import shlex

    states = job_states(out, jobs)
    lines = []
    for i, job in enumerate(jobs, 1):
        after = f"  (after {', '.join(job.after)})" if job.after else ""
        cost = f"  ~{job.minutes:g} min" if job.minutes else ""
        lines.append(f"[{i}/{len(jobs)}] {job.name}  {states[job.name]}{cost}{after}")
        cwd = out / job.cwd if job.cwd else out
        lines.append(f"    cd {shlex.quote(str(cwd))} && "
                     + " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items())
                     + (" " if job.env else "") + shlex.join(job.command(out)))
    unknown = sum(1 for j in jobs if not j.minutes)
    lines.append(f"{len(jobs)} jobs, about {sum(j.minutes for j in jobs):g} CPU-minutes in all"
                 + (f" ({unknown} of unknown duration)" if unknown else "") + "; " + state_summary(states))
    return "\n".join(lines)


def python_module(module: str, *args: str) -> Tuple[str, ...]:
    """``(sys.executable, "-m", module, *args)``: a job command run by this interpreter."""
    return (sys.executable, "-m", module) + tuple(str(a) for a in args)
