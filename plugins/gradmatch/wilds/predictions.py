"""WILDS leaderboard prediction files, in the layout read by WILDS' ``examples/evaluate.py``.

Layout: ``<preds_dir>/<dataset>/<dataset>_split:<split>_<replicate>_<suffix>.csv``, one file per
non-train split and replicate. ``replicate`` is ``seed:N`` (camelyon17: seeds 0-9, civilcomments:
0-4, any other dataset: 0-2) or ``fold:X`` for poverty (folds A-E). A file holds one prediction
per line, no header, each line a Python literal: an int class id for classification, a float for
poverty's regression, ``a,b,...`` (read back as a tuple) for a row of several outputs. This is
what ``examples/utils.py:save_pred`` writes, with the suffix ``epoch:best_pred`` of
``examples/train.py``.

To run the official script on a folder written here:
``python examples/evaluate.py <preds_dir>/<dataset> <out_dir> --dataset <dataset> --root_dir <data>``
(with torch_scatter importable; see :mod:`gradmatch.wilds.compat`).
"""
import json
import operator
import re
import warnings
from ast import literal_eval
from pathlib import Path

import numpy as np
import torch

from runkit.jsonio import write_json

from .compat import apply_compat, get_wilds_dataset
from .manifest import build_manifest, check_dataset, check_kwargs, read_manifest, write_manifest

#: ``examples/evaluate.py:get_metrics`` for the WILDS benchmarks that have no preset here (the
#: presets carry their own, ``Preset.official_metrics``; first = the leaderboard's).
OTHER_OFFICIAL_METRICS = {
    "ogb-molpcba": ["ap"],
    "py150": ["acc", "Acc (Overall)"],
    "rxrx1": ["acc_avg"],
}
_REPLICATE = re.compile(r"seed:\d+|fold:[A-E]")


def _preset(dataset_name: str):
    from .presets import PRESETS

    return PRESETS.get(dataset_name)


def official_metrics(dataset_name: str) -> list[str]:
    """The metrics ``examples/evaluate.py`` reports for ``dataset_name`` ([] if unknown)."""
    preset = _preset(dataset_name)
    if preset is not None:
        return list(preset.official_metrics)
    return list(OTHER_OFFICIAL_METRICS.get(dataset_name, []))


def _folds(dataset_name: str):
    """The fold names of a dataset whose replicates are folds (poverty: A-E), else None."""
    preset = _preset(dataset_name)
    return tuple(preset.replicates) if preset is not None and preset.replicate == "fold" else None


def replicate_name(dataset_name: str, seed_or_fold) -> str:
    """``'fold:X'`` for a dataset whose replicates are folds (poverty: A-E), else ``'seed:N'``
    (``seed_or_fold`` an int)."""
    folds = _folds(dataset_name)
    if folds is not None:
        if seed_or_fold not in folds:
            raise ValueError(f"{dataset_name} replicates are folds {folds}, got {seed_or_fold!r}")
        return f"fold:{seed_or_fold}"
    return f"seed:{operator.index(seed_or_fold)}"


def required_replicates(dataset_name: str) -> list[str]:
    """The replicates ``examples/evaluate.py`` requires for ``dataset_name``, in its order
    (``Preset.replicates``; seeds 0-2 for a dataset without a preset)."""
    preset = _preset(dataset_name)
    replicates = preset.replicates if preset is not None else (0, 1, 2)
    kind = preset.replicate if preset is not None else "seed"
    return [f"{kind}:{r}" for r in replicates]


def prediction_path(preds_dir, dataset_name: str, split: str, replicate: str,
                    suffix: str = "epoch:best_pred") -> Path:
    """``<preds_dir>/<dataset_name>/<dataset_name>_split:<split>_<replicate>_<suffix>.csv``."""
    if not _REPLICATE.fullmatch(replicate):
        raise ValueError(f"replicate must look like 'seed:0' or 'fold:A' (see replicate_name), got {replicate!r}")
    return Path(preds_dir) / dataset_name / f"{_run_id(dataset_name, split, replicate)}_{suffix}.csv"


def _run_id(dataset_name, split, replicate):
    return f"{dataset_name}_split:{split}_{replicate}"


def _matching_files(folder: Path, run_id: str) -> list[Path]:
    """CSV files in ``folder`` for ``run_id``: ``<run_id>.csv`` or ``<run_id>_*.csv``.

    Stricter than evaluate.py's bare ``startswith(run_id)``, so ``seed:1`` never picks ``seed:10``.
    """
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".csv"
                  and (p.stem == run_id or p.stem.startswith(run_id + "_")))


