"""Fish and ERM through ``gradmatch train``: 1 vs several processes, and mixed precision vs float32.

Every variant is the shipped command (``python -m gradmatch.cli train ...``) on CdSprites-N in a
fresh run folder; the time of a step is what the run logs (``sec_per_step`` of process 0: data
to device, the step with its gradient all-reduces, the loss reduction), median over the steps
after ``--warmup``. Ratios are against the 1-process float32 run measured in the same call.

    .venv/bin/python benchmarks/fish_scale.py                       # CPU: 1 vs 2 processes, bf16
    .venv/bin/python benchmarks/fish_scale.py --quick               # smaller, ~2 minutes
    python benchmarks/fish_scale.py --accelerator gpu --devices 1 2 --precisions 32-true 16-mixed bf16-mixed

Strong scaling: the global batch is fixed (the official plan), so N processes each take 1/N
of every domain batch; ``speedup = t(1) / t(N)``, parallel efficiency ``= speedup / N``. On the
CPU each process gets ``--threads`` threads (1 by default), so N processes use N cores.
"""
import argparse
import os

from gradmatch.speed import time_gradmatch_train
from runkit.bench import env as bench_env
from runkit.bench.output import save_results, write_rows


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="process counts")
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"],
                   help="timed on the first process count (the 1-process baseline)")
    p.add_argument("--algorithms", nargs="+", default=["fish", "erm"])
    p.add_argument("--image-size", type=int, default=64, help="CdSprites image side (px)")
    p.add_argument("--num-domains", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32, help="per domain (Fish) / per step (ERM)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--quick", action="store_true", help="32 px, 30 steps: about 2 minutes on a CPU")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default="fish_scale")
    args = p.parse_args()
    if args.quick:
        args.image_size, args.steps, args.warmup = 32, 30, 6
    return args


def timed_run(args, algorithm: str, devices: int, precision: str) -> dict:
    result = time_gradmatch_train(algorithm=algorithm, accelerator=args.accelerator, devices=devices,
                                  precision=precision, num_domains=args.num_domains,
                                  image_size=args.image_size, batch_size=args.batch_size, steps=args.steps,
                                  warmup=args.warmup, threads=args.threads)
    if "error" in result:
        raise RuntimeError(f"gradmatch train ({algorithm}, {devices} processes, {precision}) failed: "
                           f"{result['error']}")
    return result


def add_ratios(results):
    for r in results:
        base = next(b for b in results if b["algorithm"] == r["algorithm"]
                    and b["devices"] == results[0]["devices"] and b["precision"] == "32-true")
        r["speedup_vs_1proc_fp32"] = base["ms_per_step"] / r["ms_per_step"]
        r["parallel_efficiency"] = (r["speedup_vs_1proc_fp32"] * base["devices"] / r["devices"]
                                    if r["precision"] == "32-true" else None)


def write_csv(path, results):
    write_rows(path, list(results[0]), results)


def plot(path, results, env, _):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['algorithm']}\n{r['devices']}p {r['precision']}" for r in results]
    bars = ax.bar(range(len(results)), [r["speedup_vs_1proc_fp32"] for r in results],
                  color=["tab:blue" if r["algorithm"] == "fish" else "tab:orange" for r in results])
    ax.axhline(1.0, color="gray", lw=0.8)
    for bar, r in zip(bars, results):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['ms_per_step']:.0f} ms",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(results)), labels, fontsize=7)
    ax.set_ylabel("speed vs 1 process float32")
    ax.set_title(f"gradmatch train, CdSprites {env['image_size']} px, {env['accelerator']} "
                 f"({env['threads']} thread(s)/process)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    args = parse_args()
    results = []
    for algorithm in args.algorithms:
        for devices in args.devices:
            results.append(timed_run(args, algorithm, devices, "32-true"))
        for precision in args.precisions:
            if precision != "32-true":
                results.append(timed_run(args, algorithm, args.devices[0], precision))
    add_ratios(results)
    print(f"{'algorithm':<9} {'procs':>5} {'precision':<11} {'ms/step':>8} {'IQR':>6} "
          f"{'ex/s':>8} {'speedup':>8} {'efficiency':>10} {'first loss':>10}")
    for r in results:
        eff = "" if r["parallel_efficiency"] is None else f"{r['parallel_efficiency']:.2f}"
        print(f"{r['algorithm']:<9} {r['devices']:>5} {r['precision']:<11} {r['ms_per_step']:>8.1f} "
              f"{r['ms_per_step_iqr']:>6.1f} {r['examples_per_s']:>8.0f} "
              f"{r['speedup_vs_1proc_fp32']:>8.2f} {eff:>10} {r['first_loss']:>10.4f}")
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    env = bench_env.environment(device, accelerator=args.accelerator, threads=args.threads,
                                image_size=args.image_size, num_domains=args.num_domains,
                                batch_size=args.batch_size, steps=args.steps, warmup=args.warmup)
    save_results(args.out, args.name, {"environment": env, "results": results},
                           write_csv, plot, None, summary="ratios vs 1 process float32")


if __name__ == "__main__":
    main()
