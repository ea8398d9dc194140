"""``gradmatch reproduce gpu-check``: the first quarter-hour of a GPU, rehearsed.

Three parts, each one job with its own time cap (:mod:`.settings`), run one after the other:

- **checks**: the CUDA-only tests, a run resumed across devices (GPU -> CPU and back), and Fish
  and ADIOS at each mixed precision (16-mixed, bf16-mixed);
- **speed**, ratios measured in the same run: mixed precision against float32 (Fish through
  ``gradmatch train``), batched ADIOS against the official order at N=4 and N=6, FishFast
  against DomainBed's Fish, and Fish against its compute floor;
- **science**: DomainBed ColoredMNIST (three test environments, ERM vs DomainBed's Fish vs
  FishFast, 5,001 steps, default hparams, DomainBed's model selection, beside DomainBed's
  published ERM row) and SimCLR vs SimCLR+ADIOS vs SimCLR+random mask on PACS at 64 px.

A part stops at its cap and reports what it finished (:mod:`.part`). ``--scale rehearsal`` runs
all of it at toy size on the CPU, the same steps and files; CI runs it. Everything lands under
``--out`` as a report that ``gradmatch report`` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..jobs import Experiment, Job, python_module
from .report import report
from .settings import PARTS, SCALES

NAME = "gpu-check"


def repo_root() -> Optional[Path]:
    """The repository checkout this package runs from (it has ``tests/`` and ``benchmarks/``), or
    None for an installed copy."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "tests").is_dir() and (root / "benchmarks").is_dir() else None


def _found(find) -> Optional[str]:
    try:
        return str(find())
    except FileNotFoundError:
        return None


def jobs(scale: str, out: Path) -> List[Job]:
    """One job per part, each after the one before (a part that finds a failed step still writes
    its record, so the next one runs), each with its cap; the data folders are looked up here
    (in the working folder of ``gradmatch reproduce``) and passed on."""
    from ..adios.pacs import source_pacs_dir
    from ..fish.domainbed.plan import source_data_dir

    settings = SCALES[scale]
    extra = []
    for flag, value in (("--repo", repo_root()), ("--mnist", _found(source_data_dir)),
                        ("--pacs", _found(source_pacs_dir))):
        if value is not None:
            extra += [flag, str(value)]
    out_jobs, after = [], ()
    for part in PARTS:
        cap = settings.caps[part]
        out_jobs.append(Job(f"part/{part}", python_module("reproduction.gpu_check.part", part, "--scale", scale,
                                                          "--cap", f"{cap:g}", *extra),
                            done=f"parts/{part}.json", minutes=cap / 60, after=after,
                            env={"PYTHONUNBUFFERED": "1",
                                 **({"OMP_NUM_THREADS": str(settings.threads)} if settings.threads else {})}))
        after = (f"part/{part}",)   # one part at a time: they share the GPU and the 10 minutes
    return out_jobs


EXPERIMENT = Experiment(
    name=NAME,
    title="GPU check: CUDA checks, speed ratios and the first paper-protocol numbers",
    scales={name: s.description for name, s in SCALES.items()},
    jobs=jobs,
    report=report,
)
