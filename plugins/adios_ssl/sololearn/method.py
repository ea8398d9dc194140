"""The ADIOS solo-learn methods: :func:`adios_method` turns a two-view solo-learn method class
into its ADIOS version (:class:`~adios_ssl.sololearn.mixin.ADIOSMixin`), and
:data:`ADIOS_METHODS` names the shipped ones for ``solo.methods.METHODS``.

Importing this module needs solo-learn master importable (:func:`adios_ssl.sololearn.register.register`
and the script wrappers arrange that; settings: :mod:`adios_ssl.sololearn.config`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import omegaconf
import torch
from solo.methods.base import BaseMethod, BaseMomentumMethod

from .config import ADIOSConfigError, adios_cfg  # noqa: F401 (re-exported)
from .mixin import ADIOSMixin

#: The official ``BaseMomentumADIOSModel`` (BYOL-ADIOS) has ``--train_mask_epoch`` 10: its
#: encoder schedule runs over ``max_epochs - 10`` epochs (``adios:src/methods/base_adios.py``).
MOMENTUM_DEFAULTS: Dict[str, Any] = {"train_mask_epoch": 10}
#: The official SimSiam-ADIOS command-line defaults (``adios:src/methods/simsiam_adios.py``):
#: masks on both views, ``use_symmetry_mask``/``use_no_mask``/``use_both_mask`` all true, and
#: ``--num_blocks 4`` whatever the image size.
SIMSIAM_DEFAULTS: Dict[str, Any] = {"masked_views": "both", "pairs": ["masked", "none", "both"],
                                    "unet_blocks": 4}


def adios_method(base: type, name: Optional[str] = None,
                 defaults: Optional[Dict[str, Any]] = None) -> type:
    """The ADIOS version of a two-view solo-learn method class (``BaseMethod`` subclass).
    ``defaults``: the method's own defaults for ADIOS keys (over :data:`MOMENTUM_DEFAULTS` for
    momentum methods and the generic ones in :func:`adios_cfg`)."""
    if not (isinstance(base, type) and issubclass(base, BaseMethod)):
        raise TypeError(f"{base!r} is not a solo-learn BaseMethod subclass")
    cls_name = name or f"{base.__name__}ADIOS"
    method_defaults = dict(MOMENTUM_DEFAULTS) if issubclass(base, BaseMomentumMethod) else {}
    method_defaults.update(defaults or {})

    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        return adios_cfg(base.add_and_assert_specific_cfg(cfg), method_defaults)

    return type(cls_name, (ADIOSMixin, base), {
        "add_and_assert_specific_cfg": staticmethod(add_and_assert_specific_cfg),
        "__module__": __name__, "__qualname__": cls_name,
        "__doc__": f"{base.__name__} + ADIOS adversarial masking (see adios_ssl.sololearn.mixin).",
    })


def _solo_method(name: str) -> type:
    from solo.methods import METHODS

    return METHODS[name]


SimCLRADIOS = adios_method(_solo_method("simclr"), "SimCLRADIOS")
BYOLADIOS = adios_method(_solo_method("byol"), "BYOLADIOS")
class SimSiamADIOS(adios_method(_solo_method("simsiam"), "_SimSiamADIOSBase", SIMSIAM_DEFAULTS)):
    """SimSiam + ADIOS. With ``method_kwargs.symmetric_pairs: false`` a (view, masked view)
    pair contributes only the term in which the masked view's prediction meets the other
    view's projection, ``D(p_masked, z)``: the official SimSiam-ADIOS without
    ``use_symmetry_mask`` (per mask, the mean over the official terms). Defaults: the
    official command line's (:data:`SIMSIAM_DEFAULTS`)."""

    @staticmethod
    def adios_directional_loss(masked: Dict[str, Any], plain: Dict[str, Any]) -> torch.Tensor:
        from solo.losses.simsiam import simsiam_loss_func

        return simsiam_loss_func(masked["p"], plain["z"])



BarlowTwinsADIOS = adios_method(_solo_method("barlow_twins"), "BarlowTwinsADIOS")
VICRegADIOS = adios_method(_solo_method("vicreg"), "VICRegADIOS")

#: name in ``solo.methods.METHODS`` -> class
ADIOS_METHODS: Dict[str, type] = {
    "simclr_adios": SimCLRADIOS,
    "byol_adios": BYOLADIOS,
    "simsiam_adios": SimSiamADIOS,
    "barlow_twins_adios": BarlowTwinsADIOS,
    "vicreg_adios": VICRegADIOS,
}
