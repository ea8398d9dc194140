"""``gradmatch demo``: ERM vs Fish on CdSprites-N with equal budgets, on a CPU in minutes.

Each seed trains ERM and Fish through the WILDS runner (``gradmatch.wilds.runner``) on the
same generated dataset and the same CNN. Budgets are equal in examples and in gradient
evaluations: Fish takes ``steps`` meta-steps of N domains x ``batch_size``; ERM takes
``N * steps`` steps of ``batch_size`` pooled examples. Fish is Algorithm 1 as written: plain SGD
inner steps of size ``inner_lr`` and a meta step ``eps = meta_lr``. ERM uses its official
CdSprites optimizer, Adam (amsgrad) at lr 1e-3: plain SGD at ``eps * inner_lr`` (the step that
moves the weights as far per gradient as Fish does to first order) reads colour just the same
but diverges on some seeds. Models are selected on the colour-shuffled ``val`` split and scored
on ``test``.

The output folder is resumable: finished runs are reused, interrupted ones resumed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from .wilds.runner import RunConfig, train

ALGORITHMS = ("erm", "fish")
ERM_LR = 1e-3


def demo_settings(seeds: int, steps: int, num_domains: int, batch_size: int, meta_lr: float,
                  inner_lr: float) -> dict:
    if seeds < 1 or steps < 6 or num_domains < 2 or batch_size < 1 or not (meta_lr > 0 and inner_lr > 0):
        raise ValueError("demo needs --seeds >= 1, --steps >= 6, --num-domains >= 2, "
                         "--batch-size >= 1, --meta-lr > 0 and --inner-lr > 0")
    return {"dataset": "cdsprites", "num_domains": num_domains, "seeds": seeds,
            "fish_steps": steps, "erm_steps": steps * num_domains, "batch_size": batch_size,
            "fish": {"optimizer": "sgd", "inner_lr": inner_lr, "meta_lr": meta_lr, "eps": meta_lr},
            "erm": {"optimizer": "adam", "amsgrad": True, "lr": ERM_LR},
            "examples_per_run": steps * num_domains * batch_size}


def run_config(out: Path, algorithm: str, seed: int, settings: dict, progress: bool) -> RunConfig:
    """The runner configuration of one demo run."""
    n, steps = settings["num_domains"], settings["fish_steps"]
    scale = 1 if algorithm == "fish" else n  # ERM steps per Fish step at equal budget
    eval_every = max(1, steps // 6) * scale
    optimizer = dict(optimizer="sgd", momentum=0.0, lr=settings["fish"]["inner_lr"]) \
        if algorithm == "fish" else dict(optimizer="adam", lr=settings["erm"]["lr"])
    return RunConfig(
        dataset="cdsprites", out_dir=str(out / f"{algorithm}_seed{seed}"), algorithm=algorithm,
        seed=seed, batch_size=settings["batch_size"], meta_lr=settings["fish"]["meta_lr"], **optimizer,
        step_size="domainbed", max_steps=steps * scale, eval_every=eval_every,
        checkpoint_every=eval_every, gip_every=max(1, steps // 12) if algorithm == "fish" else 0,
        eval_splits=["val", "test"], progress=progress, dataset_kwargs={"num_domains": n},
    )


def run_demo(out: str, seeds: int = 3, steps: int = 450, num_domains: int = 15, batch_size: int = 32,
             meta_lr: float = 0.5, inner_lr: float = 0.3, jobs: int = 1, progress: bool = True) -> dict:
    """Train (or reuse) every run, then write ``summary.json``, ``demo.png``; returns the summary.

    ``jobs`` > 1 trains that many runs at once in worker processes (one torch thread each).
    """
    out = Path(out)
    settings = demo_settings(seeds, steps, num_domains, batch_size, meta_lr, inner_lr)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "demo_config.json"
    if saved.exists() and json.loads(saved.read_text()) != settings:
        raise ValueError(f"{out} holds a demo with other settings ({saved}); choose another --out")
    saved.write_text(json.dumps(settings, indent=2))

    configs = [run_config(out, algorithm, seed, settings, progress and jobs == 1)
               for seed in range(seeds) for algorithm in ALGORITHMS]
    if jobs > 1:
        import multiprocessing

        from tqdm.auto import tqdm

        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread) as pool, \
                tqdm(total=len(configs), desc="demo runs", disable=not progress) as bar:
            for cfg in pool.imap_unordered(_train_or_reuse, configs):
                bar.update(1)
                bar.write(f"finished {Path(cfg.out_dir).name}")
    else:
        for cfg in configs:
            _train_or_reuse(cfg)

    runs: Dict[str, List[dict]] = {a: [] for a in ALGORITHMS}
    for cfg in configs:
        run_dir = Path(cfg.out_dir)
        runs[cfg.algorithm].append({"summary": json.loads((run_dir / "summary.json").read_text()),
                                    "curve": _test_curve(run_dir, cfg.algorithm, settings)})
    summary = summarise(runs, settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_demo(runs, summary, out / "demo.png")
    return summary


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train_or_reuse(cfg: RunConfig) -> RunConfig:
    """Train the run unless it finished; resume it if it was interrupted."""
    run_dir = Path(cfg.out_dir)
    if not (run_dir / "summary.json").exists():
        train(cfg, resume=(run_dir / "checkpoint.pt").exists())
    return cfg


def summarise(runs: Dict[str, List[dict]], settings: dict) -> dict:
    """``{"erm": {"test_acc", ...}, "fish": {...}, "settings", "fish_minus_erm_points"}`` (acc in [0, 1])."""
    summary = {"settings": settings}
    for algorithm, items in runs.items():
        test = [r["summary"]["metrics"]["test"] for r in items]
        acc = [t["acc_avg"] for t in test]
        summary[algorithm] = {
            "test_acc": float(np.mean(acc)), "test_acc_std": float(np.std(acc)),
            "test_acc_per_seed": acc,
            "test_acc_colour_aligned": float(np.mean([t["acc_color_swap:aligned"] for t in test])),
            "test_acc_colour_swapped": float(np.mean([t["acc_color_swap:swapped"] for t in test])),
            "final_test_acc": float(np.mean([r["curve"][-1][1] for r in items])),
            "selected_step": [r["summary"]["selected_step"] for r in items],
        }
    summary["fish_minus_erm_points"] = 100 * (summary["fish"]["test_acc"] - summary["erm"]["test_acc"])
    return summary


def format_table(summary: dict) -> str:
    s = summary["settings"]
    lines = [f"CdSprites-N, N={s['num_domains']}, {s['seeds']} seed(s), equal budgets of "
             f"{s['examples_per_run']:,} training examples (model selected on colour-shuffled val)",
             f"{'algorithm':<10}{'test acc %':>16}{'colour-aligned %':>18}{'colour-swapped %':>18}{'final test %':>14}"]
    for algorithm in ALGORITHMS:
        r = summary[algorithm]
        lines.append(f"{algorithm.upper():<10}{100 * r['test_acc']:>10.1f} ± {100 * r['test_acc_std']:<4.1f}"
                     f"{100 * r['test_acc_colour_aligned']:>18.1f}{100 * r['test_acc_colour_swapped']:>18.1f}"
                     f"{100 * r['final_test_acc']:>14.1f}")
    lines.append(f"Fish - ERM: {summary['fish_minus_erm_points']:+.1f} points of test accuracy")
    return "\n".join(lines)


def _test_curve(run_dir: Path, algorithm: str, settings: dict) -> List[List[float]]:
    """``[[examples_seen, test acc_avg], ...]`` from the run's ``log.jsonl``."""
    per_step = settings["batch_size"] * (settings["num_domains"] if algorithm == "fish" else 1)
    curve = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "eval" and record["split"] == "test":
            curve[record["step"] * per_step] = record["metrics"]["acc_avg"]
    return [[k, v] for k, v in sorted(curve.items())]


