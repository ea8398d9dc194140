"""Check the command line of solo-learn's ``main_pretrain.py`` / ``main_linear.py`` before the
script runs, without importing torch or solo-learn.

:func:`check_command` reads the arguments as Hydra reads them (its own argument parser),
composes the config as ``@hydra.main`` would (Hydra's compose API, the same config search path
and overrides), and checks what would otherwise fail late, after seconds of imports and model
building, or after solo-learn has created the run folder and its ``args.json``:

- the config can be found and every override applies;
- the data folders exist (and, for ``main_linear.py``, hold at least 5 classes: it reports
  top-5 accuracy) and ``main_linear.py``'s checkpoint exists;
- the ADIOS settings of a shipped ADIOS method (:func:`adios_ssl.sololearn.config.adios_cfg`,
  with the ``method_kwargs`` keys its solo-learn parent reads taken from the checkout's source).

Every problem is one :class:`BadCommand` whose message names the flag or config key and the
fix. Command lines that ask Hydra for something else (``--help``, ``--cfg``, ``--multirun``,
``--config-dir``, ...) are not checked here (the configs' Hydra callback still checks each
job, :mod:`adios_ssl.sololearn.register`).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from .config import SHIPPED_METHODS, ADIOSConfigError, adios_cfg, parent_keys_in_checkout

#: Hydra flags after which the script does not simply run one job: left to Hydra
_HYDRA_ELSEWHERE = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--package", "-p",
                    "--info", "-i", "--shell-completion", "-sc", "--multirun", "-m",
                    "--config-dir", "-cd", "--experimental-rerun"}
#: datasets solo-learn reads from a folder of class sub-folders (``image_folder``/``dali``)
_FOLDER_DATASETS = ("custom", "imagenet", "imagenet100")
#: the first lines of Hydra's composition errors that are not the message
_HYDRA_NOISE = ("Set the environment variable HYDRA_FULL_ERROR=1",)
#: classes main_linear.py needs (its LinearModel reports top-5 accuracy)
LINEAR_MIN_CLASSES = 5


class BadCommand(ValueError):
    """A bad command line or config for one of solo-learn's scripts; the message names the flag
    or config key and the fix."""


def check_command(script: str, argv: List[str], script_path: Path) -> Optional[DictConfig]:
    """Check ``main_<script>.py ARGV`` (``script``: ``pretrain`` or ``linear``; ``script_path``:
    the script, against which Hydra resolves a relative ``--config-path``). Returns the composed
    config, or ``None`` when the command line is left to Hydra (see the module docstring).
    Raises :class:`BadCommand`."""
    if any(arg.split("=", 1)[0] in _HYDRA_ELSEWHERE for arg in argv if arg.startswith("-")):
        return None
    args = _parse(argv, script)
    cfg = compose(script, args.config_path, args.config_name, list(args.overrides), script_path)
    if script == "pretrain":
        _check_pretrain(cfg)
    elif script == "linear":
        _check_linear(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise BadCommand(f"{missing[0]} is not set (??? in --config-name {args.config_name}): "
                         f"add {missing[0]}=<value> to the command line")
    return cfg


def _parse(argv: List[str], script: str):
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> None:
        raise BadCommand(f"{message} (main_{script}.py takes Hydra's options --config-path and "
                         "--config-name, then key=value overrides)")

    parser.error = error  # one line instead of argparse's usage text and exit
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        error(f"unrecognized argument {unknown[0]!r}")
    return args


def compose(script: str, config_path: Optional[str], config_name: Optional[str],
            overrides: List[str], script_path: Path) -> DictConfig:
    """The config ``@hydra.main(version_base="1.2")`` in ``script_path`` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    example = ("--config-path pkg://adios_ssl.configs --config-name cpu_simclr_adios"
               if script == "pretrain" else
               "--config-path pkg://adios_ssl.configs --config-name cpu_linear")
    if not config_name:
        raise BadCommand(f"--config-name is missing: main_{script}.py needs a config, e.g. "
                         f"`adios-ssl {script} {example} ...`")
    if not config_path:
        raise BadCommand(f"--config-path is missing: add --config-path pkg://adios_ssl.configs "
                         f"(the shipped configs) or the folder that holds {config_name}.yaml")
    if config_path.startswith("pkg://"):
        module = config_path[len("pkg://"):]
        context = initialize_config_module(config_module=module, version_base="1.2")
        where = config_path
    else:
        folder = config_path[len("file://"):] if config_path.startswith("file://") else config_path
        if not os.path.isabs(folder):  # Hydra: relative to the file declaring @hydra.main
            folder = os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(script_path)),
                                                   folder))
        if not os.path.isdir(folder):
            raise BadCommand(f"--config-path {config_path}: no folder {folder} (Hydra reads a "
                             "relative --config-path from the script's folder): give an absolute "
                             "path or pkg://adios_ssl.configs")
        context = initialize_config_dir(config_dir=folder, version_base="1.2")
        where = folder
    try:
        with context:
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except BadCommand:
        raise
    except Exception as err:  # Hydra's and OmegaConf's composition errors
        raise BadCommand(_hydra_message(err, config_name, where)) from None
    OmegaConf.set_struct(cfg, False)
    return cfg


