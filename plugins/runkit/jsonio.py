"""Strict JSON for result files (run configs and summaries, prediction manifests, ADIOS run records,
probe results, split manifests):
no ``NaN``/``Infinity`` (which many JSON readers reject; a non-finite number becomes ``null``),
written through a temporary file and a rename so a killed process never leaves half a file."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf), at any depth, replaced by ``None``;
    tuples become lists, numpy/torch scalars plain numbers, ``Path`` objects strings."""
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, indent: int = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`finite_or_none`)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path`` (parents created) through a temporary file and a
    rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(obj, indent) + "\n")
    os.replace(tmp, path)
    return path
