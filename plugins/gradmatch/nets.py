"""Small networks used by the demo, tests and benchmarks."""
from __future__ import annotations

from torch import nn


class SpriteCNN(nn.Sequential):
    """The official Fish CdSprites classifier shape (4x4 stride-2 convs + ReLU, then a linear head).

    Input ``(B, C, R, R)`` with ``R`` a power of two >= 16; output logits ``(B, num_classes)``.
    Stride-2 convs halve ``R`` down to 4, then a 4x4 valid conv maps to a 1x1 map of 128 features.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3, image_size: int = 32, width: int = 32):
        if image_size < 16 or image_size & (image_size - 1):
            raise ValueError(f"SpriteCNN needs a power-of-two image_size >= 16, got {image_size}")
        layers, channels, size = [], in_channels, image_size
        widths = [width, width, 2 * width, 2 * width, 2 * width]
        i = 0
        while size > 4:
            layers += [nn.Conv2d(channels, widths[min(i, 4)], 4, 2, 1), nn.ReLU(inplace=True)]
            channels, size, i = widths[min(i, 4)], size // 2, i + 1
        layers += [nn.Conv2d(channels, 4 * width, 4, 1, 0), nn.ReLU(inplace=True), nn.Flatten(),
                   nn.Linear(4 * width, num_classes)]
        super().__init__(*layers)
