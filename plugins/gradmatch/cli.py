"""gradmatch: Fish (gradient matching for domain generalisation) for WILDS, CdSprites-N and DomainBed.

subcommands:
  demo       ERM vs Fish on CdSprites-N (no download, minutes on a CPU)
  train      train Fish or ERM on a WILDS dataset or CdSprites-N (resumable)
  evaluate   score a predictions folder with WILDS' official metrics
  presets    print the official Fish hyperparameters per dataset
  reproduce  run one of the papers' experiments (resumable), then write its report
  report     write the report of a reproduce folder
  domainbed  the DomainBed plugin: find or clone DomainBed, install the startup hook

Run gradmatch SUBCOMMAND --help for its options.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and every optional option's default after its help."""

    def _get_help_string(self, action):
        if (action.required or isinstance(action, argparse._SubParsersAction)
                or (action.default is None and "(None:" in (action.help or ""))):
            return action.help
        return super()._get_help_string(action)


def _json_object(value: str) -> dict:
    """``--dataset-kwargs``: a JSON object, or one clear error."""
    try:
        parsed = json.loads(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at character {err.pos}): {value!r}; "
                                         'write an object such as \'{"num_domains": 10}\'')
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"{value!r} is not a JSON object; write one such as "
                                         '\'{"num_domains": 10}\'')
    return parsed


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .choices import ALGORITHMS, INNER_OPTIMIZER_STATES, OPTIMIZER_NAMES, STEP_SIZES, WARMUP_HANDOFFS

    preset = "the dataset preset's (gradmatch presets)"
    p.add_argument("--dataset", required=True,
                   help="a dataset of the preset table (gradmatch presets): camelyon17, fmow, "
                        "iwildcam, poverty, civilcomments, amazon, cdsprites, or one registered "
                        "with gradmatch.wilds.presets.register_preset")
    p.add_argument("--algorithm", default="fish", choices=ALGORITHMS, help="what to train")
    p.add_argument("--out", "--log_dir", dest="out", required=True,
                   help="run folder: new or empty, or with --resume a run's folder")
    p.add_argument("--root-dir", "--root_dir", dest="root_dir", default="data",
                   help="folder holding <dataset>_v<version>/")
    p.add_argument("--download", action="store_true",
                   help="allow downloading the dataset and pretrained weights if missing")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint; with a larger --max-steps "
                        "or --epochs, also a finished run")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (and of CdSprites' data "
                                                        "unless --dataset-kwargs sets data_seed)")
    p.add_argument("--fold", help="Poverty fold A-E (the replicate name of its predictions)")
    g = p.add_argument_group(f"hyperparameters (None: {preset})")
    g.add_argument("--batch-size", type=int, help="examples per domain (Fish) / per step (ERM)")
    g.add_argument("--lr", type=float, help="inner (Fish) or main (ERM) optimizer learning rate")
    g.add_argument("--optimizer", choices=OPTIMIZER_NAMES, help="inner (Fish) / main (ERM) optimizer")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--meta-lr", type=float, help="Fish's meta learning rate (see --step-size)")
    g.add_argument("--meta-steps", type=int, help="domains visited per Fish step (None in the "
                                                  "preset: every domain)")
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
    g.add_argument("--epochs", "--n_epochs", dest="epochs", type=int, help="Fish (or ERM) epochs")
    g.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (0: epoch ends only)")
    g.add_argument("--eval-splits", nargs="+", help="splits evaluated during training (None: every "
                                                    "non-train split)")
    g.add_argument("--selection-metric", "--val_metric", dest="selection_metric",
                   help="metric of dataset.eval that selects the kept model")
    g.add_argument("--selection-split", help="split the selection metric is read on")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="train from scratch even where the preset uses ImageNet/HF weights")
    o = p.add_argument_group("run")
    o.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    o.add_argument("--gip-every", type=int, default=0, help="log GIP every N steps (0: off)")
    o.add_argument("--log-every", type=int, default=10, help="steps between train records in log.jsonl")
    o.add_argument("--frac", type=float, default=1.0, help="use this fraction of every split (smoke runs)")
    o.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    e = p.add_argument_group("engine (Lightning Fabric; Lightning's meanings)")
    e.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps or auto")
    e.add_argument("--devices", default="1", type=_devices,
                   help="processes on this node: a count (2), -1 or auto for all, or a list of "
                        "GPU ids (0,1). Every batch is split evenly over all processes")
    e.add_argument("--num-nodes", type=int, default=1, help="machines (Slurm or torchrun sets the ranks)")
    e.add_argument("--strategy", default="auto",
                   help="auto (one process, or ddp for several), ddp, ddp_spawn, ddp_fork")
    e.add_argument("--precision", default="32-true",
                   help="32-true, bf16-mixed, or 16-mixed (fp16 autocast + gradient scaling; CUDA)")
    e.add_argument("--sync-batchnorm", action="store_true",
                   help="BatchNorm statistics over all processes' shards (CUDA)")
    o.add_argument("--threads", type=int, help="torch CPU threads (None: torch's choice)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    o.add_argument("--dataset-kwargs", type=_json_object, default={},
                   help='JSON object passed to the dataset, e.g. \'{"num_domains": 10}\'')


