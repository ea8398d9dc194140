"""PACS for the ADIOS experiment: where it is (``$PACS_DIR`` or a default folder), what a PACS
folder must hold, and the jobs every PACS scale starts with (the split and the random-init floor)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from ..jobs import Job, python_module
from .arms import FLOOR, THREADS, read_json

DATA_ENV = "PACS_DIR"
#: where the cpu scale looks for PACS when ``$PACS_DIR`` is not set (relative to the working folder)
DATA_DEFAULTS = ("data/PACS", "../shared/data/PACS")
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: environment variables the commands read, and what they must hold
ENV_HELP = {
    "PACS_DIR": "the PACS folder with <domain>/<class>/<image> (art_painting, cartoon, photo, sketch)",
    "IMAGENET100_DIR": "the ImageNet-100 folder with train/ and val/ ImageFolders "
                       "(the 100 classes of the official bash_files/imagenet100.sh)",
    "STL10_DIR": "the folder torchvision's STL10 reads (stl10_binary/ inside; solo-learn "
                 "downloads it there when missing and the machine is online)",
}


def pacs_problems(folder: Path) -> List[str]:
    """What ``folder`` lacks to be PACS as DomainBed stores it (``<domain>/<class>/<image>``,
    the 4 domains x 7 classes, each with images); empty when nothing is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["no such folder"]
    missing = []
    for domain in PACS_DOMAINS:
        if not (folder / domain).is_dir():
            missing.append(f"{domain}/")
            continue
        for cls in PACS_CLASSES:
            group = folder / domain / cls
            if not group.is_dir():
                missing.append(f"{domain}/{cls}/")
            elif not any(p.suffix.lower() in IMAGE_SUFFIXES for p in group.iterdir()):
                missing.append(f"images in {domain}/{cls}/")
    return missing


def source_pacs_dir() -> Path:
    """The PACS folder the cpu scale splits: ``$PACS_DIR``, else the first of
    :data:`DATA_DEFAULTS` that holds PACS; raises ``FileNotFoundError`` saying what is missing
    and how to fix it."""
    chosen = os.environ.get(DATA_ENV, "").strip()
    candidates = [chosen] if chosen else list(DATA_DEFAULTS)
    found = {}
    for candidate in candidates:
        problems = pacs_problems(Path(candidate).expanduser())
        if not problems:
            return Path(candidate).expanduser().resolve()
        found[candidate] = problems
    where = "; ".join(
        (f"${DATA_ENV}={c}" if chosen else c) + ": " + (
            problems[0] if problems == ["no such folder"]
            else "missing " + ", ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))
        for c, problems in found.items())
    relative = "" if chosen else f", relative to {Path.cwd()}"
    raise FileNotFoundError(
        f"PACS not found ({where}{relative}): set ${DATA_ENV} to the PACS folder, which holds "
        f"<domain>/<class>/<image> for the domains {', '.join(PACS_DOMAINS)} and the classes "
        f"{', '.join(PACS_CLASSES)} (DomainBed's `python -m domainbed.scripts.download "
        "--data_dir D` writes it to D/PACS), or run from a folder that has data/PACS")


def recorded_source(out: Path) -> Optional[str]:
    """The PACS folder an earlier split of ``out`` used (``data/split.json``), or None."""
    split = read_json(Path(out) / "data" / "split.json")
    return None if not split else split.get("src")


IMAGE_CACHE = "cache/images.pt"


def data_jobs(out: Path, settings, data_dir: Optional[str] = None) -> List[Job]:
    """The split of PACS into ``<out>/data`` and the random-init floor's probe, which every
    scale run on PACS starts with. The PACS folder is ``data_dir``, else the one an earlier
    split of ``out`` used, else :func:`source_pacs_dir` (which raises, naming the fix, when
    there is none). ``settings`` has ``test_fraction``, ``split_seed``, ``max_per_group`` and
    ``crop``."""
    out = Path(out).resolve()
    src = data_dir or recorded_source(out) or str(source_pacs_dir())
    split_args = [src, "data", "--test-fraction", str(settings.test_fraction),
                  "--seed", str(settings.split_seed)]
    if settings.max_per_group:
        split_args += ["--max-per-group", str(settings.max_per_group)]
    cache = IMAGE_CACHE
    # the random-init floor first: it fills the cache of decoded test/train images that every
    # probe reads, while the longest pretraining (ADIOS) runs beside it
    floor = Job(f"probe/{FLOOR.key}", python_module(
        "adios_ssl.probe", "--data", "data", "--ckpt", "none", "--size", str(settings.crop),
        "--seed", "0", "--out", f"probes/{FLOOR.key}.json", "--image-cache", cache,
        "--label", FLOOR.label), done=f"probes/{FLOOR.key}.json", env=THREADS, after=("split",),
        minutes=0.6)
    return [Job("split", python_module("adios_ssl.split", *split_args), done="data/split.json",
                env=THREADS, minutes=0.2), floor]
