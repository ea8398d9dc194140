"""The ADIOS keys of a solo-learn config (``cfg.method_kwargs``): defaults filled in and checked.

The keys, their defaults and allowed values are the table in :mod:`adios_ssl.sololearn.options`;
:func:`adios_cfg` applies it to a config with the checks of :mod:`adios_ssl.sololearn.checks`.
This module re-exports the table's names and the parent-key helpers
(:mod:`adios_ssl.sololearn.parent_keys`), so ``from adios_ssl.sololearn.config import ...``
works for all of them.

This module imports neither torch nor solo-learn, so :func:`adios_cfg` can refuse a bad setting
before anything heavy is imported: the ``adios-ssl`` command checks the composed config with
it (:mod:`adios_ssl.sololearn.precheck`), the configs' Hydra callback checks it before
``main_pretrain.py`` builds anything (:mod:`adios_ssl.sololearn.register`), and every ADIOS
method checks it again when it is built (``add_and_assert_specific_cfg``).
"""
from __future__ import annotations

from typing import Any, Collection, Mapping, Optional

import omegaconf

from .checks import (
    check,
    check_choices,
    check_images,
    check_known_keys,
    check_numbers,
    check_pairs,
    check_training,
    select,
)
from .options import (
    CLASSIFIER_VIEWS,
    COMPUTATIONS,
    DEFAULT_IMG_SIZE,
    DEFAULTS,
    GENERATORS,
    MASK_PICTURE_KEYS,
    MOMENTUM_DEFAULTS,
    SCHEDULERS,
    SHIPPED_METHODS,
    SIMSIAM_DEFAULTS,
    SINGLE_MASK_ENTROPIES,
    ADIOSConfigError,
    MethodSpec,
)
from .parent_keys import keys_read_in, parent_keys_in_checkout, parent_keys_of

__all__ = [
    "ADIOSConfigError", "CLASSIFIER_VIEWS", "COMPUTATIONS", "DEFAULTS", "DEFAULT_IMG_SIZE",
    "GENERATORS", "MASK_PICTURE_KEYS", "MOMENTUM_DEFAULTS", "MethodSpec", "SCHEDULERS",
    "SHIPPED_METHODS", "SIMSIAM_DEFAULTS", "SINGLE_MASK_ENTROPIES", "adios_cfg", "keys_read_in",
    "num_devices", "parent_keys_in_checkout", "parent_keys_of",
]


def adios_cfg(cfg: omegaconf.DictConfig, method_defaults: Optional[Mapping[str, Any]] = None,
              parent_keys: Optional[Collection[str]] = None, method_name: Optional[str] = None,
              directional: Optional[bool] = None) -> omegaconf.DictConfig:
    """Fill in and check the ADIOS keys of ``cfg.method_kwargs`` (their table:
    :mod:`adios_ssl.sololearn.options`);
    returns ``cfg`` (changed in place). Raises :class:`ADIOSConfigError` naming the key and the
    fix.

    ``method_defaults``: the method's own defaults for some keys (used where a key is absent).
    ``parent_keys``: the ``method_kwargs`` keys the parent solo-learn method reads; with it, any
    other key that is not an ADIOS key is refused (a typo would otherwise be ignored).
    ``method_name``: the method's name in ``solo.methods.METHODS``, for the messages.
    ``directional``: whether the method has a directional loss (``symmetric_pairs: false``);
    ``None`` skips that check. Works on a config before or after solo-learn's ``parse_cfg``.
    """
    name = method_name or select(cfg, "method", None) or "this method"
    if select(cfg, "method_kwargs", None) is None:
        cfg.method_kwargs = {}
    check(isinstance(cfg.method_kwargs, omegaconf.DictConfig),
          f"method_kwargs={cfg.method_kwargs!r} must be a mapping of settings "
          "(method_kwargs.N=4, ...)")
    if parent_keys:
        check_known_keys(cfg.method_kwargs, parent_keys, name)
    defaults = dict(DEFAULTS)
    defaults.update(method_defaults or {})
    pairs_given = select(cfg, "method_kwargs.pairs", None) is not None
    for key, value in defaults.items():
        cfg.method_kwargs[key] = select(cfg, f"method_kwargs.{key}", value)
    kw = cfg.method_kwargs
    check_choices(kw)
    if not pairs_given and kw.masked_views != "both":
        # a default with (masked view, masked view) pairs (SimSiam's) on one masked view
        kw.pairs = [p for p in kw.pairs if p != "both"]
    check_numbers(kw)
    check_pairs(kw)
    if directional is not None:
        check(directional or kw.symmetric_pairs,
              f"method_kwargs.symmetric_pairs=false needs a directional loss, which only "
              f"simsiam_adios defines ({name} has none): remove the setting")
    check_images(cfg, kw)
    check_training(cfg, kw)
    return cfg


def num_devices(cfg: omegaconf.DictConfig) -> int:
    """Processes per node as solo-learn counts them for its lr scaling: ``len(devices)`` for a
    list (solo-learn's configs), the number for an int (a plain Lightning ``devices: 2``)."""
    devices = select(cfg, "devices", 1)
    if isinstance(devices, (list, tuple, omegaconf.ListConfig)):
        return max(len(devices), 1)
    try:
        return max(int(devices), 1)
    except (TypeError, ValueError):  # "auto"
        return 1
