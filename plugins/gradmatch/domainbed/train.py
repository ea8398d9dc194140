"""``python -m gradmatch.domainbed.train ARGS``: DomainBed's own ``domainbed.scripts.train``,
unmodified, with the plugin's algorithms registered. Takes exactly DomainBed's arguments;
``$GRADMATCH_DOMAINBED_WORKERS`` overrides DomainBed's 8 DataLoader workers per loader.

Before DomainBed's script runs (it creates ``--output_dir`` first thing), :func:`check_args`
checks what would make it fail later with a traceback: ``--hparams`` (JSON object),
``--algorithm``, ``--dataset``, ``--output_dir``, and the plugin algorithms' hparams. A bad one
exits with status 2 and one line ``gradmatch: error: ...``, with nothing written."""
import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments :func:`check_args` reads, as strings (DomainBed's own parser reports
    malformed ones)."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False, allow_abbrev=False)
    for name, default in (("--dataset", "RotatedMNIST"), ("--algorithm", "ERM"), ("--hparams", None),
                          ("--hparams_seed", "0"), ("--trial_seed", "0"), ("--output_dir", "train_output")):
        parser.add_argument(name, default=default)
    parser.add_argument("--test_envs", nargs="+", default=["0"])
    return parser.parse_known_args(list(argv))[0]


def _check_output_dir(output_dir: str) -> None:
    path = Path(output_dir)
    for folder in [path, *path.parents]:
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == path else f"is under {folder}, which is a file"
                raise ValueError(f"--output_dir {output_dir} {where}: choose a folder path")
            return


def check_args(argv: Sequence[str]) -> None:
    """ValueError (one line naming the argument and the fix) for arguments of DomainBed's
    ``train.py`` that would fail after it has created ``--output_dir``. Call after
    :func:`gradmatch.domainbed.register.register`. Arguments DomainBed's parser rejects itself
    (a missing value, a non-integer seed) are left to it."""
    try:
        args = _parse(argv)
    except argparse.ArgumentError:
        return
    from domainbed import algorithms, datasets, hparams_registry
    from domainbed.lib import misc

    from .register import check_hparams

    extra = {}
    if args.hparams:
        try:
            extra = json.loads(args.hparams)
        except json.JSONDecodeError as err:
            raise ValueError(f"--hparams is not valid JSON ({err}): pass a JSON object, e.g. "
                             "--hparams '{\"meta_lr\": 0.1}'") from None
        if not isinstance(extra, dict):
            raise ValueError(f"--hparams must be a JSON object, got {args.hparams!r}: e.g. "
                             "--hparams '{\"meta_lr\": 0.1}'")
    if args.algorithm not in algorithms.ALGORITHMS:
        raise ValueError(f"--algorithm {args.algorithm} is not a DomainBed algorithm: choose one of "
                         f"{', '.join(algorithms.ALGORITHMS)}")
    if args.dataset not in vars(datasets) or args.dataset not in datasets.DATASETS:
        raise ValueError(f"--dataset {args.dataset} is not a DomainBed dataset: choose one of "
                         f"{', '.join(datasets.DATASETS)}")
    _check_output_dir(args.output_dir)
    try:
        hparams_seed, trial_seed = int(args.hparams_seed), int(args.trial_seed)
        test_envs = [int(e) for e in args.test_envs]
    except ValueError:
        return  # DomainBed's parser says which
    n_envs = datasets.num_environments(args.dataset)
    bad = [e for e in test_envs if not 0 <= e < n_envs]
    if bad:
        raise ValueError(f"--test_envs {bad[0]} is not an environment of {args.dataset}, whose "
                         f"environments are 0-{n_envs - 1} "
                         f"({', '.join(datasets.get_dataset_class(args.dataset).ENVIRONMENTS)})")
    if hparams_seed == 0:
        hparams = hparams_registry.default_hparams(args.algorithm, args.dataset)
    else:
        hparams = hparams_registry.random_hparams(args.algorithm, args.dataset,
                                                  misc.seed_hash(hparams_seed, trial_seed))
    hparams.update(extra)
    check_hparams(args.algorithm, hparams, num_domains=n_envs - len(set(test_envs)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Register, check, then run DomainBed's train.py with ``argv`` (default ``sys.argv[1:]``).
    A bad argument: one ``gradmatch: error:`` line on stderr and ``SystemExit(2)``."""
    from ..quiet import quiet_third_party
    from .register import register
    from .workers import apply_env

    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_third_party()
    try:
        register()
        apply_env()
        check_args(argv)
    except (ImportError, ValueError) as err:
        print(f"gradmatch: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
