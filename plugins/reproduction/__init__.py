"""The papers' experiments, for both methods, from runs to a report (``gradmatch reproduce`` /
``gradmatch report``).

:data:`EXPERIMENTS` maps a name to the module defining its :class:`~reproduction.jobs.Experiment`;
each experiment is one entry here. Layout, by job:

- :mod:`.jobs`: what an experiment, a job and a report are; :mod:`.launch`: running jobs (here or
  on Slurm); :mod:`.folder`: the output folder's checks and manifest; :mod:`.report`: writing the
  report; :mod:`.published`: the published numbers set beside ours.
- :mod:`.fish`: Fish's experiments (``cdsprites``, ``wilds``, ``domainbed``);
  :mod:`.adios`: ADIOS's (``adios``); :mod:`.gpu_check`: both methods' GPU checks, speed ratios
  and first paper-protocol numbers in one capped quarter-hour (``gpu-check``).

This package imports neither torch nor ``adios_ssl`` at import time; the jobs run them.
"""
from __future__ import annotations

import importlib
from typing import Dict

from .jobs import Experiment, Job, Report  # noqa: F401

#: experiment name -> module (of this package) defining ``EXPERIMENT``
EXPERIMENTS: Dict[str, str] = {"cdsprites": "fish.cdsprites", "domainbed": "fish.domainbed",
                               "wilds": "fish.wilds", "adios": "adios", "gpu-check": "gpu_check"}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f".{EXPERIMENTS[name]}", __name__).EXPERIMENT


def experiment_names():
    return list(EXPERIMENTS)

