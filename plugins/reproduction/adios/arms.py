"""The ADIOS experiment's vocabulary: its arms (SimCLR, SimCLR+ADIOS, fixed-mask baselines,
ADIOS-s), the cpu scale's settings, run-folder names, and the command that runs solo-learn as a job."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ..jobs import python_module, threads_env

NAME = "adios"
#: the module whose ``__main__`` runs solo-learn as a job and writes its marker
SOLO_JOB = "reproduction.adios.solo_job"
CONFIGS = "pkg://adios_ssl.configs"
CPU_CONFIG = "cpu_simclr_adios"
THREADS = threads_env(1)


@dataclass(frozen=True)
class Arm:
    """One pretraining arm of the cpu scale."""

    key: str          # folder name
    label: str        # method name in the report and the ``compare`` keys
    overrides: Tuple[str, ...]
    masks: bool       # the arm masks views (has mask pictures)


ARMS: Tuple[Arm, ...] = (
    Arm("adios", "SimCLR+ADIOS", (), True),
    Arm("simclr", "SimCLR", ("method=simclr",), False),
    Arm("random", "SimCLR+random mask", ("++method_kwargs.mask_generator=random",), True),
    Arm("mae", "SimCLR+MAE mask", ("++method_kwargs.mask_generator=mae",), True),
    Arm("beit", "SimCLR+BEiT mask", ("++method_kwargs.mask_generator=beit",), True),
)
FLOOR = Arm("random_init", "random init (no pretraining)", (), False)
#: ADIOS-s (the paper's sparse variant: one random mask of the N per image), for the epochs scale
ADIOS_S = Arm("adios_s", "SimCLR+ADIOS-s", ("++method_kwargs.single_mask=true",), True)

LINEAR_METRIC = "linear top-1 %"
KNN_METRIC = "k-NN top-1 %"
DATASET = "PACS"


@dataclass(frozen=True)
class CpuSettings:
    """What the cpu scale runs; every arm gets all of it."""

    epochs: int = 2
    crop: int = 32
    batch: int = 32
    seeds: Tuple[int, ...] = (0, 1)           # pretraining seeds (the split and probes stay fixed)
    test_fraction: float = 0.2
    split_seed: int = 0
    max_per_group: Optional[int] = None      # images per domain x class (None: all)
    arms: Tuple[str, ...] = tuple(a.key for a in ARMS)
    extra: Tuple[str, ...] = ()               # further Hydra overrides for every arm
    #: CPU-seconds per pretraining step (batch 32, 32 px, one thread, data loading included),
    #: measured on the shared 2-core machine as the difference between 4- and 16/28-batch runs:
    #: ADIOS 1.19-1.22, SimCLR 0.43-0.83, random 0.44-0.60, MAE 0.45-0.73, BEiT 0.58 (the
    #: spread is the machine's other load). The jobs' estimates use these middle values.
    step_seconds: Dict[str, float] = field(default_factory=lambda: {
        "adios": 1.2, "simclr": 0.55, "random": 0.55, "mae": 0.6, "beit": 0.65})
    train_images: int = 7993


CPU = CpuSettings()


def arm_by_key(key: str) -> Arm:
    for arm in ARMS + (ADIOS_S,):
        if arm.key == key:
            return arm
    raise ValueError(f"unknown arm {key!r}: choose from {[a.key for a in ARMS + (ADIOS_S,)]}")


def run_name(arm: str, seed: int) -> str:
    """The run folder of ``arm`` at pretraining ``seed``: the arm's key for seed 0 (the folder
    names of the first, one-seed cpu scale, so that its finished runs are kept), else
    ``<arm>_seed<seed>``."""
    return arm if seed == 0 else f"{arm}_seed{seed}"


def seed_of(run: str) -> int:
    return int(run.split("_seed")[1]) if "_seed" in run else 0


def key_of(run: str) -> str:
    """The arm key of a run folder (``adios_seed1`` -> ``adios``)."""
    return run.split("_seed")[0]


def solo_command(script: str, marker: str, args: Sequence[str], link: Optional[str] = None,
          keep_epochs: Sequence[int] = ()) -> Tuple[str, ...]:
    extra = (("--link", link) if link else ()) + (
        ("--keep-epochs", ",".join(map(str, keep_epochs))) if keep_epochs else ())
    return python_module(SOLO_JOB, "solo", script, "--marker", marker, *extra,
                         "--", *args)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
