"""Opt-in startup hook: every interpreter of an environment registers the plugin as soon as
something imports ``domainbed.algorithms``. Plain ``python -m domainbed.scripts.train
--algorithm FishFast ...``, DomainBed's own sweep (any launcher) and DomainBed's test suite then
see ``FishFast`` and ``IDGM``, with no wrapper.

:func:`install_hook` writes ``zz_gradmatch_domainbed.pth`` into site-packages. Its one ``import``
line loads ``gradmatch/domainbed/_autoload.py`` by path (found without importing ``gradmatch``,
whose ``__init__`` imports torch) rather than ``import gradmatch.domainbed._autoload``, so
interpreter start stays light. Python skips ``.pth`` files under ``-S`` and ``-I``. Undo with
:func:`remove_hook` (``gradmatch domainbed remove-hook``).
"""
from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Optional, Union

PTH_NAME = "zz_gradmatch_domainbed.pth"  # "zz": after the .pth files that put gradmatch on sys.path
PTH_LINE = (
    "import importlib.util as u, os, sys; s = u.find_spec('gradmatch'); "
    "f = s and s.origin and os.path.join(os.path.dirname(s.origin), 'domainbed', '_autoload.py'); "
    "l = f and os.path.isfile(f) and u.spec_from_file_location('_gradmatch_domainbed_autoload', f); "
    "l and l.name not in sys.modules and "
    "l.loader.exec_module(sys.modules.setdefault(l.name, u.module_from_spec(l)))\n")


def _pth_path(site_dir: Optional[Union[str, Path]]) -> Path:
    return Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME


def install_hook(site_dir: Optional[Union[str, Path]] = None) -> Path:
    """Write the ``.pth`` hook into ``site_dir`` (default: this environment's site-packages);
    returns its path. Rewriting an installed hook is harmless."""
    path = _pth_path(site_dir)
    path.write_text(PTH_LINE)
    return path


def remove_hook(site_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """Delete the hook from ``site_dir`` (default: site-packages); returns the deleted path, or
    ``None`` if there was no hook."""
    path = _pth_path(site_dir)
    if not path.exists():
        return None
    path.unlink()
    return path
