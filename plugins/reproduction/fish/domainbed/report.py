"""The domainbed experiment's report: DomainBed's own model selection on the finished runs, set
beside DomainBed's published rows, as markdown, JSON and a bar plot."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ...jobs import Report, describe_failure
from .plan import (
    COLLECT_TXT,
    COMPARED,
    DOMAINBED_CHECKPOINT_FREQ,
    DOMAINBED_STEPS,
    FIGURE,
    SCALES,
    SELECTIONS,
    SHORT,
    SWEEP_DIR,
    Plan,
    domainbed_modules,
    plan_for,
    sweep_args,
)


def load_finished(out: Path, dataset: str) -> Tuple[list, int]:
    """The records of every finished run (with ``done``) under ``out/sweep/<dataset>``, and the
    number of unfinished run folders skipped."""
    records, unfinished = [], 0
    root = out / SWEEP_DIR / dataset
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        if not (run / "done").exists():
            unfinished += run.is_dir()
            continue
        lines = (run / "results.jsonl").read_text().splitlines()
        records += [json.loads(line) for line in lines if line.strip()]
    return records, unfinished


def _mean_sem(accs: Sequence[float]) -> dict:
    """collect_results' ``format_mean``: mean and standard error over trials, in percent."""
    import numpy as np

    return {"mean": float(100 * np.mean(accs)),
            "sem": float(100 * np.std(np.asarray(accs) / np.sqrt(len(accs)))), "trials": len(accs)}


def select(records: list, dataset: str, selection: str) -> Dict[str, Dict[int, dict]]:
    """``{algorithm: {test_env: mean/sem/trials}}`` of one DomainBed selection method, grouped
    as collect_results groups (by trial seed, dataset, algorithm, test env)."""
    db = domainbed_modules()
    method = getattr(db.model_selection, SELECTIONS[selection])
    table: Dict[str, Dict[int, list]] = {}
    for group in db.reporting.get_grouped_records(db.Q(records)):
        if group["dataset"] != dataset:
            continue
        acc = method.sweep_acc(group["records"])
        if acc is not None:
            table.setdefault(group["algorithm"], {}).setdefault(group["test_env"], []).append(acc)
    return {alg: {env: _mean_sem(accs) for env, accs in sorted(envs.items())}
            for alg, envs in table.items()}


def _average(cells: Mapping[int, dict], envs: Sequence[int]) -> Optional[float]:
    """Mean over ``envs`` of the per-env means; None unless every env has a value (DomainBed's 'X')."""
    if any(env not in cells for env in envs):
        return None
    return sum(cells[env]["mean"] for env in envs) / len(envs)


def collect_results_text(records: list) -> str:
    """DomainBed's ``collect_results`` tables (text) for ``records``, every selection method."""
    db = domainbed_modules()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print("Total records:", len(records))
        for name in SELECTIONS.values():
            db.collect_results.print_results_tables(
                db.Q(records), getattr(db.model_selection, name), latex=False)
    return buffer.getvalue()


def _failed_jobs(out: Path) -> List[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "jobs").rglob("*.failed.json"))]


def _fmt(cell: Optional[dict]) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean']:.1f}" + (f" ± {cell['sem']:.1f}" if cell["trials"] > 1 else "")


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _planned_envs(plan: Plan, dataset: str, n_envs: int) -> Tuple[int, ...]:
    test_envs = plan.datasets[dataset].test_envs
    return tuple(range(n_envs)) if test_envs is None else tuple(test_envs)


def _plan_text(plan: Plan, dataset: str, n_envs: int) -> str:
    dplan = plan.datasets[dataset]
    envs = ("every env alone and every pair" if dplan.test_envs is None
            else "test env " + ", ".join(map(str, dplan.test_envs)) + f" (of {n_envs})")
    return (f"{dataset}: {envs}; {dplan.steps or DOMAINBED_STEPS} steps; checkpoint every "
            f"{dplan.checkpoint_freq or DOMAINBED_CHECKPOINT_FREQ} steps")


