"""DataLoader worker count for DomainBed's scripts, set from outside DomainBed.

DomainBed hard-codes ``N_WORKERS = 8`` as a class attribute of
``domainbed.datasets.MultipleDomainDataset`` ("subclasses may override"), and
``scripts/train.py`` gives every train and eval loader ``dataset.N_WORKERS`` workers: a
ColoredMNIST run forks 8 loaders x 8 = 64 worker processes, RotatedMNIST 17 x 8. On a small
CPU machine that costs more than the work itself. ``$GRADMATCH_DOMAINBED_WORKERS`` (an integer
>= 0; 0 loads in the main process) overrides it when set; unset or empty leaves DomainBed's
value alone. Call :func:`apply_env` after DomainBed is importable (after ``register()``) and
before DomainBed's script runs.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

ENV_VAR = "GRADMATCH_DOMAINBED_WORKERS"


def parse(value: Optional[str]) -> Optional[int]:
    """The worker count in ``value`` (None when unset or blank); ValueError unless an int >= 0."""
    if value is None or not value.strip():
        return None
    try:
        workers = int(value.strip())
    except ValueError:
        raise ValueError(f"${ENV_VAR} must be an integer >= 0, got {value!r}") from None
    if workers < 0:
        raise ValueError(f"${ENV_VAR} must be an integer >= 0, got {value!r}")
    return workers


def set_workers(workers: int) -> list:
    """Set ``N_WORKERS`` on ``MultipleDomainDataset`` and on every DomainBed dataset class that
    overrides it; returns the names of the classes changed."""
    from domainbed import datasets

    base = datasets.MultipleDomainDataset
    changed = []
    for name, obj in sorted(vars(datasets).items()):
        if isinstance(obj, type) and issubclass(obj, base) and "N_WORKERS" in vars(obj):
            obj.N_WORKERS = int(workers)
            changed.append(name)
    return changed


def apply_env(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Apply ``$GRADMATCH_DOMAINBED_WORKERS`` if set; returns the count applied, or None."""
    environ = os.environ if environ is None else environ
    workers = parse(environ.get(ENV_VAR))
    if workers is not None:
        set_workers(workers)
    return workers
