"""Draw images with their ADIOS masks (matplotlib, no display needed)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Union

import torch

#: what the picture shows, under the title
CAPTION = ("bright = hidden by that mask; % = share of the image it hides; partition: each pixel "
           "coloured by the mask that hides it most")
#: solo-learn method names as the papers write them
_METHOD_LABELS = {"simclr": "SimCLR", "byol": "BYOL", "simsiam": "SimSiam",
                  "barlow_twins": "Barlow Twins", "vicreg": "VICReg"}


def method_label(method: str) -> str:
    """``"simclr_adios"`` -> ``"SimCLR + ADIOS"`` (``"SimCLRADIOS"``, a class name, too)."""
    for suffix in ("_adios", "ADIOS"):
        if method.endswith(suffix):
            base = method[:-len(suffix)]
            return f"{_METHOD_LABELS.get(base, base)} + ADIOS"
    return _METHOD_LABELS.get(method, method)


def save_mask_grid(images: torch.Tensor, masks: torch.Tensor, path: Union[str, Path],
                   title: Optional[str] = None) -> Path:
    """Write :func:`mask_grid_figure` as a PNG to ``path`` (folders created); returns the path."""
    import matplotlib.pyplot as plt

    fig = mask_grid_figure(images, masks, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mask_grid_figure(images: torch.Tensor, masks: torch.Tensor, title: Optional[str] = None):
    """A matplotlib figure with one row per image: the image, each mask k as a heat map (bright
    = hidden by mask k, with the fraction of the image it covers underneath), and the partition
    (pixel colour = the mask with the largest value). Above: ``title`` and :data:`CAPTION`;
    below: a legend of the partition's colours (mask k's column title has its colour too).

    ``images`` (B, 3, H, W) in [0, 1]; ``masks`` (B, N, H, W).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
        raise ValueError(f"expected images (B, 3, H, W) and masks (B, N, H, W), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    rows, num_masks = masks.shape[0], masks.shape[1]
    cols = num_masks + 2
    width = max(1.3 * cols, 4.5)  # inches; room for the caption and the legend
    chars = int(width * 15)  # about 15 characters of 8 pt text per inch
    heading = textwrap.wrap(title, chars) if title else []
    heading += textwrap.wrap(CAPTION, chars)
    legend_rows = 1 + (num_masks - 1) // 8
    top, bottom = 0.2 + 0.15 * len(heading) + 0.2, 0.5 + 0.18 * legend_rows
    height = top + 1.45 * rows + bottom
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, top=1 - top / height,
                        bottom=bottom / height, wspace=0.08, hspace=0.3)
    cmap = plt.get_cmap("tab10" if num_masks <= 10 else "tab20")
    colours = [cmap(k % cmap.N) for k in range(num_masks)]
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
                if c == 0:
                    ax.set_title("input", fontsize=8)
                elif c == cols - 1:
                    ax.set_title("partition", fontsize=8)
                else:  # the mask's partition colour as a square before its name
                    ax.set_title(f"\u25a0 mask {c}", fontsize=8, color=colours[c - 1])
            if c and c < cols - 1:
                ax.set_xlabel(f"{float(masks[r, c - 1].mean()):.0%}", fontsize=7, labelpad=1)
    fig.suptitle("\n".join(heading), fontsize=8, y=1 - 0.1 / height, va="top")
    fig.legend(handles=[Patch(facecolor=colours[k], label=f"mask {k + 1}")
                        for k in range(num_masks)],
               loc="lower center", bbox_to_anchor=(0.5, 0.05 / height), ncol=min(num_masks, 8),
               fontsize=7, frameon=False, title="partition colours", title_fontsize=7,
               handlelength=1.2, columnspacing=1.0)
    return fig
