"""The ``cdsprites`` experiment: Fish vs ERM on CdSprites-N over the paper's range of N.

cpu scale: N in {5, 10, 15, 20, 30, 40, 50}, seeds 0-2, a recipe of ``gradmatch demo``
(``RECIPE``, a key of :data:`gradmatch.demo.RECIPES`) at equal budgets: Fish takes ``CPU_STEPS`` meta-steps of N
domains x 32 examples, ERM ``N * CPU_STEPS`` steps of 32 pooled examples. Next to it, the
official CdSprites recipe (``fish:src/config.py``: inner Adam reset every step, batch 64,
eps = 0.15 / N) at N = 15, seed 0, for ``OFFICIAL_CPU_STEPS`` meta-steps, long enough to see
where it goes.

paper scale: the official recipe for Fish and ERM (the ``cdsprites`` preset: 100 epochs, batch
64), every N, seeds 0-2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from gradmatch import demo
from gradmatch.wilds.run_config import RunConfig

from ..jobs import Experiment, Job, Report, failed_path, read_failure
from .train_jobs import train_job

NUM_DOMAINS = (5, 10, 15, 20, 30, 40, 50)   # the paper's range of N (issue 10)
SEEDS = (0, 1, 2)
CPU_STEPS = 240                 # Fish meta-steps per cpu run (ERM: N times as many)
RECIPE = "sgd-small"            # a key of gradmatch.demo.RECIPES (Fish's inner optimizer and steps)
OFFICIAL_N = 15
OFFICIAL_CPU_STEPS = 1200       # meta-steps of the official recipe at cpu scale (1.15 M examples)
OFFICIAL_CPU_SEEDS = (0,)
MS_PER_EXAMPLE = 0.55           # measured: one 2-core-machine core, SpriteCNN 32 px, train + evals


def cpu_minutes(examples: int) -> float:
    """Estimated CPU-minutes of a CdSprites run that trains on ``examples`` examples."""
    return round(examples * MS_PER_EXAMPLE / 1000 / 60, 1)


def _sweep_jobs(out: Path) -> List[Job]:
    """Seed by seed (every N of seed 0 first), so that a partly finished sweep covers every N."""
    jobs = []
    for seed in SEEDS:
        for n in NUM_DOMAINS:
            settings = demo.demo_settings(len(SEEDS), CPU_STEPS, n, 32, RECIPE)
            for algorithm in demo.ALGORITHMS:
                cfg = demo.run_config(out / "sweep" / f"n{n}", algorithm, seed, settings, progress=False)
                jobs.append(train_job(f"sweep/n{n}/{algorithm}_seed{seed}", cfg, out,
                                      cpu_minutes(settings["examples_per_run"])))
    return jobs


def _official_config(out: Path, algorithm: str, n: int, seed: int, max_steps=None) -> RunConfig:
    """The ``cdsprites`` preset as it stands (official recipe); evaluations 12 times per run
    at cpu scale, every epoch at paper scale."""
    every = max(1, max_steps // 12) if max_steps else 0
    return RunConfig(dataset="cdsprites", out_dir=str(out / "official" / f"n{n}" / f"{algorithm}_seed{seed}"),
                     algorithm=algorithm, seed=seed, max_steps=max_steps, eval_every=every,
                     checkpoint_every=every or 200, eval_splits=["val", "test"], progress=False,
                     dataset_kwargs={"num_domains": n})


def jobs(scale: str, out: Path) -> List[Job]:
    out = Path(out)
    if scale == "cpu":
        official = [train_job(f"official/n{OFFICIAL_N}/fish_seed{s}",
                              _official_config(out, "fish", OFFICIAL_N, s, OFFICIAL_CPU_STEPS), out,
                              cpu_minutes(OFFICIAL_CPU_STEPS * OFFICIAL_N * 64)) for s in OFFICIAL_CPU_SEEDS]
        return official + _sweep_jobs(out)
    # paper: 100 epochs of 1,000 images per domain at batch 64 (16 steps per epoch; ERM N x 16)
    return [train_job(f"official/n{n}/{algorithm}_seed{seed}", _official_config(out, algorithm, n, seed), out,
                      cpu_minutes(100 * 1000 * n))
            for n in NUM_DOMAINS for seed in SEEDS for algorithm in demo.ALGORITHMS]


def _read_run(run: Path) -> dict:
    """``{"status": "done" | "failed" | "missing", "test", "aligned", "swapped", "curve"}`` (%)."""
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
        test = summary["metrics"]["test"]
        curve = [[step, 100 * acc] for step, acc in demo.test_curve(run)]
        return {"status": "done", "test": 100 * test["acc_avg"],
                "aligned": 100 * test["acc_color_swap:aligned"], "swapped": 100 * test["acc_color_swap:swapped"],
                "selected_step": summary.get("selected_step"), "curve": curve}
    return {"status": "missing"}


def _cell(values: List[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)} if values else None


def _fmt(cell) -> str:
    return "-" if cell is None else f"{cell['mean']:.1f} ± {cell['std']:.1f} ({cell['n']})"


def report(out: Path, scale: str) -> Report:
    out = Path(out)
    all_jobs = {j.name: j for j in jobs(scale, out)}
    runs: Dict[str, dict] = {}
    for name, job in all_jobs.items():
        run = _read_run(out / Path(job.done).parent)
        if run["status"] == "missing" and failed_path(out, job).exists():
            run = {"status": "failed", "why": read_failure(out, job)}
        runs[name] = run
    group = "sweep" if scale == "cpu" else "official"
    table = {}
    for n in NUM_DOMAINS:
        row = {}
        for algorithm in demo.ALGORITHMS:
            items = [runs.get(f"{group}/n{n}/{algorithm}_seed{s}", {"status": "missing"}) for s in SEEDS]
            done = [r for r in items if r["status"] == "done"]
            row[algorithm] = {"test": _cell([r["test"] for r in done]),
                              "swapped": _cell([r["swapped"] for r in done]),
                              "done": len(done), "failed": sum(r["status"] == "failed" for r in items),
                              "per_seed": [r.get("test") for r in items]}
        table[n] = row
    recipe = demo.get_recipe(RECIPE)
    lines = ["| N | ERM test acc % | Fish test acc % | Fish - ERM (points) | ERM colour-swapped % | "
             "Fish colour-swapped % | runs finished (ERM / Fish) |", "|---|---|---|---|---|---|---|"]
    for n, row in table.items():
        gap = ("-" if row["erm"]["test"] is None or row["fish"]["test"] is None
               else f"{row['fish']['test']['mean'] - row['erm']['test']['mean']:+.1f}")
        lines.append(f"| {n} | {_fmt(row['erm']['test'])} | {_fmt(row['fish']['test'])} | {gap} | "
                     f"{_fmt(row['erm']['swapped'])} | {_fmt(row['fish']['swapped'])} | "
                     f"{row['erm']['done']}/{len(SEEDS)} / {row['fish']['done']}/{len(SEEDS)} |")
    failed = {k: v["why"] for k, v in runs.items() if v["status"] == "failed"}
    official = {k: v for k, v in runs.items() if k.startswith("official/") and scale == "cpu"}
    md = ["Test accuracy (%) of the model selected on the colour-shuffled `val` split, mean ± std over "
          "finished seeds (count in brackets). Colour carries no information at test time: a colour "
          "reader scores about 50 % overall and near 0 % on colour-swapped images.", "", *lines, ""]
    if scale == "cpu":
        md += [f"What ran: the demo recipe {RECIPE!r} (Fish: inner {recipe.optimizer} at "
               f"{recipe.inner_lr:g}, eps {recipe.meta_lr:g}, {CPU_STEPS} meta-steps of N x 32 examples; "
               f"ERM: Adam (amsgrad) 1e-3, N x {CPU_STEPS} steps of 32), so both see "
               f"{CPU_STEPS * 32:,} x N examples; seeds {list(SEEDS)} (seed = data realisation and "
               f"initialisation). Reduced from the paper: {CPU_STEPS} Fish steps is "
               f"{CPU_STEPS * 32 / 1000:.1f} passes over each domain's 1,000 images, not 100 epochs, "
               f"and the recipe is the demo's, not the official one.", ""]
        for name, run in official.items():
            if run["status"] == "done":
                points = run["curve"][::max(1, len(run["curve"]) // 12)] + run["curve"][-1:]
                curve = ", ".join(f"{s}: {a:.1f}" for s, a in dict(points).items())
                md += [f"Official recipe (`{name}`: inner Adam reset every step, batch 64, eps = 0.15 / N, "
                       f"{OFFICIAL_CPU_STEPS} meta-steps = {OFFICIAL_CPU_STEPS * OFFICIAL_N * 64:,} examples): "
                       f"selected model {run['test']:.1f} % test (colour-swapped {run['swapped']:.1f} %); test "
                       f"accuracy by meta-step (every {max(1, len(run['curve']) // 12)}th evaluation): {curve}.", ""]
            else:
                md += [f"Official recipe (`{name}`): {run['status']}.", ""]
    if failed:
        md += ["Failed runs (the others are summarised above):", ""]
        md += [f"- `{k}`: {v}" for k, v in failed.items()] + [""]
    figures = _plot(out, table, official)
    data = {"scale": scale, "recipe": RECIPE, "cpu_steps": CPU_STEPS,
            "table": {str(n): row for n, row in table.items()}, "runs": runs, "failed": failed}
    return Report(markdown="\n".join(md), data=data, figures=figures)


def _plot(out: Path, table: dict, official: dict) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if official else 1, figsize=(11 if official else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for algorithm, colour in (("erm", "tab:blue"), ("fish", "tab:orange")):
        ns = [n for n in table if table[n][algorithm]["test"]]
        means = [table[n][algorithm]["test"]["mean"] for n in ns]
        stds = [table[n][algorithm]["test"]["std"] for n in ns]
        ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, color=colour, label=algorithm.upper())
    demo.accuracy_axes(ax, "N (training domains)", "CdSprites-N: selected model, mean ± std over seeds")
    ax.legend()
    if official:
        ax = axes[0, 1]
        for name, run in official.items():
            if run["status"] == "done":
                steps, acc = zip(*run["curve"])
                ax.plot(np.array(steps) * OFFICIAL_N * 64, acc, marker=".", label=f"official recipe ({name})")
        for seed in SEEDS:
            run = _read_run(out / "sweep" / f"n{OFFICIAL_N}" / f"fish_seed{seed}")
            if run["status"] == "done":
                steps, acc = zip(*run["curve"])
                ax.plot(np.array(steps) * OFFICIAL_N * 32, acc, color="tab:orange", alpha=0.6,
                        label="demo recipe" if seed == 0 else None)
        demo.accuracy_axes(ax, "training examples seen", f"Fish at N = {OFFICIAL_N}: official vs demo recipe",
                           chance_label=None)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cdsprites.png", dpi=120)
    plt.close(fig)
    return ["cdsprites.png"]


EXPERIMENT = Experiment(
    name="cdsprites", title="CdSprites-N: Fish vs ERM over the number of training domains N",
    scales={"cpu": f"N in {list(NUM_DOMAINS)}, seeds {list(SEEDS)}, demo recipe, {CPU_STEPS} Fish steps "
                   f"(ERM N x {CPU_STEPS}), + the official recipe at N = {OFFICIAL_N} for "
                   f"{OFFICIAL_CPU_STEPS} steps",
            "paper": f"official recipe (100 epochs, batch 64) for Fish and ERM, N in {list(NUM_DOMAINS)}, "
                     f"seeds {list(SEEDS)}"},
    jobs=jobs, report=report)
