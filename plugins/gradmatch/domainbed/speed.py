"""Per-update time and peak memory of the plugin's ``FishFast`` vs DomainBed's built-in ``Fish``
and ``ERM``, all driven through DomainBed's own ``Algorithm.update(minibatches)``.

Needs a DomainBed checkout (:mod:`gradmatch.domainbed.locate`); DomainBed itself is not modified.
What is compared, on identical synthetic minibatches (``S`` domains) and identical initial
weights, in one process, interleaved (ABCDE, EDCBA, ... per repetition) after warm-up:

``ERM``               DomainBed's ``ERM`` (one Adam step on the concatenated batch).
``Fish``              DomainBed's built-in ``Fish``: a new ``WholeFish`` every step (for 224 px
                      this runs torchvision's ``resnet*(pretrained=True)`` again, i.e. builds a
                      ResNet and loads the checkpoint from the hub cache), a new Adam reloading
                      the saved state, and an out-of-place ``state_dict`` meta step.
``FishFast``          the plugin, DomainBed-compatible setting: ``fish_shuffle_domains=False``,
                      the rest default (Adam, eps = meta_lr, carried Adam state, GIP logged
                      every 50 steps). Its updates equal built-in Fish's
                      (:func:`check_fishfast_matches_fish`).
``FishFast-default``  the plugin at its defaults (random domain order each step).
``floor``             the same ``S`` forward/backward passes + ``S`` Adam steps done plainly on one
                      ``WholeFish``: no copy, no meta step. No Fish can be cheaper.

Models (:data:`MODELS`): DomainBed's ``MNIST_CNN`` on ColoredMNIST-like (2, 28, 28) inputs,
``default_hparams(alg, 'ColoredMNIST')``; ResNet-18 and ResNet-50 at 224 px,
``default_hparams(alg, 'PACS')`` with ``resnet18`` True/False and ``resnet50_augmix=False``.
Without internet, :func:`planted_torch_home` plants random weights under the file names
``pretrained=True`` looks for in a scratch ``$TORCH_HOME`` (this process and its children), so
DomainBed's hard-coded path runs unchanged, reading a file of the real checkpoint's size.

Peak memory (:func:`measure_memory`): one variant, ``steps`` updates, in a fresh process
(:mod:`runkit.bench.child`); CPU: peak RSS rise (:class:`runkit.bench.memory.PeakMeter`) from
just before the algorithm is built; CUDA: the allocator's peak over the memory allocated then.
Times are ms; memory MiB. ``benchmarks/domainbed_fish.py`` prints and plots the results.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Callable, Dict, Optional, Sequence

import torch

from runkit.bench import timing
from runkit.bench.child import run_in_child
from runkit.bench.memory import PeakMeter, maxrss_mb, peak_mb, proc_status_mb

from .speed_setup import (  # noqa: F401  (MODELS and planted_torch_home are this module's API too)
    ALGORITHM_OF,
    MODELS,
    VARIANT_OVERRIDES,
    Floor,
    build_variant,
    load_domainbed,
    load_initial_weights,
    make_minibatches,
    plant_torchvision_weights,
    planted_torch_home,
    quiet,
    variant_hparams,
)

TARGET_OVERHEAD = 0.05
VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-default", "floor")
MEMORY_VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-nogip", "FishFast-default", "floor")
DEFAULT_MEMORY_VARIANTS = ("ERM", "Fish", "FishFast", "FishFast-nogip")
# ResNet-50 at 224 px, 3 x 8 images, is ~10 s per update on one CPU core: few timed steps.
DEFAULT_STEPS = {"mnist_cnn": 8, "resnet18": 4, "resnet50": 3}
DEFAULT_WARMUP = {"mnist_cnn": 1, "resnet18": 1, "resnet50": 1}


@quiet
def check_fishfast_matches_fish(device="cpu", num_domains: int = 3, steps: int = 3, batch: int = 8) -> float:
    """Max |difference| of the weights of built-in Fish and FishFast (DomainBed-compatible
    setting) after ``steps`` updates from the same start on MNIST_CNN: the comparison is like
    for like (float32 rounding, which Adam's normalisation amplifies a little: ~1e-6)."""
    db, device = load_domainbed(), torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base, _ = build_variant(db, "floor", "mnist_cnn", num_domains, device)
        state = {k: v.clone() for k, v in base.network.net.state_dict().items()}
        batches = make_minibatches("mnist_cnn", batch, num_domains, 1, device)
        algs = {}
        for v in ("Fish", "FishFast"):
            algs[v], _ = build_variant(db, v, "mnist_cnn", num_domains, device)
            load_initial_weights(algs[v], v, state)
        for _ in range(steps):
            for a in algs.values():
                a.update(batches)
    return max(float((p - q).detach().abs().max()) for p, q in
               zip(algs["Fish"].network.parameters(), algs["FishFast"].network.parameters()))


def overhead_pieces(fish_alg, fast_alg, device, num_domains: int) -> Dict[str, Callable]:
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


@quiet
def peak_memory(model: str, variant: str, *, device: str = "cpu", domains: int = 3,
                batch: Optional[int] = None, steps: int = 2, seed: int = 0) -> dict:
    """In a fresh process (:func:`measure_memory` runs it there): build one variant, run
    ``steps`` updates, return the peaks (MiB). ``peak_mb``: the device's figure (see the
    module's docstring); the record keeps the raw counters too (``ru_maxrss`` is kept but not
    used: on Linux it also carries the peak of the forked parent from before ``exec``)."""
    device = torch.device(device)
    db = load_domainbed()
    batch = MODELS[model]["batch"] if batch is None else batch
    batches = make_minibatches(model, batch, domains, seed + 1, device)
    gc.collect()
    out = {"model": model, "variant": variant, "steps": steps,
           "ru_maxrss_before_mb": maxrss_mb(), "hwm_before_reset_mb": proc_status_mb("VmHWM")}
    meter = PeakMeter(device)
    out.update(meter.start())
    torch.manual_seed(seed)
    alg, _ = build_variant(db, variant, model, domains, device)
    out["after_build_peak_mb"] = peak_mb()
    out["after_build_rss_mb"] = proc_status_mb("VmRSS")
    out["peak_after_step_mb"], out["rss_after_step_mb"], out["gip_logged"] = [], [], []
    for _ in range(steps):
        res = alg.update(batches)
        out["gip_logged"].append("gip" in res)
        out["peak_after_step_mb"].append(peak_mb())
        out["rss_after_step_mb"].append(proc_status_mb("VmRSS"))
    out["ru_maxrss_end_mb"] = maxrss_mb()
    out["peak_rss_delta_mb"] = meter.rss_rise_mb()
    out["build_rss_delta_mb"] = out["after_build_peak_mb"] - meter.base_mb
    if meter.cuda:
        out["cuda_peak_delta_mb"] = meter.rise_mb()
    out["peak_mb"] = meter.rise_mb()
    out["memory_metric"] = meter.metric("before build")
    return out


def measure_memory(model: str, variant: str, *, device: str = "cpu", domains: int = 3,
                   batch: Optional[int] = None, steps: int = 2, seed: int = 0,
                   threads: Optional[int] = None, timeout_s: float = 900.0) -> dict:
    """:func:`peak_memory` in a fresh process with ``threads`` torch threads (default this
    process's); on failure ``{"model", "variant", "error", "peak_mb": NaN}``."""
    threads = torch.get_num_threads() if threads is None else threads
    res = run_in_child("gradmatch.domainbed.speed:peak_memory",
                       {"model": model, "variant": variant, "device": str(device), "domains": domains,
                        "batch": batch, "steps": steps, "seed": seed}, timeout_s=timeout_s, threads=threads)
    return res if "error" not in res else {"model": model, "variant": variant, **res}


def measure_domainbed_fish(model: str = "mnist_cnn", *, device="cpu", domains: int = 3,
                           batch: Optional[int] = None, steps: Optional[int] = None,
                           warmup: Optional[int] = None, piece_samples: int = 5, piece_ms: float = 20.0,
                           memory_variants: Sequence[str] = (), memory_steps: int = 2,
                           memory_timeout_s: float = 900.0, seed: int = 0,
                           time_cap_s: Optional[float] = None, torch_home: Optional[str] = None,
                           log: Callable[[str], None] = None) -> dict:
    """Time the :data:`VARIANTS` on ``model`` through ``update()``, then each Fish's additions
    to the floor alone, then (``memory_variants``) each variant's peak memory in a fresh process.

    ``steps``/``warmup``: timed/untimed updates per variant (default :data:`DEFAULT_STEPS` /
    :data:`DEFAULT_WARMUP`); ``batch``: per domain (default the model's); ``piece_samples``
    samples per piece, each >= ``piece_ms`` ms of back-to-back calls. ``time_cap_s``: no new
    repetition, piece sample or memory process starts once this many seconds have passed (at
    least one timed update and one sample per piece run); ``capped`` says whether it cut
    anything. ResNet models read their "pretrained" checkpoints from ``torch_home``, planted
    there if missing (:func:`planted_torch_home`; default a scratch folder for the call).

    Returns (ms, MiB): ``stats`` per variant, ``ratios`` (e.g. ``"FishFast/Fish"``: ratio of
    medians and paired ratios), ``pieces``, ``breakdown``, ``memory`` per variant,
    ``fishfast_overhead_pct``, verdicts, ``raw`` samples, ``seconds``, ``capped``.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {list(MODELS)}")
    with contextlib.ExitStack() as stack:
        if model != "mnist_cnn":
            stack.enter_context(planted_torch_home(torch_home))
        return _measure(model, device, domains, batch, steps, warmup, piece_samples, piece_ms, memory_variants,
                        memory_steps, memory_timeout_s, seed, time_cap_s, log)


@quiet
def _measure(model, device, domains, batch, steps, warmup, piece_samples, piece_ms, memory_variants,
             memory_steps, memory_timeout_s, seed, time_cap_s, log) -> dict:
    log = log or (lambda line: None)
    db, device, cfg = load_domainbed(), torch.device(device), MODELS[model]
    sync, deadline = timing.make_sync(device), timing.Deadline(time_cap_s)
    batch = cfg["batch"] if batch is None else batch
    steps = DEFAULT_STEPS[model] if steps is None else steps
    warmup = DEFAULT_WARMUP[model] if warmup is None else warmup

    torch.manual_seed(seed)
    base, _ = build_variant(db, "floor", model, domains, torch.device("cpu"))
    base_state = {k: v.clone() for k, v in base.network.net.state_dict().items()}
    n_params = sum(p.numel() for p in base.parameters())
    del base
    batches = make_minibatches(model, batch, domains, seed + 1, device)
    algs, hparams = {}, {}
    for v in VARIANTS:
        torch.manual_seed(seed)
        algs[v], hparams[v] = build_variant(db, v, model, domains, device)
        load_initial_weights(algs[v], v, base_state)
    log(f"[{model}] {n_params / 1e6:.2f}M params, S={domains} x batch {batch}, "
        f"{'x'.join(map(str, cfg['input_shape']))}: {warmup} warm-up + {steps} timed updates "
        f"per variant, interleaved ...")

    def update(v):
        return lambda: {"gip_logged": "gip" in algs[v].update(batches)}

    run = timing.interleaved({v: update(v) for v in VARIANTS}, sync, reps=steps, warmup=warmup,
                             deadline=deadline, keep_returns=True)
    t_steps = deadline.elapsed()
    raw = {v: {"ms": [1e3 * s for s in r["s"]], "warmup_ms": [1e3 * s for s in r["warmup_s"]],
               "minor_faults": r["minor_faults"], "user_ms": [1e3 * s for s in r["user_s"]],
               "sys_ms": [1e3 * s for s in r["sys_s"]], "gip_logged": r["gip_logged"]}
           for v, r in run["samples"].items()}
    stats = {}
    for v, r in raw.items():
        stats[v] = {**timing.summarize(r["ms"]), "warmup_ms": r["warmup_ms"],
                    "sys_ms_median": timing.median(r["sys_ms"]),
                    "minor_faults_median": timing.median(r["minor_faults"]),
                    "cpu_per_wall_median": timing.cpu_per_wall(run["samples"][v]),
                    "gip_logged_in_timed": int(sum(r["gip_logged"]))}

    def ratio(a, b):
        q = timing.paired_ratio(raw[a]["ms"], raw[b]["ms"])
        return {k: q[k] for k in ("of_medians", "paired_median", "paired_q25", "paired_q75")}

    ratios = {k: ratio(*k.split("/")) for k in ("FishFast/Fish", "FishFast-default/Fish", "FishFast/floor",
                                                 "FishFast-default/floor", "Fish/floor", "Fish/ERM", "FishFast/ERM")}
    pieces = timing.time_pieces(overhead_pieces(algs["Fish"], algs["FishFast"], device, domains), sync,
                                piece_samples, piece_ms / 1e3, probe_calls=1, max_calls=200, deadline=deadline)
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
    algs.clear()  # free the models before the memory processes run
    gc.collect()
    t_pieces = deadline.elapsed() - t_steps
    capped = run["capped"] or any(p["n"] < piece_samples for p in pieces.values())

    memory = {}
    if memory_variants:
        log(f"[{model}] peak memory: {len(memory_variants)} fresh subprocesses x {memory_steps} updates ...")
    for v in memory_variants:
        if deadline.passed():
            capped = True
            memory[v] = {"model": model, "variant": v, "peak_mb": float("nan"), "error": "skipped: time cap"}
            continue
        left = deadline.left()
        memory[v] = measure_memory(model, v, device=str(device), domains=domains, batch=batch, steps=memory_steps,
                                   seed=seed,
                                   timeout_s=memory_timeout_s if left is None else min(left, memory_timeout_s))
        if "error" in memory[v]:
            log(f"[{model}]   {v}: memory run failed: {memory[v]['error']}")
    t_total = deadline.elapsed()
    log(f"[{model}] done in {t_total:.0f} s (timed loop {t_steps:.0f} s, pieces {t_pieces:.0f} s, "
        f"memory {t_total - t_steps - t_pieces:.0f} s)" + (" [time cap]" if capped else ""))
    return {
        "model": model, "label": cfg["label"], "params": n_params, "batch_per_domain": batch,
        "input_shape": list(cfg["input_shape"]), "num_classes": cfg["num_classes"],
        "dataset_hparams": cfg["dataset"], "domains": domains, "steps": len(raw["floor"]["ms"]),
        "steps_asked": steps, "warmup": warmup, "hparams": hparams, "stats": stats, "ratios": ratios,
        "pieces": pieces, "breakdown": breakdown, "memory": memory,
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
        "time_cap_s": time_cap_s, "capped": capped, "raw": raw,
    }


def settings_notes(device) -> dict:
    """What :func:`measure_domainbed_fish` measures on ``device``, in words (for a result file)."""
    return {
        "variants": {"ERM": "domainbed.algorithms.ERM", "Fish": "domainbed.algorithms.Fish (built-in)",
                     "FishFast": "plugin FishFast, fish_shuffle_domains=False, rest default",
                     "FishFast-default": "plugin FishFast, default hparams",
                     "FishFast-nogip": "memory only: FishFast with fish_shuffle_domains=False, fish_gip_every=0",
                     "floor": "S plain forward/backward + Adam(lr, weight_decay) steps on one WholeFish"},
        "interleaving": "ABCDE/EDCBA alternating per repetition, after warm-up",
        "data": "synthetic: randn inputs, uniform labels; the same minibatches every update",
        "weights": "identical random init in every variant; ResNet 'pretrained' checkpoints are "
                   "random weights planted in a scratch TORCH_HOME",
        "memory_metric": ("torch.cuda.max_memory_allocated - allocated before build"
                          if torch.device(device).type == "cuda" else
                          "peak RSS (VmHWM, reset via /proc/self/clear_refs just before the algorithm is built) - "
                          "RSS at that moment; one fresh process per variant"),
    }


def provenance() -> dict:
    """The DomainBed checkout measured and the commit the plugin pins, for a result file."""
    from .locate import PINNED_COMMIT, ensure_importable

    return {"domainbed_checkout": str(ensure_importable()), "domainbed_pinned_commit": PINNED_COMMIT}