def _hydra_message(err: Exception, config_name: str, where: str) -> str:
    """One line from a Hydra/OmegaConf error, with the fix where Hydra does not give one."""
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.strip().startswith(_HYDRA_NOISE)]
    if err.__cause__ is not None and str(err.__cause__).strip():
        cause = str(err.__cause__).strip().splitlines()[0].strip()  # without OmegaConf's key dump
        if cause not in " ".join(lines):
            lines.append(f"({cause})")
    text = " ".join(lines) or type(err).__name__
    override = getattr(err, "override", None)
    if override and override not in text:
        text = f"override {override!r}: {text}"
    if type(err).__name__ == "MissingConfigException" and "primary config" in text:
        close = difflib.get_close_matches(config_name, _configs_in(where), n=1)
        hint = f"did you mean --config-name {close[0]}? " if close else ""
        text = (f"--config-name {config_name}: there is no {config_name}.yaml in {where}: {hint}"
                f"choose one of {', '.join(_configs_in(where))}")
    return text


def _configs_in(where: str) -> List[str]:
    """The config names (``*.yaml``) at the top of a config path (a folder or ``pkg://``)."""
    if where.startswith("pkg://"):
        import importlib.util

        spec = importlib.util.find_spec(where[len("pkg://"):])
        if spec is None or not spec.submodule_search_locations:
            return []
        where = list(spec.submodule_search_locations)[0]
    return sorted(p.stem for p in Path(where).glob("*.yaml"))


# ----------------------------------------------------------------------------- checks

def _check_pretrain(cfg: DictConfig) -> None:
    """The method and its settings first (they do not depend on the machine), then the data."""
    from .locate import SOLO_LEARN

    root = SOLO_LEARN.ensure_importable()
    method = OmegaConf.select(cfg, "method", default=None)
    solo_methods = method_names_in_checkout(root)
    if solo_methods and method not in set(solo_methods) | set(SHIPPED_METHODS):
        names = sorted(set(solo_methods) | set(SHIPPED_METHODS))
        close = difflib.get_close_matches(str(method), names, n=1)
        hint = f"did you mean method={close[0]}? " if close else ""
        raise BadCommand(f"method={method!r} is not a solo-learn method: {hint}choose one of "
                         f"{', '.join(sorted(SHIPPED_METHODS))} (ADIOS) or "
                         f"{', '.join(sorted(solo_methods))}")
    spec = SHIPPED_METHODS.get(method)
    if spec is not None:  # another method is checked when solo-learn builds it
        keys = parent_keys_in_checkout(root, spec.parent)
        try:
            adios_cfg(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)),
                      spec.defaults, keys, method, spec.directional)
        except ADIOSConfigError as err:
            raise BadCommand(str(err)) from None
    batch = OmegaConf.select(cfg, "optimizer.batch_size", default=None)
    if batch is not None and not (isinstance(batch, int) and not isinstance(batch, bool)
                                  and batch >= 1):
        raise BadCommand(f"optimizer.batch_size={batch!r} must be an integer >= 1 (images per "
                         "process and step)")
    _check_data(cfg, "data.train_path", required=True, min_classes=1)
    _check_data(cfg, "data.val_path", required=False, min_classes=1)


