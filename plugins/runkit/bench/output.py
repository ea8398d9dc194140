"""A benchmark's files: ``<out>/<name>.json`` (strict JSON, :mod:`runkit.jsonio`: NaN becomes
null), ``.csv`` (one row per measured thing) and ``.png``, written together."""
from __future__ import annotations

import csv
import os
from typing import Callable, Iterable, Mapping, Sequence

from runkit.jsonio import write_json


def rounded(d: Mapping, digits: int = 6) -> dict:
    """``d`` with its floats rounded to ``digits`` decimals and its lists and dicts left out
    (a CSV row from a result record)."""
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()
            if not isinstance(v, (list, dict))}


def write_rows(path: str, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    """A CSV file with ``columns`` (keys of a row that are not columns are left out, missing
    ones left empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row)


def save_results(out_dir: str, name: str, record: dict, write_csv: Callable, plot: Callable,
                 plot_args, indent: int = 2, summary: str = "") -> dict:
    """Write ``<out_dir>/<name>.json`` (``{"benchmark": name, **record}``), ``.csv`` (via
    ``write_csv(path, record["results"])``) and ``.png`` (via ``plot(path, results, env,
    plot_args)``), print where they went and ``summary``; returns the paths by extension."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("json", "csv", "png")}
    write_json(paths["json"], {"benchmark": name, **record}, indent=indent)
    write_csv(paths["csv"], record["results"])
    plot(paths["png"], record["results"], record["environment"], plot_args)
    print("wrote " + ", ".join(os.path.relpath(p) for p in paths.values()) + f"  ({summary})")
    return paths
