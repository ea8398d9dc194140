"""Draw images with their ADIOS masks (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch


def save_mask_grid(images: torch.Tensor, masks: torch.Tensor, path: Union[str, Path],
                   title: Optional[str] = None) -> Path:
    """One row per image: the image, each mask k as a heat map (bright = hidden by mask k,
    with the fraction of the image it covers underneath), and the partition (pixel colour =
    the mask with the largest value).

    ``images`` (B, 3, H, W) in [0, 1]; ``masks`` (B, N, H, W). Writes a PNG and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
        raise ValueError(f"expected images (B, 3, H, W) and masks (B, N, H, W), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    rows, num_masks = masks.shape[0], masks.shape[1]
    cols = num_masks + 2
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_masks <= 10 else "tab20")
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(images[r].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            elif c == cols - 1:
                ax.imshow(masks[r].argmax(0).numpy(), cmap=cmap, vmin=0, vmax=cmap.N - 1,
                          interpolation="nearest")
            else:
                ax.imshow(masks[r, c - 1].numpy(), cmap="magma", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                label = "input" if c == 0 else ("partition" if c == cols - 1 else f"mask {c}")
                ax.set_title(label, fontsize=8)
            if c and c < cols - 1:
                ax.set_xlabel(f"{float(masks[r, c - 1].mean()):.0%}", fontsize=7, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
