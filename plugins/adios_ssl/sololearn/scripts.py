"""Run solo-learn's own top-level scripts (from the checkout) with the ADIOS methods registered.

``main_pretrain.py`` needs no wrapper when the config declares the registration callback (the
shipped configs do), but ``main_knn.py`` and ``main_umap.py`` take argparse arguments, read the
method name from the run's ``args.json`` and look it up in ``solo.methods.METHODS``: they need
the registration done before they start, which these wrappers do.
"""
from __future__ import annotations

import runpy
import sys
from typing import List, Optional

from .locate import ensure_importable, script

SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py",
           "knn": "main_knn.py", "umap": "main_umap.py"}


def run(name: str, argv: Optional[List[str]] = None) -> None:
    """Run solo-learn's ``main_<name>.py`` as ``__main__`` with ``argv`` as its arguments."""
    if name not in SCRIPTS:
        raise ValueError(f"unknown solo-learn script {name!r}: choose one of {sorted(SCRIPTS)}")
    root = ensure_importable()
    from .register import register

    register()
    path = script(SCRIPTS[name])
    saved = sys.argv
    sys.argv = [str(path)] + list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(root))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved
