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

import contextlib
import dataclasses
import functools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from runkit.jsonio import dumps, write_json
from runkit.provenance import provenance

from .. import distributed as D
from ..erm import ERM
from ..fish import Fish
from . import presets as P
from .checkpoint import RunLog, atomic_save, load_checkpoint, load_latest_checkpoint, rng_state, set_rng_state
from .compat import apply_compat
from .console import DeferredInterrupt, progress_bar
from .evaluation import Evaluator, Selection
from .manifest import build_manifest, write_manifest
from .predictions import replicate_name, write_predictions
from .run_config import EARLY_FILES, RunConfig, RunExistsError, RunInterrupted, RunWriteError, check_run_folder
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
        self.preset = self._preset()
        self.dataset_kwargs = P.resolve_dataset_kwargs(self.preset, cfg.seed, cfg.fold, **cfg.dataset_kwargs)
        self.fabric = D.build_fabric(cfg.accelerator, cfg.devices, cfg.strategy, cfg.precision,
                                     cfg.num_nodes)
        self.world_size = self.fabric.world_size
        batch_size = self.setting("batch_size")
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} cannot be split evenly over "
                             f"{self.world_size} processes: use a multiple of {self.world_size} "
                             "(each process takes an equal part of every batch)")
        self.fabric.launch()  # with several processes: starts (or joins) them
        self.backend = D.FabricBackend(self.fabric, cfg.precision)
        self.rank = self.fabric.global_rank
        self.is_global_zero = self.rank == 0
        self.folder_state = None
        self._on_every_process(self._check_folder)
        if self.world_size > 1:
            self.folder_state = self.fabric.broadcast(self.folder_state, src=0)
        apply_compat()
        self.device = self.fabric.device
        self._seed_everything(cfg.seed)  # the same on every process: identical initial weights
        self.dataset = P.load_dataset(self.preset, cfg.root_dir, cfg.download, cfg.seed,
                                      replicate=cfg.fold, **cfg.dataset_kwargs)
        self._build()
        self._check_selection_metric()
        if self.rank > 0:  # different random transforms on each process from here on
            self._seed_everything(cfg.seed + 7919 * self.rank)

    def _check_folder(self) -> None:
        self.folder_state = check_run_folder(self.cfg, self.resume)

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
        self.eval_splits = list(cfg.eval_splits or [s for s in ds.split_dict if s != "train"])
        splits = [s for s in ds.split_dict if s != "train"]
        unknown = [s for s in self.eval_splits if s not in ds.split_dict]
        if unknown:
            raise ValueError(f"--eval-splits: unknown split(s) {', '.join(unknown)}; {cfg.dataset} has "
                             f"{', '.join(splits)}")
        self.selection_split = self.setting("selection_split")
        if self.selection_split not in splits:
            raise ValueError(f"--selection-split {self.selection_split!r}: {cfg.dataset} has "
                             f"{', '.join(splits)}; pick one of them")
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

    def _check_selection_metric(self) -> None:
        """Refuse an unknown ``--selection-metric`` now, not at the first evaluation: score the
        selection split's labels against themselves (no model, no inputs) and look for it."""
        subset = self.dataset.get_subset(self.selection_split)
        idx = torch.as_tensor(subset.indices)
        y = self.dataset.y_array[idx]
        names = sorted(self.dataset.eval(y, y, self.dataset.metadata_array[idx])[0])
        if self.selection_metric not in names:
            raise ValueError(f"--selection-metric {self.selection_metric!r}: {self.cfg.dataset}'s eval "
                             f"gives {', '.join(names)}; pick one of them")

    def resolved_config(self) -> dict:
        """Every setting's value after presets (what the run actually uses), JSON-ready."""
        cfg, fish = self.cfg, self.cfg.algorithm == "fish"
        optimizer = self._optimizer_preset()
        kwargs = {**optimizer.optimizer_kwargs, **self._optimizer_overrides()}
        settings = dataclasses.asdict(cfg)
        settings.update({
            "batch_size": self.setting("batch_size"), "lr": kwargs["lr"],
            "optimizer": optimizer.inner_optimizer, "optimizer_kwargs": kwargs,
            "momentum": kwargs.get("momentum"),
            "meta_lr": self.setting("meta_lr") if fish else None,
            "meta_steps": self.per_domain.meta_steps if fish else None,
            "inner_optimizer_state": self.inner_optimizer_state if fish else None,
            "erm_warmup_steps": self.setting("erm_warmup_steps") if fish else None,
            "step_size": cfg.step_size if fish else None,
            "warmup_handoff": cfg.warmup_handoff if fish else None,
            "epochs": self.epochs, "eval_every": self.eval_every, "eval_splits": self.eval_splits,
            "selection_metric": self.selection_metric, "selection_split": self.selection_split,
            "pretrained": self.preset.pretrained if cfg.pretrained is None else cfg.pretrained,
            "dataset_kwargs": self.dataset_kwargs, "keep_last_checkpoint": self.preset.keep_last_checkpoint,
            "loss": self.preset.loss, "model": self.preset.model, "dataset_version": self.dataset.version,
            "devices": self.world_size})
        return settings

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
        self._saved_step, self._before_final = None, None
        position = self._restore() if self.folder_state == "resume" else self._start()
        epoch, pos, step = position["epoch"], position["pos"], position["step"]
        self.selection = Selection(self.selection_metric, self.selection_split,
                                   self.preset.keep_last_checkpoint, self.out / "best_model.pt",
                                   writer=self.is_global_zero, best=position["best"])
        self._last_eval_step = position.get("last_eval_step")
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
                            self._write_log({"kind": "train", "step": step, "epoch": epoch,
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
                self._final_evaluation(step, epoch)
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
            self._write_log({"kind": "eval", "step": step, "epoch": epoch, "split": split,
                             "metrics": metrics})
            if split == self.selection_split:
                with self._writing():
                    self.selection.offer(step, metrics, self.model)

    def _final_evaluation(self, step: int, epoch: int) -> None:
        """The evaluation a run makes when it ends between two scheduled ones. One longer run
        would not make it, so what it changes (the log, the selection, ``best_model.pt``, the
        RNG states) is kept as it was before (``before_final`` in the checkpoint,
        ``best_model.before_final.pt``): ``--resume`` with more steps rolls it back and goes on
        exactly as one longer run."""
        if step == self._last_eval_step:
            return
        best_path, kept = self.out / "best_model.pt", self.out / "best_model.before_final.pt"
        self._before_final = {"best": self.selection.best, "log_records": self.log.records,
                              "last_eval_step": self._last_eval_step,
                              "rng": self.backend.all_gather_object(rng_state())}
        if self.is_global_zero:
            kept.unlink(missing_ok=True)
            if best_path.exists():
                with self._writing():
                    os.link(best_path, kept)  # the same file: free; kept if the evaluation replaces it
        self._evaluate(step, epoch)
        if self.is_global_zero and self.selection.best is self._before_final["best"]:
            kept.unlink(missing_ok=True)  # best_model.pt was not replaced

    def _write_log(self, record: dict) -> None:
        with self._writing():
            self.log.write(record)

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed write (disk full, permissions) into one line saying what was saved."""
        try:
            yield
        except OSError as err:
            if isinstance(err, RunWriteError):
                raise
            what = err.filename or "a file"
            why = err.strerror or str(err)
            if self._saved_step is None:
                kept = "no checkpoint was saved yet: fix the cause, then rerun the same command"
            else:
                kept = (f"the checkpoint of step {self._saved_step} ({self.out / 'checkpoint.pt'}) is "
                        "kept: fix the cause (free space, permissions), then rerun the same command "
                        "with --resume")
            raise RunWriteError(f"could not write {what} ({why}); {kept}") from None

    # ---- persistence
    def _start(self) -> dict:
        """A new run (or one again from step 0 where an earlier one stopped before its first
        checkpoint: its files are replaced, and the note says which)."""
        if self.is_global_zero:
            with self._writing():
                self.out.mkdir(parents=True, exist_ok=True)
                if self.folder_state == "reuse":
                    stale = sorted(p.name for p in self.out.iterdir() if p.name in EARLY_FILES)
                    for name in stale:
                        (self.out / name).unlink()
                    print(f"note: {self.out} held a run that stopped before its first checkpoint "
                          f"({', '.join(stale)}); starting it again from step 0", file=sys.stderr)
                self._write_config()
        self.log = RunLog(self.out / "log.jsonl", writer=self.is_global_zero)
        self.warmup_best = None
        return {"epoch": 0, "pos": 0, "step": 0, "best": None}

    @functools.cached_property
    def provenance(self) -> dict:
        """The code and engine of this run (:func:`runkit.provenance.provenance`: it reads git
        commits in subprocesses, so once per run, for config.json and summary.json alike)."""
        return provenance(self.device, self.world_size, self.cfg.precision)

    #: settings that change how a run is kept, not what it computes: left out of summary.json
    MECHANICS = ("out_dir", "checkpoint_every", "progress", "num_workers")

    def settings(self) -> dict:
        """The resolved settings that make the result (what summary.json records): all of
        config.json's but where the run is kept and how often (:attr:`MECHANICS`)."""
        return {k: v for k, v in self.resolved_config().items() if k not in self.MECHANICS}

    def _write_config(self, step: Optional[int] = None) -> None:
        """``config.json``: every resolved setting, the settings as given (``given``), the code
        and engine (``provenance``); a resumed run adds what it changed to ``resumes``."""
        path = self.out / "config.json"
        current = {**self.resolved_config(), "given": dataclasses.asdict(self.cfg),
                   "provenance": self.provenance}
        resumes = []
        if step is not None and path.exists():
            saved = json.loads(path.read_text())
            resumes = saved.get("resumes", [])
            skip = ("given", "provenance", "resumes", "out_dir", "progress")
            changed = {k: [saved.get(k), v] for k, v in json.loads(json.dumps(current)).items()
                       if k not in skip and saved.get(k) != v}
            resumes.append({"step": step, "changed": changed})
        write_json(path, {**current, "resumes": resumes})

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
        self._write_log({"kind": "handoff", "step": step, "from_step": best["step"],
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
            with self._writing():
                atomic_save({"learner": self.learner.state_dict(), "phase": self._phase(), "epoch": epoch,
                             "pos": pos, "step": step, "best": self.selection.best, "rng": rng,
                             "warmup_best": self.warmup_best, "before_final": self._before_final,
                             "engine": {"world_size": self.world_size, "precision": self.cfg.precision,
                                        "replica_digests": digests, **self.backend.state_dict()},
                             "last_eval_step": self._last_eval_step, "log_records": self.log.records},
                            self.out / "checkpoint.pt", keep_previous=True)
        self._saved_step = step

    def _restore(self) -> dict:
        """Load the latest good checkpoint (the previous one if the latest is damaged), decide
        what resuming means, and only then touch the folder: an interrupted run continues; a
        finished one continues when more ``--max-steps``/``--epochs`` are asked (extended as
        one longer run), else it is refused; one killed before its summary just finishes."""
        required = ("learner", "epoch", "pos", "step", "rng", "log_records")
        state, path, warning = load_latest_checkpoint(self.out / "checkpoint.pt", required)
        if warning and self.is_global_zero:
            print(f"warning: {warning}", file=sys.stderr)
        self.learner.load_state_dict(state["learner"])
        finished = self._finished(state["epoch"], state["step"])
        summary = self.out / "summary.json"
        if finished and summary.exists():
            until = (f"--max-steps {self.cfg.max_steps}" if self.cfg.max_steps is not None
                     else f"--epochs {self.epochs}")
            raise RunExistsError(f"{self.out} holds a finished run (step {state['step']}, epoch "
                                 f"{state['epoch']}) and {until} asks for no more: nothing to resume; "
                                 "to train it longer, "
                                 "pass a larger --max-steps or --epochs with --resume")
        extending = summary.exists() and not finished
        # Optimizer state dicts carry their lr: apply this invocation's (e.g. a lowered --lr).
        for optimizer in self._optimizers(state["learner"]):
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        self.backend.load_state_dict(state.get("engine", {}))
        before = state.get("before_final") if extending else None
        rng = (before or state)["rng"]
        rng = rng if isinstance(rng, list) else [rng]
        if self.rank < len(rng):
            set_rng_state(rng[self.rank])
        if len(rng) != self.world_size and self.is_global_zero:
            print(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                  f"{self.world_size}: the batches are the same, their split over processes and "
                  "the random transforms of the new processes differ from an uninterrupted run")
        self.log = RunLog(self.out / "log.jsonl", writer=self.is_global_zero)
        with self._writing():
            self.log.truncate((before or state)["log_records"])
            if self.is_global_zero:
                if extending:
                    kept = self.out / "best_model.before_final.pt"
                    if before is not None and kept.exists():
                        os.replace(kept, self.out / "best_model.pt")
                    summary.unlink()
                    print(f"note: extending the finished run in {self.out} from step {state['step']}; "
                          "its summary.json and predictions are written again at the end", file=sys.stderr)
                self._write_config(step=state["step"])
        if before is not None:
            state = {**state, "best": before["best"], "last_eval_step": before["last_eval_step"]}
        self.warmup_best = state.get("warmup_best")
        self._saved_step = state["step"]
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
        best = load_checkpoint(self.out / "best_model.pt", required=("model", "step"))
        self.model.load_state_dict(best["model"])
        replicate = replicate_name(self.cfg.dataset,
                                   P.replicate_of(self.preset, self.cfg.seed, self.cfg.fold))
        results, predictions = {}, {}
        for split in [s for s in self.dataset.split_dict if s != "train"]:
            results[split], predictions[split] = self.evaluator.metrics(split)
        summary = {"dataset": self.cfg.dataset, "algorithm": self.cfg.algorithm, "seed": self.cfg.seed,
                   "replicate": replicate, "selected_step": best["step"],
                   "selection": {"split": self.selection_split, "metric": self.selection_metric,
                                 "value": best[self.selection_metric]},
                   "metrics": results}
        if self.warmup_best is not None:
            summary["warmup_selection"] = {**self.warmup_best, "handoff": self.cfg.warmup_handoff}
        summary["settings"] = self.settings()
        summary["provenance"] = self.provenance
        if self.is_global_zero:
            with self._writing():
                folder = self.out / "predictions"
                for split, y_pred in predictions.items():
                    write_predictions(folder, self.cfg.dataset, split, replicate, y_pred, overwrite=True)
                write_manifest(folder, build_manifest(
                    self.dataset, self.cfg.dataset, self.dataset_kwargs, replicate,
                    frac=self.cfg.frac, settings=summary["settings"], provenance=summary["provenance"]))
                write_json(self.out / "summary.json", summary)
        return json.loads(dumps(summary))  # as written: tuples as lists, NaN as None


def _phase_name(stats: dict) -> str:
    """The phase a learner step reports: Fish's ``phase`` 0.0 (ERM warm-up) / 1.0, or ERM."""
    if "phase" not in stats:
        return "erm"
    return "warmup" if stats["phase"] == 0.0 else "fish"


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Start (or, with ``resume``, continue) the run described by ``cfg``; returns its summary."""
    return Run(cfg, resume=resume).train()
