"""Register the plugin's algorithms and hparams into DomainBed, without editing DomainBed.

DomainBed looks algorithms up in the ``domainbed.algorithms`` module namespace and hparams in
``hparams_registry._hparams`` (resolved at call time), so both can be extended from outside.
"""
from __future__ import annotations

ALGORITHMS = ("FishFast", "IDGM")


def _fish_fast_extras(hparam) -> None:
    hparam("fish_inner_optimizer", "adam", lambda r: "adam")
    hparam("fish_step_size", "domainbed", lambda r: "domainbed")
    hparam("fish_shuffle_domains", True, lambda r: True)
    hparam("fish_reset_inner_optimizer", False, lambda r: False)
    hparam("fish_erm_warmup_steps", 0, lambda r: 0)
    hparam("fish_gip_every", 50, lambda r: 50)


def _idgm_extras(hparam) -> None:
    hparam("idgm_gamma", 0.1, lambda r: float(10 ** r.uniform(-2, 0)))


# name -> (DomainBed algorithm whose hparams (and random draws) it shares, extra hparams)
_HPARAMS = {"FishFast": ("Fish", _fish_fast_extras), "IDGM": ("ERM", _idgm_extras)}


def plugin_hparams(original, algorithm: str, dataset: str, random_seed: int) -> dict:
    """``{name: (default, random)}``: the base algorithm's, plus the plugin's own, each drawn
    with DomainBed's per-name seeding so no other hparam's draw moves."""
    import numpy as np
    from domainbed.lib import misc

    base, extras = _HPARAMS[algorithm]
    hparams = original(base, dataset, random_seed)

    def hparam(name, default, random_fn):
        assert name not in hparams, name
        state = np.random.RandomState(misc.seed_hash(random_seed, name))
        hparams[name] = (default, random_fn(state))

    extras(hparam)
    return hparams


def register() -> None:
    """Make DomainBed importable and add ``FishFast``, ``IDGM`` and the CdSprites-N datasets.
    Idempotent."""
    from .locate import ensure_importable

    ensure_importable()
    from domainbed import algorithms, datasets, hparams_registry

    from . import algorithms as plugin
    from . import datasets as plugin_datasets

    for module, registry, names, source in ((algorithms, algorithms.ALGORITHMS, ALGORITHMS, plugin),
                                            (datasets, datasets.DATASETS, plugin_datasets.DATASETS,
                                             plugin_datasets)):
        for name in names:
            setattr(module, name, getattr(source, name))
            if name not in registry:
                registry.append(name)
    if not getattr(hparams_registry._hparams, "gradmatch_plugin", False):
        original = hparams_registry._hparams

        def _hparams(algorithm, dataset, random_seed):
            if algorithm in _HPARAMS:
                return plugin_hparams(original, algorithm, dataset, random_seed)
            return original(algorithm, dataset, random_seed)

        _hparams.gradmatch_plugin = True
        hparams_registry._hparams = _hparams

    from .launchers import register_launchers

    register_launchers()
