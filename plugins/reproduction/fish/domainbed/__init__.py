"""``gradmatch reproduce domainbed``: ERM vs DomainBed's built-in ``Fish`` vs the plugin's
``FishFast`` on ColoredMNIST and RotatedMNIST, through DomainBed's own sweep and model selection.

Jobs. The job list is DomainBed's: ``domainbed.scripts.sweep.make_args_list`` draws the runs
(and their seeds) and ``sweep.Job`` names their folders (md5 of the arguments), under
``<out>/sweep/<dataset>/<hash>``, so DomainBed's ``collect_results`` and
``list_top_hparams`` read them as they read any sweep. Each run is DomainBed's
``scripts/train.py`` through the plugin's wrapper (``gradmatch.domainbed.train``), started as
``python -m reproduction.fish.domainbed.job train <DomainBed's train arguments>``: that first
deletes the run's folder if it exists without ``done`` (DomainBed cannot resume, and its
``delete_incomplete`` is the documented way to rerun: without it a rerun would append to the
interrupted run's ``results.jsonl``), then runs the wrapper in the same process.

Scales (:data:`PLANS`): ``paper`` is DomainBed's protocol unchanged (20 random hparams x 3
trials, every test environment alone and in pairs, DomainBed's 5,001 steps, all of MNIST);
``cpu`` is cut down to fit ~25 CPU-minutes (see :data:`CPU_PLAN` for every reduction).

Report. DomainBed's model selection (``domainbed.model_selection``) on the records of the
finished runs (those with ``done``: DomainBed's ``delete_incomplete`` then ``collect_results``),
grouped as ``collect_results`` groups them; its text tables are also written to
``<out>/collect_results.txt``. Accuracies are in percent.

Data. The source is the folder holding ``MNIST/raw`` (uncompressed IDX files):
``$GRADMATCH_DOMAINBED_DATA``, else ``./data``, else ``../shared/data`` (relative to the working
folder). The first job writes ``<out>/data/MNIST/raw`` from it (symlinks to the files; at the cpu
scale a prefix copy) and records the source in ``<out>/data/mnist.json``; every run gets
``--data_dir data``. So the run folders' hashes do not depend on where MNIST lives, and once that
job is done neither listing the jobs nor the report needs the source again.
"""
from __future__ import annotations

from ...jobs import Experiment
from .plan import (  # noqa: F401  (the experiment's public names)
    ALGORITHMS,
    COLLECT_TXT,
    CPU_ENV,
    DATA_DONE,
    DATA_ENV,
    DATA_JOB,
    DATASETS,
    FIGURE,
    LEAVE_ONE_OUT,
    MNIST_FILES,
    SCALES,
    SELECTIONS,
    SWEEP_DIR,
    DatasetPlan,
    Plan,
    domainbed_modules,
    jobs,
    plan_for,
    plan_jobs,
)
from .report import build_report, report  # noqa: F401

EXPERIMENT = Experiment(
    name="domainbed",
    title="DomainBed: ERM vs built-in Fish vs FishFast on ColoredMNIST and RotatedMNIST",
    scales=SCALES, jobs=jobs, report=report)
