"""The table of datasets ``gradmatch train`` knows: one :class:`Preset` per dataset, complete.

A preset holds the official Fish recipe (every number carries its source in the official code,
YugeTen/fish 333efa2, as ``# fish:<path>:<line>``; deviations forced by wilds 2.0 or chosen here
are marked ``# choice:``) and everything the runner needs to know about the dataset, by name:
where it comes from (``source``, :data:`SOURCES`), its network (``model``,
:mod:`~gradmatch.wilds.models`), its input transform (``transform``,
:mod:`~gradmatch.wilds.transforms`), its Fish domains (``groupby_fields``/``domain_scheme``,
:mod:`~gradmatch.wilds.domains`), its leaderboard replicates and official metrics. Adding a
dataset is adding one entry (:func:`register_preset`, also from outside the package).

Nothing here downloads implicitly: pretrained weights, tokenizers and datasets must already be on
disk unless ``allow_download=True`` is passed.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import losses
from ..optim import optimizer_factory
from .domains import fish_domains as _fish_domains
from .models import HF_MODEL_ID, MODELS, MissingPretrainedWeights  # noqa: F401 (re-exported)
from .transforms import TRANSFORMS

# CivilComments identity attributes, in wilds 2.0 metadata order (civilcomments_dataset.py:94-103).
CIVIL_IDENTITY_FIELDS = (
    "male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")


@dataclass(frozen=True)
class Preset:
    """The official Fish hyperparameters for one WILDS dataset.

    Units: ``batch_size`` is examples per domain per inner step; ``meta_steps`` is the number of
    domains (= inner steps) per meta-step; the meta step size is ``meta_lr / meta_steps``
    (:attr:`meta_step_size`, ``Fish(step_size="official")``); ``erm_warmup_steps`` counts ERM
    optimizer steps on random batches of ``batch_size`` before Fish starts (0 = none);
    ``epochs`` counts Fish epochs (an epoch ends when fewer than ``meta_steps`` domains have
    batches left); ``eval_every`` counts meta-steps (and ERM pre-training iterations) between
    evaluations, in addition to one evaluation at the end of every epoch (None = only then).

    Domains (:func:`fish_domains`): ``domain_scheme="combinatorial"`` makes every distinct
    value tuple of ``groupby_fields`` a domain (what ``CombinatorialGrouper`` computes).
    ``"identity_x_y"`` (CivilComments) makes ``groupby_fields[:-1]`` binary identity fields and
    ``groupby_fields[-1]`` the label: domains are {no identity, identity 1, ..., identity k} x y,
    overlapping where a comment mentions several identities (the official 18 groups).
    ``meta_steps=None`` visits every domain in each Fish step. ``inner_optimizer_state``: how
    long the inner optimizer keeps its state (Adam moments, SGD momentum): ``"step"`` (a fresh
    one every Fish step), ``"epoch"`` (carried across the steps of one Fish epoch, reset when
    an epoch starts: the official ``reload_inner_optim``) or ``"run"`` (never reset).

    The dataset itself: ``source`` names its loader in :data:`SOURCES` (``"wilds"``:
    ``wilds.get_dataset`` from disk); ``model`` and ``transform`` name entries of
    :data:`~gradmatch.wilds.models.MODELS` and :data:`~gradmatch.wilds.transforms.TRANSFORMS`;
    ``replicate`` is ``"seed"`` or ``"fold"`` (the leaderboard replicate a run is, named
    ``seed:N`` or ``fold:X``), ``replicates`` lists those ``examples/evaluate.py`` requires, and
    ``official_metrics`` the metrics it reports (first = the leaderboard's).
    """

    dataset: str
    model: str
    pretrained: bool
    loss: str
    inner_optimizer: str
    optimizer_kwargs: Dict[str, Any] = field(hash=False)
    batch_size: int
    meta_lr: float
    meta_steps: Optional[int]
    erm_warmup_steps: int
    epochs: int
    selection_metric: str
    selection_split: str
    keep_last_checkpoint: bool
    groupby_fields: Tuple[str, ...]
    domain_scheme: str
    eval_every: Optional[int]
    inner_optimizer_state: str
    eval_batch_size: int
    dataset_kwargs: Dict[str, Any] = field(hash=False)
    max_token_length: Optional[int] = None
    transform: str = "none"
    source: str = "wilds"
    replicate: str = "seed"
    replicates: Tuple[Any, ...] = (0, 1, 2)
    official_metrics: Tuple[str, ...] = ()

    @property
    def meta_step_size(self) -> Optional[float]:
        """The official meta step ``eps = meta_lr / meta_steps`` (fish:src/main.py:179); None
        when ``meta_steps`` is "every domain" (it depends on the data)."""
        return None if self.meta_steps is None else self.meta_lr / self.meta_steps


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
        erm_warmup_steps=10000,  # fish:src/config.py:29
        epochs=20,  # fish:src/config.py:21
        selection_metric="acc_avg",  # fish:src/config.py:32
        selection_split="val",  # fish:src/main.py:80 (wilds: OOD val)
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("hospital",),  # fish:src/models/camelyon.py:42 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=None,  # fish:src/config.py:34 print_iters=-1
        # official reload_inner_optim=True, fish:src/config.py:33; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=32,  # fish:src/models/camelyon.py:56 (= train batch size)
        dataset_kwargs={},  # fish:src/models/camelyon.py:32 (defaults; same v1.0 data in wilds 2.0)
        transform="imagenet_224",  # fish:src/models/camelyon.py:34-38 (96 -> 224 px)
        replicates=tuple(range(10)),  # wilds examples/evaluate.py: camelyon17 seeds 0-9
        official_metrics=("acc_avg",),  # wilds examples/evaluate.py:get_metrics
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
        erm_warmup_steps=24000,  # fish:src/config.py:13
        epochs=12,  # fish:src/config.py:4
        selection_metric="acc_worst_region",  # fish:src/config.py:16
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=True,  # fish:src/utils.py:103 (FMoW always overwrites: last checkpoint)
        groupby_fields=("region", "year"),  # fish:src/models/datasets.py:98-102 metadata[:, :2]
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:18
        # official reload_inner_optim=True, fish:src/config.py:17; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=256,  # fish:src/models/fmow.py:51
        # choice: OOD val (wilds 2.0 default, leaderboard rule); wilds 1.1 used the ID val here.
        # It only changes what is logged: FMoW keeps the last checkpoint.
        dataset_kwargs={"use_ood_val": True},
        transform="imagenet",  # fish:src/models/fmow.py:34-37 (224 px as stored)
        official_metrics=("acc_worst_region", "acc_avg"),  # wilds examples/evaluate.py:get_metrics
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
        erm_warmup_steps=24000,  # fish:src/config.py:63
        epochs=18,  # fish:src/config.py:54
        selection_metric="F1-macro_all",  # fish:src/config.py:66
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("location",),  # fish:src/models/iwildcam.py:42 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:68
        # official reload_inner_optim=True, fish:src/config.py:67; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=256,  # fish:src/models/iwildcam.py:56
        dataset_kwargs={},  # fish:src/models/iwildcam.py:32 (v2.0 data in both wilds 1.1 and 2.0)
        transform="imagenet_224",  # fish:src/models/iwildcam.py:35-39
        official_metrics=("F1-macro_all", "acc_avg"),  # wilds examples/evaluate.py:get_metrics
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
        erm_warmup_steps=0,  # fish:src/config.py:46
        epochs=200,  # fish:src/config.py:37
        selection_metric="r_wg",  # fish:src/config.py:49
        selection_split="val",  # fish:src/main.py:80 (OOD val: use_ood_val=True)
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("country",),  # fish:src/models/datasets.py:24,34
        domain_scheme="combinatorial",
        eval_every=None,  # fish:src/config.py:51 print_iters=-1
        # official reload_inner_optim=True, fish:src/config.py:50; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=256,  # fish:src/models/poverty.py:69
        # fish:src/models/poverty.py:49-52. choice: wilds 2.0 removed oracle_training_set; its False
        # is split_scheme="official" (= "countries"). The official code always trains fold A; the
        # WILDS replicates are folds A-E, so a runner overrides "fold" per replicate.
        dataset_kwargs={"split_scheme": "official", "fold": "A", "no_nl": False, "use_ood_val": True},
        transform="poverty",  # fish:src/models/poverty.py:19-22 (see transforms.PovertyAugment)
        replicate="fold",
        replicates=("A", "B", "C", "D", "E"),  # wilds examples/evaluate.py: poverty folds A-E
        official_metrics=("r_wg", "r_all"),  # wilds examples/evaluate.py:get_metrics
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
        erm_warmup_steps=20000,  # fish:src/config.py:97
        epochs=5,  # fish:src/config.py:88
        selection_metric="acc_wg",  # fish:src/config.py:100
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        # fish:src/models/datasets.py:139-149: {none, each of the 8 identities} x y, overlapping.
        # choice: y by field name; the official metadata[:, -1] is from_source_domain in wilds 2.0.
        groupby_fields=CIVIL_IDENTITY_FIELDS + ("y",),
        domain_scheme="identity_x_y",
        eval_every=500,  # fish:src/config.py:102
        # official reload_inner_optim=True, fish:src/config.py:101; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=256,  # fish:src/models/civil.py:86
        dataset_kwargs={},  # fish:src/models/civil.py:68 (defaults; v1.0 data in wilds 1.1 and 2.0)
        max_token_length=300,  # fish:src/models/civil.py:17
        transform="bert",
        replicates=tuple(range(5)),  # wilds examples/evaluate.py: civilcomments seeds 0-4
        official_metrics=("acc_wg", "acc_avg"),  # wilds examples/evaluate.py:get_metrics
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
        erm_warmup_steps=31000,  # fish:src/config.py:80
        epochs=3,  # fish:src/config.py:71
        selection_metric="10th_percentile_acc",  # fish:src/config.py:83
        selection_split="val",  # fish:src/main.py:80
        keep_last_checkpoint=False,  # fish:src/utils.py:103
        groupby_fields=("user",),  # fish:src/models/amazon.py:73 domain_idx=0
        domain_scheme="combinatorial",
        eval_every=500,  # fish:src/config.py:85
        # official reload_inner_optim=True, fish:src/config.py:84; fish:src/main.py train_fish
        inner_optimizer_state="epoch",
        eval_batch_size=256,  # fish:src/models/amazon.py:87
        # choice: wilds 2.0's default data version 2.1; the official runs (wilds 1.1) read v2.0,
        # reachable with dataset_kwargs={"version": "2.0"}.
        dataset_kwargs={},
        max_token_length=512,  # fish:src/models/amazon.py:17
        transform="bert",
        official_metrics=("10th_percentile_acc", "acc_avg"),  # wilds examples/evaluate.py:get_metrics
    ),
    # CdSprites-N, generated (gradmatch.wilds.cdsprites). Every value: the official recipe,
    # fish:src/config.py:104-121: inner Adam (amsgrad) lr 1e-3 with its state reset every step,
    # batch 64 per domain, all N domains per step, meta_lr 0.15 / N (eps 0.01 at N = 15).
    "cdsprites": Preset(
        dataset="cdsprites",
        model="sprite_cnn",  # the official 5-conv CNN shape (gradmatch.nets.SpriteCNN)
        pretrained=False,
        loss="cross_entropy",
        inner_optimizer="adam",
        optimizer_kwargs=_adam(1e-3),
        batch_size=64,
        meta_lr=0.15,
        meta_steps=None,  # N: every domain
        erm_warmup_steps=0,
        epochs=100,
        selection_metric="acc_avg",
        selection_split="val",
        keep_last_checkpoint=False,
        groupby_fields=("domain",),
        domain_scheme="combinatorial",
        eval_every=None,
        inner_optimizer_state="step",  # official reload_inner_optim=False: reset every step
        eval_batch_size=512,
        dataset_kwargs={},
        source="cdsprites",
        official_metrics=("acc_avg",),
    ),
}


def get_preset(name: Union[str, Preset]) -> Preset:
    """The preset for dataset ``name`` (a private copy); a :class:`Preset` is passed through."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown dataset preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def register_preset(preset: Preset, replace: bool = False) -> None:
    """Add a dataset to the table (``gradmatch train --dataset <preset.dataset>``). Its
    ``source``, ``model`` and ``transform`` must name registered entries
    (:func:`register_source`, :func:`gradmatch.wilds.models.register_model`,
    :func:`gradmatch.wilds.transforms.register_transform`)."""
    for what, name, table in (("source", preset.source, SOURCES), ("model", preset.model, MODELS),
                              ("transform", preset.transform, TRANSFORMS)):
        if name not in table:
            raise ValueError(f"preset {preset.dataset!r}: unknown {what} {name!r}; register it "
                             f"first (known: {', '.join(sorted(table))})")
    if preset.replicate not in ("seed", "fold"):
        raise ValueError(f"preset {preset.dataset!r}: replicate must be 'seed' or 'fold'")
    if preset.dataset in PRESETS and not replace:
        raise ValueError(f"a preset named {preset.dataset!r} exists; pass replace=True")
    PRESETS[preset.dataset] = preset


# --------------------------------------------------------------------------- the dataset


def _wilds_source(preset: Preset, root_dir: str, download: bool, seed: int, **kwargs):
    from .compat import get_wilds_dataset

    return get_wilds_dataset(preset.dataset, root_dir=root_dir, download=download, **kwargs)


def _cdsprites_source(preset: Preset, root_dir: str, download: bool, seed: int, **kwargs):
    """The data realisation is the run's seed, unless ``dataset_kwargs`` fixes it
    (``"data_seed"``), as leaderboard-style replicates (several training seeds on one dataset) need."""
    from .cdsprites import CdSpritesNDataset

    return CdSpritesNDataset(seed=kwargs.pop("data_seed", seed), **kwargs)


#: name -> ``loader(preset, root_dir, download, seed, **dataset_kwargs) -> WILDSDataset``
SOURCES: Dict[str, Callable[..., Any]] = {"wilds": _wilds_source, "cdsprites": _cdsprites_source}


def _wilds_accepts(preset: Preset) -> Optional[List[str]]:
    """The keyword arguments ``wilds.get_dataset`` and the dataset's class take (besides
    ``root_dir``/``download``); None when the class cannot be found (no check then)."""
    import importlib
    import inspect

    from wilds.datasets.wilds_dataset import WILDSDataset

    try:
        module = importlib.import_module(f"wilds.datasets.{preset.dataset}_dataset")
    except ImportError:
        return None
    classes = [c for c in vars(module).values() if isinstance(c, type)
               and issubclass(c, WILDSDataset) and c is not WILDSDataset and c.__module__ == module.__name__]
    if len(classes) != 1:
        return None
    params = inspect.signature(classes[0].__init__).parameters
    return sorted({"version", "unlabeled"} | {n for n in params if n not in ("self", "root_dir", "download")})


def _cdsprites_accepts(preset: Preset) -> List[str]:
    import inspect

    from .cdsprites import CdSpritesNDataset

    params = inspect.signature(CdSpritesNDataset.__init__).parameters
    return sorted({"data_seed"} | {n for n in params if n not in ("self", "root_dir", "download", "seed")})


def _cdsprites_defaults(preset: Preset, seed: int) -> Dict[str, Any]:
    """CdSprites' data realisation is the run's seed unless ``data_seed`` is given."""
    return {"data_seed": seed}


#: source -> ``accepts(preset) -> list of keyword names or None (unchecked)``: what
#: ``--dataset-kwargs`` may set, checked before anything is loaded or written
SOURCE_KWARGS: Dict[str, Callable[[Preset], Optional[List[str]]]] = {
    "wilds": _wilds_accepts, "cdsprites": _cdsprites_accepts}
#: source -> ``defaults(preset, seed) -> dict``: keyword arguments a run fills in itself (the
#: recorded, resolved ``dataset_kwargs`` name them, so the data can be rebuilt exactly)
SOURCE_DEFAULTS: Dict[str, Callable[[Preset, int], Dict[str, Any]]] = {"cdsprites": _cdsprites_defaults}


def register_source(name: str, loader: Callable[..., Any],
                    accepts: Optional[Callable[[Preset], Optional[List[str]]]] = None,
                    defaults: Optional[Callable[[Preset, int], Dict[str, Any]]] = None) -> None:
    """Make ``loader`` the dataset loader of any preset whose ``source`` is ``name``.
    ``accepts``: the ``dataset_kwargs`` names it takes (checked before a run starts);
    ``defaults``: the keyword arguments it fills in from the seed (recorded with the run)."""
    SOURCES[name] = loader
    for table, entry in ((SOURCE_KWARGS, accepts), (SOURCE_DEFAULTS, defaults)):
        if entry is not None:
            table[name] = entry
        else:
            table.pop(name, None)


def source_defaults(preset: Preset, seed: int = 0) -> Dict[str, Any]:
    """The keyword arguments the preset's source fills in from the run's seed
    (:data:`SOURCE_DEFAULTS`; CdSprites' ``data_seed``), ``{}`` for most sources."""
    return SOURCE_DEFAULTS.get(preset.source, lambda p, s: {})(preset, seed)


def resolve_dataset_kwargs(preset: Union[str, Preset], seed: int = 0, replicate: Any = None,
                           **dataset_kwargs: Any) -> Dict[str, Any]:
    """Every keyword argument the preset's loader gets: the source's seed-derived defaults
    (CdSprites' ``data_seed``), the preset's ``dataset_kwargs``, the given ones, and a fold
    replicate's ``fold``. An unknown name raises one ``ValueError`` naming it and the known
    ones, before anything is loaded."""
    preset = get_preset(preset)
    accepts = SOURCE_KWARGS.get(preset.source, lambda p: None)(preset)
    if accepts is not None:
        unknown = sorted(set(dataset_kwargs) - set(accepts))
        if unknown:
            raise ValueError(f"--dataset-kwargs: {preset.dataset} takes no {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(accepts)}")
    kwargs = {**source_defaults(preset, seed), **preset.dataset_kwargs, **dataset_kwargs}
    if preset.replicate == "fold" and replicate is not None:
        kwargs["fold"] = replicate
    return kwargs


def load_dataset(preset: Union[str, Preset], root_dir: str = "data", download: bool = False,
                 seed: int = 0, replicate: Any = None, **dataset_kwargs: Any):
    """The preset's full dataset, built from :func:`resolve_dataset_kwargs`: the preset's
    ``dataset_kwargs`` updated by ``dataset_kwargs``; a fold replicate (``replicate="fold"``)
    passes ``fold=replicate`` when given."""
    preset = get_preset(preset)
    kwargs = resolve_dataset_kwargs(preset, seed, replicate, **dataset_kwargs)
    return SOURCES[preset.source](preset, root_dir, download, seed, **kwargs)


def replicate_of(preset: Union[str, Preset], seed: int, fold: Optional[str] = None) -> Any:
    """The leaderboard replicate a run is: its seed, or its fold (``fold`` else the preset's)."""
    preset = get_preset(preset)
    if preset.replicate == "fold":
        return fold or preset.dataset_kwargs.get("fold")
    return seed


def fish_domains(preset: Union[str, Preset], metadata_array: torch.Tensor,
                 metadata_fields: Sequence[str]) -> List[torch.Tensor]:
    """The preset's Fish domains (see :func:`gradmatch.wilds.domains.fish_domains`)."""
    return _fish_domains(get_preset(preset), metadata_array, metadata_fields)


def build_model(preset_or_name: Union[str, Preset], num_outputs: int, pretrained: Optional[bool] = None,
                allow_download: bool = False, dataset: Any = None) -> nn.Module:
    """The preset's network mapping a batch of its inputs to logits (B, num_outputs).

    ``num_outputs``: classes (``dataset.n_classes``), 1 for Poverty's regression.
    ``pretrained``: None = the official choice (``preset.pretrained``). Pretrained weights are
    read from the torch hub / Hugging Face cache only, unless ``allow_download``; a missing file
    raises :class:`MissingPretrainedWeights` naming where it belongs. ``dataset``: for models
    whose shape follows the data (CdSprites' image size).
    """
    preset = get_preset(preset_or_name)
    use_pretrained = preset.pretrained if pretrained is None else pretrained
    return MODELS[preset.model](num_outputs, use_pretrained, allow_download, dataset=dataset)


def build_transform(preset_or_name: Union[str, Preset], train: bool,
                    allow_download: bool = False) -> Optional[Callable]:
    """The ``transform`` for ``dataset.get_subset(split, transform=...)`` (applied to x only;
    None: the dataset's own tensors), :data:`~gradmatch.wilds.transforms.TRANSFORMS`."""
    preset = get_preset(preset_or_name)
    return TRANSFORMS[preset.transform](preset, train, allow_download)


# --------------------------------------------------------------------------- losses, optimizers

_LOSSES = {
    "cross_entropy": losses.cross_entropy_loss,
    "mse": losses.mse_loss,
    "binary_cross_entropy": losses.binary_cross_entropy_loss,
}


def loss_fn_for(preset: Union[str, Preset]) -> losses.LossFn:
    """The ``loss_fn(model, batch) -> scalar`` of ``gradmatch.losses`` matching ``preset.loss``."""
    return _LOSSES[get_preset(preset).loss]


def inner_optimizer_factory(preset: Union[str, Preset], **overrides: Any) -> functools.partial:
    """``partial(torch.optim.<Adam|SGD>, **optimizer_kwargs | overrides)``: ``params -> optimizer``.

    The official code uses this same optimizer for Fish's inner loop and ERM pre-training
    (fish:src/main.py:84-85,163).
    """
    preset = get_preset(preset)
    return optimizer_factory(preset.inner_optimizer, **{**preset.optimizer_kwargs, **overrides})


