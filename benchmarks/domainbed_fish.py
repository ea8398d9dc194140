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

What is compared, on identical synthetic minibatches (``S`` = 3 domains) and identical initial
weights, in one process, interleaved (ABCDE, EDCBA, ... per repetition) after warm-up:

``ERM``               DomainBed's ``ERM`` (one Adam step on the concatenated batch).
``Fish``              DomainBed's built-in ``Fish``: a new ``WholeFish`` every step (for 224 px
                      this runs torchvision's ``resnet*(pretrained=True)`` again, i.e. builds a
                      ResNet and loads the checkpoint from the hub cache), a new Adam reloading
                      the saved state, and an out-of-place ``state_dict`` meta step.
``FishFast``          the plugin, DomainBed-compatible setting: ``fish_shuffle_domains=False``,
                      the rest default (Adam, eps = meta_lr, carried Adam state, GIP logged
                      every 50 steps). Its updates equal built-in Fish's (checked at start).
``FishFast-default``  the plugin at its defaults (random domain order each step).
``floor``             the same ``S`` forward/backward passes + ``S`` Adam steps done plainly on one
                      ``WholeFish``: no copy, no meta step. No Fish can be cheaper.

Models: DomainBed's ``MNIST_CNN`` on ColoredMNIST-like (2, 28, 28) inputs, batch 64 per domain,
``default_hparams(alg, 'ColoredMNIST')``; ResNet-18 and ResNet-50 at 224 px, batch 8 per
domain, ``default_hparams(alg, 'PACS')`` with ``resnet18`` True/False and
``resnet50_augmix=False``. There is no internet here, so random weights are planted under the
expected file names in a scratch ``$TORCH_HOME/hub/checkpoints`` (only for this process and its
children): DomainBed's hard-coded ``pretrained=True`` path then runs unchanged, reading a file
of the same size as the real checkpoint. DomainBed itself is not modified.

Peak memory: each of ERM / Fish / FishFast / FishFast without GIP logging (``--memory-variants``)
runs ``--memory-steps`` updates in a fresh subprocess. On CPU the figure is that process's peak
RSS (``VmHWM``, the kernel counter behind ``ru_maxrss``, reset through ``/proc/self/clear_refs``
just before the algorithm is built) minus its RSS at that moment; ``ru_maxrss`` itself is kept in
the JSON but not used, because on Linux it also carries the peak of the forked parent from
before ``exec``. On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before
the algorithm is built.

Writes ``<out>/domainbed_fish.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import os
import sys

import bench_env  # noqa: E402  (stdlib only: before torch)

bench_env.size_thread_pools_from_argv()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network (timm is not used)

import argparse  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Callable, Dict, List  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")
try:
    import gradmatch  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, os.path.join(REPO, "plugins"))
    import gradmatch  # noqa: F401

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_env import load_average, make_sync, maxrss_mb, peak_mb, proc_status_mb, reset_peak_rss, save_results  # noqa: E402

warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum|weights).*")

TARGET_OVERHEAD = 0.05
VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-default", "floor")
MEMORY_VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-nogip", "FishFast-default", "floor")
DEFAULT_MEMORY_VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-nogip")
COLORS = {"ERM": "#8c564b", "Fish": "#d62728", "FishFast": "#1f77b4",
          "FishFast-default": "#6baed6", "FishFast-nogip": "#9ecae1", "floor": "#8c8c8c"}
# DomainBed algorithm whose hparams each variant uses
ALGORITHM_OF = {"ERM": "ERM", "Fish": "Fish", "FishFast": "FishFast", "FishFast-default": "FishFast",
                "FishFast-nogip": "FishFast", "floor": "Fish"}
VARIANT_OVERRIDES = {"FishFast": {"fish_shuffle_domains": False},
                     "FishFast-nogip": {"fish_shuffle_domains": False, "fish_gip_every": 0}}

MODELS = {
    "mnist_cnn": {"label": "MNIST_CNN 28px", "dataset": "ColoredMNIST", "input_shape": (2, 28, 28),
                  "num_classes": 2, "batch_flag": "cnn_batch", "hparams": {}},
    "resnet18": {"label": "ResNet-18 224px", "dataset": "PACS", "input_shape": (3, 224, 224),
                 "num_classes": 7, "batch_flag": "resnet_batch",
                 "hparams": {"resnet18": True, "resnet50_augmix": False}},
    "resnet50": {"label": "ResNet-50 224px", "dataset": "PACS", "input_shape": (3, 224, 224),
                 "num_classes": 7, "batch_flag": "resnet_batch",
                 "hparams": {"resnet18": False, "resnet50_augmix": False}},
}
# ResNet-50 at 224 px, 3 x 8 images, is ~10 s per update on one core here: few timed steps.
DEFAULT_STEPS = {"mnist_cnn": 8, "resnet18": 4, "resnet50": 3}
DEFAULT_WARMUP = {"mnist_cnn": 1, "resnet18": 1, "resnet50": 1}


