"""WILDS adapters: compat fixes, presets, CdSprites-N, the training runner and prediction files.

Importing this package stops ``import wilds`` from starting its background PyPI version check
(a thread with no timeout that keeps the process alive on a machine without network): wilds
skips the check when the ``outdated`` package cannot be imported.
"""
import sys

sys.modules.setdefault("outdated", None)