def build_report(out: Path, plan: Plan, scale: str) -> Report:
    """The report of ``plan`` from whatever runs under ``out`` have finished."""
    db = domainbed_modules()
    out = Path(out)
    data: dict = {"scale": scale, "scale_description": SCALES.get(scale, scale), "datasets": {},
                  "failed_jobs": [], "collect_results": COLLECT_TXT}
    compare: Dict[Tuple[str, str, str], float] = {}
    all_records = []
    for dataset in plan.datasets:
        records, unfinished = load_finished(out, dataset)
        all_records += records
        n_envs = db.datasets.num_environments(dataset)
        envs = _planned_envs(plan, dataset, n_envs)
        entry = {"environments": list(db.datasets.get_dataset_class(dataset).ENVIRONMENTS),
                 "planned_test_envs": list(envs), "plan": _plan_text(plan, dataset, n_envs),
                 "runs_planned": len(sweep_args(plan, dataset, "-")),
                 "runs_finished": len({json.dumps(r["args"], sort_keys=True) for r in records}),
                 "runs_unfinished": unfinished, "results": {}}
        for selection in SELECTIONS:
            cells = select(records, dataset, selection)
            entry["results"][selection] = {alg: {
                "test_envs": {str(env): cell for env, cell in cells.get(alg, {}).items()},
                "avg": _average(cells.get(alg, {}), range(n_envs)),
                "avg_planned_envs": _average(cells.get(alg, {}), envs)} for alg in plan.algorithms}
            for alg in plan.algorithms:
                avg = entry["results"][selection][alg]["avg"]
                if selection in COMPARED and avg is not None:
                    compare[(dataset, alg, selection)] = avg
        data["datasets"][dataset] = entry
    data["failed_jobs"] = [{"job": f["job"], "why": describe_failure(f), "log": f.get("log")}
                           for f in _failed_jobs(out)]
    text = collect_results_text(all_records) if all_records else "no finished runs\n"
    (out / COLLECT_TXT).write_text(text)
    figures = [FIGURE] if _plot(out / FIGURE, plan, data) else []
    return Report(markdown=_markdown(plan, data), data=data, figures=figures, compare=compare)


def report(out: Path, scale: str) -> Report:
    """The report of ``scale`` from the finished runs under ``out``."""
    return build_report(Path(out), plan_for(scale), scale)