# ---------------------------------------------------------------------------- DomainBed
def load_domainbed():
    """Register the plugin into the DomainBed checkout and return its modules."""
    from gradmatch.domainbed.register import register

    register()
    from domainbed import algorithms, hparams_registry, networks

    return algorithms, hparams_registry, networks


def plant_torchvision_weights(torch_home: str) -> Dict[str, str]:
    """Random-init ResNet-18/50 state dicts under the file names ``pretrained=True`` looks for.

    ``torch.hub.load_state_dict_from_url`` checks the hash only when it downloads, so an existing
    file is loaded as is. Same keys and shapes as the real ImageNet checkpoints, so the same size
    and the same load cost."""
    import torchvision

    ckpt = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(ckpt, exist_ok=True)
    planted = {}
    for build, weights in ((torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
                           (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1)):
        path = os.path.join(ckpt, os.path.basename(weights.url))
        if not os.path.exists(path):
            torch.manual_seed(0)
            torch.save(build(weights=None).state_dict(), path)
        planted[build.__name__] = path
    return planted


def variant_hparams(hparams_registry, variant: str, model: str) -> dict:
    cfg = MODELS[model]
    hp = hparams_registry.default_hparams(ALGORITHM_OF[variant], cfg["dataset"])
    hp.update(cfg["hparams"])
    hp.update(VARIANT_OVERRIDES.get(variant, {}))
    return hp


class Floor(torch.nn.Module):
    """S plain forward/backward passes + S Adam steps on one WholeFish: no copy, no meta step."""

    def __init__(self, network: torch.nn.Module, hparams: dict):
        super().__init__()
        self.network = network
        self.optimizer = torch.optim.Adam(network.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None):
        losses = []
        for x, y in minibatches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.network(x), y)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return {"loss": torch.stack(losses).mean().item()}


def build_variant(db, variant: str, model: str, num_domains: int, device: torch.device):
    algorithms, hparams_registry, networks = db
    cfg = MODELS[model]
    hp = variant_hparams(hparams_registry, variant, model)
    if variant == "floor":
        alg = Floor(networks.WholeFish(cfg["input_shape"], cfg["num_classes"], hp), hp)
    else:
        cls = algorithms.get_algorithm_class(ALGORITHM_OF[variant])
        alg = cls(cfg["input_shape"], cfg["num_classes"], num_domains, hp)
    return alg.to(device).train(), hp


def load_initial_weights(alg, variant: str, base_net_state: dict) -> None:
    """The same starting weights in every variant (ERM's network is Sequential(featurizer,
    classifier), the others' a WholeFish whose ``.net`` is that Sequential)."""
    target = alg.network if variant == "ERM" else alg.network.net
    target.load_state_dict(base_net_state)


def make_minibatches(model: str, batch: int, num_domains: int, seed: int, device: torch.device):
    cfg = MODELS[model]
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *cfg["input_shape"], generator=g).to(device),
             torch.randint(0, cfg["num_classes"], (batch,), generator=g).to(device))
            for _ in range(num_domains)]


def check_fishfast_matches_fish(db, device: torch.device, num_domains: int, steps: int = 3) -> float:
    """Max |difference| of the weights of built-in Fish and FishFast (DomainBed-compatible
    setting) after ``steps`` updates from the same start: the comparison is like for like."""
    torch.manual_seed(0)
    base, _ = build_variant(db, "floor", "mnist_cnn", num_domains, device)
    state = {k: v.clone() for k, v in base.network.net.state_dict().items()}
    batches = make_minibatches("mnist_cnn", 8, num_domains, 1, device)
    algs = {}
    for v in ("Fish", "FishFast"):
        algs[v], _ = build_variant(db, v, "mnist_cnn", num_domains, device)
        load_initial_weights(algs[v], v, state)
    for _ in range(steps):
        for a in algs.values():
            a.update(batches)
    return max(float((p - q).detach().abs().max()) for p, q in
               zip(algs["Fish"].network.parameters(), algs["FishFast"].network.parameters()))



# ---------------------------------------------------------------------------- timing




