"""Run the papers' official code (YugeTen/fish, YugeTen/adios) next to this project's code.

What is shimmed, and why (everything else is the official code, imported from the checkout and
run as written):

YugeTen/fish (``src/main.py``, ``src/utils.py``): ``main.py`` does its work at import time. It
parses ``sys.argv``, replaces ``sys.stdout`` with its ``Logger``, makes ``../experiments/...``
under the current directory and builds the model and data loaders of ``--dataset``. So it is
imported with a scratch working directory and ``sys.argv`` set, and ``sys.stdout``, ``argv`` and
the directory are restored afterwards. Its ``models`` package is made a bare package (its
``__init__`` imports every dataset's module, i.e. wilds and transformers: 12 s, for nothing
used here), ``models.cdsprites`` (plain torch) is imported as written, and its
``getDataLoaders`` is replaced by one that serves fixed tensors through the interface
``train_fish`` reads: ``reset_batch()``, ``batches_left`` and ``get_batch(domain)`` with the
official indexing rule (``datasets.py:52``). The tests then set ``main.model`` (a network that
has the official ``reset_weights``), ``main.opt`` / ``main.args`` (from the official
``config.dataset_defaults``) and ``main.criterion`` (the official ``return_criterion``).
``train_fish``, ``sample_domains`` and ``fish_step`` run unchanged.

YugeTen/adios (``src/methods/*_adios.py``, written for PyTorch Lightning 1.4): the package
``__init__`` files are not run (``src``, ``src.methods``, ``src.utils``, ``src.losses`` are bare
packages over their folders: the ``__init__`` imports every method, ViT/Swin builders included);
``pl_bolts`` is not installed and only its ``LinearWarmupCosineAnnealingLR`` is referenced (a
placeholder that refuses to run: the tests use ``scheduler="none"``); ``src.utils.backbones``
(timm ViT/Swin/PoolFormer builders, not used with a ResNet-18) is a placeholder. The method
classes are built with their own constructors and given what a Lightning 1.4 trainer would
provide (:class:`OfficialTrainerShim`): ``optimizers()`` (the optimizers of the official
``configure_optimizers``), ``lr_schedulers()``, ``manual_backward`` = ``loss.backward()``, a
no-op ``log``/``log_dict`` and ``trainer.is_last_batch = False``. ``training_step``,
``inpaint_forward``/``mask_forward`` (BYOL: ``adios_forward``), ``linear_forward``, the losses,
the UNet and ``LARSWrapper`` run as written.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch


# ----------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _isolated_modules(names: Sequence[str]) -> Iterator[None]:
    """Within: the modules ``names`` (and their submodules) are whatever gets imported; after:
    ``sys.modules`` holds for those names exactly what it held before."""
    def ours(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in names)

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for k in saved:
        del sys.modules[k]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def _load(name: str, path: Path) -> types.ModuleType:
    """Import the file ``path`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bare_package(name: str, folder: Path) -> types.ModuleType:
    """A package ``name`` over ``folder`` whose ``__init__`` is not run."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__file__ = None
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


# ----------------------------------------------------------------------------- YugeTen/fish
class FixedDomainBatches:
    """What the official ``train_fish`` reads from ``train_loader.dataset``, serving fixed
    tensors: ``batches[d][i]`` is domain ``d``'s ``i``-th batch ``(x, y)`` of an epoch.

    ``reset_batch`` / ``batches_left`` / ``get_batch`` follow the official
    ``*_Batched_Dataset`` (``datasets.py:44-55``): ``get_batch(d)`` returns batch number
    ``len(batches of d) - batches_left[d]``. Every call is logged as ``(epoch, domain, index)``
    so that the same batches can be given to this project's engine in the same order.
    """

    def __init__(self, batches: Sequence[Sequence[Tuple[torch.Tensor, torch.Tensor]]]):
        self.batches = [list(b) for b in batches]
        self.log: List[Tuple[int, int, int]] = []
        self.epoch = -1

    def reset_batch(self) -> None:
        self.epoch += 1
        self.batch_indices = {d: list(range(len(b))) for d, b in enumerate(self.batches)}
        self.batches_left = {d: len(b) for d, b in enumerate(self.batches)}

    def get_batch(self, domain: int):
        index = len(self.batch_indices[domain]) - self.batches_left[domain]
        self.log.append((self.epoch, domain, index))
        x, y = self.batches[domain][index]
        return x, y, None

    def meta_steps(self, meta_steps: int) -> List[Tuple[int, List[Tuple[torch.Tensor, torch.Tensor]]]]:
        """The logged calls as ``[(epoch, [batch, ...]), ...]``: one entry per official
        meta-step (``meta_steps`` consecutive ``get_batch`` calls), batches in visiting order."""
        assert len(self.log) % meta_steps == 0, (len(self.log), meta_steps)
        steps = []
        for start in range(0, len(self.log), meta_steps):
            calls = self.log[start:start + meta_steps]
            assert len({e for e, _, _ in calls}) == 1, calls
            steps.append((calls[0][0], [self.batches[d][i] for _, d, i in calls]))
        return steps


def import_official_fish(root: Path, workdir: Path) -> types.SimpleNamespace:
    """The official ``main`` (and its ``utils``, ``config``) imported from ``root/src`` for the
    CdSprites dataset, on no data: ``(main, utils, config, cdsprites_model)``.

    ``main.train_loader`` is a loader over :class:`FixedDomainBatches` (empty until a test sets
    ``main.train_loader.dataset = FixedDomainBatches(...)``)."""
    src = Path(root) / "src"
    run_dir = Path(workdir) / "run"  # main.py writes ../experiments/<name>/<runId...>
    run_dir.mkdir(parents=True, exist_ok=True)
    argv, stdout, cwd = sys.argv, sys.stdout, os.getcwd()
    with _isolated_modules(["models", "config", "utils", "main"]):
        try:
            models = _bare_package("models", src / "models")
            cdsprites = importlib.import_module("models.cdsprites")  # plain torch: as written
            official_model = cdsprites.Model

            class CdSpritesOnFixedBatches(official_model):
                """The official CdSprites model class with data loaders over fixed tensors
                (the real ones need the dSprites download)."""

                @staticmethod
                def getDataLoaders(args, device):
                    train = types.SimpleNamespace(dataset=FixedDomainBatches([]))
                    return train, {"val": None, "test": None}

            models.cdsprites = CdSpritesOnFixedBatches  # what models/__init__.py binds
            config = _load("config", src / "config.py")
            utils = _load("utils", src / "utils.py")
            sys.argv = ["main.py", "--dataset", "cdsprites", "--algorithm", "fish", "--no-cuda",
                        "--seed", "0", "--data-dir", str(workdir)]
            os.chdir(run_dir)
            main = _load("main", src / "main.py")
        finally:
            logger = sys.stdout
            sys.argv, sys.stdout = argv, stdout
            os.chdir(cwd)
            if logger is not stdout and hasattr(logger, "log"):
                logger.log.close()
    return types.SimpleNamespace(main=main, utils=utils, config=config,
                                 reset_weights=official_model.reset_weights)


# ---------------------------------------------------------------------------- YugeTen/adios
class _Refuse:
    """A placeholder for an official dependency the tests never call."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("placeholder of an uninstalled dependency (see tests/official_shims.py)")


def import_official_adios(root: Path) -> types.SimpleNamespace:
    """The official ``SimCLR_ADIOS``, ``BYOL_ADIOS`` and ``SimSiam_ADIOS`` classes, imported
    from ``root/src`` without running the package ``__init__`` files (see the module doc)."""
    src = Path(root) / "src"
    with _isolated_modules(["src", "pl_bolts"]):
        for name in ("pl_bolts", "pl_bolts.optimizers", "pl_bolts.optimizers.lr_scheduler"):
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
        sys.modules["pl_bolts.optimizers.lr_scheduler"].LinearWarmupCosineAnnealingLR = _Refuse
        _bare_package("src", src)
        for sub in ("methods", "utils", "losses"):
            _bare_package(f"src.{sub}", src / sub)
        backbones = types.ModuleType("src.utils.backbones")
        for name in ("poolformer_m36", "poolformer_m48", "poolformer_s12", "poolformer_s24",
                     "poolformer_s36", "swin_base", "swin_large", "swin_small", "swin_tiny",
                     "vit_base", "vit_large", "vit_small", "vit_tiny"):
            setattr(backbones, name, _Refuse)
        sys.modules["src.utils.backbones"] = backbones
        classes = {
            "simclr": importlib.import_module("src.methods.simclr_adios").SimCLR_ADIOS,
            "byol": importlib.import_module("src.methods.byol_adios").BYOL_ADIOS,
            "simsiam": importlib.import_module("src.methods.simsiam_adios").SimSiam_ADIOS,
        }
    return types.SimpleNamespace(**{k: with_trainer_shim(v) for k, v in classes.items()})


class OfficialTrainerShim:
    """What a Lightning 1.4 trainer gives the official methods' ``training_step``."""

    def attach(self, optimizers: Sequence[Any], on_backward: Callable[[torch.Tensor], None]):
        self._shim_optimizers = list(optimizers)
        self._shim_on_backward = on_backward
        self._trainer = types.SimpleNamespace(is_last_batch=False)  # schedulers: not stepped

    def optimizers(self, *args, **kwargs):
        return self._shim_optimizers

    def lr_schedulers(self):
        return None, None

    def manual_backward(self, loss, *args, **kwargs):
        self._shim_on_backward(loss)
        loss.backward(*args, **kwargs)

    def log(self, *args, **kwargs):
        pass

    def log_dict(self, *args, **kwargs):
        pass


def with_trainer_shim(cls: type) -> type:
    return type(f"{cls.__name__}OnShim", (OfficialTrainerShim, cls), {})


def official_adios_kwargs(ours: Any, method: str, img_size: int, n_classes: int,
                          batch_size: int) -> Dict[str, Any]:
    """Constructor arguments of the official method with the settings of the plugin's method
    ``ours`` (a built solo-learn method): same widths, N, masker, optimizer (SGD momentum 0.9
    inside ``LARSWrapper``, eta / clip / exclude_bias_n_norm as ``ours``' LARS), learning rates,
    weight decay; no scheduler (one step)."""
    kw = ours.extra_optimizer_args
    common = dict(
        encoder="resnet18", n_classes=n_classes, target_type="single", cifar=False,
        zero_init_residual=False, max_epochs=1, batch_size=batch_size, optimizer="sgd", lars=True,
        lr=ours.lr, weight_decay=ours.weight_decay, classifier_lr=ours.classifier_lr,
        exclude_bias_n_norm=bool(kw["exclude_bias_n_norm"]), accumulate_grad_batches=1,
        extra_optimizer_args={"momentum": kw["momentum"]}, scheduler="none", min_lr=0.0,
        warmup_start_lr=0.0, warmup_epochs=0, multicrop=False, n_crops=2, n_small_crops=0,
        img_size=img_size, eta_lars=kw["eta"], grad_clip_lars=bool(kw["clip_lr"]),
        dataset="custom", mask_lr=ours.mask_lr, alpha_sparsity=ours.alpha_sparsity,
        alpha_entropy=ours.alpha_entropy, N=ours.masker.num_masks,
        mask_fbase=ours.masker.unet.out_channels, unet_norm=_norm_of(ours.masker))
    proj = ours.projector
    linears = [m for m in proj if isinstance(m, torch.nn.Linear)]
    common.update(output_dim=linears[-1].out_features, proj_hidden_dim=linears[0].out_features)
    if method == "simclr":
        common.update(temperature=ours.temperature)
    else:
        common.update(pred_hidden_dim=ours.predictor[0].out_features)
    if method == "byol":
        common.update(base_tau_momentum=ours.momentum_updater.base_tau,
                      final_tau_momentum=ours.momentum_updater.final_tau, momentum_classifier=False)
    if method == "simsiam":
        pairs = set(ours.adios_pairs)
        assert ours.masked_views == "both" and ours.symmetric_pairs
        common.update(num_blocks=len(ours.masker.unet.down), use_symmetry_mask=True,
                      use_no_mask="none" in pairs, use_both_mask="both" in pairs)
    return common


def _norm_of(masker: torch.nn.Module) -> str:
    layer = masker.unet.down[0][1]
    if isinstance(layer, torch.nn.GroupNorm):
        return "gn"
    return "in" if isinstance(layer, torch.nn.InstanceNorm2d) else "no"


def official_name(ours_name: str) -> str:
    """The official state-dict name of one of the plugin's (solo-learn master) names."""
    for mine, theirs in (("momentum_backbone.", "momentum_encoder."), ("backbone.", "encoder."),
                         ("masker.unet.bottleneck.", "mask_encoder.mlp."),
                         ("masker.unet.", "mask_encoder."), ("masker.head.", "mask_head.0.")):
        if ours_name.startswith(mine):
            return theirs + ours_name[len(mine):]
    return ours_name


def load_ours_into_official(ours: torch.nn.Module, official: torch.nn.Module) -> Dict[str, str]:
    """Copy every parameter and buffer of ``ours`` into ``official`` (strict: both ways every
    name is matched); returns ``{our name: official name}`` for the parameters."""
    theirs = official.state_dict()
    mapped = {official_name(k): v for k, v in ours.state_dict().items()
              if k != "adios_batches"}  # the plugin's batch counter
    missing = sorted(set(theirs) - set(mapped))
    extra = sorted(set(mapped) - set(theirs))
    assert not missing and not extra, (missing, extra)
    official.load_state_dict(copy.deepcopy(mapped), strict=True)
    return {k: official_name(k) for k, _ in ours.named_parameters()}


class RecordingOptimizer:
    """An optimizer whose ``step`` first records every gradient it is about to use (the
    official ``LARSWrapper`` rescales ``p.grad`` in place)."""

    def __init__(self, optimizer: Any, names: Dict[int, str], record: Dict[str, torch.Tensor]):
        self.optimizer, self.names, self.record = optimizer, names, record

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, *args, **kwargs):
        self.optimizer.zero_grad(*args, **kwargs)

    def step(self, *args, **kwargs):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.record[self.names[id(p)]] = p.grad.detach().clone()
        return self.optimizer.step(*args, **kwargs)
