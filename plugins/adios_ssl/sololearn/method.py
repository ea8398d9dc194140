"""ADIOS for solo-learn: one mixin that turns a two-view solo-learn method into its ADIOS version.

``adios_method(SimCLR)`` is a ``BaseMethod`` subclass whose training step alternates

1. an encoder step: ``sum_k L(view1, view2 * (1 - m_k))`` with the masks detached, plus the
   online classifier's loss, on the encoder optimizer and scheduler that ``BaseMethod`` builds;
2. a masker step: the masker maximises the same sum minus ``alpha_sparsity`` times the sparsity
   penalty (plus the optional entropy term), on its own optimizer (``mask_lr``).

``L`` is the parent method's own loss: the parent's ``training_step`` is called once per (view,
masked view) pair, and its forward calls are answered from one batched forward over all masked
views (:func:`adios_ssl.objective.adios_ssl_loss`). So the mechanism works for any solo-learn
method whose ``training_step`` is "``super().training_step`` then a loss of the two crops'
outputs" (SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, ...), without re-implementing its loss.

Settings, under ``method_kwargs`` (defaults in brackets): ``N`` [6], ``mask_lr`` [0.1, scaled by
batch_size * devices / 256 like solo-learn's ``optimizer.lr``], ``alpha_sparsity`` [1.0],
``alpha_entropy`` [0.0], ``mask_fbase`` [32], ``unet_norm`` [gn], ``unet_blocks`` [from the crop
size], ``img_size`` [the first augmentation pipeline's ``crop_size``], ``single_mask`` [False,
ADIOS-s], ``masked_views`` [second | both], ``pairs`` [[masked]], ``mask_generator``
[adversarial | random | mae | beit], ``mask_ratio`` [baseline default], ``computation``
[batched | looped], ``symmetric_pairs`` [True; SimSiam: False keeps only the term predicting
the masked view], ``mask_pictures`` [{enabled: True, every_n_epochs: 1, num_images: 8}].

Several processes (Lightning's ``ddp`` strategies, ``find_unused_parameters`` True or False):
DDP is told to ignore the masker (``_ddp_params_and_buffers_to_ignore``, which Lightning also
reads), so the encoder step is an ordinary DDP backward over the encoder, projector(s) and
classifier (bucketed, overlapped all-reduce). The masker step's backward runs outside DDP's
reducer (``no_sync``), then the masker's gradients are averaged over the processes in one
all-reduce before its optimizer step (so under fp16 every process's GradScaler sees the same,
possibly non-finite, gradients and skips the same steps). The masker is broadcast from rank 0
when fitting starts (DDP does that for the modules it manages). If DDP does hold the masker
anyway, the encoder loss gets a zero-valued term in the masker's parameters, so that DDP
with ``find_unused_parameters=False`` sees every parameter it manages used.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence

import omegaconf
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..baselines import BASELINE_MASKS
from ..masker import NORMS, MaskingNetwork
from ..objective import (MASKED_VIEWS, PAIR_KINDS, adios_ssl_loss, mask_fractions,
                         masker_objective, sparsity_penalty)
from . import locate

locate.ensure_importable()

from solo.methods.base import BaseMethod  # noqa: E402
from solo.utils.metrics import accuracy_at_k  # noqa: E402
from solo.utils.misc import omegaconf_select  # noqa: E402

GENERATORS = ("adversarial",) + tuple(BASELINE_MASKS)
COMPUTATIONS = ("batched", "looped")
_MOMENTUM_PREFIX = "momentum:"
_IMAGE_KEY = "adios:image"


class ADIOSConfigError(ValueError):
    """A bad ADIOS setting in the solo-learn config."""


def adios_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
    """Fill in and check the ADIOS keys of ``cfg.method_kwargs`` (see the module docstring)."""
    defaults = {
        "N": 6, "mask_lr": 0.1, "alpha_sparsity": 1.0, "alpha_entropy": 0.0, "mask_fbase": 32,
        "unet_norm": "gn", "unet_blocks": None, "img_size": None, "single_mask": False,
        "masked_views": "second", "pairs": ["masked"], "mask_generator": "adversarial",
        "mask_ratio": None, "computation": "batched", "symmetric_pairs": True,
        "mask_pictures": {"enabled": True, "every_n_epochs": 1, "num_images": 8},
    }
    for key, value in defaults.items():
        cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", value)
    kw = cfg.method_kwargs
    if kw.img_size is None:
        try:
            kw.img_size = int(cfg.augmentations[0].crop_size)
        except (omegaconf.errors.ConfigKeyError, AttributeError, IndexError, TypeError) as err:
            raise ADIOSConfigError("set method_kwargs.img_size or augmentations[0].crop_size: "
                                   "the masker needs the training crop size") from err
    _check(int(kw.N) >= 1, f"method_kwargs.N={kw.N}: the number of masks must be >= 1")
    _check(float(kw.mask_lr) > 0, f"method_kwargs.mask_lr={kw.mask_lr} must be > 0")
    _check(float(kw.alpha_sparsity) >= 0, f"method_kwargs.alpha_sparsity={kw.alpha_sparsity} must be >= 0")
    _check(kw.unet_norm in NORMS, f"method_kwargs.unet_norm={kw.unet_norm!r}: choose one of {NORMS}")
    _check(kw.mask_generator in GENERATORS,
           f"method_kwargs.mask_generator={kw.mask_generator!r}: choose one of {GENERATORS}")
    _check(kw.masked_views in MASKED_VIEWS,
           f"method_kwargs.masked_views={kw.masked_views!r}: choose one of {MASKED_VIEWS}")
    _check(kw.computation in COMPUTATIONS,
           f"method_kwargs.computation={kw.computation!r}: choose one of {COMPUTATIONS}")
    pairs = list(kw.pairs)
    _check(bool(pairs) and set(pairs) <= set(PAIR_KINDS),
           f"method_kwargs.pairs={pairs}: choose a non-empty subset of {PAIR_KINDS}")
    _check("masked" in pairs or "none" in pairs,
           f"method_kwargs.pairs={pairs}: include 'masked' or 'none' (the online classifier "
           "reads the unmasked first view)")
    _check("both" not in pairs or kw.masked_views == "both",
           "method_kwargs.pairs contains 'both' (masked view vs masked view): set "
           "method_kwargs.masked_views=both")
    accumulate = omegaconf_select(cfg, "accumulate_grad_batches", 1)
    _check(accumulate in (None, 1),
           f"accumulate_grad_batches={accumulate}: ADIOS alternates one encoder and one masker "
           "update per batch (manual optimization), so gradient accumulation is not supported; "
           "set accumulate_grad_batches: 1 and raise optimizer.batch_size instead")
    crops = (omegaconf_select(cfg, "data.num_large_crops", 2),
             omegaconf_select(cfg, "data.num_small_crops", 0))
    _check(crops == (2, 0), f"ADIOS needs exactly two large crops and no small crops, got "
                            f"num_large_crops={crops[0]}, num_small_crops={crops[1]}: use one "
                            "augmentation pipeline with num_crops: 2 (symmetric)")
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ADIOSConfigError(message)


class ADIOSMixin:
    """Adds the masker, the alternating optimisation and the batched masked views to a
    two-view solo-learn method. Use :func:`adios_method` to combine it with a method class."""

    def __init__(self, cfg: omegaconf.DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.automatic_optimization = False
        self.adios_generator: str = kw.mask_generator
        self.alpha_sparsity = float(kw.alpha_sparsity)
        self.alpha_entropy = float(kw.alpha_entropy)
        self.single_mask = bool(kw.single_mask)
        self.masked_views: str = kw.masked_views
        self.adios_pairs = tuple(kw.pairs)
        self.symmetric_pairs = bool(kw.symmetric_pairs)
        if not self.symmetric_pairs and not hasattr(self, "adios_directional_loss"):
            raise ADIOSConfigError(
                f"method_kwargs.symmetric_pairs=false needs a directional loss, which only "
                f"simsiam_adios defines ({type(self).__name__} has none): remove the setting")
        self.adios_batched = kw.computation == "batched"
        self.adios_img_size = int(kw.img_size)
        self.mask_ratio = None if kw.mask_ratio is None else float(kw.mask_ratio)
        self.mask_pictures = dict(kw.mask_pictures)
        scale = cfg.optimizer.batch_size * len(cfg.devices) * cfg.get("num_nodes", 1) / 256
        self.mask_lr = float(kw.mask_lr) * scale
        self.masker: Optional[MaskingNetwork] = None
        if self.adios_generator == "adversarial":
            self.masker = MaskingNetwork(self.adios_img_size, int(kw.N), int(kw.mask_fbase),
                                         kw.unet_norm, kw.unet_blocks)
            # DDP (built by Lightning around this module) leaves the masker out of its reducer:
            # the masker's gradients come from a backward of their own (see the module
            # docstring). torch's helper sets the attribute DDP and Lightning read
            # (_ddp_params_and_buffers_to_ignore) and marks the tensors. If DDP ever stops
            # honouring it, on_fit_start sees the masker in the reducer and falls back.
            names = [f"masker.{name}" for name in self.masker.state_dict()]
            ignore = getattr(DistributedDataParallel,
                             "_set_params_and_buffers_to_ignore_for_model", None)
            if ignore is not None:
                ignore(self, names)
            else:  # pragma: no cover - depends on the torch version
                self._ddp_params_and_buffers_to_ignore = names
        # whether a DDP wrapper holds the masker in its reducer (set in on_fit_start)
        self._adios_masker_in_ddp = False
        # batches trained on (the EMA/tau schedule and the schedulers count batches, not
        # trainer.global_step, which advances once per optimizer step: twice per batch here)
        self.register_buffer("adios_batches", torch.zeros((), dtype=torch.long))
        self._adios_serving: Optional[Dict[int, tuple]] = None
        self._adios_mute = False

    # ----------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        configured = super().configure_optimizers()
        if isinstance(configured, (list, tuple)):
            optimizers, schedulers = list(configured[0]), list(configured[1])
        else:
            optimizers, schedulers = [configured], []
        if self.masker is None:
            return optimizers, schedulers
        masker_opt = self._OPTIMIZERS[self.optimizer](
            [{"name": "masker", "params": list(self.masker.parameters())}],
            lr=self.mask_lr, weight_decay=self.weight_decay, **self.extra_optimizer_args)
        if schedulers:
            schedulers.append(_same_schedule(schedulers[0], masker_opt, self.mask_lr))
        return optimizers + [masker_opt], schedulers

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Keep the checkpoint loadable with ``torch.load(weights_only=True)`` (torch>=2.6,
        ``main_linear.py``, resume): solo-learn's ``static_lr`` groups (SimSiam's predictor)
        patch ``scheduler.get_lr`` with a ``functools.partial`` that would land in the
        scheduler's state; ``configure_optimizers`` sets it again on resume."""
        super_hook = getattr(super(), "on_save_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        for state in checkpoint.get("lr_schedulers", []):
            state.pop("get_lr", None)

    def configure_callbacks(self):
        callbacks = list(super().configure_callbacks() or [])
        if self.masker is not None and self.mask_pictures.get("enabled", True):
            from .pictures import MaskPictures

            callbacks.append(MaskPictures(
                every_n_epochs=int(self.mask_pictures.get("every_n_epochs", 1)),
                num_images=int(self.mask_pictures.get("num_images", 8))))
        return callbacks

    # ------------------------------------------------------------------------------- training
    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """One encoder update, then one masker update (adversarial masks only)."""
        indexes, views, targets = batch
        if len(views) != 2:
            raise RuntimeError(f"ADIOS needs 2 crops per image, got {len(views)}")
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        x1, x2 = views

        # 1) encoder (and online classifiers): masks fixed. Batched mode computes the masks
        # once, with grad, and reuses that graph in the masker step (the masker has not moved
        # in between, so they are the same masks); the official order computes them twice.
        reuse_masks = self.masker is not None and self.adios_batched
        with torch.set_grad_enabled(reuse_masks):
            masks_graph = self._masks(x1, x2)
        masks = [None if m is None else m.detach() for m in masks_graph]
        ssl, per_mask, class_loss = self._ssl_loss(batch, masks, grad_through_views=True)
        loss = ssl + class_loss
        _check_finite(loss, "encoder", self)
        optimizers[0].zero_grad(set_to_none=True)
        if self._adios_masker_in_ddp:
            # DDP manages the masker too: with find_unused_parameters=False every parameter it
            # manages must be reached by this backward. A zero-valued term reaches the masker
            # (value and encoder gradients unchanged); its DDP-averaged zero gradients are
            # cleared before the masker's own backward.
            optimizers[1].zero_grad(set_to_none=True)
            loss = loss + 0.0 * sum(p.sum() for p in self.masker.parameters())
        self.manual_backward(loss)
        optimizers[0].step()
        self.adios_batches += 1
        metrics = {"train_adios_ssl_loss": ssl.detach()}

        # 2) masker: maximise the SSL loss minus the sparsity penalty
        if self.masker is not None:
            masker_opt = optimizers[1]
            self.toggle_optimizer(masker_opt)
            masks = masks_graph if reuse_masks else self._masks(x1, x2)
            all_masks = torch.cat([m for m in masks if m is not None], dim=1)
            self._adios_mute = True
            try:
                masker_ssl, _, _ = self._ssl_loss(batch, masks, grad_through_views=False)
            finally:
                self._adios_mute = False
            objective = masker_objective(masker_ssl, all_masks, self.alpha_sparsity,
                                         self.alpha_entropy)
            _check_finite(objective, "masker", self)
            masker_opt.zero_grad(set_to_none=True)
            with self._outside_ddp_reducer():
                self.manual_backward(-objective)
            self._average_masker_grads()
            masker_opt.step()
            self.untoggle_optimizer(masker_opt)
            fractions = mask_fractions(all_masks.detach())
            metrics.update({
                "train_mask_loss": objective.detach(),
                "train_mask_penalty": sparsity_penalty(all_masks.detach()),
                "mask_summed_min": fractions.min(dim=1).values.mean(),
                "mask_summed_max": fractions.max(dim=1).values.mean(),
            })
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        self._step_schedulers()
        return loss.detach()

    # ---------------------------------------------------------------------- several processes
    def on_fit_start(self) -> None:
        """Under DDP: check whether the wrapper left the masker out of its reducer, and give
        every process rank 0's masker (DDP broadcasts only the modules it manages)."""
        super_hook = getattr(super(), "on_fit_start", None)
        if super_hook is not None:
            super_hook()
        self._adios_masker_in_ddp = False
        if self.masker is None:
            return
        ddp = self._ddp_wrapper()
        if ddp is None:
            if self.trainer.world_size > 1:
                raise ADIOSConfigError(
                    f"ADIOS trains with {self.trainer.world_size} processes only under a DDP "
                    f"strategy (ddp, ddp_find_unused_parameters_true, ddp_spawn, ...), not "
                    f"{type(self.trainer.strategy).__name__}")
            return
        ignored = set(getattr(ddp, "parameters_to_ignore", ()))
        names = {f"masker.{name}" for name, _ in self.masker.named_parameters()}
        self._adios_masker_in_ddp = ddp.module is not self or not names <= ignored
        if not self._adios_masker_in_ddp and _world_size() > 1:
            tensors = list(self.masker.parameters()) + list(self.masker.buffers())
            for group in _by_dtype(tensors).values():
                flat = torch.cat([t.detach().reshape(-1) for t in group])
                dist.broadcast(flat, src=0)
                with torch.no_grad():
                    for t, value in zip(group, flat.split([t.numel() for t in group])):
                        t.copy_(value.view_as(t))

    def _ddp_wrapper(self) -> Optional[DistributedDataParallel]:
        """The DistributedDataParallel module Lightning runs this module in, if any."""
        trainer = self._trainer
        model = getattr(trainer.strategy, "model", None) if trainer is not None else None
        return model if isinstance(model, DistributedDataParallel) else None

    @contextlib.contextmanager
    def _outside_ddp_reducer(self) -> Iterator[None]:
        """A backward that DDP's reducer takes no part in: inside ``no_sync`` Lightning's
        ``manual_backward`` does not re-arm the reducer, so a backward that reaches only some
        of the parameters DDP manages (the masker's, or none) is allowed."""
        ddp = self._ddp_wrapper()
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            yield

    def _average_masker_grads(self) -> None:
        """Average the masker's gradients over the processes, in one all-reduce per dtype."""
        if _world_size() < 2:
            return
        params = [p for p in self.masker.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for group in _by_dtype(params).values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat)
            flat /= _world_size()
            for p, value in zip(group, flat.split([p.numel() for p in group])):
                p.grad.copy_(value.view_as(p))

    def _masks(self, x1: torch.Tensor, x2: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """Masks per view, ``[masks_view1 or None, masks_view2]``, each (B, N, H, W)."""
        both = self.masked_views == "both"
        if self.masker is not None:
            out = self.masker(torch.cat([x1, x2]) if both else x2)
            return list(out.chunk(2)) if both else [None, out]
        generate = BASELINE_MASKS[self.adios_generator]
        kwargs = {} if self.mask_ratio is None else {"ratio": self.mask_ratio}
        size = x2.shape[-1]
        masks = [generate(x.shape[0], size, **kwargs).to(x.device, x.dtype) for x in (x1, x2)]
        return masks if both else [None, masks[1]]

    def _ssl_loss(self, batch: Sequence[Any], masks: List[Optional[torch.Tensor]],
                  grad_through_views: bool):
        """``(sum_k ssl_k, [ssl_k], classifier loss)`` via the parent's own training_step."""
        indexes, (x1, x2), targets = batch
        classifier: Dict[str, torch.Tensor] = {}

        def encode(x: torch.Tensor) -> Dict[str, Any]:
            out = dict(self(x))
            if hasattr(self, "momentum_forward"):
                out.update({_MOMENTUM_PREFIX + k: v for k, v in self.momentum_forward(x).items()})
            out[_IMAGE_KEY] = x
            return out

        def pair_loss(a: Dict[str, Any], b: Dict[str, Any]) -> torch.Tensor:
            if not classifier:
                classifier.update(self._classifier_terms(a, targets))
            self._adios_serving = {id(out[_IMAGE_KEY]): self._served(out, classifier)
                                   for out in (a, b)}
            knn_eval, self.knn_eval = self.knn_eval, False
            try:
                total = super(ADIOSMixin, self).training_step(
                    [indexes, [a[_IMAGE_KEY], b[_IMAGE_KEY]], targets], 0)
            finally:
                self._adios_serving, self.knn_eval = None, knn_eval
            # the parent added its classifier losses, served detached: remove their value
            return total - classifier["detached"]

        def directional_loss(masked: Dict[str, Any], plain: Dict[str, Any]) -> torch.Tensor:
            if not classifier:  # the first pair is (view 1, masked view 2)
                classifier.update(self._classifier_terms(plain, targets))
            return self.adios_directional_loss(masked, plain)

        ssl, per_mask = adios_ssl_loss(
            encode, pair_loss, (x1, x2), masks, [self], pairs=self.adios_pairs,
            single_mask=self.single_mask, batched=self.adios_batched,
            grad_through_views=grad_through_views,
            directional_loss=None if self.symmetric_pairs else directional_loss)
        if grad_through_views and self.knn_eval and "feats" in classifier:
            keep = targets != -1
            self.knn(train_features=classifier["feats"][keep], train_targets=targets[keep])
        return ssl, per_mask, classifier.get("loss", ssl.new_zeros(()))

    def _classifier_terms(self, out: Dict[str, Any], targets: torch.Tensor) -> Dict[str, Any]:
        """Online classifier(s) on the first view: loss (with grad), detached values, stats."""
        terms: Dict[str, Any] = {"feats": out["feats"].detach()}
        logits = out["logits"]
        loss = F.cross_entropy(logits, targets, ignore_index=-1)
        acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
        terms.update({"loss": loss, "online": {"loss": loss.detach(), "acc1": acc1, "acc5": acc5},
                      "detached": loss.detach()})
        momentum_classifier = getattr(self, "momentum_classifier", None)
        if momentum_classifier is not None:
            m_logits = momentum_classifier(out[_MOMENTUM_PREFIX + "feats"])
            m_loss = F.cross_entropy(m_logits, targets, ignore_index=-1)
            m_acc1, m_acc5 = accuracy_at_k(m_logits, targets, top_k=(1, min(5, m_logits.size(1))))
            terms.update({"momentum": {"logits": m_logits, "loss": m_loss.detach(),
                                       "acc1": m_acc1, "acc5": m_acc5},
                          "loss": loss + m_loss, "detached": (loss + m_loss).detach()})
        return terms

    def _served(self, out: Dict[str, Any], classifier: Dict[str, Any]) -> tuple:
        """What the parent's ``base_training_step`` / ``_shared_step_momentum`` return for one
        view: its own forward outputs, with the first view's (detached) classifier numbers."""
        online = {k: v for k, v in out.items()
                  if not k.startswith(_MOMENTUM_PREFIX) and k != _IMAGE_KEY}
        online.update(classifier["online"])
        momentum = {k[len(_MOMENTUM_PREFIX):]: v for k, v in out.items()
                    if k.startswith(_MOMENTUM_PREFIX)}
        momentum.update(classifier.get("momentum", {}))
        return online, momentum

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> Dict[str, Any]:
        if self._adios_serving is not None:
            return self._adios_serving[id(X)][0]
        return super().base_training_step(X, targets)

    def _shared_step_momentum(self, X: torch.Tensor, targets: torch.Tensor) -> Dict[str, Any]:
        if self._adios_serving is not None:
            return self._adios_serving[id(X)][1]
        return super()._shared_step_momentum(X, targets)

    def log(self, *args, **kwargs) -> None:
        if not self._adios_mute:  # the masker step re-runs the parent's loss: log it once
            super().log(*args, **kwargs)

    def log_dict(self, *args, **kwargs) -> None:
        if not self._adios_mute:
            super().log_dict(*args, **kwargs)

    def _step_schedulers(self) -> None:
        """Manual optimization: step each scheduler per batch (``interval: step``) or at the
        last batch of the epoch (``interval: epoch``)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" or self.trainer.is_last_batch:
                config.scheduler.step()

    def on_train_batch_end(self, outputs: Any, batch: Sequence[Any], batch_idx: int) -> None:
        """Momentum methods: one EMA update per batch, tau scheduled over batches."""
        updater = getattr(self, "momentum_updater", None)
        if updater is None:
            return
        for online, target in self.momentum_pairs:
            updater.update(online, target)
        self.log("tau", updater.cur_tau)
        updater.update_tau(cur_step=int(self.adios_batches),
                           max_steps=self.trainer.estimated_stepping_batches)


def _same_schedule(encoder_schedule: Any, optimizer: torch.optim.Optimizer, lr: float) -> Any:
    """A scheduler for the masker with the encoder scheduler's shape and interval."""
    config = dict(encoder_schedule) if isinstance(encoder_schedule, dict) else None
    scheduler = config["scheduler"] if config else encoder_schedule
    name = type(scheduler).__name__
    if name == "LinearWarmupCosineAnnealingLR":
        start = scheduler.warmup_start_lr if scheduler.warmup_epochs > 0 else lr
        masker_scheduler = type(scheduler)(optimizer, warmup_epochs=scheduler.warmup_epochs,
                                           max_epochs=scheduler.max_epochs,
                                           warmup_start_lr=start, eta_min=scheduler.eta_min)
    elif isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        masker_scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, sorted(scheduler.milestones.elements()), gamma=scheduler.gamma)
    else:
        raise ADIOSConfigError(f"no masker schedule for the encoder scheduler {name}: use "
                               "scheduler.name warmup_cosine, step or none")
    if config is None:
        return masker_scheduler
    config["scheduler"] = masker_scheduler
    return config


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _by_dtype(tensors: Sequence[torch.Tensor]) -> Dict[tuple, List[torch.Tensor]]:
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def _check_finite(value: torch.Tensor, which: str, module: nn.Module) -> None:
    """Raise if the loss is not finite; with several processes, on every process as soon as
    one has a non-finite loss (one process raising alone would leave the others waiting in the
    next all-reduce)."""
    finite = torch.isfinite(value.detach()).reshape(1).to(torch.int32)
    if _world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not bool(finite):
        trainer = module.trainer
        here = f"{float(value)}"
        if _world_size() > 1:
            here += (f" on process {dist.get_rank()} of {_world_size()}; at least one process "
                     "has a non-finite loss")
        raise FloatingPointError(
            f"non-finite ADIOS {which} loss ({here}) at epoch {trainer.current_epoch}, batch "
            f"{int(module.adios_batches)}: lower optimizer.lr or method_kwargs.mask_lr, raise "
            "method_kwargs.alpha_sparsity if masks collapse, or check the input data")


def adios_method(base: type, name: Optional[str] = None) -> type:
    """The ADIOS version of a two-view solo-learn method class (``BaseMethod`` subclass)."""
    if not (isinstance(base, type) and issubclass(base, BaseMethod)):
        raise TypeError(f"{base!r} is not a solo-learn BaseMethod subclass")
    cls_name = name or f"{base.__name__}ADIOS"

    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        return adios_cfg(base.add_and_assert_specific_cfg(cfg))

    return type(cls_name, (ADIOSMixin, base), {
        "add_and_assert_specific_cfg": staticmethod(add_and_assert_specific_cfg),
        "__module__": __name__, "__qualname__": cls_name,
        "__doc__": f"{base.__name__} + ADIOS adversarial masking (see adios_ssl.sololearn.method).",
    })


def _solo_method(name: str) -> type:
    from solo.methods import METHODS

    return METHODS[name]


SimCLRADIOS = adios_method(_solo_method("simclr"), "SimCLRADIOS")
BYOLADIOS = adios_method(_solo_method("byol"), "BYOLADIOS")
class SimSiamADIOS(adios_method(_solo_method("simsiam"), "_SimSiamADIOSBase")):
    """SimSiam + ADIOS. With ``method_kwargs.symmetric_pairs: false`` a (view, masked view)
    pair contributes only the term in which the masked view's prediction meets the other
    view's projection, ``D(p_masked, z)``: the official SimSiam-ADIOS without
    ``use_symmetry_mask`` (per mask, the mean over the official terms)."""

    @staticmethod
    def adios_directional_loss(masked: Dict[str, Any], plain: Dict[str, Any]) -> torch.Tensor:
        from solo.losses.simsiam import simsiam_loss_func

        return simsiam_loss_func(masked["p"], plain["z"])



BarlowTwinsADIOS = adios_method(_solo_method("barlow_twins"), "BarlowTwinsADIOS")
VICRegADIOS = adios_method(_solo_method("vicreg"), "VICRegADIOS")

#: name in ``solo.methods.METHODS`` -> class
ADIOS_METHODS: Dict[str, type] = {
    "simclr_adios": SimCLRADIOS,
    "byol_adios": BYOLADIOS,
    "simsiam_adios": SimSiamADIOS,
    "barlow_twins_adios": BarlowTwinsADIOS,
    "vicreg_adios": VICRegADIOS,
}
