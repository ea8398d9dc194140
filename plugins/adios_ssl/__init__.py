"""ADIOS: adversarial masking for self-supervised learning (Shi et al., ICML 2022).

Framework-free pieces: :mod:`adios_ssl.masker` (the masking UNet), :mod:`adios_ssl.objective`
(masked views, sparsity penalty, batched ADIOS loss), :mod:`adios_ssl.baselines` (random,
MAE-style and BEiT-style masks), :mod:`adios_ssl.render` (mask pictures). The solo-learn
plugin lives in :mod:`adios_ssl.sololearn` (needs a solo-learn checkout and the ``solo`` extra).

The names below are imported on first use (``from adios_ssl import MaskingNetwork`` works as
usual), so ``import adios_ssl`` itself does not import torch: the ``adios-ssl`` command refuses
a bad config before any heavy import.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "BASELINE_MASKS": "baselines", "beit_block_masks": "baselines", "mae_patch_masks": "baselines",
    "random_pixel_masks": "baselines",
    "MaskingNetwork": "masker", "UNet": "masker", "unet_depth": "masker",
    "adios_ssl_loss": "objective", "apply_masks": "objective",
    "apply_one_mask_per_image": "objective", "fraction_neg_entropy": "objective",
    "mask_fractions": "objective", "masker_objective": "objective",
    "per_view_batch_norm": "objective", "sparsity_penalty": "objective",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
