"""What the solo-learn test modules share: a small image folder and the command that runs one of
the checkout's scripts on the shipped configs."""
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np


def write_images(root: Path, counts: Dict[str, int], classes: int = 6, size: int = 64) -> Path:
    """``root/<split>/class<c>/<i>.png`` for each split in ``counts`` (images per class): a
    coloured square (the class's colour) on noise. Deterministic (one generator, splits in
    order)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 60).astype(np.uint8)
                y, x = rng.integers(4, 36, 2)
                side = rng.integers(12, 26)
                pixels[y:y + side, x:x + side] = (40 * c, 255 - 40 * c, 120)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def solo_command(checkout: Path, script: str, config: str, *overrides: str) -> List[str]:
    """``python <checkout>/<script> --config-path pkg://adios_ssl.configs --config-name <config> ...``"""
    return [sys.executable, str(checkout / script), "--config-path", "pkg://adios_ssl.configs",
            "--config-name", config, *overrides]


def checkout_or_skip() -> Path:
    """The solo-learn checkout, or skip the calling test module (with the reason) where there is
    none or the `solo` extra is missing."""
    import pytest

    from adios_ssl.sololearn.locate import SoloLearnNotFound, find_checkout

    try:
        checkout = find_checkout()
        import hydra  # noqa: F401
        import lightning  # noqa: F401
    except (SoloLearnNotFound, ImportError) as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"solo-learn plugin tests need a solo-learn checkout and the `solo` extra: "
                    f"{err}", allow_module_level=True)
    return checkout


def build_method(checkout: Path, images: Path, config: str, *overrides: str):
    """``(model, cfg)``: a solo-learn method built as main_pretrain.py builds it from a shipped
    config (same Hydra composition, ``parse_cfg``, ADIOS registered), training on ``images/train``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from adios_ssl.sololearn.register import register

    register()
    with initialize_config_module("adios_ssl.configs", version_base="1.2"):
        cfg = compose(config, overrides=[f"data.train_path={images / 'train'}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg = parse_cfg(cfg)
    return METHODS[cfg.method](cfg), cfg
