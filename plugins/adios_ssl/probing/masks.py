"""A run's masks drawn on held-out test images: its trained masker's (adversarial) or, for a
baseline run, fresh masks of its fixed generator, through :func:`adios_ssl.render.save_mask_grid`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .backbone import crop_size, run_args
from .images import cached_images, normalise


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
    """Test images with the run's masks: its masker's (adversarial) or its generator's;
    ``per_domain`` images of each domain, written to the PNG ``out`` (returned)."""
    from ..baselines import BASELINE_MASKS
    from ..masker import MaskingNetwork
    from ..render import method_label, save_mask_grid

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
