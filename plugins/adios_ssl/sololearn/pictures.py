"""A Lightning callback that saves, every epoch, a PNG grid of training images with their masks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch

from ..render import method_label, save_mask_grid
from .record import run_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MaskPictures(pl.Callback):
    """Every ``every_n_epochs`` epochs, writes ``masks/masks-ep=<E>.png`` next to solo-learn's
    checkpoints (``<checkpoint.dir>/<method>/<version>/``; ``<default_root_dir>/masks`` when
    there is no solo-learn ``Checkpointer``): the first ``num_images`` masked views of the
    epoch's first batch, their N masks, and the partition (each pixel coloured by its
    strongest mask), computed by the masker at the end of the epoch."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8,
                 dirpath: Optional[str] = None):
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("mask_pictures: every_n_epochs and num_images must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.dirpath = dirpath
        self._images: Optional[torch.Tensor] = None
        self.last_path: Optional[Path] = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Sequence[Any], batch_idx: int) -> None:
        if batch_idx == 0:
            self._images = batch[1][1][: self.num_images].detach().float().cpu().clone()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (self._images is None or not trainer.is_global_zero
                or (epoch + 1) % self.every_n_epochs):
            return
        masker = pl_module.masker
        with torch.no_grad():
            param = next(masker.parameters())
            masks = masker(self._images.to(param.device, param.dtype)).float().cpu()
        mean, std = _normalisation(pl_module)
        images = (self._images * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)
        path = self._folder(trainer) / f"masks-ep={epoch}.png"
        save_mask_grid(images, masks, path, title=picture_title(pl_module, epoch))
        self.last_path = path

    def _folder(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return run_folder(trainer) / "masks"


def picture_title(pl_module: pl.LightningModule, epoch: int) -> str:
    """``"SimCLR + ADIOS: masks after epoch 3 (first training crops of the epoch)"``."""
    return (f"{method_label(type(pl_module).__name__)}: the masker's masks after epoch {epoch} "
            "(first training crops of the epoch)")


def _normalisation(pl_module: pl.LightningModule):
    """The first augmentation pipeline's mean/std (ImageNet's when the config has none)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    cfg = getattr(pl_module, "cfg", None)
    try:
        pipeline = cfg.augmentations[0]
        mean = tuple(pipeline.get("mean", mean))
        std = tuple(pipeline.get("std", std))
    except (AttributeError, IndexError, TypeError, KeyError):
        pass
    return torch.tensor(mean), torch.tensor(std)
