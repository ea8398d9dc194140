"""Find a DomainBed checkout (DomainBed has no setup.py: users clone it) and make it importable."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ENV_VAR = "DOMAINBED_DIR"
REPO_URL = "https://github.com/facebookresearch/DomainBed"
PINNED_COMMIT = "b93c22a1cfc3b2428398272c1a116c8de1f4139e"


class DomainBedNotFound(ImportError):
    """No DomainBed checkout where the plugin looks for one."""


def default_dir() -> Path:
    """``~/.cache/gradmatch/upstream/DomainBed`` (``$XDG_CACHE_HOME`` replaces ``~/.cache``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "gradmatch" / "upstream" / "DomainBed"


def _is_checkout(path: Path) -> bool:
    return (path / "domainbed" / "algorithms.py").is_file()


def find_checkout() -> Path:
    """The checkout root: ``$DOMAINBED_DIR`` if set, else :func:`default_dir`."""
    configured = os.environ.get(ENV_VAR)
    candidate = Path(configured).expanduser() if configured else default_dir()
    if _is_checkout(candidate):
        return candidate.resolve()
    where = f"${ENV_VAR}={configured}" if configured else f"{candidate} (${ENV_VAR} is not set)"
    raise DomainBedNotFound(
        f"no DomainBed checkout at {where}: expected domainbed/algorithms.py there. Get one with "
        f"`gradmatch domainbed clone` (needs network; pins {PINNED_COMMIT[:7]}) or "
        f"`git clone {REPO_URL} {default_dir()}`, or point ${ENV_VAR} at your checkout. DomainBed "
        "also needs `pip install -e '.[domainbed]'` (timm, backpack-for-pytorch, ...).")


def ensure_importable() -> Path:
    """Put the checkout on ``sys.path`` and on ``PYTHONPATH`` (for the jobs a sweep launches);
    returns its root. An already importable ``domainbed`` is used as it is."""
    spec = importlib.util.find_spec("domainbed")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    root = str(find_checkout())
    sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + paths)
    return Path(root)
