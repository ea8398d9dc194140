"""``gradmatch reproduce adios``: ADIOS (Shi et al., ICML 2022) against its baselines.

cpu scale: SimCLR, SimCLR+ADIOS and SimCLR with the paper's fixed-mask baselines (random pixels,
MAE patches, BEiT blocks) pretrained with solo-learn on the train part of a deterministic,
stratified PACS split, then scored by frozen-feature probes (logistic regression and k-NN) on
the held-out test part, overall and per domain; a randomly initialised backbone is probed as
the floor. Every arm gets the same config (``cpu_simclr_adios``: ResNet-18, LARS, batch 32,
warm-up + cosine, the same augmentations, seed and epochs); only ``method`` /
``method_kwargs.mask_generator`` differ.

paper scale (listed, run on GPUs): the paper's runs shipped as configs in
``adios_ssl/configs`` (ImageNet100-S and STL-10 with ResNet-18, ImageNet-100 ADIOS-s) and the
official ViT-Tiny runs (``bash_files/training/{imagenet100s,stl10}/vittiny/*.sh`` of
YugeTen/adios) as overrides of those configs, each followed by ``main_linear.py``.

Jobs are subprocesses; this module imports neither ``adios_ssl`` nor solo-learn. Its own
``__main__`` (``python -m gradmatch.reproduce.adios solo pretrain|linear --marker FILE -- ARGS``)
runs ``adios-ssl pretrain|linear ARGS`` (solo-learn's script with ADIOS registered) after
expanding ``$VARS`` in ARGS (a clear error names an unset one), times it, and writes the marker
JSON that tells the launcher the job is done (with the final checkpoint linked as
``final.ckpt`` for pretraining, the last validation accuracy for linear evaluation).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from runkit.jsonio import write_json

from .core import Experiment, Job, Report, python_module, threads_env

NAME = "adios"
CONFIGS = "pkg://adios_ssl.configs"
CPU_CONFIG = "cpu_simclr_adios"
THREADS = threads_env(1)
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


@dataclass(frozen=True)
class Arm:
    """One pretraining arm of the cpu scale."""

    key: str          # folder name
    label: str        # method name in the report and the ``compare`` keys
    overrides: Tuple[str, ...]
    masks: bool       # the arm masks views (has mask pictures)


ARMS: Tuple[Arm, ...] = (
    Arm("adios", "SimCLR+ADIOS", (), True),
    Arm("simclr", "SimCLR", ("method=simclr",), False),
    Arm("random", "SimCLR+random mask", ("++method_kwargs.mask_generator=random",), True),
    Arm("mae", "SimCLR+MAE mask", ("++method_kwargs.mask_generator=mae",), True),
    Arm("beit", "SimCLR+BEiT mask", ("++method_kwargs.mask_generator=beit",), True),
)
FLOOR = Arm("random_init", "random init (no pretraining)", (), False)
#: ADIOS-s (the paper's sparse variant: one random mask of the N per image), for the epochs scale
ADIOS_S = Arm("adios_s", "SimCLR+ADIOS-s", ("++method_kwargs.single_mask=true",), True)

LINEAR_METRIC = "linear top-1 %"
KNN_METRIC = "k-NN top-1 %"
DATASET = "PACS"


@dataclass(frozen=True)
class CpuSettings:
    """What the cpu scale runs; every arm gets all of it."""

    epochs: int = 2
    crop: int = 32
    batch: int = 32
    seeds: Tuple[int, ...] = (0, 1)           # pretraining seeds (the split and probes stay fixed)
    test_fraction: float = 0.2
    split_seed: int = 0
    max_per_group: Optional[int] = None      # images per domain x class (None: all)
    arms: Tuple[str, ...] = tuple(a.key for a in ARMS)
    extra: Tuple[str, ...] = ()               # further Hydra overrides for every arm
    #: CPU-seconds per pretraining step (batch 32, 32 px, one thread, data loading included),
    #: measured on the shared 2-core machine as the difference between 4- and 16/28-batch runs:
    #: ADIOS 1.19-1.22, SimCLR 0.43-0.83, random 0.44-0.60, MAE 0.45-0.73, BEiT 0.58 (the
    #: spread is the machine's other load). The jobs' estimates use these middle values.
    step_seconds: Dict[str, float] = field(default_factory=lambda: {
        "adios": 1.2, "simclr": 0.55, "random": 0.55, "mae": 0.6, "beit": 0.65})
    train_images: int = 7993


CPU = CpuSettings()


def _arm(key: str) -> Arm:
    for arm in ARMS + (ADIOS_S,):
        if arm.key == key:
            return arm
    raise ValueError(f"unknown arm {key!r}: choose from {[a.key for a in ARMS + (ADIOS_S,)]}")


def _run_name(arm: str, seed: int) -> str:
    """The run folder of ``arm`` at pretraining ``seed``: the arm's key for seed 0 (the folder
    names of the first, one-seed cpu scale, so that its finished runs are kept), else
    ``<arm>_seed<seed>``."""
    return arm if seed == 0 else f"{arm}_seed{seed}"


def _seed_of(run: str) -> int:
    return int(run.split("_seed")[1]) if "_seed" in run else 0


def _key_of(run: str) -> str:
    """The arm key of a run folder (``adios_seed1`` -> ``adios``)."""
    return run.split("_seed")[0]


def _solo(script: str, marker: str, args: Sequence[str], link: Optional[str] = None,
          keep_epochs: Sequence[int] = ()) -> Tuple[str, ...]:
    extra = (("--link", link) if link else ()) + (
        ("--keep-epochs", ",".join(map(str, keep_epochs))) if keep_epochs else ())
    return python_module(f"gradmatch.reproduce.{NAME}", "solo", script, "--marker", marker, *extra,
                         "--", *args)


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
    split = _read(Path(out) / "data" / "split.json")
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


def pretrain_args(out: Path, run: str, arm: Arm, seed: int, epochs: int, settings) -> Tuple[str, ...]:
    """solo-learn's ``main_pretrain.py`` arguments of ``arm`` at ``seed`` for ``epochs``: the
    cpu config, the split's train images, the crop and batch of ``settings`` and its extra
    overrides."""
    return ("--config-path", CONFIGS, "--config-name", CPU_CONFIG,
            f"data.train_path={Path(out).resolve() / 'data' / 'train'}", f"max_epochs={epochs}",
            f"augmentations.0.crop_size={settings.crop}",
            f"optimizer.batch_size={settings.batch}", "data.num_workers=0",
            f"++seed={seed}", f"name=pacs-{run}") + arm.overrides + tuple(settings.extra)


def cpu_jobs(out: Path, settings: CpuSettings = CPU, data_dir: Optional[str] = None) -> List[Job]:
    """The cpu scale's jobs for ``settings`` (tests pass tiny settings); the PACS folder as in
    :func:`data_jobs`."""
    out = Path(out).resolve()
    jobs = data_jobs(out, settings, data_dir)
    cache = IMAGE_CACHE
    steps = settings.epochs * (settings.train_images // settings.batch)
    probes = []
    for key in settings.arms:
        arm = _arm(key)
        for seed in settings.seeds:
            run = _run_name(key, seed)
            folder = f"arms/{run}"
            args = pretrain_args(out, run, arm, seed, settings.epochs, settings)
            jobs.append(Job(f"pretrain/{run}", _solo("pretrain", "pretrain.json", args, "final.ckpt"),
                            done=f"{folder}/pretrain.json", cwd=folder, env=THREADS, after=("split",),
                            minutes=round(0.25 + steps * settings.step_seconds.get(key, 1.0) / 60, 1)))
            probe_args = ["--data", "data", "--ckpt", f"{folder}/final.ckpt", "--out",
                          f"probes/{run}.json", "--image-cache", cache, "--label", arm.label]
            if arm.masks:
                probe_args += ["--masks", f"masks_{run}_test.png"]
            probes.append(Job(f"probe/{run}", python_module("adios_ssl.probe", *probe_args),
                              done=f"probes/{run}.json", env=THREADS, after=(f"pretrain/{run}",),
                              minutes=0.5))
    return jobs + probes


# ----------------------------------------------------------------------------- paper scale

IMAGENET100 = ("data.train_path=$IMAGENET100_DIR/train", "data.val_path=$IMAGENET100_DIR/val")
STL10 = ("data.train_path=$STL10_DIR", "data.val_path=$STL10_DIR")


@dataclass(frozen=True)
class PaperRun:
    name: str
    config: str
    dataset: str          # for the report / compare keys
    linear_dataset: str   # solo-learn's data.dataset for main_linear.py
    method: str           # compare key method
    backbone: str
    data: Tuple[str, ...]
    overrides: Tuple[str, ...] = ()
    source: str = ""


def _vit(img_size: int = 96, dynamic: bool = False) -> Tuple[str, ...]:
    out = ("backbone.name=vit_tiny", f"++backbone.kwargs.img_size={img_size}")
    return out + (("++backbone.kwargs.dynamic_img_size=true",) if dynamic else ())


_OFFICIAL = "YugeTen/adios bash_files/training/"

#: the official runs. ViT-Tiny: the official script's values where they differ from the
#: ResNet-18 config of the same dataset and method (learning rates x 256/batch, because
#: solo-learn scales them by batch/256 and the official code did not; official SimSiam masks
#: both views: use_symmetry_mask -> symmetric_pairs, use_no_mask -> pairs "none",
#: use_both_mask -> pairs "both"; num_blocks -> unet_blocks). ImageNet100-S ViTs get
#: dynamic_img_size because solo-learn's main_linear.py evaluates ImageNet-100 at 224 px.
PAPER_RUNS: Tuple[PaperRun, ...] = (
    PaperRun("imagenet100s_simclr_adios", "imagenet100s_simclr_adios", "ImageNet100-S", "imagenet100",
             "SimCLR+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/simclr_adios.sh"),
    PaperRun("imagenet100s_byol_adios", "imagenet100s_byol_adios", "ImageNet100-S", "imagenet100",
             "BYOL+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/byol_adios.sh"),
    PaperRun("imagenet100s_simsiam_adios", "imagenet100s_simsiam_adios", "ImageNet100-S", "imagenet100",
             "SimSiam+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/simsiam_adios.sh"),
    PaperRun("stl10_simclr_adios", "stl10_simclr_adios", "STL10", "stl10", "SimCLR+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/simclr_adios.sh"),
    PaperRun("stl10_byol_adios", "stl10_byol_adios", "STL10", "stl10", "BYOL+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/byol_adios.sh"),
    PaperRun("stl10_simsiam_adios", "stl10_simsiam_adios", "STL10", "stl10", "SimSiam+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/simsiam_adios.sh"),
    PaperRun("imagenet100_simclr_adios_s", "imagenet100_simclr_adios_s", "ImageNet100", "imagenet100",
             "SimCLR+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/simclr_adios_s.sh"),
    PaperRun("imagenet100_byol_adios_s", "imagenet100_byol_adios_s", "ImageNet100", "imagenet100",
             "BYOL+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/byol_adios_s.sh"),
    PaperRun("imagenet100_simsiam_adios_s", "imagenet100_simsiam_adios_s", "ImageNet100", "imagenet100",
             "SimSiam+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/simsiam_adios_s.sh"),
    # ViT-Tiny, ImageNet100-S (batch 128: official lrs x 2)
    PaperRun("imagenet100s_simclr_adios_vittiny", "imagenet100s_simclr_adios", "ImageNet100-S",
             "imagenet100", "SimCLR+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_entropy=0.0",
                               "method_kwargs.alpha_sparsity=0.8890717462273039",
                               "optimizer.lr=0.23144085943616454",
                               "method_kwargs.mask_lr=0.06680251147879538", "max_epochs=300",
                               "method_kwargs.N=6", "method_kwargs.mask_fbase=16",
                               "method_kwargs.unet_norm=gn", "name=imagenet100s_simclr_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/simclr_adios.sh"),
    PaperRun("imagenet100s_byol_adios_vittiny", "imagenet100s_byol_adios", "ImageNet100-S",
             "imagenet100", "BYOL+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_sparsity=0.9517975576926448",
                               "optimizer.lr=0.4282225581807691",
                               "method_kwargs.mask_lr=0.6527237683787123", "max_epochs=300",
                               "method_kwargs.mask_fbase=8", "name=imagenet100s_byol_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/byol_adios.sh"),
    PaperRun("imagenet100s_simsiam_adios_vittiny", "imagenet100s_simsiam_adios", "ImageNet100-S",
             "imagenet100", "SimSiam+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_entropy=0.0",
                               "method_kwargs.alpha_sparsity=0.7217629549008437",
                               "optimizer.lr=0.9937537361871212",
                               "method_kwargs.mask_lr=0.1331205473338852", "max_epochs=300",
                               "method_kwargs.pairs=[masked,both]",
                               "name=imagenet100s_simsiam_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/simsiam_adios.sh"),
    # ViT-Tiny, STL-10
    PaperRun("stl10_simclr_adios_vittiny", "stl10_simclr_adios", "STL10", "stl10",
             "SimCLR+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.39131043617986705",
                         "optimizer.batch_size=128", "optimizer.lr=0.205046959722204",
                         "optimizer.classifier_lr=0.2", "method_kwargs.mask_lr=0.1882127136224662",
                         "optimizer.weight_decay=0.0001", "max_epochs=200", "method_kwargs.N=4",
                         "method_kwargs.mask_fbase=32", "method_kwargs.proj_output_dim=128",
                         "name=stl10_simclr_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/simclr_adios.sh"),
    PaperRun("stl10_byol_adios_vittiny", "stl10_byol_adios", "STL10", "stl10",
             "BYOL+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.8269158678071891",
                         "optimizer.batch_size=64", "optimizer.lr=1.7758868423863299",
                         "optimizer.classifier_lr=0.4", "method_kwargs.mask_lr=0.8185599963650351",
                         "optimizer.weight_decay=1e-05", "max_epochs=200",
                         "method_kwargs.mask_fbase=32", "name=stl10_byol_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/byol_adios.sh"),
    PaperRun("stl10_simsiam_adios_vittiny", "stl10_simsiam_adios", "STL10", "stl10",
             "SimSiam+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.8581936366173779",
                         "optimizer.lr=0.5835524675418786", "method_kwargs.mask_lr=0.1863364948985896",
                         "method_kwargs.pairs=[masked]", "method_kwargs.symmetric_pairs=true",
                         "optimizer.weight_decay=1e-05", "max_epochs=200",
                         "augmentations.0.color_jitter.brightness=0.4",
                         "augmentations.0.color_jitter.contrast=0.4",
                         "augmentations.0.color_jitter.saturation=0.4",
                         "augmentations.0.color_jitter.hue=0.1",
                         "method_kwargs.mask_fbase=16", "method_kwargs.proj_output_dim=2048",
                         "method_kwargs.unet_blocks=4", "name=stl10_simsiam_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/simsiam_adios.sh"),
)

#: main_linear.py as the official bash_files/evaluation/linear.sh: SGD lr 0.1 at batch 128
#: (0.2 in solo-learn's per-256 scaling), no weight decay, steps at 60 and 80, 100 epochs
PAPER_LINEAR = ("accelerator=gpu", "devices=[0]", "strategy=ddp", "sync_batchnorm=true",
                "precision=16-mixed", "optimizer.batch_size=128", "optimizer.lr=0.2",
                "optimizer.weight_decay=0", "scheduler.lr_decay_steps=[60,80]", "max_epochs=100",
                "data.num_workers=8")


def paper_jobs(out: Path) -> List[Job]:
    out = Path(out).resolve()
    jobs = []
    for run in PAPER_RUNS:
        folder = f"paper/{run.name}"
        pre = ("--config-path", CONFIGS, "--config-name", run.config) + run.data + run.overrides
        jobs.append(Job(f"pretrain/{run.name}", _solo("pretrain", "../pretrain.json", pre, "../final.ckpt"),
                        done=f"{folder}/pretrain.json", cwd=f"{folder}/pretrain"))
        backbone = tuple(o for o in run.overrides if o.startswith(("backbone.", "++backbone.")))
        lin = ("--config-path", CONFIGS, "--config-name", "cpu_linear") + PAPER_LINEAR + (
            f"data.dataset={run.linear_dataset}",) + run.data + (
            f"backbone.name={run.backbone}", f"pretrain_method={_method_of(run.config)}",
            f"pretrained_feature_extractor={out / folder / 'final.ckpt'}",
            f"name=linear-{run.name}") + tuple(b for b in backbone if not b.startswith("backbone.name"))
        jobs.append(Job(f"linear/{run.name}", _solo("linear", "../linear.json", lin),
                        done=f"{folder}/linear.json", cwd=f"{folder}/linear",
                        after=(f"pretrain/{run.name}",)))
    return jobs


def _method_of(config: str) -> str:
    """``imagenet100_simclr_adios_s`` -> ``simclr_adios`` (the method the config trains)."""
    method = config.split("_", 1)[1]
    return method[:-2] if method.endswith("_adios_s") else method


def jobs(scale: str, out: Path) -> List[Job]:
    if scale == "cpu":
        return cpu_jobs(out)
    if scale == "cpu-epochs":
        from .adios_epochs import epochs_jobs

        return epochs_jobs(out)
    if scale == "paper":
        return paper_jobs(out)
    raise ValueError(f"adios: unknown scale {scale!r}")


# ----------------------------------------------------------------------------- report

def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(out: Path, scale: str) -> Report:
    if scale == "cpu-epochs":
        from .adios_epochs import epochs_report

        return epochs_report(Path(out))
    return cpu_report(Path(out)) if scale == "cpu" else paper_report(Path(out))


def _expected_runs(out: Path) -> List[str]:
    """The probe runs of this folder: from its manifest (``reproduce.json``) when there is
    one, else every arm at the default seeds and the floor."""
    manifest = _read(out / "reproduce.json")
    if manifest and manifest.get("jobs"):
        return [j.split("/", 1)[1] for j in manifest["jobs"] if j.startswith("probe/")]
    return [_run_name(a.key, seed) for a in ARMS for seed in CPU.seeds] + [FLOOR.key]


def _arm_of(run: str) -> Optional[Arm]:
    base = _key_of(run)
    if base == FLOOR.key:
        return FLOOR
    return next((a for a in ARMS if a.key == base), None)


def _common_settings(argvs: List[List[str]]) -> List[str]:
    """Hydra overrides shared by every run (its data path, name and seed aside)."""
    def overrides(argv):
        own = ("data.train_path=", "name=", "++seed=")
        return [a for a in argv if "=" in a and not a.startswith(own)]

    sets = [overrides(a) for a in argvs]
    return [a for a in sets[0] if all(a in s for s in sets)] if sets else []


def cpu_report(out: Path) -> Report:
    out = Path(out)
    split = _read(out / "data" / "split.json")
    expected = _expected_runs(out)
    found = {p.stem for p in (out / "probes").glob("*.json")}
    order = [a.key for a in ARMS] + [FLOOR.key]

    def rank(run: str) -> Tuple[int, str]:
        base = _key_of(run)
        return (order.index(base) if base in order else len(order), run)

    runs = sorted(set(expected) | found, key=rank)
    rows, missing, argvs = [], [], []
    for run in runs:
        arm = _arm_of(run)
        probe = _read(out / "probes" / f"{run}.json")
        pre = _read(out / "arms" / run / "pretrain.json")
        if arm is None:
            continue
        if probe is None:
            missing.append(run)
            continue
        if pre is not None:
            argvs.append(pre["argv"])
        row = {"run": run, "arm": arm.label, "seed": _seed_of(run),
               "linear": probe["linear"]["overall"], "knn": probe["knn"]["overall"],
               "linear_per_domain": probe["linear"]["per_domain"],
               "knn_per_domain": probe["knn"]["per_domain"],
               "n_test": probe["n_test"], "n_train": probe["n_train"], "size": probe["size"],
               "linear_converged": probe["linear"].get("converged"),
               "pretrain_cpu_min": None if pre is None else pre["cpu_s"] / 60,
               "pretrain_wall_min": None if pre is None else pre["wall_s"] / 60,
               "epochs": None if pre is None else pre.get("epochs"),
               "probe_cpu_min": probe["cpu_seconds"]["total"] / 60}
        rows.append(row)
    arms = _arm_summary(rows)
    compare = {(DATASET, a["arm"], metric): a[key] for a in arms if a["arm"] != FLOOR.label
               for key, metric in (("linear", LINEAR_METRIC), ("knn", KNN_METRIC))}
    seeds = sorted({r["seed"] for r in rows if r["arm"] != FLOOR.label})
    n_seeds = max((a["n"] for a in arms if a["arm"] != FLOOR.label), default=0)
    common = _common_settings(argvs)
    domains = sorted({d for r in rows for d in r["linear_per_domain"]})
    short = {d: d.split("_")[0] for d in domains}

    lines = ["Frozen-feature probes on held-out PACS images (test top-1 %, the 4 domains pooled; "
             "linear = logistic regression on standardised features, k-NN = 20 nearest "
             "neighbours by cosine similarity; both fitted on the train images' features). "
             "Mean ± sample std over the pretraining seeds, each seed in brackets.", ""]
    head = ["arm", "seeds", "linear", "k-NN"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        cells = [_mean_cell(a, k) for k in ("linear", "knn")]
        lines.append("| " + " | ".join([a["arm"], str(a["n"])] + cells) + " |")
    lines += ["", "Each run:", ""]
    head = ["arm", "seed", "linear", "k-NN", "pretrain CPU-min", "pretrain wall-min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["arm"], "-" if r["arm"] == FLOOR.label else str(r["seed"]),
                                        _fmt(r["linear"]), _fmt(r["knn"]),
                                        _fmt(r["pretrain_cpu_min"]), _fmt(r["pretrain_wall_min"])]) + " |")
    if domains:
        lines += ["", "Per test domain (linear / k-NN):", ""]
        head = ["arm"] + [short[d] for d in domains]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [f"{_fmt(r['linear_per_domain'].get(d))} / {_fmt(r['knn_per_domain'].get(d))}"
                     for d in domains]
            name = r["arm"] + ("" if r["arm"] == FLOOR.label else f" (seed {r['seed']})")
            lines.append("| " + " | ".join([name] + cells) + " |")
    lines.append("")
    if split:
        lines.append(f"Split: {split['sizes']['train']} train / {split['sizes']['test']} test images "
                     f"({100 * split['test_fraction']:.0f} % of each domain x class held out, seed "
                     f"{split['seed']}; domains {', '.join(split['domain_names'])}; "
                     f"{len(split['classes'])} classes"
                     + (f"; at most {split['max_per_group']} images per domain x class"
                        if split.get("max_per_group") else "")
                     + "). Pretraining and the probes' fits see the train images only.")
    if common:
        lines.append(f"Pretraining, the same for every arm: solo-learn `main_pretrain.py` with "
                     f"`--config-name {CPU_CONFIG}` and " + " ".join(f"`{a}`" for a in common)
                     + "; the arms differ only in " + ", ".join(
                         f"{a.label}: " + (" ".join(f"`{o}`" for o in a.overrides) or "the config's method")
                         for a in ARMS)
                     + f"; each arm is pretrained at `++seed=` {', '.join(map(str, seeds))}.")
    if rows:
        n_test = rows[0]["n_test"]
        se = 100 * math.sqrt(0.25 / n_test)
        lines += ["", "Honest note: a budget run, not the paper's setting. The paper pretrains for "
                  "200-500 epochs at 96-224 px on ImageNet-100 or STL-10 and probes with a "
                  "100-epoch linear layer; here every arm gets the same few epochs at small "
                  f"crops ({rows[0]['size']} px) on {rows[0]['n_train']} PACS images, "
                  f"{n_seeds} pretraining seed{'s' if n_seeds != 1 else ''}. "
                  f"With {n_test} test images one accuracy has a binomial standard error of up to "
                  f"{se:.1f} points, and seeds move it further: differences of a few points "
                  "between arms are not evidence for or against ADIOS. Compare each arm with the "
                  "random-init row, the floor any pretraining has to beat. The baselines hide "
                  "parts of one view with one fixed mask (the MAE mask uses 16-px patches: a "
                  f"{max(1, rows[0]['size'] // 16)} x {max(1, rows[0]['size'] // 16)} grid at "
                  f"{rows[0]['size']} px); ADIOS trains N masks and costs 2-3 times a SimCLR step. "
                  "Nothing is published for PACS."]
    if missing:
        lines += ["", f"Not finished (no probe result): {', '.join(missing)}."]

    pictures = []
    for run in runs:
        shots = sorted((out / "arms" / run).glob("trained_models/*/*/masks/masks-ep=*.png"),
                       key=lambda p: int(re.search(r"ep=(\d+)", p.name).group(1)))
        if shots:
            name = f"masks_{run}_train.png"
            shutil.copyfile(shots[-1], out / name)
            pictures.append((name, f"{run}: the masker's masks of the first training crops of the "
                                   f"last epoch ({shots[-1].name}, written during training)"))
        if (out / f"masks_{run}_test.png").exists():
            pictures.append((f"masks_{run}_test.png", f"{run}: masks on held-out test images, "
                                                      "2 per domain"))
    figures = []
    if rows:
        plot = _bar_plot(out, arms)
        if plot:
            figures.append(plot)
    figures += [p for p, _ in pictures]
    if pictures:
        lines += ["", "Mask pictures (bright = hidden; the last column colours each pixel by its "
                      "strongest mask, uniform for the one-mask baselines):"]
        lines += [f"- `{p}`: {why}" for p, why in pictures]
    data = {"experiment": NAME, "scale": "cpu", "dataset": DATASET, "arms": arms, "rows": rows,
            "split": None if split is None else {k: split.get(k) for k in (
                "src", "test_fraction", "seed", "max_per_group", "sizes", "domain_names",
                "classes", "counts")},
            "pretrain_overrides": common, "missing": missing,
            "probe_settings": {"linear": "StandardScaler + LogisticRegression(C=1.0, lbfgs, max_iter=1000)",
                               "knn": "k=20, cosine, uniform vote",
                               "features": "backbone output, eval mode, images resized to the crop size"}}
    return Report(markdown="\n".join(lines), data=data, figures=figures, compare=compare)


def _arm_summary(rows: List[dict]) -> List[dict]:
    """One entry per arm, in the rows' order: the mean of its runs' probe accuracies (%) and
    each seed's value."""
    arms: Dict[str, dict] = {}
    for r in rows:
        a = arms.setdefault(r["arm"], {"arm": r["arm"], "linear_by_seed": {}, "knn_by_seed": {}})
        a["linear_by_seed"][r["seed"]] = r["linear"]
        a["knn_by_seed"][r["seed"]] = r["knn"]
    for a in arms.values():
        a["n"] = len(a["linear_by_seed"])
        for k in ("linear", "knn"):
            values = list(a[f"{k}_by_seed"].values())
            a[k] = sum(values) / len(values)
            a[f"{k}_std"] = (math.sqrt(sum((v - a[k]) ** 2 for v in values) / (len(values) - 1))
                             if len(values) > 1 else None)
    return list(arms.values())


def _mean_cell(arm: dict, key: str) -> str:
    """``mean ± std (seed values)`` of ``arm[key]``; the bare value for one seed."""
    if arm[f"{key}_std"] is None:
        return _fmt(arm[key])
    values = " / ".join(_fmt(v) for v in arm[f"{key}_by_seed"].values())
    return f"{_fmt(arm[key])} ± {_fmt(arm[f'{key}_std'])} ({values})"


def _bar_plot(out: Path, arms: List[dict]) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    labels = [a["arm"].replace("SimCLR+", "+").replace(" (no pretraining)", "") for a in arms]
    x = list(range(len(arms)))
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.6))
    w = 0.38
    for shift, key, label in ((-w / 2, "linear", "linear"), (w / 2, "knn", "k-NN (k=20)")):
        bars = ax.bar([i + shift for i in x], [a[key] for a in arms], w, label=f"{label}, mean")
        for i, a in enumerate(arms):
            seeds = list(a[f"{key}_by_seed"].values())
            if len(seeds) > 1:   # each seed as a dot on its bar
                ax.plot([i + shift] * len(seeds), seeds, "k.", markersize=4)
            ax.text(i + shift, max(seeds) + 0.5, f"{a[key]:.1f}", ha="center", fontsize=7,
                    color=bars.patches[0].get_facecolor())
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8, rotation=15)
    ax.set_ylabel("test top-1 % (PACS, 4 domains)")
    ax.set_ylim(0, max(max(max(a["linear_by_seed"].values()), max(a["knn_by_seed"].values()))
                       for a in arms) * 1.15 + 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("ADIOS vs SimCLR and fixed masks: frozen-feature probes", fontsize=9)
    fig.tight_layout()
    name = "adios_probe_accuracy.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def paper_report(out: Path) -> Report:
    rows, compare = [], {}
    for run in PAPER_RUNS:
        lin = _read(out / "paper" / run.name / "linear.json")
        pre = _read(out / "paper" / run.name / "pretrain.json")
        acc = None if lin is None else lin.get("val_acc1")
        rows.append({"run": run.name, "dataset": run.dataset, "method": run.method,
                     "backbone": run.backbone, "linear_top1": acc, "source": run.source,
                     "pretrain_wall_h": None if pre is None else pre["wall_s"] / 3600})
        if acc is not None:
            compare[(run.dataset, run.method, LINEAR_METRIC)] = acc
    lines = ["| run | dataset | method | linear top-1 % | pretrain wall-h |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['dataset']} | {r['method']} | {_fmt(r['linear_top1'])} | "
              f"{_fmt(r['pretrain_wall_h'])} |" for r in rows]
    done = sum(r["linear_top1"] is not None for r in rows)
    lines += ["", f"{done} of {len(rows)} runs evaluated (main_linear.py, 100 epochs; the "
                  "ImageNet-100 runs are evaluated at solo-learn's 224 px)."]
    return Report(markdown="\n".join(lines), data={"experiment": NAME, "scale": "paper", "rows": rows},
                  compare=compare)


EXPERIMENT = Experiment(
    name=NAME,
    title="ADIOS: adversarial masking for self-supervised learning (SimCLR, PACS probes)",
    scales={
        "cpu": ("PACS (4 domains, 7 classes) split 80/20 per domain x class (7,993 train / 1,998 "
                "test images, seed 0); SimCLR, SimCLR+ADIOS (N=4) and SimCLR with random / MAE / "
                "BEiT fixed masks pretrained with solo-learn (cpu_simclr_adios: ResNet-18, LARS, "
                "batch 32, 1 warm-up epoch + cosine) on the train images, reduced to 32 px crops "
                "(paper 96-224 px) and 2 epochs (paper 200-500), pretraining seeds 0 and 1; "
                "frozen-feature linear and k-NN probes on the test images, overall and per "
                "domain, plus a random-init floor. About 35-40 CPU-minutes per seed (2 jobs at a "
                "time on 2 cores: about 22 minutes per seed); ADIOS is 2-3 times a SimCLR step"),
        "cpu-epochs": ("the cpu scale's PACS split, recipe and probes; SimCLR, SimCLR+ADIOS and "
                       "SimCLR+ADIOS-s (one random mask of N=4 per image) pretrained for 10 epochs "
                       "at 32 px, one seed, each probed after epochs 2, 5 and 10 (the kept "
                       "checkpoints of one 10-epoch run), plus the random-init floor. About 1.8 "
                       "CPU-hours (2 jobs at a time on 2 cores: about 1 hour); resumable from the "
                       "last finished epoch"),
        "paper": ("the paper's runs on GPUs: ImageNet100-S and STL-10 (ResNet-18: SimCLR, BYOL, "
                  "SimSiam + ADIOS; ViT-Tiny: the official vittiny scripts as overrides) and "
                  "ImageNet-100 ADIOS-s, each followed by main_linear.py (30 jobs; set "
                  "$IMAGENET100_DIR and $STL10_DIR; run times not estimated here)"),
    },
    jobs=jobs,
    report=report,
)


# ----------------------------------------------------------------------------- job wrapper

_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand(args: Sequence[str], environ=None) -> List[str]:
    """``$VAR`` / ``${VAR}`` replaced from the environment; an unset one raises ``KeyError``
    with what it must hold."""
    environ = os.environ if environ is None else environ

    def sub(match):
        name = match.group(1) or match.group(2)
        if not environ.get(name):
            raise KeyError(f"${name} is not set: export {name}=<{ENV_HELP.get(name, 'a path')}>")
        return environ[name]

    return [_VAR.sub(sub, a) for a in args]


def _newest(folder: Path, pattern: str) -> Optional[Path]:
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _last_metrics(cwd: Path) -> dict:
    import csv

    log = _newest(cwd, "lightning_logs/*/metrics.csv")
    if log is None:
        return {}
    last: Dict[str, float] = {}
    with log.open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    try:
                        last[k] = float(v)
                    except ValueError:
                        pass
    return last


def _checkpoint_dir(args: Sequence[str]) -> str:
    for a in args:
        if a.lstrip("+").startswith("checkpoint.dir="):
            return a.split("=", 1)[1]
    return "trained_models"


def _epoch_of(ckpt: Path) -> int:
    """The epoch index in a solo-learn checkpoint name (``...-ep=4.ckpt`` -> 4; -1 if none)."""
    found = re.search(r"ep=(\d+)\.ckpt$", ckpt.name)
    return int(found.group(1)) if found else -1


def keep_epochs_args(cwd: Path, args: Sequence[str]) -> List[str]:
    """The overrides that keep every epoch's checkpoint and resume from the latest one.

    solo-learn deletes the previous checkpoint unless ``checkpoint.keep_prev``; with it kept,
    its AutoResumer resumes from whichever ``.ckpt`` a folder lists first
    (``solo/utils/auto_resumer.py``: ``[... if f.endswith(".ckpt")][0]``), which need not be the
    last. So auto-resume is switched off and the latest epoch's checkpoint, when there is one,
    is passed as ``resume_from_checkpoint``."""
    extra = ["++checkpoint.keep_prev=true", "auto_resume.enabled=false"]
    found = sorted((cwd / _checkpoint_dir(args)).glob("*/*/*.ckpt"), key=_epoch_of)
    if found:
        extra.append(f"++resume_from_checkpoint='{found[-1].resolve()}'")  # quoted: the name has '='
    return extra


def link_epochs(cwd: Path, args: Sequence[str], epochs: Sequence[int]) -> Dict[int, str]:
    """``epoch<e>.ckpt`` in ``cwd`` linked to the checkpoint written after ``e`` epochs (solo-learn
    numbers them from 0: ``ep=<e-1>``), for each ``e``; the other epochs' checkpoints but the
    last are deleted. Raises FileNotFoundError naming a missing epoch."""
    found: Dict[int, Path] = {}
    for ckpt in sorted((cwd / _checkpoint_dir(args)).glob("*/*/*.ckpt"), key=lambda p: p.stat().st_mtime):
        found[_epoch_of(ckpt)] = ckpt   # the newest file of an epoch (a resumed run may rewrite it)
    linked = {}
    for e in epochs:
        if e - 1 not in found:
            raise FileNotFoundError(f"no checkpoint of epoch {e} (ep={e - 1}) under {cwd / _checkpoint_dir(args)}")
        _symlink(found[e - 1], cwd / f"epoch{e}.ckpt")
        linked[e] = str(found[e - 1])
    last = max(found)
    keep = {str(p) for p in linked.values()} | {str(found[last])}
    for ckpt in (cwd / _checkpoint_dir(args)).glob("*/*/*.ckpt"):
        if str(ckpt) not in keep:
            ckpt.unlink()
    return linked


def _symlink(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (relative), replaced atomically."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target.resolve(), link.resolve().parent))
    tmp.replace(link)


def run_solo(script: str, marker: Path, args: Sequence[str], link: Optional[Path] = None,
             keep_epochs: Sequence[int] = ()) -> int:
    """Run ``adios-ssl <script> ARGS`` here, then write ``marker`` (see the module docstring).
    ``keep_epochs``: pretraining keeps the checkpoints after those epochs, linked as
    ``epoch<e>.ckpt`` (:func:`link_epochs`), and resumes from its latest checkpoint."""
    import resource
    import subprocess
    import time

    try:
        args = expand(args)
    except KeyError as err:
        print(f"gradmatch reproduce adios: {err.args[0]}", file=sys.stderr)
        return 2
    cwd = Path.cwd()
    if keep_epochs:
        args = list(args) + keep_epochs_args(cwd, args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    rc = subprocess.call([sys.executable, "-m", "adios_ssl.cli", script, *args])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"script": script, "argv": list(args), "wall_s": time.time() - start,
              "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    if rc != 0:
        return rc
    metrics = _last_metrics(cwd)
    if script == "pretrain":
        found = sorted((cwd / _checkpoint_dir(args)).glob("*/*/*.ckpt"),
                       key=lambda p: (_epoch_of(p), p.stat().st_mtime))
        ckpt = found[-1] if found else None
        if ckpt is None:
            print(f"gradmatch reproduce adios: no checkpoint under {cwd / _checkpoint_dir(args)}",
                  file=sys.stderr)
            return 3
        found = re.search(r"ep=(\d+)", ckpt.name)
        run_args = _read(ckpt.parent / "args.json") or {}
        epochs = run_args.get("max_epochs")
        if found and epochs is not None and int(found.group(1)) != int(epochs) - 1:
            print(f"gradmatch reproduce adios: {ckpt} is not the last epoch's ({epochs})",
                  file=sys.stderr)
            return 3
        if link is not None:
            link = Path(link)
            _symlink(ckpt, link)
        if keep_epochs:
            try:
                record["epoch_ckpts"] = link_epochs(cwd, args, keep_epochs)
            except FileNotFoundError as err:
                print(f"gradmatch reproduce adios: {err}", file=sys.stderr)
                return 3
        record.update({"ckpt": str(ckpt), "link": None if link is None else str(link),
                       "epochs": epochs,
                       "masks": sorted(str(p) for p in (ckpt.parent / "masks").glob("*.png")),
                       "last_metrics": metrics})
    else:
        record.update({"val_acc1": metrics.get("val_acc1"), "val_acc5": metrics.get("val_acc5"),
                       "last_metrics": metrics})
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, record, indent=1)  # strict JSON: a NaN metric is written as null
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    else:
        rest = []
    parser = argparse.ArgumentParser(prog="python -m gradmatch.reproduce.adios")
    sub = parser.add_subparsers(dest="command", required=True)
    solo = sub.add_parser("solo", help="run adios-ssl pretrain|linear ARGS and write a marker")
    solo.add_argument("script", choices=("pretrain", "linear"))
    solo.add_argument("--marker", required=True, type=Path)
    solo.add_argument("--link", type=Path, default=None, help="symlink to the final checkpoint")
    solo.add_argument("--keep-epochs", default="",
                      help="comma-separated epochs whose checkpoints are kept as epoch<E>.ckpt")
    args = parser.parse_args(argv)
    keep = [int(e) for e in args.keep_epochs.split(",") if e.strip()]
    return run_solo(args.script, args.marker, rest, args.link, keep)


if __name__ == "__main__":
    sys.exit(main())
