"""Time and memory of one ADIOS training step: batched masked views vs the official order.

One ADIOS training step is the shipped :mod:`adios_ssl.step` (:func:`encoder_step` and
:func:`masker_step` below call it), with :func:`adios_ssl.objective.adios_ssl_loss` doing the N
masked views, on a ResNet-18 encoder + SimCLR projector + :class:`adios_ssl.masker.MaskingNetwork`:

1. encoder step: ``masks = masker(x2)``; ``loss = sum_k L(f(x1), f(x2 * (1 - m_k.detach())))``;
   backward; SGD step on encoder + projector.
2. masker step: encoder/projector frozen; the masks with grad (batched: the encoder step's,
   reused; looped: computed again, as the official code does); the same SSL sum
   (``grad_through_views=False``); ``(-masker_objective(ssl, masks, alpha_sparsity=1)).backward()``;
   SGD step on the masker.

Two modes (:data:`MODES`), on copies of the same initial weights and the same batch:
``looped`` (``batched=False``: the official order -- for every mask k the view x1 is encoded
again and the masked view alone, 2N encoder passes of B images) and ``batched`` (this package:
x1 once, the N masked views in one pass of N*B images with per-view BatchNorm statistics).

:func:`check_orders` runs the first step of both modes and compares their SSL losses
(:data:`CHECK_RTOL`); :func:`measure_adios_step` times them interleaved (seconds) after that
check, and the two passes the looped order repeats per extra mask alone; :func:`measure_memory`
runs :func:`peak_memory` in a fresh process (MiB). ``benchmarks/adios_step.py`` prints and
plots the results.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from runkit.bench import timing
from runkit.bench.child import run_in_child
from runkit.bench.memory import PeakMeter, maxrss_mb, saved_activations_mb

from .masker import MaskingNetwork
from .objective import adios_ssl_loss
from .step import encoder_update, masker_update

MODES = ("looped", "batched")
TARGET_SPEEDUP = 1.5
CHECK_RTOL = 1e-4
#: what :func:`measure_adios_step` measures, in words (for a result file's settings)
SETTINGS_NOTES = {
    "model": "torchvision resnet18(weights=None), fc=Identity (512) + projector Linear(512,2048)-BN1d-ReLU-"
             "Linear(2048,128)",
    "pair_loss": "SimCLR NT-Xent, temperature 0.2", "masker": "MaskingNetwork(img_size, N, fbase=32, norm='gn')",
    "optimizers": "SGD(lr, momentum=0.9) for encoder+projector and for the masker",
    "alpha_sparsity": 1.0, "masked_views": "second view only, pairs ('masked',)",
    "inputs": "randn batches (x1, x2), the same every step",
    "interleaving": "looped/batched alternating order per repetition",
    "check": "first step of each mode untimed, SSL losses of both sub-steps compared (on CUDA with TF32 off); "
             "timings use the backends' defaults",
}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of projections (B, D): each row's positive is the
    same image in the other view, its negatives the 2B - 2 other rows."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t()) / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
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


def build_adios(img_size: int, num_masks: int, seed: int, device, lr: float, mask_fbase: int = 32) -> Adios:
    """torchvision ResNet-18 (random init, fc = Identity: 512 features), projector
    Linear(512,2048)-BN-ReLU-Linear(2048,128), ``MaskingNetwork(img_size, N, mask_fbase, 'gn')``."""
    import torchvision

    torch.manual_seed(seed)
    encoder = torchvision.models.resnet18(weights=None)
    encoder.fc = nn.Identity()
    projector = nn.Sequential(nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
                              nn.Linear(2048, 128))
    masker = MaskingNetwork(img_size, num_masks, fbase=mask_fbase, norm="gn")
    for m in (encoder, projector, masker):
        m.to(device).train()
    return attach_optimizers(encoder, projector, masker, lr)


def attach_optimizers(encoder, projector, masker, lr: float) -> Adios:
    """SGD(lr, momentum 0.9) for encoder + projector and for the masker."""
    enc_opt = torch.optim.SGD(list(encoder.parameters()) + list(projector.parameters()), lr=lr, momentum=0.9)
    mask_opt = torch.optim.SGD(masker.parameters(), lr=lr, momentum=0.9)
    return Adios(encoder, projector, masker, enc_opt, mask_opt)


def clone_adios(a: Adios, lr: float) -> Adios:
    """Same weights, fresh optimizers (no state has been built yet)."""
    return attach_optimizers(copy.deepcopy(a.encoder), copy.deepcopy(a.projector), copy.deepcopy(a.masker), lr)


def _step_fns(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """The masks and SSL-loss functions the shipped step (:mod:`adios_ssl.step`) takes."""
    def masks_fn():
        return [None, m.masker(x2)]

    def ssl_fn(masks, grad_through_views):
        loss, _ = adios_ssl_loss(m.encode, m.pair_loss, (x1, x2), masks, modules=[m.encoder, m.projector],
                                 batched=batched, grad_through_views=grad_through_views)
        return loss, loss.new_zeros(())
    return masks_fn, ssl_fn


def encoder_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """The shipped encoder step (:func:`adios_ssl.step.encoder_update`). Returns the SSL loss
    and, in batched mode, the masks with their graph, which the masker step reuses (the
    plugin's order); the official order computes them again there."""
    masks_fn, ssl_fn = _step_fns(m, x1, x2, batched)
    out = encoder_update(masks_fn, ssl_fn, m.enc_opt, reuse_masks=batched)
    return out.ssl_loss, out.masks_graph


def masker_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool, masks=None) -> torch.Tensor:
    """The shipped masker step (:func:`adios_ssl.step.masker_update`), encoder frozen. Returns
    its SSL loss."""
    masks_fn, ssl_fn = _step_fns(m, x1, x2, batched)
    out = masker_update(masks_fn, ssl_fn, m.mask_opt, [m.enc_opt], alpha_sparsity=m.alpha_sparsity,
                        masks_graph=masks)
    return out.ssl_loss