def time_updates(algs: Dict[str, object], batches, sync, warmup: int, steps: int) -> dict:
    """``warmup`` then ``steps`` repetitions of one ``update`` per variant, the order
    alternating ABC.., ..CBA per repetition. Per sample: ms, minor page faults, user/sys CPU ms,
    and whether the update logged the GIP (FishFast every ``fish_gip_every`` steps)."""
    names = list(algs)
    rec = {n: {"warmup_ms": [], "ms": [], "minor_faults": [], "user_ms": [], "sys_ms": [],
               "gip_logged": []} for n in names}

    def one(n, timed):
        sync()
        before = bench_env.rusage()
        t0 = time.perf_counter()
        out = algs[n].update(batches)
        sync()
        dt = 1e3 * (time.perf_counter() - t0)
        after = bench_env.rusage()
        r = rec[n]
        if not timed:
            r["warmup_ms"].append(dt)
            return
        r["ms"].append(dt)
        r["minor_faults"].append(after["minflt"] - before["minflt"])
        r["user_ms"].append(1e3 * (after["user_s"] - before["user_s"]))
        r["sys_ms"].append(1e3 * (after["sys_s"] - before["sys_s"]))
        r["gip_logged"].append("gip" in out)

    for i in range(warmup):
        for n in (names if i % 2 == 0 else names[::-1]):
            one(n, False)
    gc.collect()
    for i in range(steps):
        for n in (names if i % 2 == 0 else names[::-1]):
            one(n, True)
    return rec


def time_pieces(pieces: Dict[str, Callable], sync, samples: int, min_sample_ms: float) -> dict:
    """Each piece alone; one sample = enough back-to-back calls to last >= ``min_sample_ms``."""
    calls = {}
    for k, fn in pieces.items():
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        t = max(time.perf_counter() - t0, 1e-7)
        calls[k] = int(min(200, max(1, np.ceil(min_sample_ms / 1e3 / t))))
    raw = {k: [] for k in pieces}
    names = list(pieces)
    for i in range(samples):
        for k in (names if i % 2 == 0 else names[::-1]):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                pieces[k]()
            sync()
            raw[k].append(1e3 * (time.perf_counter() - t0) / calls[k])
    return {k: {**bench_env.summarize(raw[k]), "calls_per_sample": calls[k], "raw_ms": raw[k]} for k in pieces}


def overhead_pieces(fish_alg, fast_alg, device: torch.device, num_domains: int) -> Dict[str, Callable]:
    """What each Fish adds to the floor, op for op (after warm-up, so Fish's clone exists)."""
    def fish_create_clone():
        fish_alg.create_clone(device)

    def fish_meta_step():  # algorithms.py Fish.update after the inner loop
        fish_alg.optimizer_inner_state = fish_alg.optimizer_inner.state_dict()
        meta = fish_alg.fish(meta_weights=fish_alg.network.state_dict(),
                             inner_weights=fish_alg.network_inner.state_dict(),
                             lr_meta=fish_alg.hparams["meta_lr"])
        fish_alg.network.reset_weights(meta)

    f = fast_alg.fish  # gradmatch.Fish; op for op as in Fish._fish_step

    def fast_copy_in():
        with torch.no_grad():
            torch._foreach_copy_(f._inner_params, f._meta_params)
            if f._meta_buffers:
                torch._foreach_copy_(f._inner_buffers, f._meta_buffers)

    eps = f.meta_step_size(num_domains)

    def fast_meta_step():
        with torch.no_grad():
            torch._foreach_lerp_(f._meta_params, f._inner_params, eps)
            if f._meta_float:
                torch._foreach_lerp_(f._meta_float, f._inner_float, eps)
            if f._meta_other:
                torch._foreach_copy_(f._meta_other, f._inner_other)

    return {"Fish: create_clone": fish_create_clone, "Fish: meta step": fish_meta_step,
            "FishFast: copy-in": fast_copy_in, "FishFast: meta step": fast_meta_step}


# ---------------------------------------------------------------------------- memory
def memory_child(args) -> int:
    """Runs in a fresh process: build one variant, run ``--memory-steps`` updates, print peaks.

    CPU figure: peak RSS of this process image (``VmHWM``, the counter behind ``ru_maxrss``),
    reset to the current RSS right before the algorithm is built, minus that RSS. ``ru_maxrss``
    itself is not used for the delta: on Linux it also keeps the peak of the image before
    ``exec``, i.e. of the forked parent, and the import transients."""
    model, variant = args.memory_child
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    db = load_domainbed()
    batches = make_minibatches(model, getattr(args, MODELS[model]["batch_flag"]), args.domains,
                               args.seed + 1, device)
    gc.collect()
    out = {"model": model, "variant": variant, "steps": args.memory_steps,
           "ru_maxrss_before_mb": maxrss_mb(), "hwm_before_reset_mb": proc_status_mb("VmHWM")}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    out["hwm_reset"] = reset_peak_rss()
    out["baseline_rss_mb"] = proc_status_mb("VmRSS")
    out["baseline_peak_mb"] = peak_mb()
    torch.manual_seed(args.seed)
    alg, _ = build_variant(db, variant, model, args.domains, device)
    out["after_build_peak_mb"] = peak_mb()
    out["after_build_rss_mb"] = proc_status_mb("VmRSS")
    out["peak_after_step_mb"], out["rss_after_step_mb"], out["gip_logged"] = [], [], []
    for _ in range(args.memory_steps):
        res = alg.update(batches)
        out["gip_logged"].append("gip" in res)
        out["peak_after_step_mb"].append(peak_mb())
        out["rss_after_step_mb"].append(proc_status_mb("VmRSS"))
    out["ru_maxrss_end_mb"] = maxrss_mb()
    base = out["baseline_rss_mb"] if out["hwm_reset"] else out["baseline_peak_mb"]
    out["peak_rss_delta_mb"] = out["peak_after_step_mb"][-1] - base
    out["build_rss_delta_mb"] = out["after_build_peak_mb"] - base
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_peak_delta_mb"] = (torch.cuda.max_memory_allocated(device) - base_alloc) / 2 ** 20
        out["peak_mb"] = out["cuda_peak_delta_mb"]
        out["memory_metric"] = "torch.cuda.max_memory_allocated - allocated before build"
    else:
        out["peak_mb"] = out["peak_rss_delta_mb"]
        out["memory_metric"] = ("peak RSS (VmHWM, reset before build) - RSS before build"
                                if out["hwm_reset"] else "VmHWM(end) - VmHWM(before build)")
    print("MEMORY_JSON " + json.dumps(out), flush=True)
    return 0


