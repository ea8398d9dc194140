"""``gradmatch reproduce adios``: ADIOS (Shi et al., ICML 2022) against its baselines.

cpu scale: SimCLR, SimCLR+ADIOS and SimCLR with the paper's fixed-mask baselines (random pixels,
MAE patches, BEiT blocks) pretrained with solo-learn on the train part of a deterministic,
stratified PACS split, then scored by frozen-feature probes (logistic regression and k-NN) on
the held-out test part, overall and per domain; a randomly initialised backbone is probed as
the floor. Every arm gets the same config (``cpu_simclr_adios``: ResNet-18, LARS, batch 32,
warm-up + cosine, the same augmentations, seed and epochs); only ``method`` /
``method_kwargs.mask_generator`` differ.

paper scale (listed, run on GPUs): the paper's runs shipped as configs in
``adios_ssl/configs`` (ImageNet100-S and STL-10 with ResNet-18, ImageNet-100 ADIOS-s) and the
official ViT-Tiny runs (``bash_files/training/{imagenet100s,stl10}/vittiny/*.sh`` of
YugeTen/adios) as overrides of those configs, each followed by ``main_linear.py``.

cpu-epochs scale: SimCLR, SimCLR+ADIOS and ADIOS-s for 10 epochs, probed after epochs 2, 5, 10.

Jobs are subprocesses; this package imports neither ``adios_ssl`` nor solo-learn. One module per
job: :mod:`.arms` (the arms and settings), :mod:`.pacs` (the data and the split), :mod:`.cpu` and
:mod:`.cpu_report`, :mod:`.epochs`, :mod:`.paper`, and :mod:`.solo_job` (solo-learn run as a
job, with its marker file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

from ..jobs import Experiment, Job, Report
from .arms import (  # noqa: F401  (the experiment's public names)
    ADIOS_S,
    ARMS,
    CPU,
    FLOOR,
    KNN_METRIC,
    LINEAR_METRIC,
    NAME,
    Arm,
    CpuSettings,
)
from .cpu import cpu_jobs
from .cpu_report import cpu_report
from .epochs import epochs_jobs, epochs_report
from .pacs import PACS_CLASSES, PACS_DOMAINS, source_pacs_dir  # noqa: F401
from .paper import paper_jobs, paper_report
from .solo_job import expand  # noqa: F401

#: scale -> (its jobs, its report), each called with the output folder
SCALE_FUNCTIONS: Dict[str, Tuple[Callable[[Path], List[Job]], Callable[[Path], Report]]] = {
    "cpu": (cpu_jobs, cpu_report),
    "cpu-epochs": (epochs_jobs, epochs_report),
    "paper": (paper_jobs, paper_report),
}


def jobs(scale: str, out: Path) -> List[Job]:
    if scale not in SCALE_FUNCTIONS:
        raise ValueError(f"adios: unknown scale {scale!r}")
    return SCALE_FUNCTIONS[scale][0](out)


def report(out: Path, scale: str) -> Report:
    return SCALE_FUNCTIONS[scale][1](Path(out))


EXPERIMENT = Experiment(
    name=NAME,
    title="ADIOS: adversarial masking for self-supervised learning (SimCLR, PACS probes)",
    scales={
        "cpu": ("PACS (4 domains, 7 classes) split 80/20 per domain x class (7,993 train / 1,998 "
                "test images, seed 0); SimCLR, SimCLR+ADIOS (N=4) and SimCLR with random / MAE / "
                "BEiT fixed masks pretrained with solo-learn (cpu_simclr_adios: ResNet-18, LARS, "
                "batch 32, 1 warm-up epoch + cosine) on the train images, reduced to 32 px crops "
                "(paper 96-224 px) and 2 epochs (paper 200-500), pretraining seeds 0 and 1; "
                "frozen-feature linear and k-NN probes on the test images, overall and per "
                "domain, plus a random-init floor. About 35-40 CPU-minutes per seed (2 jobs at a "
                "time on 2 cores: about 22 minutes per seed); ADIOS is 2-3 times a SimCLR step"),
        "cpu-epochs": ("the cpu scale's PACS split, recipe and probes; SimCLR, SimCLR+ADIOS and "
                       "SimCLR+ADIOS-s (one random mask of N=4 per image) pretrained for 10 epochs "
                       "at 32 px, one seed, each probed after epochs 2, 5 and 10 (the kept "
                       "checkpoints of one 10-epoch run), plus the random-init floor. About 1.8 "
                       "CPU-hours (2 jobs at a time on 2 cores: about 1 hour); resumable from the "
                       "last finished epoch"),
        "paper": ("the paper's runs on GPUs: ImageNet100-S and STL-10 (ResNet-18: SimCLR, BYOL, "
                  "SimSiam + ADIOS; ViT-Tiny: the official vittiny scripts as overrides) and "
                  "ImageNet-100 ADIOS-s, each followed by main_linear.py (30 jobs; set "
                  "$IMAGENET100_DIR and $STL10_DIR; run times not estimated here)"),
    },
    jobs=jobs,
    report=report,
)
