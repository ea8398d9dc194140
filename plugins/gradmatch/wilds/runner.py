"""Train Fish or ERM on a WILDS dataset with WILDS' own data, groupers and ``dataset.eval``.

Output folder (``out_dir``):

- ``config.json``: the resolved run configuration;
- ``log.jsonl``: one JSON record per line: ``{"kind": "train", "step", "epoch", "phase",
  "loss", ["gip", "gip_cos"], "sec_per_step"}`` and ``{"kind": "eval", "step", "epoch",
  "split", "metrics": {...}}``;
- ``checkpoint.pt``: everything needed to resume exactly (learner, RNG states, position);
  written atomically every ``checkpoint_every`` steps, at epoch ends and on Ctrl-C (the first
  Ctrl-C stops the run at the end of the current step; a second one stops it at once, keeping
  the previous checkpoint). Resuming applies the given ``--lr`` (and ``--meta-lr``);
- ``best_model.pt``: the model with the best ``selection_metric`` on ``selection_split``;
- ``predictions/<dataset>/<dataset>_split:<split>_<seed:N|fold:X>_epoch:best_pred.csv``: the
  selected model's predictions on every non-train split, in WILDS' ``evaluate.py`` format;
- ``summary.json``: written last: the selected step and its metrics on every split.

Engine: Lightning Fabric (:mod:`gradmatch.distributed`). With several processes
(``devices``/``num_nodes``) every process takes its equal, contiguous shard of each batch (of
each domain's batch for Fish), the gradients are averaged before every optimizer step, and the
replicas stay identical (checked bitwise at every checkpoint); evaluation splits each split
over the processes, so every example is predicted exactly once. Only process 0 writes files.
Checkpoints hold every process's RNG state and load onto the CPU first, so a run resumes on
another device type or number of processes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import distributed as D
from ..erm import ERM
from ..fish import STEP_SIZES, Fish
from ..optim import OPTIMIZERS
from . import presets as P
from .compat import apply_compat
from .predictions import replicate_name, write_predictions
from .samplers import DomainBatchPlanner, PooledBatchPlanner

ALGORITHMS = ("fish", "erm")


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
    reset_inner_optimizer: Optional[bool] = None
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
            raise ValueError(f"--step-size must be one of: " + "; ".join(
                f"{k} ({v})" for k, v in STEP_SIZES.items()))
        positive = {"batch_size": self.batch_size, "lr": self.lr, "meta_lr": self.meta_lr,
                    "meta_steps": self.meta_steps, "epochs": self.epochs, "max_steps": self.max_steps}
        for name, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value!r}")
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


# ---------------------------------------------------------------------------------------- setup
def logits_to_prediction(loss: str, logits: torch.Tensor) -> torch.Tensor:
    """What ``dataset.eval`` and the prediction files take: class ids, or raw values for regression."""
    if loss == "cross_entropy":
        return logits.argmax(-1)
    if loss == "binary_cross_entropy":
        return (logits.reshape(-1) > 0).long()
    return logits.reshape(logits.shape[0], -1).squeeze(-1)


def _to_device(batch, device):
    return tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)


def _split_batch(batch, sizes: List[int]):
    """Cut a collated ``(x, y, metadata)`` batch into consecutive per-domain batches."""
    parts, start = [], 0
    for size in sizes:
        parts.append(tuple(t[start:start + size] for t in batch))
        start += size
    return parts


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, always onto the CPU (``weights_only``): the learner's ``load_state_dict``
    moves tensors to the run's device, and the RNG states must stay CPU byte tensors
    (``torch.set_rng_state`` rejects others), whatever device the run that wrote it used."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                        pos, has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------- run
class Run:
    """One training run; ``Run(cfg).train()`` starts or resumes it and returns the summary."""

    def __init__(self, cfg: RunConfig, resume: bool = False):
        cfg.validate()
        self.cfg, self.resume = cfg, resume
        self.out = Path(cfg.out_dir)
        self.fabric = D.build_fabric(cfg.accelerator, cfg.devices, cfg.strategy, cfg.precision,
                                     cfg.num_nodes)
        self.world_size = self.fabric.world_size
        self.preset = self._preset()
        batch_size = self.setting("batch_size")
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} cannot be split evenly over "
                             f"{self.world_size} processes: use a multiple of {self.world_size} "
                             "(each process takes an equal part of every batch)")
        self.fabric.launch()  # with several processes: starts (or joins) them
        self.backend = D.FabricBackend(self.fabric, cfg.precision)
        self.rank = self.fabric.global_rank
        self.is_global_zero = self.rank == 0
        self._on_every_process(self._check_out_dir)
        apply_compat()
        self.device = self.fabric.device
        self._seed_everything(cfg.seed)  # the same on every process: identical initial weights
        self.dataset = P.load_dataset(self.preset, cfg.root_dir, cfg.download, cfg.seed,
                                      replicate=cfg.fold, **cfg.dataset_kwargs)
        self._build()
        if self.rank > 0:  # different random transforms on each process from here on
            self._seed_everything(cfg.seed + 7919 * self.rank)

    def _on_every_process(self, check) -> None:
        """Run ``check`` on process 0 only (the others could see files it has begun to write)
        and raise its error, if any, on every process."""
        error = None
        if self.is_global_zero:
            try:
                check()
            except (FileExistsError, FileNotFoundError, ValueError) as err:
                error = err
        if self.world_size > 1:
            error = self.fabric.broadcast(error, src=0)
        if error is not None:
            raise error

    # ---- configuration
    def _preset(self) -> "P.Preset":
        if self.cfg.dataset not in P.PRESETS:
            raise ValueError(f"unknown --dataset {self.cfg.dataset!r}; known: "
                             f"{', '.join(sorted(P.PRESETS))}")
        preset = P.get_preset(self.cfg.dataset)
        if self.cfg.fold is not None and preset.replicate != "fold":
            raise ValueError(f"--fold: {self.cfg.dataset} replicates are seeds (--seed), not folds")
        return preset

    def _check_out_dir(self) -> None:
        ckpt, summary = self.out / "checkpoint.pt", self.out / "summary.json"
        if self.resume:
            if summary.exists():
                raise RunExistsError(f"{self.out} holds a finished run (summary.json); nothing to resume")
            if not ckpt.exists():
                raise FileNotFoundError(f"--resume: no checkpoint.pt in {self.out}; start a new run "
                                        "without --resume")
            self._check_same_run()
            return
        if summary.exists():
            raise RunExistsError(f"{self.out} holds a finished run (summary.json; --resume has nothing "
                                 "to continue); choose another --out (nothing is overwritten)")
        if ckpt.exists():
            raise RunExistsError(f"{self.out} already holds a run (checkpoint.pt); pass --resume to "
                                 "continue it, or choose another --out")
        if self.out.exists() and any(self.out.iterdir()):
            raise RunExistsError(f"{self.out} is not empty; choose another --out (nothing is overwritten)")

    def _check_same_run(self) -> None:
        """Refuse to resume with another dataset, algorithm, seed, fold, frac or dataset kwargs."""
        with open(self.out / "config.json") as f:
            saved = json.load(f)
        current = dataclasses.asdict(self.cfg)
        for key in RESUME_KEYS:
            if saved.get(key) != current[key]:
                raise ValueError(f"--resume: {key}={current[key]!r} differs from the saved run's "
                                 f"{saved.get(key)!r} ({self.out}/config.json)")

    def setting(self, name: str):
        """The configured value of ``name``, else the preset's."""
        value = getattr(self.cfg, name)
        return getattr(self.preset, name) if value is None else value

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build(self) -> None:
        cfg, ds = self.cfg, self.dataset
        self.train_set = ds.get_subset("train", frac=cfg.frac,
                                       transform=self._transform(train=True))
        self.eval_splits = cfg.eval_splits or [s for s in ds.split_dict if s != "train"]
        unknown = [s for s in self.eval_splits if s not in ds.split_dict]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; {cfg.dataset} has {list(ds.split_dict)}")
        self.selection_split = self.setting("selection_split")
        self.selection_metric = self.setting("selection_metric")
        if self.selection_split not in self.eval_splits:
            self.eval_splits.append(self.selection_split)
        num_outputs = ds.n_classes if ds.n_classes is not None else ds.y_size
        if self.preset.loss == "binary_cross_entropy":
            num_outputs = 1
        model = self._model(num_outputs)
        if cfg.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.loss_fn = P.loss_fn_for(self.preset)
        optimizer = P.inner_optimizer_factory(self._optimizer_preset(), **self._optimizer_overrides())
        self.lr = optimizer.keywords["lr"]
        batch_size = self.setting("batch_size")
        self.pooled = PooledBatchPlanner(len(self.train_set), batch_size, cfg.seed)
        if cfg.algorithm == "fish":
            domains = P.fish_domains(self.preset, self.train_set.metadata_array, ds.metadata_fields)
            meta_steps = self.setting("meta_steps") or sum(len(d) > 0 for d in domains)
            self.per_domain = DomainBatchPlanner(domains, batch_size, meta_steps, cfg.seed)
            reset = self.setting("reset_inner_optimizer")
            self.learner = Fish(self.model, optimizer, self.setting("meta_lr"), loss_fn=self.loss_fn,
                                step_size=cfg.step_size, reset_inner_optimizer=reset,
                                erm_warmup_steps=self.setting("erm_warmup_steps"), seed=cfg.seed,
                                backend=self.backend)
        else:
            self.learner = ERM(self.model, optimizer, loss_fn=self.loss_fn, backend=self.backend)
        self.epochs = self.setting("epochs")
        self.eval_every = self.setting("eval_every") or 0

    def _optimizer_preset(self) -> "P.Preset":
        """The preset, with its optimizer swapped if ``--optimizer`` names another one."""
        name = self.cfg.optimizer
        if name is None or name == self.preset.inner_optimizer:
            return self.preset
        kwargs = {k: self.preset.optimizer_kwargs[k] for k in ("lr", "weight_decay")}
        return dataclasses.replace(self.preset, inner_optimizer=name, optimizer_kwargs=kwargs)

    def _optimizer_overrides(self) -> dict:
        overrides = {} if self.cfg.lr is None else {"lr": self.cfg.lr}
        if self._optimizer_preset().inner_optimizer == "sgd":
            default = self._optimizer_preset().optimizer_kwargs.get("momentum", 0.0)
            overrides["momentum"] = default if self.cfg.momentum is None else self.cfg.momentum
        elif self.cfg.momentum is not None:
            raise ValueError("--momentum applies to --optimizer sgd only")
        return overrides

    def _model(self, num_outputs: int):
        return P.build_model(self.preset, num_outputs, pretrained=self.cfg.pretrained,
                             allow_download=self.cfg.download, dataset=self.dataset)

    def _transform(self, train: bool):
        return P.build_transform(self.preset, train=train, allow_download=self.cfg.download)

    # ---- schedule
    def _phase_planner(self, phase: str):
        return self.per_domain if phase == "fish" else self.pooled

    def _first_phase(self) -> str:
        if self.cfg.algorithm == "erm":
            return "erm"
        return "warmup" if self.learner.erm_warmup_steps > 0 else "fish"

    # ---- main loop
    def train(self) -> dict:
        if self.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
        position = self._restore() if self.resume else self._start()
        phase, epoch, pos, step = position["phase"], position["epoch"], position["pos"], position["step"]
        self.best = position["best"]
        self._last_eval_step = position.get("last_eval_step")
        self._saved_step = position["step"] if self.resume else None
        total = self._total_steps()
        bar = _progress(total, step, self.cfg.progress and self.is_global_zero,
                        f"{self.cfg.algorithm} {self.cfg.dataset}")
        self._log_file = open(self.out / "log.jsonl", "a") if self.is_global_zero else None
        try:
            with _DeferredInterrupt() as interrupt:
                while not self._finished(phase, epoch, step):
                    plan = self._phase_planner(phase).plan(epoch)
                    steps = plan[pos:]
                    if self.cfg.max_steps is not None:
                        steps = steps[:self.cfg.max_steps - step]
                    if phase == "warmup":
                        steps = steps[:self.learner.erm_warmup_steps - step]
                    steps = [[D.shard(i, self.rank, self.world_size) for i in s] for s in steps]
                    for indices, batch in zip(steps, self._loader(steps, epoch, pos)):
                        t0 = time.perf_counter()
                        batch = _to_device(batch, self.device)
                        sizes = [len(i) for i in indices]
                        batches = _split_batch(batch, sizes) if len(sizes) > 1 else [batch]
                        track = self.cfg.gip_every > 0 and step % self.cfg.gip_every == 0 and len(sizes) > 1
                        stats = self.learner.step(batches, track_gip=track)
                        step, pos = step + 1, pos + 1
                        if step % self.cfg.log_every == 0 or "gip" in stats:
                            self._log({"kind": "train", "step": step, "epoch": epoch,
                                       "sec_per_step": time.perf_counter() - t0, **stats, "phase": phase})
                        bar.update(1)
                        bar.set_postfix(loss=f"{stats['loss']:.3f}", best=self._best_str(), refresh=False)
                        if self.eval_every and step % self.eval_every == 0:
                            self._evaluate(step, epoch)
                        if step % self.cfg.checkpoint_every == 0:
                            self._save(phase, epoch, pos, step)
                        self._stop_if_interrupted(interrupt, phase, epoch, pos, step)
                    phase, epoch, pos = self._advance(phase, epoch, pos, step, len(plan))
                    if pos == 0:  # an epoch (or the warm-up) ended
                        self._evaluate(step, epoch)
                        self._save(phase, epoch, pos, step)
                        self._stop_if_interrupted(interrupt, phase, epoch, pos, step)
                self._evaluate(step, epoch)
                self._save(phase, epoch, pos, step)
                self._stop_if_interrupted(interrupt, phase, epoch, pos, step)
        except RunInterrupted:
            bar.write(f"interrupted at step {step}; checkpoint saved, continue with --resume")
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C, mid-step: the state in memory may be half-updated; keep the last checkpoint.
            kept = ("no checkpoint was written yet" if self._saved_step is None else
                    f"the checkpoint of step {self._saved_step} is kept, continue with --resume")
            bar.write(f"interrupted during step {step + 1}; {kept}")
            raise
        finally:
            bar.close()
            if self._log_file is not None:
                self._log_file.close()
        return self._finish()

    def _stop_if_interrupted(self, interrupt, phase, epoch, pos, step) -> None:
        if self.backend.any(interrupt.requested):  # a Ctrl-C on any process stops them all here
            self._save(phase, epoch, pos, step)
            raise RunInterrupted()

    def _finished(self, phase: str, epoch: int, step: int) -> bool:
        if self.cfg.max_steps is not None:
            return step >= self.cfg.max_steps
        return phase != "warmup" and epoch >= self.epochs

    def _advance(self, phase, epoch, pos, step, plan_len):
        if phase == "warmup" and step >= self.learner.erm_warmup_steps:
            return "fish", 0, 0
        if pos >= plan_len:
            return phase, epoch + 1, 0
        return phase, epoch, pos

    def _total_steps(self) -> Optional[int]:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        planner = self.per_domain if self.cfg.algorithm == "fish" else self.pooled
        warm = self.learner.erm_warmup_steps if self.cfg.algorithm == "fish" else 0
        return warm + self.epochs * len(planner.plan(0))

    def _loader(self, steps, epoch: int, pos: int):
        """The batches of ``steps``. The loader draws its base seed from its own generator,
        seeded by (seed, epoch, position, rank), not from the global RNG: creating it where a
        resumed run does (mid-epoch) must not shift the random draws of the transforms, which
        (with ``num_workers=0``) come from the global RNG that checkpoints save and restore."""
        flat = [np.concatenate(s).tolist() for s in steps]
        seed = np.random.default_rng([self.cfg.seed, epoch, pos, self.rank]).integers(2 ** 62)
        return DataLoader(self.train_set, batch_sampler=flat, num_workers=self.cfg.num_workers,
                          collate_fn=self.dataset.collate, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(int(seed)))

    # ---- evaluation and selection
    @torch.no_grad()
    def predict(self, split: str):
        """``(y_pred, y_true, metadata)`` of the current model on the whole of ``split``, on
        every process (each process predicts its contiguous part, in order)."""
        subset = self.dataset.get_subset(split, frac=self.cfg.frac, transform=self._transform(train=False))
        shards = D.eval_shards(len(subset), self.world_size)
        local = torch.utils.data.Subset(subset, shards[self.rank].tolist())
        loader = DataLoader(local, batch_size=self.preset.eval_batch_size, shuffle=False,
                            num_workers=self.cfg.num_workers, collate_fn=self.dataset.collate)
        was_training = self.model.training
        self.model.eval()
        preds, ys, metas = [], [], []
        for x, y, meta in loader:
            with self.backend.autocast():
                logits = self.model(x.to(self.device))
            preds.append(logits_to_prediction(self.preset.loss, logits.float()).cpu())
            ys.append(y)
            metas.append(meta)
        self.model.train(was_training)
        counts = [len(s) for s in shards]
        return tuple(self.backend.gather_rows(torch.cat(parts), counts) for parts in (preds, ys, metas))

    def _evaluate(self, step: int, epoch: int) -> None:
        if step == self._last_eval_step:
            return
        self._last_eval_step = step
        for split in self.eval_splits:
            y_pred, y_true, meta = self.predict(split)
            metrics = self.dataset.eval(y_pred, y_true, meta)[0]
            metrics = {k: float(v) for k, v in metrics.items()}
            self._log({"kind": "eval", "step": step, "epoch": epoch, "split": split, "metrics": metrics})
            if split == self.selection_split:
                self._select(step, metrics)

    def _select(self, step: int, metrics: dict) -> None:
        if self.selection_metric not in metrics:
            raise KeyError(f"selection metric {self.selection_metric!r} not among {sorted(metrics)}; "
                           "pass --selection-metric")
        value = metrics[self.selection_metric]
        better = self.best is None or value > self.best["value"] or self.preset.keep_last_checkpoint
        if better:
            self.best = {"step": step, "value": value}
            if self.is_global_zero:
                _atomic_save({"model": self.model.state_dict(), "step": step,
                              self.selection_metric: value}, self.out / "best_model.pt")

    def _best_str(self) -> str:
        return "-" if self.best is None else f"{self.best['value']:.3f}@{self.best['step']}"

    # ---- persistence
    def _start(self) -> dict:
        if self.is_global_zero:
            with open(self.out / "config.json", "w") as f:
                json.dump(dataclasses.asdict(self.cfg), f, indent=2)
        self._log_records = 0
        return {"phase": self._first_phase(), "epoch": 0, "pos": 0, "step": 0, "best": None}

    def _save(self, phase, epoch, pos, step) -> None:
        """Every process calls this at the same step: process 0 writes the checkpoint, with
        every process's RNG state, after checking that the replicas are bitwise identical."""
        rng = self.backend.all_gather_object(_rng_state())
        digests = None
        if self.world_size > 1:
            digests = self.backend.all_gather_object(D.replica_digest(self.model))
            if len(set(digests)) > 1:
                raise RuntimeError(f"the model replicas differ between processes at step {step} "
                                   f"(digests {digests}); please report this as a bug")
        if self.is_global_zero:
            _atomic_save({"learner": self.learner.state_dict(), "phase": phase, "epoch": epoch,
                          "pos": pos, "step": step, "best": self.best, "rng": rng,
                          "engine": {"world_size": self.world_size, "precision": self.cfg.precision,
                                     "replica_digests": digests, **self.backend.state_dict()},
                          "last_eval_step": self._last_eval_step, "log_records": self._log_records},
                         self.out / "checkpoint.pt")
        self._saved_step = step

    def _restore(self) -> dict:
        state = load_checkpoint(self.out / "checkpoint.pt")
        self.learner.load_state_dict(state["learner"])
        # Optimizer state dicts carry their lr: apply this invocation's (e.g. a lowered --lr).
        for optimizer in self._optimizers(state["learner"]):
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        self.backend.load_state_dict(state.get("engine", {}))
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if self.rank < len(rng):
            _set_rng_state(rng[self.rank])
        if len(rng) != self.world_size and self.is_global_zero:
            print(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                  f"{self.world_size}: the batches are the same, their split over processes and "
                  "the random transforms of the new processes differ from an uninterrupted run")
        self._log_records = self._truncate_log(state["log_records"])
        return state

    def _optimizers(self, learner_state: dict) -> list:
        if isinstance(self.learner, ERM):
            return [self.learner.optimizer]
        extra = [self.learner.erm_optimizer] if learner_state.get("erm_optimizer") is not None else []
        return [self.learner.inner_optimizer] + extra

    def _truncate_log(self, records: int) -> int:
        """Keep the first ``records`` lines of the log, those the checkpoint covers (later ones
        are written again by the resumed run). Returns the number of records kept."""
        log = self.out / "log.jsonl"
        if not log.exists():
            return 0
        keep = log.read_text().splitlines()[:records]
        if self.is_global_zero:
            log.write_text("".join(line + "\n" for line in keep))
        return len(keep)

    def _log(self, record: dict) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
        self._log_records += 1

    # ---- the end
    def _finish(self) -> dict:
        if self.world_size > 1:
            self.fabric.barrier()  # process 0 has written best_model.pt
        best = load_checkpoint(self.out / "best_model.pt")
        self.model.load_state_dict(best["model"])
        replicate = replicate_name(self.cfg.dataset,
                                   P.replicate_of(self.preset, self.cfg.seed, self.cfg.fold))
        results = {}
        for split in [s for s in self.dataset.split_dict if s != "train"]:
            y_pred, y_true, meta = self.predict(split)
            results[split] = {k: float(v) for k, v in self.dataset.eval(y_pred, y_true, meta)[0].items()}
            if self.is_global_zero:
                write_predictions(self.out / "predictions", self.cfg.dataset, split, replicate,
                                  y_pred, overwrite=True)
        summary = {"dataset": self.cfg.dataset, "algorithm": self.cfg.algorithm, "seed": self.cfg.seed,
                   "replicate": replicate, "selected_step": best["step"],
                   "selection": {"split": self.selection_split, "metric": self.selection_metric,
                                 "value": best[self.selection_metric]},
                   "metrics": results}
        if self.is_global_zero:
            with open(self.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=2)
        return summary


class _DeferredInterrupt:
    """While active (main thread, default SIGINT handler): the first Ctrl-C only sets
    ``requested``, so the run stops at a step boundary; a second one raises at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _progress(total, initial, enabled, desc):
    import sys

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                mininterval=0.1 if interactive else 10.0)


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Start (or, with ``resume``, continue) the run described by ``cfg``; returns its summary."""
    return Run(cfg, resume=resume).train()
