"""Get a DomainBed checkout with git (``gradmatch domainbed clone``); needs network."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Union

from .locate import ENV_VAR, PINNED_COMMIT, REPO_URL, DomainBedNotFound, default_dir


def clone_domainbed(dest: Optional[Union[str, Path]] = None, commit: str = PINNED_COMMIT) -> Path:
    """``git clone REPO_URL dest && git checkout commit``; returns the checkout root.

    ``dest`` defaults to :func:`~gradmatch.domainbed.locate.default_dir`, where the plugin looks
    when ``$DOMAINBED_DIR`` is unset. Refuses a non-empty ``dest`` (``FileExistsError``). A failed
    clone or checkout is removed and raises :class:`DomainBedNotFound` saying how to get a
    checkout without network.
    """
    dest = Path(dest).expanduser() if dest else default_dir()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty: choose another destination, or point "
                              f"${ENV_VAR} at it if it already is a DomainBed checkout")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # fail, never wait for credentials
    try:
        for command in (["git", "clone", "--quiet", REPO_URL, str(dest)],
                        ["git", "-C", str(dest), "checkout", "--quiet", commit]):
            subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    except (OSError, subprocess.CalledProcessError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        reason = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) else str(err)
        raise DomainBedNotFound(
            f"could not clone DomainBed {commit[:7]} from {REPO_URL} into {dest}: {reason or err}. "
            f"Cloning needs git and network access. Without network, copy a DomainBed checkout "
            f"(`git clone {REPO_URL}; git checkout {commit}` on a connected machine) here and set "
            f"${ENV_VAR} to its root, or put it at {default_dir()}.") from err
    return dest.resolve()
