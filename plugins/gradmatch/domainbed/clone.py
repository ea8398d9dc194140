"""Get a DomainBed checkout with git (``gradmatch domainbed clone``); needs network."""
from __future__ import annotations

import subprocess  # noqa: F401  (tests patch clone.subprocess.run)
from pathlib import Path
from typing import Optional, Union

from .locate import DOMAINBED, PINNED_COMMIT, REPO_URL


def clone_domainbed(dest: Optional[Union[str, Path]] = None, commit: str = PINNED_COMMIT) -> Path:
    """``git clone REPO_URL dest && git checkout commit`` into ``dest`` (default: where the
    plugin looks when ``$DOMAINBED_DIR`` is unset); see :meth:`UpstreamRepo.clone`."""
    return DOMAINBED.clone(dest, commit, repo_url=REPO_URL)
