"""The ``wilds`` experiment: Fish (and ERM) through ``gradmatch train``, every leaderboard
replicate, predictions collected in the submission layout and scored by ``gradmatch evaluate``.

cpu scale: CdSprites-N as a WILDS dataset (N = 15, one data realisation, seed 0), replicates =
the preset's (training seeds 0-2), the demo's recipe for ``CPU_STEPS`` Fish steps and ERM at the
same budget.

paper scale: the six WILDS datasets with the official Fish recipe of their presets (ERM
warm-up, then Fish) and the official replicates (camelyon17 seeds 0-9, civilcomments 0-4,
poverty folds A-E, the others seeds 0-2). Data under ``$GRADMATCH_WILDS_DATA`` (default
``./data``: ``<dataset>_v<version>/`` folders, as ``wilds`` downloads them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from gradmatch import demo
from gradmatch.wilds.presets import PRESETS
from gradmatch.wilds.run_config import RunConfig

from ..jobs import Experiment, Job, Report, failed_path, python_module, read_failure
from .cdsprites import cpu_minutes
from .train_jobs import evaluate_job, train_job

CPU_DATASET_KWARGS = {"num_domains": 15, "data_seed": 0}   # one dataset; replicates are training seeds
CPU_STEPS = 240
RECIPE = "sgd-small"           # a key of gradmatch.demo.RECIPES (Fish's inner optimizer and steps)
PAPER_DATASETS = ("camelyon17", "civilcomments", "fmow", "iwildcam", "poverty", "amazon")
DATA_ENV = "GRADMATCH_WILDS_DATA"


def _collect_job(name: str, dest: str, dataset: str, runs: List[str], after: List[str]) -> Job:
    return Job(name=name, argv=python_module("reproduction.fish.collect_predictions", dest, *runs),
               done=f"{dest}/{dataset}/manifest.json", after=tuple(after), minutes=0.1)


def _cpu_jobs(out: Path) -> List[Job]:
    settings = demo.demo_settings(3, CPU_STEPS, CPU_DATASET_KWARGS["num_domains"], 32, RECIPE)
    jobs: List[Job] = []
    for algorithm in demo.ALGORITHMS:
        names, runs = [], []
        for seed in PRESETS["cdsprites"].replicates:
            cfg = demo.run_config(out / "runs" / algorithm, algorithm, seed, settings, progress=False)
            cfg.dataset_kwargs = dict(CPU_DATASET_KWARGS)
            name = f"train/cdsprites/{algorithm}_seed{seed}"
            jobs.append(train_job(name, cfg, out, cpu_minutes(settings["examples_per_run"])))
            names.append(name)
            runs.append(os.path.relpath(cfg.out_dir, out))
        jobs.append(_collect_job(f"collect/{algorithm}", f"submission/{algorithm}", "cdsprites", runs, names))
        jobs.append(evaluate_job(f"evaluate/{algorithm}", f"submission/{algorithm}", "cdsprites",
                                 f"scores/{algorithm}", CPU_DATASET_KWARGS, after=[f"collect/{algorithm}"]))
    return jobs


def _paper_jobs(out: Path) -> List[Job]:
    root = str(Path(os.environ.get(DATA_ENV, "data")).resolve())
    jobs: List[Job] = []
    for dataset in PAPER_DATASETS:
        preset = PRESETS[dataset]
        names, runs = [], []
        for replicate in preset.replicates:
            fold = replicate if preset.replicate == "fold" else None
            seed = 0 if fold else replicate
            tag = f"fold{fold}" if fold else f"seed{seed}"
            cfg = RunConfig(dataset=dataset, out_dir=str(out / "runs" / dataset / f"fish_{tag}"), root_dir=root,
                            seed=seed, fold=fold, progress=False)
            name = f"train/{dataset}/fish_{tag}"
            jobs.append(train_job(name, cfg, out, 0.0, threads=8))  # duration unknown: no GPU measured
            names.append(name)
            runs.append(os.path.relpath(cfg.out_dir, out))
        jobs.append(_collect_job(f"collect/{dataset}", "submission/fish", dataset, runs, names))
        jobs.append(evaluate_job(f"evaluate/{dataset}", "submission/fish", dataset, "scores/fish", {},
                                 after=[f"collect/{dataset}"], root_dir=root))
    return jobs


def jobs(scale: str, out: Path) -> List[Job]:
    return _cpu_jobs(Path(out)) if scale == "cpu" else _paper_jobs(Path(out))


def report(out: Path, scale: str) -> Report:
    out = Path(out)
    all_jobs = jobs(scale, out)
    scores = {}
    for job in all_jobs:
        if job.name.startswith("evaluate/") and job.is_done(out):
            scores[job.name.split("/", 1)[1]] = json.loads((out / job.done).read_text())
    failed = {j.name: read_failure(out, j) for j in all_jobs if failed_path(out, j).exists()}
    md = []
    if scale == "cpu":
        md += ["CdSprites-N (N = 15, data seed 0) scored by `gradmatch evaluate` from the collected "
               "submission folders (`submission/<algorithm>/cdsprites/`, one file per split and "
               "replicate), mean ± sample std over the replicates (training seeds 0-2), accuracy %:", "",
               "| algorithm | val | test | id_val |", "|---|---|---|---|"]
        for algorithm in demo.ALGORITHMS:
            res = scores.get(algorithm)
            cells = ["-" if res is None else f"{100 * res[s]['acc_avg']:.1f} ± {100 * res[s]['acc_avg_std']:.1f}"
                     for s in ("val", "test", "id_val")]
            md.append(f"| {algorithm.upper()} | " + " | ".join(cells) + " |")
        recipe = demo.get_recipe(RECIPE)
        md += ["", f"Recipe: the demo recipe {RECIPE!r} (Fish inner {recipe.optimizer} {recipe.inner_lr:g}, "
               f"eps {recipe.meta_lr:g}, {CPU_STEPS} meta-steps of 15 x 32; ERM Adam 1e-3, "
               f"{15 * CPU_STEPS} steps of 32)."]
    else:
        md += ["| dataset | split | metric | mean ± std over replicates |", "|---|---|---|---|"]
        for dataset, res in scores.items():
            for split, metrics in res.items():
                for metric, value in metrics.items():
                    if not metric.endswith("_std"):
                        md.append(f"| {dataset} | {split} | {metric} | {value:.4f} ± {metrics[metric + '_std']:.4f} |")
    if failed:
        md += ["", "Failed jobs:", ""] + [f"- `{k}`: {v}" for k, v in failed.items()]
    return Report(markdown="\n".join(md), data={"scale": scale, "scores": scores, "failed": failed})


EXPERIMENT = Experiment(
    name="wilds", title="Fish on WILDS: leaderboard replicates, submission folders, official scores",
    scales={"cpu": f"CdSprites-N (N = 15) as a WILDS dataset, Fish and ERM, replicates seeds 0-2, "
                   f"{CPU_STEPS} Fish steps",
            "paper": f"{', '.join(PAPER_DATASETS)}: official Fish recipe, official replicates "
                     f"(data in ${DATA_ENV})"},
    jobs=jobs, report=report)
