#!/usr/bin/env python
"""Time per ADIOS training step: batched masked views vs the official computation order.

Rerun from the repository root (default settings: CPU, 1 thread, 64 px, batch 32, N = 4 and 6,
2 warm-up + 7 timed steps per mode, then 4 peak-memory subprocesses; about 4.5 minutes on a
shared 2-core AMD EPYC)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adios_step.py

Other examples::

    .venv/bin/python benchmarks/adios_step.py --quick                  # 1 warm-up + 3 timed, ~half the time
    .venv/bin/python benchmarks/adios_step.py --image-sizes 64 96      # also 96 px crops
    .venv/bin/python benchmarks/adios_step.py --no-memory              # timing only
    python benchmarks/adios_step.py --device cuda --threads 8 --repeats 20 --out /tmp/adios_gpu

The measurement is :func:`adios_ssl.speed.measure_adios_step` (its module docstring says what one
step and the ``looped`` and ``batched`` modes are; peak memory: :func:`adios_ssl.speed.measure_memory`,
one fresh process per mode). The first step of each mode (untimed) must give the same SSL losses
(relative difference <= 1e-4), else the script stops without reporting; then the modes alternate
for ``--repeats`` steps each; ``speed-up = median(looped) / median(batched)``.

Writes ``<out>/adios_step.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from runkit.bench import env as bench_env  # imports no torch

bench_env.size_thread_pools_from_argv()

import numpy as np  # noqa: E402

from adios_ssl import speed  # noqa: E402
from adios_ssl.speed import MODES  # noqa: E402
from runkit.bench.output import save_results, write_rows  # noqa: E402
from runkit.bench.plot import bars, iqr_bars, pyplot  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLORS = {"looped": "#d62728", "batched": "#1f77b4"}


def _mem(r: dict, mode: str, key: str = "peak_mb") -> float:
    """A memory figure (MiB); ``key`` e.g. ``encoder_step_saved_activations_mb``."""
    return r.get("memory", {}).get(mode, {}).get(key, float("nan"))


def format_table(results) -> str:
    head = (f"{'size':>4} {'N':>2}  {'mode':<8} {'s/step':>7} {'IQR s':>6} {'enc s':>6} {'mask s':>6} {'CPU s':>6}  "
            f"{'speed-up':>8} {'paired':>6} {'CPU':>6}  {'peak MB':>7} {'saved MB enc/mask':>17}")
    lines = [head, "-" * len(head)]
    for r in results:
        rt, pc, saved = r["ratios"], r["pieces"], "{}_step_saved_activations_mb".format
        for mode in MODES:
            s = r["steps"][mode]
            ratio, paired, cpu = ((f"x{rt[k]:.2f}" for k in ("speedup", "speedup_paired_median", "cpu_time_speedup"))
                                  if mode == "batched" else ("1", "1", "1"))
            mem = (f"{_mem(r, mode):>7.0f} {_mem(r, mode, saved('encoder')):>9.0f} / "
                   f"{_mem(r, mode, saved('masker')):<5.0f}" if "memory" in r else f"{'-':>7} {'-':>17}")
            lines.append(f"{r['image_size']:>4} {r['num_masks']:>2}  {mode:<8} {s['median_s']:>7.3f} "
                         f"{s['iqr_s']:>6.3f} {s['encoder_median_s']:>6.3f} {s['masker_median_s']:>6.3f} "
                         f"{s['cpu_median_s']:>6.3f}  {ratio:>8} {paired:>6} {cpu:>6}  {mem}")
        lines.append(f"{'':>10}speed-up x{rt['speedup']:.2f} ({'meets' if rt['meets_target'] else 'BELOW'} the "
                     f"x{speed.TARGET_SPEEDUP} target; encoder step x{rt['encoder_step_speedup']:.2f}, masker step "
                     f"x{rt['masker_step_speedup']:.2f})")
        lines.append(f"{'':>10}looped minus its {r['num_masks'] - 1} repeated x1 passes ({pc['x1_fwd_bwd_s']:.3f} s "
                     f"fwd+bwd + {pc['x1_fwd_nograd_s']:.3f} s no-grad fwd each, timed alone): "
                     f"{pc['looped_minus_redundant_s']:.3f} s = x{pc['dedup_only_speedup']:.2f}; batched is "
                     f"{pc['batched_vs_looped_minus_redundant']:.2f}x that")
        if "memory" in r:
            ratio = {k: _mem(r, "batched", k) / _mem(r, "looped", k)
                     for k in ("peak_mb", saved("encoder"), saved("masker"))}
            lines.append(f"{'':>10}memory batched/looped: peak {ratio['peak_mb']:.2f}; autograd-saved activations: "
                         f"encoder step {ratio[saved('encoder')]:.2f}, masker step {ratio[saved('masker')]:.2f}")
    return "\n".join(lines)


def write_csv(path: str, results) -> None:
    cols = ["image_size", "num_masks", "batch", "mode", "median_s", "q25_s", "q75_s", "iqr_s", "min_s", "n",
            "encoder_median_s", "masker_median_s", "cpu_median_s", "sys_median_s", "minor_faults_median", "speedup",
            "speedup_paired_median", "cpu_time_speedup", "encoder_step_speedup", "masker_step_speedup",
            "dedup_only_speedup", "peak_mb", "encoder_step_peak_mb", "masker_step_peak_mb",
            "encoder_step_saved_activations_mb", "masker_step_saved_activations_mb"]
    rows = []
    for r in results:
        for mode in MODES:
            row = {"image_size": r["image_size"], "num_masks": r["num_masks"], "batch": r["batch"], "mode": mode,
                   **r["steps"][mode]}
            mem = r.get("memory", {}).get(mode, {})
            row.update({k: max(v) if isinstance(v, list) else v for k, v in mem.items() if k.endswith("_mb")})
            if mode == "batched":
                row.update({k: v for k, v in r["ratios"].items() if k != "meets_target"},
                           dedup_only_speedup=r["pieces"]["dedup_only_speedup"])
            rows.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    write_rows(path, cols, rows)


def plot(path: str, results, env: dict, args) -> None:
    plt = pyplot()
    has_mem = any("memory" in r for r in results)
    fig, axes = plt.subplots(1, 2 if has_mem else 1, figsize=(11 if has_mem else 6.5, 4.8), squeeze=False)
    ax, x, w = axes[0][0], np.arange(len(results)), 0.38
    top = max(r["steps"][m]["q75_s"] for r in results for m in MODES)
    for j, mode in enumerate(MODES):
        st = [r["steps"][mode] for r in results]
        iqr_bars(ax, x + (j - 0.5) * w, st, "s", COLORS[mode], [f"{s['median_s']:.2f}" for s in st], width=w,
                 scale=top / 2, boxed=False, capsize=3,
                 label={"looped": "looped (official order)", "batched": "batched (adios_ssl)"}[mode])
    for k, (xi, r) in enumerate(zip(x, results)):
        ax.hlines(r["pieces"]["looped_minus_redundant_s"], xi, xi + w, colors="black", linestyles="--",
                  linewidth=1.0, label="looped minus the repeated x1 passes" if k == 0 else None)
        ax.text(xi, max(r["steps"][m]["q75_s"] for m in MODES) + 0.09 * top, f"x{r['ratios']['speedup']:.2f}",
                ha="center", va="bottom", fontsize=11, fontweight="bold")
    labels = [f"{r['image_size']}px\nN={r['num_masks']}" for r in results]
    ax.set(xticks=x, xticklabels=labels, ylim=(0, top * 1.3), ylabel="s per training step (median; bars = IQR)")
    ax.set_title(f"time per ADIOS step, batch {args.batch} (speed-up in bold)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if has_mem:
        ax = axes[0][1]
        mtop = np.nanmax([_mem(r, m) for r in results for m in MODES])
        for j, mode in enumerate(MODES):
            vals = [_mem(r, mode) for r in results]
            saved = [_mem(r, mode, "encoder_step_saved_activations_mb") for r in results]
            bars(ax, x + (j - 0.5) * w, vals, COLORS[mode], [f"{v:.0f}" for v in vals], width=w, scale=mtop / 2,
                 boxed=False, label=f"{mode}: peak")
            bars(ax, x + (j - 0.5) * w, saved, "white", [f"{v:.0f}" for v in saved], width=w * 0.5, scale=0,
                 boxed=False, fontsize=7, alpha=0.55, hatch="//", linewidth=0.5,
                 label="autograd-saved activations (encoder step)" if j == 0 else None)
        ax.set(xticks=x, xticklabels=labels, ylim=(0, mtop * 1.35), ylabel="peak memory above the built models, MiB")
        ax.set_title(f"peak memory ({'CUDA allocated' if env['device'].startswith('cuda') else 'RSS'}, "
                     f"{args.memory_steps} steps)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.suptitle("ADIOS training step: batched masked views vs the official order (ResNet-18 + SimCLR)\n"
                 + bench_env.machine_line(env, f"{env['torch_num_threads']} thread(s)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image-sizes", type=int, nargs="+", default=[64],
                   help="square crop sizes (the masker supports 32..255; e.g. 64 96)")
    p.add_argument("--num-masks", type=int, nargs="+", default=[4, 6], help="N values")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per mode first (the first is the equivalence check)")
    p.add_argument("--quick", action="store_true", help="--repeats 3 --warmup 1 --piece-samples 1")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the json/csv/png")
    p.add_argument("--lr", type=float, default=0.01, help="SGD (momentum 0.9) learning rate")
    p.add_argument("--piece-samples", type=int, default=3,
                   help="samples of each repeated x1 pass timed alone (for the dedup-only bound)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per peak-memory subprocess")
    p.add_argument("--memory-timeout", type=float, default=600.0)
    p.add_argument("--time-cap", type=float, default=None, help="seconds per (size, N) before the timing stops early")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.piece_samples = 3, 1, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or args.threads < 1:
        raise SystemExit("need --repeats >= 1, --warmup >= 1 and --threads >= 1")
    device = bench_env.setup_torch(args.device, args.threads)
    env = bench_env.environment(device)
    print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), {env['torch_num_threads']} thread(s)",
          flush=True)
    t0 = time.perf_counter()
    results = []
    for size in args.image_sizes:
        for n in args.num_masks:
            r = speed.measure_adios_step(size, n, device=device, batch=args.batch, repeats=args.repeats,
                                         warmup=args.warmup, lr=args.lr, piece_samples=args.piece_samples,
                                         seed=args.seed, time_cap_s=args.time_cap, log=lambda s: print(s, flush=True))
            if not r["check"]["ok"]:
                print(f"REFUSING TO REPORT: batched and looped SSL losses differ by more than {speed.CHECK_RTOL:g} "
                      f"relative at {size}px N={n}: {r['check']}", file=sys.stderr)
                return 1
            results.append(r)
    t_timing = time.perf_counter() - t0
    if not args.no_memory:
        print(f"peak memory: {2 * len(results)} fresh subprocesses x {args.memory_steps} steps ...", flush=True)
        for r in results:
            r["memory"] = {mode: speed.measure_memory(mode, r["image_size"], r["num_masks"], batch=args.batch,
                                                      steps=args.memory_steps, device=str(device), seed=args.seed,
                                                      lr=args.lr, threads=args.threads, timeout_s=args.memory_timeout)
                           for mode in MODES}
            for mode, rec in r["memory"].items():
                if "error" in rec:
                    print(f"  memory {r['image_size']}px N={r['num_masks']} {mode}: {rec['error']}", file=sys.stderr)
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = bench_env.load_average()
    table = format_table(results)
    print(f"\n{table}")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings.update(speed.SETTINGS_NOTES, target_speedup=speed.TARGET_SPEEDUP, check_rtol=speed.CHECK_RTOL)
    save_results(args.out, "adios_step", {"environment": env, "settings": settings, "total_seconds": total_s,
                                          "timing_seconds": t_timing, "results": results, "table": table},
                 write_csv, plot, args, summary=f"total {total_s:.0f} s, timing {t_timing:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
