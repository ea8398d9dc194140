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

One ADIOS training step (the shipped :mod:`adios_ssl.step`, called by :func:`encoder_step` and
:func:`masker_step` below), with
``adios_ssl.objective.adios_ssl_loss`` doing the N masked views:

1. encoder step: ``masks = masker(x2)``; ``loss = sum_k L(f(x1), f(x2 * (1 - m_k.detach())))``;
   backward; SGD step on encoder + projector.
2. masker step: encoder/projector frozen (``requires_grad=False``, restored afterwards);
   the masks with grad (batched: the encoder step's, reused; looped: computed again, as the
   official code does); the same SSL sum (``grad_through_views=False``);
   ``objective = masker_objective(ssl, masks, alpha_sparsity=1)``; ``(-objective).backward()``;
   SGD step on the masker.

Two modes, on copies of the same initial weights and the same batch:

``looped``
    ``batched=False``: the official code's order -- for every mask k the original view x1 is
    encoded again and the masked view is encoded alone (2N encoder passes of B images).
``batched``
    ``batched=True`` (this package): x1 encoded once, the N masked views in one pass of N*B
    images with per-view BatchNorm statistics (N + 1 passes' worth of images).

Before timing, the first step of each mode (untimed) must give the same SSL losses (relative
difference <= 1e-4), else the script stops without reporting. Then the two modes run
alternately (looped-batched, batched-looped, ...) for ``--repeats`` steps each; reported are the
median s/step (and of each of the two sub-steps, and the process CPU time per step),
``ratio = median(looped) / median(batched)`` and the median of the per-repetition paired ratios.
The two passes the looped order repeats for every extra mask (x1 forward + backward, x1 no-grad
forward) are also timed alone: ``looped - (N - 1) * (both)`` is what removing the repetition
alone gives, the reference for "is the batched step at its floor".

Peak memory: each mode runs ``--memory-steps`` steps in a fresh subprocess of this script; on
CPU the figure is the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after the
models, optimizers and batch are built) minus the RSS at that moment; on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated at that moment. Also reported,
allocator-independent: the MiB of activations autograd saves for backward in each sub-step.

