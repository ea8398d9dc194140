#!/usr/bin/env python
"""How much one ``gradmatch.Fish`` update costs above its compute floor.

Rerun from the repository root (default settings: CPU, 1 thread, 50 timed steps per variant;
about 2.5 minutes on 2 cores, 140 s measured)::

    .venv/bin/python benchmarks/fish_overhead.py

Other examples::

    .venv/bin/python benchmarks/fish_overhead.py --models cnn --steps 40 --optimizer sgd
    python benchmarks/fish_overhead.py --device cuda --threads 8 --out /tmp/fish_gpu

Three ways of doing one update from ``S`` domain batches are timed, interleaved step by step
(the order within a repetition alternates, so machine noise hits all of them alike):

``floor``
    the same ``S`` forward/backward passes and ``S`` inner-optimizer steps done plainly on one
    model: no copy of the weights, no meta step. Fish cannot be cheaper than this.
``fish``
    ``gradmatch.Fish.step``: in-place copy meta -> persistent inner model
    (``torch._foreach_copy_``), ``S`` inner steps, fused in-place meta step
    (``torch._foreach_lerp_``).
``deepcopy-fish``
    what DomainBed's built-in Fish does: a new inner network every step (emulated with
    ``copy.deepcopy``; DomainBed actually constructs a fresh network and loads the state dict,
    which costs at least as much), a new inner optimizer that reloads the saved optimizer state,
    and an out-of-place ``state_dict`` meta step (``meta + eps * (inner - meta)``) loaded back
    with ``load_state_dict``.

Reported: median and IQR of ms/step over ``--steps`` repetitions (after ``--warmup``),
``median(fish) / median(floor)`` and the overhead ``ratio - 1``, and the pieces of Fish's
bookkeeping (copy-in, meta step, finite-loss checks, domain order) timed alone in absolute ms.
All speed figures are relative to the floor measured in the same run on the same machine.

Writes ``<out>/fish_overhead.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import copy
import csv
import functools
import gc
import os
import sys
import time
from typing import Callable, Dict, List

import bench_env  # stdlib only: before torch

bench_env.size_thread_pools_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_env import load_average, make_sync, save_results  # noqa: E402
from torch import nn  # noqa: E402

import gradmatch  # noqa: E402
from gradmatch import Fish  # noqa: E402
from gradmatch.losses import check_finite, cross_entropy_loss  # noqa: E402
from gradmatch.nets import SpriteCNN  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
MODELS = ("cnn", "resnet18")
DEFAULT_BATCH = {"cnn": 32, "resnet18": 16}
TARGET_OVERHEAD = 0.05
VARIANTS = ("floor", "fish", "deepcopy-fish")


# ---------------------------------------------------------------------------- models
def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    if name == "cnn":
        return SpriteCNN(num_classes=num_classes, in_channels=3, image_size=image_size)
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    raise ValueError(name)


def optimizer_factory(name: str) -> Callable:
    if name == "adam":
        return functools.partial(torch.optim.Adam, lr=1e-3)
    if name == "sgd":
        return functools.partial(torch.optim.SGD, lr=1e-2)
    raise ValueError(name)


# ---------------------------------------------------------------------------- the three updates
class Floor:
    """S plain forward/backward + optimizer steps on one model: the compute Fish cannot avoid."""

    def __init__(self, model: nn.Module, make_opt: Callable):
        self.model = model
        self.optimizer = make_opt(model.parameters())

    def step(self, batches) -> float:
        losses = []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = cross_entropy_loss(self.model, batch)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).mean().item()


class FishRunner:
    def __init__(self, model: nn.Module, make_opt: Callable, meta_lr: float):
        self.fish = Fish(model, make_opt, meta_lr)

    def step(self, batches) -> float:
        return self.fish.step(batches)["loss"]


class DeepcopyFish:
    """DomainBed-style Fish: fresh inner net + optimizer per step, out-of-place state_dict math."""

    def __init__(self, model: nn.Module, make_opt: Callable, meta_lr: float):
        self.model = model
        self.make_opt = make_opt
        self.meta_lr = meta_lr
        self.optimizer_state = None

    def create_clone(self):
        inner = copy.deepcopy(self.model)
        optimizer = self.make_opt(inner.parameters())
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        return inner, optimizer

    def meta_update(self, inner: nn.Module) -> None:
        meta = self.model.state_dict()
        inner_sd = inner.state_dict()
        new = {k: meta[k] + self.meta_lr * (inner_sd[k] - meta[k]) for k in meta}
        self.model.load_state_dict(new)

    def step(self, batches) -> float:
        inner, optimizer = self.create_clone()
        losses = []
        for batch in batches:
            loss = cross_entropy_loss(inner, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        self.optimizer_state = optimizer.state_dict()
        self.meta_update(inner)
        return torch.stack(losses).mean().item()


# ---------------------------------------------------------------------------- timing helpers
def time_call(fn: Callable, sync: Callable, reps: int = 1) -> float:
    """Seconds per call of ``fn`` (averaged over ``reps`` back-to-back calls)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps






def interleaved(fns: Dict[str, Callable], sync: Callable, warmup: int, reps: int,
                calls_per_sample: Dict[str, int] = None, usage: Dict[str, list] = None
                ) -> Dict[str, List[float]]:
    """Time each fn ``reps`` times, alternating the order (ABC, CBA, ABC, ...) per repetition.

    If ``usage`` is a dict, ``usage[name]`` gets one ``(minor page faults, user s, system s)``
    per sample (process CPU time from getrusage, all threads).
    """
    names = list(fns)
    calls_per_sample = calls_per_sample or {n: 1 for n in names}
    for i in range(warmup):
        for n in (names if i % 2 == 0 else names[::-1]):
            fns[n]()
    sync()
    gc.collect()
    out: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(reps):
        for n in (names if i % 2 == 0 else names[::-1]):
            before = bench_env.rusage()
            out[n].append(time_call(fns[n], sync, calls_per_sample[n]))
            if usage is not None:
                after = bench_env.rusage()
                usage.setdefault(n, []).append(tuple(after[k] - before[k] for k in
                                                     ("minflt", "user_s", "sys_s")))
    return out


def calibrate(fn: Callable, sync: Callable, min_sample_s: float) -> int:
    """Back-to-back calls per timing sample so that one sample lasts about ``min_sample_s``."""
    fn()
    t = max(time_call(fn, sync, 3), 1e-7)
    return int(min(1000, max(1, np.ceil(min_sample_s / t))))


# ---------------------------------------------------------------------------- pieces of Fish
def fish_pieces(fish: Fish, loss: torch.Tensor, num_domains: int) -> Dict[str, Callable]:
    """Fish's bookkeeping, written op for op as in ``Fish._fish_step``, for isolated timing."""
    meta_params = list(fish.model.parameters())
    inner_params = list(fish.inner.parameters())
    eps = fish.meta_step_size(num_domains)
    losses = [loss.detach()] * num_domains

    def copy_in():
        with torch.no_grad():
            torch._foreach_copy_(inner_params, meta_params)
            if fish._meta_buffers:
                torch._foreach_copy_(fish._inner_buffers, fish._meta_buffers)

    def meta_step():
        with torch.no_grad():
            torch._foreach_lerp_(meta_params, inner_params, eps)
            if fish._meta_float:
                torch._foreach_lerp_(fish._meta_float, fish._inner_float, eps)
            if fish._meta_other:
                torch._foreach_copy_(fish._meta_other, fish._inner_other)

    def finite_check():
        stacked = torch.stack(losses)
        if not torch.isfinite(stacked).all():
            check_finite(stacked, "in the benchmark")

    def order_and_mode():
        fish.domain_order(num_domains)
        fish.inner.train(fish.model.training)

    return {"copy-in": copy_in, "meta-step": meta_step,
            "finite check (once per step)": finite_check, "domain order + train()": order_and_mode}