def plot_demo(runs: Dict[str, List[dict]], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"erm": "tab:blue", "fish": "tab:orange"}
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for algorithm, items in runs.items():
        xs = np.array([p[0] for p in items[0]["curve"]])
        ys = np.array([[p[1] for p in r["curve"]][:len(xs)] for r in items]) * 100
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(xs, mean, marker="o", color=colours[algorithm], label=algorithm.upper())
        ax.fill_between(xs, mean - std, mean + std, color=colours[algorithm], alpha=0.2)
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("CdSprites-N test accuracy (colour uninformative)")
    ax.legend()
    width = 0.35
    for i, algorithm in enumerate(ALGORITHMS):
        r = summary[algorithm]
        vals = [100 * r["test_acc_colour_aligned"], 100 * r["test_acc_colour_swapped"]]
        pos = np.arange(2) + (i - 0.5) * width
        bars.bar(pos, vals, width, color=colours[algorithm], label=algorithm.upper())
        for x, v in zip(pos, vals):
            bars.text(x, v + 1, f"{v:.0f}", ha="center", fontsize=9)
    bars.set_xticks(range(2), ["colour as in training", "colour swapped"])
    bars.set_ylabel("test accuracy (%)")
    bars.set_ylim(0, 110)
    bars.set_title("selected model, by test colour")
    bars.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