def _headline(plan: Plan, data: dict) -> List[str]:
    """Rows: methods; columns: per dataset and selection, the mean over the planned test envs."""
    cols, header = [], ["method"]
    for dataset, entry in data["datasets"].items():
        envs = entry["planned_test_envs"]
        which = "avg" if len(envs) == len(entry["environments"]) else "test env " + ",".join(map(str, envs))
        for selection, short in SHORT.items():
            cols.append((dataset, selection))
            header.append(f"{dataset} {which}, {short}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for alg in plan.algorithms:
        row = [_num(data["datasets"][d]["results"][s][alg]["avg_planned_envs"]) for d, s in cols]
        lines.append(f"| {alg} | " + " | ".join(row) + " |")
    return lines


def _per_env(plan: Plan, data: dict) -> List[str]:
    lines = []
    for selection in SELECTIONS:
        for dataset, entry in data["datasets"].items():
            results = entry["results"][selection]
            if not any(r["test_envs"] for r in results.values()):
                continue
            names = entry["environments"]
            lines += ["", f"{dataset}, {selection} (mean ± standard error over trials if several):", "",
                      "| method | " + " | ".join(names) + " | Avg |", "|" + "---|" * (len(names) + 2)]
            for alg in plan.algorithms:
                cells = [_fmt(results[alg]["test_envs"].get(str(e))) for e in range(len(names))]
                lines.append(f"| {alg} | " + " | ".join(cells) + f" | {_num(results[alg]['avg'])} |")
    return lines


def _markdown(plan: Plan, data: dict) -> str:
    lines = [f"ERM vs DomainBed's built-in Fish vs the plugin's FishFast, run and scored by DomainBed's "
             f"own sweep and model selection (test accuracy %, {data['scale']} scale).", ""]
    lines += _headline(plan, data)
    lines += _per_env(plan, data)
    lines += ["", "What was run:", "", f"- scale: {data['scale_description']}"]
    for dataset, entry in data["datasets"].items():
        lines.append(f"- {entry['plan']}: {entry['runs_finished']} of {entry['runs_planned']} runs "
                     f"finished" + (f", {entry['runs_unfinished']} unfinished run folders not read"
                                    if entry["runs_unfinished"] else ""))
    lines.append("- each run: `python -m reproduction.fish.domainbed.job train ARGS` = DomainBed's "
                 "`scripts/train.py` through `gradmatch.domainbed.train`, with the arguments DomainBed's "
                 "`sweep.make_args_list` drew; folders `sweep/<dataset>/<md5 of the arguments>`")
    lines.append(f"- algorithms {', '.join(plan.algorithms)}; {plan.n_hparams} hparams seed(s) x "
                 f"{plan.n_trials} trial(s); MNIST: " + (
                     f"first {plan.mnist_subset[0]:,} training + {plan.mnist_subset[1]:,} test digits"
                     if plan.mnist_subset else "all 70,000 digits"))
    if data["failed_jobs"]:
        lines += ["", "Failed jobs:", ""] + [f"- `{f['job']}`: {f['why']} (log: {f['log']})"
                                               for f in data["failed_jobs"]]
    lines += ["", "Notes:", "",
              "- Numbers come from DomainBed's `model_selection` on the `results.jsonl` of finished "
              "runs (folders with `done`), grouped as `collect_results` groups them; its text tables "
              f"are in `{COLLECT_TXT}`. '-' marks a cell with no finished run; an average needs "
              "every test env (DomainBed prints 'X').",
              "- Training-domain validation picks, per test env, the hparams and checkpoint with the "
              "best accuracy on the training envs' held-out 20%; oracle picks the hparams by the test "
              "env's held-out 20% at the last checkpoint. Both report accuracy on the test env's other 80%.",
              "- Only averages over every test env of a dataset are set beside the published numbers."]
    if data["scale"] != "paper":
        lines.append("- Reduced scale: far fewer steps and data than DomainBed's protocol, so the "
                     "numbers are not comparable to the published ones (ColoredMNIST's collapse on "
                     "the -90% env appears within tens of steps; RotatedMNIST is still learning).")
    return "\n".join(lines) + "\n"


COLORS = {"ERM": "#7f7f7f", "Fish": "#1f77b4", "FishFast": "#ff7f0e"}  # method -> bar colour


def _plot(path: Path, plan: Plan, data: dict) -> bool:
    """Bar chart (test accuracy %): one panel per (selection, dataset), bars per method at each
    planned test env and, when there are several, their mean. Returns whether anything was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(data["datasets"])
    fig, axes = plt.subplots(len(COMPARED), len(datasets), figsize=(5 * len(datasets), 3.2 * len(COMPARED)),
                             squeeze=False)
    drawn = False
    width = 0.8 / len(plan.algorithms)
    for row, selection in enumerate(COMPARED):
        for col, dataset in enumerate(datasets):
            entry, ax = data["datasets"][dataset], axes[row][col]
            envs = entry["planned_test_envs"]
            labels = [f"test env {entry['environments'][e]}" for e in envs]
            labels += ["mean"] if len(envs) > 1 else []
            for k, alg in enumerate(plan.algorithms):
                result = entry["results"][selection][alg]
                values = [result["test_envs"].get(str(e), {}).get("mean") for e in envs]
                values += [result["avg_planned_envs"]] if len(envs) > 1 else []
                xs = [i + (k - (len(plan.algorithms) - 1) / 2) * width for i in range(len(values))]
                ax.bar(xs, [0.0 if v is None else v for v in values], width, label=alg,
                       color=COLORS.get(alg, f"C{k}"))
                drawn |= any(v is not None for v in values)
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_ylim(0, 100)
            ax.set_title(f"{dataset}, {SHORT[selection]}", fontsize=9)
            ax.set_ylabel("test accuracy %")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
