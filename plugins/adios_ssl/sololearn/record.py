"""What an ADIOS run ran: ``provenance.json`` next to solo-learn's ``args.json``.

solo-learn's ``Checkpointer`` writes ``args.json`` (the config) into the run's folder
``<checkpoint.dir>/<method>/<version>/`` when training starts. Right after it, process 0 of an
ADIOS run writes ``provenance.json`` there (strict JSON: a non-finite number is ``null``)::

    {"method": "simclr_adios",
     "config": {...},            # the whole resolved solo-learn config, the ADIOS keys after
                                 # their defaults and checks included
     "adios": {...},             # values derived from it: the scaled mask_lr, the masker's
                                 # image size, UNet depth and parameter count, ...
     "provenance": {...},        # upstream_checkouts.provenance.provenance(): this package's
                                 # version and commit, library versions, solo-learn's and
                                 # DomainBed's commits, device / world size / precision
     "resumed_from": null,       # the checkpoint a resumed run started from
     "written": "2025-...Z",
     "earlier": [...]}           # the records of earlier starts of this run folder (resumes)
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from runkit.jsonio import write_json

RECORD = "provenance.json"


def run_folder(trainer) -> Path:
    """The run's folder: solo-learn's ``Checkpointer`` path (``<checkpoint.dir>/<method>/
    <version>``, set when training starts), else the trainer's ``default_root_dir``."""
    for callback in trainer.callbacks:
        if type(callback).__name__ == "Checkpointer" and getattr(callback, "path", None):
            return Path(callback.path)
    return Path(trainer.default_root_dir)


def run_record(module, trainer) -> Dict[str, Any]:
    """The record of this start of the run (see the module docstring)."""
    from runkit.provenance import provenance

    cfg = module.cfg
    masker = getattr(module, "masker", None)
    adios = {"mask_generator": module.adios_generator, "img_size": module.adios_img_size,
             "mask_lr_scaled": getattr(module, "mask_lr", None),
             "train_mask_epoch": module.train_mask_epoch}
    if masker is not None:
        adios.update({"num_masks": masker.num_masks, "unet_blocks": len(masker.unet.down),
                      "masker_parameters": sum(p.numel() for p in masker.parameters())})
    return {
        "method": OmegaConf.select(cfg, "method"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "adios": adios,
        "provenance": provenance(device=module.device, world_size=trainer.world_size,
                                 precision=str(trainer.precision)),
        "resumed_from": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_record(module, trainer) -> Path:
    """Write :data:`RECORD` into :func:`run_folder` (the caller runs it on process 0 only);
    an earlier record there (a resumed run) is kept under ``earlier``. Returns the path."""
    path = run_folder(trainer) / RECORD
    record = run_record(module, trainer)
    earlier = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            earlier = previous.pop("earlier", []) + [previous]
        except (OSError, ValueError):
            pass
    record["earlier"] = earlier
    return write_json(path, record)
