"""Train Fish or ERM on a WILDS dataset with WILDS' own data, groupers and ``dataset.eval``.

A run goes through five phases, in this order; each hands its job to one owner, and no owner
calls back into this module:

1. prepare and check (:class:`Run`): the settings against the dataset's preset
   (:mod:`.parts`), the processes and device (:mod:`.engine`), the output folder
   (:mod:`.run_config`, on process 0), then the data, model, learner, batch schedule and
   evaluator (:mod:`.parts`);
2. set up or resume: a new folder with ``config.json``, or the latest good checkpoint (the
   previous one if the latest is damaged; a finished run being extended rolled back to before
   its final evaluation) (:mod:`.checkpoint`);
3. train: the loop of :meth:`Run.train` over the batches of :mod:`.schedule` (Fish's ERM
   warm-up, then Fish's epochs; or ERM's epochs), with the scheduled evaluations, model
   selection and warm-up hand-off (:mod:`.evaluation`) and checkpoints (:mod:`.checkpoint`);
4. final evaluation and selection: the evaluation a run ending between two scheduled ones
   makes, the last checkpoint, then the selected model scored on every split (:mod:`.evaluation`);
5. outputs: the prediction files and their manifest (:mod:`.predictions`), then ``summary.json``.

Output folder (``out_dir``):

- ``config.json``: the resolved run configuration;
- ``log.jsonl``: one JSON record per line: ``{"kind": "train", "step", "epoch", "phase",
  "loss", ["gip", "gip_cos"], "sec_per_step"}`` and ``{"kind": "eval", "step", "epoch",
  "split", "metrics": {...}}``;
- ``checkpoint.pt``: everything needed to resume exactly (learner, RNG states, position);
  written atomically every ``checkpoint_every`` steps, at epoch ends and on Ctrl-C (the first
  Ctrl-C stops the run at the end of the current step; a second one stops it at once, keeping
  the previous checkpoint). Resuming applies the given ``--lr`` (and ``--meta-lr``);
- ``best_model.pt``: the model with the best ``selection_metric`` on ``selection_split``;
- ``predictions/<dataset>/<dataset>_split:<split>_<seed:N|fold:X>_epoch:best_pred.csv``: the
  selected model's predictions on every non-train split, in WILDS' ``evaluate.py`` format;
- ``summary.json``: written last: the selected step and its metrics on every split.

Engine: Lightning Fabric (:mod:`gradmatch.distributed`). With several processes
(``devices``/``num_nodes``) every process takes its equal, contiguous shard of each batch (of
each domain's batch for Fish), the gradients are averaged before every optimizer step, and the
replicas stay identical (checked bitwise at every checkpoint); evaluation splits each split
over the processes, so every example is predicted exactly once. Only process 0 writes files.
Checkpoints hold every process's RNG state and load onto the CPU first, so a run resumes on
another device type or number of processes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from runkit.jsonio import dumps, write_json

from . import presets as P
from .checkpoint import Checkpoints, load_checkpoint
from .console import DeferredInterrupt, progress_bar
from .engine import Engine
from .evaluation import Evaluations, Selection
from .parts import Parts, Settings
from .predictions import replicate_name, write_run_predictions
from .run_config import RunConfig, RunInterrupted, check_run_folder
from .schedule import phase_of

__all__ = ["Run", "RunConfig", "load_checkpoint", "train"]


class Run:
    """One training run; ``Run(cfg).train()`` starts or resumes it and returns the summary.

    Creating it is phase 1 (prepare and check): anything wrong with the settings, the folder
    or the data is refused here, before any file is written."""

    def __init__(self, cfg: RunConfig, resume: bool = False):
        cfg.validate()
        self.cfg, self.resume, self.out = cfg, resume, Path(cfg.out_dir)
        settings = Settings(cfg)
        self.engine = Engine(cfg, settings.get("batch_size"))
        self.is_global_zero = self.engine.is_global_zero
        self.folder_state = self.engine.on_process_zero(check_run_folder, cfg, resume)
        self.device = self.engine.device
        self.parts = Parts(settings, self.engine)
        self.model, self.learner, self.schedule = self.parts.model, self.parts.learner, self.parts.schedule
        self.files = Checkpoints(self.out, self.engine)

    def train(self) -> dict:
        """Phases 2 to 5 (see the module); returns the summary as written."""
        if self.folder_state == "resume":
            position = self._restore()
        else:
            position = self.files.start(self.folder_state, self.parts.config)
        parts = self.parts
        selection = Selection(parts.selection_metric, parts.selection_split,
                              parts.preset.keep_last_checkpoint, self.out / "best_model.pt",
                              writer=self.is_global_zero, best=position["best"])
        self.evaluations = Evaluations(parts.evaluator, parts.eval_splits, selection, self.files,
                                       self.engine, handoff=self.cfg.warmup_handoff, position=position)
        self._train(position["epoch"], position["pos"], position["step"])
        return self._finish()

    def _restore(self) -> dict:
        """Phase 2 for ``--resume`` (:meth:`.checkpoint.Checkpoints.resume`)."""
        return self.files.resume(self.learner, self.schedule, self.parts.lr, self.parts.config)

    def _train(self, epoch: int, pos: int, step: int) -> None:
        """Phase 3, then the final evaluation and checkpoint of phase 4."""
        cfg, learner, schedule, evaluations = self.cfg, self.learner, self.schedule, self.evaluations
        bar = progress_bar(schedule.total_steps(), step, cfg.progress and self.is_global_zero,
                           f"{cfg.algorithm} {cfg.dataset}")
        self.files.log.open()
        try:
            with DeferredInterrupt() as interrupt:
                while not schedule.finished(epoch, step):
                    phase = schedule.phase()
                    plan_len, steps = schedule.steps(phase, epoch, pos, step)
                    if phase == "fish" and pos == 0 and self.parts.inner_optimizer_state == "epoch":
                        learner.inner_optimizer.state.clear()  # official: fresh each epoch
                    for indices, batch in zip(steps, schedule.loader(steps, epoch, pos)):
                        t0 = time.perf_counter()
                        batches = schedule.on_device(batch, indices)
                        track = cfg.gip_every > 0 and step % cfg.gip_every == 0 and len(indices) > 1
                        stats = learner.step(batches, track_gip=track)
                        step, pos = step + 1, pos + 1
                        if step % cfg.log_every == 0 or "gip" in stats:
                            self.files.write_log({"kind": "train", "step": step, "epoch": epoch,
                                                  "sec_per_step": time.perf_counter() - t0, **stats,
                                                  "phase": phase_of(stats)})
                        bar.update(1)
                        bar.set_postfix(loss=f"{stats['loss']:.3f}", best=str(evaluations), refresh=False)
                        if self.parts.eval_every and step % self.parts.eval_every == 0:
                            evaluations.evaluate(step, epoch)
                        if step % cfg.checkpoint_every == 0:
                            self._save(epoch, pos, step)
                        self._stop_if_interrupted(interrupt, epoch, pos, step)
                    epoch, pos = schedule.advance(phase, epoch, pos, plan_len)
                    if pos == 0:  # an epoch (or the warm-up) ended
                        evaluations.evaluate(step, epoch)
                        if phase == "warmup" and schedule.phase() == "fish":
                            evaluations.hand_off_warmup(step)
                        self._save(epoch, pos, step)
                        self._stop_if_interrupted(interrupt, epoch, pos, step)
                evaluations.final(step, epoch)
                self._save(epoch, pos, step)
                self._stop_if_interrupted(interrupt, epoch, pos, step)
        except RunInterrupted:
            bar.write(f"interrupted at step {step}; checkpoint saved, continue with --resume")
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C, mid-step: the state in memory may be half-updated; keep the last checkpoint.
            saved = self.files.saved_step
            kept = ("no checkpoint was written yet" if saved is None else
                    f"the checkpoint of step {saved} is kept, continue with --resume")
            bar.write(f"interrupted during step {step + 1}; {kept}")
            raise
        finally:
            bar.close()
            self.files.log.close()

    def _save(self, epoch: int, pos: int, step: int) -> None:
        self.files.save(self.learner, self.schedule.phase(), epoch, pos, step, self.evaluations.state())

    def _stop_if_interrupted(self, interrupt, epoch: int, pos: int, step: int) -> None:
        if self.engine.any(interrupt.requested):  # a Ctrl-C on any process stops them all here
            self._save(epoch, pos, step)
            raise RunInterrupted()

    def _finish(self) -> dict:
        """Phase 4's selected model on every split, then phase 5: its files and summary.json."""
        best, results, predictions = self.evaluations.score_selected()
        cfg, parts = self.cfg, self.parts
        replicate = replicate_name(cfg.dataset, P.replicate_of(parts.preset, cfg.seed, cfg.fold))
        summary = {"dataset": cfg.dataset, "algorithm": cfg.algorithm, "seed": cfg.seed,
                   "replicate": replicate, "selected_step": best["step"],
                   "selection": {"split": parts.selection_split, "metric": parts.selection_metric,
                                 "value": best[parts.selection_metric]},
                   "metrics": results}
        warmup_best = self.evaluations.warmup_best
        if warmup_best is not None:
            summary["warmup_selection"] = {**warmup_best, "handoff": cfg.warmup_handoff}
        summary["settings"] = parts.summary_settings()
        summary["provenance"] = self.engine.provenance
        if self.is_global_zero:
            with self.files.writing():
                write_run_predictions(self.out / "predictions", parts.dataset, cfg.dataset,
                                      parts.dataset_kwargs, replicate, predictions, frac=cfg.frac,
                                      settings=summary["settings"], provenance=summary["provenance"])
                write_json(self.out / "summary.json", summary)
        return json.loads(dumps(summary))  # as written: tuples as lists, NaN as None


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Start (or, with ``resume``, continue) the run described by ``cfg``; returns its summary."""
    return Run(cfg, resume=resume).train()
