"""Evaluation and model selection of a ``gradmatch train`` run.

:class:`Evaluator` predicts whole splits with the current model (each process its contiguous
part, gathered in order, so every example is predicted exactly once) and scores them with WILDS'
``dataset.eval``. :class:`Selection` keeps the model with the best selection metric.
:class:`Evaluations` is a run's evaluations: the scheduled ones, the final one, the hand-off
from the ERM warm-up to Fish, and the selected model scored on every split at the end.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .. import distributed as D
from .checkpoint import atomic_save, load_checkpoint


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


class Evaluations:
    """A run's evaluations: each one logs every split of ``splits`` and offers the selection
    split's metrics to ``selection``. ``files`` (:class:`.checkpoint.Checkpoints`) keeps the
    log and guards the writes; ``engine`` (:class:`.engine.Engine`) is the processes.
    ``handoff``: ``--warmup-handoff``; ``position``: where the run starts (its selection state)."""

    def __init__(self, evaluator: Evaluator, splits, selection: Selection, files, engine, *,
                 handoff: str, position: dict):
        self.evaluator, self.splits, self.selection = evaluator, list(splits), selection
        self.files, self.engine, self.handoff = files, engine, handoff
        self.model, self.out = evaluator.model, selection.path.parent
        self.last_eval_step = position.get("last_eval_step")
        self.warmup_best = position.get("warmup_best")
        self.before_final = None

    def state(self) -> dict:
        """What a checkpoint keeps of the selection."""
        return {"best": self.selection.best, "warmup_best": self.warmup_best,
                "before_final": self.before_final, "last_eval_step": self.last_eval_step}

    def evaluate(self, step: int, epoch: int) -> None:
        """Evaluate at ``step`` (once: a step already evaluated is skipped)."""
        if step == self.last_eval_step:
            return
        self.last_eval_step = step
        for split in self.splits:
            metrics, _ = self.evaluator.metrics(split)
            self.files.write_log({"kind": "eval", "step": step, "epoch": epoch, "split": split,
                                  "metrics": metrics})
            if split == self.selection.split:
                with self.files.writing():
                    self.selection.offer(step, metrics, self.model)

    def final(self, step: int, epoch: int) -> None:
        """The evaluation a run makes when it ends between two scheduled ones. One longer run
        would not make it, so what it changes (the log, the selection, ``best_model.pt``, the
        RNG states) is kept as it was before (``before_final`` in the checkpoint,
        ``best_model.before_final.pt``): ``--resume`` with more steps rolls it back and goes on
        exactly as one longer run."""
        if step == self.last_eval_step:
            return
        best_path, kept = self.out / "best_model.pt", self.out / "best_model.before_final.pt"
        self.before_final = {"best": self.selection.best, "log_records": self.files.log.records,
                             "last_eval_step": self.last_eval_step, "rng": self.engine.rng_states()}
        if self.engine.is_global_zero:
            kept.unlink(missing_ok=True)
            if best_path.exists():
                with self.files.writing():
                    os.link(best_path, kept)  # the same file: free; kept if the evaluation replaces it
        self.evaluate(step, epoch)
        if self.engine.is_global_zero and self.selection.best is self.before_final["best"]:
            kept.unlink(missing_ok=True)  # best_model.pt was not replaced

    def hand_off_warmup(self, step: int) -> None:
        """The ERM warm-up just ended. Official (``--warmup-handoff best``, fish:src/main.py
        ``pretrain`` reloads ``model.rar``, then ``__main__`` starts a fresh ``val_stat``): Fish
        starts from the best warm-up model, and model selection starts afresh, so the kept model
        is a Fish model. ``last``: Fish continues from the last warm-up weights, and the warm-up
        models stay eligible."""
        self.warmup_best = self.selection.best
        if self.handoff != "best" or self.selection.best is None:
            return
        self.engine.barrier()  # process 0 has written best_model.pt
        best = load_checkpoint(self.selection.path)
        self.model.load_state_dict(best["model"])
        self.selection.best = None
        self.files.write_log({"kind": "handoff", "step": step, "from_step": best["step"],
                              self.selection.metric: self.warmup_best["value"]})

    def score_selected(self):
        """``(best, metrics, predictions)``: the selected model (loaded into the run's model;
        ``best`` its step and score) on every non-train split, per split."""
        self.engine.barrier()  # process 0 has written best_model.pt
        best = load_checkpoint(self.selection.path, required=("model", "step"))
        self.model.load_state_dict(best["model"])
        results, predictions = {}, {}
        for split in [s for s in self.evaluator.dataset.split_dict if s != "train"]:
            results[split], predictions[split] = self.evaluator.metrics(split)
        return best, results, predictions

    def __str__(self) -> str:
        return str(self.selection)
