"""The input transforms of the WILDS presets, by name (``Preset.transform``):
``TRANSFORMS[name](preset, train, allow_download) -> callable or None`` (applied to x only, as
``dataset.get_subset(split, transform=...)`` does)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torchvision import transforms

from .models import HF_MODEL_ID, MissingPretrainedWeights, _hf_cache_dir, _import_transformers

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # fish:src/models/camelyon.py:36
IMAGENET_STD = (0.229, 0.224, 0.225)  # fish:src/models/camelyon.py:37

TransformBuilder = Callable[[Any, bool, bool], Optional[Callable]]


class PovertyAugment:
    """Poverty train-time augmentation of a normalised (8, H, W) image (bands B,G,R,SWIR1,SWIR2,TEMP1,NIR,NL).

    Random horizontal and vertical flips of all bands, then ColorJitter(0.8, 0.8, 0.8, 0.1)
    (fish:src/models/poverty.py:19-22) of the RGB bands in reflectance units: un-normalised with
    the dataset's band statistics, clipped to [0, 1], jittered, normalised back.

    choice: the official transform (copied from wilds 1.1) flips only the RGB bands and passes the
    normalised floats through ``ToPILImage`` (``x * 255`` cast to uint8, so negative values wrap),
    and it is applied to val/test too (fish:src/models/poverty.py:62). Here all bands flip together,
    RGB is jittered in reflectance units, and evaluation sees unaugmented images.
    """

    def __init__(self):
        from wilds.datasets.poverty_dataset import _MEANS_2009_17, _STD_DEVS_2009_17

        rgb = ("RED", "GREEN", "BLUE")
        self.mean = torch.tensor([_MEANS_2009_17[b] for b in rgb]).view(3, 1, 1)
        self.std = torch.tensor([_STD_DEVS_2009_17[b] for b in rgb]).view(3, 1, 1)
        self.flip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip()])
        self.jitter = transforms.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = self.flip(img).clone()
        rgb = (img[[2, 1, 0]] * self.std + self.mean).clamp(0, 1)  # stored BGR -> RGB reflectance
        img[[2, 1, 0]] = (self.jitter(rgb) - self.mean) / self.std
        return img


class BertTokenize:
    """text -> (max_length, 2) long tensor of [token ids, attention mask], padded and truncated."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(text, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return torch.stack((tokens["input_ids"], tokens["attention_mask"]), dim=2).squeeze(0)


def _imagenet_image(resize: bool) -> transforms.Compose:
    """PIL RGB image -> ImageNet-normalised (3, H, W) float tensor; (3, 224, 224) if ``resize``."""
    steps = [transforms.Resize((224, 224))] if resize else []
    normalise = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return transforms.Compose(steps + [transforms.ToTensor(), normalise])


def _bert(preset, train: bool, allow_download: bool) -> BertTokenize:
    """:class:`BertTokenize` with ``preset.max_token_length`` (tokenizer from the HF cache)."""
    transformers = _import_transformers()
    try:
        tokenizer = transformers.DistilBertTokenizerFast.from_pretrained(
            HF_MODEL_ID, local_files_only=not allow_download)
    except OSError as e:
        raise MissingPretrainedWeights(
            f"the {HF_MODEL_ID} tokenizer is not in the Hugging Face cache ({_hf_cache_dir()}); "
            "it is needed even with --no-pretrained. Put it there, or pass --download to fetch it."
        ) from e
    return BertTokenize(tokenizer, preset.max_token_length)


#: name -> ``builder(preset, train, allow_download)``. camelyon17: 96 px -> 224 px
#: (fish:src/models/camelyon.py:34); iwildcam: -> 224 px (fish:src/models/iwildcam.py:35); fmow:
#: 224 px as stored (fish:src/models/fmow.py:34-37); all three ImageNet-normalised, no
#: augmentation. poverty: the input is already a normalised tensor; :class:`PovertyAugment` when
#: training. Text: DistilBERT tokens. ``none``: the dataset's own tensors.
TRANSFORMS: Dict[str, TransformBuilder] = {
    "imagenet_224": lambda preset, train, allow_download: _imagenet_image(resize=True),
    "imagenet": lambda preset, train, allow_download: _imagenet_image(resize=False),
    "poverty": lambda preset, train, allow_download: PovertyAugment() if train else transforms.Compose([]),
    "bert": _bert,
    "none": lambda preset, train, allow_download: None,
}


def register_transform(name: str, builder: TransformBuilder) -> None:
    """Make ``builder`` the transform of any preset whose ``transform`` is ``name``."""
    TRANSFORMS[name] = builder
