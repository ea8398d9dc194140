#!/usr/bin/env python
"""How much one ``gradmatch.Fish`` update costs above its compute floor.

Rerun from the repository root (default settings: CPU, 1 thread, 50 timed steps per variant;
about 2.5 minutes on 2 cores, 140 s measured)::

    .venv/bin/python benchmarks/fish_overhead.py

Other examples::

    .venv/bin/python benchmarks/fish_overhead.py --models cnn --steps 40 --optimizer sgd
    python benchmarks/fish_overhead.py --device cuda --threads 8 --out /tmp/fish_gpu

The measurement is :func:`gradmatch.speed.measure_fish_overhead` (its module docstring says what
``floor``, ``fish`` and ``deepcopy-fish`` do): median and IQR of ms/step over ``--steps``
interleaved repetitions after ``--warmup``, ``median(fish) / median(floor)`` and the overhead
``ratio - 1``, and Fish's bookkeeping (copy-in, meta step, finite-loss check, domain order) timed
alone. All speed figures are relative to the floor measured in the same run on the same machine.

Writes ``<out>/fish_overhead.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from runkit.bench import env as bench_env  # imports no torch

bench_env.size_thread_pools_from_argv()

from gradmatch import __version__, speed  # noqa: E402
from runkit.bench.output import rounded, save_results, write_rows  # noqa: E402
from runkit.bench.plot import iqr_bars, pyplot  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGET = 100 * speed.TARGET_OVERHEAD


def format_table(results, args) -> str:
    head = (f"{'model':<9} {'params':>7} {'batch':>6}  {'variant':<14} {'median ms':>10} {'IQR ms':>8} "
            f"{'min ms':>8} {'x floor':>8} {'overhead':>9} {'sys ms':>7} {'pg faults':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        for i, (v, s) in enumerate(r["steps"].items()):
            left = "" if i else f"{r['model']:<9} {r['params'] / 1e6:>6.2f}M {args.domains}x{r['batch_per_domain']:<4}"
            ovh = "-" if v == "floor" else f"{s['overhead_pct']:+.1f}%"
            lines.append(f"{left:<24}  {v:<14} {s['median_ms']:>10.2f} {s['iqr_ms']:>8.2f} {s['min_ms']:>8.2f} "
                         f"{s['ratio_vs_floor']:>8.3f} {ovh:>9} {s['sys_cpu_ms_median']:>7.1f} "
                         f"{s['minor_faults_median']:>9.0f}")
        lines.append("")
    head2 = f"{'model':<9} {'piece':<26} {'median ms':>10} {'IQR ms':>8} {'% floor':>8}"
    lines += ["Bookkeeping pieces timed alone (median ms per call, % of the floor's median step):",
              head2, "-" * len(head2)]
    for r in results:
        for i, (k, s) in enumerate(r["pieces"].items()):
            lines.append(f"{r['model'] if i == 0 else '':<9} {k:<26} {s['median_ms']:>10.3f} {s['iqr_ms']:>8.3f} "
                         f"{s['pct_of_floor']:>7.2f}%")
        fish, floor = r["steps"]["fish"], r["steps"]["floor"]["median_ms"]
        lines.append(f"{'':<9} {'sum of Fish pieces':<26} {r['fish_bookkeeping_ms']:>10.3f} {'':>8} "
                     f"{r['fish_bookkeeping_pct_of_floor']:>7.2f}%")
        lines.append(f"{'':<9} {'measured fish - floor':<26} {fish['median_ms'] - floor:>10.3f} {'':>8} "
                     f"{fish['overhead_pct']:>7.2f}%   (paired ratio median {fish['paired_ratio_median']:.3f}, "
                     f"IQR {fish['paired_ratio_q25']:.3f}-{fish['paired_ratio_q75']:.3f})")
        if "deepcopy_pieces_ms" in r:
            dc = r["steps"]["deepcopy-fish"]
            lines.append(f"{'':<9} {'measured deepcopy - floor':<26} {dc['median_ms'] - floor:>10.3f} {'':>8} "
                         f"{dc['overhead_pct']:>7.2f}%   (its pieces alone: {r['deepcopy_pieces_ms']:.3f} ms)")
        lines += [f"{'':<9} Fish overhead {fish['overhead_pct']:+.2f}% -> "
                  f"{'below' if r['below_target'] else 'ABOVE'} the {TARGET:.0f}% target", ""]
    return "\n".join(lines)


def write_csv(path: str, results) -> None:
    cols = ["model", "params", "batch_per_domain", "kind", "name", "median_ms", "q25_ms", "q75_ms", "iqr_ms",
            "min_ms", "n", "ratio_vs_floor", "overhead_pct", "paired_ratio_median", "user_cpu_ms_median",
            "sys_cpu_ms_median", "cpu_per_wall_median", "minor_faults_median", "pct_of_floor", "calls_per_sample"]
    write_rows(path, cols, ({"model": r["model"], "params": r["params"], "batch_per_domain": r["batch_per_domain"],
                             "kind": kind, "name": name, **rounded(s)}
                            for r in results for kind in ("step", "piece")
                            for name, s in r[kind + "s"].items()))


def plot(path: str, results, env: dict, args) -> None:
    plt = pyplot()
    colors = {"floor": "#8c8c8c", "fish": "#1f77b4", "deepcopy-fish": "#d62728"}
    fig, axes = plt.subplots(1, len(results), figsize=(max(6.0, 5.0 * len(results)), 4.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        names, st = list(r["steps"]), list(r["steps"].values())
        iqr_bars(ax, names, st, "ms", [colors[v] for v in names], fontsize=9, bold=[v == "fish" for v in names],
                 labels=[f"{s['median_ms']:.1f} ms" + ("" if v == "floor" else f"\n{s['overhead_pct']:+.1f}%")
                         for v, s in zip(names, st)])
        ax.axhline(r["steps"]["floor"]["median_ms"] * (1 + speed.TARGET_OVERHEAD), color="black", ls=":", lw=0.8,
                   label=f"floor +{TARGET:.0f}% (target)")
        ax.set_ylim(0, max(s["q75_ms"] for s in st) * 1.32)
        ax.set_ylabel("ms per update (median; bars = IQR)")
        ax.set_title(f"{r['model']} ({r['params'] / 1e6:.2f}M params, {args.domains}x{r['batch_per_domain']} @ "
                     f"{args.image_size}px)", fontsize=10)
        ax.text(0.02, 0.97, f"Fish bookkeeping alone: {r['fish_bookkeeping_ms']:.2f} ms "
                f"({r['fish_bookkeeping_pct_of_floor']:.2f}% of floor)", transform=ax.transAxes, ha="left",
                va="top", fontsize=8)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93), fontsize=8, frameon=False)
    fig.suptitle(f"One Fish update vs the compute floor ({args.optimizer} inner steps, S={args.domains} domains)\n"
                 + bench_env.machine_line(env, f"{env['torch_num_threads']} thread(s)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=speed.MODELS, default=list(speed.MODELS))
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant and model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the json/csv/png")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="inner optimizer: Adam(lr=1e-3) or plain SGD(lr=1e-2)")
    p.add_argument("--domains", type=int, default=3, help="S, domain batches per update")
    p.add_argument("--cnn-batch", type=int, default=speed.DEFAULT_BATCH["cnn"])
    p.add_argument("--resnet-batch", type=int, default=speed.DEFAULT_BATCH["resnet18"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--meta-lr", type=float, default=0.5, help="Fish eps (DomainBed default 0.5)")
    p.add_argument("--piece-samples", type=int, default=30, help="timing samples per piece")
    p.add_argument("--piece-ms", type=float, default=5.0, help="min duration of one piece sample")
    p.add_argument("--no-deepcopy", action="store_true", help="skip the deepcopy-Fish variant")
    p.add_argument("--time-cap", type=float, default=None, help="seconds per model before the timing stops early")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 4 or args.domains < 1 or args.threads < 1:
        raise SystemExit("need --steps >= 4, --domains >= 1 and --threads >= 1")
    device = bench_env.setup_torch(args.device, args.threads)
    env = bench_env.environment(device, gradmatch=__version__)
    print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), "
          f"{env['torch_num_threads']} thread(s), inner optimizer {args.optimizer}", flush=True)
    t0 = time.perf_counter()
    check = speed.check_deepcopy_matches_fish(args.optimizer, device, args.domains)
    print(f"deepcopy emulation vs gradmatch.Fish (2 steps, fixed order): max |dw| = {check:.2e}")
    results = [speed.measure_fish_overhead(
        m, device=device, domains=args.domains, batch=args.cnn_batch if m == "cnn" else args.resnet_batch,
        image_size=args.image_size, num_classes=args.num_classes, optimizer=args.optimizer, meta_lr=args.meta_lr,
        steps=args.steps, warmup=args.warmup, piece_samples=args.piece_samples, piece_ms=args.piece_ms,
        deepcopy=not args.no_deepcopy, seed=args.seed, time_cap_s=args.time_cap, log=print) for m in args.models]
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = bench_env.load_average()
    table = format_table(results, args)
    cpu_share = {r["model"]: round(r["steps"]["floor"]["cpu_per_wall_median"], 2) for r in results}
    print(f"\nload average start {env['load_average_at_start']} end {env['load_average_at_end']} "
          f"({env['cpu_count']} cpus); CPU time / wall time per floor step {cpu_share} "
          f"(~{args.threads} = the cores were ours; lower = the machine was shared)\n\n{table}")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings.update(speed.SETTINGS_NOTES, target_overhead_pct=TARGET,
                    inner_optimizer_kwargs=speed.INNER_OPTIMIZERS[args.optimizer])
    save_results(args.out, "fish_overhead", {"environment": env, "settings": settings,
                                             "deepcopy_equivalence_max_abs_diff": check, "total_seconds": total_s,
                                             "results": results, "table": table},
                 write_csv, plot, args, summary=f"total {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
