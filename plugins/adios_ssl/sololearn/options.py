"""The ADIOS keys of a solo-learn config (``cfg.method_kwargs``): their table of defaults and
allowed values, the shipped methods' own defaults, and the error a bad setting raises.

Keys (defaults in brackets): ``N`` [6], ``mask_lr`` [0.1, scaled by batch_size * devices *
num_nodes / 256 like solo-learn's ``optimizer.lr``], ``alpha_sparsity`` [1.0],
``alpha_entropy`` [0.0], ``mask_fbase`` [32], ``unet_norm`` [gn], ``unet_blocks`` [from the crop
size], ``img_size`` [the first augmentation pipeline's ``crop_size``, else 224],
``single_mask`` [False, ADIOS-s], ``masked_views`` [second | both], ``pairs`` [[masked]],
``mask_generator`` [adversarial | random | mae | beit], ``mask_ratio`` [baseline default],
``computation`` [batched | looped], ``symmetric_pairs`` [True; SimSiam: False keeps only the
term predicting the masked view], ``mask_pictures`` [{enabled: True, every_n_epochs: 1,
num_images: 8}], ``classifier_views`` [both | first: the crops the online classifier is
trained on], ``train_mask_epoch`` [10 for momentum methods (BYOL), else 0: the encoder's
warm-up + cosine schedule ends this many epochs before ``max_epochs``, as in the official
code], ``single_mask_choice`` [shared | per_view: ADIOS-s with both views masked, one mask index
per image for both views or one per view], ``single_mask_entropy`` [per_view | joint: ADIOS-s
with both views masked, the entropy term per view's masks or over all masks].

A method can change these defaults (:func:`adios_ssl.sololearn.method.adios_method`): SimSiam's
follow the official SimSiam-ADIOS command line (both views masked, all pairs, 4 UNet blocks).

Plain Python (no torch, no solo-learn): :mod:`adios_ssl.sololearn.config` applies this table.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from ..choices import BASELINE_GENERATORS

GENERATORS = ("adversarial",) + BASELINE_GENERATORS
COMPUTATIONS = ("batched", "looped")
CLASSIFIER_VIEWS = ("both", "first")
SINGLE_MASK_ENTROPIES = ("per_view", "joint")
DEFAULT_IMG_SIZE = 224
MASK_PICTURE_KEYS = ("enabled", "every_n_epochs", "num_images")
#: encoder schedules the masker's schedule can copy (:mod:`adios_ssl.sololearn.schedules`);
#: solo-learn's ``configure_optimizers`` itself builds no other
SCHEDULERS = ("warmup_cosine", "step", "none")

#: the ADIOS keys of ``method_kwargs`` and their generic defaults
DEFAULTS: Dict[str, Any] = {
    "N": 6, "mask_lr": 0.1, "alpha_sparsity": 1.0, "alpha_entropy": 0.0, "mask_fbase": 32,
    "unet_norm": "gn", "unet_blocks": None, "img_size": None, "single_mask": False,
    "masked_views": "second", "pairs": ["masked"], "mask_generator": "adversarial",
    "mask_ratio": None, "computation": "batched", "symmetric_pairs": True,
    "mask_pictures": {"enabled": True, "every_n_epochs": 1, "num_images": 8},
    "classifier_views": "both", "train_mask_epoch": 0, "single_mask_choice": "shared",
    "single_mask_entropy": "per_view",
}
#: The official ``BaseMomentumADIOSModel`` (BYOL-ADIOS) has ``--train_mask_epoch`` 10: its
#: encoder schedule runs over ``max_epochs - 10`` epochs (``adios:src/methods/base_adios.py``).
MOMENTUM_DEFAULTS: Dict[str, Any] = {"train_mask_epoch": 10}
#: The official SimSiam-ADIOS command-line defaults (``adios:src/methods/simsiam_adios.py``):
#: masks on both views, ``use_symmetry_mask``/``use_no_mask``/``use_both_mask`` all true, and
#: ``--num_blocks 4`` whatever the image size.
SIMSIAM_DEFAULTS: Dict[str, Any] = {"masked_views": "both", "pairs": ["masked", "none", "both"],
                                    "unet_blocks": 4}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What the config checks need to know of one ADIOS method without importing it.

    parent: the solo-learn method it extends (its code is ``solo/methods/<parent>.py``).
    defaults: the method's own defaults for ADIOS keys (over :data:`DEFAULTS`).
    directional: whether it defines ``adios_directional_loss`` (``symmetric_pairs: false``).
    """

    parent: str
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    directional: bool = False


#: the shipped methods (:data:`adios_ssl.sololearn.method.ADIOS_METHODS` is built from this)
SHIPPED_METHODS: Dict[str, MethodSpec] = {
    "simclr_adios": MethodSpec("simclr"),
    "byol_adios": MethodSpec("byol", MOMENTUM_DEFAULTS),
    "simsiam_adios": MethodSpec("simsiam", SIMSIAM_DEFAULTS, directional=True),
    "barlow_twins_adios": MethodSpec("barlow_twins"),
    "vicreg_adios": MethodSpec("vicreg"),
}


class ADIOSConfigError(ValueError):
    """A bad setting in the solo-learn config of an ADIOS run; the message names the key and
    the fix."""
