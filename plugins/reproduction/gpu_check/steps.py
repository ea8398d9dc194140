"""The gpu-check's steps, one function each, in a table per part (:data:`STEPS`).

A step gets a :class:`Context` (the output folder, the scale, the part's deadline) and returns a
dict: ``status`` (``ok``, ``failed: ...``, ``skipped: ...``) and what it measured. Every command
it runs is a subprocess with the time left to the part as its timeout; running past it raises
:class:`CapReached`, which the part records as ``stopped at the cap``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .settings import CheckScale


class CapReached(Exception):
    """The part's time cap passed while a step ran."""


@dataclass
class Context:
    out: Path                 # the gpu-check folder
    part: str
    scale: CheckScale
    deadline: float           # time.time() at which the part stops
    repo: Optional[Path]      # the repository checkout (tests/, benchmarks/), if this is one
    mnist: Optional[str]      # the folder holding MNIST/raw, if found
    pacs: Optional[str]       # the PACS folder, if found
    steps_left: int = 1       # steps of this part not yet run, this one included

    def left(self) -> float:
        return self.deadline - time.time()

    def share(self) -> float:
        """This step's even share of the time left (seconds)."""
        return max(1.0, self.left() / max(1, self.steps_left))

    def folder(self, name: str) -> Path:
        path = self.out / "parts" / self.part / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fresh_run(self, name: str) -> Path:
        """``parts/<part>/<name>/run``, emptied: a rerun of the step starts over."""
        run = self.folder(name) / "run"
        if run.exists():
            shutil.rmtree(run)
        return run

    def run(self, argv: Sequence[str], name: str, cwd: Optional[Path] = None,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """``argv`` with its output in ``parts/<part>/<name>.log``; :class:`CapReached` at the cap."""
        log = self.out / "parts" / self.part / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        left = self.left()
        if left <= 1:
            raise CapReached
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(map(str, argv))}\n")
            f.flush()
            try:
                return subprocess.run([str(a) for a in argv], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
                                      timeout=left)
            except subprocess.TimeoutExpired:
                raise CapReached from None


def _tail(ctx: Context, name: str) -> str:
    log = ctx.out / "parts" / ctx.part / f"{name}.log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1][:300] if lines else "no output"


def _train_argv(ctx: Context, out: Path, steps: int, accelerator: str, precision: str = "32-true",
                every: Optional[int] = None) -> List[str]:
    from gradmatch.speed import cdsprites_train_argv

    k = ctx.scale.train_kwargs
    return cdsprites_train_argv(out, steps=steps, accelerator=accelerator, precision=precision, every=every,
                                per_domain=max(64, 2 * k["batch_size"]), num_eval=32, **k)


def _train_log(out: Path) -> List[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
            if '"train"' in line]


# ----------------------------------------------------------------------------- checks

def cuda_tests(ctx: Context) -> dict:
    """The tests that need CUDA (fp16 with gradient scaling, NCCL/SyncBatchNorm with 2 GPUs);
    without CUDA they skip, and the step says how many ran."""
    if ctx.repo is None:
        return {"status": "skipped: needs the repository checkout (tests/)"}
    xml = ctx.folder("cuda_tests") / "junit.xml"
    proc = ctx.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "-m", "cuda", "tests/test_wilds_distributed.py", "tests/test_adios_ddp.py"],
                   "cuda_tests", cwd=ctx.repo)
    if not xml.exists():
        return {"status": f"failed: pytest exit {proc.returncode}: {_tail(ctx, 'cuda_tests')}"}
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    bad = counts["failures"] + counts["errors"]
    return {"status": "ok" if bad == 0 and proc.returncode in (0, 5) else f"failed: {bad} failed tests",
            **counts, "detail": f"{counts['passed']} passed, {counts['skipped']} skipped, {bad} failed"}


