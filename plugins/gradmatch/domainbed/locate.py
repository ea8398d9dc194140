"""Find a DomainBed checkout (DomainBed has no setup.py: users clone it) and make it importable."""
from __future__ import annotations

from pathlib import Path

from upstream_checkouts import UpstreamRepo

ENV_VAR = "DOMAINBED_DIR"
REPO_URL = "https://github.com/facebookresearch/DomainBed"
PINNED_COMMIT = "b93c22a1cfc3b2428398272c1a116c8de1f4139e"


class DomainBedNotFound(ImportError):
    """No DomainBed checkout where the plugin looks for one."""


DOMAINBED = UpstreamRepo(
    name="DomainBed", env_var=ENV_VAR, repo_url=REPO_URL, commit=PINNED_COMMIT,
    marker="domainbed/algorithms.py", package="domainbed", not_found=DomainBedNotFound,
    install_hint="DomainBed also needs `pip install -e '.[domainbed]'` (timm, backpack-for-pytorch, ...).",
    clone_command="gradmatch domainbed clone")


def default_dir() -> Path:
    """``~/.cache/gradmatch-adios/upstream/DomainBed`` (``$XDG_CACHE_HOME`` replaces ``~/.cache``)."""
    return DOMAINBED.default_dir()


def find_checkout() -> Path:
    """The checkout root: ``$DOMAINBED_DIR`` if set, else :func:`default_dir`, else the older
    ``~/.cache/gradmatch/upstream/DomainBed``."""
    return DOMAINBED.find_checkout()


def ensure_importable() -> Path:
    """Put the checkout on ``sys.path`` and on ``PYTHONPATH`` (for the jobs a sweep launches);
    returns its root. An already importable ``domainbed`` is used as it is."""
    return DOMAINBED.ensure_importable()
