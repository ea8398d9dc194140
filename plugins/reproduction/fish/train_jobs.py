"""Jobs that are ``gradmatch train`` / ``gradmatch evaluate`` commands.

:func:`train_argv` writes a :class:`~gradmatch.wilds.run_config.RunConfig` as the command line
that rebuilds it (tested as a round trip through the CLI parser), so a dry run shows commands a
user can paste, and every launcher runs the same thing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from gradmatch.wilds.run_config import RunConfig

from ..jobs import Job, python_module, threads_env

#: RunConfig fields written as switches (value -> flag), not as ``--field value``
_SWITCHES = {"progress": {False: "--no-progress"}, "pretrained": {False: "--no-pretrained"},
             "download": {True: "--download"}, "sync_batchnorm": {True: "--sync-batchnorm"}}
_RENAMED = {"out_dir": "--out"}


def train_argv(cfg: RunConfig, out: Optional[Path] = None) -> List[str]:
    """``gradmatch train`` arguments that rebuild ``cfg`` (fields left at their defaults are
    omitted). ``out``: write ``--out`` relative to this folder (jobs run there)."""
    argv: List[str] = []
    defaults = RunConfig(dataset=cfg.dataset, out_dir=cfg.out_dir)
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if f.name in ("dataset", "out_dir") or value != getattr(defaults, f.name):
            if f.name in _SWITCHES:
                argv.append(_SWITCHES[f.name][value])
                continue
            flag = _RENAMED.get(f.name, "--" + f.name.replace("_", "-"))
            if f.name == "out_dir" and out is not None:
                value = os.path.relpath(value, out)
            if isinstance(value, dict):
                argv += [flag, json.dumps(value, sort_keys=True)]
            elif isinstance(value, (list, tuple)):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
    return argv


def train_job(name: str, cfg: RunConfig, out: Path, minutes: float, threads: int = 1,
              after: Sequence[str] = ()) -> Job:
    """One ``gradmatch train`` run as a job: done when ``summary.json`` exists, resumed
    (``--resume``) when a ``checkpoint.pt`` exists. ``cfg.out_dir`` must lie under ``out``."""
    run = os.path.relpath(cfg.out_dir, out)
    if run.startswith(".."):
        raise ValueError(f"run folder {cfg.out_dir} is not under the experiment folder {out}")
    argv = python_module("gradmatch.cli", "train", *train_argv(cfg, out), "--threads", str(threads))
    return Job(name=name, argv=argv, done=f"{run}/summary.json", resume_if=f"{run}/checkpoint.pt",
               resume_argv=("--resume",), env=threads_env(threads), minutes=minutes, after=tuple(after))


def evaluate_job(name: str, predictions: str, dataset: str, output_dir: str, dataset_kwargs: dict,
                 after: Sequence[str], root_dir: str = "data", minutes: float = 0.5,
                 allow_partial: bool = False) -> Job:
    """``gradmatch evaluate`` on a predictions folder (relative paths: to the experiment folder);
    done when ``<output_dir>/<dataset>_results.json`` exists."""
    argv: Tuple[str, ...] = python_module("gradmatch.cli", "evaluate", predictions, "--dataset", dataset,
                                          "--root-dir", root_dir, "--output-dir", output_dir)
    if dataset_kwargs:
        argv += ("--dataset-kwargs", json.dumps(dataset_kwargs, sort_keys=True))
    if allow_partial:
        argv += ("--allow-partial",)
    return Job(name=name, argv=argv, done=f"{output_dir}/{dataset}_results.json", env=threads_env(1),
               minutes=minutes, after=tuple(after))
