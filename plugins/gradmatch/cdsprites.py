"""CdSprites-N, the Fish paper's synthetic shape/colour benchmark, generated procedurally.

White 2D sprites (squares and ellipses at varied scale, rotation and position, as in dSprites)
are coloured per domain: each of the N training domains has its own pair of colours, one per
shape, so within a domain colour predicts the label perfectly. Shape is the invariant feature,
colour the spurious one. On the held-out splits the pairing is broken: an image takes a colour
of a random training domain's palette, of either shape with probability 1/2, so colour carries
no information about the label.

Everything is a deterministic function of ``seed``: no files, no download. Framework-free;
``gradmatch.wilds.cdsprites`` wraps it as a ``WILDSDataset``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

SHAPES = ("square", "ellipse")


@dataclass(frozen=True)
class SpriteSplit:
    """One split: ``masks`` uint8 ``(M, R, R)`` in [0, 255] (sprite coverage per pixel),
    ``labels`` int64 ``(M,)`` (0 = square, 1 = ellipse), ``palette_domain`` int64 ``(M,)``
    (whose palette colours the image), ``color_swap`` int64 ``(M,)`` (1 if the image wears the
    colour its domain pairs with the *other* shape)."""

    masks: np.ndarray
    labels: np.ndarray
    palette_domain: np.ndarray
    color_swap: np.ndarray

    @property
    def colour_index(self) -> np.ndarray:
        """Index into the palette's second axis: the shape the colour is paired with."""
        return self.labels ^ self.color_swap


def make_palette(num_domains: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_domains, 2, 3)`` float32 RGB colours in [0, 1]: per domain one colour per shape.

    Hues are spread evenly over the colour wheel (shuffled), with random saturation and value,
    so all 2N colours are distinct and bright against the black background.
    """
    n = 2 * num_domains
    hues = (np.arange(n) + rng.uniform(0, 0.5, n)) / n
    rng.shuffle(hues)
    sat = rng.uniform(0.55, 1.0, n)
    val = rng.uniform(0.65, 1.0, n)
    return _hsv_to_rgb(hues, sat, val).reshape(num_domains, 2, 3).astype(np.float32)


def render_sprites(labels: np.ndarray, image_size: int, rng: np.random.Generator,
                   supersample: int = 2, chunk: int = 2048) -> np.ndarray:
    """Rasterise one random sprite per label: uint8 ``(M, R, R)`` coverage in [0, 255].

    Latents per sprite: half-size ``s ~ U(0.22, 0.45)`` of the unit half-width canvas,
    rotation ``~ U(0, 2 pi)``, centre uniform so the sprite stays on the canvas; ellipses have
    semi-axes ``(1.25 s, 0.7 s)``. Coverage is anti-aliased by ``supersample``^2 sub-pixels.
    """
    m = len(labels)
    scale = rng.uniform(0.22, 0.45, m)
    angle = rng.uniform(0, 2 * np.pi, m)
    reach = np.where(labels == 0, np.sqrt(2) * scale, 1.25 * scale)
    cx = rng.uniform(-1, 1, m) * (0.95 - reach)
    cy = rng.uniform(-1, 1, m) * (0.95 - reach)

    fine = image_size * supersample
    grid = (np.arange(fine) + 0.5) / fine * 2 - 1
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    out = np.empty((m, image_size, image_size), dtype=np.uint8)
    for start in range(0, m, chunk):
        sl = slice(start, min(start + chunk, m))
        dx = gx[None] - cx[sl, None, None]
        dy = gy[None] - cy[sl, None, None]
        cos, sin = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        u = cos * dx + sin * dy
        v = -sin * dx + cos * dy
        s = scale[sl, None, None]
        square = np.maximum(np.abs(u), np.abs(v)) <= s
        ellipse = (u / (1.25 * s)) ** 2 + (v / (0.7 * s)) ** 2 <= 1
        inside = np.where(labels[sl, None, None] == 0, square, ellipse).astype(np.float32)
        cover = inside.reshape(-1, image_size, supersample, image_size, supersample).mean((2, 4))
        out[sl] = np.round(cover * 255).astype(np.uint8)
    return out


def generate_cdsprites(num_domains: int = 15, per_domain: int = 1000, num_val: int = 2000,
                       num_test: int = 2000, num_id_val: int = 1000, image_size: int = 32,
                       seed: int = 0) -> Dict[str, object]:
    """All splits of CdSprites-N: ``{"palette": (N, 2, 3), "train"|"id_val"|"val"|"test": SpriteSplit}``.

    ``train`` has ``per_domain`` sprites in each of the ``num_domains`` domains (balanced labels,
    colour = the domain's colour for the sprite's shape). ``id_val`` is drawn the same way
    (in-distribution check). ``val`` and ``test`` break the pairing: random palette domain,
    ``color_swap ~ Bernoulli(1/2)``.
    """
    minimum = {"num_domains": 1, "per_domain": 2, "num_val": 1, "num_test": 1, "num_id_val": 1,
               "image_size": 8, "seed": 0}
    given = {"num_domains": num_domains, "per_domain": per_domain, "num_val": num_val,
             "num_test": num_test, "num_id_val": num_id_val, "image_size": image_size, "seed": seed}
    for name, low in minimum.items():  # the one value that is wrong, named
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            key = "data_seed" if name == "seed" else name
            raise ValueError(f"CdSprites-N: {key} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    palette = make_palette(num_domains, rng)
    splits: Dict[str, object] = {"palette": palette}

    def in_distribution(count: int, domains: np.ndarray) -> SpriteSplit:
        labels = rng.permutation(np.arange(count) % 2).astype(np.int64)
        return SpriteSplit(render_sprites(labels, image_size, rng), labels,
                           domains.astype(np.int64), np.zeros(count, dtype=np.int64))

    def colour_shuffled(count: int) -> SpriteSplit:
        labels = rng.permutation(np.arange(count) % 2).astype(np.int64)
        domains = rng.integers(0, num_domains, count)
        swap = rng.integers(0, 2, count)
        return SpriteSplit(render_sprites(labels, image_size, rng), labels,
                           domains.astype(np.int64), swap.astype(np.int64))

    splits["train"] = in_distribution(num_domains * per_domain,
                                      np.repeat(np.arange(num_domains), per_domain))
    splits["id_val"] = in_distribution(num_id_val, rng.integers(0, num_domains, num_id_val))
    splits["val"] = colour_shuffled(num_val)
    splits["test"] = colour_shuffled(num_test)
    return splits


def colourise(mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``(..., R, R)`` uint8 coverage and ``(..., 3)`` RGB -> float32 ``(..., 3, R, R)`` in [0, 1]."""
    cover = mask.astype(np.float32)[..., None, :, :] / 255.0
    return cover * colour[..., :, None, None]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns ``(n, 3)``."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    return table[i, np.arange(len(h))]
