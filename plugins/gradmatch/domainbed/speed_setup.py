"""What the DomainBed speed measurement builds: DomainBed's modules with the plugin registered,
the variants (``ERM``, built-in ``Fish``, ``FishFast`` and its settings, the compute ``floor``) on
one of :data:`MODELS` with identical initial weights, synthetic minibatches, and the planted
torchvision checkpoints that ``pretrained=True`` reads offline. :mod:`.speed` times them."""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

#: the DomainBed algorithm whose hparams each variant uses
ALGORITHM_OF = {"ERM": "ERM", "Fish": "Fish", "FishFast": "FishFast", "FishFast-default": "FishFast",
                "FishFast-nogip": "FishFast", "floor": "Fish"}
VARIANT_OVERRIDES = {"FishFast": {"fish_shuffle_domains": False},
                     "FishFast-nogip": {"fish_shuffle_domains": False, "fish_gip_every": 0}}
MODELS = {
    "mnist_cnn": {"label": "MNIST_CNN 28px", "dataset": "ColoredMNIST", "input_shape": (2, 28, 28),
                  "num_classes": 2, "batch": 64, "hparams": {}},
    "resnet18": {"label": "ResNet-18 224px", "dataset": "PACS", "input_shape": (3, 224, 224),
                 "num_classes": 7, "batch": 8, "hparams": {"resnet18": True, "resnet50_augmix": False}},
    "resnet50": {"label": "ResNet-50 224px", "dataset": "PACS", "input_shape": (3, 224, 224),
                 "num_classes": 7, "batch": 8, "hparams": {"resnet18": False, "resnet50_augmix": False}},
}
QUIET = r".*(pretrained|weight enum|weights).*"  # torchvision's deprecation of pretrained=True
def quiet(fn):
    """``fn`` without torchvision's warnings about ``pretrained=True`` (built-in Fish builds a
    network, and so warns, every update)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=QUIET)
            return fn(*args, **kwargs)
    return wrapped


def load_domainbed():
    """Register the plugin into the DomainBed checkout; DomainBed's ``(algorithms,
    hparams_registry, networks)`` modules."""
    from .register import register

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (timm is not used)
    register()
    from domainbed import algorithms, hparams_registry, networks

    return algorithms, hparams_registry, networks


def plant_torchvision_weights(torch_home: str) -> Dict[str, str]:
    """Random-init ResNet-18/50 state dicts under the file names ``pretrained=True`` looks for
    in ``<torch_home>/hub/checkpoints`` (kept if there); their paths by builder name.

    ``torch.hub.load_state_dict_from_url`` checks the hash only when it downloads, so an existing
    file is loaded as is. Same keys and shapes as the real ImageNet checkpoints, so the same size
    and the same load cost."""
    import torchvision

    ckpt = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(ckpt, exist_ok=True)
    planted = {}
    for build, weights in ((torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
                           (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1)):
        path = os.path.join(ckpt, os.path.basename(weights.url))
        if not os.path.exists(path):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                torch.save(build(weights=None).state_dict(), path)
        planted[build.__name__] = path
    return planted


@contextlib.contextmanager
def planted_torch_home(torch_home: Optional[str] = None) -> Iterator[Tuple[str, Dict[str, str]]]:
    """Within: ``$TORCH_HOME`` is ``torch_home`` (default a scratch folder, removed after) with
    the planted checkpoints (:func:`plant_torchvision_weights`); yields it and their paths.
    ``$TORCH_HOME`` is restored after."""
    saved = os.environ.get("TORCH_HOME")
    with contextlib.ExitStack() as stack:
        if torch_home is None:
            torch_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="domainbed_fish_torch_home_"))
        os.environ["TORCH_HOME"] = torch_home  # read by torch.hub here and in the children
        try:
            yield torch_home, plant_torchvision_weights(torch_home)
        finally:
            if saved is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = saved


def variant_hparams(hparams_registry, variant: str, model: str) -> dict:
    cfg = MODELS[model]
    hp = hparams_registry.default_hparams(ALGORITHM_OF[variant], cfg["dataset"])
    hp.update(cfg["hparams"])
    hp.update(VARIANT_OVERRIDES.get(variant, {}))
    return hp


class Floor(torch.nn.Module):
    """S plain forward/backward passes + S Adam steps on one WholeFish: no copy, no meta step."""

    def __init__(self, network: torch.nn.Module, hparams: dict):
        super().__init__()
        self.network = network
        self.optimizer = torch.optim.Adam(network.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None):
        losses = []
        for x, y in minibatches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.network(x), y)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return {"loss": torch.stack(losses).mean().item()}


@quiet
def build_variant(db, variant: str, model: str, num_domains: int, device):
    """One variant's algorithm (train mode, on ``device``) and its hparams."""
    algorithms, hparams_registry, networks = db
    cfg = MODELS[model]
    hp = variant_hparams(hparams_registry, variant, model)
    if variant == "floor":
        alg = Floor(networks.WholeFish(cfg["input_shape"], cfg["num_classes"], hp), hp)
    else:
        cls = algorithms.get_algorithm_class(ALGORITHM_OF[variant])
        alg = cls(cfg["input_shape"], cfg["num_classes"], num_domains, hp)
    return alg.to(device).train(), hp


def load_initial_weights(alg, variant: str, base_net_state: dict) -> None:
    """The same starting weights in every variant (ERM's network is Sequential(featurizer,
    classifier), the others' a WholeFish whose ``.net`` is that Sequential)."""
    target = alg.network if variant == "ERM" else alg.network.net
    target.load_state_dict(base_net_state)


def make_minibatches(model: str, batch: int, num_domains: int, seed: int, device):
    cfg = MODELS[model]
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *cfg["input_shape"], generator=g).to(device),
             torch.randint(0, cfg["num_classes"], (batch,), generator=g).to(device))
            for _ in range(num_domains)]
