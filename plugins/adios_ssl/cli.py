"""The ``adios-ssl`` command: find or clone solo-learn, run its scripts with ADIOS registered.

A command it refuses (a bad config value, a missing data folder or checkpoint, an unusable clone
destination, no solo-learn checkout) prints one line ``adios-ssl: error: <what is wrong and the
fix>`` on stderr and exits with status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

PROG = "adios-ssl"
SCRIPT_NAMES = ("pretrain", "linear", "knn", "umap")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one ``adios-ssl: error:`` line (status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(
        prog=PROG, description="ADIOS (adversarial masking for SSL) as solo-learn methods.",
        epilog="Scripts: `adios-ssl pretrain|linear|knn|umap ARGS` runs solo-learn's "
               "main_<script>.py ARGS from the checkout with the ADIOS methods registered.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    solo = sub.add_parser("solo", help="where solo-learn is, or clone the pinned commit")
    solo_sub = solo.add_subparsers(dest="solo_command", required=True, parser_class=_Parser)
    solo_sub.add_parser("where", help="print the solo-learn checkout the plugin uses")
    clone = solo_sub.add_parser("clone", help="git clone the pinned solo-learn commit (network)")
    clone.add_argument("--dest", default=None, help="default: ~/.cache/gradmatch-adios/upstream/solo-learn")
    for name in SCRIPT_NAMES:
        sub.add_parser(name, help=f"solo-learn's main_{name}.py with ADIOS registered",
                       add_help=False)
    if argv and argv[0] in SCRIPT_NAMES:
        from .sololearn.scripts import main as run_script

        return run_script(argv[0], argv[1:], prog=PROG)
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
    except FileExistsError as err:
        print(f"{PROG}: error: --dest {args.dest or SOLO_LEARN.default_dir()}: "
              f"{' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SoloLearnNotFound as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