def train_step(m: Adios, x1: torch.Tensor, x2: torch.Tensor, batched: bool):
    """One ADIOS training step: encoder step, then masker step. Returns both SSL losses."""
    loss, masks = encoder_step(m, x1, x2, batched)
    return loss, masker_step(m, x1, x2, batched, masks)


def timed_step(m: Adios, x1, x2, batched: bool, sync: Callable) -> Dict[str, float]:
    """One step, its two halves timed separately (synchronised on CUDA), in seconds."""
    sync()
    t0 = time.perf_counter()
    _, masks = encoder_step(m, x1, x2, batched)
    sync()
    t1 = time.perf_counter()
    masker_step(m, x1, x2, batched, masks)
    sync()
    return {"encoder_s": t1 - t0, "masker_s": time.perf_counter() - t1}


def make_batch(batch: int, img_size: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, 3, img_size, img_size, generator=g)
    x2 = torch.randn(batch, 3, img_size, img_size, generator=g)
    return x1.to(device), x2.to(device)


@contextlib.contextmanager
def full_fp32():
    """TF32 off for convolutions and matmuls (CUDA only; a no-op on the CPU), restored after."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rel_diff(a, b) -> float:
    """``|a - b| / max(|a|, |b|)`` of two numbers (0 for two zeros)."""
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def check_orders(runners: Dict[str, Adios], x1, x2) -> dict:
    """The first step of each mode (one step of training on each of ``runners``): the SSL
    losses of both sub-steps and their relative differences; ``ok`` when both are <=
    :data:`CHECK_RTOL`. In full fp32 on CUDA (TF32 off), so the check sees the orders only."""
    with full_fp32():
        first = {mode: train_step(runners[mode], x1, x2, mode == "batched") for mode in MODES}
    check = {
        "encoder_step_ssl_loss": {mode: float(first[mode][0]) for mode in MODES},
        "masker_step_ssl_loss": {mode: float(first[mode][1]) for mode in MODES},
        # Same weights and batch: only summation order differs.
        "encoder_step_rel_diff": rel_diff(first["looped"][0], first["batched"][0]),
        # After one SGD step on each copy: the weights differ by the float noise of that step.
        "masker_step_rel_diff": rel_diff(first["looped"][1], first["batched"][1]),
    }
    check["ok"] = bool(check["encoder_step_rel_diff"] <= CHECK_RTOL and check["masker_step_rel_diff"] <= CHECK_RTOL)
    return check


def redundant_pieces(a: Adios, x1, sync: Callable, samples: int, deadline=None) -> Dict[str, float]:
    """Median seconds of the two passes the looped order repeats for every extra mask: the
    encoder step's forward + backward of x1 (weight gradients) and the masker step's no-grad
    forward of x1, on copies of the encoder and projector; ``samples``: how many were taken."""
    encoder, projector = copy.deepcopy(a.encoder), copy.deepcopy(a.projector)

    def fwd_bwd():
        projector(encoder(x1)).square().sum().backward()

    def fwd_nograd():
        with torch.no_grad():
            projector(encoder(x1))

    run = timing.interleaved({"x1_fwd_bwd_s": fwd_bwd, "x1_fwd_nograd_s": fwd_nograd}, sync, reps=samples,
                             warmup=1, deadline=deadline)
    return {**{k: timing.median(r["s"]) for k, r in run["samples"].items()}, "samples": run["reps"]}


def measure_adios_step(img_size: int = 64, num_masks: int = 4, *, device="cpu", batch: int = 32,
                       repeats: int = 7, warmup: int = 2, lr: float = 0.01, piece_samples: int = 3,
                       mask_fbase: int = 32, seed: int = 0, time_cap_s: Optional[float] = None,
                       log: Callable[[str], None] = None) -> dict:
    """:func:`check_orders`, then both modes timed interleaved: ``warmup - 1`` more untimed
    steps (the check is the first) and ``repeats`` timed steps per mode; then the repeated x1
    passes alone (``piece_samples`` each). ``time_cap_s``: no new repetition starts once this
    many seconds have passed (at least one timed step per mode runs); ``capped`` says so.

    Returns (seconds): ``check`` (if not ``ok``, nothing else is measured), ``steps`` per mode
    (median/quartiles/IQR/min s, sub-step, CPU-time and page-fault medians), ``ratios``
    (``speedup`` = median(looped) / median(batched), paired, per sub-step, CPU time,
    ``meets_target``), ``pieces`` (the dedup-only bound), ``raw``, ``seconds``, ``capped``.
    """
    log = log or (lambda line: None)
    device = torch.device(device)
    sync, deadline = timing.make_sync(device), timing.Deadline(time_cap_s)
    base = build_adios(img_size, num_masks, seed, device, lr, mask_fbase)
    runners = {mode: clone_adios(base, lr) for mode in MODES}
    del base
    x1, x2 = make_batch(batch, img_size, seed + 1, device)
    label = f"{img_size}px N={num_masks}"
    log(f"[{label}] batch {batch}: 1 check step + {warmup - 1} warm-up + {repeats} timed steps per mode ...")
    check = check_orders(runners, x1, x2)
    log(f"[{label}] first-step SSL loss, looped vs batched: encoder step "
        f"{check['encoder_step_ssl_loss']['looped']:.6f} vs {check['encoder_step_ssl_loss']['batched']:.6f} "
        f"(rel diff {check['encoder_step_rel_diff']:.1e}); masker step rel diff {check['masker_step_rel_diff']:.1e}")
    head = {"image_size": img_size, "num_masks": num_masks, "batch": batch, "check": check}
    if not check["ok"]:
        return head

    def step(mode):
        return lambda: timed_step(runners[mode], x1, x2, mode == "batched", sync)

    run = timing.interleaved({mode: step(mode) for mode in MODES}, sync, reps=repeats, warmup=warmup - 1,
                             deadline=deadline, keep_returns=True)
    raw = {mode: {"total_s": r["s"], "encoder_s": r["encoder_s"], "masker_s": r["masker_s"],
                  "cpu_s": [u + s for u, s in zip(r["user_s"], r["sys_s"])], "sys_s": r["sys_s"],
                  "minor_faults": r["minor_faults"]} for mode, r in run["samples"].items()}
    steps = {}
    for mode in MODES:
        steps[mode] = timing.summarize(raw[mode]["total_s"], unit="s")
        for key, name in (("encoder_s", "encoder_median_s"), ("masker_s", "masker_median_s"),
                          ("cpu_s", "cpu_median_s"), ("sys_s", "sys_median_s"),
                          ("minor_faults", "minor_faults_median")):
            steps[mode][name] = timing.median(raw[mode][key])
    lo, ba = steps["looped"], steps["batched"]
    paired = timing.paired_ratio(raw["looped"]["total_s"], raw["batched"]["total_s"])
    ratios = {"speedup": lo["median_s"] / ba["median_s"], "speedup_paired_median": paired["paired_median"],
              "speedup_paired_min": paired["paired_min"], "speedup_paired_max": paired["paired_max"],
              "encoder_step_speedup": lo["encoder_median_s"] / ba["encoder_median_s"],
              "masker_step_speedup": lo["masker_median_s"] / ba["masker_median_s"],
              "cpu_time_speedup": lo["cpu_median_s"] / ba["cpu_median_s"]}
    # What removing the repeated x1 passes alone can give: the looped step minus (N - 1) x
    # (x1 forward+backward + x1 no-grad forward), timed alone.
    pieces = redundant_pieces(runners["looped"], x1, sync, piece_samples, deadline)
    pieces["redundant_s"] = (num_masks - 1) * (pieces["x1_fwd_bwd_s"] + pieces["x1_fwd_nograd_s"])
    pieces["looped_minus_redundant_s"] = lo["median_s"] - pieces["redundant_s"]
    pieces["dedup_only_speedup"] = lo["median_s"] / pieces["looped_minus_redundant_s"]
    pieces["batched_vs_looped_minus_redundant"] = ba["median_s"] / pieces["looped_minus_redundant_s"]
    ratios["meets_target"] = bool(ratios["speedup"] >= TARGET_SPEEDUP)
    capped = run["capped"] or pieces["samples"] < piece_samples
    log(f"[{label}] looped {lo['median_s']:.3f} s/step, batched {ba['median_s']:.3f} s/step: "
        f"x{ratios['speedup']:.2f} (paired median x{ratios['speedup_paired_median']:.2f}, "
        f"CPU time x{ratios['cpu_time_speedup']:.2f}); dropping the {num_masks - 1} repeated x1 passes "
        f"alone would give x{pieces['dedup_only_speedup']:.2f} [{deadline.elapsed():.0f} s]"
        + (" [time cap]" if capped else ""))
    return {**head, "steps": steps, "ratios": ratios, "pieces": pieces,
            "raw": {mode: {k: [round(x, 6) for x in v] for k, v in raw[mode].items()} for mode in MODES},
            "warmup_total_s": {mode: [round(x, 6) for x in r["warmup_s"]] for mode, r in run["samples"].items()},
            "seconds": deadline.elapsed(), "time_cap_s": time_cap_s, "capped": capped}


def peak_memory(mode: str, img_size: int, num_masks: int, *, batch: int = 32, steps: int = 2, device: str = "cpu",
                seed: int = 0, lr: float = 0.01, mask_fbase: int = 32) -> dict:
    """In a fresh process (:func:`measure_memory` runs it there): build one mode's models and
    batch, run ``steps`` steps, return the peaks above the built models (MiB) per sub-step and
    overall (``peak_mb``), and the activations autograd saves in each sub-step (first step)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    m = build_adios(img_size, num_masks, seed, device, lr, mask_fbase)
    x1, x2 = make_batch(batch, img_size, seed + 1, device)
    gc.collect()
    out = {"mode": mode, "image_size": img_size, "num_masks": num_masks, "steps": steps,
           "ru_maxrss_before_mb": maxrss_mb()}
    meter = PeakMeter(device)
    start = meter.start()
    out["hwm_reset"], out["baseline_mb"] = start["hwm_reset"], meter.base_mb
    batched = mode == "batched"
    params = [p for mod in (m.encoder, m.projector, m.masker) for p in mod.parameters()]
    peaks = {"encoder": [], "masker": []}
    carried = {}  # batched mode: the encoder step's masks (with graph) go to the masker step

    def run_encoder():
        carried["masks"] = encoder_step(m, x1, x2, batched)[1]

    def run_masker():
        masker_step(m, x1, x2, batched, carried.pop("masks", None))

    for i in range(steps):
        for name, sub_step in (("encoder", run_encoder), ("masker", run_masker)):
            # peak re-armed at the current RSS (<= the peak so far): the max over the
            # sub-steps' peaks is the process's peak, and each sub-step's own peak is seen.
            meter.rearm()
            if i == 0:
                out[f"{name}_step_saved_activations_mb"] = saved_activations_mb(sub_step, params)
            else:
                sub_step()
            peaks[name].append(meter.rise_mb())
    out["encoder_step_peak_mb"], out["masker_step_peak_mb"] = peaks["encoder"], peaks["masker"]
    out["peak_after_step_mb"] = [max(e, k) for e, k in zip(peaks["encoder"], peaks["masker"])]
    out["peak_mb"] = max(out["peak_after_step_mb"])
    out["ru_maxrss_end_mb"] = maxrss_mb()
    out["memory_metric"] = meter.metric("after build")
    return out


def measure_memory(mode: str, img_size: int, num_masks: int, *, batch: int = 32, steps: int = 2,
                   device: str = "cpu", seed: int = 0, lr: float = 0.01, mask_fbase: int = 32,
                   threads: Optional[int] = None, timeout_s: float = 600.0) -> dict:
    """:func:`peak_memory` in a fresh process with ``threads`` torch threads (default this
    process's); on failure ``{"mode", "image_size", "num_masks", "error", "peak_mb": NaN}``."""
    threads = torch.get_num_threads() if threads is None else threads
    res = run_in_child("adios_ssl.speed:peak_memory",
                       {"mode": mode, "img_size": img_size, "num_masks": num_masks, "batch": batch, "steps": steps,
                        "device": str(device), "seed": seed, "lr": lr, "mask_fbase": mask_fbase},
                       timeout_s=timeout_s, threads=threads)
    return res if "error" not in res else {"mode": mode, "image_size": img_size, "num_masks": num_masks, **res}
