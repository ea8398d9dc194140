"""A run's settings resolved against its dataset's preset, and the parts built from them.

:class:`Settings`: the value of each setting (the given one, else the preset's), checked
before any process starts. :class:`Parts`: the dataset, its training subset, the evaluated
splits and the selection rule (an unknown split or metric is refused at once), the model, the
learner (ERM, or Fish with its ERM warm-up), the batch :class:`.schedule.Schedule`, the
evaluator, and the resolved configuration that ``config.json`` and ``summary.json`` record.
Everything about a dataset comes from :mod:`.presets`, by name.
"""
from __future__ import annotations

import dataclasses

import torch

from ..erm import ERM
from ..fish import Fish
from . import presets as P
from .compat import apply_compat
from .evaluation import Evaluator
from .samplers import DomainBatchPlanner, PooledBatchPlanner
from .schedule import Schedule

#: settings that change how a run is kept, not what it computes: left out of summary.json
MECHANICS = ("out_dir", "checkpoint_every", "progress", "num_workers")


class Settings:
    """``cfg`` (a :class:`.run_config.RunConfig`) and its dataset's preset."""

    def __init__(self, cfg):
        if cfg.dataset not in P.PRESETS:
            raise ValueError(f"unknown --dataset {cfg.dataset!r}; known: {', '.join(sorted(P.PRESETS))}")
        preset = P.get_preset(cfg.dataset)
        if cfg.fold is not None and preset.replicate != "fold":
            raise ValueError(f"--fold: {cfg.dataset} replicates are seeds (--seed), not folds")
        self.cfg, self.preset = cfg, preset
        self.dataset_kwargs = P.resolve_dataset_kwargs(preset, cfg.seed, cfg.fold, **cfg.dataset_kwargs)

    def get(self, name: str):
        """The configured value of ``name``, else the preset's."""
        value = getattr(self.cfg, name)
        return getattr(self.preset, name) if value is None else value

    def optimizer_preset(self) -> "P.Preset":
        """The preset, with its optimizer swapped if ``--optimizer`` names another one."""
        name = self.cfg.optimizer
        if name is None or name == self.preset.inner_optimizer:
            return self.preset
        kwargs = {k: self.preset.optimizer_kwargs[k] for k in ("lr", "weight_decay")}
        return dataclasses.replace(self.preset, inner_optimizer=name, optimizer_kwargs=kwargs)

    def optimizer_overrides(self) -> dict:
        overrides = {} if self.cfg.lr is None else {"lr": self.cfg.lr}
        if self.optimizer_preset().inner_optimizer == "sgd":
            default = self.optimizer_preset().optimizer_kwargs.get("momentum", 0.0)
            overrides["momentum"] = default if self.cfg.momentum is None else self.cfg.momentum
        elif self.cfg.momentum is not None:
            raise ValueError("--momentum applies to --optimizer sgd only")
        return overrides


