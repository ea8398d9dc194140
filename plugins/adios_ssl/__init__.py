"""ADIOS: adversarial masking for self-supervised learning (Shi et al., ICML 2022).

Framework-free pieces: :mod:`adios_ssl.masker` (the masking UNet), :mod:`adios_ssl.objective`
(masked views, sparsity penalty, batched ADIOS loss), :mod:`adios_ssl.baselines` (random,
MAE-style and BEiT-style masks), :mod:`adios_ssl.render` (mask pictures). The solo-learn
plugin lives in :mod:`adios_ssl.sololearn` (needs a solo-learn checkout and the ``solo`` extra).
"""
from .baselines import BASELINE_MASKS, beit_block_masks, mae_patch_masks, random_pixel_masks  # noqa: F401
from .masker import MaskingNetwork, UNet, unet_depth  # noqa: F401
from .objective import (adios_ssl_loss, apply_masks, apply_one_mask_per_image,  # noqa: F401
                        fraction_neg_entropy, mask_fractions, masker_objective,
                        per_view_batch_norm, sparsity_penalty)
