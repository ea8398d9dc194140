"""Run solo-learn's own top-level scripts (from the checkout) with the ADIOS methods registered.

``main_pretrain.py`` needs no wrapper when the config declares the registration callback (the
shipped configs do), but ``main_knn.py`` and ``main_umap.py`` take argparse arguments, read the
method name from the run's ``args.json`` and look it up in ``solo.methods.METHODS``: they need
the registration done before they start, which these wrappers do.

Before ``main_pretrain.py`` / ``main_linear.py`` starts, the command line is checked
(:mod:`adios_ssl.sololearn.precheck`: the config composes, the data and checkpoint exist, the
ADIOS settings are valid) without importing torch, so a bad setting is refused in about a
second, before solo-learn writes anything. :func:`main` turns every such refusal into one line
``<prog>: error: <what is wrong and the fix>`` and exit status 2.
"""
from __future__ import annotations

import difflib
import runpy
import sys
from typing import List, Optional

from .locate import SoloLearnNotFound, ensure_importable, script
from .precheck import BadCommand, check_command

SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py",
           "knn": "main_knn.py", "umap": "main_umap.py"}
#: what a refused command exits with (argparse's status for a bad command line)
EXIT_BAD_INPUT = 2


def run(name: str, argv: Optional[List[str]] = None) -> None:
    """Run solo-learn's ``main_<name>.py`` as ``__main__`` with ``argv`` as its arguments, after
    the checks of :func:`adios_ssl.sololearn.precheck.check_command` (pretrain, linear) and,
    for pretraining, that ``method`` names a registered method. Raises :class:`BadCommand` or
    ``SoloLearnNotFound`` before the script starts."""
    if name not in SCRIPTS:
        raise ValueError(f"unknown solo-learn script {name!r}: choose one of {sorted(SCRIPTS)}")
    from ..quiet import quiet_known_warnings

    quiet_known_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    path = script(SCRIPTS[name])
    cfg = check_command(name, argv, path) if name in ("pretrain", "linear") else None
    root = ensure_importable()
    from .register import register

    register()
    if name == "pretrain" and cfg is not None:
        check_method(cfg)
    saved = sys.argv
    sys.argv = [str(path)] + argv
    sys.path.insert(0, str(root))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved


def check_method(cfg) -> None:
    """``cfg.method`` is in ``solo.methods.METHODS`` (ADIOS registered), and an ADIOS method
    that is not one of the shipped ones (checked before the imports) accepts the config."""
    from omegaconf import OmegaConf
    from solo.methods import METHODS

    from .config import SHIPPED_METHODS, ADIOSConfigError

    method = OmegaConf.select(cfg, "method", default=None)
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f"did you mean method={close[0]}? " if close else ""
        adios = sorted(k for k in METHODS if k.endswith("_adios"))
        others = sorted(set(METHODS) - set(adios))
        raise BadCommand(f"method={method!r} is not a solo-learn method: {hint}choose one of "
                         f"{', '.join(adios)} (ADIOS) or {', '.join(others)}")
    check = getattr(METHODS[method], "adios_check", None)
    if check is not None and method not in SHIPPED_METHODS:
        try:
            check(cfg)
        except ADIOSConfigError as err:
            raise BadCommand(str(err)) from None


def main(name: str, argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """:func:`run`, with a refused command printed as one line ``<prog>: error: ...`` on stderr
    and exit status 2 (nothing has been written then). Returns the exit status."""
    prog = prog or f"python -m adios_ssl.{name}"
    try:
        run(name, argv)
    except (BadCommand, SoloLearnNotFound) as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
