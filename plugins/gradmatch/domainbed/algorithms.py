"""DomainBed ``Algorithm`` subclasses backed by the framework-free engines in ``gradmatch``.

Import through :func:`gradmatch.domainbed.register.register`, which makes DomainBed importable
first. Both keep a single network (``self.network``, a DomainBed ``WholeFish``), so
``state_dict()`` and ``model.pkl`` hold one copy of the model.
"""
from __future__ import annotations

import torch
from domainbed import algorithms, networks

from .. import IDGM as IDGMLearner
from ..fish import Fish
from ..optim import optimizer_factory
from .register import check_hparams

#: the keys of FishFast's GIP measurement (:func:`gradmatch.gip.gradient_inner_product`)
GIP_KEYS = ("gip", "gip_cos")


def _optimizer(hparams: dict, name: str = "adam"):
    return optimizer_factory(name, lr=hparams["lr"], weight_decay=hparams["weight_decay"])


class FishFast(algorithms.Algorithm):
    """Fish (Shi et al., ICLR 2022, Algorithm 1) with one persistent inner network.

    hparams: ``meta_lr``; ``fish_inner_optimizer`` (adam | sgd, at ``lr``/``weight_decay``);
    ``fish_step_size`` (domainbed: eps = meta_lr | official: eps = meta_lr / #domains);
    ``fish_shuffle_domains`` (random domain order each step, as in the paper);
    ``fish_reset_inner_optimizer``; ``fish_erm_warmup_steps``; ``fish_gip_every`` (measure the
    gradient inner product between domains every N steps, 0 = never). With
    ``fish_shuffle_domains=False``, adam, domainbed and no reset, updates equal DomainBed's
    built-in ``Fish``.

    Every :meth:`update` returns the same keys (DomainBed's ``train.py`` prints a new header
    whenever the keys of a checkpoint change): ``loss``, ``phase`` and, with ``fish_gip_every``
    > 0 and at least two domains, ``gip`` / ``gip_cos`` of the latest measurement (taken at
    the first update and every ``fish_gip_every`` updates, at the pre-update weights).
    Invalid hparams raise ValueError naming the hparam (:func:`register.check_hparams`).
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        check_hparams("FishFast", hparams, num_domains)
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network = networks.WholeFish(input_shape, num_classes, hparams)
        self.gip_every = int(hparams["fish_gip_every"])
        self.last_gip = None  # the latest GIP measurement, repeated until the next one
        self.fish = Fish(
            self.network, _optimizer(hparams, hparams["fish_inner_optimizer"]), hparams["meta_lr"],
            step_size=hparams["fish_step_size"], shuffle_domains=bool(hparams["fish_shuffle_domains"]),
            reset_inner_optimizer=bool(hparams["fish_reset_inner_optimizer"]),
            erm_warmup_steps=int(hparams["fish_erm_warmup_steps"]),
            seed=int(torch.randint(0, 2 ** 31 - 1, (1,))))

    def update(self, minibatches, unlabeled=None):
        track = self.gip_every > 0 and (self.fish.num_steps % self.gip_every == 0 or self.last_gip is None)
        stats = self.fish.step(list(minibatches), track_gip=track)
        if track:
            self.last_gip = {k: stats[k] for k in GIP_KEYS if k in stats}
        elif self.last_gip:
            stats.update(self.last_gip)
        return stats

    def predict(self, x):
        return self.network(x)


class IDGM(algorithms.Algorithm):
    """Gradient descent (Adam) on the exact inter-domain gradient matching objective
    ``mean_i L_i - idgm_gamma * GIP`` (second order: for small networks). Needs at least two
    training domains; every update returns ``loss``, ``objective`` and ``gip``."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        check_hparams("IDGM", hparams, num_domains)
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network = networks.WholeFish(input_shape, num_classes, hparams)
        self.learner = IDGMLearner(self.network, _optimizer(hparams), hparams["idgm_gamma"])

    def update(self, minibatches, unlabeled=None):
        return self.learner.step(list(minibatches))

    def predict(self, x):
        return self.network(x)