Writes ``<out>/adios_step.{json,csv,png}`` (``--out`` defaults to ``benchmarks/results``).
"""
from __future__ import annotations

import os
import sys

import bench_env  # noqa: E402  (stdlib only: before torch)

bench_env.size_thread_pools_from_argv()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Callable, Dict, List, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from bench_env import load_average, make_sync, maxrss_mb, peak_mb, proc_status_mb, reset_peak_rss, save_results  # noqa: E402
from torch import nn  # noqa: E402

from adios_ssl.masker import MaskingNetwork  # noqa: E402
from adios_ssl.objective import adios_ssl_loss  # noqa: E402
from adios_ssl.step import encoder_update, masker_update  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
MODES = ("looped", "batched")
TARGET_SPEEDUP = 1.5
CHECK_RTOL = 1e-4


# ---------------------------------------------------------------------------- model and loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of projections (B, D): each row's positive is the
    same image in the other view, its negatives the 2B - 2 other rows."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t()) / temperature
    n = z1.shape[0]
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pairs, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


@dataclass
class Adios:
    """ResNet-18 encoder + SimCLR projector + ADIOS masker, with their two SGD optimizers."""
    encoder: nn.Module
    projector: nn.Module
    masker: nn.Module
    enc_opt: torch.optim.Optimizer
    mask_opt: torch.optim.Optimizer
    temperature: float = 0.2
    alpha_sparsity: float = 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.temperature)


def build_adios(img_size: int, num_masks: int, seed: int, device: torch.device,
                lr: float) -> Adios:
    torch.manual_seed(seed)
    encoder = torchvision.models.resnet18(weights=None)
    encoder.fc = nn.Identity()  # 512 features
    projector = nn.Sequential(nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
                              nn.Linear(2048, 128))
    masker = MaskingNetwork(img_size, num_masks, fbase=32, norm="gn")
    for m in (encoder, projector, masker):
        m.to(device).train()
    return attach_optimizers(encoder, projector, masker, lr)


def attach_optimizers(encoder, projector, masker, lr: float) -> Adios:
    enc_opt = torch.optim.SGD(list(encoder.parameters()) + list(projector.parameters()),
                              lr=lr, momentum=0.9)
    mask_opt = torch.optim.SGD(masker.parameters(), lr=lr, momentum=0.9)
    return Adios(encoder, projector, masker, enc_opt, mask_opt)


def clone_adios(a: Adios, lr: float) -> Adios:
    """Same weights, fresh optimizers (no state has been built yet)."""
    return attach_optimizers(copy.deepcopy(a.encoder), copy.deepcopy(a.projector),
                             copy.deepcopy(a.masker), lr)


# ---------------------------------------------------------------------------- one ADIOS step
def _step_fns(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """The masks and SSL-loss functions the shipped step (:mod:`adios_ssl.step`) takes."""
    def masks_fn():
        return [None, m.masker(x2)]

    def ssl_fn(masks, grad_through_views):
        loss, _ = adios_ssl_loss(m.encode, m.pair_loss, (x1, x2), masks,
                                 modules=[m.encoder, m.projector], batched=batched,
                                 grad_through_views=grad_through_views)
        return loss, loss.new_zeros(())
    return masks_fn, ssl_fn


def encoder_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """The shipped encoder step (:func:`adios_ssl.step.encoder_update`): encoder + projector
    minimise the SSL loss of (x1, x2 masked by each of the N masks). Returns the loss and, in
    batched mode, the masks with their graph, which the masker step reuses (the plugin's
    order); the official order computes them again there."""
    masks_fn, ssl_fn = _step_fns(m, x1, x2, batched)
    out = encoder_update(masks_fn, ssl_fn, m.enc_opt, reuse_masks=batched)
    return out.ssl_loss, out.masks_graph


def masker_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool, masks=None) -> torch.Tensor:
    """The shipped masker step (:func:`adios_ssl.step.masker_update`): the masker maximises
    the same SSL loss minus its sparsity penalty, encoder frozen. Returns its SSL loss."""
    masks_fn, ssl_fn = _step_fns(m, x1, x2, batched)
    out = masker_update(masks_fn, ssl_fn, m.mask_opt, [m.enc_opt],
                        alpha_sparsity=m.alpha_sparsity, masks_graph=masks)
    return out.ssl_loss


def adios_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """One ADIOS training step: encoder step, then masker step. Returns both SSL losses."""
    loss, masks = encoder_step(m, x1, x2, batched)
    return loss, masker_step(m, x1, x2, batched, masks)


def make_batch(batch: int, img_size: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, 3, img_size, img_size, generator=g)
    x2 = torch.randn(batch, 3, img_size, img_size, generator=g)
    return x1.to(device), x2.to(device)


# ---------------------------------------------------------------------------- timing


def timed_step(m: Adios, x1, x2, batched: bool, sync: Callable) -> Dict[str, float]:
    """One step, its two halves timed separately (synchronised on CUDA), plus the process's
    CPU time (user + system), system time and minor page faults over the whole step."""
    sync()
    u0 = bench_env.rusage()
    t0 = time.perf_counter()
    _, masks = encoder_step(m, x1, x2, batched)
    sync()
    t1 = time.perf_counter()
    masker_step(m, x1, x2, batched, masks)
    sync()
    t2 = time.perf_counter()
    u1 = bench_env.rusage()
    return {"total_s": t2 - t0, "encoder_s": t1 - t0, "masker_s": t2 - t1,
            "cpu_s": (u1["user_s"] + u1["sys_s"]) - (u0["user_s"] + u0["sys_s"]),
            "sys_s": u1["sys_s"] - u0["sys_s"], "minor_faults": u1["minflt"] - u0["minflt"]}


def redundant_pieces(a: Adios, x1, sync: Callable, samples: int) -> Dict[str, float]:
    """Median seconds of the two passes the looped order repeats for every extra mask: the
    encoder step's forward + backward of x1 (weight gradients) and the masker step's no-grad
    forward of x1, on copies of the encoder and projector."""
    encoder, projector = copy.deepcopy(a.encoder), copy.deepcopy(a.projector)

    def fwd_bwd():
        projector(encoder(x1)).square().sum().backward()

    def fwd_nograd():
        with torch.no_grad():
            projector(encoder(x1))

    fns = {"x1_fwd_bwd_s": fwd_bwd, "x1_fwd_nograd_s": fwd_nograd}
    out = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for i in range(samples):
        for k, fn in (fns.items() if i % 2 == 0 else list(fns.items())[::-1]):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in out.items()}




@contextlib.contextmanager
def full_fp32():
    """TF32 off for convolutions and matmuls (CUDA only; a no-op on the CPU), restored after."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def bench_config(img_size: int, n: int, args, device: torch.device) -> dict:
    sync = make_sync(device)
    t_start = time.perf_counter()
    base = build_adios(img_size, n, args.seed, device, args.lr)
    runners = {mode: clone_adios(base, args.lr) for mode in MODES}
    del base
    x1, x2 = make_batch(args.batch, img_size, args.seed + 1, device)
    label = f"{img_size}px N={n}"
    print(f"[{label}] batch {args.batch}: 1 check step + {args.warmup - 1} warm-up + "
          f"{args.repeats} timed steps per mode ...", flush=True)

    # First step of each mode, untimed: the two computation orders must give the same losses.
    # On CUDA in full fp32 (TF32 off), so that the check sees the orders, not TF32 rounding.
    with full_fp32():
        first = {mode: adios_step(runners[mode], x1, x2, mode == "batched") for mode in MODES}
    check = {
        "encoder_step_ssl_loss": {mode: float(first[mode][0]) for mode in MODES},
        "masker_step_ssl_loss": {mode: float(first[mode][1]) for mode in MODES},
        # Same weights and batch: only summation order differs.
        "encoder_step_rel_diff": rel_diff(first["looped"][0], first["batched"][0]),
        # After one SGD step on each copy: the weights differ by the float noise of that step.
        "masker_step_rel_diff": rel_diff(first["looped"][1], first["batched"][1]),
    }
    check["ok"] = bool(check["encoder_step_rel_diff"] <= CHECK_RTOL
                       and check["masker_step_rel_diff"] <= CHECK_RTOL)
    print(f"[{label}] first-step SSL loss, looped vs batched: encoder step "
          f"{check['encoder_step_ssl_loss']['looped']:.6f} vs "
          f"{check['encoder_step_ssl_loss']['batched']:.6f} (rel diff "
          f"{check['encoder_step_rel_diff']:.1e}); masker step rel diff "
          f"{check['masker_step_rel_diff']:.1e}", flush=True)
    if not check["ok"]:
        return {"image_size": img_size, "num_masks": n, "check": check}

    warm = {mode: [] for mode in MODES}
    for i in range(args.warmup - 1):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            warm[mode].append(timed_step(runners[mode], x1, x2, mode == "batched", sync)["total_s"])
    gc.collect()
    raw: Dict[str, Dict[str, list]] = {mode: {} for mode in MODES}
    for i in range(args.repeats):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            t = timed_step(runners[mode], x1, x2, mode == "batched", sync)
            for k, v in t.items():
                raw[mode].setdefault(k, []).append(v)
    steps = {}
    for mode in MODES:
        steps[mode] = bench_env.summarize(raw[mode]["total_s"], unit="s")
        for key, name in (("encoder_s", "encoder_median_s"), ("masker_s", "masker_median_s"),
                          ("cpu_s", "cpu_median_s"), ("sys_s", "sys_median_s"),
                          ("minor_faults", "minor_faults_median")):
            steps[mode][name] = float(np.median(raw[mode][key]))
    lo, ba = steps["looped"], steps["batched"]
    paired = np.asarray(raw["looped"]["total_s"]) / np.asarray(raw["batched"]["total_s"])
    ratios = {
        "speedup": lo["median_s"] / ba["median_s"],
        "speedup_paired_median": float(np.median(paired)),
        "speedup_paired_min": float(paired.min()), "speedup_paired_max": float(paired.max()),
        "encoder_step_speedup": lo["encoder_median_s"] / ba["encoder_median_s"],
        "masker_step_speedup": lo["masker_median_s"] / ba["masker_median_s"],
        "cpu_time_speedup": lo["cpu_median_s"] / ba["cpu_median_s"],
    }
    # What removing the repeated x1 passes alone can give: the looped step minus (N - 1) x
    # (x1 forward+backward + x1 no-grad forward), timed alone.
    pieces = redundant_pieces(runners["looped"], x1, sync, args.piece_samples)
    pieces["redundant_s"] = (n - 1) * (pieces["x1_fwd_bwd_s"] + pieces["x1_fwd_nograd_s"])
    pieces["looped_minus_redundant_s"] = lo["median_s"] - pieces["redundant_s"]
    pieces["dedup_only_speedup"] = lo["median_s"] / pieces["looped_minus_redundant_s"]
    pieces["batched_vs_looped_minus_redundant"] = ba["median_s"] / pieces["looped_minus_redundant_s"]
    ratios["meets_target"] = bool(ratios["speedup"] >= TARGET_SPEEDUP)
    print(f"[{label}] looped {lo['median_s']:.3f} s/step, batched {ba['median_s']:.3f} s/step: "
          f"x{ratios['speedup']:.2f} (paired median x{ratios['speedup_paired_median']:.2f}, "
          f"CPU time x{ratios['cpu_time_speedup']:.2f}); dropping the {n - 1} repeated x1 passes "
          f"alone would give x{pieces['dedup_only_speedup']:.2f} "
          f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
    return {"image_size": img_size, "num_masks": n, "batch": args.batch, "check": check,
            "steps": steps, "ratios": ratios, "pieces": pieces,
            "raw": {mode: {k: [round(x, 6) for x in v] for k, v in raw[mode].items()}
                    for mode in MODES},
            "warmup_total_s": {mode: [round(x, 6) for x in v] for mode, v in warm.items()},
            "seconds": time.perf_counter() - t_start}


# ---------------------------------------------------------------------------- peak memory
def saved_activations_mb(fn: Callable, params: Sequence[torch.Tensor]) -> float:
    """MiB of the distinct tensor storages autograd saves for backward while ``fn`` runs,
    parameters excluded: the activation memory of the graphs, independent of the allocator.
    (All of them stay alive until their backward, so no two share an address.)"""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2 ** 20


def memory_child(args) -> int:
    """In a fresh process: build one mode's models and batch, run ``--memory-steps`` steps, print
    the peak. ``ru_maxrss`` is recorded but not used for the delta: on Linux it keeps the peak of
    the process image before ``exec`` (the forked parent's RSS)."""
    mode = args.measure_peak
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    m = build_adios(args.peak_size, args.peak_n, args.seed, device, args.lr)
    x1, x2 = make_batch(args.batch, args.peak_size, args.seed + 1, device)
    gc.collect()
    out = {"mode": mode, "image_size": args.peak_size, "num_masks": args.peak_n,
           "steps": args.memory_steps, "ru_maxrss_before_mb": maxrss_mb()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    out["hwm_reset"] = reset_peak_rss()
    base = proc_status_mb("VmRSS") if out["hwm_reset"] else peak_mb()
    out["baseline_mb"] = base
    batched = mode == "batched"
    params = [p for mod in (m.encoder, m.projector, m.masker) for p in mod.parameters()]
    peaks = {"encoder": [], "masker": []}
    carried = {}  # batched mode: the encoder step's masks (with graph) go to the masker step

    def run_encoder():
        carried["masks"] = encoder_step(m, x1, x2, batched)[1]

    def run_masker():
        masker_step(m, x1, x2, batched, carried.pop("masks", None))

    for i in range(args.memory_steps):
        for name, sub_step in (("encoder", run_encoder), ("masker", run_masker)):
            # HWM reset to the current RSS (<= the peak so far): the max over the sub-steps'
            # peaks is the process's peak, and each sub-step's own peak is seen.
            if out["hwm_reset"]:
                reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            if i == 0:
                out[f"{name}_step_saved_activations_mb"] = saved_activations_mb(sub_step, params)
            else:
                sub_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peaks[name].append((torch.cuda.max_memory_allocated(device) - base_alloc) / 2 ** 20)
            else:
                peaks[name].append(peak_mb() - base)
    out["encoder_step_peak_mb"] = peaks["encoder"]
    out["masker_step_peak_mb"] = peaks["masker"]
    out["peak_after_step_mb"] = [max(e, k) for e, k in zip(peaks["encoder"], peaks["masker"])]
    out["peak_mb"] = max(out["peak_after_step_mb"])
    out["ru_maxrss_end_mb"] = maxrss_mb()
    if device.type == "cuda":
        out["memory_metric"] = "torch.cuda.max_memory_allocated - allocated after build"
    else:
        out["memory_metric"] = ("peak RSS (VmHWM, reset after build) - RSS after build"
                                if out["hwm_reset"] else "VmHWM(end) - VmHWM(after build)")
    print("MEMORY_JSON " + json.dumps(out), flush=True)
    return 0


def run_memory(mode: str, img_size: int, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure-peak", mode,
           "--peak-size", str(img_size), "--peak-n", str(n), "--batch", str(args.batch),
           "--memory-steps", str(args.memory_steps), "--threads", str(args.threads),
           "--device", args.device, "--seed", str(args.seed), "--lr", str(args.lr)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.memory_timeout)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("MEMORY_JSON "):
            res = json.loads(line[len("MEMORY_JSON "):])
            res["seconds"] = time.perf_counter() - t0
            return res
    return {"mode": mode, "image_size": img_size, "num_masks": n, "peak_mb": float("nan"),
            "error": f"rc {proc.returncode}: "
                     + (proc.stderr.strip().splitlines() or ["no output"])[-1]}


# ---------------------------------------------------------------------------- reporting


def _mem(r: dict, mode: str, key: str) -> float:
    return r.get("memory", {}).get(mode, {}).get(key, float("nan"))


def saved_mb(r: dict, mode: str, step: str = "encoder") -> float:
    """Autograd-saved activations (MiB) of one sub-step ("encoder" or "masker")."""
    return _mem(r, mode, f"{step}_step_saved_activations_mb")


def format_table(results: List[dict]) -> str:
    head = (f"{'size':>4} {'N':>2}  {'mode':<8} {'s/step':>7} {'IQR s':>6} {'enc s':>6} "
            f"{'mask s':>6} {'CPU s':>6}  {'speed-up':>8} {'paired':>6} {'CPU':>6}  "
            f"{'peak MB':>7} {'saved MB enc/mask':>17}")
    lines = [head, "-" * len(head)]
    for r in results:
        rt = r["ratios"]
        for mode in MODES:
            s = r["steps"][mode]
            if mode == "batched":
                ratio, paired, cpu = (f"x{rt[k]:.2f}" for k in
                                      ("speedup", "speedup_paired_median", "cpu_time_speedup"))
            else:
                ratio = paired = cpu = "1"
            lines.append(f"{r['image_size']:>4} {r['num_masks']:>2}  {mode:<8} "
                         f"{s['median_s']:>7.3f} {s['iqr_s']:>6.3f} {s['encoder_median_s']:>6.3f} "
                         f"{s['masker_median_s']:>6.3f} {s['cpu_median_s']:>6.3f}  {ratio:>8} "
                         f"{paired:>6} {cpu:>6}  " + (
                             f"{_mem(r, mode, 'peak_mb'):>7.0f} {saved_mb(r, mode):>9.0f} / "
                             f"{saved_mb(r, mode, 'masker'):<5.0f}" if "memory" in r
                             else f"{'-':>7} {'-':>17}"))
        peak_ratio = _mem(r, "batched", "peak_mb") / _mem(r, "looped", "peak_mb")
        saved_ratio = saved_mb(r, "batched") / saved_mb(r, "looped")
        saved_ratio_m = saved_mb(r, "batched", "masker") / saved_mb(r, "looped", "masker")
        verdict = "meets" if rt["meets_target"] else "BELOW"
        pc = r["pieces"]
        lines.append(f"{'':>10}speed-up x{rt['speedup']:.2f} ({verdict} the x{TARGET_SPEEDUP} target; "
                     f"encoder step x{rt['encoder_step_speedup']:.2f}, masker step "
                     f"x{rt['masker_step_speedup']:.2f})")
        lines.append(f"{'':>10}looped minus its {r['num_masks'] - 1} repeated x1 passes "
                     f"({pc['x1_fwd_bwd_s']:.3f} s fwd+bwd + {pc['x1_fwd_nograd_s']:.3f} s no-grad "
                     f"fwd each, timed alone): {pc['looped_minus_redundant_s']:.3f} s = "
                     f"x{pc['dedup_only_speedup']:.2f}; batched is {pc['batched_vs_looped_minus_redundant']:.2f}x that")
        if "memory" in r:
            lines.append(f"{'':>10}memory batched/looped: peak {peak_ratio:.2f}; autograd-saved "
                         f"activations: encoder step {saved_ratio:.2f}, masker step "
                         f"{saved_ratio_m:.2f}")
    return "\n".join(lines)


def write_csv(path: str, results: List[dict]) -> None:
    cols = ["image_size", "num_masks", "batch", "mode", "median_s", "q25_s", "q75_s", "iqr_s",
            "min_s", "n", "encoder_median_s", "masker_median_s", "cpu_median_s", "sys_median_s",
            "minor_faults_median", "speedup", "speedup_paired_median", "cpu_time_speedup",
            "encoder_step_speedup", "masker_step_speedup", "dedup_only_speedup", "peak_mb",
            "encoder_step_peak_mb", "masker_step_peak_mb", "encoder_step_saved_activations_mb",
            "masker_step_saved_activations_mb"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            for mode in MODES:
                row = {"image_size": r["image_size"], "num_masks": r["num_masks"],
                       "batch": r["batch"], "mode": mode, **r["steps"][mode]}
                mem = r.get("memory", {}).get(mode, {})
                for k in cols:
                    if k.endswith("_mb") and k in mem:
                        row[k] = max(mem[k]) if isinstance(mem[k], list) else mem[k]
                if mode == "batched":
                    row.update({k: v for k, v in r["ratios"].items() if k != "meets_target"})
                    row["dedup_only_speedup"] = r["pieces"]["dedup_only_speedup"]
                w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def plot(path: str, results: List[dict], env: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"looped": "#d62728", "batched": "#1f77b4"}
    has_mem = any("memory" in r for r in results)
    fig, axes = plt.subplots(1, 2 if has_mem else 1, figsize=(11 if has_mem else 6.5, 4.8),
                             squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['image_size']}px\nN={r['num_masks']}" for r in results]
    x = np.arange(len(results))
    w = 0.38
    top = max(r["steps"][m]["q75_s"] for r in results for m in MODES)
    for j, mode in enumerate(MODES):
        st = [r["steps"][mode] for r in results]
        ax.bar(x + (j - 0.5) * w, [s["median_s"] for s in st], w,
               yerr=[[s["median_s"] - s["q25_s"] for s in st], [s["q75_s"] - s["median_s"] for s in st]],
               capsize=3, color=colors[mode], edgecolor="black", linewidth=0.6,
               label={"looped": "looped (official order)", "batched": "batched (adios_ssl)"}[mode])
        for xi, s in zip(x, st):
            ax.text(xi + (j - 0.5) * w, s["q75_s"] + 0.01 * top, f"{s['median_s']:.2f}",
                    ha="center", va="bottom", fontsize=8)
    for k, (xi, r) in enumerate(zip(x, results)):
        floor = r["pieces"]["looped_minus_redundant_s"]
        ax.hlines(floor, xi, xi + w, colors="black", linestyles="--", linewidth=1.0,
                  label="looped minus the repeated x1 passes" if k == 0 else None)
        ax.text(xi, max(r["steps"][m]["q75_s"] for m in MODES) + 0.09 * top,
                f"x{r['ratios']['speedup']:.2f}", ha="center", va="bottom", fontsize=11,
                fontweight="bold")
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("s per training step (median; bars = IQR)")
    ax.set_title(f"time per ADIOS step, batch {args.batch} (speed-up in bold)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if has_mem:
        ax = axes[0][1]
        mtop = np.nanmax([_mem(r, m, "peak_mb") for r in results for m in MODES])
        for j, mode in enumerate(MODES):
            vals = [_mem(r, mode, "peak_mb") for r in results]
            saved = [saved_mb(r, mode) for r in results]
            ax.bar(x + (j - 0.5) * w, vals, w, color=colors[mode], edgecolor="black",
                   linewidth=0.6, label=f"{mode}: peak")
            ax.bar(x + (j - 0.5) * w, saved, w * 0.5, color="white", alpha=0.55, hatch="//",
                   edgecolor="black", linewidth=0.5,
                   label="autograd-saved activations (encoder step)" if j == 0 else None)
            for xi, v, sv in zip(x, vals, saved):
                ax.text(xi + (j - 0.5) * w, v + 0.01 * mtop, f"{v:.0f}", ha="center",
                        va="bottom", fontsize=8)
                ax.text(xi + (j - 0.5) * w, sv, f"{sv:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_ylim(0, mtop * 1.35)
        ax.set_ylabel("peak memory above the built models, MiB")
        ax.set_title("peak memory (" + ("CUDA allocated" if env["device"].startswith("cuda")
                                        else "RSS") + f", {args.memory_steps} steps)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.suptitle("ADIOS training step: batched masked views vs the official order (ResNet-18 + "
                 "SimCLR)\n" + bench_env.machine_line(env, f"{env['torch_num_threads']} thread(s)"),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
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
    p.add_argument("--seed", type=int, default=0)
    # internal: one peak-memory measurement in a fresh process
    p.add_argument("--measure-peak", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--peak-size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--peak-n", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.piece_samples = 3, 1, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or args.threads < 1:
        raise SystemExit("need --repeats >= 1, --warmup >= 1 and --threads >= 1")
    if args.measure_peak:
        bench_env.setup_torch(args.device, args.threads)
        return memory_child(args)
    device = bench_env.setup_torch(args.device, args.threads)
    env = bench_env.environment(device)
    print(f"torch {env['torch']} on {env['device']} ({env['cpu_model']}), "
          f"{env['torch_num_threads']} thread(s)", flush=True)

    t0 = time.perf_counter()
    results = []
    for size in args.image_sizes:
        for n in args.num_masks:
            r = bench_config(size, n, args, device)
            if not r["check"]["ok"]:
                print(f"REFUSING TO REPORT: batched and looped SSL losses differ by more than "
                      f"{CHECK_RTOL:g} relative at {size}px N={n}: {r['check']}", file=sys.stderr)
                return 1
            results.append(r)
    t_timing = time.perf_counter() - t0
    if not args.no_memory:
        print(f"peak memory: {2 * len(results)} fresh subprocesses x {args.memory_steps} steps ...",
              flush=True)
        for r in results:
            r["memory"] = {mode: run_memory(mode, r["image_size"], r["num_masks"], args)
                           for mode in MODES}
            for mode, rec in r["memory"].items():
                if "error" in rec:
                    print(f"  memory {r['image_size']}px N={r['num_masks']} {mode}: {rec['error']}",
                          file=sys.stderr)
    total_s = time.perf_counter() - t0
    env["load_average_at_end"] = load_average()

    table = format_table(results)
    print()
    print(table)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "measure_peak", "peak_size", "peak_n")}
    settings.update(
        model="torchvision resnet18(weights=None), fc=Identity (512) + projector "
              "Linear(512,2048)-BN1d-ReLU-Linear(2048,128)",
        pair_loss="SimCLR NT-Xent, temperature 0.2", masker="MaskingNetwork(img_size, N, fbase=32, norm='gn')",
        optimizers="SGD(lr, momentum=0.9) for encoder+projector and for the masker",
        alpha_sparsity=1.0, masked_views="second view only, pairs ('masked',)",
        inputs="randn batches (x1, x2), the same every step",
        interleaving="looped/batched alternating order per repetition",
        check="first step of each mode untimed, SSL losses of both sub-steps compared "
              "(on CUDA with TF32 off); timings use the backends' defaults",
        target_speedup=TARGET_SPEEDUP, check_rtol=CHECK_RTOL)
    save_results(args.out, "adios_step",
                 {"environment": env, "settings": settings, "total_seconds": total_s,
                  "timing_seconds": t_timing, "results": results, "table": table},
                 write_csv, plot, args, summary=f"total {total_s:.0f} s, timing {t_timing:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
