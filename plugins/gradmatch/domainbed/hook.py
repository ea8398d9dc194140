"""Opt-in startup hook: every interpreter of an environment registers the plugin as soon as
something imports ``domainbed.algorithms``. Plain ``python -m domainbed.scripts.train
--algorithm FishFast ...``, DomainBed's own sweep (any launcher) and DomainBed's test suite then
see ``FishFast`` and ``IDGM``, with no wrapper.

:func:`install_hook` writes ``zz_gradmatch_domainbed.pth`` into site-packages. Its one ``import``
line loads ``gradmatch/domainbed/_autoload.py`` by path (found without importing ``gradmatch``,
whose ``__init__`` imports torch) rather than ``import gradmatch.domainbed._autoload``, so
interpreter start stays light. Python skips ``.pth`` files under ``-S`` and ``-I``, and reads
them only from site-packages folders: a ``--site-dir`` that is not one of an interpreter's
site-packages does nothing for it (:func:`describe_install` says which case applies). Undo with
:func:`remove_hook` (``gradmatch domainbed remove-hook``, with the same ``--site-dir``).
"""
from __future__ import annotations

import shlex
import site
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional, Union

PTH_NAME = "zz_gradmatch_domainbed.pth"  # "zz": after the .pth files that put gradmatch on sys.path
PTH_LINE = (
    "import importlib.util as u, os, sys; s = u.find_spec('gradmatch'); "
    "f = s and s.origin and os.path.join(os.path.dirname(s.origin), 'domainbed', '_autoload.py'); "
    "l = f and os.path.isfile(f) and u.spec_from_file_location('_gradmatch_domainbed_autoload', f); "
    "l and l.name not in sys.modules and "
    "l.loader.exec_module(sys.modules.setdefault(l.name, u.module_from_spec(l)))\n")


def _pth_path(site_dir: Optional[Union[str, Path]]) -> Path:
    return Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME


def _flag(site_dir: Optional[Union[str, Path]]) -> str:
    """`` --site-dir DIR`` as the user gave it (quoted for a shell), or ``""`` for the default."""
    return f" --site-dir {shlex.quote(str(site_dir))}" if site_dir else ""


def check_site_dir(site_dir: Optional[Union[str, Path]]) -> Path:
    """The folder the hook goes into; ValueError (one line naming ``--site-dir`` and the fix)
    unless it is an existing folder. Nothing is created."""
    folder = _pth_path(site_dir).parent
    if not folder.exists():
        raise ValueError(f"--site-dir {folder} does not exist: pass an existing site-packages folder "
                         "(this environment's is the default; `python -c 'import site; "
                         "print(site.getsitepackages())'` lists an interpreter's)")
    if not folder.is_dir():
        raise ValueError(f"--site-dir {folder} is a file, not a folder: pass a site-packages folder")
    return folder


def site_dirs() -> List[Path]:
    """The folders whose ``.pth`` files this interpreter runs at start: its site-packages and,
    where enabled, the user site-packages (resolved)."""
    dirs = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: List[Path] = []
    for d in dirs:
        resolved = Path(d).resolve()
        if resolved not in seen:
            seen.append(resolved)
    return seen


def is_site_dir(folder: Union[str, Path]) -> bool:
    """Whether this interpreter reads ``.pth`` files from ``folder`` at start."""
    return Path(folder).resolve() in site_dirs()


def install_hook(site_dir: Optional[Union[str, Path]] = None) -> Path:
    """Write the ``.pth`` hook into ``site_dir`` (default: this environment's site-packages);
    returns its path. Rewriting an installed hook is harmless. ValueError, with nothing
    written, unless ``site_dir`` is an existing folder; :func:`describe_install` says what the
    hook now does."""
    path = check_site_dir(site_dir) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


def describe_install(path: Union[str, Path], site_dir: Optional[Union[str, Path]] = None) -> str:
    """What ``gradmatch domainbed install-hook`` prints after :func:`install_hook` wrote ``path``:
    which interpreters now register the plugin, and the exact command that undoes it."""
    folder = Path(path).parent
    undo = f"undo with `gradmatch domainbed remove-hook{_flag(site_dir)}`"
    if is_site_dir(folder):
        return (f"wrote {path}: every interpreter of this environment ({sys.prefix}) now registers "
                f"FishFast and IDGM when DomainBed is imported; {undo}")
    return (f"wrote {path}, but {folder} is not a site-packages folder of this interpreter "
            f"({sys.executable}), so it does not run the hook: Python reads .pth files only from "
            "site-packages folders. The hook registers FishFast and IDGM in the interpreters whose "
            f"site-packages is {folder} (and that can import gradmatch); {undo}")


def remove_hook(site_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """Delete the hook from ``site_dir`` (default: site-packages); returns the deleted path, or
    ``None`` if there was no hook. ValueError unless ``site_dir`` is an existing folder."""
    path = check_site_dir(site_dir) / PTH_NAME
    if not path.exists():
        return None
    path.unlink()
    return path


def describe_remove(path: Optional[Union[str, Path]], site_dir: Optional[Union[str, Path]] = None) -> str:
    """What ``gradmatch domainbed remove-hook`` prints after :func:`remove_hook` returned ``path``
    (``None``: there was no hook there); names any hook left in this interpreter's other
    site-packages folders, with the command that removes it."""
    folder = _pth_path(site_dir).parent
    others = [d for d in site_dirs() if d != folder.resolve() and (d / PTH_NAME).exists()]
    if path is not None:
        text = (f"removed {path}: importing DomainBed no longer registers FishFast and IDGM in "
                f"interpreters whose site-packages is {folder}")
    else:
        text = f"no startup hook was installed in {folder} ({PTH_NAME} not found): nothing removed"
    for other in others:
        text += (f"; a hook is still installed in {other} (this interpreter runs it): remove it with "
                 f"`gradmatch domainbed remove-hook --site-dir {shlex.quote(str(other))}`")
    return text
