"""The ``method_kwargs`` keys a parent solo-learn method reads, found in its source text (so an
unknown key can be refused as a likely typo), from an imported class or a checkout's file.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import FrozenSet, Iterable, Optional

_KWARG = re.compile(r"method_kwargs\.([A-Za-z_]\w*)")
#: modules whose classes read no ``method_kwargs`` of a parent method
_NOT_PARENTS = ("adios_ssl", "builtins", "torch", "lightning", "pytorch_lightning")


def keys_read_in(texts: Iterable[str]) -> FrozenSet[str]:
    """The ``method_kwargs.<key>`` names that appear in these source texts (solo-learn's
    methods read each of their keys as ``cfg.method_kwargs.<key>`` or
    ``omegaconf_select(cfg, "method_kwargs.<key>", ...)``)."""
    return frozenset(m.group(1) for text in texts for m in _KWARG.finditer(text))


def parent_keys_of(cls: type) -> Optional[FrozenSet[str]]:
    """The ``method_kwargs`` keys read in the modules of ``cls``'s parent classes (those outside
    this package, torch and Lightning); ``None`` when none are found (unknown keys are then not
    checked)."""
    texts = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__.split(".")[0] in _NOT_PARENTS:
            continue
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
    return keys_read_in(texts) or None


def parent_keys_in_checkout(root: Path, parent: str) -> Optional[FrozenSet[str]]:
    """The ``method_kwargs`` keys that ``solo/methods/<parent>.py`` under the solo-learn
    checkout ``root`` reads, without importing it; ``None`` when the file is not there."""
    path = Path(root) / "solo" / "methods" / f"{parent}.py"
    if not path.is_file():
        return None
    return keys_read_in([path.read_text(encoding="utf-8", errors="replace")]) or None
