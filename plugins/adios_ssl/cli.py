"""The ``adios-ssl`` command: find or clone solo-learn, run its scripts with ADIOS registered."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="adios-ssl", description="ADIOS (adversarial masking for SSL) as solo-learn methods.",
        epilog="Scripts: `adios-ssl pretrain|linear|knn|umap ARGS` runs solo-learn's "
               "main_<script>.py ARGS from the checkout with the ADIOS methods registered.")
    sub = parser.add_subparsers(dest="command", required=True)
    solo = sub.add_parser("solo", help="where solo-learn is, or clone the pinned commit")
    solo_sub = solo.add_subparsers(dest="solo_command", required=True)
    solo_sub.add_parser("where", help="print the solo-learn checkout the plugin uses")
    clone = solo_sub.add_parser("clone", help="git clone the pinned solo-learn commit (network)")
    clone.add_argument("--dest", default=None, help="default: ~/.cache/gradmatch-adios/upstream/solo-learn")
    for name in ("pretrain", "linear", "knn", "umap"):
        sub.add_parser(name, help=f"solo-learn's main_{name}.py with ADIOS registered",
                       add_help=False)
    if argv and argv[0] in ("pretrain", "linear", "knn", "umap"):
        from .sololearn.scripts import run

        run(argv[0], argv[1:])
        return 0
    args = parser.parse_args(argv)
    from .sololearn.locate import ENV_VAR, SOLO_LEARN, SoloLearnNotFound

    try:
        if args.solo_command == "where":
            print(SOLO_LEARN.find_checkout())
        else:
            root = SOLO_LEARN.clone(args.dest)
            print(f"solo-learn {SOLO_LEARN.commit[:7]} cloned into {root}")
            if root != SOLO_LEARN.default_dir().resolve():
                print(f"point the plugin at it: export {ENV_VAR}={root}")
    except (SoloLearnNotFound, FileExistsError) as err:
        print(f"adios-ssl: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
