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

The parts live in :mod:`adios_ssl.probing` (images and their cache, backbone, probes, the
end-to-end probe, mask pictures); this module is the command line and re-exports their names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from runkit.jsonio import write_json

from .probing.backbone import build_backbone, crop_size, load_backbone, run_args
from .probing.classifiers import (
    KNN_K,
    LINEAR_C,
    LINEAR_MAX_ITER,
    accuracies,
    knn_predictions,
    linear_predictions,
    probe_features,
)
from .probing.evaluate import extract, probe
from .probing.images import IMAGENET_MEAN, IMAGENET_STD, SEPARATOR, cached_images, list_split, load_images, normalise
from .probing.masks import masks_picture, picture_rows

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "KNN_K", "LINEAR_C", "LINEAR_MAX_ITER", "SEPARATOR",
    "accuracies", "build_backbone", "cached_images", "crop_size", "extract", "knn_predictions",
    "linear_predictions", "list_split", "load_backbone", "load_images", "main", "masks_picture",
    "normalise", "picture_rows", "probe", "probe_features", "run_args",
]


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
        if args.ckpt.strip().lower() == "none":
            parser.error("--ckpt none has no masker and no mask generator: pass a solo-learn "
                         "checkpoint of an ADIOS or fixed-mask run (or its folder)")
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
