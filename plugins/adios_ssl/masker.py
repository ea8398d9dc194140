"""The ADIOS masking network: a UNet followed by a 1x1 head and a softmax over N masks.

Shapes: images ``(B, C, H, W)`` with ``H == W == img_size``; masks ``(B, N, H, W)``, every
pixel's N values are non-negative and sum to 1 (a soft partition of the image).

The architecture follows the paper's masker (a UNet with a small MLP bottleneck whose depth
follows the image size, after the GENESIS UNet used by the official code), written here as
small modules with one job each.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The depth follows the image size (``unet_depth``: ``int(log2(img_size)) - 1``, as in the
# official code): the bottleneck sees a 4x4 (32 px), 4x4 (64 px), 6x6 (96 px), 4x4 (128 px) or
# 7x7 (224 px) feature map. The size rules live in the torch-free ``adios_ssl.choices``.
from .choices import NORMS, unet_depth, unet_problem  # noqa: F401 (NORMS, unet_depth re-exported)

# Channel multipliers of c = fbase for the encoder outputs and decoder outputs, per depth
# (the official code's plans for 4, 5 and 6 blocks).
_ENCODER_WIDTHS = {
    4: (1, 2, 2, 2),
    5: (1, 1, 2, 2, 2),
    6: (1, 1, 1, 2, 2, 2),
}
_DECODER_WIDTHS = {
    4: (2, 2, 1, 1),
    5: (2, 2, 1, 1, 1),
    6: (2, 2, 1, 1, 1, 1),
}


def conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 convolution, then GroupNorm(8 groups) / InstanceNorm(affine) / nothing, then ReLU."""
    if norm == "gn":
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                  nn.GroupNorm(8, out_channels)]
    elif norm == "in":
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                  nn.InstanceNorm2d(out_channels, affine=True)]
    elif norm == "none":
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    else:
        raise ValueError(f"unknown norm {norm!r}: choose one of {NORMS}")
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class UNet(nn.Module):
    """UNet with ``num_blocks`` resolution levels and an MLP bottleneck.

    ``(B, in_channels, S, S) -> (B, fbase, S, S)`` where ``S = img_size``. Between encoder
    blocks the feature map is halved (nearest), so the bottleneck MLP sees
    ``(2 * fbase) x f x f`` with ``f = S // 2**(num_blocks - 1)``; the decoder concatenates the
    skip connections and doubles the size back.
    """

    def __init__(self, img_size: int, fbase: int = 32, norm: str = "gn", in_channels: int = 3,
                 num_blocks: int | None = None, bottleneck_dim: int = 128):
        super().__init__()
        num_blocks = None if num_blocks is None else int(num_blocks)
        problem = unet_problem(img_size, fbase, norm, num_blocks)
        if problem:
            raise ValueError(problem)
        num_blocks = unet_depth(img_size) if num_blocks is None else num_blocks
        enc = [fbase * w for w in _ENCODER_WIDTHS[num_blocks]]
        dec = [fbase * w for w in _DECODER_WIDTHS[num_blocks]]
        self.down = nn.ModuleList(
            conv_block(cin, cout, norm) for cin, cout in zip([in_channels] + enc[:-1], enc))
        # decoder block i sees [previous decoder output (or bottleneck), skip from level -1-i]
        dec_in = [enc[-1] + enc[-1]] + [dec[i] + enc[-2 - i] for i in range(num_blocks - 1)]
        self.up = nn.ModuleList(conv_block(cin, cout, norm) for cin, cout in zip(dec_in, dec))
        self.feature_size = img_size // 2 ** (num_blocks - 1)
        flat = enc[-1] * self.feature_size ** 2
        self.bottleneck = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, bottleneck_dim), nn.ReLU(),
            nn.Linear(bottleneck_dim, bottleneck_dim), nn.ReLU(),
            nn.Linear(bottleneck_dim, flat), nn.ReLU())
        self.img_size = img_size
        self.out_channels = dec[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"the masker was built for {self.img_size}x{self.img_size} images, "
                             f"got {tuple(x.shape[-2:])}: set method_kwargs.img_size (or the "
                             "augmentations' crop_size) to the training crop size")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            if i < len(self.down) - 1:
                x = F.interpolate(x, scale_factor=0.5, mode="nearest")
        x = self.bottleneck(x).view(x.shape[0], -1, self.feature_size, self.feature_size)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips[-1 - i]], dim=1))
            if i < len(self.up) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x


class MaskingNetwork(nn.Module):
    """ADIOS masker: ``(B, 3, S, S)`` images -> ``(B, N, S, S)`` soft masks summing to 1 per pixel.

    Args:
        img_size: side of the (square) training crops, in pixels.
        num_masks: N, the number of masks.
        fbase: base width of the UNet (``mask_fbase`` in the paper's configs).
        norm: ``"gn"`` (GroupNorm, 8 groups), ``"in"`` (InstanceNorm) or ``"none"``.
        num_blocks: UNet depth; default from ``img_size`` (:func:`unet_depth`).
    """

    def __init__(self, img_size: int, num_masks: int = 6, fbase: int = 32, norm: str = "gn",
                 num_blocks: int | None = None, in_channels: int = 3):
        super().__init__()
        if num_masks < 1:
            raise ValueError(f"num_masks (N) must be >= 1, got {num_masks}")
        self.unet = UNet(img_size, fbase, norm, in_channels, num_blocks)
        self.head = nn.Conv2d(self.unet.out_channels, num_masks, kernel_size=1)
        self.num_masks = num_masks
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.unet(x))
        # float32 at least, also under autocast (as CUDA autocast does for softmax): in
        # bfloat16 a mask value of 0.999 is already 1.0, so a mask would hide its pixels
        # entirely and the sparsity penalty would see fractions of exactly 0 or 1
        return torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
