"""How jobs run: on this machine (:func:`launch_local`, several at a time, each after the jobs it
needs) or through submitit on Slurm (:func:`launch_submitit`). A job that exits non-zero is
recorded in ``<out>/jobs/<name>.failed.json`` with the tail of its log; the other jobs go on, and
jobs that need it (``after``) are skipped and reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from .jobs import LOG_HEADER, Job, check_jobs, failed_path, job_states, log_path


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


#: the reason recorded for a job stopped by :func:`launch_local`'s ``deadline``
STOPPED_AT_CAP = "stopped at its time cap"


def launch_local(out: Path, jobs: Sequence[Job], parallel: int = 1, retry_failed: bool = False,
                 echo: Callable[[str], None] = print, deadline: Optional[float] = None) -> Dict[str, str]:
    """Run every unfinished job on this machine, ``parallel`` at a time, each after the jobs it
    needs. Returns the final :func:`job_states`. Ctrl-C stops the running jobs (their
    checkpoints stay; rerun to resume). ``deadline`` (a ``time.time()`` value): then the running
    jobs are stopped and recorded as failed (:data:`STOPPED_AT_CAP`) and no other job starts;
    the jobs not started stay todo."""
    _prepare(out, jobs, retry_failed)
    initial = job_states(out, jobs)
    pending = [j for j in jobs if initial[j.name] in ("todo", "resumable")]
    running: Dict[str, Tuple[Job, subprocess.Popen, object, float]] = {}
    total, finished = len(pending), 0
    previous = _stop_on_sigterm()
    try:
        while pending or running:
            if deadline is not None and time.time() >= deadline:
                _stop_at_deadline(out, running, echo)
                break
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


def _stop_at_deadline(out: Path, running: dict, echo: Callable[[str], None]) -> None:
    """Terminate the running jobs and record each as stopped at the cap."""
    for job, proc, log, start in running.values():
        proc.terminate()
    for name, (job, proc, log, start) in list(running.items()):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _record_failure(out, job, STOPPED_AT_CAP, start)
        echo(f"stopped {name} at the time cap ({(time.time() - start) / 60:.1f} min)")
    running.clear()


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
    _record_failure(out, job, why, start)
    return why


def _record_failure(out: Path, job: Job, why: str, start: float) -> None:
    """``<out>/jobs/<name>.failed.json``: why, the command, the seconds it ran, the log's tail."""
    log = log_path(out, job)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    failed_path(out, job).write_text(json.dumps(
        {"job": job.name, "why": why, "argv": job.command(out), "seconds": time.time() - start,
         "log": str(log), "log_tail": tail}, indent=2))


def launch_submitit(out: Path, jobs: Sequence[Job], retry_failed: bool = False,
                    echo: Callable[[str], None] = print) -> Dict[str, str]:
    """Submit the unfinished jobs with submitit (one Slurm job each, configured by the
    ``GRADMATCH_SUBMITIT_*`` variables of :mod:`gradmatch.domainbed.launchers`), in waves: a
    wave holds the jobs whose ``after`` jobs are done. Waits for every wave."""
    from gradmatch.domainbed.launchers import executor_from_env

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
