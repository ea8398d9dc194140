"""The manifest that ties a prediction folder to the data its predictions were made on.

``gradmatch train`` writes one per replicate next to its prediction files:
``<preds_dir>/<dataset>/<dataset>_<replicate>_manifest.json`` (for example
``cdsprites_seed:1_manifest.json``). WILDS' ``examples/evaluate.py`` only reads files whose name
starts with ``<dataset>_split:``, so a manifest never disturbs it, and replicate folders can be
merged into one leaderboard folder with their manifests. Contents::

    {"format": 1, "dataset": "cdsprites", "version": "1.0", "replicate": "seed:1",
     "dataset_kwargs": {"data_seed": 1, "num_domains": 5, ...},   # resolved: the data realisation
     "frac": 1.0,
     "splits": {"test": {"size": 2000, "labels_sha256": "..."}, ...},  # every non-train split
     "settings": {...}, "provenance": {...}}                       # the run's, as in summary.json

:func:`check_dataset` compares a dataset built for scoring with a manifest and refuses a
mismatch in one line naming both values.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from runkit.jsonio import write_json

FORMAT = 1


def manifest_path(preds_dir, dataset_name: str, replicate: str) -> Path:
    """``<preds_dir>/<dataset_name>/<dataset_name>_<replicate>_manifest.json``."""
    return Path(preds_dir) / dataset_name / f"{dataset_name}_{replicate}_manifest.json"


def labels_digest(y) -> str:
    """SHA-256 of a split's labels (dtype, shape and values), the fingerprint of its data."""
    values = np.ascontiguousarray(np.asarray(y))
    h = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    h.update(values.tobytes())
    return h.hexdigest()


def split_fingerprints(dataset) -> Dict[str, Dict[str, Any]]:
    """``{split: {"size", "labels_sha256"}}`` for every non-train split of ``dataset``."""
    out = {}
    for split in dataset.split_dict:
        if split == "train":
            continue
        y = dataset.get_subset(split).y_array
        out[split] = {"size": len(y), "labels_sha256": labels_digest(y)}
    return out


def build_manifest(dataset, dataset_name: str, dataset_kwargs: Dict[str, Any], replicate: str, *,
                   frac: float = 1.0, settings: Optional[dict] = None,
                   provenance: Optional[dict] = None) -> dict:
    """The manifest of ``replicate``'s predictions on ``dataset`` (see the module doc)."""
    return {"format": FORMAT, "dataset": dataset_name, "version": dataset.version,
            "replicate": replicate, "dataset_kwargs": dict(dataset_kwargs), "frac": frac,
            "splits": split_fingerprints(dataset), "settings": settings or {},
            "provenance": provenance or {}}


def write_manifest(preds_dir, manifest: dict) -> Path:
    path = manifest_path(preds_dir, manifest["dataset"], manifest["replicate"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, manifest)


def read_manifest(preds_dir, dataset_name: str, replicate: str) -> Optional[dict]:
    """The replicate's manifest, or None when the folder has none (leaderboard-format files)."""
    path = manifest_path(preds_dir, dataset_name, replicate)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from the run folder, or "
                         "delete it to score with explicit --dataset-kwargs") from None
    manifest["_path"] = str(path)
    return manifest


def check_kwargs(manifest: dict, given: Dict[str, Any]) -> None:
    """Explicit ``--dataset-kwargs`` must agree with the manifest's (the data predicted on)."""
    for key, value in given.items():
        saved = manifest["dataset_kwargs"].get(key, "<not set>")
        if saved != value:
            raise ValueError(f"--dataset-kwargs {key}={value!r} differs from {saved!r} in "
                             f"{manifest['_path']} (the data these predictions were made on); drop "
                             "--dataset-kwargs to use the manifest's")


def check_dataset(manifest: dict, dataset, dataset_name: str) -> None:
    """``dataset`` must be the data the manifest's predictions were made on: same name, version,
    split sizes and labels. Predictions of a ``--frac`` run cover a random part of each split,
    which cannot be rebuilt: they are refused."""
    where = manifest["_path"]
    if manifest.get("dataset") != dataset_name:
        raise ValueError(f"{where} is for dataset {manifest.get('dataset')!r}, not {dataset_name!r}")
    if manifest.get("frac", 1.0) != 1.0:
        raise ValueError(f"{where}: these predictions come from a --frac {manifest['frac']} run and cover "
                         "a random part of each split, which cannot be scored again; read the run's "
                         "summary.json, or train with --frac 1")
    if manifest.get("version") != dataset.version:
        raise ValueError(f"{dataset_name} version {dataset.version} on disk differs from version "
                         f"{manifest.get('version')} in {where}; use the data the run used")
    have = split_fingerprints(dataset)
    for split, saved in manifest.get("splits", {}).items():
        now = have.get(split)
        if now is None:
            raise ValueError(f"{dataset_name} has no split {split!r}, which {where} records")
        if now["size"] != saved["size"]:
            raise ValueError(f"split {split!r} has {now['size']} examples, {where} says {saved['size']}: "
                             "not the data these predictions were made on")
        if now["labels_sha256"] != saved["labels_sha256"]:
            raise ValueError(f"split {split!r}'s labels (sha256 {now['labels_sha256'][:12]}) differ from "
                             f"{saved['labels_sha256'][:12]} in {where}: not the data these predictions "
                             "were made on")
