"""The official Fish recipe for each WILDS dataset: hyperparameters, domains, models, transforms.

Every number carries its source in the official code (YugeTen/fish 333efa2) as
``# fish:<path>:<line>``. Deviations forced by wilds 2.0 or chosen here are marked ``# choice:``.

Nothing here downloads implicitly: pretrained weights, tokenizers and datasets must already be on
disk unless ``allow_download=True`` is passed.
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision import transforms

from .. import losses

HF_MODEL_ID = "distilbert-base-uncased"  # fish:src/models/amazon.py:57, civil.py:57
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # fish:src/models/camelyon.py:36
IMAGENET_STD = (0.229, 0.224, 0.225)  # fish:src/models/camelyon.py:37
TEXT_EXTRA_HINT = "pip install gradmatch-adios[text]"

# CivilComments identity attributes, in wilds 2.0 metadata order (civilcomments_dataset.py:94-103).
CIVIL_IDENTITY_FIELDS = (
    "male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")


@dataclass(frozen=True)
class Preset:
    """The official Fish hyperparameters for one WILDS dataset.

    Units: ``batch_size`` is examples per domain per inner step; ``meta_steps`` is the number of
    domains (= inner steps) per meta-step; the meta step size is ``meta_lr / meta_steps``
    (:attr:`meta_step_size`, ``Fish(step_size="official")``); ``erm_pretrain_iters`` counts ERM
    optimizer steps on random batches of ``batch_size`` before Fish starts (0 = none);
    ``epochs`` counts Fish epochs (an epoch ends when fewer than ``meta_steps`` domains have
    batches left); ``eval_every`` counts meta-steps (and ERM pre-training iterations) between
    evaluations, in addition to one evaluation at the end of every epoch (None = only then).

    Domains (:func:`fish_domains`): ``domain_scheme="combinatorial"`` makes every distinct
    value tuple of ``groupby_fields`` a domain (what ``CombinatorialGrouper`` computes).
    ``"identity_x_y"`` (CivilComments) makes ``groupby_fields[:-1]`` binary identity fields and
    ``groupby_fields[-1]`` the label: domains are {no identity, identity 1, ..., identity k} x y,
    overlapping where a comment mentions several identities (the official 18 groups).
    """

    dataset: str
    model: str
    pretrained: bool
    loss: str
    inner_optimizer: str
    optimizer_kwargs: Dict[str, Any] = field(hash=False)
    batch_size: int
    meta_lr: float
    meta_steps: int
    erm_pretrain_iters: int
    epochs: int
    selection_metric: str
    selection_split: str
    keep_last_checkpoint: bool
    groupby_fields: Tuple[str, ...]
    domain_scheme: str
    eval_every: Optional[int]
    reload_inner_optim: bool
    eval_batch_size: int
    dataset_kwargs: Dict[str, Any] = field(hash=False)
    max_token_length: Optional[int] = None

    @property
    def meta_step_size(self) -> float:
        """The official meta step ``eps = meta_lr / meta_steps`` (fish:src/main.py:179)."""
        return self.meta_lr / self.meta_steps


def _adam(lr: float) -> Dict[str, Any]:
    """Adam arguments of every official Adam preset: wd 0, amsgrad, betas (0.9, 0.999)."""
    return {"lr": lr, "weight_decay": 0.0, "amsgrad": True, "betas": (0.9, 0.999)}  # fish:src/config.py:9-11


PRESETS: Dict[str, Preset] = {
    "camelyon17": Preset(
        dataset="camelyon17",
        model="densenet121",
        pretrained=False,  # fish:src/models/camelyon.py:22
        loss="cross_entropy",  # fish:src/utils.py:127
        inner_optimizer="sgd",  # fish:src/config.py:23
        optimizer_kwargs={"lr": 1e-4, "momentum": 0.9, "weight_decay": 0.0},  # fish:src/config.py:25-27
        batch_size=32,  # fish:src/config.py:22
        meta_lr=0.01,  # fish:src/config.py:30
        meta_steps=3,  # fish:src/config.py:31
        erm_pretrain_iters=10000,  # fish:src/config.py:29
        epochs=20,  # fish:src/config.py:21
        selection_metric="acc_avg",  # fish:src/config.py:32
        selection_split="val",  # fish:src/main.py:80 (wilds: OOD val)
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("hospital",),  # fish:src/models/camelyon.py:42 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=None,  # fish:src/config.py:34 print_iters=-1
        reload_inner_optim=True,  # fish:src/config.py:33
        eval_batch_size=32,  # fish:src/models/camelyon.py:56 (= train batch size)
        dataset_kwargs={},  # fish:src/models/camelyon.py:32 (defaults; same v1.0 data in wilds 2.0)
    ),
    "fmow": Preset(
        dataset="fmow",
        model="densenet121",
        pretrained=True,  # fish:src/models/fmow.py:22
        loss="cross_entropy",  # fish:src/utils.py:126
        inner_optimizer="adam",  # fish:src/config.py:6
        optimizer_kwargs=_adam(1e-4),  # fish:src/config.py:8-11
        batch_size=64,  # fish:src/config.py:5
        meta_lr=0.01,  # fish:src/config.py:14
        meta_steps=5,  # fish:src/config.py:15
        erm_pretrain_iters=24000,  # fish:src/config.py:13
        epochs=12,  # fish:src/config.py:4
        selection_metric="acc_worst_region",  # fish:src/config.py:16
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=True,  # fish:src/utils.py:103 (FMoW always overwrites: last checkpoint)
        groupby_fields=("region", "year"),  # fish:src/models/datasets.py:98-102 metadata[:, :2]
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:18
        reload_inner_optim=True,  # fish:src/config.py:17
        eval_batch_size=256,  # fish:src/models/fmow.py:51
        # choice: OOD val (wilds 2.0 default, leaderboard rule); wilds 1.1 used the ID val here.
        # It only changes what is logged: FMoW keeps the last checkpoint.
        dataset_kwargs={"use_ood_val": True},
    ),
    "iwildcam": Preset(
        dataset="iwildcam",
        model="resnet50",
        pretrained=True,  # fish:src/models/iwildcam.py:20
        loss="cross_entropy",  # fish:src/utils.py:129
        inner_optimizer="adam",  # fish:src/config.py:56
        optimizer_kwargs=_adam(1e-4),  # fish:src/config.py:58-61
        batch_size=16,  # fish:src/config.py:55
        meta_lr=0.01,  # fish:src/config.py:64
        meta_steps=10,  # fish:src/config.py:65
        erm_pretrain_iters=24000,  # fish:src/config.py:63
        epochs=18,  # fish:src/config.py:54
        selection_metric="F1-macro_all",  # fish:src/config.py:66
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("location",),  # fish:src/models/iwildcam.py:42 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:68
        reload_inner_optim=True,  # fish:src/config.py:67
        eval_batch_size=256,  # fish:src/models/iwildcam.py:56
        dataset_kwargs={},  # fish:src/models/iwildcam.py:32 (v2.0 data in both wilds 1.1 and 2.0)
    ),
    "poverty": Preset(
        dataset="poverty",
        model="resnet18_ms",
        pretrained=False,  # fish:src/models/poverty.py:39
        loss="mse",  # fish:src/utils.py:128
        inner_optimizer="adam",  # fish:src/config.py:39
        optimizer_kwargs=_adam(1e-3),  # fish:src/config.py:41-44
        batch_size=64,  # fish:src/config.py:38
        meta_lr=0.1,  # fish:src/config.py:47
        meta_steps=5,  # fish:src/config.py:48
        erm_pretrain_iters=0,  # fish:src/config.py:46
        epochs=200,  # fish:src/config.py:37
        selection_metric="r_wg",  # fish:src/config.py:49
        selection_split="val",  # fish:src/main.py:80 (OOD val: use_ood_val=True)
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("country",),  # fish:src/models/datasets.py:24,34
        domain_scheme="combinatorial",
        eval_every=None,  # fish:src/config.py:51 print_iters=-1
        reload_inner_optim=True,  # fish:src/config.py:50
        eval_batch_size=256,  # fish:src/models/poverty.py:69
        # fish:src/models/poverty.py:49-52. choice: wilds 2.0 removed oracle_training_set; its False
        # is split_scheme="official" (= "countries"). The official code always trains fold A; the
        # WILDS replicates are folds A-E, so a runner overrides "fold" per replicate.
        dataset_kwargs={"split_scheme": "official", "fold": "A", "no_nl": False, "use_ood_val": True},
    ),
    "civilcomments": Preset(
        dataset="civilcomments",
        model=HF_MODEL_ID,
        pretrained=True,  # fish:src/models/civil.py:56-59 from_pretrained
        loss="cross_entropy",  # fish:src/utils.py:131
        inner_optimizer="adam",  # fish:src/config.py:90
        optimizer_kwargs=_adam(1e-5),  # fish:src/config.py:92-95
        batch_size=16,  # fish:src/config.py:89
        meta_lr=0.05,  # fish:src/config.py:98
        meta_steps=5,  # fish:src/config.py:99
        erm_pretrain_iters=20000,  # fish:src/config.py:97
        epochs=5,  # fish:src/config.py:88
        selection_metric="acc_wg",  # fish:src/config.py:100
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        # fish:src/models/datasets.py:139-149: {none, each of the 8 identities} x y, overlapping.
        # choice: y by field name; the official metadata[:, -1] is from_source_domain in wilds 2.0.
        groupby_fields=CIVIL_IDENTITY_FIELDS + ("y",),
        domain_scheme="identity_x_y",
        eval_every=500,  # fish:src/config.py:102
        reload_inner_optim=True,  # fish:src/config.py:101
        eval_batch_size=256,  # fish:src/models/civil.py:86
        dataset_kwargs={},  # fish:src/models/civil.py:68 (defaults; v1.0 data in wilds 1.1 and 2.0)
        max_token_length=300,  # fish:src/models/civil.py:17
    ),
    "amazon": Preset(
        dataset="amazon",
        model=HF_MODEL_ID,
        pretrained=True,  # fish:src/models/amazon.py:56-59 from_pretrained
        loss="cross_entropy",  # fish:src/utils.py:130
        inner_optimizer="adam",  # fish:src/config.py:73
        optimizer_kwargs=_adam(2e-6),  # fish:src/config.py:75-78
        batch_size=8,  # fish:src/config.py:72
        meta_lr=0.01,  # fish:src/config.py:81
        meta_steps=5,  # fish:src/config.py:82
        erm_pretrain_iters=31000,  # fish:src/config.py:80
        epochs=3,  # fish:src/config.py:71
        selection_metric="10th_percentile_acc",  # fish:src/config.py:83
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("user",),  # fish:src/models/amazon.py:73 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:85
        reload_inner_optim=True,  # fish:src/config.py:84
        eval_batch_size=256,  # fish:src/models/amazon.py:87
        # choice: wilds 2.0's default data version 2.1; the official runs (wilds 1.1) read v2.0,
        # reachable with dataset_kwargs={"version": "2.0"}.
        dataset_kwargs={},
        max_token_length=512,  # fish:src/models/amazon.py:17
    ),
}


def get_preset(name: Union[str, Preset]) -> Preset:
    """The preset for WILDS dataset ``name`` (a private copy); a :class:`Preset` is passed through."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown WILDS preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


