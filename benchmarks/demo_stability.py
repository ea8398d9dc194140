"""How stable is each Fish recipe of ``gradmatch demo`` over seeds? (issue 10, part 2)

Trains Fish with every recipe of ``gradmatch.demo.RECIPES`` (or those given) and ERM once, on
seeds 0..S-1, at the demo's equal budgets (N = 15, 450 Fish steps x 15 domains x 32 = 216,000
examples per run), through the demo's own run configurations and failure handling. A run is
"stable" when it finishes without a non-finite loss. Prints a table and writes
``demo_stability.{json,csv,png}``. Resumable: rerun the same command to continue.

    .venv/bin/python benchmarks/demo_stability.py --seeds 10 --jobs 2 --out runs/demo_stability
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from runkit.bench import env as bench_env
from runkit.bench.output import save_results


def main(argv=None) -> None:
    from gradmatch import demo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(demo.RECIPES), choices=list(demo.RECIPES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--erm-seeds", type=int, help="ERM on seeds 0..K-1 only (default: --seeds)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing: tabulate the runs that have finished or failed")
    parser.add_argument("--out", default="runs/demo_stability", help="run folders (resumable)")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    settings = {name: demo.demo_settings(args.seeds, args.steps, 15, 32, name) for name in args.recipes}
    # arms in order: the first recipe, ERM, the other recipes (each over all seeds)
    arms = {name: [demo.run_config(out / name, "fish", seed, settings[name], False) for seed in range(args.seeds)]
            for name in args.recipes[:1]}
    erm_seeds = args.seeds if args.erm_seeds is None else args.erm_seeds
    arms["erm"] = [demo.run_config(out / "erm", "erm", seed, settings[args.recipes[0]], False)
                   for seed in range(erm_seeds)]
    arms.update({name: [demo.run_config(out / name, "fish", seed, settings[name], False)
                        for seed in range(args.seeds)] for name in args.recipes[1:]})
    configs = [c for arm in arms.values() for c in arm]
    if args.collect_only:
        arms = {name: [c for c in cfgs if _ended(c)] for name, cfgs in arms.items()}
    else:
        demo.train_all(configs, jobs=args.jobs, progress=True)

    arm_settings = {**settings, "erm": settings[args.recipes[0]]}
    runs = {name: [demo.collect_run(c, arm_settings[name]) for c in cfgs] for name, cfgs in arms.items()}
    results = [_row(name, items, arm_settings[name]) for name, items in runs.items()]
    lines = [f"{'arm':<11}{'inner':<22}{'stable':>8}{'test acc % (finished)':>24}{'worst':>7}{'final':>7}"]
    for r in results:
        acc = "-" if r["test_acc"] is None else f"{r['test_acc']:.1f} ± {r['test_acc_std']:.1f}"
        worst = "-" if r["worst"] is None else f"{r['worst']:.1f}"
        final = "-" if r["final_test_acc"] is None else f"{r['final_test_acc']:.1f}"
        lines.append(f"{r['arm']:<11}{r['inner']:<22}{r['stable']:>8}{acc:>24}{worst:>7}{final:>7}")
    print("\n".join(lines))
    env = bench_env.environment("cpu", jobs=args.jobs, seeds=args.seeds, fish_steps=args.steps)
    save_results(args.results, "demo_stability", {"environment": env, "results": results},
                           _write_csv, _plot, None, summary=f"{len(configs)} runs")


def _ended(cfg) -> bool:
    run = Path(cfg.out_dir)
    return (run / "summary.json").exists() or (run / "failed.json").exists()


def _row(name: str, items: list, settings: dict) -> dict:
    import numpy as np

    done = [r for r in items if not r["failed"]]
    acc = [100 * r["summary"]["metrics"]["test"]["acc_avg"] for r in done]
    fish = settings["fish"]
    return {
        "arm": name, "inner": "adam 1e-3 (ERM)" if name == "erm" else
        f"{fish['optimizer']} {fish['inner_lr']:g}, eps {fish['meta_lr']:g}",
        "stable": f"{len(done)}/{len(items)}", "finished": len(done), "runs": len(items),
        "test_acc": float(np.mean(acc)) if acc else None, "test_acc_std": float(np.std(acc)) if acc else None,
        "worst": float(min(acc)) if acc else None,
        "final_test_acc": float(np.mean([100 * r["curve"][-1][1] for r in done])) if done else None,
        "per_seed": {r["seed"]: (None if r["failed"] else 100 * r["summary"]["metrics"]["test"]["acc_avg"])
                     for r in items},
        "failed": {r["seed"]: r["failed"] for r in items if r["failed"]},
    }


def _write_csv(path: str, results: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "test_acc", "failed"])
        for r in results:
            for seed, acc in r["per_seed"].items():
                w.writerow([r["arm"], seed, "" if acc is None else f"{acc:.2f}", r["failed"].get(seed, "")])


def _plot(path: str, results: list, env: dict, _args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(results):
        for seed, acc in r["per_seed"].items():
            if acc is None:
                ax.scatter(i, 2, marker="x", color="red", zorder=3)
            else:
                ax.scatter(i + (int(seed) - 4.5) * 0.03, acc, color="tab:blue" if r["arm"] == "erm" else "tab:orange")
        ax.text(i, 104, r["stable"], ha="center", fontsize=9)
    ax.set_xticks(range(len(results)), [f"{r['arm']}\n{r['inner']}" for r in results], fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("selected model's test accuracy (%)")
    ax.set_title("CdSprites-N (N=15) over seeds; x at 2 %: failed run (non-finite loss)\n"
                 + bench_env.machine_line(env, "1 thread per run"), fontsize=9)
    ax.axhline(50, color="grey", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