def resume_across(first: str, second: str) -> Callable[[Context], dict]:
    def step(ctx: Context) -> dict:
        """A run checkpointed on ``first`` continues on ``second``: every step once, in order."""
        every = max(1, ctx.scale.train_steps // 3)
        name = f"resume_{first}_to_{second}"
        out = ctx.fresh_run(name)
        if ctx.run(_train_argv(ctx, out, 2 * every, first, every=every), name).returncode != 0:
            return {"status": f"failed: the first run: {_tail(ctx, name)}"}
        (out / "summary.json").unlink()   # as if killed after its last checkpoint
        argv = _train_argv(ctx, out, 3 * every, second, every=every) + ["--resume"]
        if ctx.run(argv, name).returncode != 0:
            return {"status": f"failed: the resumed run: {_tail(ctx, name)}"}
        steps = [r["step"] for r in _train_log(out)]
        ok = steps == list(range(1, 3 * every + 1))
        return {"status": "ok" if ok else f"failed: steps logged {steps}",
                "detail": f"{2 * every} steps on {first}, then to step {3 * every} on {second}: "
                          f"each step once" if ok else f"steps {steps}"}
    step.__name__ = f"resume_{first}_to_{second}"
    return step


def fish_precision(precision: str) -> Callable[[Context], dict]:
    def step(ctx: Context) -> dict:
        """``gradmatch train`` (Fish) at ``precision``: finite losses and a summary."""
        name = f"fish_{precision}"
        out = ctx.fresh_run(name)
        steps = max(2, ctx.scale.train_steps // 3)
        proc = ctx.run(_train_argv(ctx, out, steps, ctx.scale.accelerator, precision), name)
        if proc.returncode != 0:
            return {"status": f"failed: {_tail(ctx, name)}"}
        losses = [r["loss"] for r in _train_log(out)]
        ok = len(losses) == steps and all(math.isfinite(v) for v in losses) and (out / "summary.json").exists()
        return {"status": "ok" if ok else f"failed: losses {losses}", "losses": losses,
                "detail": f"{steps} Fish steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"}
    step.__name__ = f"fish_{precision}"
    return step


def adios_precision(precision: str) -> Callable[[Context], dict]:
    def step(ctx: Context) -> dict:
        """solo-learn's ``main_pretrain.py`` (SimCLR+ADIOS) at ``precision`` for a few batches."""
        if ctx.pacs is None:
            return {"status": "skipped: PACS not found (set $PACS_DIR)"}
        name = f"adios_{precision}"
        cwd = ctx.folder(name)
        device = ("accelerator=gpu", "devices=[0]") if ctx.scale.accelerator == "gpu" else ()
        proc = ctx.run([sys.executable, "-m", "adios_ssl.cli", "pretrain", "--config-path",
                        "pkg://adios_ssl.configs", "--config-name", "cpu_simclr_adios",
                        f"data.train_path={ctx.pacs}/photo", f"precision={precision}", f"name={name}",
                        *device, *ctx.scale.adios_check], name, cwd=cwd)
        if proc.returncode != 0:
            return {"status": f"failed: {_tail(ctx, name)}"}
        ckpts = sorted(cwd.glob("trained_models/*/*/*.ckpt"))
        return {"status": "ok" if ckpts else "failed: no checkpoint written",
                "detail": f"{' '.join(ctx.scale.adios_check)}: checkpoint {ckpts[-1].name if ckpts else '-'}"}
    step.__name__ = f"adios_{precision}"
    return step


# ----------------------------------------------------------------------------- speed

def amp_vs_fp32(ctx: Context) -> dict:
    """Fish through ``gradmatch train``: median time of a step at each mixed precision against
    ``32-true``, measured in this step (ratio > 1: mixed precision is faster)."""
    from gradmatch.speed import time_gradmatch_train

    k = ctx.scale.train_kwargs
    results = {}
    for precision in ("32-true",) + ctx.scale.precisions:
        if ctx.left() <= 5:
            break
        results[precision] = time_gradmatch_train(
            precision=precision, accelerator=ctx.scale.accelerator, steps=ctx.scale.train_steps,
            warmup=max(1, ctx.scale.train_steps // 4), timeout_s=ctx.left(), **k)
    if "32-true" not in results or "error" in results["32-true"]:
        return {"status": f"failed: {results.get('32-true', {}).get('error', 'cap reached first')}",
                "runs": results}
    base = results["32-true"]["ms_per_step"]
    ratios = {p: base / r["ms_per_step"] for p, r in results.items() if p != "32-true" and "error" not in r}
    return {"status": "ok" if len(ratios) == len(ctx.scale.precisions) else "failed: not every precision ran",
            "runs": results, "ratios": ratios,
            "detail": ", ".join(f"32-true / {p}: {r:.2f}x" for p, r in ratios.items())}


def _measure(target: str, key: str, headline: Callable[[dict], str]) -> Callable[[Context], dict]:
    def step(ctx: Context) -> dict:
        from runkit.bench.child import run_in_child

        cap = max(1.0, ctx.share() - 15)   # start-up and the correctness check come first
        kwargs = {**ctx.scale.speed[key], "time_cap_s": cap}
        result = run_in_child(target, kwargs, timeout_s=ctx.left())
        if "error" in result:
            if result["error"].startswith("no result within"):
                raise CapReached
            return {"status": f"failed: {result['error']}"}
        return {"status": "ok", "detail": headline(result), "result": result}
    step.__name__ = key
    return step


def _adios_order(r: dict) -> str:
    return (f"official-order / batched step time at N={r['num_masks']}: {r['ratios']['speedup']:.2f}"
            + (" (capped)" if r.get("capped") else ""))


adios_n4 = _measure("adios_ssl.speed:measure_adios_step", "adios_n4", _adios_order)
adios_n6 = _measure("adios_ssl.speed:measure_adios_step", "adios_n6", _adios_order)
fishfast = _measure("gradmatch.domainbed.speed:measure_domainbed_fish", "fishfast",
                    lambda r: f"FishFast / DomainBed Fish time: {r['ratios']['FishFast/Fish']['of_medians']:.2f}"
                              + (" (capped)" if r.get("capped") else ""))
fish_floor = _measure("gradmatch.speed:measure_fish_overhead", "fish_floor",
                      lambda r: f"Fish over its compute floor: {r['overhead_pct']:+.1f} %"
                                + (" (capped)" if r.get("capped") else ""))


# ----------------------------------------------------------------------------- science

def science(ctx: Context) -> dict:
    """DomainBed ColoredMNIST (ERM / Fish / FishFast) and ADIOS on PACS, side by side, each
    through its experiment's own jobs under ``science/``, stopped at the part's cap."""
    from ..launch import launch_local

    threads, results = [], {}

    def run(name: str, build: Callable[[], Tuple[Path, list, int]]) -> None:
        try:
            sub, jobs, parallel = build()
        except (FileNotFoundError, ValueError) as err:
            results[name] = {"status": f"skipped: {err}"}
            return
        states = launch_local(sub, jobs, parallel=parallel, deadline=ctx.deadline,
                              echo=lambda line: _echo(ctx, name, line))
        done = sum(s == "done" for s in states.values())
        results[name] = {"status": "ok" if done == len(states) else f"{done} of {len(states)} jobs done",
                         "jobs": states}

    def domainbed():
        if ctx.mnist is None:
            raise FileNotFoundError("MNIST not found (set $GRADMATCH_DOMAINBED_DATA)")
        from ..fish.domainbed.plan import plan_jobs

        sub = ctx.out / "science" / "domainbed"
        return sub, plan_jobs(ctx.scale.domainbed, sub, Path(ctx.mnist)), ctx.scale.parallel[0]

    def adios():
        if ctx.pacs is None:
            raise FileNotFoundError("PACS not found (set $PACS_DIR)")
        from ..adios import EXPERIMENT
        from ..adios.cpu import cpu_jobs
        from ..folder import write_manifest

        sub = ctx.out / "science" / "adios"
        settings = replace(ctx.scale.adios, extra=ctx.scale.adios.extra + ctx.scale.adios_extra)
        jobs = cpu_jobs(sub, settings, data_dir=ctx.pacs)
        write_manifest(sub, EXPERIMENT, "cpu", jobs)   # `gradmatch report science/adios` reads it
        return sub, jobs, ctx.scale.parallel[1]

    for name, build in (("domainbed", domainbed), ("adios", adios)):
        thread = threading.Thread(target=run, args=(name, build), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    statuses = {k: v["status"] for k, v in results.items()}
    ok = all(s == "ok" for s in statuses.values())
    return {"status": "ok" if ok else "; ".join(f"{k}: {v}" for k, v in statuses.items()),
            "experiments": results,
            "detail": "; ".join(f"{k}: {v}" for k, v in statuses.items())}


_LOCK = threading.Lock()


def _echo(ctx: Context, name: str, line: str) -> None:
    with _LOCK:
        print(f"[science/{name}] {line}", flush=True)


#: part -> its steps, in order, for a scale (the precisions and resume pairs come from it)
def steps_of(part: str, scale: CheckScale) -> List[Tuple[str, Callable[[Context], dict]]]:
    table: Dict[str, List[Callable[[Context], dict]]] = {
        "checks": [cuda_tests] + [resume_across(a, b) for a, b in scale.resume]
                  + [fish_precision(p) for p in scale.precisions] + [adios_precision(p) for p in scale.precisions],
        "speed": [amp_vs_fp32, adios_n4, adios_n6, fishfast, fish_floor],
        "science": [science],
    }
    return [(fn.__name__, fn) for fn in table[part]]