def method_names_in_checkout(root: Path) -> List[str]:
    """The names in solo-learn's ``METHODS`` dict (``solo/methods/__init__.py`` under ``root``),
    read from the source without importing it; empty when it cannot be read."""
    import ast

    try:
        tree = ast.parse((Path(root) / "solo" / "methods" / "__init__.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "METHODS" for t in node.targets)):
            return [k.value for k in node.value.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return []


def _check_linear(cfg: DictConfig) -> None:
    ckpt = _value(cfg, "pretrained_feature_extractor")
    example = ("pretrained_feature_extractor=trained_models/<method>/<version>/<name>-ep=<E>.ckpt "
               "(the checkpoint main_pretrain.py wrote)")
    if ckpt is None:
        raise BadCommand(f"pretrained_feature_extractor is not set: add {example}")
    if not str(ckpt).endswith((".ckpt", ".pth", ".pt")):
        raise BadCommand(f"pretrained_feature_extractor={ckpt}: main_linear.py reads a .ckpt, "
                         f".pth or .pt file; use {example}")
    if not Path(ckpt).is_file():
        raise BadCommand(f"pretrained_feature_extractor={ckpt} does not exist (from "
                         f"{Path.cwd()}): use {example}")
    if Path(ckpt).stat().st_size == 0:
        raise BadCommand(f"pretrained_feature_extractor={ckpt} is an empty file: use {example}")
    _check_data(cfg, "data.train_path", required=True, min_classes=LINEAR_MIN_CLASSES)
    _check_data(cfg, "data.val_path", required=False, min_classes=1)


def _value(cfg: DictConfig, key: str):
    """``cfg.<key>``; ``None`` where it is absent, ``???`` (not set) or ``"None"``."""
    value = OmegaConf.select(cfg, key, default=None)
    return None if value == "None" else value


def _check_data(cfg: DictConfig, key: str, required: bool, min_classes: int) -> None:
    """A data path the script reads: set when ``required`` or ``???`` in the config; for
    datasets read from a folder of class sub-folders, an existing folder with at least
    ``min_classes`` of them."""
    path = _value(cfg, key)
    if path is None:
        if required or key in OmegaConf.missing_keys(cfg):
            raise BadCommand(f"{key} is not set: add {key}=/path/to/images (a folder of class "
                             "sub-folders, <class>/<image>)")
        return
    dataset = OmegaConf.select(cfg, "data.dataset", default="custom")
    fmt = OmegaConf.select(cfg, "data.format", default="image_folder")
    if dataset not in _FOLDER_DATASETS or fmt == "h5":
        return  # a torchvision dataset (downloaded there) or an h5 file
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise BadCommand(f"{key}={path} is not a folder (from {Path.cwd()}): point it at a "
                         "folder of class sub-folders, <class>/<image>")
    if OmegaConf.select(cfg, "data.no_labels", default=False):
        return
    classes = sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes < min_classes:
        need = (f"main_linear.py reports top-5 accuracy, so it needs at least {min_classes} "
                "classes" if min_classes > 1 else
                "solo-learn reads <class>/<image> (or set data.no_labels=true for a flat folder)")
        raise BadCommand(f"{key}={path} has {classes} class sub-folder(s): {need}")