def deepcopy_pieces(runner: DeepcopyFish) -> Dict[str, Callable]:
    inner, _ = runner.create_clone()
    # meta_update(inner) would move the meta weights towards ``inner``; harmless for timing.
    return {"deepcopy + new optimizer": lambda: runner.create_clone(),
            "state_dict meta step": lambda: runner.meta_update(inner)}


# ---------------------------------------------------------------------------- equivalence check
def check_deepcopy_matches_fish(make_opt: Callable, device: torch.device, num_domains: int) -> float:
    """Max |difference| of the weights after 2 steps of Fish vs. the deepcopy emulation."""
    torch.manual_seed(0)
    base = build_model("cnn", 10, 32).to(device)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=g).to(device),
                torch.randint(0, 10, (8,), generator=g).to(device)) for _ in range(num_domains)]
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    fish = Fish(a, make_opt, 0.5, shuffle_domains=False)
    ref = DeepcopyFish(b, make_opt, 0.5)
    for _ in range(2):
        fish.step(batches)
        ref.step(batches)
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------- one model
def bench_model(name: str, args, device: torch.device) -> dict:
    sync = make_sync(device)
    batch = args.cnn_batch if name == "cnn" else args.resnet_batch
    make_opt = optimizer_factory(args.optimizer)
    torch.manual_seed(args.seed)
    base = build_model(name, args.num_classes, args.image_size).to(device).train()
    n_params = sum(p.numel() for p in base.parameters())
    g = torch.Generator().manual_seed(args.seed + 1)
    batches = [(torch.randn(batch, 3, args.image_size, args.image_size, generator=g).to(device),
                torch.randint(0, args.num_classes, (batch,), generator=g).to(device))
               for _ in range(args.domains)]

    runners = {
        "floor": Floor(copy.deepcopy(base), make_opt),
        "fish": FishRunner(copy.deepcopy(base), make_opt, args.meta_lr),
        "deepcopy-fish": DeepcopyFish(copy.deepcopy(base), make_opt, args.meta_lr),
    }
    variants = [v for v in VARIANTS if v != "deepcopy-fish" or not args.no_deepcopy]
    fns = {v: functools.partial(runners[v].step, batches) for v in variants}
    print(f"[{name}] {n_params / 1e6:.2f}M params, {args.domains} x batch {batch}, "
          f"{args.image_size}px: {args.warmup} warm-up + {args.steps} timed steps per variant ...",
          flush=True)
    t_start = time.perf_counter()
    usage: Dict[str, list] = {}
    raw = interleaved(fns, sync, args.warmup, args.steps, usage=usage)
    steps = {v: bench_env.summarize(raw[v], scale=1e3) for v in variants}
    for v in variants:
        faults, user_s, sys_s = (np.asarray(x, dtype=np.float64) for x in zip(*usage[v]))
        steps[v].update(minor_faults_median=float(np.median(faults)),
                        user_cpu_ms_median=float(1e3 * np.median(user_s)),
                        sys_cpu_ms_median=float(1e3 * np.median(sys_s)),
                        # (user + sys) / wall: ~threads when the cores were ours, less if shared
                        cpu_per_wall_median=float(np.median((user_s + sys_s) / np.asarray(raw[v]))))
    floor_med = steps["floor"]["median_ms"]
    for v in variants:
        steps[v]["ratio_vs_floor"] = steps[v]["median_ms"] / floor_med
        steps[v]["overhead_pct"] = 100.0 * (steps[v]["ratio_vs_floor"] - 1.0)
        # per-repetition paired ratio: robust to slow drifts of the machine's speed
        paired = np.asarray(raw[v]) / np.asarray(raw["floor"])
        steps[v]["paired_ratio_median"] = float(np.median(paired))
        steps[v]["paired_ratio_q25"], steps[v]["paired_ratio_q75"] = (
            float(x) for x in np.percentile(paired, [25, 75]))
    t_steps = time.perf_counter() - t_start

    # the bookkeeping pieces, alone; each sample lasts >= ~--piece-ms ms of back-to-back calls
    loss = torch.tensor(1.0, device=device)
    piece_fns = fish_pieces(runners["fish"].fish, loss, args.domains)
    if "deepcopy-fish" in variants:
        piece_fns.update(deepcopy_pieces(runners["deepcopy-fish"]))
    calls = {k: calibrate(f, sync, args.piece_ms / 1e3) for k, f in piece_fns.items()}
    raw_pieces = interleaved(piece_fns, sync, 1, args.piece_samples, calls)
    pieces = {}
    for k in piece_fns:
        pieces[k] = bench_env.summarize(raw_pieces[k], scale=1e3)
        pieces[k]["calls_per_sample"] = calls[k]
        pieces[k]["pct_of_floor"] = 100.0 * pieces[k]["median_ms"] / floor_med
    fish_keys = [k for k in piece_fns if k in ("copy-in", "meta-step") or k.startswith("finite check")
                 or k.startswith("domain order")]
    bookkeeping_ms = sum(pieces[k]["median_ms"] for k in fish_keys)
    extra = {}
    if "deepcopy-fish" in variants:
        dc_ms = sum(pieces[k]["median_ms"] for k in piece_fns if k not in fish_keys)
        extra = {"deepcopy_pieces_ms": dc_ms,
                 "unexplained_deepcopy_minus_floor_ms":
                     steps["deepcopy-fish"]["median_ms"] - floor_med - dc_ms}
    print(f"[{name}] done in {time.perf_counter() - t_start:.0f} s "
          f"(steps {t_steps:.0f} s)", flush=True)
    return {
        "model": name, "implementation": "gradmatch.nets.SpriteCNN" if name == "cnn" else "torchvision resnet18",
        "params": n_params, "batch_per_domain": batch,
        "steps": steps, "pieces": pieces,
        "fish_bookkeeping_ms": bookkeeping_ms,
        "fish_bookkeeping_pct_of_floor": 100.0 * bookkeeping_ms / floor_med,
        "unexplained_fish_minus_floor_ms": steps["fish"]["median_ms"] - floor_med - bookkeeping_ms,
        "overhead_pct": steps["fish"]["overhead_pct"],
        "below_target": steps["fish"]["overhead_pct"] < 100 * TARGET_OVERHEAD,
        **extra,
        "raw_step_ms": {v: [1e3 * s for s in raw[v]] for v in variants},
        "raw_step_minor_faults": {v: [int(u[0]) for u in usage[v]] for v in variants},
    }


