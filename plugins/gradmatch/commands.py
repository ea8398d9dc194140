"""What each ``gradmatch`` subcommand does once its arguments are parsed (:data:`COMMANDS`);
:mod:`.cli` builds the parser and turns errors into one line and an exit status."""
from __future__ import annotations

import sys


def train(args) -> None:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {args.threads}")
    import torch

    from .wilds.runner import Run, RunConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "out", "resume", "threads")}
    run = Run(RunConfig(out_dir=args.out, **fields), resume=args.resume)
    summary = run.train()
    if run.is_global_zero:
        print(format_summary(summary, args.out))


def format_summary(summary: dict, out) -> str:
    """The end of ``gradmatch train``: the selected model's metrics per split, as a table."""
    metrics = summary["metrics"]
    names = sorted({m for split in metrics.values() for m in split})
    official = [m for m in names if m in ("acc_avg", "acc_wg", "F1-macro_all", "r_wg", "r_all",
                                          "10th_percentile_acc", "acc_worst_region")]
    names = (official or names)[:4]
    sel = summary["selection"]
    width = max(len(s) for s in metrics) + 2
    lines = [f"{summary['algorithm']} on {summary['dataset']} ({summary['replicate']}): model of step "
             f"{summary['selected_step']}, selected by {sel['metric']} on {sel['split']} "
             f"= {_number(sel['value'])}",
             "split".ljust(width) + "".join(n.rjust(14) for n in names)]
    for split, values in metrics.items():
        lines.append(split.ljust(width) + "".join(_number(values.get(n)).rjust(14) for n in names))
    lines.append(f"all metrics: {out}/summary.json; predictions: {out}/predictions/{summary['dataset']}/")
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def demo(args) -> None:
    from .demo import check_args, format_table, run_demo

    check_args(args.out, seeds=args.seeds, steps=args.steps, num_domains=args.num_domains,
               batch_size=args.batch_size, recipe=args.recipe, meta_lr=args.meta_lr,
               inner_lr=args.inner_lr, jobs=args.jobs, threads=args.threads)
    import torch

    torch.set_num_threads(args.threads)

    summary = run_demo(args.out, seeds=args.seeds, steps=args.steps, num_domains=args.num_domains,
                       batch_size=args.batch_size, recipe=args.recipe, meta_lr=args.meta_lr,
                       inner_lr=args.inner_lr,
                       jobs=args.jobs, progress=args.progress)
    print(format_table(summary))
    print(f"wrote {args.out}/summary.json and {args.out}/demo.png")


def evaluate(args) -> None:
    from runkit.jsonio import dumps

    from .wilds.predictions import evaluate_predictions

    out = evaluate_predictions(args.predictions, args.dataset, root_dir=args.root_dir,
                               output_dir=args.output_dir, allow_partial=args.allow_partial,
                               dataset_kwargs=args.dataset_kwargs)
    print(dumps(out["results"]))


#: what ``gradmatch presets`` shows: column title -> value of a preset
PRESET_COLUMNS = {
    "model": lambda p: p.model, "optimizer": lambda p: p.inner_optimizer,
    "lr": lambda p: f"{p.optimizer_kwargs['lr']:g}", "batch": lambda p: str(p.batch_size),
    "meta_lr": lambda p: f"{p.meta_lr:g}", "meta_steps": lambda p: "all" if p.meta_steps is None else str(p.meta_steps),
    "warmup": lambda p: str(p.erm_warmup_steps), "epochs": lambda p: str(p.epochs),
    "inner_state": lambda p: p.inner_optimizer_state,
    "selection": lambda p: f"{p.selection_metric} on {p.selection_split}",
    "domains": lambda p: ("x".join(p.groupby_fields) if p.domain_scheme != "identity_x_y"
                          else f"{len(p.groupby_fields) - 1} identities x {p.groupby_fields[-1]}"),
}


def format_presets(presets) -> str:
    """The preset table, one row per dataset, columns padded to their widest cell."""
    rows = [["dataset", *PRESET_COLUMNS]]
    rows += [[name, *(get(p) for get in PRESET_COLUMNS.values())] for name, p in presets.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def presets(args) -> None:
    from .wilds.presets import PRESETS

    print(format_presets(PRESETS))
    print("\nbatch: examples per domain per inner step; meta_steps: domains per Fish step; warmup: "
          "ERM steps before Fish; inner_state: how long the inner optimizer keeps its state. "
          "Each value's source in the official code: gradmatch/wilds/presets.py")


def reproduce(args) -> None:
    from pathlib import Path

    from reproduction import get_experiment
    from reproduction.folder import check_args, write_manifest
    from reproduction.jobs import format_jobs, read_failure
    from reproduction.launch import LAUNCHERS
    from reproduction.report import write_report

    experiment = get_experiment(args.experiment)
    out = Path(args.out)
    check_args(out, experiment, args.scale, args.jobs)
    jobs = experiment.jobs(args.scale, out)
    if args.dry_run:
        print(format_jobs(out, jobs))
        return
    write_manifest(out, experiment, args.scale, jobs)
    extra = {"parallel": args.jobs} if args.launcher == "local" else {}
    states = LAUNCHERS[args.launcher](out, jobs, retry_failed=args.retry_failed, **extra)
    path = write_report(out)
    jobs_by_name = {j.name: j for j in jobs}
    failed = [name for name, state in states.items() if state == "failed"]
    for name in failed[:3]:  # why, in the job's own words (its log's last line)
        print(f"FAILED {name}: {read_failure(out, jobs_by_name[name])}", file=sys.stderr)
    bad = [name for name, state in states.items() if state != "done"]
    print(f"wrote {path}" + (f"; {len(bad)} job(s) not done: {', '.join(bad[:8])}"
                               + (" ..." if len(bad) > 8 else "")
                               + f" (logs and failures in {out / 'jobs'})" if bad else ""))


def report(args) -> None:
    from reproduction.report import write_report

    print(f"wrote {write_report(args.out, args.copy_to)}")


def domainbed(args) -> None:
    """``gradmatch domainbed where|clone|install-hook|remove-hook``."""
    from .domainbed import hook
    from .domainbed.locate import ENV_VAR, default_dir, find_checkout

    if args.domainbed_command == "where":
        print(find_checkout())
    elif args.domainbed_command == "clone":
        from .domainbed.clone import clone_domainbed

        print("cloning DomainBed (needs network) ...", file=sys.stderr)
        root = clone_domainbed(args.dest)
        print(f"cloned DomainBed into {root}")
        if root != default_dir().resolve():
            print(f"set {ENV_VAR}={root} so that the plugin finds it")
    elif args.domainbed_command == "install-hook":
        print(hook.describe_install(hook.install_hook(args.site_dir), args.site_dir))
    else:
        print(hook.describe_remove(hook.remove_hook(args.site_dir), args.site_dir))


#: subcommand -> function
COMMANDS = {"train": train, "demo": demo, "evaluate": evaluate, "presets": presets,
            "domainbed": domainbed, "reproduce": reproduce, "report": report}
