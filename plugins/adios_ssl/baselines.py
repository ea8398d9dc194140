"""Fixed (non-learned) masks for the paper's baselines: random pixels, MAE-style patches,
BEiT-style blocks.

Each function returns ``(B, 1, H, W)`` float masks with 1 = hidden, the same convention as the
ADIOS masker's output, so ``x * (1 - m)`` applies them and the rest of the pipeline is shared.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from .choices import MAE_PATCH

MaskFn = Callable[..., torch.Tensor]


def random_pixel_masks(batch: int, size: int, ratio: float = 0.5,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Every pixel hidden independently with probability ``ratio``."""
    _check_ratio(ratio)
    return (torch.rand(batch, 1, size, size, generator=generator) < ratio).float()


def mae_patch_masks(batch: int, size: int, ratio: float = 0.75, patch: int = MAE_PATCH,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """MAE-style: the image is cut into ``patch x patch`` squares and a random ``ratio`` of them
    is hidden (``int(n * (1 - ratio))`` squares stay visible, as in the official baseline);
    pixels outside the whole-patch grid stay hidden."""
    _check_ratio(ratio)
    per_side = size // patch
    if per_side < 1:
        raise ValueError(f"patch={patch} is larger than the {size}px image")
    num = per_side * per_side
    visible = int(num * (1 - ratio))
    order = torch.rand(batch, num, generator=generator).argsort(dim=1)
    grid = torch.ones(batch, num)
    grid.scatter_(1, order[:, :visible], 0.0)
    grid = grid.view(batch, 1, per_side, per_side)
    masks = torch.ones(batch, 1, size, size)
    covered = per_side * patch
    masks[..., :covered, :covered] = grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return masks


def beit_block_masks(batch: int, size: int, ratio: float = 0.3, min_pixels: int = 64,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """BEiT-style blockwise masking: rectangles of random area (``min_pixels`` up to the
    remaining budget) and aspect ratio in [0.3, 1/0.3] are hidden until at least ``ratio`` of
    the image is covered."""
    _check_ratio(ratio)
    budget = ratio * size * size
    min_pixels = max(1, min(min_pixels, int(budget)))
    masks = torch.zeros(batch, 1, size, size)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    for i in range(batch):
        m = masks[i, 0]
        while m.sum() < budget:
            high = max(min_pixels + 1, int(budget - m.sum()))
            area = int(torch.randint(min_pixels, high, (1,), generator=generator))
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0])
                              * float(torch.rand(1, generator=generator)))
            h = min(size, max(1, int(round(math.sqrt(area * aspect)))))
            w = min(size, max(1, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, size - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, size - w + 1, (1,), generator=generator))
            m[top:top + h, left:left + w] = 1.0
    return masks


BASELINE_MASKS: Dict[str, MaskFn] = {
    "random": random_pixel_masks,
    "mae": mae_patch_masks,
    "beit": beit_block_masks,
}


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