# --------------------------------------------------------------------------- domains


def fish_domains(preset: Union[str, Preset], metadata_array: torch.Tensor,
                 metadata_fields: Sequence[str]) -> List[torch.Tensor]:
    """Row indices (into ``metadata_array``, shape ``(N, F)``) of every non-empty Fish domain.

    ``metadata_fields`` names the ``F`` columns (``dataset.metadata_fields``); columns are looked
    up by name, never by position. Order is deterministic: sorted value tuples for
    ``"combinatorial"``; (none, identity 1, ..., identity k) each split into ascending y for
    ``"identity_x_y"``.
    """
    preset = get_preset(preset)
    missing = [f for f in preset.groupby_fields if f not in metadata_fields]
    if missing:
        raise ValueError(
            f"{preset.dataset}: metadata has no field(s) {missing}; it has {list(metadata_fields)}")
    cols = [list(metadata_fields).index(f) for f in preset.groupby_fields]
    if preset.domain_scheme == "combinatorial":
        _, inverse, counts = torch.unique(metadata_array[:, cols], dim=0, return_inverse=True,
                                          return_counts=True)
        return list(torch.argsort(inverse, stable=True).split(counts.tolist()))
    if preset.domain_scheme == "identity_x_y":
        identities, y = metadata_array[:, cols[:-1]] == 1, metadata_array[:, cols[-1]]
        groups = [~identities.any(dim=1)] + list(identities.unbind(dim=1))
        masks = [g & (y == label) for g in groups for label in torch.unique(y)]
        return [m.nonzero().squeeze(1) for m in masks if m.any()]
    raise ValueError(f"unknown domain_scheme {preset.domain_scheme!r}")


