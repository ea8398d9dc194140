"""The ADIOS solo-learn methods: :func:`adios_method` turns a two-view solo-learn method class
into its ADIOS version (:class:`~adios_ssl.sololearn.mixin.ADIOSMixin`), and
:data:`ADIOS_METHODS` names the shipped ones for ``solo.methods.METHODS``.

Importing this module needs solo-learn master importable (:func:`adios_ssl.sololearn.register.register`
and the script wrappers arrange that; settings: :mod:`adios_ssl.sololearn.config`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import omegaconf
import torch
from omegaconf import OmegaConf
from solo.methods.base import BaseMethod, BaseMomentumMethod

from .config import MOMENTUM_DEFAULTS, SHIPPED_METHODS, SIMSIAM_DEFAULTS, ADIOSConfigError, adios_cfg, parent_keys_of  # noqa: F401 (re-exported)
from .mixin import ADIOSMixin


def adios_method(base: type, name: Optional[str] = None,
                 defaults: Optional[Dict[str, Any]] = None, extra_keys: Iterable[str] = ()) -> type:
    """The ADIOS version of a two-view solo-learn method class (``BaseMethod`` subclass).
    ``defaults``: the method's own defaults for ADIOS keys (over :data:`MOMENTUM_DEFAULTS` for
    momentum methods and the generic ones in :func:`adios_cfg`). ``extra_keys``: further
    ``method_kwargs`` keys the parent reads that its source does not spell
    ``method_kwargs.<key>`` (any other unknown key is refused when the method is built)."""
    if not (isinstance(base, type) and issubclass(base, BaseMethod)):
        raise TypeError(f"{base!r} is not a solo-learn BaseMethod subclass")
    cls_name = name or f"{base.__name__}ADIOS"
    method_defaults = dict(MOMENTUM_DEFAULTS) if issubclass(base, BaseMomentumMethod) else {}
    method_defaults.update(defaults or {})
    found = parent_keys_of(base)
    parent_keys = None if found is None else frozenset(found) | frozenset(extra_keys)

    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """The parent's checks and defaults, then the ADIOS ones (:func:`adios_cfg`)."""
        return adios_cfg(base.add_and_assert_specific_cfg(cfg), cls.adios_defaults,
                         cls.adios_parent_keys, directional=hasattr(cls, "adios_directional_loss"))

    def adios_check(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """The ADIOS checks of :func:`adios_cfg` on a copy of ``cfg`` (a config as Hydra
        composed it, before solo-learn's ``parse_cfg``); returns the checked copy."""
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        copy = OmegaConf.create(OmegaConf.to_container(plain, resolve=True))
        return adios_cfg(copy, cls.adios_defaults, cls.adios_parent_keys,
                         directional=hasattr(cls, "adios_directional_loss"))

    return type(cls_name, (ADIOSMixin, base), {
        "add_and_assert_specific_cfg": classmethod(add_and_assert_specific_cfg),
        "adios_check": classmethod(adios_check),
        #: the method's own defaults for ADIOS keys, and the keys its parent reads
        "adios_defaults": method_defaults, "adios_parent_keys": parent_keys,
        "__module__": __name__, "__qualname__": cls_name,
        "__doc__": f"{base.__name__} + ADIOS adversarial masking (see adios_ssl.sololearn.mixin).",
    })


def _solo_method(name: str) -> type:
    from solo.methods import METHODS

    return METHODS[name]


def _shipped(name: str, cls_name: str) -> type:
    spec = SHIPPED_METHODS[name]
    return adios_method(_solo_method(spec.parent), cls_name, dict(spec.defaults))


SimCLRADIOS = _shipped("simclr_adios", "SimCLRADIOS")
BYOLADIOS = _shipped("byol_adios", "BYOLADIOS")


class SimSiamADIOS(_shipped("simsiam_adios", "_SimSiamADIOSBase")):
    """SimSiam + ADIOS. With ``method_kwargs.symmetric_pairs: false`` a (view, masked view)
    pair contributes only the term in which the masked view's prediction meets the other
    view's projection, ``D(p_masked, z)``: the official SimSiam-ADIOS without
    ``use_symmetry_mask`` (per mask, the mean over the official terms). Defaults: the
    official command line's (:data:`SIMSIAM_DEFAULTS`)."""

    @staticmethod
    def adios_directional_loss(masked: Dict[str, Any], plain: Dict[str, Any]) -> torch.Tensor:
        from solo.losses.simsiam import simsiam_loss_func

        return simsiam_loss_func(masked["p"], plain["z"])


BarlowTwinsADIOS = _shipped("barlow_twins_adios", "BarlowTwinsADIOS")
VICRegADIOS = _shipped("vicreg_adios", "VICRegADIOS")

#: name in ``solo.methods.METHODS`` -> class
ADIOS_METHODS: Dict[str, type] = {
    "simclr_adios": SimCLRADIOS,
    "byol_adios": BYOLADIOS,
    "simsiam_adios": SimSiamADIOS,
    "barlow_twins_adios": BarlowTwinsADIOS,
    "vicreg_adios": VICRegADIOS,
}
