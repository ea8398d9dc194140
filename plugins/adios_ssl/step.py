"""One ADIOS update, framework-free: an encoder step, then a masker step (Shi et al., 2022).

1. **Encoder step**: minimise ``ssl_loss(view1, view2 masked by each mask) + extra`` (``extra``:
   e.g. an online classifier's loss) with the masks fixed, on the encoder optimizer.
2. **Masker step**: maximise the same SSL loss minus ``alpha_sparsity`` times the sparsity
   penalty (plus ``alpha_entropy`` times the fraction entropy term), on the masker optimizer,
   with everything else frozen.

With ``reuse_masks`` the masks are computed once, with their graph, before the encoder step,
and that graph is reused by the masker step (the masker has not moved in between, so they are
the masks it would compute again); without it, the masker step computes them again (the
official order).

The framework binds in through :class:`Hooks` (how to zero gradients, run each backward, step
an optimizer, freeze everything but one optimizer's parameters, and report a non-finite loss):
the defaults are plain torch; :mod:`adios_ssl.sololearn` passes Lightning's manual-optimization
calls (and its DDP handling), and ``adios_ssl.speed`` (``benchmarks/adios_step.py``) times this same function.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from .objective import masker_objective

#: ``masks_fn() -> [masks of view 1 or None, masks of view 2 or None]``, each (B, N, H, W)
MasksFn = Callable[[], List[Optional[torch.Tensor]]]
#: ``ssl_fn(masks, grad_through_views) -> (ssl_loss, extra_encoder_loss)``
SSLFn = Callable[[Sequence[Optional[torch.Tensor]], bool], Tuple[torch.Tensor, torch.Tensor]]


class Hooks:
    """Plain torch. A framework overrides what it does differently."""

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def encoder_backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def masker_backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    @contextlib.contextmanager
    def only(self, optimizer: torch.optim.Optimizer,
             others: Sequence[torch.optim.Optimizer]) -> Iterator[None]:
        """Within: the parameters of ``others`` do not require gradients (restored after)."""
        own = {id(p) for group in optimizer.param_groups for p in group["params"]}
        frozen = [p for opt in others for group in opt.param_groups for p in group["params"]
                  if id(p) not in own and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def check_finite(self, value: torch.Tensor, which: str) -> None:
        if not torch.isfinite(value.detach()).all():
            raise FloatingPointError(f"non-finite ADIOS {which} loss ({float(value)})")

    def encoder_done(self) -> None:
        """Called between the two steps (counters, timers)."""


PLAIN = Hooks()


@dataclass
class EncoderStep:
    """What the encoder step leaves: its SSL loss and total loss (detached), and the masks
    (with their graph when they are to be reused, else ``None``)."""

    ssl_loss: torch.Tensor
    loss: torch.Tensor
    masks_graph: Optional[List[Optional[torch.Tensor]]]


@dataclass
class MaskerStep:
    """The masker step's SSL loss and objective (detached), and the masks it trained, all
    views stacked along the mask axis (B, N_total, H, W), detached."""

    ssl_loss: torch.Tensor
    objective: torch.Tensor
    masks: torch.Tensor


def encoder_update(masks_fn: MasksFn, ssl_fn: SSLFn, optimizer: torch.optim.Optimizer, *,
                   reuse_masks: bool, hooks: Hooks = PLAIN) -> EncoderStep:
    """The encoder step (masks fixed)."""
    with torch.set_grad_enabled(reuse_masks):
        masks_graph = masks_fn()
    masks = [None if m is None else m.detach() for m in masks_graph]
    ssl, extra = ssl_fn(masks, True)
    loss = ssl + extra
    hooks.check_finite(loss, "encoder")
    hooks.zero_grad(optimizer)
    hooks.encoder_backward(loss)
    hooks.step(optimizer)
    hooks.encoder_done()
    return EncoderStep(ssl.detach(), loss.detach(), masks_graph if reuse_masks else None)


def masker_update(masks_fn: MasksFn, ssl_fn: SSLFn, optimizer: torch.optim.Optimizer,
                  frozen: Sequence[torch.optim.Optimizer], *, alpha_sparsity: float,
                  alpha_entropy: float = 0.0,
                  masks_graph: Optional[List[Optional[torch.Tensor]]] = None,
                  hooks: Hooks = PLAIN, entropy_per_view: bool = False) -> MaskerStep:
    """The masker step: maximise the SSL loss minus the penalties, the parameters of the
    ``frozen`` optimizers frozen. ``masks_graph``: the encoder step's masks to reuse.
    ``entropy_per_view``: the entropy term is summed over the views, one softmax per view's
    masks (the official SimSiam-ADIOS-s), instead of one softmax over all views' masks."""
    with hooks.only(optimizer, frozen):
        masks = masks_graph if masks_graph is not None else masks_fn()
        present = [m for m in masks if m is not None]
        all_masks = torch.cat(present, dim=1)
        ssl, _ = ssl_fn(masks, False)
        objective = masker_objective(ssl, all_masks, alpha_sparsity, alpha_entropy,
                                     entropy_groups=len(present) if entropy_per_view else 1)
        hooks.check_finite(objective, "masker")
        hooks.zero_grad(optimizer)
        hooks.masker_backward(-objective)
        hooks.step(optimizer)
    return MaskerStep(ssl.detach(), objective.detach(), all_masks.detach())


def adios_step(masks_fn: MasksFn, ssl_fn: SSLFn, encoder_optimizer: torch.optim.Optimizer,
               masker_optimizer: Optional[torch.optim.Optimizer], *, alpha_sparsity: float,
               alpha_entropy: float = 0.0, reuse_masks: bool = True,
               hooks: Hooks = PLAIN,
               entropy_per_view: bool = False) -> Tuple[EncoderStep, Optional[MaskerStep]]:
    """One ADIOS update: the encoder step, then (with a masker optimizer) the masker step.

    ``masks_fn`` computes the masks of both views; ``ssl_fn(masks, grad_through_views)``
    returns the SSL loss of the (view, masked view) pairs and the encoder's extra loss
    (``grad_through_views=False`` in the masker step: the encoder is frozen there). Without a
    masker optimizer (fixed masks: random, MAE or BEiT baselines) only the encoder steps.
    ``entropy_per_view``: see :func:`masker_update`.
    """
    reuse = reuse_masks and masker_optimizer is not None
    encoder = encoder_update(masks_fn, ssl_fn, encoder_optimizer, reuse_masks=reuse, hooks=hooks)
    if masker_optimizer is None:
        return encoder, None
    masker = masker_update(masks_fn, ssl_fn, masker_optimizer, [encoder_optimizer],
                           alpha_sparsity=alpha_sparsity, alpha_entropy=alpha_entropy,
                           masks_graph=encoder.masks_graph, hooks=hooks,
                           entropy_per_view=entropy_per_view)
    return encoder, masker
