#!/usr/bin/env python
"""ADIOS training throughput through Lightning: 1 vs 2 processes (DDP), and mixed precision.

Rerun from the repository root (needs a solo-learn checkout, like the ``solo`` extra)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adios_scale.py --quick   # ~1.5 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adios_scale.py           # 64 px, batch 32
    python benchmarks/adios_scale.py --device cuda --threads 8 --out /tmp/adios_scale_gpu

What runs: solo-learn's SimCLR-ADIOS built from the shipped ``cpu_simclr_adios`` config (ResNet-18,
the masker, LARS, both optimizers, the plugin's ``training_step``) in a Lightning ``Trainer``, on
fixed random batches (no data loading or augmentation cost). Each configuration runs in fresh
processes (this script with ``--child``; Lightning's DDP launcher re-runs it for rank 1):

``1 process, 32-true``        the baseline
``2 processes, 32-true``      ``DDPStrategy(find_unused_parameters=False)`` (what main_pretrain.py
                              builds from ``strategy: ddp``), gloo on CPUs / NCCL on GPUs, the
                              SAME batch per process as the baseline (weak scaling)
``1 process, bf16-mixed``     autocast bfloat16 (CPU and GPU)
``1 process, 16-mixed``       autocast float16 + GradScaler (``--device cuda`` only)

Each process runs ``--warmup`` untimed batches then ``--steps`` timed ones (one ADIOS batch = an
encoder and a masker update); rank 0 times every batch (``on_train_batch_start`` to ``_end``,
with a CUDA synchronize on GPUs). Throughput = processes x per-process batch / median s per
batch. Reported against the baseline measured in the same run: ``speed-up`` = throughput /
baseline throughput, and for 2 processes the parallel efficiency = throughput(2) / (2 x
throughput(1)) (1.0 = perfect weak scaling). With ``--rounds R`` the configurations run R times,
in alternating order, and the medians are taken over all timed batches.

On a CPU each process gets ``--threads`` intra-op threads, so 2 processes use twice the cores
of the baseline: the efficiency says how much of the second core's worth turns into throughput
(communication, the extra all-reduces, the memory bus, and anything else running on the
machine count against it; the load average is recorded). With 1 GPU the 2-process row is
skipped.

Writes ``<out>/adios_scale.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import os
import sys

from runkit.bench import env as bench_env  # imports no torch

bench_env.size_thread_pools_from_argv()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runkit.bench.env import load_average  # noqa: E402
from runkit.bench.output import rounded, save_results, write_rows  # noqa: E402
from runkit.bench.timing import make_sync, summarize  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
CLASSES = 6


def configurations(device: str) -> List[dict]:
    configs = [{"name": "1 proc fp32", "processes": 1, "precision": "32-true"},
               {"name": "2 proc fp32", "processes": 2, "precision": "32-true"},
               {"name": "1 proc bf16-mixed", "processes": 1, "precision": "bf16-mixed"}]
    if device == "cuda":
        configs.append({"name": "1 proc 16-mixed", "processes": 1, "precision": "16-mixed"})
    return configs


# ---------------------------------------------------------------------------- one configuration
def build_model(args, processes: int, workdir: Path):
    """SimCLR-ADIOS from the shipped CPU config, as main_pretrain.py builds it."""
    from adios_ssl.sololearn.locate import ensure_importable

    ensure_importable()
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from adios_ssl.sololearn.register import register

    register()
    for c in range(CLASSES):  # solo-learn counts the class folders of a custom dataset
        (workdir / "classes" / f"class{c}").mkdir(parents=True, exist_ok=True)
    overrides = [f"data.train_path={workdir / 'classes'}", f"optimizer.batch_size={args.batch}",
                 f"devices=[{','.join(str(i) for i in range(processes))}]",
                 f"augmentations.0.crop_size={args.image_size}",
                 f"method_kwargs.N={args.num_masks}",
                 f"method_kwargs.mask_fbase={args.mask_fbase}",
                 "++method_kwargs.mask_pictures.enabled=false"]
    with initialize_config_module("adios_ssl.configs", version_base="1.2"):
        cfg = compose("cpu_simclr_adios", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return METHODS[cfg.method](parse_cfg(cfg)), cfg


def child(args) -> int:
    """Train one configuration; rank 0 writes its per-batch times to ``--result``."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    torch.set_num_threads(args.threads)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.manual_seed(args.seed)
    model, cfg = build_model(args, args.processes, Path(args.result).parent)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    sync = make_sync(torch.device("cuda", rank) if device.type == "cuda" else device)
    generator = torch.Generator().manual_seed(args.seed + 1 + rank)
    count = args.warmup + args.steps
    batches = [[torch.arange(args.batch) + i * args.batch,
                list(torch.randn(2, args.batch, 3, args.image_size, args.image_size,
                                 generator=generator)),
                torch.arange(args.batch) % CLASSES] for i in range(count)]
    times: List[float] = []
    start = {}

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            start["t"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            times.append(time.perf_counter() - start["t"])

    strategy = DDPStrategy(find_unused_parameters=False) if args.processes > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=args.processes,
        strategy=strategy, precision=args.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[Timer()], default_root_dir=args.result + ".d")
    trainer.fit(model, DataLoader(batches, batch_size=None))
    if trainer.global_rank == 0:
        assert int(model.adios_batches) == count, int(model.adios_batches)
        with open(args.result, "w") as f:
            json.dump({"times_s": times[args.warmup:], "warmup_times_s": times[:args.warmup],
                       "world_size": trainer.world_size,
                       "precision": str(trainer.precision)}, f)
    return 0


