"""The two ADIOS updates under Lightning: manual-optimisation calls for
:func:`adios_ssl.step.adios_step`, and the masker's handling under DDP (kept out of DDP's reducer,
broadcast at the start, its gradients averaged by hand; see :mod:`adios_ssl.sololearn.mixin`).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, List

import torch

from ..step import Hooks
from . import ddp
from .config import ADIOSConfigError

if TYPE_CHECKING:
    from .mixin import ADIOSMixin


class DistributedMasker:
    """A part of :class:`~adios_ssl.sololearn.mixin.ADIOSMixin`: the masker under DDP (sets
    ``_adios_masker_in_ddp``, which :class:`LightningHooks` reads)."""

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

    def _average_masker_grads(self) -> None:
        """Average the masker's gradients over the processes (one all-reduce per dtype)."""
        ddp.average_gradients(list(self.masker.parameters()))


class LightningHooks(Hooks):
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
