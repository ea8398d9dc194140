"""What one :class:`gradmatch.Fish` update costs above its compute floor, measured.

Three ways of doing one update from ``S`` domain batches, on copies of the same initial weights
and the same batches, timed interleaved (:func:`runkit.bench.timing.interleaved`):

``floor``
    the same ``S`` forward/backward passes and ``S`` inner-optimizer steps done plainly on one
    model: no copy of the weights, no meta step. Fish cannot be cheaper than this.
``fish``
    :meth:`gradmatch.Fish.step`: in-place copy meta -> persistent inner model
    (``torch._foreach_copy_``), ``S`` inner steps, fused in-place meta step (``_foreach_lerp_``).
``deepcopy-fish``
    what DomainBed's built-in Fish does: a new inner network every step (emulated with
    ``copy.deepcopy``; DomainBed constructs a fresh network and loads the state dict, which costs
    at least as much), a new inner optimizer reloading the saved optimizer state, and an
    out-of-place ``state_dict`` meta step (``meta + eps * (inner - meta)``) loaded back.

:func:`measure_fish_overhead` returns a plain (JSON-able) dict: per variant the median and IQR
in ms per update, the ratio to the floor and the per-repetition paired ratios, and the pieces of
Fish's bookkeeping (copy-in, meta step, finite-loss check, domain order) timed alone, in ms per
call. :func:`check_deepcopy_matches_fish` says the emulation computes what Fish computes.
``benchmarks/fish_overhead.py`` prints and plots it.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn

from runkit.bench import timing

from .fish import Fish
from .losses import check_finite, cross_entropy_loss
from .nets import SpriteCNN

MODELS = ("cnn", "resnet18")
DEFAULT_BATCH = {"cnn": 32, "resnet18": 16}
TARGET_OVERHEAD = 0.05
VARIANTS = ("floor", "fish", "deepcopy-fish")
#: the inner optimizers' keyword arguments
INNER_OPTIMIZERS = {"adam": {"lr": 1e-3}, "sgd": {"lr": 1e-2}}
#: what :func:`measure_fish_overhead` measures, in words (for a result file's settings)
SETTINGS_NOTES = {"fish_options": "Fish defaults (shuffle_domains=True, step_size='domainbed', "
                                  "buffers='interpolate', reset_inner_optimizer=False)",
                  "interleaving": "ABC/CBA alternating per repetition"}
FISH_KEYS = ("copy-in", "meta-step", "finite check (once per step)", "domain order + train()")


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """``"cnn"``: :class:`gradmatch.nets.SpriteCNN`; ``"resnet18"``: torchvision's, random init."""
    if name == "cnn":
        return SpriteCNN(num_classes=num_classes, in_channels=3, image_size=image_size)
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def optimizer_factory(name: str) -> Callable:
    """``params -> optimizer``: Adam(lr=1e-3) or plain SGD(lr=1e-2) (:data:`INNER_OPTIMIZERS`)."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {tuple(INNER_OPTIMIZERS)}")
    return functools.partial({"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name], **INNER_OPTIMIZERS[name])


class Floor:
    """S plain forward/backward + optimizer steps on one model: the compute Fish cannot avoid."""

    def __init__(self, model: nn.Module, make_opt: Callable, loss_fn=cross_entropy_loss):
        self.model = model
        self.optimizer = make_opt(model.parameters())
        self.loss_fn = loss_fn

    def step(self, batches) -> float:
        """One update; the mean loss (a host sync, as Fish's)."""
        losses = []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model, batch)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).mean().item()


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
        self.model.load_state_dict({k: meta[k] + self.meta_lr * (inner_sd[k] - meta[k]) for k in meta})

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


def fish_pieces(fish: Fish, loss: torch.Tensor, num_domains: int) -> Dict[str, Callable]:
    """Fish's bookkeeping, written op for op as in ``Fish._fish_step``, for isolated timing."""
    meta_params, inner_params = list(fish.model.parameters()), list(fish.inner.parameters())
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

    return dict(zip(FISH_KEYS, (copy_in, meta_step, finite_check, order_and_mode)))


def deepcopy_pieces(runner: DeepcopyFish) -> Dict[str, Callable]:
    """The deepcopy emulation's extra work: the new network + optimizer, the state_dict step."""
    inner, _ = runner.create_clone()
    # meta_update(inner) would move the meta weights towards ``inner``; harmless for timing.
    return {"deepcopy + new optimizer": lambda: runner.create_clone(),
            "state_dict meta step": lambda: runner.meta_update(inner)}