# --------------------------------------------------------------------------- losses, optimizers

_LOSSES = {
    "cross_entropy": losses.cross_entropy_loss,
    "mse": losses.mse_loss,
    "binary_cross_entropy": losses.binary_cross_entropy_loss,
}
_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def loss_fn_for(preset: Union[str, Preset]) -> losses.LossFn:
    """The ``loss_fn(model, batch) -> scalar`` of ``gradmatch.losses`` matching ``preset.loss``."""
    return _LOSSES[get_preset(preset).loss]


def inner_optimizer_factory(preset: Union[str, Preset], **overrides: Any) -> functools.partial:
    """``partial(torch.optim.<Adam|SGD>, **optimizer_kwargs | overrides)``: ``params -> optimizer``.

    The official code uses this same optimizer for Fish's inner loop and ERM pre-training
    (fish:src/main.py:84-85,163).
    """
    preset = get_preset(preset)
    return functools.partial(_OPTIMIZERS[preset.inner_optimizer], **{**preset.optimizer_kwargs, **overrides})


# --------------------------------------------------------------------------- models


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


def _densenet121(num_outputs: int, pretrained: bool, allow_download: bool) -> nn.Module:
    """DenseNet-121 with a fresh ``Linear(1024, num_outputs)`` head; (B, 3, H, W) -> (B, num_outputs)."""
    net = _imagenet_backbone("densenet121", pretrained, allow_download)
    net.classifier = nn.Linear(net.classifier.in_features, num_outputs)  # fish:src/models/fmow.py:23
    return net


