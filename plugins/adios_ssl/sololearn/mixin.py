"""The ADIOS mixin: turns a two-view solo-learn method into its ADIOS version.

``adios_method(SimCLR)`` (:mod:`adios_ssl.sololearn.method`) is a ``BaseMethod`` subclass whose
training step is :func:`adios_ssl.step.adios_step` with Lightning's manual-optimization calls:

1. an encoder step: ``sum_k L(view1, view2 * (1 - m_k))`` with the masks detached, plus the
   online classifier's loss (the mean over both crops, as the official ``linear_forward``), on
   the encoder optimizer and scheduler that ``BaseMethod`` builds;
2. a masker step: the masker maximises the same sum minus ``alpha_sparsity`` times the sparsity
   penalty (plus the optional entropy term), on its own optimizer (``mask_lr``).

``L`` is the parent method's own loss: the parent's ``training_step`` is called once per (view,
masked view) pair, and its forward calls are answered from one batched forward over all masked
views (:func:`adios_ssl.objective.adios_ssl_loss`). So the mechanism works for any solo-learn
method whose ``training_step`` is "``super().training_step`` then a loss of the two crops'
outputs" (SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, ...), without re-implementing its loss.

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
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence

import omegaconf
import torch
import torch.nn.functional as F
from solo.utils.metrics import accuracy_at_k

from ..baselines import BASELINE_MASKS
from ..masker import MaskingNetwork
from ..objective import adios_ssl_loss, mask_fractions, sparsity_penalty
from ..step import Hooks, adios_step
from . import ddp
from .config import ADIOSConfigError, num_devices
from .schedules import same_schedule

_MOMENTUM_PREFIX = "momentum:"
_IMAGE_KEY = "adios:image"


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
        self.classifier_views: str = kw.classifier_views
        self.train_mask_epoch = int(kw.train_mask_epoch)
        self.single_mask_choice: str = kw.single_mask_choice
        self.single_mask_entropy: str = kw.single_mask_entropy
        self.adios_batched = kw.computation == "batched"
        self.adios_img_size = int(kw.img_size)
        self.mask_ratio = None if kw.mask_ratio is None else float(kw.mask_ratio)
        self.mask_pictures = dict(kw.mask_pictures)
        scale = cfg.optimizer.batch_size * num_devices(cfg) * (cfg.get("num_nodes", 1) or 1) / 256
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
            ddp.ignore_in_ddp(self, [f"masker.{name}" for name in self.masker.state_dict()])
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
            schedulers.append(same_schedule(schedulers[0], masker_opt, self.mask_lr))
            self._shorten_encoder_schedule(schedulers[0])  # after the masker's copy of it
        return optimizers + [masker_opt], schedulers

    def _shorten_encoder_schedule(self, schedule: Any) -> None:
        """The official ADIOS code runs the encoder's warm-up + cosine schedule over
        ``max_epochs - train_mask_epoch`` epochs (the masker's over ``max_epochs``;
        ``train_mask_epoch`` is 10 for BYOL-ADIOS, 0 otherwise), after which the cosine climbs
        back up. Where that leaves no cosine phase (``max_epochs - train_mask_epoch <=
        warmup_epochs``; the official code divides by zero or runs the cosine backwards) the
        schedule is left whole."""
        scheduler = schedule["scheduler"] if isinstance(schedule, dict) else schedule
        if not self.train_mask_epoch or type(scheduler).__name__ != "LinearWarmupCosineAnnealingLR":
            return
        if self.max_epochs - self.train_mask_epoch <= self.warmup_epochs:
            warnings.warn(f"method_kwargs.train_mask_epoch={self.train_mask_epoch} leaves no "
                          f"cosine phase with max_epochs={self.max_epochs} and warmup_epochs="
                          f"{self.warmup_epochs}: the encoder's schedule runs over max_epochs")
            return
        per_epoch = scheduler.max_epochs / self.max_epochs  # 1, or batches per epoch (step)
        scheduler.max_epochs -= int(round(self.train_mask_epoch * per_epoch))

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
        """One encoder update, then one masker update (adversarial masks only):
        :func:`adios_ssl.step.adios_step` with Lightning's manual-optimization calls."""
        indexes, views, targets = batch
        if len(views) != 2:
            raise RuntimeError(f"ADIOS needs 2 crops per image, got {len(views)}")
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        x1, x2 = views

        def ssl_fn(masks, grad_through_views):
            self._adios_mute = not grad_through_views  # the masker step re-runs the loss: log once
            try:
                ssl, _, class_loss = self._ssl_loss(batch, masks, grad_through_views)
            finally:
                self._adios_mute = False
            return ssl, class_loss

        encoder, masker = adios_step(
            lambda: self._masks(x1, x2), ssl_fn, optimizers[0],
            optimizers[1] if self.masker is not None else None,
            hooks=_LightningHooks(self, optimizers), **self._adios_step_options())
        # the encoder's SSL loss, the masker's objective and the sparsity penalty also go to
        # the progress bar; everything is logged per step and per epoch
        shown = {"train_adios_ssl_loss": encoder.ssl_loss}
        metrics = {}
        if masker is not None:
            fractions = mask_fractions(masker.masks)
            shown.update({"train_mask_loss": masker.objective,
                          "train_mask_penalty": sparsity_penalty(masker.masks)})
            metrics.update({"mask_summed_min": fractions.min(dim=1).values.mean(),
                            "mask_summed_max": fractions.max(dim=1).values.mean()})
        self.log_dict(shown, on_epoch=True, sync_dist=True, prog_bar=True)
        if metrics:
            self.log_dict(metrics, on_epoch=True, sync_dist=True)
        self._step_schedulers()
        return encoder.loss

    def _adios_step_options(self) -> Dict[str, Any]:
        """The settings :func:`adios_ssl.step.adios_step` gets from the config."""
        return {"alpha_sparsity": self.alpha_sparsity, "alpha_entropy": self.alpha_entropy,
                "reuse_masks": self.adios_batched,
                # the official SimSiam-ADIOS-s: one entropy term per view's masks
                "entropy_per_view": self.single_mask and self.single_mask_entropy == "per_view"}

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
        wrapper = ddp.ddp_wrapper(self._trainer)
        if wrapper is None:
            if self.trainer.world_size > 1:
                raise ADIOSConfigError(
                    f"ADIOS trains with {self.trainer.world_size} processes only under a DDP "
                    f"strategy (ddp, ddp_find_unused_parameters_true, ddp_spawn, ...), not "
                    f"{type(self.trainer.strategy).__name__}")
            return
        ignored = set(getattr(wrapper, "parameters_to_ignore", ()))
        names = {f"masker.{name}" for name, _ in self.masker.named_parameters()}
        self._adios_masker_in_ddp = wrapper.module is not self or not names <= ignored
        if not self._adios_masker_in_ddp:
            ddp.broadcast_(list(self.masker.parameters()) + list(self.masker.buffers()))

    def on_train_start(self) -> None:
        """Process 0 writes ``provenance.json`` (the resolved config and the code that runs it,
        :mod:`adios_ssl.sololearn.record`) next to the ``args.json`` that solo-learn's
        ``Checkpointer`` has just written (callbacks' ``on_train_start`` runs before the
        module's)."""
        super_hook = getattr(super(), "on_train_start", None)
        if super_hook is not None:
            super_hook()
        if self.trainer.is_global_zero:
            from .record import write_run_record

            write_run_record(self, self.trainer)

    def _average_masker_grads(self) -> None:
        """Average the masker's gradients over the processes (one all-reduce per dtype)."""
        ddp.average_gradients(list(self.masker.parameters()))

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
        # the encoder step trains the online classifier(s) on both crops (the official
        # linear_forward); the masker step only needs the numbers the parent adds and we remove
        both_crops = grad_through_views and self.classifier_views == "both"

        def classifier_terms(first: Dict[str, Any]) -> Dict[str, Any]:
            second = self._second_crop_outputs(x2) if both_crops else None
            return self._classifier_terms(first, targets, second)

        def encode(x: torch.Tensor) -> Dict[str, Any]:
            out = dict(self(x))
            if hasattr(self, "momentum_forward"):
                out.update({_MOMENTUM_PREFIX + k: v for k, v in self.momentum_forward(x).items()})
            out[_IMAGE_KEY] = x
            return out

        def pair_loss(a: Dict[str, Any], b: Dict[str, Any]) -> torch.Tensor:
            if not classifier:
                classifier.update(classifier_terms(a))
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
                classifier.update(classifier_terms(plain))
            return self.adios_directional_loss(masked, plain)

        ssl, per_mask = adios_ssl_loss(
            encode, pair_loss, (x1, x2), masks, [self], pairs=self.adios_pairs,
            single_mask=self.single_mask, batched=self.adios_batched,
            grad_through_views=grad_through_views,
            directional_loss=None if self.symmetric_pairs else directional_loss,
            single_mask_choice=self.single_mask_choice)
        if grad_through_views and self.knn_eval and "feats" in classifier:
            knn_targets = classifier["knn_targets"]
            keep = knn_targets != -1
            self.knn(train_features=classifier["feats"][keep], train_targets=knn_targets[keep])
        return ssl, per_mask, classifier.get("loss", ssl.new_zeros(()))

    def _classifier_terms(self, out: Dict[str, Any], targets: torch.Tensor,
                          second: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Online classifier(s) on the first view, or (``second``: the second crop's outputs)
        the mean over both crops as solo-learn's and the official ``training_step`` compute
        it: loss (with grad), detached values, stats, kNN features."""
        views = [out] if second is None else [out, second]

        def head(logits_per_view: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
            losses, acc1s, acc5s = [], [], []
            for logits in logits_per_view:
                losses.append(F.cross_entropy(logits, targets, ignore_index=-1))
                acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
                acc1s.append(acc1)
                acc5s.append(acc5)
            n = len(logits_per_view)
            return {"loss": sum(losses) / n, "acc1": sum(acc1s) / n, "acc5": sum(acc5s) / n}

        online = head([v["logits"] for v in views])
        loss = online["loss"]
        terms: Dict[str, Any] = {
            "feats": torch.cat([v["feats"].detach() for v in views]),
            "knn_targets": targets.repeat(len(views)),
            "loss": loss, "online": {**online, "loss": loss.detach()}, "detached": loss.detach()}
        momentum_classifier = getattr(self, "momentum_classifier", None)
        if momentum_classifier is not None:
            m_logits = [momentum_classifier(v[_MOMENTUM_PREFIX + "feats"]) for v in views]
            momentum = head(m_logits)
            m_loss = momentum["loss"]
            terms.update({"momentum": {**momentum, "logits": m_logits[0], "loss": m_loss.detach()},
                          "loss": loss + m_loss, "detached": (loss + m_loss).detach()})
        return terms

    def _second_crop_outputs(self, x: torch.Tensor) -> Dict[str, Any]:
        """What the online classifier(s) read from the second (unmasked) crop: its backbone
        (and momentum backbone) features, in training mode as the official ``linear_forward``
        computes them, without a gradient to the backbone (the classifier reads them
        detached), and the classifier's logits."""
        if not self.no_channel_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.no_grad():
            out = {"feats": self.backbone(x)}
            if getattr(self, "momentum_classifier", None) is not None:
                out[_MOMENTUM_PREFIX + "feats"] = self.momentum_backbone(x)
        out["logits"] = self.classifier(out["feats"])
        return out

    def _served(self, out: Dict[str, Any], classifier: Dict[str, Any]) -> tuple:
        """What the parent's ``base_training_step`` / ``_shared_step_momentum`` return for one
        view: its own forward outputs, with the (detached) classifier numbers of
        :meth:`_classifier_terms`, the same for every view the parent averages."""
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


class _LightningHooks(Hooks):
    """:class:`adios_ssl.step.Hooks` for a Lightning module with manual optimization."""

    def __init__(self, module: "ADIOSMixin", optimizers: List[torch.optim.Optimizer]):
        self.module, self.optimizers = module, optimizers

    def encoder_backward(self, loss: torch.Tensor) -> None:
        module = self.module
        if module._adios_masker_in_ddp:
            # DDP manages the masker too: with find_unused_parameters=False every parameter it
            # manages must be reached by this backward. A zero-valued term reaches the masker
            # (value and encoder gradients unchanged); its DDP-averaged zero gradients are
            # cleared before the masker's own backward.
            self.optimizers[1].zero_grad(set_to_none=True)
            loss = loss + 0.0 * sum(p.sum() for p in module.masker.parameters())
        module.manual_backward(loss)

    def masker_backward(self, loss: torch.Tensor) -> None:
        module = self.module
        with ddp.outside_reducer(ddp.ddp_wrapper(module._trainer)):
            module.manual_backward(loss)
        module._average_masker_grads()

    @contextlib.contextmanager
    def only(self, optimizer, others) -> Iterator[None]:
        self.module.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.module.untoggle_optimizer(optimizer)

    def check_finite(self, value: torch.Tensor, which: str) -> None:
        if ddp.all_finite(value):
            return
        module = self.module
        here = f"{float(value)}"
        if ddp.world_size() > 1:
            here += (f" on process {torch.distributed.get_rank()} of {ddp.world_size()}; at "
                     "least one process has a non-finite loss")
        raise FloatingPointError(
            f"non-finite ADIOS {which} loss ({here}) at epoch {module.trainer.current_epoch}, "
            f"batch {int(module.adios_batches)}: lower optimizer.lr or method_kwargs.mask_lr, "
            "raise method_kwargs.alpha_sparsity if masks collapse, or check the input data")

    def encoder_done(self) -> None:
        self.module.adios_batches += 1