def make_batches(num_domains: int, batch: int, image_size: int, num_classes: int, seed: int, device):
    """``num_domains`` random ``(x, y)`` batches: ``x`` (batch, 3, image_size, image_size)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, image_size, image_size, generator=g).to(device),
             torch.randint(0, num_classes, (batch,), generator=g).to(device)) for _ in range(num_domains)]


def check_deepcopy_matches_fish(optimizer: str = "adam", device="cpu", num_domains: int = 3,
                                steps: int = 2) -> float:
    """Max |difference| of the weights after ``steps`` steps of Fish (fixed domain order) vs the
    deepcopy emulation, from the same start on the same batches (float rounding: ~1e-7)."""
    device = torch.device(device)
    make_opt = optimizer_factory(optimizer)
    torch.manual_seed(0)
    base = build_model("cnn", 10, 32).to(device)
    batches = make_batches(num_domains, 8, 32, 10, 1, device)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    fish, ref = Fish(a, make_opt, 0.5, shuffle_domains=False), DeepcopyFish(b, make_opt, 0.5)
    for _ in range(steps):
        fish.step(batches)
        ref.step(batches)
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def measure_fish_overhead(model: str = "cnn", *, device="cpu", domains: int = 3, batch: Optional[int] = None,
                          image_size: int = 64, num_classes: int = 10, optimizer: str = "adam",
                          meta_lr: float = 0.5, steps: int = 50, warmup: int = 3, piece_samples: int = 30,
                          piece_ms: float = 5.0, deepcopy: bool = True, seed: int = 0,
                          time_cap_s: Optional[float] = None, log: Callable[[str], None] = None) -> dict:
    """Time ``floor``, ``fish`` and (``deepcopy``) ``deepcopy-fish`` on ``model``, then Fish's
    bookkeeping pieces alone.

    ``steps`` timed updates per variant after ``warmup`` (interleaved); ``piece_samples``
    samples per piece, each >= ``piece_ms`` ms of back-to-back calls. ``time_cap_s``: stop
    repeating once this many seconds have passed (at least one timed update and one sample per
    piece); ``capped`` in the result says whether it cut anything. ``log``: progress lines.

    Returns (times in ms): ``steps`` (per variant: median/quartiles/IQR/min ms, ``n``, CPU time,
    page faults, ``ratio_vs_floor``, ``overhead_pct``, ``paired_ratio_*``), ``pieces`` (ms per
    call, ``pct_of_floor``), ``fish_bookkeeping_ms``, ``overhead_pct`` (Fish over the floor, %),
    ``below_target``, the raw samples, ``capped``, ``seconds``.
    """
    log = log or (lambda line: None)
    device = torch.device(device)
    sync = timing.make_sync(device)
    deadline = timing.Deadline(time_cap_s)
    batch = DEFAULT_BATCH[model] if batch is None else batch
    make_opt = optimizer_factory(optimizer)
    torch.manual_seed(seed)
    base = build_model(model, num_classes, image_size).to(device).train()
    n_params = sum(p.numel() for p in base.parameters())
    batches = make_batches(domains, batch, image_size, num_classes, seed + 1, device)
    floor = Floor(copy.deepcopy(base), make_opt)
    fish = Fish(copy.deepcopy(base), make_opt, meta_lr)
    dc = DeepcopyFish(copy.deepcopy(base), make_opt, meta_lr)
    fns = {"floor": lambda: floor.step(batches), "fish": lambda: fish.step(batches)["loss"]}
    if deepcopy:
        fns["deepcopy-fish"] = lambda: dc.step(batches)
    log(f"[{model}] {n_params / 1e6:.2f}M params, {domains} x batch {batch}, {image_size}px: "
        f"{warmup} warm-up + {steps} timed steps per variant ...")
    run = timing.interleaved(fns, sync, reps=steps, warmup=warmup, deadline=deadline)
    t_steps = deadline.elapsed()
    samples = run["samples"]
    stats = {}
    for v, rec in samples.items():
        s = timing.summarize(rec["s"], scale=1e3)
        s.update(minor_faults_median=timing.median(rec["minor_faults"]),
                 user_cpu_ms_median=1e3 * timing.median(rec["user_s"]),
                 sys_cpu_ms_median=1e3 * timing.median(rec["sys_s"]), cpu_per_wall_median=timing.cpu_per_wall(rec))
        stats[v] = s
    floor_ms = stats["floor"]["median_ms"]
    for v, s in stats.items():
        s["ratio_vs_floor"] = s["median_ms"] / floor_ms
        s["overhead_pct"] = 100.0 * (s["ratio_vs_floor"] - 1.0)
        q = timing.paired_ratio(samples[v]["s"], samples["floor"]["s"])
        s.update(paired_ratio_median=q["paired_median"], paired_ratio_q25=q["paired_q25"],
                 paired_ratio_q75=q["paired_q75"])

    piece_fns = fish_pieces(fish, torch.tensor(1.0, device=device), domains)
    if deepcopy:
        piece_fns.update(deepcopy_pieces(dc))
    pieces = timing.time_pieces(piece_fns, sync, piece_samples, piece_ms / 1e3, warmup=1, deadline=deadline)
    for s in pieces.values():
        s["pct_of_floor"] = 100.0 * s["median_ms"] / floor_ms
    bookkeeping_ms = sum(pieces[k]["median_ms"] for k in FISH_KEYS)
    extra = {}
    if deepcopy:
        dc_ms = sum(s["median_ms"] for k, s in pieces.items() if k not in FISH_KEYS)
        extra = {"deepcopy_pieces_ms": dc_ms,
                 "unexplained_deepcopy_minus_floor_ms": stats["deepcopy-fish"]["median_ms"] - floor_ms - dc_ms}
    capped = run["capped"] or any(s["n"] < piece_samples for s in pieces.values())
    log(f"[{model}] done in {deadline.elapsed():.0f} s (steps {t_steps:.0f} s)" + (" [time cap]" if capped else ""))
    return {
        "model": model, "implementation": "gradmatch.nets.SpriteCNN" if model == "cnn" else "torchvision resnet18",
        "params": n_params, "batch_per_domain": batch, "domains": domains, "image_size": image_size,
        "optimizer": optimizer, "meta_lr": meta_lr, "warmup": warmup, "steps_asked": steps,
        "steps": stats, "pieces": pieces,
        "fish_bookkeeping_ms": bookkeeping_ms,
        "fish_bookkeeping_pct_of_floor": 100.0 * bookkeeping_ms / floor_ms,
        "unexplained_fish_minus_floor_ms": stats["fish"]["median_ms"] - floor_ms - bookkeeping_ms,
        "overhead_pct": stats["fish"]["overhead_pct"],
        "below_target": stats["fish"]["overhead_pct"] < 100 * TARGET_OVERHEAD,
        **extra,
        "raw_step_ms": {v: [1e3 * s for s in rec["s"]] for v, rec in samples.items()},
        "raw_step_minor_faults": {v: [int(x) for x in rec["minor_faults"]] for v, rec in samples.items()},
        "time_cap_s": time_cap_s, "capped": capped,
        "seconds": {"steps": t_steps, "total": deadline.elapsed()},
    }


def cdsprites_train_argv(out, *, algorithm: str = "fish", num_domains: int, image_size: int, batch_size: int,
                         steps: int, accelerator: str = "cpu", devices: int = 1, precision: str = "32-true",
                         threads: int = 1, per_domain: int, num_eval: int, every: Optional[int] = None) -> list:
    """``python -m gradmatch.cli train`` on CdSprites-N (``per_domain`` training images per domain,
    ``num_eval`` in each evaluation split), logging every step; with ``every``, evaluating and
    checkpointing every that many steps, else neither."""
    data = {"num_domains": num_domains, "image_size": image_size, "per_domain": per_domain,
            "num_val": num_eval, "num_test": num_eval, "num_id_val": num_eval}
    return [sys.executable, "-m", "gradmatch.cli", "train", "--dataset", "cdsprites",
            "--dataset-kwargs", json.dumps(data), "--algorithm", algorithm,
            "--out", str(out), "--batch-size", str(batch_size),
            "--max-steps", str(steps), "--log-every", "1", "--eval-every", str(every or 0),
            "--checkpoint-every", str(every or 10 ** 6), "--no-progress",
            "--accelerator", accelerator, "--devices", str(devices),
            "--precision", precision, "--threads", str(threads)]


def time_gradmatch_train(*, algorithm: str = "fish", accelerator: str = "cpu", devices: int = 1,
                         precision: str = "32-true", num_domains: int = 6, image_size: int = 64,
                         batch_size: int = 32, steps: int = 60, warmup: int = 10, threads: int = 1,
                         timeout_s: Optional[float] = None) -> dict:
    """The shipped command (``python -m gradmatch.cli train``) on CdSprites-N in a fresh folder:
    the median of the logged ``sec_per_step`` (process 0) after ``warmup`` steps, in ms.

    Returns ``ms_per_step``, ``ms_per_step_iqr``, ``examples_per_s``, the first and last loss,
    ``wall_s`` (start-up included) and ``timed_steps``; ``{"error": ...}`` when the run fails or
    outlasts ``timeout_s`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = cdsprites_train_argv(out, algorithm=algorithm, num_domains=num_domains, image_size=image_size,
                                       batch_size=batch_size, steps=steps, accelerator=accelerator,
                                       devices=devices, precision=precision, threads=threads,
                                       per_domain=max(256, 2 * batch_size), num_eval=64)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONWARNINGS": "ignore"}
        start = time.perf_counter()
        try:
            run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout_s:g} s", "precision": precision}
        wall = time.perf_counter() - start
        if run.returncode != 0:
            return {"error": f"exit {run.returncode}: {(run.stderr.strip().splitlines() or ['-'])[-1]}",
                    "precision": precision}
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    stats = timing.summarize([r["sec_per_step"] for r in train[warmup:]], scale=1e3)
    examples = batch_size * (num_domains if algorithm == "fish" else 1)
    return {"algorithm": algorithm, "devices": devices, "precision": precision,
            "ms_per_step": stats["median_ms"], "ms_per_step_iqr": stats["iqr_ms"],
            "examples_per_s": 1e3 * examples / stats["median_ms"], "first_loss": train[0]["loss"],
            "last_loss": train[-1]["loss"], "wall_s": wall, "timed_steps": stats["n"]}
