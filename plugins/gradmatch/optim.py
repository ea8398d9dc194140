"""The optimizers the Fish adapters accept, by name (one table for WILDS presets and DomainBed)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable

import torch

from .choices import OPTIMIZER_NAMES

#: name -> optimizer class
OPTIMIZERS: Dict[str, type] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES, "gradmatch.choices.OPTIMIZER_NAMES names the same optimizers"


def optimizer_factory(name: str, **kwargs: Any) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
    """``partial(OPTIMIZERS[name], **kwargs)``: ``params -> optimizer``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return functools.partial(OPTIMIZERS[name], **kwargs)
