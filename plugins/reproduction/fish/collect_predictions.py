"""``python -m reproduction.fish.collect_predictions DEST RUN [RUN ...]``: gather runs'
prediction files into one submission folder.

Every ``RUN/predictions/<dataset>/*.csv`` is copied to ``DEST/<dataset>/``, the layout WILDS'
leaderboard and ``examples/evaluate.py`` read (one file per split and replicate), with each
replicate's ``<dataset>_<replicate>_manifest.json`` (what ``gradmatch evaluate`` checks the
data against; ``evaluate.py`` ignores it). A file already
in ``DEST`` with other content stops the command (two runs claim the same replicate); identical
files are left as they are. ``DEST/<dataset>/manifest.json`` lists where each file came from.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Sequence


def collect(dest: Path, runs: Sequence[Path]) -> Dict[str, str]:
    """Copy the runs' prediction files into ``dest``; returns ``{dest file: source file}``."""
    copied: Dict[str, str] = {}
    missing: List[str] = []
    for run in runs:
        files = sorted((Path(run) / "predictions").glob("*/*.csv"))
        if not files:
            missing.append(str(run))
        # each replicate's manifest (gradmatch.wilds.manifest) goes along: evaluate checks the data
        files += sorted((Path(run) / "predictions").glob("*/*_manifest.json"))
        for src in files:
            target = dest / src.parent.name / src.name
            if target.exists() and not filecmp.cmp(src, target, shallow=False):
                raise FileExistsError(f"{target} exists with other predictions than {src}: two runs "
                                      "write the same replicate; remove one, or collect into a new folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(src, target)
            copied[str(target.relative_to(dest))] = str(src)
    if missing:
        raise FileNotFoundError("no predictions/<dataset>/*.csv in: " + ", ".join(missing)
                                + " (a finished `gradmatch train` run writes them)")
    for dataset in sorted({Path(k).parts[0] for k in copied}):
        mine = {k: v for k, v in copied.items() if Path(k).parts[0] == dataset}
        (dest / dataset / "manifest.json").write_text(json.dumps(mine, indent=2, sort_keys=True))
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    try:
        copied = collect(Path(args.dest), [Path(r) for r in args.runs])
    except (FileExistsError, FileNotFoundError) as err:
        print(f"collect_predictions: error: {err}", file=sys.stderr)
        return 2
    print(f"collected {len(copied)} prediction files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
