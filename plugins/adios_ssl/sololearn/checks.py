"""The checks of the ADIOS keys of a solo-learn config: one function per group of keys, each
raising :class:`~adios_ssl.sololearn.options.ADIOSConfigError` with a message that names the key
and the fix (run in order by :func:`adios_ssl.sololearn.config.adios_cfg`, after the defaults are
filled in).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Collection

import omegaconf
from omegaconf import OmegaConf

from ..choices import (
    GROUPS,
    MAE_PATCH,
    MASKED_VIEWS,
    NORMS,
    PAIR_KINDS,
    SINGLE_MASK_CHOICES,
    UNET_BLOCKS,
    unet_depth,
    unet_problem,
)
from .options import (
    CLASSIFIER_VIEWS,
    COMPUTATIONS,
    DEFAULT_IMG_SIZE,
    DEFAULTS,
    GENERATORS,
    MASK_PICTURE_KEYS,
    SCHEDULERS,
    SINGLE_MASK_ENTROPIES,
    ADIOSConfigError,
)

#: names people use for ADIOS keys
_ALIASES = {"num_masks": "N", "n_masks": "N", "nmasks": "N", "masks": "N", "n": "N"}


def check_known_keys(kw: omegaconf.DictConfig, parent_keys: Collection[str], name: str) -> None:
    """Every key of ``method_kwargs`` is an ADIOS key or one the parent method reads."""
    known = set(DEFAULTS) | set(parent_keys)
    for key in kw:
        if key in known:
            continue
        lower = {k.lower(): k for k in sorted(known)}
        close = difflib.get_close_matches(str(key).lower(), list(lower), n=1, cutoff=0.75)
        guess = _ALIASES.get(str(key).lower()) or (lower[close[0]] if close else None)
        hint = f"did you mean method_kwargs.{guess}? " if guess else ""
        raise ADIOSConfigError(
            f"method_kwargs.{key} is not a setting of {name}: {hint}remove it or correct its "
            f"name ({name} reads {', '.join(sorted(parent_keys))} and the ADIOS keys "
            f"{', '.join(DEFAULTS)})")


def check_choices(kw: omegaconf.DictConfig) -> None:
    for key, choices, what in (
            ("unet_norm", NORMS, "the masking UNet's normalisation"),
            ("mask_generator", GENERATORS,
             "adversarial = the ADIOS masker, else a fixed-mask baseline"),
            ("masked_views", MASKED_VIEWS, "the crops the masks hide"),
            ("computation", COMPUTATIONS, "batched = all masked views in one forward"),
            ("classifier_views", CLASSIFIER_VIEWS,
             "the crops the online classifier is trained on"),
            ("single_mask_choice", SINGLE_MASK_CHOICES,
             "ADIOS-s: one mask index per image or per view"),
            ("single_mask_entropy", SINGLE_MASK_ENTROPIES,
             "ADIOS-s: the entropy term per view or joint")):
        value = kw[key]
        check(isinstance(value, str) and value in choices,
              f"method_kwargs.{key}={value!r}: choose one of {', '.join(choices)} ({what})")
    for key in ("single_mask", "symmetric_pairs"):
        check(isinstance(kw[key], bool),
              f"method_kwargs.{key}={kw[key]!r} must be true or false")


def check_numbers(kw: omegaconf.DictConfig) -> None:
    check(_is_int(kw.N) and kw.N >= 1,
          f"method_kwargs.N={kw.N!r}: the number of masks must be an integer >= 1 "
          "(the paper uses 3 to 6)")
    check(_is_number(kw.mask_lr) and math.isfinite(kw.mask_lr) and kw.mask_lr > 0,
          f"method_kwargs.mask_lr={kw.mask_lr!r} must be a number > 0 (the masker's learning "
          "rate per 256 images, e.g. 0.1)")
    for key in ("alpha_sparsity", "alpha_entropy"):
        value = kw[key]
        check(_is_number(value) and math.isfinite(value) and value >= 0,
              f"method_kwargs.{key}={value!r} must be a number >= 0 (a weight in the masker's "
              "objective; 0 turns the term off)")
    check(_is_int(kw.mask_fbase) and kw.mask_fbase >= 1,
          f"method_kwargs.mask_fbase={kw.mask_fbase!r} must be a positive integer (the masking "
          "UNet's base width, e.g. 16 or 32)")
    check(kw.mask_ratio is None or (_is_number(kw.mask_ratio) and 0 < kw.mask_ratio < 1),
          f"method_kwargs.mask_ratio={kw.mask_ratio!r} must be a fraction in (0, 1) (the part "
          "of the image a fixed-mask baseline hides), or absent for the baseline's default")
    check(_is_int(kw.train_mask_epoch) and int(kw.train_mask_epoch) >= 0,
          f"method_kwargs.train_mask_epoch={kw.train_mask_epoch!r} must be an integer >= 0 "
          "(epochs by which the encoder's cosine schedule ends before max_epochs)")
    if kw.unet_blocks == "auto":
        kw.unet_blocks = None  # from the crop size
    check(kw.unet_blocks is None
          or (_is_int(kw.unet_blocks) and int(kw.unet_blocks) in UNET_BLOCKS),
          f"method_kwargs.unet_blocks={kw.unet_blocks!r}: choose one of {UNET_BLOCKS}, or auto "
          "(from the crop size: int(log2(img_size)) - 1)")
    pictures = kw.mask_pictures
    check(isinstance(pictures, omegaconf.DictConfig),
          f"method_kwargs.mask_pictures={pictures!r} must be a mapping, e.g. "
          "{enabled: true, every_n_epochs: 1, num_images: 8}")
    for key in pictures:
        check(key in MASK_PICTURE_KEYS,
              f"method_kwargs.mask_pictures.{key} is not a setting: use "
              f"{', '.join(MASK_PICTURE_KEYS)}")
    check(isinstance(pictures.get("enabled", True), bool),
          f"method_kwargs.mask_pictures.enabled={pictures.get('enabled')!r} must be true or false")
    for key in ("every_n_epochs", "num_images"):
        value = pictures.get(key, 1)
        check(_is_int(value) and value >= 1,
              f"method_kwargs.mask_pictures.{key}={value!r} must be an integer >= 1 (or set "
              "method_kwargs.mask_pictures.enabled=false)")


def check_pairs(kw: omegaconf.DictConfig) -> None:
    check(isinstance(kw.pairs, omegaconf.ListConfig),
          f"method_kwargs.pairs={kw.pairs!r} must be a list, e.g. method_kwargs.pairs=[masked]")
    pairs = list(kw.pairs)
    check(bool(pairs) and set(pairs) <= set(PAIR_KINDS),
          f"method_kwargs.pairs={pairs}: choose a non-empty subset of {PAIR_KINDS}")
    check("masked" in pairs or "none" in pairs,
          f"method_kwargs.pairs={pairs}: include 'masked' or 'none' (the online classifier "
          "reads the unmasked first view)")
    check("both" not in pairs or kw.masked_views == "both",
          "method_kwargs.pairs contains 'both' (masked view vs masked view): set "
          "method_kwargs.masked_views=both")


def check_images(cfg: omegaconf.DictConfig, kw: omegaconf.DictConfig) -> None:
    """Crops: two large crops, no small ones; the masker's size equals the crop size and is one
    the UNet can take (adversarial masks); the MAE baseline needs a whole 16-px patch."""
    crops = _crops(cfg)
    check(crops == (2, 0), f"ADIOS needs exactly two large crops and no small crops, got "
                           f"num_large_crops={crops[0]}, num_small_crops={crops[1]}: use one "
                           "augmentation pipeline with num_crops: 2 (symmetric)")
    crop = select(cfg, "augmentations.0.crop_size", None)
    check(crop is None or (_is_int(crop) and crop >= 1),
          f"augmentations.0.crop_size={crop!r} must be a positive integer (pixels)")
    given = kw.img_size is not None
    if given:
        check(_is_int(kw.img_size) and kw.img_size >= 1,
              f"method_kwargs.img_size={kw.img_size!r} must be a positive integer (pixels)")
        check(crop is None or kw.img_size == crop,
              f"method_kwargs.img_size={kw.img_size} differs from the training crops "
              f"(augmentations.0.crop_size={crop}): the masker sees those crops, so remove "
              f"method_kwargs.img_size or set it to {crop}")
    else:
        # No crop size in the config (e.g. solo-learn's own test configs): the masker is built
        # for solo-learn's ImageNet default, and a batch of another size stops with an error
        # that names method_kwargs.img_size.
        kw.img_size = int(crop) if crop is not None else DEFAULT_IMG_SIZE
    size = int(kw.img_size)
    key = "method_kwargs.img_size" if given or crop is None else "augmentations.0.crop_size"
    if kw.mask_generator == "mae":
        check(size >= MAE_PATCH, f"{key}={size}: the mae baseline hides {MAE_PATCH}-px patches, "
                                 f"so the crops must be at least {MAE_PATCH} px")
    if kw.mask_generator != "adversarial":
        return
    if kw.unet_norm == "gn" and kw.mask_fbase % GROUPS:
        near = sorted({w for w in (kw.mask_fbase // GROUPS * GROUPS, kw.mask_fbase // GROUPS
                                   * GROUPS + GROUPS) if w >= GROUPS})
        raise ADIOSConfigError(
            f"method_kwargs.mask_fbase={kw.mask_fbase} must be a multiple of {GROUPS} with "
            f"method_kwargs.unet_norm=gn (GroupNorm with {GROUPS} groups): use "
            f"{' or '.join(map(str, near))}, or method_kwargs.unet_norm=in")
    blocks = None if kw.unet_blocks is None else int(kw.unet_blocks)
    if unet_problem(size, int(kw.mask_fbase), kw.unet_norm, blocks) is None:
        return
    if blocks is None and (size < 16 or unet_depth(size) not in UNET_BLOCKS):
        raise ADIOSConfigError(
            f"{key}={size}: the masking UNet takes crops of 32 to 255 px when its depth comes "
            f"from the crop size: use a crop size in that range (e.g. 32, 64 or 96), or set "
            f"method_kwargs.unet_blocks to one of {UNET_BLOCKS} with a crop size that is a "
            "multiple of 2**(blocks - 1)")
    depth = blocks if blocks is not None else unet_depth(size)
    step = 2 ** (depth - 1)
    fits = [b for b in UNET_BLOCKS if size % 2 ** (b - 1) == 0]
    other = (f", or set method_kwargs.unet_blocks={fits[-1]}" if fits else "")
    low, high = size // step * step, (size // step + 1) * step
    raise ADIOSConfigError(
        f"{key}={size} is not a multiple of {step}, which a {depth}-block masking UNet needs "
        f"(it halves the image {depth - 1} times): use a crop size of "
        f"{' or '.join(str(s) for s in (low, high) if s >= 16)}{other}")


def check_training(cfg: omegaconf.DictConfig, kw: omegaconf.DictConfig) -> None:
    accumulate = select(cfg, "accumulate_grad_batches", 1)
    check(accumulate in (None, 1),
          f"accumulate_grad_batches={accumulate}: ADIOS alternates one encoder and one masker "
          "update per batch (manual optimization), so gradient accumulation is not supported; "
          "set accumulate_grad_batches: 1 and raise optimizer.batch_size instead")
    scheduler = select(cfg, "scheduler.name", None)
    check(scheduler is None or str(scheduler).lower() in SCHEDULERS,
          f"scheduler.name={scheduler!r}: the ADIOS methods (and solo-learn's "
          f"configure_optimizers) run with {', '.join(SCHEDULERS)}; choose one of them")


# ----------------------------------------------------------------------------- helpers

def _crops(cfg: omegaconf.DictConfig) -> tuple:
    """``(num_large_crops, num_small_crops)``: solo-learn's ``parse_cfg`` values when it has
    run, else counted from ``augmentations`` as it counts them (pipelines with the first
    pipeline's crop size are large); ``(2, 0)`` when the config has neither."""
    large = select(cfg, "data.num_large_crops", None)
    small = select(cfg, "data.num_small_crops", None)
    if large is not None:
        return large, small or 0
    pipelines = select(cfg, "augmentations", None)
    if not pipelines:
        return 2, 0
    big = select(pipelines[0], "crop_size", None)
    large = small = 0
    for pipeline in pipelines:
        n = select(pipeline, "num_crops", 1)
        if select(pipeline, "crop_size", None) == big:
            large += n
        else:
            small += n
    return large, small


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(ok: bool, message: str) -> None:
    """Raise :class:`ADIOSConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ADIOSConfigError(message)


def select(cfg: omegaconf.DictConfig, key: str, default: Any) -> Any:
    """``cfg.<key>``, ``default`` where it is missing, None for ``"None"`` (as solo-learn's
    ``omegaconf_select``)."""
    value = OmegaConf.select(cfg, key, default=default)
    return None if value == "None" else value
