"""A checkpoint's backbone rebuilt as solo-learn's ``main_linear.py`` builds it, with its weights.

``BaseMethod._BACKBONES[backbone.name]`` (torchvision's ResNets built directly), the ResNet's
``fc`` removed, its CIFAR stem for the CIFAR datasets, from the run's ``args.json`` next to the
checkpoint, loaded with every ``backbone.*`` weight (a missing key is an error); or a randomly
initialised one for ``ckpt`` None.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import torch


def run_args(ckpt: Path) -> dict:
    """The solo-learn ``args.json`` of a checkpoint (next to it, or next to its symlink's
    target)."""
    for folder in (Path(ckpt).parent, Path(ckpt).resolve().parent):
        if (folder / "args.json").is_file():
            return json.loads((folder / "args.json").read_text())
    raise FileNotFoundError(f"no args.json next to {ckpt} (solo-learn writes one per run)")


def crop_size(args: dict, default: int = 224) -> int:
    """The run's training crop size in pixels (its first augmentation pipeline's), else
    ``default``."""
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
        from ..sololearn.locate import ensure_importable

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
