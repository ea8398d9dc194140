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

This module holds the training step, the masks and the ADIOS loss through the parent's
``training_step``; the rest of the Lightning module comes from its parts:
:mod:`~adios_ssl.sololearn.serving` (what the parent is served),
:mod:`~adios_ssl.sololearn.optimizers` (the masker's optimizer and schedules),
:mod:`~adios_ssl.sololearn.hooks` (Lightning's calls for the step, DDP) and
:mod:`~adios_ssl.sololearn.outputs` (mask pictures, run record).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import omegaconf
import torch

from ..baselines import BASELINE_MASKS
from ..masker import MaskingNetwork
from ..objective import adios_ssl_loss, mask_fractions, sparsity_penalty
from ..step import adios_step
from . import ddp
from .config import num_devices
from .hooks import DistributedMasker, LightningHooks
from .optimizers import MaskerOptimizers
from .outputs import RunOutputs
from .serving import IMAGE_KEY, MOMENTUM_PREFIX, ParentServing


class ADIOSMixin(ParentServing, MaskerOptimizers, DistributedMasker, RunOutputs):
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
            hooks=LightningHooks(self, optimizers), **self._adios_step_options())
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

    # ------------------------------------------------------------------------------ the loss
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
                out.update({MOMENTUM_PREFIX + k: v for k, v in self.momentum_forward(x).items()})
            out[IMAGE_KEY] = x
            return out

        def pair_loss(a: Dict[str, Any], b: Dict[str, Any]) -> torch.Tensor:
            if not classifier:
                classifier.update(classifier_terms(a))
            self._adios_serving = {id(out[IMAGE_KEY]): self._served(out, classifier)
                                   for out in (a, b)}
            knn_eval, self.knn_eval = self.knn_eval, False
            try:
                total = super(ADIOSMixin, self).training_step(
                    [indexes, [a[IMAGE_KEY], b[IMAGE_KEY]], targets], 0)
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

    # ------------------------------------------------------------------------------- logging
    def log(self, *args, **kwargs) -> None:
        if not self._adios_mute:  # the masker step re-runs the parent's loss: log it once
            super().log(*args, **kwargs)

    def log_dict(self, *args, **kwargs) -> None:
        if not self._adios_mute:
            super().log_dict(*args, **kwargs)

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