def run_memory(model: str, variant: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", model, variant,
           "--memory-steps", str(args.memory_steps), "--threads", str(args.threads),
           "--device", args.device, "--seed", str(args.seed), "--domains", str(args.domains),
           "--cnn-batch", str(args.cnn_batch), "--resnet-batch", str(args.resnet_batch)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.memory_timeout)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("MEMORY_JSON "):
            res = json.loads(line[len("MEMORY_JSON "):])
            res["seconds"] = time.perf_counter() - t0
            return res
    return {"model": model, "variant": variant, "error": f"rc {proc.returncode}: "
            + (proc.stderr.strip().splitlines() or ["no output"])[-1], "peak_mb": float("nan")}


# ---------------------------------------------------------------------------- one model
def bench_model(model: str, args, db, device: torch.device) -> dict:
    sync = make_sync(device)
    cfg = MODELS[model]
    batch = getattr(args, cfg["batch_flag"])
    steps, warmup = args.steps[model], args.warmup[model]
    t_start = time.perf_counter()

    torch.manual_seed(args.seed)
    base, _ = build_variant(db, "floor", model, args.domains, torch.device("cpu"))
    base_state = {k: v.clone() for k, v in base.network.net.state_dict().items()}
    n_params = sum(p.numel() for p in base.parameters())
    del base
    batches = make_minibatches(model, batch, args.domains, args.seed + 1, device)
    algs, hparams = {}, {}
    for v in VARIANTS:
        torch.manual_seed(args.seed)
        algs[v], hparams[v] = build_variant(db, v, model, args.domains, device)
        load_initial_weights(algs[v], v, base_state)
    print(f"[{model}] {n_params / 1e6:.2f}M params, S={args.domains} x batch {batch}, "
          f"{'x'.join(map(str, cfg['input_shape']))}: {warmup} warm-up + {steps} timed updates "
          f"per variant, interleaved ...", flush=True)
    rec = time_updates(algs, batches, sync, warmup, steps)
    t_steps = time.perf_counter() - t_start

    stats = {}
    for v in VARIANTS:
        r = rec[v]
        s = bench_env.summarize(r["ms"])
        s.update(warmup_ms=r["warmup_ms"], sys_ms_median=float(np.median(r["sys_ms"])),
                 minor_faults_median=float(np.median(r["minor_faults"])),
                 cpu_per_wall_median=float(np.median(
                     (np.asarray(r["user_ms"]) + np.asarray(r["sys_ms"])) / np.asarray(r["ms"]))),
                 gip_logged_in_timed=int(sum(r["gip_logged"])))
        stats[v] = s

    def ratio(a, b):
        pa, pb = np.asarray(rec[a]["ms"]), np.asarray(rec[b]["ms"])
        paired = pa / pb
        return {"of_medians": stats[a]["median_ms"] / stats[b]["median_ms"],
                "paired_median": float(np.median(paired)),
                "paired_q25": float(np.percentile(paired, 25)),
                "paired_q75": float(np.percentile(paired, 75))}

    ratios = {"FishFast/Fish": ratio("FishFast", "Fish"),
              "FishFast-default/Fish": ratio("FishFast-default", "Fish"),
              "FishFast/floor": ratio("FishFast", "floor"),
              "FishFast-default/floor": ratio("FishFast-default", "floor"),
              "Fish/floor": ratio("Fish", "floor"),
              "Fish/ERM": ratio("Fish", "ERM"),
              "FishFast/ERM": ratio("FishFast", "ERM")}

    pieces = time_pieces(overhead_pieces(algs["Fish"], algs["FishFast"], device, args.domains), sync,
                         args.piece_samples, args.piece_ms)
    fish_extra = pieces["Fish: create_clone"]["median_ms"] + pieces["Fish: meta step"]["median_ms"]
    fast_extra = pieces["FishFast: copy-in"]["median_ms"] + pieces["FishFast: meta step"]["median_ms"]
    floor_ms = stats["floor"]["median_ms"]
    breakdown = {
        "fish_pieces_ms": fish_extra, "fishfast_pieces_ms": fast_extra,
        "fish_minus_floor_ms": stats["Fish"]["median_ms"] - floor_ms,
        "fishfast_minus_floor_ms": stats["FishFast"]["median_ms"] - floor_ms,
        "fishfast_pieces_pct_of_floor": 100 * fast_extra / floor_ms,
        "fish_pieces_pct_of_floor": 100 * fish_extra / floor_ms,
    }
    del algs
    gc.collect()
    t_pieces = time.perf_counter() - t_start - t_steps

    memory = {}
    if not args.no_memory:
        print(f"[{model}] peak memory: {len(args.memory_variants)} fresh subprocesses x "
              f"{args.memory_steps} updates ...", flush=True)
        for v in args.memory_variants:
            memory[v] = run_memory(model, v, args)
            if "error" in memory[v]:
                print(f"[{model}]   {v}: memory run failed: {memory[v]['error']}", flush=True)
    t_total = time.perf_counter() - t_start
    print(f"[{model}] done in {t_total:.0f} s (timed loop {t_steps:.0f} s, pieces {t_pieces:.0f} s, "
          f"memory {t_total - t_steps - t_pieces:.0f} s)", flush=True)
    return {
        "model": model, "label": cfg["label"], "params": n_params, "batch_per_domain": batch,
        "input_shape": list(cfg["input_shape"]), "num_classes": cfg["num_classes"],
        "dataset_hparams": cfg["dataset"], "steps": steps, "warmup": warmup,
        "hparams": hparams, "stats": stats, "ratios": ratios, "pieces": pieces,
        "breakdown": breakdown, "memory": memory,
        "fishfast_overhead_pct": 100 * (ratios["FishFast/floor"]["of_medians"] - 1),
        "below_target_end_to_end": ratios["FishFast/floor"]["of_medians"] - 1 < TARGET_OVERHEAD,
        # the isolated pieces are far more precise than a difference of two noisy step medians
        "below_target_by_pieces": breakdown["fishfast_pieces_pct_of_floor"] < 100 * TARGET_OVERHEAD,
        "fishfast_faster_than_fish": {
            "by_medians": ratios["FishFast/Fish"]["of_medians"] < 1,
            "by_paired_median": ratios["FishFast/Fish"]["paired_median"] < 1,
            "by_pieces": breakdown["fishfast_pieces_ms"] < breakdown["fish_pieces_ms"]},
        "fish_minus_fishfast_pieces_ms": breakdown["fish_pieces_ms"] - breakdown["fishfast_pieces_ms"],
        "seconds": {"timed_loop": t_steps, "pieces": t_pieces, "total": t_total},
        "raw": {v: {k: rec[v][k] for k in ("ms", "warmup_ms", "minor_faults", "user_ms", "sys_ms",
                                           "gip_logged")} for v in VARIANTS},
    }


