"""A ``gradmatch train`` run's settings (:class:`RunConfig`) and the rules of its folder."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import distributed as D
from ..fish import STEP_SIZES
from ..optim import OPTIMIZERS

ALGORITHMS = ("fish", "erm")
#: how long Fish's inner optimizer keeps its state: one step, one Fish epoch (official), the run
INNER_OPTIMIZER_STATES = ("step", "epoch", "run")
#: what Fish starts from after the ERM warm-up: the best warm-up model, selection restarted
#: (official, fish:src/main.py pretrain + __main__), or the last warm-up weights
WARMUP_HANDOFFS = ("best", "last")


@dataclass
class RunConfig:
    """A training run. ``None`` fields take the dataset preset's (official Fish) value."""

    dataset: str
    out_dir: str
    algorithm: str = "fish"
    root_dir: str = "data"
    seed: int = 0
    fold: Optional[str] = None              # Poverty's fold (A-E); the replicate name follows it
    batch_size: Optional[int] = None        # per domain for Fish; per step for ERM
    lr: Optional[float] = None              # inner (Fish) / main (ERM) optimizer lr
    optimizer: Optional[str] = None         # "adam" | "sgd" (default: the preset's)
    momentum: Optional[float] = None        # SGD momentum (default: the preset's, else 0)
    meta_lr: Optional[float] = None
    meta_steps: Optional[int] = None        # domains per Fish step
    step_size: str = "official"             # a key of gradmatch.fish.STEP_SIZES
    inner_optimizer_state: Optional[str] = None  # "step" | "epoch" | "run" (see Preset)
    warmup_handoff: str = "best"            # Fish starts from the best ("best") or last warm-up model
    erm_warmup_steps: Optional[int] = None
    epochs: Optional[int] = None
    max_steps: Optional[int] = None         # stop after this many learner steps (all phases)
    eval_every: Optional[int] = None        # steps; 0 = only at epoch ends and at the end
    eval_splits: Optional[List[str]] = None  # default: every non-train split
    selection_metric: Optional[str] = None
    selection_split: Optional[str] = None
    pretrained: Optional[bool] = None
    checkpoint_every: int = 200
    gip_every: int = 0                      # track GIP every this many steps (0 = off)
    log_every: int = 10
    frac: float = 1.0                       # fraction of each split to use (smoke runs)
    num_workers: int = 0
    accelerator: str = "auto"               # Lightning's meanings (gradmatch.distributed)
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    sync_batchnorm: bool = False
    download: bool = False
    progress: bool = True
    dataset_kwargs: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {ALGORITHMS}")
        if self.step_size not in STEP_SIZES:
            raise ValueError("--step-size must be one of: " + "; ".join(
                f"{k} ({v})" for k, v in STEP_SIZES.items()))
        positive = {"batch_size": self.batch_size, "lr": self.lr, "meta_lr": self.meta_lr,
                    "meta_steps": self.meta_steps, "epochs": self.epochs, "max_steps": self.max_steps}
        for name, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value!r}")
        if self.inner_optimizer_state not in (None,) + INNER_OPTIMIZER_STATES:
            raise ValueError(f"--inner-optimizer-state must be one of {INNER_OPTIMIZER_STATES}, "
                             f"got {self.inner_optimizer_state!r}")
        if self.warmup_handoff not in WARMUP_HANDOFFS:
            raise ValueError(f"--warmup-handoff must be one of {WARMUP_HANDOFFS}, got "
                             f"{self.warmup_handoff!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.frac <= 1:
            raise ValueError(f"--frac must be in (0, 1], got {self.frac!r}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("--checkpoint-every and --log-every must be >= 1")
        D.check_precision(self.precision, self.accelerator)
        if self.sync_batchnorm and self.accelerator == "cpu":
            raise ValueError("--sync-batchnorm needs CUDA devices (torch has no SyncBatchNorm on "
                             "the CPU); drop it on a CPU")


class RunExistsError(FileExistsError):
    """The output folder holds another run; resume it or choose another folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a step boundary, after saving a checkpoint there."""


# The configuration keys a resumed run must share with the saved one.
RESUME_KEYS = ("dataset", "algorithm", "seed", "fold", "frac", "dataset_kwargs")


def check_run_folder(cfg: RunConfig, resume: bool) -> None:
    """What may happen in ``cfg.out_dir``: a new run needs a new or empty folder, a resumed
    one an unfinished run of the same dataset, algorithm, seed, fold, frac and dataset kwargs.
    Nothing is ever overwritten."""
    out = Path(cfg.out_dir)
    ckpt, summary = out / "checkpoint.pt", out / "summary.json"
    if resume:
        if summary.exists():
            raise RunExistsError(f"{out} holds a finished run (summary.json); nothing to resume")
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint.pt in {out}; start a new run "
                                    "without --resume")
        _check_same_run(cfg, out)
        return
    if summary.exists():
        raise RunExistsError(f"{out} holds a finished run (summary.json; --resume has nothing "
                             "to continue); choose another --out (nothing is overwritten)")
    if ckpt.exists():
        raise RunExistsError(f"{out} already holds a run (checkpoint.pt); pass --resume to "
                             "continue it, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise RunExistsError(f"{out} is not empty; choose another --out (nothing is overwritten)")


def _check_same_run(cfg: RunConfig, out: Path) -> None:
    """Refuse to resume with another dataset, algorithm, seed, fold, frac or dataset kwargs."""
    with open(out / "config.json") as f:
        saved = json.load(f)
    current = dataclasses.asdict(cfg)
    for key in RESUME_KEYS:
        if saved.get(key) != current[key]:
            raise ValueError(f"--resume: {key}={current[key]!r} differs from the saved run's "
                             f"{saved.get(key)!r} ({out}/config.json)")
