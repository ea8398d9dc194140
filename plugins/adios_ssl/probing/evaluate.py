"""One checkpoint probed end to end: its backbone, the split's features, both probes, the record.

Features are the backbone's pooled output in eval mode (BatchNorm running statistics) on the
normalised images, as ``(N, D)`` float64 arrays; the record is what ``python -m adios_ssl.probe``
writes (accuracies in %, sizes, CPU seconds).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .backbone import crop_size, load_backbone
from .classifiers import KNN_K, LINEAR_C, LINEAR_MAX_ITER, probe_features
from .images import cached_images, normalise


@torch.no_grad()
def extract(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``(N, D)`` float64 features of ``(N, 3, H, W)`` uint8 images (eval mode, batches of
    ``batch_size``)."""
    backbone.eval()
    feats = [backbone(normalise(images[i:i + batch_size])).float()
             for i in range(0, len(images), batch_size)]
    return torch.cat(feats).flatten(1).numpy().astype(np.float64)


def probe(data: Path, ckpt: Optional[Path], size: Optional[int] = None, backbone: str = "resnet18",
          seed: int = 0, image_cache: Optional[Path] = None, C: float = LINEAR_C,
          max_iter: int = LINEAR_MAX_ITER, k: int = KNN_K) -> dict:
    """The probe record of ``ckpt`` (None: a random ``backbone`` seeded with ``seed``) on the
    split ``data``, its images at ``size`` px (default: the run's crop size)."""
    start = time.process_time()
    model, args = load_backbone(ckpt, backbone, seed)
    size = size or crop_size(args)
    splits = cached_images(data, size, image_cache)
    images_s = time.process_time() - start
    feats = {s: extract(model, splits[s]["images"]) for s in splits}
    features_s = time.process_time() - start - images_s
    result = probe_features(feats["train"], splits["train"]["labels"], feats["test"],
                            splits["test"]["labels"], splits["test"]["domains"], C, max_iter, k)
    result.update({
        "ckpt": None if ckpt is None else str(ckpt), "method": args.get("method"),
        "backbone": args.get("backbone", {}).get("name", backbone), "size": size,
        "feature_dim": int(feats["train"].shape[1]), "classes": splits["train"]["classes"],
        "n_train": len(splits["train"]["labels"]), "n_test": len(splits["test"]["labels"]),
        "test_per_domain": {d: splits["test"]["domains"].count(d)
                            for d in sorted(set(splits["test"]["domains"]))},
        "cpu_seconds": {"load": images_s, "features": features_s,
                        "total": time.process_time() - start},
    })
    return result
