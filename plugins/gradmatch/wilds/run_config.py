"""A ``gradmatch train`` run's settings (:class:`RunConfig`) and the rules of its folder."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from runkit.jsonio import write_json
from runkit.paths import check_out_folder

from ..choices import ALGORITHMS, INNER_OPTIMIZER_STATES, OPTIMIZER_NAMES, STEP_SIZES, WARMUP_HANDOFFS


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
        if self.optimizer is not None and self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"--optimizer must be one of {sorted(OPTIMIZER_NAMES)}, got {self.optimizer!r}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.frac <= 1:
            raise ValueError(f"--frac must be in (0, 1], got {self.frac!r}")
        at_least = {"checkpoint_every": 1, "log_every": 1, "num_nodes": 1, "eval_every": 0,
                    "gip_every": 0, "num_workers": 0, "erm_warmup_steps": 0, "seed": 0}
        for name, low in at_least.items():  # one line naming the flag that is out of range
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= low):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.seed >= 2 ** 32:
            raise ValueError(f"--seed must be < 2**32 (numpy's limit), got {self.seed}")
        if not isinstance(self.dataset_kwargs, dict):
            raise ValueError(f"--dataset-kwargs must be a JSON object such as '{{\"num_domains\": 10}}', "
                             f"got {self.dataset_kwargs!r}")
        if self.eval_splits is not None and "train" in self.eval_splits:
            raise ValueError("--eval-splits: 'train' is not evaluated (every non-train split is); drop it")
        check_out_folder(self.out_dir)
        from ..distributed import check_precision

        check_precision(self.precision, self.accelerator)
        if self.sync_batchnorm and self.accelerator == "cpu":
            raise ValueError("--sync-batchnorm needs CUDA devices (torch has no SyncBatchNorm on "
                             "the CPU); drop it on a CPU")


class RunExistsError(FileExistsError):
    """The output folder holds another run; resume it or choose another folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a step boundary, after saving a checkpoint there."""


class RunWriteError(OSError):
    """A file of the run could not be written (disk full, permissions): says what was saved."""


# The configuration keys a resumed run must share with the saved one.
RESUME_KEYS = ("dataset", "algorithm", "seed", "fold", "frac", "dataset_kwargs")
#: the files a run writes before its first checkpoint: a folder holding only these (and no
#: checkpoint) is left by a run that stopped early, and the same command may reuse it
EARLY_FILES = ("config.json", "config.json.tmp", "log.jsonl", "best_model.pt", "best_model.pt.tmp",
               "checkpoint.pt.tmp")
CHECKPOINTS = ("checkpoint.pt", "checkpoint.prev.pt")


def stopped_early(out: Path) -> bool:
    """``out`` holds only what a run writes before its first checkpoint (``config.json`` among
    it): that run stopped early (bad setting, crash) and left nothing to resume."""
    if not out.is_dir() or any((out / c).exists() for c in CHECKPOINTS):
        return False
    names = {p.name for p in out.iterdir()}
    return "config.json" in names and names <= set(EARLY_FILES)


def check_run_folder(cfg: RunConfig, resume: bool) -> str:
    """What may happen in ``cfg.out_dir``; returns ``"new"``, ``"reuse"`` (a folder left by a
    run that stopped before its first checkpoint: started again from step 0) or ``"resume"``.

    A new run needs a new or empty folder (or one that :func:`stopped_early`); a resumed one a
    run of the same dataset, algorithm, seed, fold, frac and dataset kwargs with a checkpoint
    (a finished one too: ``--resume`` with more ``--max-steps``/``--epochs`` extends it). Nothing
    is ever overwritten without saying so."""
    out = Path(cfg.out_dir)
    summary = out / "summary.json"
    has_checkpoint = any((out / c).exists() for c in CHECKPOINTS)
    if resume:
        if has_checkpoint:
            _check_same_run(cfg, out)
            return "resume"
        if stopped_early(out):
            return "reuse"
        raise FileNotFoundError(f"--resume: no checkpoint.pt in {out}; start a new run without --resume")
    if summary.exists():
        raise RunExistsError(f"{out} holds a finished run (summary.json); choose another --out, or "
                             "train it longer with --resume and a larger --max-steps or --epochs")
    if has_checkpoint:
        raise RunExistsError(f"{out} already holds a run (checkpoint.pt); pass --resume to "
                             "continue it, or choose another --out")
    if stopped_early(out):
        return "reuse"
    if out.exists() and any(out.iterdir()):
        raise RunExistsError(f"{out} is not empty; choose another --out (nothing is overwritten)")
    return "new"


def _check_same_run(cfg: RunConfig, out: Path) -> None:
    """Refuse to resume with another dataset, algorithm, seed, fold, frac or dataset kwargs
    (compared as typed: ``"given"`` in config.json; older runs saved only that)."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: cannot read {out}/config.json ({err}); start a new run in "
                         "another --out") from None
    given = saved.get("given", saved)
    current = dataclasses.asdict(cfg)
    for key in RESUME_KEYS:
        if given.get(key) != current[key]:
            raise ValueError(f"--resume: {key}={current[key]!r} differs from the saved run's "
                             f"{given.get(key)!r} ({out}/config.json)")


def write_config(path: Path, current: dict, step: Optional[int] = None) -> None:
    """``config.json``: ``current`` (every resolved setting, ``given``, ``provenance``); a run
    resumed at ``step`` adds what it changed to the saved file's ``resumes``."""
    resumes = []
    if step is not None and path.exists():
        saved = json.loads(path.read_text())
        resumes = saved.get("resumes", [])
        skip = ("given", "provenance", "resumes", "out_dir", "progress")
        changed = {k: [saved.get(k), v] for k, v in json.loads(json.dumps(current)).items()
                   if k not in skip and saved.get(k) != v}
        resumes.append({"step": step, "changed": changed})
    write_json(path, {**current, "resumes": resumes})
