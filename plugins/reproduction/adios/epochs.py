"""``gradmatch reproduce adios --scale cpu-epochs``: the gap between ADIOS and SimCLR against epochs.

SimCLR, SimCLR+ADIOS and SimCLR+ADIOS-s pretrain for 10 epochs at 32 px on the train part of
the cpu scale's PACS split, one seed, each with the cpu scale's config (``cpu_simclr_adios``)
unchanged: the arms differ only in ``method`` / ``method_kwargs.single_mask``. The checkpoints
after epochs 2, 5 and 10 are kept and probed with the cpu scale's frozen-feature probes, so
each arm gives three points of one run (a 10-epoch cosine schedule probed on the way, not
three runs of 2, 5 and 10 epochs).

Resumable: a pretraining that dies resumes from its latest epoch's checkpoint
(:func:`reproduction.adios.solo_job.keep_epochs_args`); finished jobs are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..jobs import Job, Report, python_module
from .arms import ADIOS_S, DATASET, FLOOR, KNN_METRIC, LINEAR_METRIC, THREADS, arm_by_key, fmt, read_json, solo_command
from .cpu import pretrain_args
from .pacs import IMAGE_CACHE, data_jobs

SCALE = "cpu-epochs"
BASELINE = "simclr"


@dataclass(frozen=True)
class EpochSettings:
    """What the cpu-epochs scale runs; every arm gets all of it."""

    epochs: int = 10
    probe_epochs: Tuple[int, ...] = (2, 5, 10)
    crop: int = 32
    batch: int = 32
    seed: int = 0
    test_fraction: float = 0.2
    split_seed: int = 0
    max_per_group: Optional[int] = None
    arms: Tuple[str, ...] = ("simclr", "adios", ADIOS_S.key)
    extra: Tuple[str, ...] = ()
    #: CPU-seconds per step (batch 32, 32 px, one thread): the cpu scale's measurements; ADIOS-s
    #: is assumed between SimCLR and ADIOS (one masked view instead of N=4)
    step_seconds: Dict[str, float] = field(default_factory=lambda: {
        "adios": 1.2, "simclr": 0.55, ADIOS_S.key: 0.8})
    train_images: int = 7993


EPOCHS = EpochSettings()


def probe_name(arm: str, epoch: int) -> str:
    return f"{arm}_ep{epoch}"


def epochs_jobs(out: Path, settings: EpochSettings = EPOCHS, data_dir: Optional[str] = None) -> List[Job]:
    """The split, the random-init floor, one pretraining per arm keeping the checkpoints of
    ``settings.probe_epochs``, and a probe of each kept checkpoint."""
    bad = [e for e in settings.probe_epochs if not 1 <= e <= settings.epochs]
    if bad or settings.epochs not in settings.probe_epochs:
        raise ValueError(f"probe epochs {settings.probe_epochs} must lie in 1..{settings.epochs} "
                         "and include the last")
    out = Path(out).resolve()
    jobs = data_jobs(out, settings, data_dir)
    steps = settings.epochs * (settings.train_images // settings.batch)
    probes = []
    for key in settings.arms:
        arm = arm_by_key(key)
        folder = f"arms/{key}"
        args = pretrain_args(out, key, arm, settings.seed, settings.epochs, settings)
        jobs.append(Job(f"pretrain/{key}", solo_command("pretrain", "pretrain.json", args, "final.ckpt",
                                                 settings.probe_epochs),
                        done=f"{folder}/pretrain.json", cwd=folder, env=THREADS, after=("split",),
                        minutes=round(0.25 + steps * settings.step_seconds.get(key, 1.0) / 60, 1)))
        for epoch in settings.probe_epochs:
            name = probe_name(key, epoch)
            probe_args = ["--data", "data", "--ckpt", f"{folder}/epoch{epoch}.ckpt", "--out",
                          f"probes/{name}.json", "--image-cache", IMAGE_CACHE, "--label",
                          f"{arm.label}, epoch {epoch}"]
            if arm.masks and epoch == settings.epochs:
                probe_args += ["--masks", f"masks_{key}_test.png"]
            probes.append(Job(f"probe/{name}", python_module("adios_ssl.probe", *probe_args),
                              done=f"probes/{name}.json", env=THREADS, after=(f"pretrain/{key}",),
                              minutes=0.5))
    return jobs + probes


def epochs_report(out: Path, settings: EpochSettings = EPOCHS) -> Report:
    """Probe accuracy of each arm after each probed epoch, the gap of each arm to SimCLR, the
    random-init floor, CPU time, a plot against epochs and the mask pictures."""
    out = Path(out)
    manifest = read_json(out / "reproduce.json") or {}
    names = [j.split("/", 1)[1] for j in manifest.get("jobs", []) if j.startswith("pretrain/")]
    arms = names or list(settings.arms)
    probe_jobs = [j.split("/", 1)[1] for j in manifest.get("jobs", []) if j.startswith("probe/")]
    epochs = sorted({int(n.rsplit("_ep", 1)[1]) for n in probe_jobs if "_ep" in n}) or list(
        settings.probe_epochs)
    floor = read_json(out / "probes" / f"{FLOOR.key}.json")
    rows, missing = [], []
    pretrains = {key: read_json(out / "arms" / key / "pretrain.json") for key in arms}
    for key in arms:
        arm = arm_by_key(key)
        pre = pretrains[key]
        for epoch in epochs:
            probe = read_json(out / "probes" / f"{probe_name(key, epoch)}.json")
            if probe is None:
                missing.append(probe_name(key, epoch))
                continue
            rows.append({"arm": arm.label, "key": key, "epoch": epoch,
                         "linear": probe["linear"]["overall"], "knn": probe["knn"]["overall"],
                         "linear_per_domain": probe["linear"]["per_domain"],
                         "knn_per_domain": probe["knn"]["per_domain"],
                         "n_test": probe["n_test"], "n_train": probe["n_train"], "size": probe["size"],
                         "pretrain_epochs": None if pre is None else pre.get("epochs"),
                         "pretrain_cpu_min": None if pre is None else pre["cpu_s"] / 60,
                         "pretrain_wall_min": None if pre is None else pre["wall_s"] / 60})
    by = {(r["key"], r["epoch"]): r for r in rows}
    for r in rows:
        base = by.get((BASELINE, r["epoch"]))
        for k in ("linear", "knn"):
            r[f"{k}_gap"] = None if base is None or r["key"] == BASELINE else r[k] - base[k]

    lines = [f"Frozen-feature probes on held-out PACS images after each probed epoch of one "
             f"{settings.epochs}-epoch run per arm (test top-1 %, 4 domains pooled; gap = arm "
             "minus SimCLR at the same epoch, in points; one pretraining seed).", ""]
    head = ["arm"] + [f"epoch {e}: linear (gap)" for e in epochs] + [f"epoch {e}: k-NN (gap)" for e in epochs]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in arms:
        cells = []
        for k in ("linear", "knn"):
            for e in epochs:
                r = by.get((key, e))
                cells.append("-" if r is None else fmt(r[k]) + (
                    "" if r[f"{k}_gap"] is None else f" ({r[f'{k}_gap']:+.1f})"))
        lines.append("| " + " | ".join([arm_by_key(key).label] + cells) + " |")
    if floor:
        lines.append("| " + " | ".join([FLOOR.label] + [fmt(floor["linear"]["overall"])] * len(epochs)
                                        + [fmt(floor["knn"]["overall"])] * len(epochs)) + " |")
    lines += ["", "Pretraining cost (whole run, all epochs):", "",
              "| arm | epochs | CPU-min | wall-min |", "|---|---|---|---|"]
    for key, pre in pretrains.items():
        lines.append(f"| {arm_by_key(key).label} | {'-' if pre is None else pre.get('epochs')} | "
                     f"{'-' if pre is None else fmt(pre['cpu_s'] / 60)} | "
                     f"{'-' if pre is None else fmt(pre['wall_s'] / 60)} |")
    if rows:
        n_test = rows[0]["n_test"]
        se = 100 * math.sqrt(0.25 / n_test)
        lines += ["", f"Every arm: solo-learn `main_pretrain.py --config-name cpu_simclr_adios` with "
                  f"`max_epochs={settings.epochs}` `augmentations.0.crop_size={rows[0]['size']}` "
                  f"`optimizer.batch_size={settings.batch}` `++seed={settings.seed}` (the cpu scale's "
                  "recipe, nothing tuned for this schedule); SimCLR adds `method=simclr`, ADIOS-s "
                  "adds `++method_kwargs.single_mask=true`. Warm-up and cosine decay span the "
                  f"{settings.epochs} epochs, so epoch 2 is probed at a high learning rate. With "
                  f"{n_test} test images one accuracy has a binomial standard error of up to "
                  f"{se:.1f} points. One pretraining seed: the spread between seeds is not measured "
                  "here (the cpu scale's report has two seeds of each arm at 2 epochs)."]
    if missing:
        lines += ["", f"Not finished (no probe result): {', '.join(missing)}."]
    figures = []
    plot = _epoch_plot(out, rows, floor, epochs)
    if plot:
        figures.append(plot)
    pictures = []
    for key in arms:
        if (out / f"masks_{key}_test.png").exists():
            pictures.append((f"masks_{key}_test.png",
                             f"{key}: masks on held-out test images after epoch {max(epochs)}, 2 per domain"))
    figures += [p for p, _ in pictures]
    if pictures:
        lines += ["", "Mask pictures (bright = hidden):"] + [f"- `{p}`: {why}" for p, why in pictures]
    last = max(epochs)
    compare = {(DATASET, f"{r['arm']} ({last} epochs)", metric): r[k] for r in rows if r["epoch"] == last
               for k, metric in (("linear", LINEAR_METRIC), ("knn", KNN_METRIC))}
    data = {"experiment": "adios", "scale": SCALE, "dataset": DATASET, "epochs": epochs,
            "rows": rows, "missing": missing, "baseline": BASELINE,
            "floor": None if floor is None else {"linear": floor["linear"]["overall"],
                                                 "knn": floor["knn"]["overall"]}}
    return Report(markdown="\n".join(lines), data=data, figures=figures, compare=compare)


def _epoch_plot(out: Path, rows: List[dict], floor: Optional[dict], epochs: List[int]) -> Optional[str]:
    if not rows:
        return None
    from runkit.bench.plot import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, title in zip(axes, ("linear", "knn"), ("linear probe", "k-NN probe (k=20)")):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            points = sorted((r["epoch"], r[key]) for r in rows if r["arm"] == arm)
            ax.plot([e for e, _ in points], [v for _, v in points], "o-", label=arm)
        if floor:
            ax.axhline(floor[key]["overall"], color="grey", ls="--", lw=1, label=FLOOR.label)
        ax.set_xticks(epochs)
        ax.set_xlabel("pretraining epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 % (PACS, 4 domains)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("ADIOS vs SimCLR against epochs (32 px, one seed)", fontsize=10)
    fig.tight_layout()
    name = "adios_epochs.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
