"""What an experiment is, and how its jobs run: locally, through submitit, or listed (dry run).

An :class:`Experiment` turns a scale (``cpu`` or ``paper``) and an output folder into a list of
:class:`Job` (shell-free commands, each with the file that marks it finished), and turns a
finished folder into a :class:`Report`. Launchers only run commands, so the same jobs run on
this machine, on Slurm, or are printed.

Resumable by construction: a job whose ``done`` file exists is skipped; a job whose
``resume_if`` file exists (an interrupted run's checkpoint) gets ``resume_argv`` appended. A job
that exits non-zero is recorded in ``<out>/jobs/<name>.failed.json`` with the tail of its log;
the other jobs go on, and jobs that need it (``after``) are skipped and reported.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from runkit.paths import check_out_folder

MANIFEST = "reproduce.json"
SCALES = ("cpu", "cpu-epochs", "paper")   # every experiment has cpu and paper
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
    """What :func:`gradmatch.reproduce.report.write_report` publishes for one experiment.

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
    """An entry of :data:`gradmatch.reproduce.EXPERIMENTS`.

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


def _environment(job: Job) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(job.env)
    return env


def run_job(out: Path, job: Job) -> Optional[str]:
    """Run one job to completion here; ``None`` if it finished, else the reason it failed (also
    written to its ``.failed.json``). Its output goes to its log (appended on a resume)."""
    job, proc, log, start = _start(out, job)
    try:
        rc = proc.wait()
    finally:
        log.close()
    return _finish(out, job, rc, start)


def launch_local(out: Path, jobs: Sequence[Job], parallel: int = 1, retry_failed: bool = False,
                 echo: Callable[[str], None] = print) -> Dict[str, str]:
    """Run every unfinished job on this machine, ``parallel`` at a time, each after the jobs it
    needs. Returns the final :func:`job_states`. Ctrl-C stops the running jobs (their
    checkpoints stay; rerun to resume)."""
    _prepare(out, jobs, retry_failed)
    initial = job_states(out, jobs)
    pending = [j for j in jobs if initial[j.name] in ("todo", "resumable")]
    running: Dict[str, Tuple[Job, subprocess.Popen, object, float]] = {}
    total, finished = len(pending), 0
    previous = _stop_on_sigterm()
    try:
        while pending or running:
            states = job_states(out, jobs)
            ready = [j for j in pending if all(states[a] == "done" for a in j.after)]
            blocked = [j for j in pending if any(states[a] in ("failed", "blocked") for a in j.after)]
            for job in blocked:
                pending.remove(job)
                finished += 1
                echo(f"[{finished}/{total}] skipped {job.name}: a job it needs failed")
            for job in ready[:max(0, parallel - len(running))]:
                pending.remove(job)
                running[job.name] = _start(out, job)
                echo(f"started {job.name}" + ("  (resuming)" if states[job.name] == "resumable" else ""))
            if not running:
                if pending and not ready:
                    raise RuntimeError(f"jobs wait on unknown jobs: {[j.name for j in pending]}")
                continue
            time.sleep(0.5)
            for name, (job, proc, log, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                finished += 1
                why = _finish(out, job, proc.returncode, start)
                echo(f"[{finished}/{total}] {'FAILED ' + name + ': ' + why if why else 'finished ' + name}"
                     f"  ({(time.time() - start) / 60:.1f} min)")
    except KeyboardInterrupt:
        for job, proc, log, _ in running.values():
            proc.terminate()
        for job, proc, log, _ in running.values():
            proc.wait()
            log.close()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return job_states(out, jobs)


def _prepare(out: Path, jobs: Sequence[Job], retry_failed: bool) -> None:
    """What every launcher does first: check the job list; with ``retry_failed``, forget the
    failures (their jobs become todo or resumable)."""
    check_jobs(jobs)
    if retry_failed:
        for job in jobs:
            failed_path(out, job).unlink(missing_ok=True)


def _stop_on_sigterm():
    """Make SIGTERM (``kill``, a scheduler's stop) stop the launcher as Ctrl-C does, so its
    running jobs are terminated with it instead of running on unattended. Returns the previous
    handler (``None`` off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _start(out: Path, job: Job):
    log = log_path(out, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd = out / job.cwd if job.cwd else out
    cwd.mkdir(parents=True, exist_ok=True)
    argv = job.command(out)
    f = open(log, "a")
    f.write(f"\n{LOG_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
    f.flush()
    proc = subprocess.Popen(argv, cwd=cwd, env=_environment(job), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=False)
    return job, proc, f, time.time()


def _finish(out: Path, job: Job, rc: int, start: float) -> Optional[str]:
    if rc == 0 and job.is_done(out):
        return None
    why = f"exit status {rc}" if rc != 0 else f"exit status 0 but {job.done} was not written"
    log = log_path(out, job)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    failed_path(out, job).write_text(json.dumps(
        {"job": job.name, "why": why, "argv": job.command(out), "seconds": time.time() - start,
         "log": str(log), "log_tail": tail}, indent=2))
    return why


def launch_submitit(out: Path, jobs: Sequence[Job], retry_failed: bool = False,
                    echo: Callable[[str], None] = print) -> Dict[str, str]:
    """Submit the unfinished jobs with submitit (one Slurm job each, configured by the
    ``GRADMATCH_SUBMITIT_*`` variables of :mod:`gradmatch.domainbed.launchers`), in waves: a
    wave holds the jobs whose ``after`` jobs are done. Waits for every wave."""
    from ..domainbed.launchers import executor_from_env

    _prepare(out, jobs, retry_failed)
    executor = executor_from_env()
    while True:
        states = job_states(out, jobs)
        wave = [j for j in jobs if states[j.name] in ("todo", "resumable")
                and all(states[a] == "done" for a in j.after)]
        if not wave:
            return states
        with executor.batch():
            handles = [executor.submit(run_job, out, job) for job in wave]
        echo(f"submitit: {len(wave)} jobs on the {executor.cluster} executor, logs in {executor.folder}")
        for job, handle in zip(wave, handles):
            try:
                why = handle.result()
            except Exception as err:  # noqa: BLE001 -- the job did not finish (preempted, timeout)
                why = f"did not finish: {err}"
                failed_path(out, job).parent.mkdir(parents=True, exist_ok=True)
                failed_path(out, job).write_text(json.dumps({"job": job.name, "why": why}, indent=2))
            echo(f"{'FAILED ' + job.name + ': ' + why if why else 'finished ' + job.name}")


LAUNCHERS: Dict[str, Callable[..., Dict[str, str]]] = {"local": launch_local, "submitit": launch_submitit}


def check_args(out, experiment: Experiment, scale: str, jobs: int = 1) -> None:
    """Everything ``gradmatch reproduce`` checks before it lists, writes or runs anything
    (``--dry-run`` included): ``--jobs`` >= 1, ``--scale`` one of the experiment's, ``--out``
    a folder that can be written and that is new, empty, or the folder of this same experiment
    and scale (its ``reproduce.json``). ValueError, one line naming the flag and the fix."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if scale not in experiment.scales:
        raise ValueError(f"--scale {scale}: the {experiment.name} experiment has scales "
                         f"{', '.join(experiment.scales)}")
    out = check_out_folder(out)
    if not out.is_dir():
        return
    if (out / MANIFEST).exists():
        _check_same_experiment(out, read_manifest(out), experiment.name, scale)
    elif any(out.iterdir()):
        what = next((text for name, text in OTHER_FOLDERS.items() if (out / name).exists()),
                    "not a `gradmatch reproduce` folder")
        raise ValueError(f"--out {out} is not empty and holds no {MANIFEST} (it is {what}); choose "
                         "another --out (nothing is overwritten)")


def _check_same_experiment(out: Path, saved: dict, experiment: str, scale: str) -> None:
    if (saved["experiment"], saved["scale"]) != (experiment, scale):
        raise ValueError(f"--out {out} holds the {saved['experiment']} experiment at {saved['scale']} "
                         f"scale ({out / MANIFEST}); choose another --out, or rerun `gradmatch reproduce "
                         f"{saved['experiment']} --scale {saved['scale']}` there")


def write_manifest(out: Path, experiment: Experiment, scale: str, jobs: Sequence[Job]) -> None:
    """``<out>/reproduce.json``: which experiment and scale the folder holds (checked on rerun)."""
    path = out / MANIFEST
    if path.exists():
        _check_same_experiment(out, read_manifest(out), experiment.name, scale)
    out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment.name, "scale": scale, "jobs": [j.name for j in jobs]}
    path.write_text(json.dumps(record, indent=2))


#: what a folder written by another gradmatch command holds (file -> its command and results)
OTHER_FOLDERS = {"demo_config.json": "a `gradmatch demo` folder (its results are summary.json and demo.png)",
                 "config.json": "a `gradmatch train` run folder (its results are summary.json and log.jsonl)"}


def read_manifest(out: Path) -> dict:
    """``<out>/reproduce.json``, checked: FileNotFoundError / ValueError (one line saying what
    the folder is instead and what to pass) unless ``out`` is a ``gradmatch reproduce`` folder of
    a known experiment and scale."""
    out = Path(out)
    path = out / MANIFEST
    usage = "`gradmatch report DIR` reads the --out folder of `gradmatch reproduce EXPERIMENT --scale SCALE --out DIR`"
    fix = ('it must hold {"experiment": EXPERIMENT, "scale": SCALE} as `gradmatch reproduce` wrote it: '
           "restore it, or use another folder")
    if not out.exists():
        raise FileNotFoundError(f"{out} does not exist: {usage}")
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: {usage}")
    if not path.exists():
        what = next((text for name, text in OTHER_FOLDERS.items() if (out / name).exists()),
                    "not a `gradmatch reproduce` folder")
        raise FileNotFoundError(f"{out} is {what}: it has no {MANIFEST}; {usage}")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from None
    from . import EXPERIMENTS, get_experiment

    if not (isinstance(saved, dict) and isinstance(saved.get("experiment"), str)
            and isinstance(saved.get("scale"), str)):
        raise ValueError(f"{path} lacks the experiment or the scale; {fix}")
    if saved["experiment"] not in EXPERIMENTS:
        raise ValueError(f"{path} names experiment {saved['experiment']!r}, which is none of "
                         f"{', '.join(EXPERIMENTS)}; {fix}")
    scales = get_experiment(saved["experiment"]).scales
    if saved["scale"] not in scales:
        raise ValueError(f"{path} names scale {saved['scale']!r}, which the {saved['experiment']} "
                         f"experiment does not have ({', '.join(scales)}); {fix}")
    return saved


def python_module(module: str, *args: str) -> Tuple[str, ...]:
    """``(sys.executable, "-m", module, *args)``: a job command run by this interpreter."""
    return (sys.executable, "-m", module) + tuple(str(a) for a in args)
