"""The networks of the WILDS presets, by name (``Preset.model``): ``MODELS[name](num_outputs,
pretrained, allow_download, dataset) -> nn.Module`` mapping a batch of the dataset's inputs to
logits ``(B, num_outputs)``.

Nothing downloads implicitly: pretrained weights must be in the torch hub / Hugging Face cache
unless ``allow_download``; a missing file raises :class:`MissingPretrainedWeights`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

HF_MODEL_ID = "distilbert-base-uncased"  # fish:src/models/amazon.py:57, civil.py:57
TEXT_EXTRA_HINT = "pip install gradmatch-adios[text]"

ModelBuilder = Callable[..., nn.Module]


class MissingPretrainedWeights(FileNotFoundError):
    """Pretrained weights (or a tokenizer) are not on disk and downloading was not allowed."""


def _import_transformers():
    """``transformers``, or an ImportError naming the optional extra that installs it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the DistilBERT presets (amazon, civilcomments) need Hugging Face transformers: "
            + TEXT_EXTRA_HINT
        ) from e
    return transformers


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache that ``from_pretrained`` reads (``HF_HUB_CACHE``/``HF_HOME``)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def torchvision_checkpoint_path(weights: torchvision.models.WeightsEnum) -> str:
    """Where torchvision looks for ``weights`` before downloading: ``<hub dir>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


def _imagenet_backbone(arch: str, pretrained: bool, allow_download: bool) -> nn.Module:
    """torchvision ``arch`` with its 1000-class head, ImageNet-1k V1 weights if ``pretrained``.

    V1 is what the official ``pretrained=True`` loads.
    """
    builder = getattr(torchvision.models, arch)
    if not pretrained:
        return builder(weights=None)
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    path = torchvision_checkpoint_path(weights)
    if not (allow_download or os.path.isfile(path)):
        raise MissingPretrainedWeights(
            f"ImageNet weights for {arch} are not in the torch hub cache: expected {path} "
            f"(from {weights.url}). Put the file there, or pass --no-pretrained to train from "
            "scratch, or --download to let torchvision fetch it."
        )
    return builder(weights=weights)


def _densenet121(num_outputs: int, pretrained: bool, allow_download: bool, dataset: Any = None) -> nn.Module:
    """DenseNet-121 with a fresh ``Linear(1024, num_outputs)`` head; (B, 3, H, W) -> (B, num_outputs)."""
    net = _imagenet_backbone("densenet121", pretrained, allow_download)
    net.classifier = nn.Linear(net.classifier.in_features, num_outputs)  # fish:src/models/fmow.py:23
    return net


def _resnet50(num_outputs: int, pretrained: bool, allow_download: bool, dataset: Any = None) -> nn.Module:
    """ResNet-50 with a fresh ``Linear(2048, num_outputs)`` head; (B, 3, H, W) -> (B, num_outputs)."""
    net = _imagenet_backbone("resnet50", pretrained, allow_download)
    net.fc = nn.Linear(net.fc.in_features, num_outputs)  # fish:src/models/iwildcam.py:22
    return net


def _resnet18_ms(num_outputs: int, pretrained: bool, allow_download: bool, dataset: Any = None) -> nn.Module:
    """ResNet-18 with an 8-band stem (Poverty: 7 Landsat bands + nightlights), from scratch.

    (B, 8, H, W) -> (B, num_outputs). Same layout and init as fish:src/models/resnet_multispectral.py.
    """
    if pretrained:
        raise ValueError(
            "resnet18_ms has no pretrained weights; the official Poverty model trains from scratch")
    net = torchvision.models.resnet18(weights=None, num_classes=num_outputs)
    net.conv1 = nn.Conv2d(8, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


class DistilBertClassifier(nn.Module):
    """Hugging Face DistilBERT sequence classifier on WILDS text tensors.

    Input ``x``: (B, L, 2) integer tensor, ``x[..., 0]`` token ids and ``x[..., 1]`` the
    attention mask (what :func:`build_transform` produces). Output: logits (B, num_labels).
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x[..., 0], attention_mask=x[..., 1]).logits


def _distilbert(num_outputs: int, pretrained: bool, allow_download: bool, dataset: Any = None) -> nn.Module:
    """``distilbert-base-uncased`` classifier (random init from its default config if not pretrained)."""
    transformers = _import_transformers()
    if not pretrained:
        config = transformers.DistilBertConfig(num_labels=num_outputs)
        return DistilBertClassifier(transformers.DistilBertForSequenceClassification(config))
    try:
        hf = transformers.DistilBertForSequenceClassification.from_pretrained(
            HF_MODEL_ID, num_labels=num_outputs, local_files_only=not allow_download)
    except OSError as e:
        raise MissingPretrainedWeights(
            f"{HF_MODEL_ID} weights are not in the Hugging Face cache ({_hf_cache_dir()}). Put them "
            "there, or pass --no-pretrained to train from scratch, or --download to fetch them."
        ) from e
    return DistilBertClassifier(hf)


def _sprite_cnn(num_outputs: int, pretrained: bool, allow_download: bool, dataset: Any = None) -> nn.Module:
    """The official CdSprites CNN (:class:`gradmatch.nets.SpriteCNN`) for the dataset's image size."""
    from ..nets import SpriteCNN

    if pretrained:
        raise ValueError("sprite_cnn has no pretrained weights")
    return SpriteCNN(num_outputs, image_size=getattr(dataset, "image_size", 32))


#: name -> ``builder(num_outputs, pretrained, allow_download, dataset) -> nn.Module``
MODELS: Dict[str, ModelBuilder] = {
    "densenet121": _densenet121,
    "resnet50": _resnet50,
    "resnet18_ms": _resnet18_ms,
    HF_MODEL_ID: _distilbert,
    "sprite_cnn": _sprite_cnn,
}


def register_model(name: str, builder: ModelBuilder) -> None:
    """Make ``builder`` the model of any preset whose ``model`` is ``name``."""
    MODELS[name] = builder
