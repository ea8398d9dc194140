"""The names the command line offers, without importing torch (so ``gradmatch --help`` is fast).

The modules that implement them import these tables from here: one place per name.
"""
from __future__ import annotations

from typing import Any

ALGORITHMS = ("fish", "erm")
#: Fish's meta step size conventions (:class:`gradmatch.fish.Fish` ``step_size``)
STEP_SIZES = {"domainbed": "eps = meta_lr (DomainBed's built-in Fish)",
              "official": "eps = meta_lr / meta_steps (the official Fish code)"}
#: the optimizers of :data:`gradmatch.optim.OPTIMIZERS`
OPTIMIZER_NAMES = ("adam", "sgd")
#: how long Fish's inner optimizer keeps its state: one step, one Fish epoch (official), the run
INNER_OPTIMIZER_STATES = ("step", "epoch", "run")
#: what Fish starts from after the ERM warm-up: the best warm-up model, selection restarted
#: (official, fish:src/main.py pretrain + __main__), or the last warm-up weights
WARMUP_HANDOFFS = ("best", "last")


def parse_devices(value: str) -> Any:
    """``--devices`` as Lightning reads it: ``auto``, ``-1`` (all), a count ``2`` (>= 1), or a
    list of device ids ``0,1``; anything else raises ``ValueError``."""
    if value == "auto":
        return value
    if "," in value or value.startswith("["):
        ids = [int(v) for v in value.strip("[]").split(",") if v.strip()]
        if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
            raise ValueError(value)
        return ids
    count = int(value)
    if count < 1 and count != -1:
        raise ValueError(value)
    return count