def _resnet50(num_outputs: int, pretrained: bool, allow_download: bool) -> nn.Module:
    """ResNet-50 with a fresh ``Linear(2048, num_outputs)`` head; (B, 3, H, W) -> (B, num_outputs)."""
    net = _imagenet_backbone("resnet50", pretrained, allow_download)
    net.fc = nn.Linear(net.fc.in_features, num_outputs)  # fish:src/models/iwildcam.py:22
    return net


def _resnet18_ms(num_outputs: int, pretrained: bool, allow_download: bool) -> nn.Module:
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


def _distilbert(num_outputs: int, pretrained: bool, allow_download: bool) -> nn.Module:
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


MODELS: Dict[str, Callable[[int, bool, bool], nn.Module]] = {
    "densenet121": _densenet121,
    "resnet50": _resnet50,
    "resnet18_ms": _resnet18_ms,
    HF_MODEL_ID: _distilbert,
}


def build_model(preset_or_name: Union[str, Preset], num_outputs: int, pretrained: Optional[bool] = None,
                allow_download: bool = False) -> nn.Module:
    """The preset's network mapping a batch of WILDS inputs to logits (B, num_outputs).

    ``num_outputs``: classes (``dataset.n_classes``), 1 for Poverty's regression.
    ``pretrained``: None = the official choice (``preset.pretrained``). Pretrained weights are
    read from the torch hub / Hugging Face cache only, unless ``allow_download``; a missing file
    raises :class:`MissingPretrainedWeights` naming where it belongs.
    """
    preset = get_preset(preset_or_name)
    use_pretrained = preset.pretrained if pretrained is None else pretrained
    return MODELS[preset.model](num_outputs, use_pretrained, allow_download)


# --------------------------------------------------------------------------- transforms


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


def build_transform(preset_or_name: Union[str, Preset], train: bool,
                    allow_download: bool = False) -> Callable:
    """The ``transform`` for ``dataset.get_subset(split, transform=...)`` (applied to x only).

    camelyon17: 96 px -> 224 px (fish:src/models/camelyon.py:34); iwildcam: -> 224 px
    (fish:src/models/iwildcam.py:35); fmow: 224 px as stored (fish:src/models/fmow.py:34-37);
    all three ImageNet-normalised, no augmentation. poverty: the input is already a normalised
    tensor; :class:`PovertyAugment` when ``train``, else unchanged. Text: :class:`BertTokenize`
    with ``preset.max_token_length`` (tokenizer from the HF cache unless ``allow_download``).
    """
    preset = get_preset(preset_or_name)
    if preset.model == HF_MODEL_ID:
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
    if preset.dataset == "poverty":
        return PovertyAugment() if train else transforms.Compose([])
    return _imagenet_image(resize=preset.dataset in ("camelyon17", "iwildcam"))
