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

This module imports neither torch nor solo-learn, so :func:`adios_cfg` can refuse a bad setting
before anything heavy is imported: the ``adios-ssl`` command checks the composed config with
it (:mod:`adios_ssl.sololearn.precheck`), the configs' Hydra callback checks it before
``main_pretrain.py`` builds anything (:mod:`adios_ssl.sololearn.register`), and every ADIOS
method checks it again when it is built (``add_and_assert_specific_cfg``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from pathlib import Path
from typing import Any, Collection, Dict, FrozenSet, Iterable, Mapping, Optional

import omegaconf
from omegaconf import OmegaConf

from ..choices import (
    BASELINE_GENERATORS,
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


def adios_cfg(cfg: omegaconf.DictConfig, method_defaults: Optional[Mapping[str, Any]] = None,
              parent_keys: Optional[Collection[str]] = None, method_name: Optional[str] = None,
              directional: Optional[bool] = None) -> omegaconf.DictConfig:
    """Fill in and check the ADIOS keys of ``cfg.method_kwargs`` (see the module docstring);
    returns ``cfg`` (changed in place). Raises :class:`ADIOSConfigError` naming the key and the
    fix.

    ``method_defaults``: the method's own defaults for some keys (used where a key is absent).
    ``parent_keys``: the ``method_kwargs`` keys the parent solo-learn method reads; with it, any
    other key that is not an ADIOS key is refused (a typo would otherwise be ignored).
    ``method_name``: the method's name in ``solo.methods.METHODS``, for the messages.
    ``directional``: whether the method has a directional loss (``symmetric_pairs: false``);
    ``None`` skips that check. Works on a config before or after solo-learn's ``parse_cfg``.
    """
    name = method_name or _select(cfg, "method", None) or "this method"
    if _select(cfg, "method_kwargs", None) is None:
        cfg.method_kwargs = {}
    _check(isinstance(cfg.method_kwargs, omegaconf.DictConfig),
           f"method_kwargs={cfg.method_kwargs!r} must be a mapping of settings "
           "(method_kwargs.N=4, ...)")
    if parent_keys:
        _check_known_keys(cfg.method_kwargs, parent_keys, name)
    defaults = dict(DEFAULTS)
    defaults.update(method_defaults or {})
    pairs_given = _select(cfg, "method_kwargs.pairs", None) is not None
    for key, value in defaults.items():
        cfg.method_kwargs[key] = _select(cfg, f"method_kwargs.{key}", value)
    kw = cfg.method_kwargs
    _check_choices(kw)
    if not pairs_given and kw.masked_views != "both":
        # a default with (masked view, masked view) pairs (SimSiam's) on one masked view
        kw.pairs = [p for p in kw.pairs if p != "both"]
    _check_numbers(kw)
    _check_pairs(kw)
    if directional is not None:
        _check(directional or kw.symmetric_pairs,
               f"method_kwargs.symmetric_pairs=false needs a directional loss, which only "
               f"simsiam_adios defines ({name} has none): remove the setting")
    _check_images(cfg, kw)
    _check_training(cfg, kw)
    return cfg


# ----------------------------------------------------------------------------- the checks

#: names people use for ADIOS keys
_ALIASES = {"num_masks": "N", "n_masks": "N", "nmasks": "N", "masks": "N", "n": "N"}


def _check_known_keys(kw: omegaconf.DictConfig, parent_keys: Collection[str], name: str) -> None:
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


def _check_choices(kw: omegaconf.DictConfig) -> None:
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
        _check(isinstance(value, str) and value in choices,
               f"method_kwargs.{key}={value!r}: choose one of {', '.join(choices)} ({what})")
    for key in ("single_mask", "symmetric_pairs"):
        _check(isinstance(kw[key], bool),
               f"method_kwargs.{key}={kw[key]!r} must be true or false")


def _check_numbers(kw: omegaconf.DictConfig) -> None:
    _check(_is_int(kw.N) and kw.N >= 1,
           f"method_kwargs.N={kw.N!r}: the number of masks must be an integer >= 1 "
           "(the paper uses 3 to 6)")
    _check(_is_number(kw.mask_lr) and math.isfinite(kw.mask_lr) and kw.mask_lr > 0,
           f"method_kwargs.mask_lr={kw.mask_lr!r} must be a number > 0 (the masker's learning "
           "rate per 256 images, e.g. 0.1)")
    for key in ("alpha_sparsity", "alpha_entropy"):
        value = kw[key]
        _check(_is_number(value) and math.isfinite(value) and value >= 0,
               f"method_kwargs.{key}={value!r} must be a number >= 0 (a weight in the masker's "
               "objective; 0 turns the term off)")
    _check(_is_int(kw.mask_fbase) and kw.mask_fbase >= 1,
           f"method_kwargs.mask_fbase={kw.mask_fbase!r} must be a positive integer (the masking "
           "UNet's base width, e.g. 16 or 32)")
    _check(kw.mask_ratio is None or (_is_number(kw.mask_ratio) and 0 < kw.mask_ratio < 1),
           f"method_kwargs.mask_ratio={kw.mask_ratio!r} must be a fraction in (0, 1) (the part "
           "of the image a fixed-mask baseline hides), or absent for the baseline's default")
    _check(_is_int(kw.train_mask_epoch) and int(kw.train_mask_epoch) >= 0,
           f"method_kwargs.train_mask_epoch={kw.train_mask_epoch!r} must be an integer >= 0 "
           "(epochs by which the encoder's cosine schedule ends before max_epochs)")
    if kw.unet_blocks == "auto":
        kw.unet_blocks = None  # from the crop size
    _check(kw.unet_blocks is None
           or (_is_int(kw.unet_blocks) and int(kw.unet_blocks) in UNET_BLOCKS),
           f"method_kwargs.unet_blocks={kw.unet_blocks!r}: choose one of {UNET_BLOCKS}, or auto "
           "(from the crop size: int(log2(img_size)) - 1)")
    pictures = kw.mask_pictures
    _check(isinstance(pictures, omegaconf.DictConfig),
           f"method_kwargs.mask_pictures={pictures!r} must be a mapping, e.g. "
           "{enabled: true, every_n_epochs: 1, num_images: 8}")
    for key in pictures:
        _check(key in MASK_PICTURE_KEYS,
               f"method_kwargs.mask_pictures.{key} is not a setting: use "
               f"{', '.join(MASK_PICTURE_KEYS)}")
    _check(isinstance(pictures.get("enabled", True), bool),
           f"method_kwargs.mask_pictures.enabled={pictures.get('enabled')!r} must be true or false")
    for key in ("every_n_epochs", "num_images"):
        value = pictures.get(key, 1)
        _check(_is_int(value) and value >= 1,
               f"method_kwargs.mask_pictures.{key}={value!r} must be an integer >= 1 (or set "
               "method_kwargs.mask_pictures.enabled=false)")


def _check_pairs(kw: omegaconf.DictConfig) -> None:
    _check(isinstance(kw.pairs, omegaconf.ListConfig),
           f"method_kwargs.pairs={kw.pairs!r} must be a list, e.g. method_kwargs.pairs=[masked]")
    pairs = list(kw.pairs)
    _check(bool(pairs) and set(pairs) <= set(PAIR_KINDS),
           f"method_kwargs.pairs={pairs}: choose a non-empty subset of {PAIR_KINDS}")
    _check("masked" in pairs or "none" in pairs,
           f"method_kwargs.pairs={pairs}: include 'masked' or 'none' (the online classifier "
           "reads the unmasked first view)")
    _check("both" not in pairs or kw.masked_views == "both",
           "method_kwargs.pairs contains 'both' (masked view vs masked view): set "
           "method_kwargs.masked_views=both")


def _check_images(cfg: omegaconf.DictConfig, kw: omegaconf.DictConfig) -> None:
    """Crops: two large crops, no small ones; the masker's size equals the crop size and is one
    the UNet can take (adversarial masks); the MAE baseline needs a whole 16-px patch."""
    crops = _crops(cfg)
    _check(crops == (2, 0), f"ADIOS needs exactly two large crops and no small crops, got "
                            f"num_large_crops={crops[0]}, num_small_crops={crops[1]}: use one "
                            "augmentation pipeline with num_crops: 2 (symmetric)")
    crop = _select(cfg, "augmentations.0.crop_size", None)
    _check(crop is None or (_is_int(crop) and crop >= 1),
           f"augmentations.0.crop_size={crop!r} must be a positive integer (pixels)")
    given = kw.img_size is not None
    if given:
        _check(_is_int(kw.img_size) and kw.img_size >= 1,
               f"method_kwargs.img_size={kw.img_size!r} must be a positive integer (pixels)")
        _check(crop is None or kw.img_size == crop,
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
        _check(size >= MAE_PATCH, f"{key}={size}: the mae baseline hides {MAE_PATCH}-px patches, "
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


def _check_training(cfg: omegaconf.DictConfig, kw: omegaconf.DictConfig) -> None:
    accumulate = _select(cfg, "accumulate_grad_batches", 1)
    _check(accumulate in (None, 1),
           f"accumulate_grad_batches={accumulate}: ADIOS alternates one encoder and one masker "
           "update per batch (manual optimization), so gradient accumulation is not supported; "
           "set accumulate_grad_batches: 1 and raise optimizer.batch_size instead")
    scheduler = _select(cfg, "scheduler.name", None)
    _check(scheduler is None or str(scheduler).lower() in SCHEDULERS,
           f"scheduler.name={scheduler!r}: the ADIOS methods (and solo-learn's "
           f"configure_optimizers) run with {', '.join(SCHEDULERS)}; choose one of them")


# ----------------------------------------------------------------------------- helpers

def _crops(cfg: omegaconf.DictConfig) -> tuple:
    """``(num_large_crops, num_small_crops)``: solo-learn's ``parse_cfg`` values when it has
    run, else counted from ``augmentations`` as it counts them (pipelines with the first
    pipeline's crop size are large); ``(2, 0)`` when the config has neither."""
    large = _select(cfg, "data.num_large_crops", None)
    small = _select(cfg, "data.num_small_crops", None)
    if large is not None:
        return large, small or 0
    pipelines = _select(cfg, "augmentations", None)
    if not pipelines:
        return 2, 0
    big = _select(pipelines[0], "crop_size", None)
    large = small = 0
    for pipeline in pipelines:
        n = _select(pipeline, "num_crops", 1)
        if _select(pipeline, "crop_size", None) == big:
            large += n
        else:
            small += n
    return large, small


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


# ----------------------------------------------------------------------------- parent keys

_KWARG = re.compile(r"method_kwargs\.([A-Za-z_]\w*)")
#: modules whose classes read no ``method_kwargs`` of a parent method
_NOT_PARENTS = ("adios_ssl", "builtins", "torch", "lightning", "pytorch_lightning")


def keys_read_in(texts: Iterable[str]) -> FrozenSet[str]:
    """The ``method_kwargs.<key>`` names that appear in these source texts (solo-learn's
    methods read each of their keys as ``cfg.method_kwargs.<key>`` or
    ``omegaconf_select(cfg, "method_kwargs.<key>", ...)``)."""
    return frozenset(m.group(1) for text in texts for m in _KWARG.finditer(text))


def parent_keys_of(cls: type) -> Optional[FrozenSet[str]]:
    """The ``method_kwargs`` keys read in the modules of ``cls``'s parent classes (those outside
    this package, torch and Lightning); ``None`` when none are found (unknown keys are then not
    checked)."""
    texts = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__.split(".")[0] in _NOT_PARENTS:
            continue
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
    return keys_read_in(texts) or None


def parent_keys_in_checkout(root: Path, parent: str) -> Optional[FrozenSet[str]]:
    """The ``method_kwargs`` keys that ``solo/methods/<parent>.py`` under the solo-learn
    checkout ``root`` reads, without importing it; ``None`` when the file is not there."""
    path = Path(root) / "solo" / "methods" / f"{parent}.py"
    if not path.is_file():
        return None
    return keys_read_in([path.read_text(encoding="utf-8", errors="replace")]) or None
