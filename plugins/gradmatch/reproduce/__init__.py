"""``gradmatch reproduce`` / ``gradmatch report``: the papers' experiments from runs to a report.

:data:`EXPERIMENTS` maps a name to an :class:`~gradmatch.reproduce.core.Experiment`; each
experiment lives in its own module and is one entry here.
"""
from __future__ import annotations

import importlib
from typing import Dict

from .core import Experiment, Job, Report  # noqa: F401

#: experiment name -> module (of this package) defining ``EXPERIMENT``
EXPERIMENTS: Dict[str, str] = {"cdsprites": "cdsprites", "domainbed": "domainbed", "wilds": "wilds",
                               "adios": "adios"}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f".{EXPERIMENTS[name]}", __name__).EXPERIMENT


def experiment_names():
    return list(EXPERIMENTS)

