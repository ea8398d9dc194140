"""The ADIOS jobs' wrapper of solo-learn: ``python -m reproduction.adios.solo_job solo
pretrain|linear --marker FILE [--link FILE] [--keep-epochs E,E] -- ARGS`` runs ``adios-ssl
pretrain|linear ARGS`` (solo-learn's script with ADIOS registered) after expanding ``$VARS`` in ARGS
(a clear error names an unset one), times it, and writes the marker JSON that tells the launcher
the job is done (with the final checkpoint linked for pretraining, the last validation accuracy
for linear evaluation)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from runkit.jsonio import write_json

from .arms import read_json
from .pacs import ENV_HELP

_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand(args: Sequence[str], environ=None) -> List[str]:
    """``$VAR`` / ``${VAR}`` replaced from the environment; an unset one raises ``KeyError``
    with what it must hold."""
    environ = os.environ if environ is None else environ

    def sub(match):
        name = match.group(1) or match.group(2)
        if not environ.get(name):
            raise KeyError(f"${name} is not set: export {name}=<{ENV_HELP.get(name, 'a path')}>")
        return environ[name]

    return [_VAR.sub(sub, a) for a in args]


def _newest(folder: Path, pattern: str) -> Optional[Path]:
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _last_metrics(cwd: Path) -> dict:
    import csv

    log = _newest(cwd, "lightning_logs/*/metrics.csv")
    if log is None:
        return {}
    last: Dict[str, float] = {}
    with log.open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    try:
                        last[k] = float(v)
                    except ValueError:
                        pass
    return last


def _checkpoint_dir(args: Sequence[str]) -> str:
    for a in args:
        if a.lstrip("+").startswith("checkpoint.dir="):
            return a.split("=", 1)[1]
    return "trained_models"


def _epoch_of(ckpt: Path) -> int:
    """The epoch index in a solo-learn checkpoint name (``...-ep=4.ckpt`` -> 4; -1 if none)."""
    found = re.search(r"ep=(\d+)\.ckpt$", ckpt.name)
    return int(found.group(1)) if found else -1


def _checkpoints(cwd: Path, args: Sequence[str]) -> List[Path]:
    """The run's solo-learn checkpoints (every version folder), by epoch, then by age: the last
    is the newest file of the latest epoch."""
    return sorted((cwd / _checkpoint_dir(args)).glob("*/*/*.ckpt"), key=lambda p: (_epoch_of(p), p.stat().st_mtime))


def keep_epochs_args(cwd: Path, args: Sequence[str]) -> List[str]:
    """The overrides that keep every epoch's checkpoint and resume from the latest one.

    solo-learn deletes the previous checkpoint unless ``checkpoint.keep_prev``; with it kept,
    its AutoResumer resumes from whichever ``.ckpt`` a folder lists first
    (``solo/utils/auto_resumer.py``: ``[... if f.endswith(".ckpt")][0]``), which need not be the
    last. So auto-resume is switched off and the latest epoch's checkpoint, when there is one,
    is passed as ``resume_from_checkpoint``."""
    extra = ["++checkpoint.keep_prev=true", "auto_resume.enabled=false"]
    found = _checkpoints(cwd, args)
    if found:
        extra.append(f"++resume_from_checkpoint='{found[-1].resolve()}'")  # quoted: the name has '='
    return extra


def link_epochs(cwd: Path, args: Sequence[str], epochs: Sequence[int]) -> Dict[int, str]:
    """``epoch<e>.ckpt`` in ``cwd`` linked to the checkpoint written after ``e`` epochs (solo-learn
    numbers them from 0: ``ep=<e-1>``), for each ``e``; the other epochs' checkpoints but the
    last are deleted. Raises FileNotFoundError naming a missing epoch."""
    found: Dict[int, Path] = {}
    all_ckpts = _checkpoints(cwd, args)
    for ckpt in all_ckpts:
        found[_epoch_of(ckpt)] = ckpt   # the newest file of an epoch (a resumed run may rewrite it)
    linked = {}
    for e in epochs:
        if e - 1 not in found:
            raise FileNotFoundError(f"no checkpoint of epoch {e} (ep={e - 1}) under {cwd / _checkpoint_dir(args)}")
        _symlink(found[e - 1], cwd / f"epoch{e}.ckpt")
        linked[e] = str(found[e - 1])
    last = max(found)
    keep = {str(p) for p in linked.values()} | {str(found[last])}
    for ckpt in all_ckpts:
        if str(ckpt) not in keep:
            ckpt.unlink()
    return linked


def _symlink(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (relative), replaced atomically."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target.resolve(), link.resolve().parent))
    tmp.replace(link)


def run_solo(script: str, marker: Path, args: Sequence[str], link: Optional[Path] = None,
             keep_epochs: Sequence[int] = ()) -> int:
    """Run ``adios-ssl <script> ARGS`` here, then write ``marker`` (see the module docstring).
    ``keep_epochs``: pretraining keeps the checkpoints after those epochs, linked as
    ``epoch<e>.ckpt`` (:func:`link_epochs`), and resumes from its latest checkpoint."""
    import resource
    import subprocess
    import time

    try:
        args = expand(args)
    except KeyError as err:
        print(f"gradmatch reproduce adios: {err.args[0]}", file=sys.stderr)
        return 2
    cwd = Path.cwd()
    if keep_epochs:
        args = list(args) + keep_epochs_args(cwd, args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    rc = subprocess.call([sys.executable, "-m", "adios_ssl.cli", script, *args])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"script": script, "argv": list(args), "wall_s": time.time() - start,
              "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    if rc != 0:
        return rc
    metrics = _last_metrics(cwd)
    if script == "pretrain":
        found = _checkpoints(cwd, args)
        ckpt = found[-1] if found else None
        if ckpt is None:
            print(f"gradmatch reproduce adios: no checkpoint under {cwd / _checkpoint_dir(args)}",
                  file=sys.stderr)
            return 3
        found = re.search(r"ep=(\d+)", ckpt.name)
        run_args = read_json(ckpt.parent / "args.json") or {}
        epochs = run_args.get("max_epochs")
        if found and epochs is not None and int(found.group(1)) != int(epochs) - 1:
            print(f"gradmatch reproduce adios: {ckpt} is not the last epoch's ({epochs})",
                  file=sys.stderr)
            return 3
        if link is not None:
            link = Path(link)
            _symlink(ckpt, link)
        if keep_epochs:
            try:
                record["epoch_ckpts"] = link_epochs(cwd, args, keep_epochs)
            except FileNotFoundError as err:
                print(f"gradmatch reproduce adios: {err}", file=sys.stderr)
                return 3
        record.update({"ckpt": str(ckpt), "link": None if link is None else str(link),
                       "epochs": epochs,
                       "masks": sorted(str(p) for p in (ckpt.parent / "masks").glob("*.png")),
                       "last_metrics": metrics})
    else:
        record.update({"val_acc1": metrics.get("val_acc1"), "val_acc5": metrics.get("val_acc5"),
                       "last_metrics": metrics})
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, record, indent=1)  # strict JSON: a NaN metric is written as null
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    else:
        rest = []
    parser = argparse.ArgumentParser(prog="python -m reproduction.adios.solo_job")
    sub = parser.add_subparsers(dest="command", required=True)
    solo = sub.add_parser("solo", help="run adios-ssl pretrain|linear ARGS and write a marker")
    solo.add_argument("script", choices=("pretrain", "linear"))
    solo.add_argument("--marker", required=True, type=Path)
    solo.add_argument("--link", type=Path, default=None, help="symlink to the final checkpoint")
    solo.add_argument("--keep-epochs", default="",
                      help="comma-separated epochs whose checkpoints are kept as epoch<E>.ckpt")
    args = parser.parse_args(argv)
    keep = [int(e) for e in args.keep_epochs.split(",") if e.strip()]
    return run_solo(args.script, args.marker, rest, args.link, keep)


if __name__ == "__main__":
    sys.exit(main())