def write_predictions(preds_dir, dataset_name: str, split: str, replicate: str, y_pred,
                      overwrite: bool = False, suffix: str = "epoch:best_pred") -> Path:
    """Write one prediction file and return its path (see :func:`prediction_path`).

    ``y_pred``: tensor/array/list of shape (N,) or (N, 1) -> one value per line, or (N, K) -> K
    comma-separated values per line. Use predicted labels (ints) for classification, not logits.
    Floats are written in their shortest round-trip form for their dtype; non-finite values are
    refused (evaluate.py cannot parse them). An existing file for the same split and replicate is
    refused: with the same suffix unless ``overwrite``, with another suffix always (evaluate.py
    would pick either of the two).
    """
    path = prediction_path(preds_dir, dataset_name, split, replicate, suffix)
    others = [p for p in _matching_files(path.parent, _run_id(dataset_name, split, replicate)) if p != path]
    if others:
        raise FileExistsError(f"{others[0]} already holds predictions for split {split!r}, {replicate}; "
                              f"remove it first (evaluate.py needs exactly one file per split and replicate)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    values = torch.as_tensor(y_pred).detach().cpu().numpy()
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim not in (1, 2):
        raise ValueError(f"y_pred must have shape (N,), (N, 1) or (N, K), got {tuple(values.shape)}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"y_pred has non-finite values; refusing to write {path}")
    lines = [",".join(map(str, row)) if values.ndim == 2 else str(row) for row in values]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_run_predictions(preds_dir, dataset, dataset_name: str, dataset_kwargs: dict, replicate: str,
                          predictions: dict, *, frac: float, settings: dict, provenance: dict) -> None:
    """A finished run's files: one per split of ``predictions`` (``{split: y_pred}``; an
    earlier run's replaced) and the replicate's manifest (:mod:`.manifest`)."""
    for split, y_pred in predictions.items():
        write_predictions(preds_dir, dataset_name, split, replicate, y_pred, overwrite=True)
    write_manifest(preds_dir, build_manifest(dataset, dataset_name, dataset_kwargs, replicate, frac=frac,
                                             settings=settings, provenance=provenance))


def read_predictions(path) -> torch.Tensor:
    """Parse a prediction file as evaluate.py does: (N,) int64 or float64, or (N, K) for K per line."""
    with open(path) as f:
        values = [literal_eval(line.rstrip()) for line in f if line.rstrip()]
    return torch.from_numpy(np.array(values))


def evaluate_predictions(preds_dir, dataset_name: str = None, root_dir="data", output_dir=None, *,
                         dataset=None, metrics=None, replicates=None, suffix=None,
                         allow_partial=False, dataset_kwargs=None) -> dict:
    """Score ``<preds_dir>/<dataset>/`` like ``examples/evaluate.py:evaluate_benchmark``; never downloads.

    Either ``dataset_name`` (loaded from ``root_dir`` with download=False via
    :func:`~gradmatch.wilds.compat.get_wilds_dataset`; a fold dataset such as poverty is loaded once per fold;
    a preset whose source is not WILDS, such as cdsprites, through its source with
    ``dataset_kwargs``) or a ``dataset`` object (any ``WILDSDataset``; its ``dataset_name`` names the folder and files).
    Every split of ``split_dict`` except ``train`` is scored, for every replicate (default
    :func:`required_replicates`), with ``metrics`` (default :func:`official_metrics`; required for
    other datasets). ``suffix`` picks ``..._<suffix>.csv`` when a folder holds several candidates.

    Manifests (:mod:`gradmatch.wilds.manifest`, written by ``gradmatch train`` next to its
    files): a replicate with one is scored on the data it names (its resolved dataset kwargs, so
    CdSprites' realisation), checked by version, split sizes and label digests; explicit
    ``dataset_kwargs`` that contradict it, or data that differ, raise one ``ValueError`` naming
    both values. A replicate without one (the leaderboard format) is scored on the data
    ``dataset_kwargs`` describe (CdSprites needs its ``data_seed`` then); row counts are checked.

    Missing files raise one ``FileNotFoundError`` listing them all, unless ``allow_partial``: then
    only replicates with a file for every split are used, and a warning names the missing files.

    Returns ``{"dataset": name, "replicates": [used], "results": {split: {metric: mean,
    f"{metric}_std": sample std (ddof=1; NaN for one replicate)}}, "per_replicate": {split:
    {replicate: {metric: value}}}}``. ``results`` is what evaluate.py returns and, if
    ``output_dir`` is given, is written to ``<output_dir>/<dataset>_results.json`` in its format.
    """
    if dataset is None and dataset_name is None:
        raise ValueError("pass dataset_name (a WILDS benchmark) or dataset (a WILDSDataset)")
    name = dataset_name or dataset.dataset_name
    if dataset is not None and name != dataset.dataset_name:
        raise ValueError(f"dataset_name {name!r} does not match dataset.dataset_name {dataset.dataset_name!r}")
    if name == "globalwheat":
        raise NotImplementedError("globalwheat predictions are .pth lists of boxes; use examples/evaluate.py")
    by_fold = _folds(name) is not None
    if dataset is not None and by_fold:
        raise ValueError(f"{name} is scored with one dataset per fold: pass dataset_name and root_dir")
    metrics = list(metrics or official_metrics(name))
    if not metrics:
        raise ValueError(f"no official metric list for {name!r}; pass metrics=[...] (keys of dataset.eval)")
    replicates = list(replicates or required_replicates(name))

    apply_compat()
    folder = Path(preds_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no prediction folder {folder} (write_predictions creates it)")
    given = dict(dataset_kwargs or {})
    manifests = {r: read_manifest(preds_dir, name, r) for r in replicates}
    for manifest in filter(None, manifests.values()):
        check_kwargs(manifest, given)
    loaded = {}

    def dataset_for(replicate):
        """The data ``replicate`` is scored on: its manifest's (checked against it), else the
        explicit kwargs (a fold dataset: its fold)."""
        manifest = manifests.get(replicate)
        if dataset is not None:
            data = dataset
        else:
            kwargs = dict(manifest["dataset_kwargs"]) if manifest else dict(given)
            if by_fold and not manifest:
                kwargs["fold"] = replicate.split(":")[1]
            key = json.dumps(kwargs, sort_keys=True, default=str)
            if key not in loaded:
                loaded[key] = _load(name, root_dir, kwargs)
            data = loaded[key]
        if manifest:
            check_dataset(manifest, data, name)
        return data

    with_manifest = [m for m in manifests.values() if m]
    if with_manifest:
        splits = list(with_manifest[0]["splits"])
    else:  # the first replicate's data (loaded once: dataset_for keeps it for the scoring)
        splits = [split for split in dataset_for(replicates[0]).split_dict if split != "train"]
    files, missing = {}, []
    for replicate in replicates:
        for split in splits:
            run_id = _run_id(name, split, replicate)
            found = _matching_files(folder, run_id)
            if suffix is not None:
                found = [p for p in found if p.name == f"{run_id}_{suffix}.csv"]
            if len(found) > 1:
                raise ValueError(f"several prediction files for {run_id} in {folder}: "
                                 f"{[p.name for p in found]}; pass suffix= or remove the extra ones")
            if found:
                files[split, replicate] = found[0]
            else:
                missing.append(f"{run_id}_{suffix or '*'}.csv")
    used = [r for r in replicates if all((s, r) in files for s in splits)]
    if missing:
        listing = "\n  ".join(missing)
        if not allow_partial or not used:
            raise FileNotFoundError(f"{len(missing)} prediction file(s) missing in {folder}:\n  {listing}")
        warnings.warn(f"scoring replicates {used} only; missing in {folder}:\n  {listing}", stacklevel=2)

    from .presets import source_defaults

    preset = _preset(name)
    if (dataset is None and preset is not None and "data_seed" in source_defaults(preset)
            and "data_seed" not in given and not all(manifests[r] for r in used)):
        raise ValueError(f"{name} predictions without a manifest: name their data realisation, "
                         f"--dataset-kwargs '{{\"data_seed\": N, ...}}' (N = the training --seed unless "
                         "the run set data_seed), with the kwargs the run was trained with")
    per_replicate = {split: {} for split in splits}
    for replicate in used:
        data = dataset_for(replicate)
        for split in splits:
            per_replicate[split][replicate] = _score(data, split, files[split, replicate], metrics)

    results = {}
    for split in splits:
        results[split] = {}
        for metric in metrics:
            values = [per_replicate[split][r][metric] for r in used]
            results[split][f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            results[split][metric] = float(np.mean(values))
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(output_dir) / f"{name}_results.json", results, indent=4)
    return {"dataset": name, "replicates": used, "results": results, "per_replicate": per_replicate}


def _load(name: str, root_dir, kwargs: dict):
    """The dataset ``name`` with ``kwargs``, from disk (never downloaded)."""
    preset = _preset(name)
    if preset is not None and preset.source != "wilds":
        from .presets import load_dataset

        return load_dataset(preset, root_dir, download=False, **kwargs)
    if preset is not None:
        from .presets import resolve_dataset_kwargs

        resolve_dataset_kwargs(preset, **kwargs)  # an unknown key: one line naming it
    return get_wilds_dataset(name, root_dir, download=False, **kwargs)


def _score(dataset, split, path, metrics) -> dict:
    """``dataset.eval`` on the predictions in ``path`` for ``split``; returns ``{metric: float}``."""
    subset = dataset.get_subset(split)
    y_true = subset.y_array
    y_pred = read_predictions(path)
    if len(y_pred) != len(y_true):
        raise ValueError(f"{path} has {len(y_pred)} predictions; split {split!r} has {len(y_true)} examples")
    if y_pred.shape != y_true.shape:
        y_pred = y_pred.unsqueeze(-1)
    scores = dataset.eval(y_pred, y_true, subset.metadata_array)[0]
    absent = [m for m in metrics if m not in scores]
    if absent:
        raise KeyError(f"dataset.eval gives no {absent}; it gives {sorted(scores)}")
    return {m: float(scores[m]) for m in metrics}
