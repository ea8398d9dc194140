"""The ``gradmatch`` command: ``demo``, ``train``, ``evaluate``, ``presets`` and ``domainbed``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .fish import STEP_SIZES
    from .optim import OPTIMIZERS
    from .wilds.run_config import INNER_OPTIMIZER_STATES, WARMUP_HANDOFFS

    p.add_argument("--dataset", required=True,
                   help="a dataset of the preset table (`gradmatch presets`): camelyon17, fmow, "
                        "iwildcam, poverty, civilcomments, amazon, cdsprites, or one registered "
                        "with gradmatch.wilds.presets.register_preset")
    p.add_argument("--algorithm", default="fish", choices=["fish", "erm"])
    p.add_argument("--out", required=True, help="run folder (must be new or empty, unless --resume)")
    p.add_argument("--root-dir", default="data", help="folder holding <dataset>_v<version>/")
    p.add_argument("--download", action="store_true",
                   help="allow downloading the dataset and pretrained weights if missing")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold", help="Poverty fold A-E (the replicate name of its predictions)")
    g = p.add_argument_group("hyperparameters (default: the dataset's official Fish preset)")
    g.add_argument("--batch-size", type=int, help="examples per domain (Fish) / per step (ERM)")
    g.add_argument("--lr", type=float, help="inner (Fish) or main (ERM) optimizer learning rate")
    g.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="inner (Fish) / main (ERM) optimizer")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--meta-lr", type=float)
    g.add_argument("--meta-steps", type=int, help="domains visited per Fish step")
    g.add_argument("--step-size", default="official", choices=list(STEP_SIZES),
                   help="; ".join(f"{k}: {v}" for k, v in STEP_SIZES.items()))
    g.add_argument("--inner-optimizer-state", choices=INNER_OPTIMIZER_STATES,
                   help="how long Fish's inner optimizer keeps its state: a fresh one every step, "
                        "within one Fish epoch (official reload_inner_optim), or the whole run")
    g.add_argument("--reset-inner-optimizer", dest="inner_optimizer_state", action="store_const",
                   const="step", help="= --inner-optimizer-state step")
    g.add_argument("--carry-inner-optimizer", dest="inner_optimizer_state", action="store_const",
                   const="run", help="= --inner-optimizer-state run")
    g.add_argument("--warmup-handoff", default="best", choices=WARMUP_HANDOFFS,
                   help="after the ERM warm-up Fish starts from the best warm-up model and model "
                        "selection starts afresh (best, official), or from the last warm-up "
                        "weights with the warm-up models still eligible (last)")
    g.add_argument("--erm-warmup-steps", "--erm-pretrain-iters", dest="erm_warmup_steps", type=int,
                   help="ERM steps before Fish starts (the official pre-training iterations)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (0: epoch ends only)")
    g.add_argument("--eval-splits", nargs="+", help="default: every non-train split")
    g.add_argument("--selection-metric")
    g.add_argument("--selection-split")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="train from scratch even where the preset uses ImageNet/HF weights")
    o = p.add_argument_group("run")
    o.add_argument("--checkpoint-every", type=int, default=200)
    o.add_argument("--gip-every", type=int, default=0, help="log GIP every N steps (0: off)")
    o.add_argument("--log-every", type=int, default=10)
    o.add_argument("--frac", type=float, default=1.0, help="use this fraction of every split")
    o.add_argument("--num-workers", type=int, default=0)
    e = p.add_argument_group("engine (Lightning Fabric; Lightning's meanings)")
    e.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps or auto (default)")
    e.add_argument("--devices", default="1", type=_devices,
                   help="processes on this node: a count (2), -1 or auto for all, or a list of "
                        "GPU ids (0,1); default 1. Every batch is split evenly over all processes")
    e.add_argument("--num-nodes", type=int, default=1, help="machines (Slurm or torchrun sets the ranks)")
    e.add_argument("--strategy", default="auto",
                   help="auto (one process, or ddp for several), ddp, ddp_spawn, ddp_fork")
    e.add_argument("--precision", default="32-true",
                   help="32-true (default), bf16-mixed, or 16-mixed (fp16 autocast + gradient "
                        "scaling; CUDA)")
    e.add_argument("--sync-batchnorm", action="store_true",
                   help="BatchNorm statistics over all processes' shards (CUDA)")
    o.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--dataset-kwargs", type=json.loads, default={},
                   help='JSON passed to the dataset, e.g. \'{"num_domains": 10}\'')


def _devices(value: str):
    from .distributed import parse_devices

    try:
        return parse_devices(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use a count (2), -1, auto or a list (0,1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradmatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from .demo import DEFAULT_RECIPE, RECIPES

    demo = sub.add_parser("demo", help="ERM vs Fish on CdSprites-N (no download, minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seeds", type=int, default=3)
    demo.add_argument("--steps", type=int, default=450, help="Fish meta-steps (ERM gets N times as many)")
    demo.add_argument("--num-domains", type=int, default=15, help="N of CdSprites-N")
    demo.add_argument("--batch-size", type=int, default=32, help="examples per domain per Fish step")
    demo.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                      help="Fish's inner optimizer and step sizes (gradmatch.demo.RECIPES; default %(default)s)")
    demo.add_argument("--meta-lr", type=float, default=None, help="Fish meta step eps (default: the recipe's)")
    demo.add_argument("--inner-lr", type=float, default=None,
                      help="Fish's inner step size alpha (default: the recipe's)")
    demo.add_argument("--jobs", type=int, default=2, help="runs trained at once (processes)")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (1 avoids oversubscription slowdowns on shared machines)")
    demo.add_argument("--no-progress", dest="progress", action="store_false")

    _add_train_args(sub.add_parser("train", help="train Fish or ERM on a WILDS dataset or CdSprites-N"))

    ev = sub.add_parser("evaluate", help="score a predictions folder with WILDS' official metrics")
    ev.add_argument("predictions", help="folder holding <dataset>/<dataset>_split:..._seed:N_....csv")
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--root-dir", default="data")
    ev.add_argument("--output-dir", help="where to write <dataset>_results.json")
    ev.add_argument("--allow-partial", action="store_true", help="score the replicates that are present")
    ev.add_argument("--dataset-kwargs", type=json.loads, default={},
                    help='JSON for the dataset, as given to `gradmatch train` (e.g. cdsprites: '
                         '\'{"num_domains": 10, "data_seed": 0}\')')

    sub.add_parser("presets", help="print the official Fish hyperparameters per dataset")

    from .reproduce import experiment_names
    from .reproduce.core import LAUNCHERS, SCALES

    rep = sub.add_parser("reproduce", help="run one of the papers' experiments (resumable), then write its report")
    rep.add_argument("experiment", choices=experiment_names())
    rep.add_argument("--scale", required=True, choices=SCALES,
                     help="cpu: reduced, runs on a 2-core CPU; paper: the papers' protocol (GPU cluster)")
    rep.add_argument("--out", required=True, help="experiment folder (rerun the same command to resume)")
    rep.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS),
                     help="local: processes on this machine; submitit: one Slurm job each "
                          "(GRADMATCH_SUBMITIT_* variables, see gradmatch.domainbed.launchers)")
    rep.add_argument("--jobs", type=int, default=2, help="local launcher: jobs run at once")
    rep.add_argument("--dry-run", action="store_true", help="list every job and its command; run nothing")
    rep.add_argument("--retry-failed", action="store_true", help="run again the jobs that failed before")
    report = sub.add_parser("report", help="write report.md / report.json of a `gradmatch reproduce` folder")
    report.add_argument("out")
    report.add_argument("--copy-to", help="also copy the report and its figures into this folder")

    db = sub.add_parser("domainbed", help="the DomainBed plugin: find or clone DomainBed, startup hook")
    db_sub = db.add_subparsers(dest="domainbed_command", required=True)
    db_sub.add_parser("where", help="print the DomainBed checkout the plugin finds ($DOMAINBED_DIR "
                                    "or ~/.cache/gradmatch-adios/upstream/DomainBed, or the older ~/.cache/gradmatch/upstream/DomainBed)")
    clone = db_sub.add_parser("clone", help="git clone DomainBed at the pinned commit (needs network)")
    clone.add_argument("--dest", help="default: ~/.cache/gradmatch-adios/upstream/DomainBed")
    for name, what in (("install-hook", "write the startup hook that registers FishFast and IDGM "
                                        "whenever DomainBed is imported"),
                       ("remove-hook", "delete the startup hook")):
        hook = db_sub.add_parser(name, help=what)
        hook.add_argument("--site-dir", help="default: this environment's site-packages")
    return parser


def _train(args) -> None:
    from .wilds.runner import Run, RunConfig

    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "out", "resume", "threads")}
    run = Run(RunConfig(out_dir=args.out, **fields), resume=args.resume)
    summary = run.train()
    if run.is_global_zero:
        print(json.dumps(summary, indent=2))


def _demo(args) -> None:
    import torch

    from .demo import format_table, run_demo

    if args.threads < 1 or args.jobs < 1:
        raise ValueError("--threads and --jobs must be >= 1")
    torch.set_num_threads(args.threads)

    summary = run_demo(args.out, seeds=args.seeds, steps=args.steps, num_domains=args.num_domains,
                       batch_size=args.batch_size, recipe=args.recipe, meta_lr=args.meta_lr,
                       inner_lr=args.inner_lr,
                       jobs=args.jobs, progress=args.progress)
    print(format_table(summary))
    print(f"wrote {args.out}/summary.json and {args.out}/demo.png")


def _evaluate(args) -> None:
    from .wilds.predictions import evaluate_predictions

    out = evaluate_predictions(args.predictions, args.dataset, root_dir=args.root_dir,
                               output_dir=args.output_dir, allow_partial=args.allow_partial,
                               dataset_kwargs=args.dataset_kwargs)
    print(json.dumps(out["results"], indent=2))


def _presets(args) -> None:
    from .wilds.presets import PRESETS

    cols = ["model", "inner_optimizer", "batch_size", "meta_lr", "meta_steps", "erm_warmup_steps",
            "epochs", "selection_metric", "groupby_fields"]
    print(f"{'dataset':<14}" + "".join(f"{c:<20}" for c in cols) + "lr")
    for name, p in PRESETS.items():
        print(f"{name:<14}" + "".join(f"{str(getattr(p, c)):<20}" for c in cols) + str(p.optimizer_kwargs["lr"]))


def _reproduce(args) -> None:
    from pathlib import Path

    from .reproduce import get_experiment
    from .reproduce.core import LAUNCHERS, format_jobs, read_failure, write_manifest
    from .reproduce.report import write_report

    experiment = get_experiment(args.experiment)
    out = Path(args.out)
    jobs = experiment.jobs(args.scale, out)
    if args.dry_run:
        print(format_jobs(out, jobs))
        return
    if args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
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


def _report(args) -> None:
    from .reproduce.report import write_report

    print(f"wrote {write_report(args.out, args.copy_to)}")


def _domainbed(args) -> None:
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
        path = hook.install_hook(args.site_dir)
        print(f"wrote {path}: interpreters of this environment now register FishFast and IDGM when "
              "DomainBed is imported; undo with `gradmatch domainbed remove-hook`")
    else:
        path = hook.remove_hook(args.site_dir)
        print(f"removed {path}" if path else "no startup hook was installed there")


def _after_divergence(args) -> str:
    """What to do after a non-finite loss: resume from the kept checkpoint, if there is one."""
    if args.command != "train":
        return "Rerun with a lower learning rate."
    from pathlib import Path

    checkpoint = Path(args.out) / "checkpoint.pt"
    if checkpoint.exists():
        return (f"The last checkpoint ({checkpoint}) is kept: rerun with --resume and a lower --lr "
                "(or --meta-lr); if it has diverged too, start again in a new --out.")
    return "No checkpoint was written yet: rerun with a lower --lr (or --meta-lr) and a new --out."


def _is_first_local_process() -> bool:
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .losses import NonFiniteLossError

    try:
        commands = {"train": _train, "demo": _demo, "evaluate": _evaluate, "presets": _presets,
                    "domainbed": _domainbed, "reproduce": _reproduce, "report": _report}
        commands[args.command](args)
    except NonFiniteLossError as err:
        print(f"gradmatch: error: {err}. {_after_divergence(args)}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, PermissionError, ValueError, ImportError, KeyError) as err:
        if _is_first_local_process():  # every process of a multi-process run raises it
            print(f"gradmatch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradmatch: interrupted; checkpoints are kept: rerun the same command (train: add --resume) "
              "to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