# ---------------------------------------------------------------------------- reporting
def environment(device: torch.device) -> dict:
    from gradmatch.domainbed.locate import PINNED_COMMIT, ensure_importable

    return bench_env.environment(device, gradmatch=getattr(gradmatch, "__version__", "unknown"),
                                 domainbed_checkout=str(ensure_importable()),
                                 domainbed_pinned_commit=PINNED_COMMIT)


def _mem(r: dict, v: str) -> str:
    m = r["memory"].get(v)
    return "-" if not m or m.get("peak_mb") != m.get("peak_mb") else f"{m['peak_mb']:.0f}"


def format_table(results: List[dict], args) -> str:
    mem_head = "peak dGPU MB" if args.device.startswith("cuda") else "peak dRSS MB"
    head = (f"{'model':<16} {'variant':<17} {'median ms':>10} {'IQR ms':>9} {'min ms':>9} "
            f"{'x floor':>8} {'x Fish':>7} {'n':>3} {'sys ms':>7} {'pg faults':>9} {mem_head:>13}")
    lines = [head, "-" * len(head)]
    for r in results:
        st, first = r["stats"], True
        fish, floor = st["Fish"]["median_ms"], st["floor"]["median_ms"]
        for v in VARIANTS:
            s = st[v]
            left = f"{r['label']:<16}" if first else " " * 16
            lines.append(f"{left} {v:<17} {s['median_ms']:>10.1f} {s['iqr_ms']:>9.1f} "
                         f"{s['min_ms']:>9.1f} {s['median_ms'] / floor:>8.3f} "
                         f"{s['median_ms'] / fish:>7.3f} {s['n']:>3} {s['sys_ms_median']:>7.0f} "
                         f"{s['minor_faults_median']:>9.0f} {_mem(r, v):>13}")
            first = False
        if "FishFast-nogip" in r["memory"]:
            lines.append(f"{'':<16} {'FishFast-nogip':<17} {'(memory only: fish_gip_every=0)':>67} "
                         f"{_mem(r, 'FishFast-nogip'):>13}")
        q = r["ratios"]

        def fmt(k):
            x = q[k]
            return (f"{x['of_medians']:.3f} (paired {x['paired_median']:.3f}, "
                    f"IQR {x['paired_q25']:.3f}-{x['paired_q75']:.3f})")

        b = r["breakdown"]
        lines += [
            f"  FishFast / Fish          = {fmt('FishFast/Fish')}",
            f"  FishFast-default / Fish  = {fmt('FishFast-default/Fish')}",
            f"  FishFast / floor         = {fmt('FishFast/floor')}",
            f"  FishFast-default / floor = {fmt('FishFast-default/floor')}",
            f"  Fish / ERM               = {fmt('Fish/ERM')}",
            f"  where the time goes (pieces timed alone, median ms/call): Fish create_clone "
            f"{r['pieces']['Fish: create_clone']['median_ms']:.1f} + meta step "
            f"{r['pieces']['Fish: meta step']['median_ms']:.1f} = {b['fish_pieces_ms']:.1f} ms "
            f"(measured Fish - floor {b['fish_minus_floor_ms']:+.1f} ms); FishFast copy-in "
            f"{r['pieces']['FishFast: copy-in']['median_ms']:.2f} + meta step "
            f"{r['pieces']['FishFast: meta step']['median_ms']:.2f} = {b['fishfast_pieces_ms']:.2f} ms"
            f" = {b['fishfast_pieces_pct_of_floor']:.2f}% of floor (measured FishFast - floor "
            f"{b['fishfast_minus_floor_ms']:+.1f} ms)",
            f"  FishFast overhead over the floor: {r['fishfast_overhead_pct']:+.1f}% end-to-end "
            f"(n={r['steps']}; {'below' if r['below_target_end_to_end'] else 'ABOVE'} the "
            f"{100 * TARGET_OVERHEAD:.0f}% target), {b['fishfast_pieces_pct_of_floor']:.2f}% by its "
            f"pieces ({'below' if r['below_target_by_pieces'] else 'ABOVE'}); FishFast saves "
            f"{r['fish_minus_fishfast_pieces_ms']:.1f} ms/update over Fish by the pieces "
            f"({100 * r['fish_minus_fishfast_pieces_ms'] / st['Fish']['median_ms']:.1f}% of a Fish update)",
            "",
        ]
    return "\n".join(lines)