def run_configuration(config: dict, args, workdir: Path) -> dict:
    result = workdir / f"{config['name'].replace(' ', '_')}-{time.monotonic_ns()}.json"
    command = [sys.executable, os.path.abspath(__file__), "--child", "--result", str(result),
               "--processes", str(config["processes"]), "--precision", config["precision"],
               "--threads", str(args.threads), "--device", args.device,
               "--image-size", str(args.image_size), "--batch", str(args.batch),
               "--num-masks", str(args.num_masks), "--mask-fbase", str(args.mask_fbase),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"{config['name']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    record = json.loads(result.read_text())
    record["wall_s"] = wall
    return record


# ---------------------------------------------------------------------------- reporting
def result_row(config: dict, times: List[float], args) -> dict:
    """One configuration's row: its timing statistics and images per second."""
    stats = summarize(times, unit="s")
    return {"name": config["name"], "processes": config["processes"],
            "precision": config["precision"], "batch_per_process": args.batch, **stats,
            "images_per_s": config["processes"] * args.batch / stats["median_s"]}


def add_ratios(results: List[dict]) -> None:
    base = next(r for r in results if r["processes"] == 1 and r["precision"] == "32-true")
    for r in results:
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
        r["parallel_efficiency"] = (r["images_per_s"] / (r["processes"] * base["images_per_s"])
                                    if r["processes"] > 1 else None)


def format_table(results: List[dict]) -> str:
    head = (f"{'configuration':<20} {'batch/proc':>10} {'s/batch':>8} {'IQR s':>6} "
            f"{'images/s':>9} {'speed-up':>8} {'parallel eff.':>13}")
    lines = [head, "-" * len(head)]
    for r in results:
        eff = f"{r['parallel_efficiency']:.2f}" if r["parallel_efficiency"] is not None else "-"
        lines.append(f"{r['name']:<20} {r['batch_per_process']:>10} {r['median_s']:>8.3f} "
                     f"{r['q75_s'] - r['q25_s']:>6.3f} {r['images_per_s']:>9.1f} "
                     f"{'x%.2f' % r['speedup']:>8} {eff:>13}")
    return "\n".join(lines)


def write_csv(path: str, results: List[dict]) -> None:
    cols = ["name", "processes", "precision", "batch_per_process", "n", "median_s", "q25_s",
            "q75_s", "min_s", "images_per_s", "speedup", "parallel_efficiency"]
    write_rows(path, cols, (rounded(r) for r in results))


def plot(path: str, results: List[dict], env: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    x = np.arange(len(results))
    colors = ["#7f7f7f" if r["processes"] == 1 and r["precision"] == "32-true" else
              "#1f77b4" if r["processes"] > 1 else "#ff7f0e" for r in results]
    vals = [r["images_per_s"] for r in results]
    ax.bar(x, vals, 0.6, color=colors, edgecolor="black", linewidth=0.6)
    top = max(vals)
    for xi, r in zip(x, results):
        label = f"x{r['speedup']:.2f}"
        if r["parallel_efficiency"] is not None:
            label += f"\neff. {r['parallel_efficiency']:.2f}"
        ax.text(xi, r["images_per_s"] + 0.01 * top, label, ha="center", va="bottom", fontsize=10,
                fontweight="bold")
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in results], fontsize=9)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("training images per second (median batch)")
    ax.set_title(f"SimCLR-ADIOS, ResNet-18, {args.image_size} px, N={args.num_masks}, "
                 f"batch {args.batch} per process", fontsize=10)
    fig.suptitle("ADIOS throughput through Lightning: processes and precision\n"
                 + bench_env.machine_line(env, f"{args.threads} thread(s)/process"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment(args) -> dict:
    import lightning

    extra = {"lightning": lightning.__version__, "threads_per_process": args.threads}
    if args.device == "cuda":
        extra["cuda_device_count"] = torch.cuda.device_count()
    return bench_env.environment(torch.device(args.device), **extra)


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="images per process")
    p.add_argument("--num-masks", type=int, default=4, help="N")
    p.add_argument("--mask-fbase", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed batches per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every configuration this many times, alternating the order")
    p.add_argument("--quick", action="store_true",
                   help="small settings: 32 px, batch 16, N=2, fbase 8, 6 timed + 2 warm-up "
                        "batches, 2 rounds")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the json/csv/png")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration run")
    p.add_argument("--seed", type=int, default=0)
    # internal: one configuration in fresh processes
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.num_masks, args.mask_fbase = 32, 16, 2, 8
        args.steps, args.warmup, args.rounds = 6, 2, 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    env = environment(args)
    print(f"torch {env['torch']}, lightning {env['lightning']} on {args.device} "
          f"({env.get('cuda_device', env['cpu_model'])}), {args.threads} thread(s)/process",
          flush=True)
    configs = configurations(args.device)
    skipped = []
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        skipped = [c["name"] for c in configs if c["processes"] > 1]
        configs = [c for c in configs if c["processes"] == 1]
        print(f"1 GPU: skipping {skipped}", flush=True)
    t0 = time.perf_counter()
    times = {c["name"]: [] for c in configs}
    walls = {c["name"]: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="adios-scale-") as tmp:
        for round_ in range(args.rounds):
            for config in (configs if round_ % 2 == 0 else configs[::-1]):
                record = run_configuration(config, args, Path(tmp))
                times[config["name"]] += record["times_s"]
                walls[config["name"]].append(record["wall_s"])
                print(f"  {config['name']}: median {np.median(record['times_s']):.3f} s/batch "
                      f"({record['wall_s']:.0f} s with start-up)", flush=True)
    results = [result_row(c, times[c["name"]], args) for c in configs]
    add_ratios(results)
    for r in results:
        r["times_s"] = times[r["name"]]
        r["wall_s"] = walls[r["name"]]
    total = time.perf_counter() - t0
    env["load_average_at_end"] = load_average()
    table = format_table(results)
    print()
    print(table)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "child", "result", "processes", "precision")}
    settings.update(
        model="solo-learn SimCLR-ADIOS from the shipped cpu_simclr_adios config: ResNet-18, "
              "projector 512-512-128, masker MaskingNetwork(image_size, N, mask_fbase, 'gn'), "
              "LARS for the encoder and the masker",
        inputs="fixed random batches (two views), different per process; no data loading",
        ddp="DDPStrategy(find_unused_parameters=False), use_distributed_sampler=False, "
            "gloo (CPU) / NCCL (GPU)", skipped=skipped,
        timing="rank 0, on_train_batch_start..on_train_batch_end (CUDA-synchronized)")
    save_results(args.out, "adios_scale",
                 {"environment": env, "settings": settings, "total_seconds": total,
                  "results": results, "table": table},
                 write_csv, plot, args, summary=f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