def _devices(value: str):
    from .choices import parse_devices

    try:
        return parse_devices(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use a count >= 1 (2), -1 or auto for all, or a "
                                         "list of device ids (0,1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``gradmatch`` parser; imports no torch (``gradmatch --help`` answers at once)."""
    parser = argparse.ArgumentParser(prog="gradmatch", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def command(name, help_, **kwargs):
        return sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter, **kwargs)

    from .demo import DEFAULT_RECIPE, RECIPES

    demo = command("demo", "ERM vs Fish on CdSprites-N (no download, minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="demo folder (rerun to reuse finished runs)")
    demo.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1 of each algorithm")
    demo.add_argument("--steps", type=int, default=450, help="Fish meta-steps (ERM gets N times as many)")
    demo.add_argument("--num-domains", type=int, default=15, help="N of CdSprites-N")
    demo.add_argument("--batch-size", type=int, default=32, help="examples per domain per Fish step")
    demo.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                      help="Fish's inner optimizer and step sizes (gradmatch.demo.RECIPES)")
    demo.add_argument("--meta-lr", type=float, default=None, help="Fish meta step eps (None: the recipe's)")
    demo.add_argument("--inner-lr", type=float, default=None,
                      help="Fish's inner step size alpha (None: the recipe's)")
    demo.add_argument("--jobs", type=int, default=2, help="runs trained at once (processes)")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (1 avoids oversubscription slowdowns on shared machines)")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    _add_train_args(command("train", "train Fish or ERM on a WILDS dataset or CdSprites-N (resumable)"))

    ev = command("evaluate", "score a predictions folder with WILDS' official metrics")
    ev.add_argument("predictions", help="folder holding <dataset>/<dataset>_split:..._seed:N_....csv "
                                        "(a run's predictions/, or several replicates merged)")
    ev.add_argument("--dataset", required=True, help="the dataset the predictions are for")
    ev.add_argument("--root-dir", "--root_dir", dest="root_dir", default="data",
                    help="folder holding <dataset>_v<version>/")
    ev.add_argument("--output-dir", help="where to write <dataset>_results.json (None: nowhere)")
    ev.add_argument("--allow-partial", action="store_true", help="score the replicates that are present")
    ev.add_argument("--dataset-kwargs", type=_json_object, default={},
                    help="JSON object for the dataset when the predictions have no manifest "
                         "(leaderboard files), as given to gradmatch train, e.g. cdsprites: "
                         '\'{"num_domains": 10, "data_seed": 0}\'; with a manifest (written by '
                         "gradmatch train) its data are used and these must agree")

    command("presets", "print the official Fish hyperparameters per dataset")

    from reproduction import experiment_names
    from reproduction.folder import SCALES
    from reproduction.launch import LAUNCHERS

    rep = command("reproduce", "run one of the papers' experiments (resumable), then write its report")
    rep.add_argument("experiment", choices=experiment_names(), help="the experiment")
    rep.add_argument("--scale", required=True, choices=SCALES,
                     help="cpu: reduced, runs on a 2-core CPU; cpu-epochs (adios): 10 epochs, probed at 2, 5 "
                          "and 10; paper: the papers' protocol (GPU cluster); gpu / rehearsal "
                          "(gpu-check): one GPU for 10 minutes / the same at toy size on the CPU")
    rep.add_argument("--out", required=True, help="experiment folder (rerun the same command to resume)")
    rep.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS),
                     help="local: processes on this machine; submitit: one Slurm job each "
                          "(GRADMATCH_SUBMITIT_* variables, see gradmatch.domainbed.launchers)")
    rep.add_argument("--jobs", type=int, default=2, help="local launcher: jobs run at once")
    rep.add_argument("--dry-run", action="store_true", help="list every job and its command; run nothing")
    rep.add_argument("--retry-failed", action="store_true", help="run again the jobs that failed before")
    report = command("report", "write report.md / report.json of a gradmatch reproduce folder")
    report.add_argument("out", help="the folder given to gradmatch reproduce --out")
    report.add_argument("--copy-to", help="also copy the report and its figures into this folder")

    db = command("domainbed", "the DomainBed plugin: find or clone DomainBed, install the startup hook")
    db_sub = db.add_subparsers(dest="domainbed_command", required=True, metavar="ACTION")

    def action(name, help_):
        return db_sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)

    action("where", "print the DomainBed checkout the plugin finds ($DOMAINBED_DIR, else "
                    "~/.cache/gradmatch-adios/upstream/DomainBed, else the older "
                    "~/.cache/gradmatch/upstream/DomainBed)")
    clone = action("clone", "git clone DomainBed at the pinned commit (needs network)")
    clone.add_argument("--dest", help="folder to clone into (None: ~/.cache/gradmatch-adios/upstream/DomainBed)")
    for name, what in (("install-hook", "write the startup hook that registers FishFast and IDGM "
                                        "whenever DomainBed is imported"),
                       ("remove-hook", "delete the startup hook")):
        hook = action(name, what)
        hook.add_argument("--site-dir", help="site folder of the hook (None: this environment's site-packages)")
    return parser


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


#: errors that are the input's fault: one ``error:`` line, exit status 2 (argparse's)
INPUT_ERRORS = (FileExistsError, FileNotFoundError, PermissionError, NotADirectoryError, ValueError,
                ImportError, KeyError)


def _exit_code(err: BaseException) -> Optional[int]:
    """1 for a run that failed (diverged, could not write), 2 for bad input, None: a bug (raise)."""
    from .wilds.run_config import RunWriteError

    if type(err).__name__ == "NonFiniteLossError" or isinstance(err, RunWriteError):
        return 1
    return 2 if isinstance(err, INPUT_ERRORS) else None


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, without the source line Python shows by default."""
    return f"gradmatch: warning: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    from .quiet import quiet_third_party

    quiet_third_party()
    warnings.formatwarning = _format_warning
    from .commands import COMMANDS

    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("gradmatch: interrupted; checkpoints are kept: rerun the same command (train: add --resume) "
              "to continue", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- sorted by _exit_code; anything else is re-raised
        code = _exit_code(err)
        if code is None:
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if type(err).__name__ == "NonFiniteLossError":
            message = f"{message}. {_after_divergence(args)}"
        if _is_first_local_process():  # every process of a multi-process run raises it
            print(f"gradmatch: error: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
