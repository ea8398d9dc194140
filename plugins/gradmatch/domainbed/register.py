"""Register the plugin's algorithms and hparams into DomainBed, without editing DomainBed.

DomainBed looks algorithms up in the ``domainbed.algorithms`` module namespace and hparams in
``hparams_registry._hparams`` (resolved at call time), so both can be extended from outside.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, List, Mapping, Optional, Tuple

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
#: name -> the prefix of its own hparams (an unknown hparam with it is a typo, not ignored)
_PREFIX = {"FishFast": "fish_", "IDGM": "idgm_"}


def _own_hparams(algorithm: str) -> List[str]:
    names: List[str] = []
    _HPARAMS[algorithm][1](lambda name, default, random_fn: names.append(name))
    return names


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return _is_number(value) and float(value).is_integer()


def _rules(algorithm: str) -> Dict[str, Tuple[str, Callable[[object], bool], str]]:
    """hparam -> (what it must be, test, an example value in JSON) for ``algorithm``."""
    from ..fish import STEP_SIZES
    from ..optim import OPTIMIZERS

    positive = ("a positive finite number", lambda v: _is_number(v) and v > 0, "0.001")
    rules = {"lr": positive,
             "weight_decay": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0, "0.0")}
    if algorithm == "FishFast":
        boolean = ("true or false", lambda v: isinstance(v, bool) or v in (0, 1), "true")
        count = ("an integer >= 0", lambda v: _is_int(v) and v >= 0, "0")
        rules.update({
            "meta_lr": (positive[0], positive[1], "0.5"),
            "fish_inner_optimizer": ("one of " + ", ".join(map(repr, OPTIMIZERS)).replace("'", '"'),
                                     lambda v: v in OPTIMIZERS, '"adam"'),
            "fish_step_size": ("one of " + ", ".join(map(repr, STEP_SIZES)).replace("'", '"'),
                               lambda v: v in STEP_SIZES, '"domainbed"'),
            "fish_shuffle_domains": boolean, "fish_reset_inner_optimizer": boolean,
            "fish_erm_warmup_steps": count, "fish_gip_every": (count[0], count[1], "50")})
    else:
        rules["idgm_gamma"] = ("a finite number >= 0", lambda v: _is_number(v) and v >= 0, "0.1")
    return rules


def check_hparams(algorithm: str, hparams: Mapping, num_domains: Optional[int] = None) -> None:
    """ValueError (one line naming the hparam and the fix) unless ``hparams`` are valid for the
    plugin's ``algorithm`` (``FishFast`` or ``IDGM``; any other name is not checked). An
    unknown hparam with the algorithm's own prefix (``fish_`` / ``idgm_``) is an error, as
    DomainBed would otherwise ignore the typo. ``num_domains``: training domains (IDGM needs 2)."""
    if algorithm not in _HPARAMS:
        return
    own = _own_hparams(algorithm)
    unknown = sorted(k for k in hparams if k.startswith(_PREFIX[algorithm]) and k not in own)
    if unknown:
        raise ValueError(f"unknown {algorithm} hparam {unknown[0]!r} (in --hparams?); {algorithm}'s "
                         f"own hparams are {', '.join(own)}")
    for name, (rule, ok, example) in _rules(algorithm).items():
        if name not in hparams:
            raise ValueError(f"{algorithm} needs hparam {name!r}: build its hparams with DomainBed's "
                             f"hparams_registry.default_hparams({algorithm!r}, dataset) after "
                             "gradmatch.domainbed.register.register()")
        if not ok(hparams[name]):
            raise ValueError(f"{algorithm} hparam {name} must be {rule}, got {hparams[name]!r}: "
                             f"set it with --hparams '{{\"{name}\": {example}}}'")
    if algorithm == "IDGM" and num_domains is not None and num_domains < 2:
        raise ValueError(f"IDGM matches gradients between training domains and needs at least 2, got "
                         f"{num_domains}: hold out fewer environments with --test_envs")


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
