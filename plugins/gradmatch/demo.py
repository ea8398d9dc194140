"""``gradmatch demo``: ERM vs Fish on CdSprites-N with equal budgets, on a CPU in minutes.

Each seed trains ERM and Fish through the WILDS runner (``gradmatch.wilds.runner``) on the
same generated dataset and the same CNN. Budgets are equal in examples and in gradient
evaluations: Fish takes ``steps`` meta-steps of N domains x ``batch_size``; ERM takes
``N * steps`` steps of ``batch_size`` pooled examples. Fish's inner optimizer, its step size and
the meta step ``eps = meta_lr`` come from one entry of :data:`RECIPES`. ERM uses its official
CdSprites optimizer, Adam (amsgrad) at lr 1e-3. Models are selected on the colour-shuffled
``val`` split and scored on ``test``.

The output folder is resumable: finished runs are reused, interrupted ones resumed. A run that
fails (a non-finite loss, or any other error) is recorded in its folder's ``failed.json`` and
reported as failed; the other runs go on and are summarised.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from runkit.paths import check_out_folder

from .wilds.run_config import RunConfig

ALGORITHMS = ("erm", "fish")
ERM_LR = 1e-3
FAILED = "failed.json"
CONFIG = "demo_config.json"   # the demo's settings, written first: marks a demo folder
#: fewest training domains: Fish and the colour/shape contrast need at least two
MIN_DOMAINS = 2


@dataclass(frozen=True)
class Recipe:
    """Fish's inner optimizer for the demo: ``optimizer`` (a key of ``gradmatch.optim.OPTIMIZERS``)
    at ``inner_lr``, the meta step ``eps = meta_lr``, how long the inner optimizer keeps its state
    (``"step"``: Algorithm 1; ``"run"``: DomainBed's)."""

    optimizer: str
    inner_lr: float
    meta_lr: float
    inner_optimizer_state: str = "step"
    note: str = ""


#: the candidates measured by ``benchmarks/demo_stability.py``; DEFAULT_RECIPE is the demo's
RECIPES: Dict[str, Recipe] = {
    "sgd-small": Recipe("sgd", 0.2, 0.5, note="Algorithm 1 as written (plain SGD inner steps), "
                        "alpha = 0.2: the demo's default (benchmarks/demo_stability.py)"),
    "sgd": Recipe("sgd", 0.3, 0.5, note="alpha = 0.3: the demo's default until it diverged (NaN) on "
                  "seed 5 in issue 10"),
    "adam": Recipe("adam", 1e-3, 0.5, inner_optimizer_state="run",
                   note="Adam inner steps, state kept over the run (DomainBed's Fish)"),
}
DEFAULT_RECIPE = "sgd-small"


def get_recipe(name: str, inner_lr: Optional[float] = None, meta_lr: Optional[float] = None) -> Recipe:
    """The recipe ``name``, with ``inner_lr`` / ``meta_lr`` replaced where given."""
    if name not in RECIPES:
        raise ValueError(f"--recipe {name!r} is not a demo recipe; choose one of {', '.join(RECIPES)}")
    changes = {k: v for k, v in (("inner_lr", inner_lr), ("meta_lr", meta_lr)) if v is not None}
    return dataclasses.replace(RECIPES[name], **changes)


def _check_int(flag: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")


def _check_rate(flag: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag} must be a positive finite number, got {value!r} "
                         f"(leave it out for the recipe's)")


def demo_settings(seeds: int, steps: int, num_domains: int, batch_size: int, recipe: str = DEFAULT_RECIPE,
                  inner_lr: Optional[float] = None, meta_lr: Optional[float] = None) -> dict:
    """The settings of a demo (``demo_config.json``); ValueError naming the one flag that is out
    of range (seeds, steps, batch size >= 1; N >= :data:`MIN_DOMAINS`; step sizes > 0, finite)."""
    _check_int("--seeds", seeds, 1)
    _check_int("--steps", steps, 1)
    _check_int("--num-domains", num_domains, MIN_DOMAINS)
    _check_int("--batch-size", batch_size, 1)
    if recipe not in RECIPES:
        raise ValueError(f"--recipe {recipe!r} is not a demo recipe; choose one of {', '.join(RECIPES)}")
    _check_rate("--meta-lr", meta_lr)
    _check_rate("--inner-lr", inner_lr)
    fish = get_recipe(recipe, inner_lr, meta_lr)
    fish_settings = {k: v for k, v in dataclasses.asdict(fish).items() if k != "note"}
    return {"dataset": "cdsprites", "num_domains": num_domains, "seeds": seeds,
            "fish_steps": steps, "erm_steps": steps * num_domains, "batch_size": batch_size,
            "fish": {"recipe": recipe, **fish_settings, "eps": fish.meta_lr},
            "erm": {"optimizer": "adam", "amsgrad": True, "lr": ERM_LR},
            "examples_per_run": steps * num_domains * batch_size}


def check_args(out, seeds: int = 3, steps: int = 450, num_domains: int = 15, batch_size: int = 32,
               recipe: str = DEFAULT_RECIPE, meta_lr: Optional[float] = None, inner_lr: Optional[float] = None,
               jobs: int = 1, threads: Optional[int] = 1) -> dict:
    """Every check of ``gradmatch demo``, before anything is written or trained; returns the
    settings (:func:`demo_settings`). ValueError, one line naming the flag and the fix: a value
    out of range, ``--jobs`` / ``--threads`` < 1, an ``--out`` that is a file, under a file, not
    writable, a non-empty folder that holds no demo, or a demo of other settings."""
    settings = demo_settings(seeds, steps, num_domains, batch_size, recipe, inner_lr, meta_lr)
    _check_int("--jobs", jobs, 1)
    if threads is not None:
        _check_int("--threads", threads, 1)
    out = check_out_folder(out)
    saved = out / CONFIG
    if saved.exists():
        try:
            before = json.loads(saved.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"--out {out}: {saved} is not valid JSON ({err}); choose another --out") from None
        if before != settings:
            key = next((k for k in settings if not isinstance(before, dict) or before.get(k) != settings[k]),
                       "settings")
            there = before.get(key) if isinstance(before, dict) else before
            raise ValueError(f"--out {out} holds a demo with other settings ({key}: {there!r} there, "
                             f"{settings[key]!r} now, in {saved}); rerun with its settings or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty and holds no demo ({CONFIG}); choose another --out "
                         "(nothing is overwritten)")
    return settings


def run_config(out: Path, algorithm: str, seed: int, settings: dict, progress: bool) -> RunConfig:
    """The runner configuration of one demo run."""
    n, steps = settings["num_domains"], settings["fish_steps"]
    scale = 1 if algorithm == "fish" else n  # ERM steps per Fish step at equal budget
    eval_every = max(1, steps // 6) * scale
    fish = settings["fish"]
    if algorithm == "fish":
        optimizer = dict(optimizer=fish["optimizer"], lr=fish["inner_lr"],
                         inner_optimizer_state=fish["inner_optimizer_state"])
        if fish["optimizer"] == "sgd":
            optimizer["momentum"] = 0.0
    else:
        optimizer = dict(optimizer="adam", lr=settings["erm"]["lr"])
    return RunConfig(
        dataset="cdsprites", out_dir=str(out / f"{algorithm}_seed{seed}"), algorithm=algorithm,
        seed=seed, batch_size=settings["batch_size"], meta_lr=fish["meta_lr"], **optimizer,
        step_size="domainbed", max_steps=steps * scale, eval_every=eval_every,
        checkpoint_every=eval_every, gip_every=max(1, steps // 12) if algorithm == "fish" else 0,
        eval_splits=["val", "test"], progress=progress, dataset_kwargs={"num_domains": n},
    )


def run_demo(out: str, seeds: int = 3, steps: int = 450, num_domains: int = 15, batch_size: int = 32,
             recipe: str = DEFAULT_RECIPE, meta_lr: Optional[float] = None, inner_lr: Optional[float] = None,
             jobs: int = 1, progress: bool = True) -> dict:
    """Train (or reuse) every run, then write ``summary.json``, ``demo.png``; returns the summary.

    ``jobs`` > 1 trains that many runs at once in worker processes (one torch thread each).
    A failed run does not stop the others: see :func:`train_all`. Bad arguments raise
    ValueError before anything is written (:func:`check_args`).
    """
    out = Path(out)
    settings = check_args(out, seeds, steps, num_domains, batch_size, recipe, meta_lr, inner_lr, jobs, None)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(settings, indent=2))

    configs = [run_config(out, algorithm, seed, settings, progress and jobs == 1)
               for seed in range(seeds) for algorithm in ALGORITHMS]
    train_all(configs, jobs, progress)

    runs: Dict[str, List[dict]] = {a: [] for a in ALGORITHMS}
    for cfg in configs:
        runs[cfg.algorithm].append(collect_run(cfg, settings))
    summary = summarise(runs, settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_demo(runs, summary, out / "demo.png")
    return summary


def train_all(configs: List[RunConfig], jobs: int = 1, progress: bool = True) -> List[Optional[str]]:
    """Train (or reuse) every run, ``jobs`` at a time; returns each run's error (``None`` if it
    finished). A run that raises is recorded in its ``failed.json`` and the others go on;
    Ctrl-C still stops everything (checkpoints are kept)."""
    if jobs > 1:
        import multiprocessing

        from tqdm.auto import tqdm

        errors = {}
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread) as pool, \
                tqdm(total=len(configs), desc="demo runs", disable=not progress) as bar:
            for cfg, error in pool.imap_unordered(_train_or_reuse, configs):
                errors[cfg.out_dir] = error
                bar.update(1)
                bar.write(f"{'FAILED' if error else 'finished'} {Path(cfg.out_dir).name}"
                          + (f": {error.splitlines()[0]}" if error else ""))
        return [errors[cfg.out_dir] for cfg in configs]
    return [_train_or_reuse(cfg)[1] for cfg in configs]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train_or_reuse(cfg: RunConfig):
    """Train the run unless it finished or failed before; resume it if it was interrupted.
    Returns ``(cfg, error)``: ``error`` is ``None`` or the first line of the failure, also kept in
    the run's ``failed.json`` (a failed run is deterministic, so it is not retried)."""
    run_dir = Path(cfg.out_dir)
    if (run_dir / FAILED).exists():
        return cfg, json.loads((run_dir / FAILED).read_text())["error"]
    if (run_dir / "summary.json").exists():
        return cfg, None
    try:
        from .wilds.runner import train  # torch: imported when a run starts

        train(cfg, resume=(run_dir / "checkpoint.pt").exists())
    except Exception as err:  # noqa: BLE001 -- one run's failure must not stop the others
        error = f"{type(err).__name__}: {err}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILED).write_text(json.dumps({"error": error, "traceback": traceback.format_exc()}, indent=2))
        return cfg, error
    return cfg, None


def collect_run(cfg: RunConfig, settings: dict) -> dict:
    """``{"seed", "failed": error or None, "summary", "curve"}`` of one trained or failed run."""
    run_dir = Path(cfg.out_dir)
    if (run_dir / FAILED).exists():
        return {"seed": cfg.seed, "failed": json.loads((run_dir / FAILED).read_text())["error"]}
    return {"seed": cfg.seed, "failed": None, "summary": json.loads((run_dir / "summary.json").read_text()),
            "curve": _test_curve(run_dir, cfg.algorithm, settings)}


def summarise(runs: Dict[str, List[dict]], settings: dict) -> dict:
    """``{"erm": {"test_acc", ...}, "fish": {...}, "settings", "fish_minus_erm_points"}`` (acc in [0, 1]).

    Statistics cover the finished runs; ``finished`` / ``runs`` count them and ``failed`` lists
    the others (``{"seed", "error"}``). With no finished run an algorithm's numbers are ``None``.
    """
    summary = {"settings": settings}
    for algorithm, items in runs.items():
        done = [r for r in items if not r["failed"]]
        entry = {"runs": len(items), "finished": len(done),
                 "failed": [{"seed": r["seed"], "error": r["failed"]} for r in items if r["failed"]]}
        if done:
            test = [r["summary"]["metrics"]["test"] for r in done]
            acc = [t["acc_avg"] for t in test]
            entry.update({
                "test_acc": float(np.mean(acc)), "test_acc_std": float(np.std(acc)),
                "test_acc_per_seed": {r["seed"]: a for r, a in zip(done, acc)},
                "test_acc_colour_aligned": float(np.mean([t["acc_color_swap:aligned"] for t in test])),
                "test_acc_colour_swapped": float(np.mean([t["acc_color_swap:swapped"] for t in test])),
                "final_test_acc": float(np.mean([r["curve"][-1][1] for r in done])),
                "selected_step": [r["summary"]["selected_step"] for r in done],
            })
        else:
            entry.update(dict.fromkeys(("test_acc", "test_acc_std", "test_acc_colour_aligned",
                                        "test_acc_colour_swapped", "final_test_acc")))
        summary[algorithm] = entry
    both = summary["fish"]["test_acc"] is not None and summary["erm"]["test_acc"] is not None
    summary["fish_minus_erm_points"] = (100 * (summary["fish"]["test_acc"] - summary["erm"]["test_acc"])
                                        if both else None)
    return summary


def format_table(summary: dict) -> str:
    s = summary["settings"]
    f = s["fish"]
    lines = [f"CdSprites-N, N={s['num_domains']}, {s['seeds']} seed(s), equal budgets of "
             f"{s['examples_per_run']:,} training examples (model selected on colour-shuffled val)",
             f"Fish recipe {f['recipe']!r}: inner {f['optimizer']} lr {f['inner_lr']:g}, eps {f['meta_lr']:g}",
             f"{'algorithm':<10}{'test acc %':>16}{'colour-aligned %':>18}{'colour-swapped %':>18}"
             f"{'final test %':>14}{'finished':>10}"]
    for algorithm in ALGORITHMS:
        r = summary[algorithm]
        count = f"{r['finished']}/{r['runs']}"
        if r["test_acc"] is None:
            lines.append(f"{algorithm.upper():<10}{'-':>16}{'-':>18}{'-':>18}{'-':>14}{count:>10}")
            continue
        lines.append(f"{algorithm.upper():<10}{100 * r['test_acc']:>10.1f} ± {100 * r['test_acc_std']:<4.1f}"
                     f"{100 * r['test_acc_colour_aligned']:>18.1f}{100 * r['test_acc_colour_swapped']:>18.1f}"
                     f"{100 * r['final_test_acc']:>14.1f}{count:>10}")
    if summary["fish_minus_erm_points"] is not None:
        lines.append(f"Fish - ERM: {summary['fish_minus_erm_points']:+.1f} points of test accuracy"
                     + (" (finished runs only)" if any(summary[a]["failed"] for a in ALGORITHMS) else ""))
    for algorithm in ALGORITHMS:
        for fail in summary[algorithm]["failed"]:
            lines.append(f"FAILED: {algorithm} seed {fail['seed']}: {fail['error'].splitlines()[0]}")
    return "\n".join(lines)


def test_curve(run_dir: Path) -> List[List[float]]:
    """``[[step, test acc_avg], ...]`` from a run's ``log.jsonl``, by step (the last record of a
    step wins: a resumed run may have evaluated it twice)."""
    curve = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "eval" and record["split"] == "test":
            curve[record["step"]] = record["metrics"]["acc_avg"]
    return [[k, v] for k, v in sorted(curve.items())]


def _test_curve(run_dir: Path, algorithm: str, settings: dict) -> List[List[float]]:
    """``[[examples_seen, test acc_avg], ...]`` of a demo run."""
    per_step = settings["batch_size"] * (settings["num_domains"] if algorithm == "fish" else 1)
    return [[step * per_step, acc] for step, acc in test_curve(run_dir)]


def accuracy_axes(ax, xlabel: str, title: str, chance_label: Optional[str] = "chance") -> None:
    """A test-accuracy (%) panel of the CdSprites plots: 0-102 %, the 50 % chance line."""
    ax.axhline(50, color="grey", ls="--", lw=1, label=chance_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title)


def plot_demo(runs: Dict[str, List[dict]], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"erm": "tab:blue", "fish": "tab:orange"}
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for algorithm, items in runs.items():
        items = [r for r in items if not r["failed"]]
        if not items:
            continue
        xs = np.array([p[0] for p in items[0]["curve"]])
        ys = np.array([[p[1] for p in r["curve"]][:len(xs)] for r in items]) * 100
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(xs, mean, marker="o", color=colours[algorithm], label=algorithm.upper())
        ax.fill_between(xs, mean - std, mean + std, color=colours[algorithm], alpha=0.2)
    accuracy_axes(ax, "training examples seen", "CdSprites-N test accuracy (colour uninformative)")
    ax.legend()
    width = 0.35
    for i, algorithm in enumerate(ALGORITHMS):
        r = summary[algorithm]
        if r["test_acc"] is None:
            continue
        vals = [100 * r["test_acc_colour_aligned"], 100 * r["test_acc_colour_swapped"]]
        pos = np.arange(2) + (i - 0.5) * width
        bars.bar(pos, vals, width, color=colours[algorithm], label=algorithm.upper())
        for x, v in zip(pos, vals):
            bars.text(x, v + 1, f"{v:.0f}", ha="center", fontsize=9)
    bars.set_xticks(range(2), ["colour as in training", "colour swapped"])
    bars.set_ylabel("test accuracy (%)")
    bars.set_ylim(0, 110)
    bars.set_title("selected model, by test colour")
    bars.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
