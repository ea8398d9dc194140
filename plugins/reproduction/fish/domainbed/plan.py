"""What the domainbed experiment runs: the scales' plans (DomainBed's protocol, or cut down for a
CPU), DomainBed's own sweep arguments for them, and the jobs that run them."""
from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from ...jobs import Job, python_module, threads_env
from ...published import ORACLE_VALIDATION, TRAINING_DOMAIN_VALIDATION

MODULE = "reproduction.fish.domainbed.job"   # the jobs' commands: python -m MODULE train|data
DATASETS = ("ColoredMNIST", "RotatedMNIST")
ALGORITHMS = ("ERM", "Fish", "FishFast")  # DomainBed algorithm names, also the report's methods
LEAVE_ONE_OUT = "test acc %, leave-one-domain-out validation"
#: report metric -> DomainBed selection class (in ``domainbed.model_selection``); DomainBed's order
SELECTIONS = {TRAINING_DOMAIN_VALIDATION: "IIDAccuracySelectionMethod",
              LEAVE_ONE_OUT: "LeaveOneOutSelectionMethod",
              ORACLE_VALIDATION: "OracleSelectionMethod"}
COMPARED = (TRAINING_DOMAIN_VALIDATION, ORACLE_VALIDATION)  # metrics with published rows
SHORT = {TRAINING_DOMAIN_VALIDATION: "training-domain val.", ORACLE_VALIDATION: "oracle"}  # column labels

DATA_ENV = "GRADMATCH_DOMAINBED_DATA"
DATA_DEFAULTS = ("data", "../shared/data")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_DIGITS = {"train": 60_000, "t10k": 10_000}
DATA_DIR = "data"                    # under <out>: every run's --data_dir (relative)
DATA_DONE = "data/mnist.json"        # written last by the data job: where the digits came from
DATA_JOB = "data/mnist"
SWEEP_DIR = "sweep"                  # under <out>: sweep/<dataset>/<DomainBed's hash>
COLLECT_TXT = "collect_results.txt"
FIGURE = "domainbed.png"

