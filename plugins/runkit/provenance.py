"""What code a run ran: this package's version and commit, the libraries' versions and the
upstream checkouts' commits. Shared by ``gradmatch train`` (``config.json``) and the ADIOS methods
(``args.json``/``provenance.json``), so a number is always tied to the code that produced it.

:func:`provenance` returns a plain, JSON-serialisable dict::

    {"package": {"name": "gradmatch-adios", "version": "0.1.0", "commit": "f7ad780...",
                 "dirty": False},
     "python": "3.11.7", "platform": "Linux-...",
     "libraries": {"torch": "2.14.1", "lightning": "2.6.6", "wilds": "2.0.0", ...},
     "upstream": {"DomainBed": {"path": ..., "commit": "b93c22a..."}, "solo-learn": {...}},
     "engine": {"device": "cpu", "world_size": 1, "precision": "32-true"}}

A library that is not installed is ``None``; an upstream project without a checkout is absent.
Nothing here raises: a commit that cannot be read (no git, not a checkout) is ``None``.
"""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

DISTRIBUTION = "gradmatch-adios"
#: the libraries whose versions a run records (import names -> distribution names)
LIBRARIES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy",
             "lightning": "lightning", "wilds": "wilds", "hydra": "hydra-core",
             "torchmetrics": "torchmetrics", "timm": "timm", "transformers": "transformers"}


def git_commit(path) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree holding ``path``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions(names: Iterable[str] = LIBRARIES) -> Dict[str, Optional[str]]:
    """Installed versions of ``names`` (keys of :data:`LIBRARIES`); ``None`` when not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(LIBRARIES.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _upstream_repos():
    """The upstream projects a run may use, found the way the plugins find them."""
    repos = []
    try:
        from gradmatch.domainbed.locate import DOMAINBED
        repos.append(DOMAINBED)
    except ImportError:
        pass
    try:
        from adios_ssl.sololearn.locate import SOLO_LEARN
        repos.append(SOLO_LEARN)
    except ImportError:
        pass
    return repos


def upstream_commits() -> Dict[str, Dict[str, Any]]:
    """``{name: {"path", "commit", "dirty", "pinned"}}`` for each upstream checkout that is found.
    A package already imported (``domainbed``, ``solo``) is located by its module's file, so the
    record names the code that actually ran."""
    found = {}
    for repo in _upstream_repos():
        module = sys.modules.get(repo.package)
        root = None
        if module is not None and getattr(module, "__file__", None):
            root = Path(module.__file__).resolve().parent.parent
        else:
            try:
                root = repo.find_checkout()
            except ImportError:
                continue
        found[repo.name] = {"path": str(root), **git_commit(root), "pinned": repo.commit}
    return found


def provenance(device: Any = None, world_size: Optional[int] = None,
               precision: Optional[str] = None, libraries: Iterable[str] = LIBRARIES) -> Dict[str, Any]:
    """This process's code and environment, as a JSON-serialisable dict (see the module doc)."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "package": {"name": DISTRIBUTION, "version": version, **git_commit(Path(__file__).parent)},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(libraries),
        "upstream": upstream_commits(),
        "engine": {"device": None if device is None else str(device), "world_size": world_size,
                   "precision": precision},
    }
