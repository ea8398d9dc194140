"""A deterministic, stratified train/test split of a multi-domain image folder, as symlinks.

``python -m adios_ssl.split SRC OUT [--test-fraction 0.2] [--seed 0] [--max-per-group K]``

``SRC`` holds ``<domain>/<class>/<image>`` (PACS, VLCS, OfficeHome, ... as DomainBed stores
them). ``OUT`` receives two ImageFolder trees of symlinks, ``OUT/{train,test}/<class>/
<domain>__<image>`` (every domain pooled, the domain kept in the file name), and
``OUT/split.json`` (the settings, the counts per split x domain x class and every file name),
written last: its presence means the split is complete.

Per (domain, class) group, the sorted file names are permuted by a generator seeded with
``(seed, crc32("<domain>/<class>"))`` (the same on every machine and Python version), the
first ``round(test_fraction * n)`` (at least 1 and at most n - 1 when n >= 2) go to ``test``,
the rest to ``train``. ``--max-per-group K`` keeps only the first K images of each group's
permutation before splitting (small smoke runs). ``SRC`` may contain ``$VARS`` (expanded).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from runkit.jsonio import write_json

SPLITS = ("train", "test")
MANIFEST = "split.json"
SEPARATOR = "__"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class SplitError(ValueError):
    """Bad source folder or settings."""


def group_order(names: Sequence[str], domain: str, cls: str, seed: int) -> List[str]:
    """The group's file names in their seeded order."""
    names = sorted(names)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{domain}/{cls}".encode())])
    return [names[i] for i in rng.permutation(len(names))]


def num_test(n: int, test_fraction: float) -> int:
    if n < 2:
        return 0
    return min(n - 1, max(1, int(round(test_fraction * n))))


def plan_split(src: Path, test_fraction: float = 0.2, seed: int = 0,
               max_per_group: Optional[int] = None,
               domains: Optional[Sequence[str]] = None) -> Dict[str, List[tuple]]:
    """``{"train": [(domain, class, file name), ...], "test": [...]}`` without touching disk."""
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if not src.is_dir():
        raise SplitError(f"{src} is not a folder of <domain>/<class>/<image>")
    all_domains = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if domains:
        missing = sorted(set(domains) - set(all_domains))
        if missing:
            raise SplitError(f"domains {missing} are not in {src} (it has {all_domains})")
        all_domains = [d for d in all_domains if d in set(domains)]
    if not all_domains:
        raise SplitError(f"{src} has no domain folders (expected <domain>/<class>/<image>)")
    plan: Dict[str, List[tuple]] = {s: [] for s in SPLITS}
    for domain in all_domains:
        if SEPARATOR in domain:
            raise SplitError(f"domain name {domain!r} contains {SEPARATOR!r}")
        classes = sorted(p.name for p in (src / domain).iterdir() if p.is_dir()
                         and not p.name.startswith("."))
        for cls in classes:
            names = [p.name for p in (src / domain / cls).iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
            order = group_order(names, domain, cls, seed)
            if max_per_group is not None:
                order = order[:max_per_group]
            k = num_test(len(order), test_fraction)
            plan["test"] += [(domain, cls, n) for n in sorted(order[:k])]
            plan["train"] += [(domain, cls, n) for n in sorted(order[k:])]
    if not plan["train"]:
        raise SplitError(f"no images found under {src}/<domain>/<class>/")
    return plan


def write_split(src: Path, out: Path, test_fraction: float = 0.2, seed: int = 0,
                max_per_group: Optional[int] = None,
                domains: Optional[Sequence[str]] = None) -> dict:
    """Write the symlink trees and ``split.json``; returns the manifest. Reuses a complete split
    with the same settings; rewrites an incomplete one."""
    src = Path(os.path.expandvars(str(src)))
    if "$" in str(src):
        raise SplitError(f"{src}: an environment variable in the source path is not set")
    src = src.resolve()
    settings = {"src": str(src), "test_fraction": test_fraction, "seed": seed,
                "max_per_group": max_per_group, "domains": list(domains) if domains else None}
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        saved = json.loads(manifest_path.read_text())
        if {k: saved.get(k) for k in settings} == settings:
            return saved
        raise SplitError(f"{out} holds a split with other settings ({manifest_path}); "
                         "choose another output folder")
    plan = plan_split(src, test_fraction, seed, max_per_group, domains)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # an interrupted earlier attempt: start over
        if (out / split).exists():
            shutil.rmtree(out / split)
    counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    files: Dict[str, List[str]] = {}
    for split, items in plan.items():
        counts[split] = {}
        files[split] = []
        for domain, cls, name in items:
            link = out / split / cls / f"{domain}{SEPARATOR}{name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src / domain / cls / name)
            counts[split].setdefault(domain, {}).setdefault(cls, 0)
            counts[split][domain][cls] += 1
            files[split].append(f"{cls}/{domain}{SEPARATOR}{name}")
    manifest = dict(settings, classes=sorted({c for _, c, _ in plan["train"] + plan["test"]}),
                    domain_names=sorted({d for d, _, _ in plan["train"] + plan["test"]}),
                    sizes={s: len(plan[s]) for s in SPLITS}, counts=counts, files=files)
    write_json(manifest_path, manifest)
    return manifest


def domain_of(path: str) -> str:
    """The domain of a split file (``.../<class>/<domain>__<image>``)."""
    name = Path(path).name
    if SEPARATOR not in name:
        raise ValueError(f"{path}: not a split file name (<domain>{SEPARATOR}<image>)")
    return name.split(SEPARATOR, 1)[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adios_ssl.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder of <domain>/<class>/<image> ($VARS expanded)")
    parser.add_argument("out", help="output folder: train/, test/, split.json")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-group", type=int, default=None,
                        help="keep at most K images per domain x class (smoke runs)")
    parser.add_argument("--domains", nargs="+", default=None, help="default: every domain folder")
    args = parser.parse_args(argv)
    try:
        manifest = write_split(Path(args.src), Path(args.out), args.test_fraction, args.seed,
                               args.max_per_group, args.domains)
    except SplitError as err:
        print(f"adios_ssl.split: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: train {manifest['sizes']['train']}, test {manifest['sizes']['test']} images, "
          f"{len(manifest['classes'])} classes, domains {', '.join(manifest['domain_names'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