# Cost model for Job.minutes: CPU seconds, one thread (OMP_NUM_THREADS=1, 0 loader workers), on
# the 2-core reference machine while shared with other work; fitted to measured runs (see
# README "Reproducing DomainBed"). A checkpoint evaluates every digit of every environment.
STARTUP_S = 5.0                                              # python, torch, DomainBed, plugin
EVAL_S_PER_DIGIT = 1.4e-3                                    # MNIST_CNN forward, batch 64
STEP_S = {"ColoredMNIST": 0.85, "RotatedMNIST": 2.0}          # batch 64 x each training env
BUILD_S_ALL_DIGITS = {"ColoredMNIST": 1.0, "RotatedMNIST": 12.0}  # environments from 70,000 digits
DOMAINBED_STEPS = 5001                                       # MultipleDomainDataset.N_STEPS
DOMAINBED_CHECKPOINT_FREQ = 100                              # ... CHECKPOINT_FREQ (MNIST)


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is swept.

    test_envs: the single test environments run; ``None``: DomainBed's default (every
        environment alone and every pair, which leave-one-domain-out selection needs).
    steps: training steps; ``None``: DomainBed's default (5,001).
    checkpoint_freq: steps between evaluations (one also at step 0 and at the last step);
        ``None``: DomainBed's default (100 for MNIST).
    """

    test_envs: Optional[Tuple[int, ...]] = None
    steps: Optional[int] = None
    checkpoint_freq: Optional[int] = None


@dataclass(frozen=True)
class Plan:
    """One scale: the sweep DomainBed's ``make_args_list`` draws, per dataset.

    n_hparams: hparams seeds 0..n-1 (seed 0 is DomainBed's default hparams).
    n_trials: trial seeds 0..n-1 (each redraws the data split and the run seeds).
    mnist_subset: ``(train, test)``: train on the first digits of each MNIST file (DomainBed
        pools and reshuffles them into environments as it does all 70,000); ``None``: all.
    env: environment of every run.
    """

    datasets: Mapping[str, DatasetPlan]
    algorithms: Tuple[str, ...] = ALGORITHMS
    n_hparams: int = 20
    n_trials: int = 3
    mnist_subset: Optional[Tuple[int, int]] = None
    env: Mapping[str, str] = field(default_factory=dict)


CPU_ENV = {**threads_env(1), "GRADMATCH_DOMAINBED_WORKERS": "0"}

PAPER_PLAN = Plan(datasets={d: DatasetPlan() for d in DATASETS})
CPU_PLAN = Plan(
    datasets={"ColoredMNIST": DatasetPlan(test_envs=(0, 1, 2), steps=60, checkpoint_freq=30),
              "RotatedMNIST": DatasetPlan(test_envs=(0,), steps=100, checkpoint_freq=50)},
    n_hparams=1, n_trials=1, mnist_subset=(6000, 1000), env=CPU_ENV)
PLANS = {"cpu": CPU_PLAN, "paper": PAPER_PLAN}

SCALES = {
    "cpu": "~25 CPU-minutes, 12 runs after a data job (two at a time: ~13 min on 2 cores). "
           "Reduced from DomainBed's protocol: 10% of MNIST (the first 6,000 training + 1,000 "
           "test digits, 7,000 of 70,000); default hparams only (hparams_seed 0), 1 trial; "
           "ColoredMNIST every test env alone (0, 1, 2), 60 steps, checkpoint every 30; "
           "RotatedMNIST test env 0 (0 degrees) only, 100 steps, checkpoint every 50; no pair runs "
           "(so no leave-one-domain-out selection); one thread and no loader workers per run",
    "paper": "DomainBed's protocol: 20 random hparams x 3 trials, every test env alone and in pairs "
             "(DomainBed's sweep default), 5,001 steps, checkpoint every 100, all of MNIST: "
             "4,860 runs (1,080 ColoredMNIST + 3,780 RotatedMNIST) after one job that links MNIST into "
             "<out>/data; launch with --launcher submitit",
}


# ----------------------------------------------------------------------------- DomainBed

def domainbed_modules():
    """DomainBed's modules, imported with the plugin registered (FishFast, launchers)."""
    from gradmatch.domainbed.register import register

    register()
    import domainbed
    from domainbed import datasets, model_selection
    from domainbed.lib import reporting
    from domainbed.lib.query import Q
    from domainbed.scripts import collect_results, sweep

    return argparse.Namespace(root=Path(domainbed.__file__).resolve().parents[1], datasets=datasets,
                              model_selection=model_selection, reporting=reporting, Q=Q,
                              collect_results=collect_results, sweep=sweep)


def plan_for(scale: str) -> Plan:
    if scale not in PLANS:
        raise ValueError(f"the domainbed experiment has scales {', '.join(PLANS)}, not {scale!r}; "
                         "pass --scale cpu or --scale paper")
    return PLANS[scale]


def source_data_dir() -> Path:
    """The absolute ``--data_dir`` holding ``MNIST/raw``: ``$GRADMATCH_DOMAINBED_DATA``, else the
    first of :data:`DATA_DEFAULTS` that has the files; raises naming the fix."""
    chosen = os.environ.get(DATA_ENV, "").strip()
    candidates = [chosen] if chosen else list(DATA_DEFAULTS)
    for candidate in candidates:
        raw = Path(candidate) / "MNIST" / "raw"
        if all((raw / name).is_file() for name in MNIST_FILES):
            return Path(candidate).resolve()
    where = f"${DATA_ENV}={chosen}" if chosen else " or ".join(f"./{c}" for c in DATA_DEFAULTS)
    raise FileNotFoundError(
        f"MNIST not found in {where}: set ${DATA_ENV} to the folder holding MNIST/raw/"
        f"{{{','.join(MNIST_FILES)}}} (uncompressed IDX files, torchvision's layout)")


def sweep_args(plan: Plan, dataset: str, data_dir: str) -> List[dict]:
    """DomainBed's ``make_args_list`` for one dataset, restricted to the plan's test envs and
    with its ``checkpoint_freq``: the train arguments of every run, in DomainBed's order."""
    db = domainbed_modules()
    dplan = plan.datasets[dataset]
    args_list = db.sweep.make_args_list(
        n_trials=plan.n_trials, dataset_names=[dataset], algorithms=list(plan.algorithms),
        n_hparams_from=0, n_hparams=plan.n_hparams, steps=dplan.steps, data_dir=data_dir,
        task="domain_generalization", holdout_fraction=0.2,
        single_test_envs=dplan.test_envs is not None, hparams=None)
    if dplan.test_envs is not None:
        args_list = [a for a in args_list if a["test_envs"][0] in dplan.test_envs]
    if dplan.checkpoint_freq is not None:
        for args in args_list:
            args["checkpoint_freq"] = dplan.checkpoint_freq
    return args_list


def n_checkpoints(steps: int, checkpoint_freq: int) -> int:
    """Evaluations of one run: every ``checkpoint_freq`` steps from 0, and the last step."""
    return len({s for s in range(0, steps, checkpoint_freq)} | {steps - 1})


def run_minutes(plan: Plan, dataset: str) -> float:
    """Estimated CPU-minutes of one run on the reference machine (cost model above)."""
    dplan = plan.datasets[dataset]
    steps = dplan.steps or DOMAINBED_STEPS
    digits = sum(plan.mnist_subset) if plan.mnist_subset else sum(MNIST_DIGITS.values())
    seconds = (STARTUP_S + BUILD_S_ALL_DIGITS[dataset] * digits / sum(MNIST_DIGITS.values())
               + steps * STEP_S[dataset]
               + n_checkpoints(steps, dplan.checkpoint_freq or DOMAINBED_CHECKPOINT_FREQ)
               * digits * EVAL_S_PER_DIGIT)
    return round(seconds / 60, 1)


def _job_name(args: dict) -> str:
    envs = "-".join(str(e) for e in args["test_envs"])
    return (f"{args['dataset']}/{args['algorithm']}/"
            f"test{envs}_hp{args['hparams_seed']}_trial{args['trial_seed']}")


def plan_jobs(plan: Plan, out: Path, source: Optional[Path] = None) -> List[Job]:
    """The jobs of ``plan``: the data job, then every DomainBed run, longest first (so two at a
    time finish together). Paths are relative to ``out`` (the jobs' working folder). MNIST comes
    from the folder an earlier data job of ``out`` used, else ``source``, else
    :func:`source_data_dir`."""
    db = domainbed_modules()
    env = {"DOMAINBED_DIR": str(db.root), **plan.env}
    counts = ("--train", plan.mnist_subset[0], "--test", plan.mnist_subset[1]) if plan.mnist_subset else ()
    source = recorded_source(Path(out)) or source or source_data_dir()
    data_job = Job(name=DATA_JOB, done=DATA_DONE, minutes=0.1, argv=python_module(
        MODULE, "data", "--source", source, "--dest", DATA_DIR, *counts))
    runs = []
    for dataset in plan.datasets:
        minutes = run_minutes(plan, dataset)
        for args in sweep_args(plan, dataset, DATA_DIR):
            run = db.sweep.Job(args, f"{SWEEP_DIR}/{dataset}")
            train_args = shlex.split(run.command_str)[3:]  # after "python -m domainbed.scripts.train"
            runs.append(Job(name=_job_name(args), argv=python_module(MODULE, "train", *train_args),
                            done=f"{run.output_dir}/done", env=env, minutes=minutes, after=(DATA_JOB,)))
    return [data_job] + sorted(runs, key=lambda job: -job.minutes)


def recorded_source(out: Path) -> Optional[Path]:
    """The MNIST source the data job used (from ``<out>/data/mnist.json``), or None before it ran."""
    path = out / DATA_DONE
    return Path(json.loads(path.read_text())["source"]) if path.exists() else None


def jobs(scale: str, out: Path) -> List[Job]:
    """The jobs of ``scale`` (``cpu`` or ``paper``), writing under ``out``."""
    return plan_jobs(plan_for(scale), Path(out))