def write_csv(path: str, results: List[dict]) -> None:
    cols = ["model", "params", "batch_per_domain", "kind", "name", "median_ms", "q25_ms", "q75_ms",
            "iqr_ms", "min_ms", "n", "x_floor", "x_fish", "sys_ms_median", "minor_faults_median",
            "cpu_per_wall_median", "peak_mb", "paired_median", "paired_q25", "paired_q75",
            "calls_per_sample"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            common = {"model": r["model"], "params": r["params"], "batch_per_domain": r["batch_per_domain"]}
            floor, fish = r["stats"]["floor"]["median_ms"], r["stats"]["Fish"]["median_ms"]
            for v in VARIANTS:
                s = r["stats"][v]
                peak = r["memory"].get(v, {}).get("peak_mb", "")
                w.writerow({**common, "kind": "step", "name": v, **_rounded(s),
                            "x_floor": round(s["median_ms"] / floor, 4),
                            "x_fish": round(s["median_ms"] / fish, 4),
                            "peak_mb": round(peak, 1) if isinstance(peak, float) else peak})
            for v, m in r["memory"].items():
                if v not in VARIANTS:
                    w.writerow({**common, "kind": "memory", "name": v,
                                "peak_mb": round(m.get("peak_mb", float("nan")), 1)})
            for k, q in r["ratios"].items():
                w.writerow({**common, "kind": "ratio", "name": k, "median_ms": "",
                            "x_floor": "", **{kk: round(vv, 4) for kk, vv in q.items()
                                              if kk.startswith("paired")}})
            for k, s in r["pieces"].items():
                w.writerow({**common, "kind": "piece", "name": k,
                            **_rounded({kk: vv for kk, vv in s.items() if kk != "raw_ms"})})


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()
            if not isinstance(v, list)}


