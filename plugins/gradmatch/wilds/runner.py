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

This module owns the training loop and the run's life (start, resume, finish); the settings and
folder rules are :mod:`.run_config`, persistence :mod:`.checkpoint`, evaluation and selection
:mod:`.evaluation`, the terminal :mod:`.console`. The ERM warm-up is the learner's
(``Fish.in_warmup``); the loop only picks the pooled batches while it lasts and starts Fish's
epochs when it ends.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import distributed as D
from ..erm import ERM
from ..fish import Fish
from . import presets as P
from .checkpoint import RunLog, atomic_save, load_checkpoint, rng_state, set_rng_state
from .compat import apply_compat
from .console import DeferredInterrupt, progress_bar
from .evaluation import Evaluator, Selection
from .predictions import replicate_name, write_predictions
from .run_config import RunConfig, RunInterrupted, check_run_folder
from .samplers import DomainBatchPlanner, PooledBatchPlanner


def _to_device(batch, device):
    return tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)


def _split_batch(batch, sizes: List[int]):
    """Cut a collated ``(x, y, metadata)`` batch into consecutive per-domain batches."""
    parts, start = [], 0
    for size in sizes:
        parts.append(tuple(t[start:start + size] for t in batch))
        start += size
    return parts


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
        self._on_every_process(lambda: check_run_folder(cfg, resume))
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
            self.inner_optimizer_state = self.setting("inner_optimizer_state")
            reset = self.inner_optimizer_state == "step"
            self.learner = Fish(self.model, optimizer, self.setting("meta_lr"), loss_fn=self.loss_fn,
                                step_size=cfg.step_size, reset_inner_optimizer=reset,
                                erm_warmup_steps=self.setting("erm_warmup_steps"), seed=cfg.seed,
                                backend=self.backend)
        else:
            self.learner = ERM(self.model, optimizer, loss_fn=self.loss_fn, backend=self.backend)
        self.epochs = self.setting("epochs")
        self.eval_every = self.setting("eval_every") or 0
        self.evaluator = Evaluator(ds, self.model, self.backend, loss=self.preset.loss,
                                   batch_size=self.preset.eval_batch_size,
                                   transform=self._transform(train=False), frac=cfg.frac,
                                   num_workers=cfg.num_workers)

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

    # ---- schedule (the warm-up is the learner's: Fish.in_warmup)
    def _phase(self) -> str:
        """``erm``, or Fish's ``warmup`` (ERM steps on pooled batches) then ``fish``."""
        if isinstance(self.learner, ERM):
            return "erm"
        return "warmup" if self.learner.in_warmup else "fish"

    def _planner(self, phase: str):
        return self.per_domain if phase == "fish" else self.pooled

    # ---- main loop
    def train(self) -> dict:
        if self.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
        position = self._restore() if self.resume else self._start()
        epoch, pos, step = position["epoch"], position["pos"], position["step"]
        self.selection = Selection(self.selection_metric, self.selection_split,
                                   self.preset.keep_last_checkpoint, self.out / "best_model.pt",
                                   writer=self.is_global_zero, best=position["best"])
        self._last_eval_step = position.get("last_eval_step")
        self._saved_step = position["step"] if self.resume else None
        total = self._total_steps()
        bar = progress_bar(total, step, self.cfg.progress and self.is_global_zero,
                           f"{self.cfg.algorithm} {self.cfg.dataset}")
        self.log.open()
        try:
            with DeferredInterrupt() as interrupt:
                while not self._finished(epoch, step):
                    phase = self._phase()
                    plan = self._planner(phase).plan(epoch)
                    steps = plan[pos:]
                    if self.cfg.max_steps is not None:
                        steps = steps[:self.cfg.max_steps - step]
                    if phase == "warmup":
                        steps = steps[:self.learner.erm_warmup_steps - self.learner.num_steps]
                    steps = [[D.shard(i, self.rank, self.world_size) for i in s] for s in steps]
                    if phase == "fish" and pos == 0 and self.inner_optimizer_state == "epoch":
                        self.learner.inner_optimizer.state.clear()  # official: fresh each epoch
                    for indices, batch in zip(steps, self._loader(steps, epoch, pos)):
                        t0 = time.perf_counter()
                        batch = _to_device(batch, self.device)
                        sizes = [len(i) for i in indices]
                        batches = _split_batch(batch, sizes) if len(sizes) > 1 else [batch]
                        track = self.cfg.gip_every > 0 and step % self.cfg.gip_every == 0 and len(sizes) > 1
                        stats = self.learner.step(batches, track_gip=track)
                        step, pos = step + 1, pos + 1
                        if step % self.cfg.log_every == 0 or "gip" in stats:
                            self.log.write({"kind": "train", "step": step, "epoch": epoch,
                                            "sec_per_step": time.perf_counter() - t0, **stats,
                                            "phase": _phase_name(stats)})
                        bar.update(1)
                        bar.set_postfix(loss=f"{stats['loss']:.3f}", best=str(self.selection), refresh=False)
                        if self.eval_every and step % self.eval_every == 0:
                            self._evaluate(step, epoch)
                        if step % self.cfg.checkpoint_every == 0:
                            self._save(epoch, pos, step)
                        self._stop_if_interrupted(interrupt, epoch, pos, step)
                    epoch, pos = self._advance(phase, epoch, pos, len(plan))
                    if pos == 0:  # an epoch (or the warm-up) ended
                        self._evaluate(step, epoch)
                        if phase == "warmup" and self._phase() == "fish":
                            self._hand_off_warmup(step)
                        self._save(epoch, pos, step)
                        self._stop_if_interrupted(interrupt, epoch, pos, step)
                self._evaluate(step, epoch)
                self._save(epoch, pos, step)
                self._stop_if_interrupted(interrupt, epoch, pos, step)
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
            self.log.close()
        return self._finish()

    def _stop_if_interrupted(self, interrupt, epoch, pos, step) -> None:
        if self.backend.any(interrupt.requested):  # a Ctrl-C on any process stops them all here
            self._save(epoch, pos, step)
            raise RunInterrupted()

    def _finished(self, epoch: int, step: int) -> bool:
        if self.cfg.max_steps is not None:
            return step >= self.cfg.max_steps
        return self._phase() != "warmup" and epoch >= self.epochs

    def _advance(self, phase: str, epoch: int, pos: int, plan_len: int):
        """The position after a pass over (part of) an epoch's plan: the warm-up ended (Fish's
        epoch 0 starts), the epoch ended, or neither (stopped by --max-steps)."""
        if self._phase() != phase:
            return 0, 0
        if pos >= plan_len:
            return epoch + 1, 0
        return epoch, pos

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
    def predict(self, split: str):
        """``(y_pred, y_true, metadata)`` of the current model on the whole of ``split``."""
        return self.evaluator.predict(split)

    def _evaluate(self, step: int, epoch: int) -> None:
        if step == self._last_eval_step:
            return
        self._last_eval_step = step
        for split in self.eval_splits:
            metrics, _ = self.evaluator.metrics(split)
            self.log.write({"kind": "eval", "step": step, "epoch": epoch, "split": split,
                            "metrics": metrics})
            if split == self.selection_split:
                self.selection.offer(step, metrics, self.model)

    # ---- persistence
    def _start(self) -> dict:
        if self.is_global_zero:
            with open(self.out / "config.json", "w") as f:
                json.dump(dataclasses.asdict(self.cfg), f, indent=2)
        self.log = RunLog(self.out / "log.jsonl", writer=self.is_global_zero)
        self.warmup_best = None
        return {"epoch": 0, "pos": 0, "step": 0, "best": None}

    def _hand_off_warmup(self, step: int) -> None:
        """The ERM warm-up just ended. Official (``--warmup-handoff best``, fish:src/main.py
        ``pretrain`` reloads ``model.rar``, then ``__main__`` starts a fresh ``val_stat``): Fish
        starts from the best warm-up model, and model selection starts afresh, so the kept model
        is a Fish model. ``last``: Fish continues from the last warm-up weights, and the warm-up
        models stay eligible."""
        self.warmup_best = self.selection.best
        if self.cfg.warmup_handoff != "best" or self.selection.best is None:
            return
        if self.world_size > 1:
            self.fabric.barrier()  # process 0 has written best_model.pt
        best = load_checkpoint(self.out / "best_model.pt")
        self.model.load_state_dict(best["model"])
        self.selection.best = None
        self.log.write({"kind": "handoff", "step": step, "from_step": best["step"],
                        self.selection_metric: self.warmup_best["value"]})

    def _save(self, epoch, pos, step) -> None:
        """Every process calls this at the same step: process 0 writes the checkpoint, with
        every process's RNG state, after checking that the replicas are bitwise identical."""
        rng = self.backend.all_gather_object(rng_state())
        digests = None
        if self.world_size > 1:
            digests = self.backend.all_gather_object(D.replica_digest(self.model))
            if len(set(digests)) > 1:
                raise RuntimeError(f"the model replicas differ between processes at step {step} "
                                   f"(digests {digests}); please report this as a bug")
        if self.is_global_zero:
            atomic_save({"learner": self.learner.state_dict(), "phase": self._phase(), "epoch": epoch,
                         "pos": pos, "step": step, "best": self.selection.best, "rng": rng,
                         "warmup_best": self.warmup_best,
                         "engine": {"world_size": self.world_size, "precision": self.cfg.precision,
                                    "replica_digests": digests, **self.backend.state_dict()},
                         "last_eval_step": self._last_eval_step, "log_records": self.log.records},
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
            set_rng_state(rng[self.rank])
        if len(rng) != self.world_size and self.is_global_zero:
            print(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                  f"{self.world_size}: the batches are the same, their split over processes and "
                  "the random transforms of the new processes differ from an uninterrupted run")
        self.log = RunLog(self.out / "log.jsonl", writer=self.is_global_zero)
        self.log.truncate(state["log_records"])
        self.warmup_best = state.get("warmup_best")
        return state

    def _optimizers(self, learner_state: dict) -> list:
        if isinstance(self.learner, ERM):
            return [self.learner.optimizer]
        extra = [self.learner.erm_optimizer] if learner_state.get("erm_optimizer") is not None else []
        return [self.learner.inner_optimizer] + extra

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
            results[split], y_pred = self.evaluator.metrics(split)
            if self.is_global_zero:
                write_predictions(self.out / "predictions", self.cfg.dataset, split, replicate,
                                  y_pred, overwrite=True)
        summary = {"dataset": self.cfg.dataset, "algorithm": self.cfg.algorithm, "seed": self.cfg.seed,
                   "replicate": replicate, "selected_step": best["step"],
                   "selection": {"split": self.selection_split, "metric": self.selection_metric,
                                 "value": best[self.selection_metric]},
                   "metrics": results}
        if self.warmup_best is not None:
            summary["warmup_selection"] = {**self.warmup_best, "handoff": self.cfg.warmup_handoff}
        if self.is_global_zero:
            with open(self.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=2)
        return summary


def _phase_name(stats: dict) -> str:
    """The phase a learner step reports: Fish's ``phase`` 0.0 (ERM warm-up) / 1.0, or ERM."""
    if "phase" not in stats:
        return "erm"
    return "warmup" if stats["phase"] == 0.0 else "fish"


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Start (or, with ``resume``, continue) the run described by ``cfg``; returns its summary."""
    return Run(cfg, resume=resume).train()
