#!/usr/bin/env python
"""Per-step time and peak memory of the plugin's ``FishFast`` vs DomainBed's built-in ``Fish``
and ``ERM``, all driven through DomainBed's own ``Algorithm.update(minibatches)``.

Rerun from the repository root. Defaults: CPU, 1 thread, all three models, timed updates per
variant 8 (MNIST_CNN) / 4 (ResNet-18) / 3 (ResNet-50, ~9 s per update on one core), each after 1
warm-up update. About 9 minutes on the shared 2-core machine (535 s measured: MNIST_CNN 77 s,
ResNet-18 143 s, ResNet-50 309 s; 200 s of it are the 12 peak-memory subprocesses).
``--no-memory`` takes about 5.5 minutes, ``--memory-variants ERM Fish FishFast`` about 8::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/domainbed_fish.py

Other examples::

    .venv/bin/python benchmarks/domainbed_fish.py --models mnist_cnn --steps 30     # CNN only
    .venv/bin/python benchmarks/domainbed_fish.py --steps resnet50=5 --warmup resnet50=2
    .venv/bin/python benchmarks/domainbed_fish.py --no-memory --out /tmp/dbfish     # timing only
    python benchmarks/domainbed_fish.py --device cuda --threads 8 --out /tmp/dbfish_gpu

The measurement is :func:`gradmatch.domainbed.speed.measure_domainbed_fish` (its module docstring
says what the variants ``ERM``, ``Fish``, ``FishFast``, ``FishFast-default`` and ``floor`` are,
which models and hparams, how the ResNets' "pretrained" checkpoints are planted, and how peak
memory is measured in a fresh process per variant). Identical synthetic minibatches (``S`` = 3
domains, batch 64 per domain for MNIST_CNN, 8 for the ResNets) and initial weights, interleaved.

Writes ``<out>/domainbed_fish.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from runkit.bench import env as bench_env  # imports no torch

bench_env.size_thread_pools_from_argv()

from gradmatch import __version__  # noqa: E402
from gradmatch.domainbed import speed  # noqa: E402
from gradmatch.domainbed.speed import MODELS, VARIANTS  # noqa: E402
from runkit.bench.output import rounded, save_results, write_rows  # noqa: E402
from runkit.bench.plot import bars, iqr_bars, pyplot  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGET = 100 * speed.TARGET_OVERHEAD
COLORS = {"ERM": "#8c564b", "Fish": "#d62728", "FishFast": "#1f77b4",
          "FishFast-default": "#6baed6", "FishFast-nogip": "#9ecae1", "floor": "#8c8c8c"}
SHORT = {"FishFast-default": "FishFast\ndefault", "FishFast-nogip": "FishFast\nno GIP"}
RATIOS = ("FishFast/Fish", "FishFast-default/Fish", "FishFast/floor", "FishFast-default/floor", "Fish/ERM")


def _mem(r: dict, v: str) -> str:
    m = r["memory"].get(v)
    return "-" if not m or m.get("peak_mb") != m.get("peak_mb") else f"{m['peak_mb']:.0f}"


def format_table(results, args) -> str:
    head = (f"{'model':<16} {'variant':<17} {'median ms':>10} {'IQR ms':>9} {'min ms':>9} {'x floor':>8} "
            f"{'x Fish':>7} {'n':>3} {'sys ms':>7} {'pg faults':>9} "
            f"{'peak dGPU MB' if args.device.startswith('cuda') else 'peak dRSS MB':>13}")
    lines = [head, "-" * len(head)]
    for r in results:
        st, b, pc = r["stats"], r["breakdown"], r["pieces"]
        for i, v in enumerate(VARIANTS):
            s = st[v]
            lines.append(f"{'' if i else r['label']:<16} {v:<17} {s['median_ms']:>10.1f} {s['iqr_ms']:>9.1f} "
                         f"{s['min_ms']:>9.1f} {s['median_ms'] / st['floor']['median_ms']:>8.3f} "
                         f"{s['median_ms'] / st['Fish']['median_ms']:>7.3f} {s['n']:>3} {s['sys_ms_median']:>7.0f} "
                         f"{s['minor_faults_median']:>9.0f} {_mem(r, v):>13}")
        if "FishFast-nogip" in r["memory"]:
            lines.append(f"{'':<16} {'FishFast-nogip':<17} {'(memory only: fish_gip_every=0)':>67} "
                         f"{_mem(r, 'FishFast-nogip'):>13}")
        for k in RATIOS:
            x = r["ratios"][k]
            lines.append(f"  {k.replace('/', ' / '):<24} = {x['of_medians']:.3f} (paired {x['paired_median']:.3f}, "
                         f"IQR {x['paired_q25']:.3f}-{x['paired_q75']:.3f})")
        lines += [
            f"  where the time goes (pieces timed alone, median ms/call): Fish create_clone "
            f"{pc['Fish: create_clone']['median_ms']:.1f} + meta step {pc['Fish: meta step']['median_ms']:.1f} = "
            f"{b['fish_pieces_ms']:.1f} ms (measured Fish - floor {b['fish_minus_floor_ms']:+.1f} ms); FishFast "
            f"copy-in {pc['FishFast: copy-in']['median_ms']:.2f} + meta step "
            f"{pc['FishFast: meta step']['median_ms']:.2f} = {b['fishfast_pieces_ms']:.2f} ms = "
            f"{b['fishfast_pieces_pct_of_floor']:.2f}% of floor (measured FishFast - floor "
            f"{b['fishfast_minus_floor_ms']:+.1f} ms)",
            f"  FishFast overhead over the floor: {r['fishfast_overhead_pct']:+.1f}% end-to-end (n={r['steps']}; "
            f"{'below' if r['below_target_end_to_end'] else 'ABOVE'} the {TARGET:.0f}% target), "
            f"{b['fishfast_pieces_pct_of_floor']:.2f}% by its pieces "
            f"({'below' if r['below_target_by_pieces'] else 'ABOVE'}); FishFast saves "
            f"{r['fish_minus_fishfast_pieces_ms']:.1f} ms/update over Fish by the pieces "
            f"({100 * r['fish_minus_fishfast_pieces_ms'] / st['Fish']['median_ms']:.1f}% of a Fish update)", ""]
    return "\n".join(lines)


def write_csv(path: str, results) -> None:
    cols = ["model", "params", "batch_per_domain", "kind", "name", "median_ms", "q25_ms", "q75_ms", "iqr_ms",
            "min_ms", "n", "x_floor", "x_fish", "sys_ms_median", "minor_faults_median", "cpu_per_wall_median",
            "peak_mb", "paired_median", "paired_q25", "paired_q75", "calls_per_sample"]
    rows = []
    for r in results:
        common = {"model": r["model"], "params": r["params"], "batch_per_domain": r["batch_per_domain"]}
        floor, fish = r["stats"]["floor"]["median_ms"], r["stats"]["Fish"]["median_ms"]
        peak = {v: round(m["peak_mb"], 1) for v, m in r["memory"].items()}
        rows += [{**common, "kind": "step", "name": v, **rounded(s, 4), "x_floor": round(s["median_ms"] / floor, 4),
                  "x_fish": round(s["median_ms"] / fish, 4), "peak_mb": peak.get(v, "")}
                 for v, s in r["stats"].items()]
        rows += [{**common, "kind": "memory", "name": v, "peak_mb": p} for v, p in peak.items() if v not in VARIANTS]
        rows += [{**common, "kind": "ratio", "name": k, **rounded(q, 4), "median_ms": ""}
                 for k, q in r["ratios"].items()]
        rows += [{**common, "kind": "piece", "name": k, **rounded(s, 4)} for k, s in r["pieces"].items()]
    write_rows(path, cols, rows)


def plot(path: str, results, env: dict, args) -> None:
    plt = pyplot()
    with_mem = any(r["memory"] for r in results)
    fig, axes = plt.subplots(2 if with_mem else 1, len(results), squeeze=False,
                             figsize=(max(6.5, 5.6 * len(results)), 4.9 * (2 if with_mem else 1)))
    for j, r in enumerate(results):
        ax, st, q, b = axes[0][j], [r["stats"][v] for v in VARIANTS], r["ratios"], r["breakdown"]
        floor = r["stats"]["floor"]["median_ms"]
        iqr_bars(ax, [SHORT.get(v, v) for v in VARIANTS], st, "ms", [COLORS[v] for v in VARIANTS],
                 bold=[v == "FishFast" for v in VARIANTS],
                 labels=[f"{s['median_ms']:.0f} ms" + ("" if v == "floor" else f"\n{s['median_ms'] / floor:.3f}x floor")
                         for v, s in zip(VARIANTS, st)])
        ax.axhline(floor * (1 + speed.TARGET_OVERHEAD), color="black", ls=":", lw=0.8,
                   label=f"floor +{TARGET:.0f}% (FishFast target)")
        ax.text(0.02, 0.97, f"FishFast/Fish = {q['FishFast/Fish']['of_medians']:.3f}   Fish/ERM = "
                f"{q['Fish/ERM']['of_medians']:.3f}\nFishFast/floor = {q['FishFast/floor']['of_medians']:.3f} "
                f"({r['fishfast_overhead_pct']:+.1f}%; its pieces alone {b['fishfast_pieces_pct_of_floor']:.2f}%)\n"
                f"timed alone: Fish clone+meta {b['fish_pieces_ms']:.1f} ms, FishFast copy+lerp "
                f"{b['fishfast_pieces_ms']:.2f} ms", transform=ax.transAxes, ha="left", va="top", fontsize=8)
        ax.set_ylim(0, max(s["q75_ms"] for s in st) * 1.5)
        ax.set_ylabel("ms per update() (median; bars = IQR)")
        ax.set_title(f"{r['label']} ({r['params'] / 1e6:.1f}M params), S={args.domains} x "
                     f"{r['batch_per_domain']}, n={r['steps']}", fontsize=10)
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.82), fontsize=7, frameon=False)
        if with_mem:
            ax = axes[1][j]
            names = [v for v in speed.MEMORY_VARIANTS if v in r["memory"]]
            vals = [r["memory"][v].get("peak_mb", float("nan")) for v in names]
            ref = r["memory"].get("Fish", {}).get("peak_mb")
            bars(ax, [SHORT.get(v, v) for v in names], vals, [COLORS[v] for v in names], boxed=False,
                 labels=[f"{x:.0f} MB" + (f"\n{x / ref:.2f}x Fish" if ref and v != "Fish" else "")
                         for v, x in zip(names, vals)])
            ax.set_ylim(0, max([x for x in vals if x == x] or [1.0]) * 1.25)
            ax.set_ylabel("peak GPU memory over baseline, MB" if args.device.startswith("cuda")
                          else "peak RSS rise, MB (fresh process)")
            ax.set_title(f"{r['label']}: peak memory, {args.memory_steps} updates in a fresh process"
                         + ("\n(FishFast logs the GIP at step 0 and every 50 steps; 'no GIP': fish_gip_every=0)"
                            if "FishFast" in names else ""), fontsize=9)
    fig.suptitle(f"DomainBed update(): ERM vs built-in Fish vs plugin FishFast vs floor\nS={args.domains}, "
                 "synthetic data, random init\n" + bench_env.machine_line(env, f"{env['torch_num_threads']} thread(s)"),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_model(default, name: str):
    """``N`` (every model) or ``model=N`` tokens over ``default``."""
    def parse(tokens):
        out = dict(default)
        for t in tokens:
            m, _, n = t.rpartition("=")
            if m and m not in MODELS:
                raise SystemExit(f"--{name}: unknown model {m!r}; choose from {list(MODELS)}")
            out.update({m: int(n)} if m else {k: int(n) for k in out})
        return out
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", nargs="+", default=[],
                   help=f"timed updates per variant: N, or model=N ... (defaults {speed.DEFAULT_STEPS})")
    p.add_argument("--warmup", nargs="+", default=[],
                   help=f"untimed updates per variant first: N or model=N (defaults {speed.DEFAULT_WARMUP})")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP/MKL)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for domainbed_fish.{json,csv,png}")
    p.add_argument("--domains", type=int, default=3, help="S, training domains (minibatches)")
    p.add_argument("--cnn-batch", type=int, default=64, help="MNIST_CNN batch per domain")
    p.add_argument("--resnet-batch", type=int, default=8, help="ResNet batch per domain")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-variants", nargs="+", choices=speed.MEMORY_VARIANTS,
                   default=list(speed.DEFAULT_MEMORY_VARIANTS))
    p.add_argument("--memory-steps", type=int, default=2,
                   help="updates per memory subprocess (>= 2: Fish's peak comes with its 2nd clone)")
    p.add_argument("--memory-timeout", type=float, default=900.0)
    p.add_argument("--piece-samples", type=int, default=5, help="timing samples per overhead piece")
    p.add_argument("--piece-ms", type=float, default=20.0, help="min duration of one piece sample")
    p.add_argument("--time-cap", type=float, default=None, help="seconds per model before the timing stops early")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-home", default=None,
                   help="TORCH_HOME to plant the random ResNet checkpoints in (default: a temp dir)")
    args = p.parse_args(argv)
    args.steps = _per_model(speed.DEFAULT_STEPS, "steps")(args.steps)
    args.warmup = _per_model(speed.DEFAULT_WARMUP, "warmup")(args.warmup)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.steps[m] for m in args.models) < 1 or args.domains < 1 or args.threads < 1:
        raise SystemExit("need --steps >= 1, --domains >= 1 and --threads >= 1")
    device = bench_env.setup_torch(args.device, args.threads)
    t0 = time.perf_counter()
    with speed.planted_torch_home(args.torch_home) as (torch_home, planted):
        env = bench_env.environment(device, gradmatch=__version__, **speed.provenance())
        print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), {env['torch_num_threads']} thread(s); "
              f"DomainBed at {env['domainbed_checkout']}; random ResNet weights planted in {torch_home}", flush=True)
        check = speed.check_fishfast_matches_fish(device, args.domains)
        print(f"built-in Fish vs FishFast (fish_shuffle_domains=False), MNIST_CNN, 3 updates: max |dw| = "
              f"{check:.2e}", flush=True)
        results = [speed.measure_domainbed_fish(
            m, device=device, domains=args.domains, batch=args.cnn_batch if m == "mnist_cnn" else args.resnet_batch,
            steps=args.steps[m], warmup=args.warmup[m], piece_samples=args.piece_samples, piece_ms=args.piece_ms,
            memory_variants=() if args.no_memory else args.memory_variants, memory_steps=args.memory_steps,
            memory_timeout_s=args.memory_timeout, seed=args.seed, time_cap_s=args.time_cap, torch_home=torch_home,
            log=lambda line: print(line, flush=True)) for m in args.models]
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = bench_env.load_average()
    table = format_table(results, args)
    share = {r["model"]: round(r["stats"]["floor"]["cpu_per_wall_median"], 2) for r in results}
    print(f"\nload average start {env['load_average_at_start']} end {env['load_average_at_end']} "
          f"({env['cpu_count']} cpus); CPU time / wall time per floor update {share} "
          f"(~{args.threads} = the cores were ours; lower = shared)\n\n{table}")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "torch_home")}
    settings.update(speed.settings_notes(device), target_overhead_pct=TARGET, fish_equivalence_max_abs_diff=check,
                    planted_checkpoints=sorted(os.path.basename(p) for p in planted.values()))
    save_results(args.out, "domainbed_fish", {"environment": env, "settings": settings, "total_seconds": total_s,
                                              "results": results, "table": table},
                 write_csv, plot, args, indent=1, summary=f"total {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