# ---------------------------------------------------------------------------- reporting


def format_table(results: List[dict], args) -> str:
    lines = []
    head = (f"{'model':<9} {'params':>7} {'batch':>6}  {'variant':<14} {'median ms':>10} "
            f"{'IQR ms':>8} {'min ms':>8} {'x floor':>8} {'overhead':>9} {'sys ms':>7} "
            f"{'pg faults':>9}")
    lines += [head, "-" * len(head)]
    for r in results:
        first = True
        for v, s in r["steps"].items():
            left = (f"{r['model']:<9} {r['params'] / 1e6:>6.2f}M {args.domains}x{r['batch_per_domain']:<4}"
                    if first else " " * 24)
            ovh = "-" if v == "floor" else f"{s['overhead_pct']:+.1f}%"
            lines.append(f"{left}  {v:<14} {s['median_ms']:>10.2f} {s['iqr_ms']:>8.2f} "
                         f"{s['min_ms']:>8.2f} {s['ratio_vs_floor']:>8.3f} {ovh:>9} "
                         f"{s['sys_cpu_ms_median']:>7.1f} {s['minor_faults_median']:>9.0f}")
            first = False
        lines.append("")
    lines.append("Bookkeeping pieces timed alone (median ms per call, % of the floor's median step):")
    head2 = f"{'model':<9} {'piece':<26} {'median ms':>10} {'IQR ms':>8} {'% floor':>8}"
    lines += [head2, "-" * len(head2)]
    for r in results:
        first = True
        for k, s in r["pieces"].items():
            lines.append(f"{r['model'] if first else '':<9} {k:<26} {s['median_ms']:>10.3f} "
                         f"{s['iqr_ms']:>8.3f} {s['pct_of_floor']:>7.2f}%")
            first = False
        fish = r["steps"]["fish"]
        lines.append(f"{'':<9} {'sum of Fish pieces':<26} {r['fish_bookkeeping_ms']:>10.3f} "
                     f"{'':>8} {r['fish_bookkeeping_pct_of_floor']:>7.2f}%")
        lines.append(f"{'':<9} {'measured fish - floor':<26} "
                     f"{fish['median_ms'] - r['steps']['floor']['median_ms']:>10.3f} {'':>8} "
                     f"{fish['overhead_pct']:>7.2f}%   (paired ratio median "
                     f"{fish['paired_ratio_median']:.3f}, IQR {fish['paired_ratio_q25']:.3f}"
                     f"-{fish['paired_ratio_q75']:.3f})")
        if "deepcopy_pieces_ms" in r:
            dc = r["steps"]["deepcopy-fish"]
            lines.append(f"{'':<9} {'measured deepcopy - floor':<26} "
                         f"{dc['median_ms'] - r['steps']['floor']['median_ms']:>10.3f} {'':>8} "
                         f"{dc['overhead_pct']:>7.2f}%   (its pieces alone: "
                         f"{r['deepcopy_pieces_ms']:.3f} ms)")
        verdict = "below" if r["below_target"] else "ABOVE"
        lines.append(f"{'':<9} Fish overhead {fish['overhead_pct']:+.2f}% -> {verdict} the "
                     f"{100 * TARGET_OVERHEAD:.0f}% target")
        lines.append("")
    return "\n".join(lines)