def plot(path: str, results: List[dict], env: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_mem = any(r["memory"] for r in results)
    nrows = 2 if with_mem else 1
    fig, axes = plt.subplots(nrows, len(results), figsize=(max(6.5, 5.6 * len(results)), 4.9 * nrows),
                             squeeze=False)
    short = {"FishFast-default": "FishFast\ndefault", "FishFast-nogip": "FishFast\nno GIP"}
    for j, r in enumerate(results):
        ax = axes[0][j]
        st = [r["stats"][v] for v in VARIANTS]
        floor = r["stats"]["floor"]["median_ms"]
        bars = ax.bar([short.get(v, v) for v in VARIANTS], [s["median_ms"] for s in st],
                      yerr=[[s["median_ms"] - s["q25_ms"] for s in st],
                            [s["q75_ms"] - s["median_ms"] for s in st]],
                      capsize=4, color=[COLORS[v] for v in VARIANTS], edgecolor="black", linewidth=0.6)
        top = max(s["q75_ms"] for s in st)
        for bar, v, s in zip(bars, VARIANTS, st):
            label = f"{s['median_ms']:.0f} ms"
            if v != "floor":
                label += f"\n{s['median_ms'] / floor:.3f}x floor"
            ax.text(bar.get_x() + bar.get_width() / 2, s["q75_ms"] + 0.02 * top, label,
                    ha="center", va="bottom", fontsize=8, zorder=5,
                    fontweight="bold" if v == "FishFast" else "normal",
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.8))
        ax.axhline(floor * (1 + TARGET_OVERHEAD), color="black", ls=":", lw=0.8,
                   label=f"floor +{100 * TARGET_OVERHEAD:.0f}% (FishFast target)")
        q = r["ratios"]
        ax.text(0.02, 0.97,
                f"FishFast/Fish = {q['FishFast/Fish']['of_medians']:.3f}   "
                f"Fish/ERM = {q['Fish/ERM']['of_medians']:.3f}\n"
                f"FishFast/floor = {q['FishFast/floor']['of_medians']:.3f} "
                f"({r['fishfast_overhead_pct']:+.1f}%; its pieces alone "
                f"{r['breakdown']['fishfast_pieces_pct_of_floor']:.2f}%)\n"
                f"timed alone: Fish clone+meta {r['breakdown']['fish_pieces_ms']:.1f} ms, "
                f"FishFast copy+lerp {r['breakdown']['fishfast_pieces_ms']:.2f} ms",
                transform=ax.transAxes, ha="left", va="top", fontsize=8)
        ax.set_ylim(0, top * 1.5)
        ax.set_ylabel("ms per update() (median; bars = IQR)")
        ax.set_title(f"{r['label']} ({r['params'] / 1e6:.1f}M params), S={args.domains} x "
                     f"{r['batch_per_domain']}, n={r['steps']}", fontsize=10)
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.82), fontsize=7, frameon=False)
        if with_mem:
            ax = axes[1][j]
            names = [v for v in MEMORY_VARIANTS if v in r["memory"]]
            vals = [r["memory"][v].get("peak_mb", float("nan")) for v in names]
            bars = ax.bar([short.get(v, v) for v in names], vals, color=[COLORS[v] for v in names],
                          edgecolor="black", linewidth=0.6)
            finite = [x for x in vals if x == x] or [1.0]
            ref = r["memory"].get("Fish", {}).get("peak_mb")
            for bar, v, x in zip(bars, names, vals):
                if x != x:
                    continue
                label = f"{x:.0f} MB"
                if ref and v != "Fish":
                    label += f"\n{x / ref:.2f}x Fish"
                ax.text(bar.get_x() + bar.get_width() / 2, x + 0.02 * max(finite), label,
                        ha="center", va="bottom", fontsize=8)
            ax.set_ylim(0, max(finite) * 1.25)
            metric = ("peak GPU memory over baseline, MB" if args.device.startswith("cuda")
                      else "peak RSS rise, MB (fresh process)")
            ax.set_ylabel(metric)
            ax.set_title(f"{r['label']}: peak memory, {args.memory_steps} updates in a fresh process"
                         + ("\n(FishFast logs the GIP at step 0 and every 50 steps; 'no GIP': "
                            "fish_gip_every=0)" if "FishFast" in names else ""), fontsize=9)
    where = env.get("cuda_device", "") if env["device"].startswith("cuda") else env["cpu_model"]
    fig.suptitle(f"DomainBed update(): ERM vs built-in Fish vs plugin FishFast vs floor\n"
                 f"S={args.domains}, synthetic data, random init; {env['device']}, "
                 f"{env['torch_num_threads']} thread(s), {where}, torch {env['torch']}, "
                 f"{env['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def _per_model(default: Dict[str, int], name: str):
    """``N`` (every model) or ``model=N`` tokens over ``default``."""
    def parse(tokens: List[str]) -> Dict[str, int]:
        out = dict(default)
        for t in tokens:
            if "=" in t:
                m, n = t.split("=", 1)
                if m not in MODELS:
                    raise SystemExit(f"--{name}: unknown model {m!r}; choose from {list(MODELS)}")
                out[m] = int(n)
            else:
                out = {m: int(t) for m in out}
        return out
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", nargs="+", default=[],
                   help=f"timed updates per variant: N, or model=N ... (defaults {DEFAULT_STEPS})")
    p.add_argument("--warmup", nargs="+", default=[],
                   help=f"untimed updates per variant first: N or model=N (defaults {DEFAULT_WARMUP})")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OMP/MKL)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for domainbed_fish.{json,csv,png}")
    p.add_argument("--domains", type=int, default=3, help="S, training domains (minibatches)")
    p.add_argument("--cnn-batch", type=int, default=64, help="MNIST_CNN batch per domain")
    p.add_argument("--resnet-batch", type=int, default=8, help="ResNet batch per domain")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-variants", nargs="+", choices=MEMORY_VARIANTS,
                   default=list(DEFAULT_MEMORY_VARIANTS))
    p.add_argument("--memory-steps", type=int, default=2,
                   help="updates per memory subprocess (>= 2: Fish's peak comes with its 2nd clone)")
    p.add_argument("--memory-timeout", type=float, default=900.0)
    p.add_argument("--piece-samples", type=int, default=5, help="timing samples per overhead piece")
    p.add_argument("--piece-ms", type=float, default=20.0, help="min duration of one piece sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-home", default=None,
                   help="TORCH_HOME to plant the random ResNet checkpoints in (default: a temp dir)")
    p.add_argument("--memory-child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = _per_model(DEFAULT_STEPS, "steps")(args.steps)
    args.warmup = _per_model(DEFAULT_WARMUP, "warmup")(args.warmup)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if min(args.steps[m] for m in args.models) < 1 or args.domains < 1 or args.threads < 1:
        raise SystemExit("need --steps >= 1, --domains >= 1 and --threads >= 1")
    device = bench_env.setup_torch(args.device, args.threads)

    scratch = None
    if args.torch_home is None:
        scratch = tempfile.TemporaryDirectory(prefix="domainbed_fish_torch_home_")
        args.torch_home = scratch.name
    os.environ["TORCH_HOME"] = args.torch_home  # read by torch.hub here and in the children
    t0 = time.perf_counter()
    try:
        planted = plant_torchvision_weights(args.torch_home)
        db = load_domainbed()
        env = environment(device)
        print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), "
              f"{env['torch_num_threads']} thread(s); DomainBed at {env['domainbed_checkout']}; "
              f"random ResNet weights planted in {args.torch_home}", flush=True)
        check = check_fishfast_matches_fish(db, device, args.domains)
        print(f"built-in Fish vs FishFast (fish_shuffle_domains=False), MNIST_CNN, 3 updates: "
              f"max |dw| = {check:.2e}", flush=True)
        results = []
        for m in args.models:
            results.append(bench_model(m, args, db, device))
            gc.collect()
    finally:
        if scratch is not None:
            scratch.cleanup()
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = load_average()

    table = format_table(results, args)
    share = {r["model"]: round(r["stats"]["floor"]["cpu_per_wall_median"], 2) for r in results}
    print(f"\nload average start {env['load_average_at_start']} end {env['load_average_at_end']} "
          f"({env['cpu_count']} cpus); CPU time / wall time per floor update {share} "
          f"(~{args.threads} = the cores were ours; lower = shared)\n")
    print(table)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "memory_child", "torch_home")}
    settings.update(
        variants={"ERM": "domainbed.algorithms.ERM", "Fish": "domainbed.algorithms.Fish (built-in)",
                  "FishFast": "plugin FishFast, fish_shuffle_domains=False, rest default",
                  "FishFast-default": "plugin FishFast, default hparams",
                  "FishFast-nogip": "memory only: FishFast with fish_shuffle_domains=False, "
                                    "fish_gip_every=0",
                  "floor": "S plain forward/backward + Adam(lr, weight_decay) steps on one WholeFish"},
        interleaving="ABCDE/EDCBA alternating per repetition, after warm-up",
        data="synthetic: randn inputs, uniform labels; the same minibatches every update",
        weights="identical random init in every variant; ResNet 'pretrained' checkpoints are "
                "random weights planted in a scratch TORCH_HOME",
        planted_checkpoints=sorted(os.path.basename(p) for p in planted.values()),
        target_overhead_pct=100 * TARGET_OVERHEAD,
        memory_metric=("torch.cuda.max_memory_allocated - allocated before build" if device.type == "cuda"
                       else "peak RSS (VmHWM, reset via /proc/self/clear_refs just before the "
                            "algorithm is built) - RSS at that moment; one fresh process per variant"),
        fish_equivalence_max_abs_diff=check)
    save_results(args.out, "domainbed_fish",
                 {"environment": env, "settings": settings, "total_seconds": total_s,
                  "results": results, "table": table},
                 write_csv, plot, args, indent=1, summary=f"total {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
