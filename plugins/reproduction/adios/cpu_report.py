"""The cpu scale's report: probe accuracies per arm and seed, per domain, the floor, the mask
pictures and a bar plot."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..jobs import Report
from .arms import (
    ARMS,
    CPU,
    CPU_CONFIG,
    DATASET,
    FLOOR,
    KNN_METRIC,
    LINEAR_METRIC,
    NAME,
    Arm,
    fmt,
    key_of,
    read_json,
    run_name,
    seed_of,
)


def _expected_runs(out: Path) -> List[str]:
    """The probe runs of this folder: from its manifest (``reproduce.json``) when there is
    one, else every arm at the default seeds and the floor."""
    manifest = read_json(out / "reproduce.json")
    if manifest and manifest.get("jobs"):
        return [j.split("/", 1)[1] for j in manifest["jobs"] if j.startswith("probe/")]
    return [run_name(a.key, seed) for a in ARMS for seed in CPU.seeds] + [FLOOR.key]


def _arm_of(run: str) -> Optional[Arm]:
    base = key_of(run)
    if base == FLOOR.key:
        return FLOOR
    return next((a for a in ARMS if a.key == base), None)


def _common_settings(argvs: List[List[str]]) -> List[str]:
    """Hydra overrides shared by every run (its data path, name and seed aside)."""
    def overrides(argv):
        own = ("data.train_path=", "name=", "++seed=")
        return [a for a in argv if "=" in a and not a.startswith(own)]

    sets = [overrides(a) for a in argvs]
    return [a for a in sets[0] if all(a in s for s in sets)] if sets else []


def cpu_report(out: Path) -> Report:
    out = Path(out)
    split = read_json(out / "data" / "split.json")
    expected = _expected_runs(out)
    found = {p.stem for p in (out / "probes").glob("*.json")}
    order = [a.key for a in ARMS] + [FLOOR.key]

    def rank(run: str) -> Tuple[int, str]:
        base = key_of(run)
        return (order.index(base) if base in order else len(order), run)

    runs = sorted(set(expected) | found, key=rank)
    rows, missing, argvs = [], [], []
    for run in runs:
        arm = _arm_of(run)
        probe = read_json(out / "probes" / f"{run}.json")
        pre = read_json(out / "arms" / run / "pretrain.json")
        if arm is None:
            continue
        if probe is None:
            missing.append(run)
            continue
        if pre is not None:
            argvs.append(pre["argv"])
        row = {"run": run, "arm": arm.label, "seed": seed_of(run),
               "linear": probe["linear"]["overall"], "knn": probe["knn"]["overall"],
               "linear_per_domain": probe["linear"]["per_domain"],
               "knn_per_domain": probe["knn"]["per_domain"],
               "n_test": probe["n_test"], "n_train": probe["n_train"], "size": probe["size"],
               "linear_converged": probe["linear"].get("converged"),
               "pretrain_cpu_min": None if pre is None else pre["cpu_s"] / 60,
               "pretrain_wall_min": None if pre is None else pre["wall_s"] / 60,
               "epochs": None if pre is None else pre.get("epochs"),
               "probe_cpu_min": probe["cpu_seconds"]["total"] / 60}
        rows.append(row)
    arms = _arm_summary(rows)
    compare = {(DATASET, a["arm"], metric): a[key] for a in arms if a["arm"] != FLOOR.label
               for key, metric in (("linear", LINEAR_METRIC), ("knn", KNN_METRIC))}
    seeds = sorted({r["seed"] for r in rows if r["arm"] != FLOOR.label})
    n_seeds = max((a["n"] for a in arms if a["arm"] != FLOOR.label), default=0)
    common = _common_settings(argvs)
    domains = sorted({d for r in rows for d in r["linear_per_domain"]})
    short = {d: d.split("_")[0] for d in domains}

    lines = ["Frozen-feature probes on held-out PACS images (test top-1 %, the 4 domains pooled; "
             "linear = logistic regression on standardised features, k-NN = 20 nearest "
             "neighbours by cosine similarity; both fitted on the train images' features). "
             "Mean ± sample std over the pretraining seeds, each seed in brackets.", ""]
    head = ["arm", "seeds", "linear", "k-NN"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        cells = [_mean_cell(a, k) for k in ("linear", "knn")]
        lines.append("| " + " | ".join([a["arm"], str(a["n"])] + cells) + " |")
    lines += ["", "Each run:", ""]
    head = ["arm", "seed", "linear", "k-NN", "pretrain CPU-min", "pretrain wall-min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["arm"], "-" if r["arm"] == FLOOR.label else str(r["seed"]),
                                        fmt(r["linear"]), fmt(r["knn"]),
                                        fmt(r["pretrain_cpu_min"]), fmt(r["pretrain_wall_min"])]) + " |")
    if domains:
        lines += ["", "Per test domain (linear / k-NN):", ""]
        head = ["arm"] + [short[d] for d in domains]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [f"{fmt(r['linear_per_domain'].get(d))} / {fmt(r['knn_per_domain'].get(d))}"
                     for d in domains]
            name = r["arm"] + ("" if r["arm"] == FLOOR.label else f" (seed {r['seed']})")
            lines.append("| " + " | ".join([name] + cells) + " |")
    lines.append("")
    if split:
        lines.append(f"Split: {split['sizes']['train']} train / {split['sizes']['test']} test images "
                     f"({100 * split['test_fraction']:.0f} % of each domain x class held out, seed "
                     f"{split['seed']}; domains {', '.join(split['domain_names'])}; "
                     f"{len(split['classes'])} classes"
                     + (f"; at most {split['max_per_group']} images per domain x class"
                        if split.get("max_per_group") else "")
                     + "). Pretraining and the probes' fits see the train images only.")
    if common:
        lines.append(f"Pretraining, the same for every arm: solo-learn `main_pretrain.py` with "
                     f"`--config-name {CPU_CONFIG}` and " + " ".join(f"`{a}`" for a in common)
                     + "; the arms differ only in " + ", ".join(
                         f"{a.label}: " + (" ".join(f"`{o}`" for o in a.overrides) or "the config's method")
                         for a in ARMS)
                     + f"; each arm is pretrained at `++seed=` {', '.join(map(str, seeds))}.")
    if rows:
        n_test = rows[0]["n_test"]
        se = 100 * math.sqrt(0.25 / n_test)
        lines += ["", "Honest note: a budget run, not the paper's setting. The paper pretrains for "
                  "200-500 epochs at 96-224 px on ImageNet-100 or STL-10 and probes with a "
                  "100-epoch linear layer; here every arm gets the same few epochs at small "
                  f"crops ({rows[0]['size']} px) on {rows[0]['n_train']} PACS images, "
                  f"{n_seeds} pretraining seed{'s' if n_seeds != 1 else ''}. "
                  f"With {n_test} test images one accuracy has a binomial standard error of up to "
                  f"{se:.1f} points, and seeds move it further: differences of a few points "
                  "between arms are not evidence for or against ADIOS. Compare each arm with the "
                  "random-init row, the floor any pretraining has to beat. The baselines hide "
                  "parts of one view with one fixed mask (the MAE mask uses 16-px patches: a "
                  f"{max(1, rows[0]['size'] // 16)} x {max(1, rows[0]['size'] // 16)} grid at "
                  f"{rows[0]['size']} px); ADIOS trains N masks and costs 2-3 times a SimCLR step. "
                  "Nothing is published for PACS."]
    if missing:
        lines += ["", f"Not finished (no probe result): {', '.join(missing)}."]

    pictures = []
    for run in runs:
        shots = sorted((out / "arms" / run).glob("trained_models/*/*/masks/masks-ep=*.png"),
                       key=lambda p: int(re.search(r"ep=(\d+)", p.name).group(1)))
        if shots:
            name = f"masks_{run}_train.png"
            shutil.copyfile(shots[-1], out / name)
            pictures.append((name, f"{run}: the masker's masks of the first training crops of the "
                                   f"last epoch ({shots[-1].name}, written during training)"))
        if (out / f"masks_{run}_test.png").exists():
            pictures.append((f"masks_{run}_test.png", f"{run}: masks on held-out test images, "
                                                      "2 per domain"))
    figures = []
    if rows:
        plot = _bar_plot(out, arms)
        if plot:
            figures.append(plot)
    figures += [p for p, _ in pictures]
    if pictures:
        lines += ["", "Mask pictures (bright = hidden; the last column colours each pixel by its "
                      "strongest mask, uniform for the one-mask baselines):"]
        lines += [f"- `{p}`: {why}" for p, why in pictures]
    data = {"experiment": NAME, "scale": "cpu", "dataset": DATASET, "arms": arms, "rows": rows,
            "split": None if split is None else {k: split.get(k) for k in (
                "src", "test_fraction", "seed", "max_per_group", "sizes", "domain_names",
                "classes", "counts")},
            "pretrain_overrides": common, "missing": missing,
            "probe_settings": {"linear": "StandardScaler + LogisticRegression(C=1.0, lbfgs, max_iter=1000)",
                               "knn": "k=20, cosine, uniform vote",
                               "features": "backbone output, eval mode, images resized to the crop size"}}
    return Report(markdown="\n".join(lines), data=data, figures=figures, compare=compare)


def _arm_summary(rows: List[dict]) -> List[dict]:
    """One entry per arm, in the rows' order: the mean of its runs' probe accuracies (%) and
    each seed's value."""
    arms: Dict[str, dict] = {}
    for r in rows:
        a = arms.setdefault(r["arm"], {"arm": r["arm"], "linear_by_seed": {}, "knn_by_seed": {}})
        a["linear_by_seed"][r["seed"]] = r["linear"]
        a["knn_by_seed"][r["seed"]] = r["knn"]
    for a in arms.values():
        a["n"] = len(a["linear_by_seed"])
        for k in ("linear", "knn"):
            values = list(a[f"{k}_by_seed"].values())
            a[k] = sum(values) / len(values)
            a[f"{k}_std"] = (math.sqrt(sum((v - a[k]) ** 2 for v in values) / (len(values) - 1))
                             if len(values) > 1 else None)
    return list(arms.values())