def write_csv(path: str, results: List[dict]) -> None:
    cols = ["model", "params", "batch_per_domain", "kind", "name", "median_ms", "q25_ms", "q75_ms",
            "iqr_ms", "min_ms", "n", "ratio_vs_floor", "overhead_pct", "paired_ratio_median",
            "user_cpu_ms_median", "sys_cpu_ms_median", "cpu_per_wall_median", "minor_faults_median",
            "pct_of_floor", "calls_per_sample"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            common = {"model": r["model"], "params": r["params"],
                      "batch_per_domain": r["batch_per_domain"]}
            for v, s in r["steps"].items():
                w.writerow({**common, "kind": "step", "name": v, **_rounded(s)})
            for k, s in r["pieces"].items():
                w.writerow({**common, "kind": "piece", "name": k, **_rounded(s)})


def _rounded(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def plot(path: str, results: List[dict], env: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"floor": "#8c8c8c", "fish": "#1f77b4", "deepcopy-fish": "#d62728"}
    fig, axes = plt.subplots(1, len(results), figsize=(max(6.0, 5.0 * len(results)), 4.8),
                             squeeze=False)
    for ax, r in zip(axes[0], results):
        names = list(r["steps"])
        st = [r["steps"][v] for v in names]
        med = [s["median_ms"] for s in st]
        bars = ax.bar(names, med, yerr=[[s["median_ms"] - s["q25_ms"] for s in st],
                                        [s["q75_ms"] - s["median_ms"] for s in st]],
                      capsize=4, color=[colors[v] for v in names], edgecolor="black", linewidth=0.6)
        top = max(s["q75_ms"] for s in st)
        for bar, v, s in zip(bars, names, st):
            label = (f"{s['median_ms']:.1f} ms" if v == "floor"
                     else f"{s['median_ms']:.1f} ms\n{s['overhead_pct']:+.1f}%")
            ax.text(bar.get_x() + bar.get_width() / 2, s["q75_ms"] + 0.02 * top, label,
                    ha="center", va="bottom", fontsize=9, zorder=5,
                    fontweight="bold" if v == "fish" else "normal",
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0))
        floor = r["steps"]["floor"]["median_ms"]
        ax.axhline(floor * (1 + TARGET_OVERHEAD), color="black", ls=":", lw=0.8,
                   label=f"floor +{100 * TARGET_OVERHEAD:.0f}% (target)")
        ax.set_ylim(0, top * 1.32)
        ax.set_ylabel("ms per update (median; bars = IQR)")
        ax.set_title(f"{r['model']} ({r['params'] / 1e6:.2f}M params, "
                     f"{args.domains}x{r['batch_per_domain']} @ {args.image_size}px)", fontsize=10)
        ax.text(0.02, 0.97, f"Fish bookkeeping alone: {r['fish_bookkeeping_ms']:.2f} ms "
                f"({r['fish_bookkeeping_pct_of_floor']:.2f}% of floor)",
                transform=ax.transAxes, ha="left", va="top", fontsize=8)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93), fontsize=8, frameon=False)
    fig.suptitle(f"One Fish update vs the compute floor ({args.optimizer} inner steps, "
                 f"S={args.domains} domains)\n{env['device']}, {env['torch_num_threads']} thread(s), "
                 f"{env['cpu_model'] if env['device'] == 'cpu' else env.get('cuda_device', '')}, "
                 f"torch {env['torch']}, {env['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant and model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the json/csv/png")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="inner optimizer: Adam(lr=1e-3) or plain SGD(lr=1e-2)")
    p.add_argument("--domains", type=int, default=3, help="S, domain batches per update")
    p.add_argument("--cnn-batch", type=int, default=DEFAULT_BATCH["cnn"])
    p.add_argument("--resnet-batch", type=int, default=DEFAULT_BATCH["resnet18"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--meta-lr", type=float, default=0.5, help="Fish eps (DomainBed default 0.5)")
    p.add_argument("--piece-samples", type=int, default=30, help="timing samples per piece")
    p.add_argument("--piece-ms", type=float, default=5.0, help="min duration of one piece sample")
    p.add_argument("--no-deepcopy", action="store_true", help="skip the deepcopy-Fish variant")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 4 or args.domains < 1 or args.threads < 1:
        raise SystemExit("need --steps >= 4, --domains >= 1 and --threads >= 1")
    device = bench_env.setup_torch(args.device, args.threads)
    env = bench_env.environment(device, gradmatch=getattr(gradmatch, "__version__", "unknown"))
    print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), "
          f"{env['torch_num_threads']} thread(s), inner optimizer {args.optimizer}", flush=True)

    t0 = time.perf_counter()
    check = check_deepcopy_matches_fish(optimizer_factory(args.optimizer), device, args.domains)
    print(f"deepcopy emulation vs gradmatch.Fish (2 steps, fixed order): max |dw| = {check:.2e}")
    results = [bench_model(m, args, device) for m in args.models]
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = load_average()

    table = format_table(results, args)
    cpu_share = {r["model"]: round(r["steps"]["floor"]["cpu_per_wall_median"], 2) for r in results}
    print(f"\nload average start {env['load_average_at_start']} end {env['load_average_at_end']} "
          f"({env['cpu_count']} cpus); CPU time / wall time per floor step {cpu_share} "
          f"(~{args.threads} = the cores were ours; lower = the machine was shared)")
    print()
    print(table)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings.update(target_overhead_pct=100 * TARGET_OVERHEAD, fish_options="Fish defaults "
                    "(shuffle_domains=True, step_size='domainbed', buffers='interpolate', "
                    "reset_inner_optimizer=False)", interleaving="ABC/CBA alternating per repetition",
                    inner_optimizer_kwargs={"adam": {"lr": 1e-3}, "sgd": {"lr": 1e-2}}[args.optimizer])
    save_results(args.out, "fish_overhead",
                 {"environment": env, "settings": settings,
                  "deepcopy_equivalence_max_abs_diff": check, "total_seconds": total_s,
                  "results": results, "table": table},
                 write_csv, plot, args, summary=f"total {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
