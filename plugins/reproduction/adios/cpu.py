"""The cpu scale's jobs: every arm pretrained with solo-learn at each seed, then probed."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from ..jobs import Job, python_module
from .arms import CONFIGS, CPU, CPU_CONFIG, THREADS, Arm, CpuSettings, arm_by_key, run_name, solo_command
from .pacs import IMAGE_CACHE, data_jobs


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
        arm = arm_by_key(key)
        for seed in settings.seeds:
            run = run_name(key, seed)
            folder = f"arms/{run}"
            args = pretrain_args(out, run, arm, seed, settings.epochs, settings)
            jobs.append(Job(f"pretrain/{run}", solo_command("pretrain", "pretrain.json", args, "final.ckpt"),
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
