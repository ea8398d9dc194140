"""Checks of the folders an entry point is told to write to, made before anything is written."""
from __future__ import annotations

import os
from pathlib import Path


def check_out_folder(out, flag: str = "--out") -> Path:
    """``flag``'s folder must be one this user can create or write: not a file, not under a
    file. ValueError (one line naming ``flag`` and the fix) otherwise; nothing is created."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder; choose a folder path")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent != out and not parent.is_dir():
        raise ValueError(f"{flag} {out}: {parent} is a file, so no folder can be made under it; "
                         f"choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: {parent} is not writable by this user; choose another {flag}")
    return out