def _mean_cell(arm: dict, key: str) -> str:
    """``mean ± std (seed values)`` of ``arm[key]``; the bare value for one seed."""
    if arm[f"{key}_std"] is None:
        return fmt(arm[key])
    values = " / ".join(fmt(v) for v in arm[f"{key}_by_seed"].values())
    return f"{fmt(arm[key])} ± {fmt(arm[f'{key}_std'])} ({values})"


def _bar_plot(out: Path, arms: List[dict]) -> Optional[str]:
    from runkit.bench.plot import pyplot

    plt = pyplot()
    labels = [a["arm"].replace("SimCLR+", "+").replace(" (no pretraining)", "") for a in arms]
    x = list(range(len(arms)))
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.6))
    w = 0.38
    for shift, key, label in ((-w / 2, "linear", "linear"), (w / 2, "knn", "k-NN (k=20)")):
        bars = ax.bar([i + shift for i in x], [a[key] for a in arms], w, label=f"{label}, mean")
        for i, a in enumerate(arms):
            seeds = list(a[f"{key}_by_seed"].values())
            if len(seeds) > 1:   # each seed as a dot on its bar
                ax.plot([i + shift] * len(seeds), seeds, "k.", markersize=4)
            ax.text(i + shift, max(seeds) + 0.5, f"{a[key]:.1f}", ha="center", fontsize=7,
                    color=bars.patches[0].get_facecolor())
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8, rotation=15)
    ax.set_ylabel("test top-1 % (PACS, 4 domains)")
    ax.set_ylim(0, max(max(max(a["linear_by_seed"].values()), max(a["knn_by_seed"].values()))
                       for a in arms) * 1.15 + 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("ADIOS vs SimCLR and fixed masks: frozen-feature probes", fontsize=9)
    fig.tight_layout()
    name = "adios_probe_accuracy.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
