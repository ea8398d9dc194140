"""CdSprites-N as a real ``WILDSDataset``: the same runner, grouper and ``eval`` as WILDS data.

Metadata fields: ``domain`` (the palette's training domain, 0..N-1; Fish's domains on train),
``color_swap`` (1 where the image wears the colour its domain pairs with the other shape:
only on the colour-shuffled ``val``/``test`` splits), ``y`` (0 = square, 1 = ellipse), plus
WILDS' own ``from_source_domain``. Splits: ``train``, ``id_val`` (colour-aligned, like train),
``val`` and ``test`` (pairing broken: colour is uninformative).
"""
from __future__ import annotations

import numpy as np
import torch
from wilds.common.grouper import CombinatorialGrouper
from wilds.common.metrics.all_metrics import Accuracy
from wilds.datasets.wilds_dataset import WILDSDataset

from ..cdsprites import colourise, generate_cdsprites
from .compat import ensure_torch_scatter

SPLITS = ("train", "id_val", "val", "test")


class CdSpritesNDataset(WILDSDataset):
    """Procedural CdSprites-N; inputs are float32 ``(3, R, R)`` images in [0, 1].

    Args:
        root_dir: only recorded as ``data_dir`` (nothing is read or written).
        download: ignored (nothing to download); accepted for ``wilds.get_dataset`` parity.
        num_domains: N, the number of training domains (colour pairings).
        per_domain, num_val, num_test, num_id_val, image_size, seed: see
            :func:`gradmatch.cdsprites.generate_cdsprites`.
    """

    _dataset_name = "cdsprites"
    _versions_dict = {"1.0": {"download_url": None, "compressed_size": None}}

    def __init__(self, root_dir: str = ".", download: bool = False, split_scheme: str = "official",
                 num_domains: int = 15, per_domain: int = 1000, num_val: int = 2000,
                 num_test: int = 2000, num_id_val: int = 1000, image_size: int = 32, seed: int = 0):
        if split_scheme != "official":
            raise ValueError(f"CdSprites-N has only split_scheme='official', got {split_scheme!r}")
        self._version = "1.0"
        self._split_scheme = split_scheme
        self._data_dir = str(root_dir)
        data = generate_cdsprites(num_domains, per_domain, num_val, num_test, num_id_val,
                                  image_size, seed)
        self.palette = torch.from_numpy(data["palette"])
        self.num_domains = num_domains
        self.image_size = image_size
        parts = [data[name] for name in SPLITS]
        self._split_dict = {name: i for i, name in enumerate(SPLITS)}
        self._split_names = {"train": "Train", "id_val": "Validation (ID)",
                             "val": "Validation (OOD)", "test": "Test (OOD)"}
        self._split_array = torch.cat([torch.full((len(p.labels),), i, dtype=torch.long)
                                       for i, p in enumerate(parts)]).numpy()
        self._masks = torch.from_numpy(np.concatenate([p.masks for p in parts]))
        self._y_array = torch.cat([torch.from_numpy(p.labels) for p in parts])
        self._colour_index = torch.cat([torch.from_numpy(p.colour_index) for p in parts])
        self._y_size = 1
        self._n_classes = 2
        self._metadata_fields = ["domain", "color_swap", "y"]
        self._metadata_array = torch.stack([
            torch.cat([torch.from_numpy(p.palette_domain) for p in parts]),
            torch.cat([torch.from_numpy(p.color_swap) for p in parts]),
            self._y_array,
        ], dim=1)
        self._metadata_map = {"color_swap": ["aligned", "swapped"], "y": ["square", "ellipse"]}
        self._eval_grouper = CombinatorialGrouper(self, ["color_swap"])
        super().__init__(root_dir, download, split_scheme)

    def get_input(self, idx: int) -> torch.Tensor:
        """Float32 ``(3, R, R)``: the sprite coverage times its palette colour."""
        colour = self.palette[self._metadata_array[idx, 0], self._colour_index[idx]]
        return torch.from_numpy(colourise(self._masks[idx].numpy(), colour.numpy()))

    def eval(self, y_pred: torch.Tensor, y_true: torch.Tensor, metadata: torch.Tensor,
             prediction_fn=None):
        """Accuracy overall (``acc_avg``), on colour-aligned and colour-swapped images, and the
        worst of the two (``acc_wg``); a model that reads colour scores ~1 and ~0 on those."""
        ensure_torch_scatter()
        return self.standard_group_eval(Accuracy(prediction_fn=prediction_fn), self._eval_grouper,
                                        y_pred, y_true, metadata)
