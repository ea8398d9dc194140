"""A split's test/train images: the file listing, the decoded and resized images, and their cache.

``data/<split>/<class>/<domain>__<image>`` (what :mod:`adios_ssl.split` writes) is listed in
ImageFolder order; images become ``(N, 3, size, size)`` uint8 tensors (shorter side resized,
centre crop), normalised with ImageNet's mean/std (solo-learn's ``custom`` normalisation) only
when fed to a network.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEPARATOR = "__"


def list_split(data: Path, split: str) -> Tuple[List[Path], np.ndarray, List[str], List[str]]:
    """``(paths, labels, domains, classes)`` of ``data/<split>`` (ImageFolder order: classes
    sorted, files sorted within a class)."""
    root = Path(data) / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: --data is the folder adios_ssl.split wrote")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels, domains = [], [], []
    for index, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.name.startswith("."):
                continue
            if SEPARATOR not in path.name:
                raise ValueError(f"{path}: expected <domain>{SEPARATOR}<image> file names")
            paths.append(path)
            labels.append(index)
            domains.append(path.name.split(SEPARATOR, 1)[0])
    if not paths:
        raise FileNotFoundError(f"{root} holds no images")
    return paths, np.asarray(labels, dtype=np.int64), domains, classes


def load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` uint8: shorter side resized to ``size`` (bilinear, antialiased
    as torchvision's ``Resize``), centre crop."""
    from PIL import Image
    from torchvision.transforms import functional as F

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            img = img.convert("RGB")
            img = F.center_crop(F.resize(img, size), size)
            out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def cached_images(data: Path, size: int, cache: Optional[Path]) -> Dict[str, dict]:
    """``{split: {"images", "labels", "domains", "names"}}`` for train and test, read from /
    written to ``cache`` (keyed by the split's file list and the size)."""
    splits = {}
    for split in ("train", "test"):
        paths, labels, domains, classes = list_split(data, split)
        splits[split] = {"paths": paths, "labels": labels, "domains": domains, "classes": classes,
                         "names": [f"{p.parent.name}/{p.name}" for p in paths]}
    if splits["train"]["classes"] != splits["test"]["classes"]:
        raise ValueError(f"{data}: train and test have different classes")
    key = {"size": size, "names": {s: splits[s]["names"] for s in splits}}
    if cache is not None and Path(cache).exists():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if json.loads(saved["key"]) == key:
            for s in splits:
                splits[s]["images"] = saved[s]
            return splits
    for s in splits:
        splits[s]["images"] = load_images(splits[s]["paths"], size)
    if cache is not None:
        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save({"key": json.dumps(key), **{s: splits[s]["images"] for s in splits}}, tmp)
        tmp.replace(cache)
    return splits


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 images as float network inputs: scaled to [0, 1], then ImageNet's
    mean subtracted and divided by its std per channel."""
    x = images.float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
