"""Find, import and clone upstream checkouts that are not on PyPI (DomainBed, solo-learn, WILDS).

Shared by both packages of the distribution (``gradmatch`` and ``adios_ssl``), which import it
and not each other. Users clone these projects; the plugins look for a checkout in
``$<ENV_VAR>``, else in ``~/.cache/gradmatch-adios/upstream/<name>``, else in the folder earlier
versions used, ``~/.cache/gradmatch/upstream/<name>`` (``$XDG_CACHE_HOME`` replaces
``~/.cache``), and say how to get one when there is none.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Type, Union


@dataclasses.dataclass(frozen=True)
class UpstreamRepo:
    """One upstream project: where its checkout is looked for and how to get it.

    Attributes:
        name: folder name under the cache directory (``DomainBed``, ``solo-learn``).
        env_var: environment variable that points at a checkout root.
        repo_url: git URL to clone from.
        commit: the commit the plugin is tested against.
        marker: a file, relative to the root, that only a checkout has.
        package: the importable package inside the checkout.
        not_found: exception type raised when there is no checkout.
        install_hint: one sentence on what else the checkout needs (dependencies).
        clone_command: the command that clones the pinned commit into the default folder.
    """

    name: str
    env_var: str
    repo_url: str
    commit: str
    marker: str
    package: str
    not_found: Type[ImportError]
    install_hint: str
    clone_command: str

    def default_dir(self) -> Path:
        """Where a checkout is cloned to: ``~/.cache/gradmatch-adios/upstream/<name>``."""
        return _cache() / "gradmatch-adios" / "upstream" / self.name

    def legacy_dir(self) -> Path:
        """Where earlier versions cloned to, still searched: ``~/.cache/gradmatch/upstream/<name>``."""
        return _cache() / "gradmatch" / "upstream" / self.name

    def is_checkout(self, path: Path) -> bool:
        return (path / self.marker).is_file()

    def find_checkout(self) -> Path:
        """The checkout root: ``$env_var`` if set, else :meth:`default_dir`, else :meth:`legacy_dir`."""
        configured = os.environ.get(self.env_var)
        candidates = ([Path(configured).expanduser()] if configured
                      else [self.default_dir(), self.legacy_dir()])
        for candidate in candidates:
            if self.is_checkout(candidate):
                return candidate.resolve()
        where = (f"${self.env_var}={configured}" if configured
                 else f"{' or '.join(map(str, candidates))} (${self.env_var} is not set)")
        raise self.not_found(
            f"no {self.name} checkout at {where}: expected {self.marker} there. Get one with "
            f"`{self.clone_command}` (needs network; pins {self.commit[:7]}) or "
            f"`git clone {self.repo_url} {self.default_dir()}`, or point ${self.env_var} at your "
            f"checkout. {self.install_hint}")

    def ensure_importable(self) -> Path:
        """Put the checkout on ``sys.path`` and on ``PYTHONPATH`` (for child processes); returns
        its root. An already importable package is used as it is."""
        spec = importlib.util.find_spec(self.package)
        if spec is not None and spec.origin:
            return Path(spec.origin).resolve().parent.parent
        root = str(self.find_checkout())
        sys.path.insert(0, root)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root] + paths)
        return Path(root)

    def clone(self, dest: Optional[Union[str, Path]] = None, commit: Optional[str] = None,
              repo_url: Optional[str] = None) -> Path:
        """``git clone repo_url dest && git checkout commit``; returns the checkout root.

        ``dest`` defaults to :meth:`default_dir`. Refuses a non-empty ``dest``
        (``FileExistsError``). A failed clone or checkout is removed and raises ``not_found``
        saying how to get a checkout without network.
        """
        dest = Path(dest).expanduser() if dest else self.default_dir()
        commit = commit or self.commit
        repo_url = repo_url or self.repo_url
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} exists and is not empty: choose another destination, or "
                                  f"point ${self.env_var} at it if it already is a {self.name} checkout")
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # fail, never wait for credentials
        try:
            for command in (["git", "clone", "--quiet", repo_url, str(dest)],
                            ["git", "-C", str(dest), "checkout", "--quiet", commit]):
                subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        except (OSError, subprocess.CalledProcessError) as err:
            shutil.rmtree(dest, ignore_errors=True)
            reason = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) else str(err)
            raise self.not_found(
                f"could not clone {self.name} {commit[:7]} from {repo_url} into {dest}: "
                f"{reason or err}. Cloning needs git and network access. Without network, copy a "
                f"{self.name} checkout (`git clone {self.repo_url}; git checkout {commit}` on a "
                f"connected machine) here and set ${self.env_var} to its root, or put it at "
                f"{self.default_dir()}.") from err
        return dest.resolve()


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
