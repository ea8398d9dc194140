"""Evaluation and model selection of a ``gradmatch train`` run.

:class:`Evaluator` predicts whole splits with the current model (each process its contiguous
part, gathered in order, so every example is predicted exactly once) and scores them with WILDS'
``dataset.eval``. :class:`Selection` keeps the model with the best selection metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .. import distributed as D
from .checkpoint import atomic_save


def logits_to_prediction(loss: str, logits: torch.Tensor) -> torch.Tensor:
    """What ``dataset.eval`` and the prediction files take: class ids, or raw values for regression."""
    if loss == "cross_entropy":
        return logits.argmax(-1)
    if loss == "binary_cross_entropy":
        return (logits.reshape(-1) > 0).long()
    return logits.reshape(logits.shape[0], -1).squeeze(-1)


class Evaluator:
    """``predict(split)`` and ``metrics(split)`` of ``model`` on ``dataset`` (see the module).

    ``transform``: the evaluation transform (or None); ``frac``: the fraction of each split.
    """

    def __init__(self, dataset, model: torch.nn.Module, backend: D.FabricBackend, *, loss: str,
                 batch_size: int, transform, frac: float = 1.0, num_workers: int = 0):
        self.dataset, self.model, self.backend = dataset, model, backend
        self.loss, self.batch_size, self.transform = loss, batch_size, transform
        self.frac, self.num_workers = frac, num_workers

    @torch.no_grad()
    def predict(self, split: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y_pred, y_true, metadata)`` of the model on the whole of ``split``, on every process."""
        backend = self.backend
        subset = self.dataset.get_subset(split, frac=self.frac, transform=self.transform)
        shards = D.eval_shards(len(subset), backend.world_size)
        local = torch.utils.data.Subset(subset, shards[backend.rank].tolist())
        loader = DataLoader(local, batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, collate_fn=self.dataset.collate)
        was_training = self.model.training
        self.model.eval()
        preds, ys, metas = [], [], []
        for x, y, meta in loader:
            with backend.autocast():
                logits = self.model(x.to(backend.device))
            preds.append(logits_to_prediction(self.loss, logits.float()).cpu())
            ys.append(y)
            metas.append(meta)
        self.model.train(was_training)
        counts = [len(s) for s in shards]
        return tuple(backend.gather_rows(torch.cat(parts), counts) for parts in (preds, ys, metas))

    def metrics(self, split: str) -> Tuple[dict, torch.Tensor]:
        """WILDS' metrics of the model on ``split`` (floats), and its predictions."""
        y_pred, y_true, meta = self.predict(split)
        results = self.dataset.eval(y_pred, y_true, meta)[0]
        return {k: float(v) for k, v in results.items()}, y_pred


class Selection:
    """The kept model: the best ``metric`` on ``split`` so far (a later evaluation replaces it
    only if strictly better), or always the latest with ``keep_last`` (FMoW's official rule).
    Process 0 writes it to ``path`` with its step and score."""

    def __init__(self, metric: str, split: str, keep_last: bool, path: Path, writer: bool,
                 best: Optional[dict] = None):
        self.metric, self.split, self.keep_last = metric, split, keep_last
        self.path, self.writer, self.best = Path(path), writer, best

    def offer(self, step: int, metrics: dict, model: torch.nn.Module) -> None:
        if self.metric not in metrics:
            raise KeyError(f"selection metric {self.metric!r} not among {sorted(metrics)}; "
                           "pass --selection-metric")
        value = metrics[self.metric]
        if self.best is None or value > self.best["value"] or self.keep_last:
            self.best = {"step": step, "value": value}
            if self.writer:
                atomic_save({"model": model.state_dict(), "step": step, self.metric: value},
                            self.path)

    def __str__(self) -> str:
        return "-" if self.best is None else f"{self.best['value']:.3f}@{self.best['step']}"
