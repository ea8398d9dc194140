"""The allowed values of the ADIOS settings and the masking UNet's size rules.

Plain Python (no torch): the config checks in :mod:`adios_ssl.sololearn.config` use them to
refuse a bad setting before anything heavy is imported, and :mod:`adios_ssl.masker`,
:mod:`adios_ssl.objective` and :mod:`adios_ssl.baselines` use the same values.
"""
from __future__ import annotations

import math
from typing import Optional

#: normalisation layers of the masking UNet: GroupNorm (8 groups), InstanceNorm, none
NORMS = ("gn", "in", "none")
#: UNet depths the masker has a channel plan for
UNET_BLOCKS = (4, 5, 6)
#: GroupNorm's number of groups in the UNet (the base width must be a multiple of it)
GROUPS = 8
#: kinds of (view, view) pairs per mask k
PAIR_KINDS = ("masked", "none", "both")
#: which crops the masks hide
MASKED_VIEWS = ("second", "both")
#: ADIOS-s with both views masked: one mask index per image for both views, or one per view
SINGLE_MASK_CHOICES = ("shared", "per_view")
#: the paper's fixed-mask baselines (:data:`adios_ssl.baselines.BASELINE_MASKS`)
BASELINE_GENERATORS = ("random", "mae", "beit")
#: side of the MAE baseline's square patches, in pixels
MAE_PATCH = 16


def unet_depth(img_size: int) -> int:
    """Number of UNet blocks for a square image of ``img_size`` pixels: ``int(log2(img_size)) - 1``
    (32 -> 4, 64 and 96 -> 5, 128 and 224 -> 6)."""
    if img_size < 16:
        raise ValueError(f"img_size={img_size}: the masking UNet needs images of at least 16 px")
    return int(math.log2(img_size)) - 1


def unet_problem(img_size: int, fbase: int, norm: str,
                 num_blocks: Optional[int] = None) -> Optional[str]:
    """Why a masking UNet cannot be built for these settings (``None`` when it can), in terms
    of the arguments: ``img_size`` must be at least 16 px, the depth (``num_blocks``, default
    :func:`unet_depth`) one of :data:`UNET_BLOCKS`, ``img_size`` a multiple of
    ``2 ** (depth - 1)`` (the encoder halves the map ``depth - 1`` times), ``fbase`` >= 1 and, with
    GroupNorm, a multiple of 8."""
    if norm not in NORMS:
        return f"unknown norm {norm!r}: choose one of {NORMS}"
    if fbase < 1 or (norm == "gn" and fbase % GROUPS):
        return f"mask_fbase={fbase} must be a multiple of {GROUPS} with GroupNorm({GROUPS})"
    if num_blocks is None:
        if img_size < 16:
            return f"img_size={img_size}: the masking UNet needs images of at least 16 px"
        num_blocks = unet_depth(img_size)
        if num_blocks not in UNET_BLOCKS:
            return (f"num_blocks={num_blocks} (img_size={img_size}) is not supported: the masking "
                    f"UNet has {list(UNET_BLOCKS)} blocks (image sizes 32 to 255 px)")
    elif num_blocks not in UNET_BLOCKS:
        return f"num_blocks={num_blocks} is not supported: choose one of {list(UNET_BLOCKS)}"
    if img_size < 1 or img_size % 2 ** (num_blocks - 1):
        return f"img_size={img_size} is not divisible by 2**{num_blocks - 1}"
    return None
