"""The ADIOS keys of a solo-learn config (``cfg.method_kwargs``): defaults and checks.

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
"""
from __future__ import annotations

from typing import Any

import omegaconf
from omegaconf import OmegaConf

from ..baselines import BASELINE_MASKS
from ..masker import NORMS
from ..objective import MASKED_VIEWS, PAIR_KINDS, SINGLE_MASK_CHOICES

GENERATORS = ("adversarial",) + tuple(BASELINE_MASKS)
COMPUTATIONS = ("batched", "looped")
CLASSIFIER_VIEWS = ("both", "first")
SINGLE_MASK_ENTROPIES = ("per_view", "joint")
UNET_BLOCKS = (4, 5, 6)
DEFAULT_IMG_SIZE = 224


class ADIOSConfigError(ValueError):
    """A bad ADIOS setting in the solo-learn config."""


def adios_cfg(cfg: omegaconf.DictConfig,
              method_defaults: dict | None = None) -> omegaconf.DictConfig:
    """Fill in and check the ADIOS keys of ``cfg.method_kwargs`` (see the module docstring).
    ``method_defaults``: the method's own defaults for some keys (used where a key is absent)."""
    defaults = {
        "N": 6, "mask_lr": 0.1, "alpha_sparsity": 1.0, "alpha_entropy": 0.0, "mask_fbase": 32,
        "unet_norm": "gn", "unet_blocks": None, "img_size": None, "single_mask": False,
        "masked_views": "second", "pairs": ["masked"], "mask_generator": "adversarial",
        "mask_ratio": None, "computation": "batched", "symmetric_pairs": True,
        "mask_pictures": {"enabled": True, "every_n_epochs": 1, "num_images": 8},
        "classifier_views": "both", "train_mask_epoch": 0, "single_mask_choice": "shared",
        "single_mask_entropy": "per_view",
    }
    defaults.update(method_defaults or {})
    pairs_given = _select(cfg, "method_kwargs.pairs", None) is not None
    for key, value in defaults.items():
        cfg.method_kwargs[key] = _select(cfg, f"method_kwargs.{key}", value)
    kw = cfg.method_kwargs
    if not pairs_given and kw.masked_views != "both":
        # a default with (masked view, masked view) pairs (SimSiam's) on one masked view
        kw.pairs = [p for p in kw.pairs if p != "both"]
    if kw.img_size is None:
        crop = _select(cfg, "augmentations.0.crop_size", None)
        # No crop size in the config (e.g. solo-learn's own test configs): the masker is built
        # for solo-learn's ImageNet default, and a batch of another size stops with an error
        # that names method_kwargs.img_size.
        kw.img_size = int(crop) if crop is not None else DEFAULT_IMG_SIZE
    _check(int(kw.N) >= 1, f"method_kwargs.N={kw.N}: the number of masks must be >= 1")
    _check(float(kw.mask_lr) > 0, f"method_kwargs.mask_lr={kw.mask_lr} must be > 0")
    _check(float(kw.alpha_sparsity) >= 0, f"method_kwargs.alpha_sparsity={kw.alpha_sparsity} must be >= 0")
    _check(kw.unet_norm in NORMS, f"method_kwargs.unet_norm={kw.unet_norm!r}: choose one of {NORMS}")
    _check(kw.mask_generator in GENERATORS,
           f"method_kwargs.mask_generator={kw.mask_generator!r}: choose one of {GENERATORS}")
    _check(kw.masked_views in MASKED_VIEWS,
           f"method_kwargs.masked_views={kw.masked_views!r}: choose one of {MASKED_VIEWS}")
    _check(kw.computation in COMPUTATIONS,
           f"method_kwargs.computation={kw.computation!r}: choose one of {COMPUTATIONS}")
    _check(kw.classifier_views in CLASSIFIER_VIEWS,
           f"method_kwargs.classifier_views={kw.classifier_views!r}: choose one of "
           f"{CLASSIFIER_VIEWS} (the crops the online classifier is trained on)")
    _check(kw.single_mask_choice in SINGLE_MASK_CHOICES,
           f"method_kwargs.single_mask_choice={kw.single_mask_choice!r}: choose one of "
           f"{SINGLE_MASK_CHOICES}")
    _check(kw.single_mask_entropy in SINGLE_MASK_ENTROPIES,
           f"method_kwargs.single_mask_entropy={kw.single_mask_entropy!r}: choose one of "
           f"{SINGLE_MASK_ENTROPIES}")
    _check(_is_int(kw.train_mask_epoch) and int(kw.train_mask_epoch) >= 0,
           f"method_kwargs.train_mask_epoch={kw.train_mask_epoch!r} must be an integer >= 0 "
           "(epochs by which the encoder's cosine schedule ends before max_epochs)")
    if kw.unet_blocks == "auto":
        kw.unet_blocks = None  # from the crop size
    _check(kw.unet_blocks is None
           or (_is_int(kw.unet_blocks) and int(kw.unet_blocks) in UNET_BLOCKS),
           f"method_kwargs.unet_blocks={kw.unet_blocks!r}: choose one of {UNET_BLOCKS}, or auto "
           "(from the crop size: int(log2(img_size)) - 1)")
    pairs = list(kw.pairs)
    _check(bool(pairs) and set(pairs) <= set(PAIR_KINDS),
           f"method_kwargs.pairs={pairs}: choose a non-empty subset of {PAIR_KINDS}")
    _check("masked" in pairs or "none" in pairs,
           f"method_kwargs.pairs={pairs}: include 'masked' or 'none' (the online classifier "
           "reads the unmasked first view)")
    _check("both" not in pairs or kw.masked_views == "both",
           "method_kwargs.pairs contains 'both' (masked view vs masked view): set "
           "method_kwargs.masked_views=both")
    accumulate = _select(cfg, "accumulate_grad_batches", 1)
    _check(accumulate in (None, 1),
           f"accumulate_grad_batches={accumulate}: ADIOS alternates one encoder and one masker "
           "update per batch (manual optimization), so gradient accumulation is not supported; "
           "set accumulate_grad_batches: 1 and raise optimizer.batch_size instead")
    crops = (_select(cfg, "data.num_large_crops", 2),
             _select(cfg, "data.num_small_crops", 0))
    _check(crops == (2, 0), f"ADIOS needs exactly two large crops and no small crops, got "
                            f"num_large_crops={crops[0]}, num_small_crops={crops[1]}: use one "
                            "augmentation pipeline with num_crops: 2 (symmetric)")
    return cfg


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ADIOSConfigError(message)


def _select(cfg: omegaconf.DictConfig, key: str, default: Any) -> Any:
    """``cfg.<key>``, ``default`` where it is missing, None for ``"None"`` (as solo-learn's
    ``omegaconf_select``)."""
    value = OmegaConf.select(cfg, key, default=default)
    return None if value == "None" else value


def num_devices(cfg: omegaconf.DictConfig) -> int:
    """Processes per node as solo-learn counts them for its lr scaling: ``len(devices)`` for a
    list (solo-learn's configs), the number for an int (a plain Lightning ``devices: 2``)."""
    devices = _select(cfg, "devices", 1)
    if isinstance(devices, (list, tuple, omegaconf.ListConfig)):
        return max(len(devices), 1)
    try:
        return max(int(devices), 1)
    except (TypeError, ValueError):  # "auto"
        return 1