class Parts:
    """What a run trains and evaluates with, built on ``engine``'s device (see the module).

    The global RNGs are seeded the same on every process first (identical initial weights),
    and differently on each process once everything is built (different random transforms)."""

    def __init__(self, settings: Settings, engine):
        cfg, preset = settings.cfg, settings.preset
        self.cfg, self.preset, self.settings, self.engine = cfg, preset, settings, engine
        self.dataset_kwargs = settings.dataset_kwargs
        apply_compat()
        engine.seed(cfg.seed)
        self.dataset = ds = P.load_dataset(preset, cfg.root_dir, cfg.download, cfg.seed,
                                           replicate=cfg.fold, **cfg.dataset_kwargs)
        self.train_set = ds.get_subset("train", frac=cfg.frac, transform=self._transform(train=True))
        self.eval_splits = list(cfg.eval_splits or [s for s in ds.split_dict if s != "train"])
        splits = [s for s in ds.split_dict if s != "train"]
        unknown = [s for s in self.eval_splits if s not in ds.split_dict]
        if unknown:
            raise ValueError(f"--eval-splits: unknown split(s) {', '.join(unknown)}; {cfg.dataset} has "
                             f"{', '.join(splits)}")
        self.selection_split = settings.get("selection_split")
        if self.selection_split not in splits:
            raise ValueError(f"--selection-split {self.selection_split!r}: {cfg.dataset} has "
                             f"{', '.join(splits)}; pick one of them")
        self.selection_metric = settings.get("selection_metric")
        if self.selection_split not in self.eval_splits:
            self.eval_splits.append(self.selection_split)
        self._build_learner()
        self.epochs = settings.get("epochs")
        self.eval_every = settings.get("eval_every") or 0
        self.evaluator = Evaluator(ds, self.model, engine.backend, loss=preset.loss,
                                   batch_size=preset.eval_batch_size,
                                   transform=self._transform(train=False), frac=cfg.frac,
                                   num_workers=cfg.num_workers)
        self.schedule = Schedule(self.learner, self.pooled, self.per_domain, engine, self.train_set,
                                 collate=ds.collate, epochs=self.epochs, max_steps=cfg.max_steps,
                                 seed=cfg.seed, num_workers=cfg.num_workers)
        self._check_selection_metric()
        engine.seed_per_process(cfg.seed)

    def _build_learner(self) -> None:
        cfg, preset, ds, setting = self.cfg, self.preset, self.dataset, self.settings.get
        num_outputs = ds.n_classes if ds.n_classes is not None else ds.y_size
        if preset.loss == "binary_cross_entropy":
            num_outputs = 1
        model = P.build_model(preset, num_outputs, pretrained=cfg.pretrained,
                              allow_download=cfg.download, dataset=ds)
        if cfg.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.engine.device)
        self.loss_fn = P.loss_fn_for(preset)
        optimizer = P.inner_optimizer_factory(self.settings.optimizer_preset(),
                                              **self.settings.optimizer_overrides())
        self.lr = optimizer.keywords["lr"]
        batch_size = setting("batch_size")
        self.pooled = PooledBatchPlanner(len(self.train_set), batch_size, cfg.seed)
        self.per_domain = self.inner_optimizer_state = None
        backend = self.engine.backend
        if cfg.algorithm == "fish":
            domains = P.fish_domains(preset, self.train_set.metadata_array, ds.metadata_fields)
            meta_steps = setting("meta_steps") or sum(len(d) > 0 for d in domains)
            self.per_domain = DomainBatchPlanner(domains, batch_size, meta_steps, cfg.seed)
            self.inner_optimizer_state = setting("inner_optimizer_state")
            reset = self.inner_optimizer_state == "step"
            self.learner = Fish(self.model, optimizer, setting("meta_lr"), loss_fn=self.loss_fn,
                                step_size=cfg.step_size, reset_inner_optimizer=reset,
                                erm_warmup_steps=setting("erm_warmup_steps"), seed=cfg.seed,
                                backend=backend)
        else:
            self.learner = ERM(self.model, optimizer, loss_fn=self.loss_fn, backend=backend)

    def _transform(self, train: bool):
        return P.build_transform(self.preset, train=train, allow_download=self.cfg.download)

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
        cfg, fish, setting = self.cfg, self.cfg.algorithm == "fish", self.settings.get
        optimizer = self.settings.optimizer_preset()
        kwargs = {**optimizer.optimizer_kwargs, **self.settings.optimizer_overrides()}
        settings = dataclasses.asdict(cfg)
        settings.update({
            "batch_size": setting("batch_size"), "lr": kwargs["lr"],
            "optimizer": optimizer.inner_optimizer, "optimizer_kwargs": kwargs,
            "momentum": kwargs.get("momentum"),
            "meta_lr": setting("meta_lr") if fish else None,
            "meta_steps": self.per_domain.meta_steps if fish else None,
            "inner_optimizer_state": self.inner_optimizer_state if fish else None,
            "erm_warmup_steps": setting("erm_warmup_steps") if fish else None,
            "step_size": cfg.step_size if fish else None,
            "warmup_handoff": cfg.warmup_handoff if fish else None,
            "epochs": self.epochs, "eval_every": self.eval_every, "eval_splits": self.eval_splits,
            "selection_metric": self.selection_metric, "selection_split": self.selection_split,
            "pretrained": self.preset.pretrained if cfg.pretrained is None else cfg.pretrained,
            "dataset_kwargs": self.dataset_kwargs, "keep_last_checkpoint": self.preset.keep_last_checkpoint,
            "loss": self.preset.loss, "model": self.preset.model, "dataset_version": self.dataset.version,
            "devices": self.engine.world_size})
        return settings

    def config(self) -> dict:
        """``config.json``'s content: every resolved setting, the settings as given
        (``given``) and the code and engine (``provenance``)."""
        return {**self.resolved_config(), "given": dataclasses.asdict(self.cfg),
                "provenance": self.engine.provenance}

    def summary_settings(self) -> dict:
        """The resolved settings that make the result (what summary.json records): all of
        config.json's but where the run is kept and how often (:data:`MECHANICS`)."""
        return {k: v for k, v in self.resolved_config().items() if k not in MECHANICS}
