"""Frozen-feature probes of a solo-learn checkpoint on a held-out split, and mask pictures.

``python -m adios_ssl.probe --data SPLIT --ckpt CKPT --out probe.json``

``SPLIT`` is a folder with ``train/`` and ``test/`` ImageFolder trees whose files are named
``<domain>__<image>`` (what :mod:`adios_ssl.split` writes). The backbone is rebuilt as
solo-learn's ``main_linear.py`` does (``BaseMethod._BACKBONES[backbone.name]``, the ResNet's
``fc`` removed, its CIFAR stem for the CIFAR datasets), from the run's ``args.json`` next to the
checkpoint, and loaded with every ``backbone.*`` weight (a missing key is an error). ``--ckpt
none`` probes a randomly initialised backbone (``--backbone``, ``--seed``): the floor any
pretraining should beat.

Every image is resized (shorter side) to the pretraining crop size and centre-cropped, then
normalised with ImageNet's mean/std (solo-learn's ``custom`` normalisation); features are the
backbone's pooled output in eval mode (BatchNorm running statistics). Two probes, with fixed
settings (the same for every checkpoint, nothing tuned on the test split):

- linear: ``StandardScaler`` then ``LogisticRegression(C=1.0, lbfgs, max_iter=1000)`` fitted on
  the train features, scored on the test features;
- k-NN: cosine similarity on L2-normalised features, ``k=20`` nearest train images, majority
  vote (``KNeighborsClassifier(metric="cosine", algorithm="brute")``).

The JSON holds top-1 accuracy (%) overall and per domain for both probes, sizes and timings.
``--image-cache FILE`` keeps the decoded, resized images (uint8) to share between probes of
the same split and size.

``python -m adios_ssl.probe masks --data SPLIT --ckpt CKPT --out masks.png`` draws test images
with the masks the run's masker gives them (or, for a baseline run, fresh masks of its fixed
generator), through :func:`adios_ssl.render.save_mask_grid`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from runkit.jsonio import write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEPARATOR = "__"
LINEAR_C = 1.0
LINEAR_MAX_ITER = 1000
KNN_K = 20


# ----------------------------------------------------------------------------- data

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
    x = images.float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- backbone

def run_args(ckpt: Path) -> dict:
    """The solo-learn ``args.json`` of a checkpoint (next to it, or next to its symlink's
    target)."""
    for folder in (Path(ckpt).parent, Path(ckpt).resolve().parent):
        if (folder / "args.json").is_file():
            return json.loads((folder / "args.json").read_text())
    raise FileNotFoundError(f"no args.json next to {ckpt} (solo-learn writes one per run)")


def crop_size(args: dict, default: int = 224) -> int:
    try:
        return int(args["augmentations"][0]["crop_size"])
    except (KeyError, IndexError, TypeError):
        return default


def build_backbone(name: str, kwargs: Optional[dict] = None, method: Optional[str] = None,
                   dataset: Optional[str] = None) -> torch.nn.Module:
    """The backbone as solo-learn's ``main_linear.py`` builds it (its ResNets are torchvision's,
    built here without importing solo-learn; the others come from ``BaseMethod._BACKBONES``)."""
    import torch.nn as nn

    if name in ("resnet18", "resnet50"):
        import torchvision

        backbone = getattr(torchvision.models, name)(**(kwargs or {}))
    else:
        from .sololearn.locate import ensure_importable

        ensure_importable()
        from solo.methods.base import BaseMethod

        if name not in BaseMethod._BACKBONES:
            raise ValueError(f"backbone {name!r}: solo-learn has {sorted(BaseMethod._BACKBONES)}")
        backbone = BaseMethod._BACKBONES[name](method=method, **(kwargs or {}))
    if name.startswith("resnet"):
        backbone.fc = nn.Identity()
        if dataset in ("cifar10", "cifar100"):
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            backbone.maxpool = nn.Identity()
    return backbone


def load_backbone(ckpt: Optional[Path], backbone: str = "resnet18", seed: int = 0
                  ) -> Tuple[torch.nn.Module, dict]:
    """``(backbone, run args)``: the checkpoint's backbone, or (``ckpt`` None) a random one."""
    if ckpt is None:
        torch.manual_seed(seed)
        return build_backbone(backbone), {"backbone": {"name": backbone}, "method": None}
    args = run_args(ckpt)
    bb = args.get("backbone", {})
    model = build_backbone(bb.get("name", backbone), bb.get("kwargs") or {}, args.get("method"),
                           args.get("data", {}).get("dataset"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{ckpt}: backbone keys missing {missing[:5]} / unexpected "
                           f"{unexpected[:5]} ({len(missing)} / {len(unexpected)})")
    return model, args


@torch.no_grad()
def extract(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    backbone.eval()
    feats = [backbone(normalise(images[i:i + batch_size])).float()
             for i in range(0, len(images), batch_size)]
    return torch.cat(feats).flatten(1).numpy().astype(np.float64)


# ----------------------------------------------------------------------------- probes

def linear_predictions(train_x, train_y, test_x, C: float = LINEAR_C,
                       max_iter: int = LINEAR_MAX_ITER) -> Tuple[np.ndarray, dict]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    info = {"C": C, "max_iter": max_iter, "n_iter": int(np.max(clf.n_iter_)), "converged": converged}
    return clf.predict(scaler.transform(test_x)), info


def knn_predictions(train_x, train_y, test_x, k: int = KNN_K) -> Tuple[np.ndarray, dict]:
    from sklearn.neighbors import KNeighborsClassifier

    k = min(k, len(train_x))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
    return clf.predict(test_x), {"k": k, "metric": "cosine", "weights": "uniform"}


def accuracies(pred: np.ndarray, labels: np.ndarray, domains: Sequence[str]) -> dict:
    """Top-1 accuracy (%) overall and per domain."""
    correct = np.asarray(pred) == np.asarray(labels)
    domains = np.asarray(domains)
    return {"overall": float(100 * correct.mean()),
            "per_domain": {d: float(100 * correct[domains == d].mean()) for d in sorted(set(domains))},
            "n": int(len(correct))}


def probe_features(train_x, train_y, test_x, test_y, test_domains, C: float = LINEAR_C,
                   max_iter: int = LINEAR_MAX_ITER, k: int = KNN_K) -> dict:
    """Both probes on given features: ``{"linear": {...}, "knn": {...}}``."""
    out = {}
    start = time.process_time()
    pred, info = linear_predictions(train_x, train_y, test_x, C, max_iter)
    out["linear"] = dict(accuracies(pred, test_y, test_domains), **info,
                         cpu_seconds=time.process_time() - start)
    start = time.process_time()
    pred, info = knn_predictions(train_x, train_y, test_x, k)
    out["knn"] = dict(accuracies(pred, test_y, test_domains), **info,
                      cpu_seconds=time.process_time() - start)
    return out


def probe(data: Path, ckpt: Optional[Path], size: Optional[int] = None, backbone: str = "resnet18",
          seed: int = 0, image_cache: Optional[Path] = None, C: float = LINEAR_C,
          max_iter: int = LINEAR_MAX_ITER, k: int = KNN_K) -> dict:
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


# ----------------------------------------------------------------------------- masks

def picture_rows(domains: Sequence[str], per_domain: int = 2, seed: int = 0) -> List[int]:
    """Indexes of ``per_domain`` test images of each domain (seeded, domains sorted)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in sorted(set(domains)):
        idx = [i for i, x in enumerate(domains) if x == d]
        rows += sorted(rng.choice(idx, size=min(per_domain, len(idx)), replace=False).tolist())
    return rows


def masks_picture(data: Path, ckpt: Path, out: Path, per_domain: int = 2, seed: int = 0,
                  image_cache: Optional[Path] = None) -> Path:
    """Test images with the run's masks: its masker's (adversarial) or its generator's."""
    from .baselines import BASELINE_MASKS
    from .masker import MaskingNetwork
    from .render import method_label, save_mask_grid

    args = run_args(ckpt)
    kw = args.get("method_kwargs", {})
    if not str(args.get("method", "")).endswith("_adios"):
        raise ValueError(f"{ckpt}: method {args.get('method')!r} masks nothing (not an ADIOS run)")
    size = crop_size(args)
    splits = cached_images(data, size, image_cache)
    rows = picture_rows(splits["test"]["domains"], per_domain, seed)
    images = splits["test"]["images"][rows]
    generator = kw.get("mask_generator", "adversarial")
    if generator == "adversarial":
        masker = MaskingNetwork(int(kw.get("img_size") or size), int(kw["N"]), int(kw["mask_fbase"]),
                                kw.get("unet_norm", "gn"), kw.get("unet_blocks"))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        masker.load_state_dict({k[len("masker."):]: v for k, v in state.items()
                                if k.startswith("masker.")})
        masker.eval()
        with torch.no_grad():
            masks = masker(normalise(images)).float()
        title = (f"{method_label(str(args.get('method')))}: the trained masker's masks on "
                 f"held-out test images ({per_domain} per domain)")
    else:
        gen = torch.Generator().manual_seed(seed)
        ratio = kw.get("mask_ratio")
        masks = BASELINE_MASKS[generator](len(rows), size, generator=gen,
                                          **({} if ratio is None else {"ratio": float(ratio)}))
        base = method_label(str(args.get("method")).removesuffix("_adios"))
        title = (f"{base} with {generator} masks (a fixed generator, not trained) on held-out "
                 f"test images ({per_domain} per domain)")
    return save_mask_grid(images.float() / 255, masks, out, title=title)


# ----------------------------------------------------------------------------- CLI

def _ckpt(value: str) -> Optional[Path]:
    if value.lower() == "none":
        return None
    path = Path(value)
    if path.is_dir():
        found = sorted(path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no .ckpt under {path}")
        return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    from .quiet import quiet_known_warnings

    quiet_known_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "masks":
        parser = argparse.ArgumentParser(prog="python -m adios_ssl.probe masks")
        parser.add_argument("--data", required=True, type=Path)
        parser.add_argument("--ckpt", required=True)
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--per-domain", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--image-cache", type=Path, default=None)
        args = parser.parse_args(argv[1:])
        path = masks_picture(args.data, _ckpt(args.ckpt), args.out, args.per_domain, args.seed,
                             args.image_cache)
        print(f"wrote {path}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m adios_ssl.probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with train/ and test/")
    parser.add_argument("--ckpt", required=True,
                        help="solo-learn checkpoint (or a folder: its newest .ckpt), or 'none'")
    parser.add_argument("--out", required=True, type=Path, help="JSON written here")
    parser.add_argument("--size", type=int, default=None, help="default: the run's crop size")
    parser.add_argument("--backbone", default="resnet18", help="for --ckpt none")
    parser.add_argument("--seed", type=int, default=0, help="initialisation for --ckpt none")
    parser.add_argument("--image-cache", type=Path, default=None)
    parser.add_argument("--C", type=float, default=LINEAR_C)
    parser.add_argument("--max-iter", type=int, default=LINEAR_MAX_ITER)
    parser.add_argument("--k", type=int, default=KNN_K)
    parser.add_argument("--label", default=None, help="stored in the JSON")
    parser.add_argument("--masks", type=Path, default=None,
                        help="also draw the run's masks on test images into this PNG")
    args = parser.parse_args(argv)
    ckpt = _ckpt(args.ckpt)
    result = probe(args.data, ckpt, args.size, args.backbone, args.seed,
                   args.image_cache, args.C, args.max_iter, args.k)
    result["label"] = args.label
    if args.masks is not None and ckpt is not None:
        result["masks_picture"] = str(masks_picture(args.data, ckpt, args.masks,
                                                    image_cache=args.image_cache))
    write_json(args.out, result)
    print(f"{args.label or args.ckpt}: linear {result['linear']['overall']:.1f} %, "
          f"k-NN {result['knn']['overall']:.1f} % ({result['n_test']} test images); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
