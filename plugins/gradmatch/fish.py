"""Fish: first-order inter-domain gradient matching (Shi et al., ICLR 2022, Algorithm 1).

One Fish update, from one batch per training domain ``d_1 .. d_S``::

    theta_inner <- theta                                  (in place, no re-creation)
    for i in permute(domains):                            (or a fixed order)
        theta_inner <- inner_optimizer_step(grad L(d_i; theta_inner))
    theta <- theta + eps * (theta_inner - theta)          (fused in-place lerp)

With plain SGD inner steps of size ``alpha`` and averaged over domain orders, the update equals
``alpha * grad(sum_i L_i - alpha / 2 * sum_{i<j} G_i . G_j) + O(alpha^3)``: Fish is a
first-order method for the inter-domain gradient matching objective (``idgm.py``).

Framework-free: the DomainBed, WILDS and demo adapters only build batches and call ``step``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from .backend import LOCAL, Backend
from .choices import STEP_SIZES
from .erm import OptimizerFactory, erm_update
from .gip import gradient_inner_product
from .losses import LossFn, check_finite, cross_entropy_loss

#: the meta step ``eps`` of each convention
STEP_SIZE_CONVENTIONS = tuple(STEP_SIZES)
BUFFER_MODES = ("interpolate", "copy")


class Fish:
    """Fish meta-learner around ``model`` with one persistent inner copy.

    Args:
        model: the network ``theta``; it is updated in place by :meth:`step`.
        inner_optimizer: factory ``params -> torch.optim.Optimizer`` for the inner loop, e.g.
            ``functools.partial(torch.optim.Adam, lr=1e-3, amsgrad=True)``. Built once.
        meta_lr: the meta step size ``meta_lr`` (see ``step_size``).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; default cross-entropy on ``(x, y)``.
        step_size: ``"domainbed"``: ``eps = meta_lr`` (DomainBed's built-in Fish);
            ``"official"``: ``eps = meta_lr / meta_steps`` (the official Fish code), where
            ``meta_steps`` is the number of domains visited in the step.
        meta_steps: visit only a random subset of this many domains per step (the official
            WILDS recipe); ``None`` visits every domain given to :meth:`step`.
        shuffle_domains: visit domains in a fresh random order each step (Algorithm 1);
            ``False`` keeps the given order (DomainBed's built-in Fish).
        reset_inner_optimizer: clear the inner optimizer's state (e.g. Adam moments) at every
            step; ``False`` carries it across steps, as DomainBed and the official WILDS code do.
        buffers: ``"interpolate"``: floating-point buffers (BatchNorm running stats) take the
            same meta step as the parameters; ``"copy"``: they take the inner model's values.
            Integer buffers (``num_batches_tracked``) are always copied.
        erm_warmup_steps: the first this many calls to :meth:`step` are plain ERM steps on
            the mean of the domain losses (the official WILDS recipe pre-trains with ERM).
        erm_optimizer: factory for the warm-up optimizer; default ``inner_optimizer``.
        seed: seed of the generator that draws domain orders and subsets.
        backend: how losses, backward passes and optimizer steps run (:mod:`gradmatch.backend`):
            one process by default; data-parallel / mixed precision with a Fabric backend, where
            each process holds its shard of every domain batch, the inner-step gradients are
            averaged over the processes, and the meta step is the same on every process.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer: OptimizerFactory,
        meta_lr: float,
        *,
        loss_fn: LossFn = cross_entropy_loss,
        step_size: str = "domainbed",
        meta_steps: Optional[int] = None,
        shuffle_domains: bool = True,
        reset_inner_optimizer: bool = False,
        buffers: str = "interpolate",
        erm_warmup_steps: int = 0,
        erm_optimizer: Optional[OptimizerFactory] = None,
        seed: int = 0,
        backend: Backend = LOCAL,
    ) -> None:
        if not (isinstance(meta_lr, (int, float)) and math.isfinite(meta_lr) and meta_lr > 0):
            raise ValueError(f"meta_lr must be a positive finite number, got {meta_lr!r}")
        if step_size not in STEP_SIZE_CONVENTIONS:
            raise ValueError(f"step_size must be one of {STEP_SIZE_CONVENTIONS}, got {step_size!r}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        if meta_steps is not None and (int(meta_steps) != meta_steps or meta_steps < 1):
            raise ValueError(f"meta_steps must be a positive integer or None, got {meta_steps!r}")
        if erm_warmup_steps < 0:
            raise ValueError(f"erm_warmup_steps must be >= 0, got {erm_warmup_steps!r}")
        self.model = model
        self.meta_lr = float(meta_lr)
        self.loss_fn = loss_fn
        self.step_size = step_size
        self.meta_steps = None if meta_steps is None else int(meta_steps)
        self.shuffle_domains = shuffle_domains
        self.reset_inner_optimizer = reset_inner_optimizer
        self.buffers = buffers
        self.erm_warmup_steps = int(erm_warmup_steps)
        self.num_steps = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.backend = backend

        self.inner = _detached_copy(model)
        self.inner_optimizer = inner_optimizer(self.inner.parameters())
        self._erm_optimizer_factory = erm_optimizer or inner_optimizer
        self._erm_optimizer: Optional[torch.optim.Optimizer] = None

        self._meta_params = list(model.parameters())
        self._inner_params = list(self.inner.parameters())
        meta_buffers = list(model.buffers())
        inner_buffers = list(self.inner.buffers())
        self._meta_buffers, self._inner_buffers = meta_buffers, inner_buffers
        floating = [b.is_floating_point() for b in meta_buffers]
        self._meta_float = [b for b, f in zip(meta_buffers, floating) if f]
        self._inner_float = [b for b, f in zip(inner_buffers, floating) if f]
        self._meta_other = [b for b, f in zip(meta_buffers, floating) if not f]
        self._inner_other = [b for b, f in zip(inner_buffers, floating) if not f]

    # ------------------------------------------------------------------ public API
    @property
    def in_warmup(self) -> bool:
        """Whether the next :meth:`step` is an ERM warm-up step."""
        return self.num_steps < self.erm_warmup_steps

    def step(self, batches: Sequence[Any], *, track_gip: bool = False) -> dict:
        """One update from ``batches``, one batch per training domain.

        Returns a dict of Python floats: ``loss`` (mean loss over the visited domains, each at
        the inner weights when it was visited), ``phase`` (0.0 = ERM warm-up, 1.0 = Fish) and,
        if ``track_gip``, ``gip`` and ``gip_cos`` measured at the pre-update weights on all
        given batches (see :func:`gradmatch.gip.gradient_inner_product`).
        """
        if len(batches) == 0:
            raise ValueError("Fish.step needs at least one batch (one per training domain)")
        stats = {}
        if track_gip:
            stats.update(gradient_inner_product(self.model, batches, self.loss_fn, self.backend))
        if self.in_warmup:
            stats["loss"] = self._erm_step(batches)
            stats["phase"] = 0.0
        else:
            stats["loss"] = self._fish_step(batches)
            stats["phase"] = 1.0
        self.num_steps += 1
        return stats

    def domain_order(self, num_domains: int) -> List[int]:
        """Indices of the domains the next Fish step visits, in visiting order."""
        count = num_domains if self.meta_steps is None else self.meta_steps
        if count > num_domains:
            raise ValueError(
                f"meta_steps={self.meta_steps} but only {num_domains} domain batches were given; "
                "pass at least meta_steps batches or lower meta_steps"
            )
        if self.shuffle_domains:
            return torch.randperm(num_domains, generator=self.generator)[:count].tolist()
        if count == num_domains:
            return list(range(num_domains))
        subset = torch.randperm(num_domains, generator=self.generator)[:count]
        return sorted(subset.tolist())

    def meta_step_size(self, num_visited: int) -> float:
        """``eps`` for a step that visited ``num_visited`` domains."""
        if self.step_size == "official":
            return self.meta_lr / num_visited
        return self.meta_lr

    def state_dict(self) -> dict:
        """One copy of the model, the optimizers' state, the step count and the RNG state."""
        return {
            "model": self.model.state_dict(),
            "inner_optimizer": self.inner_optimizer.state_dict(),
            "erm_optimizer": None if self._erm_optimizer is None else self._erm_optimizer.state_dict(),
            "num_steps": self.num_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved; the next :meth:`step` continues exactly."""
        self.model.load_state_dict(state["model"])
        self._sync_inner_device()
        self.inner_optimizer.load_state_dict(state["inner_optimizer"])
        if state.get("erm_optimizer") is not None:
            self.erm_optimizer.load_state_dict(state["erm_optimizer"])
        self.num_steps = int(state["num_steps"])
        self.generator.set_state(state["generator"])

    @property
    def erm_optimizer(self) -> torch.optim.Optimizer:
        """The warm-up optimizer over the model's own parameters (created on first use)."""
        if self._erm_optimizer is None:
            self._erm_optimizer = self._erm_optimizer_factory(self.model.parameters())
        return self._erm_optimizer

    # ------------------------------------------------------------------ internals
    def _erm_step(self, batches: Sequence[Any]) -> float:
        return erm_update(self.model, self.erm_optimizer, batches, self.loss_fn,
                          f"in ERM warm-up step {self.num_steps}", self.backend)

    def _fish_step(self, batches: Sequence[Any]) -> float:
        self._sync_inner_device()
        order = self.domain_order(len(batches))
        with torch.no_grad():
            torch._foreach_copy_(self._inner_params, self._meta_params)
            if self._meta_buffers:
                torch._foreach_copy_(self._inner_buffers, self._meta_buffers)
        if self.reset_inner_optimizer:
            self.inner_optimizer.state.clear()
        self.inner.train(self.model.training)

        losses = []
        backend = self.backend
        for domain in order:
            self.inner_optimizer.zero_grad(set_to_none=True)
            loss = backend.loss(self.loss_fn, self.inner, batches[domain])
            backend.backward(loss)
            backend.step(self.inner_optimizer)  # data-parallel: gradients averaged first
            losses.append(loss.detach())
        losses = backend.mean(torch.stack(losses))  # the full batches' losses, on every process
        # One host sync per step; a non-finite loss never reaches the meta weights.
        if not torch.isfinite(losses).all():
            bad = int(torch.nonzero(~torch.isfinite(losses))[0])
            check_finite(losses[bad], f"on domain batch {order[bad]} in Fish step {self.num_steps}")

        eps = self.meta_step_size(len(order))
        with torch.no_grad():
            torch._foreach_lerp_(self._meta_params, self._inner_params, eps)
            if self._meta_float:
                if self.buffers == "interpolate":
                    torch._foreach_lerp_(self._meta_float, self._inner_float, eps)
                else:
                    torch._foreach_copy_(self._meta_float, self._inner_float)
            if self._meta_other:
                torch._foreach_copy_(self._meta_other, self._inner_other)
        backend.sync_buffers(self._meta_float)
        return losses.mean().item()

    def _sync_inner_device(self) -> None:
        """Follow ``model.to(device/dtype)`` calls made after construction."""
        meta, inner = self._meta_params[0], self._inner_params[0]
        if meta.device != inner.device or meta.dtype != inner.dtype:
            self.inner.to(device=meta.device, dtype=meta.dtype)
            # Optimizer.load_state_dict casts the state to its parameters' device and dtype.
            self.inner_optimizer.load_state_dict(self.inner_optimizer.state_dict())


def _detached_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with its own parameter storage and no gradients."""
    grads = [p.grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    try:
        inner = copy.deepcopy(model)
    finally:
        for p, g in zip(model.parameters(), grads):
            p.grad = g
    return inner
