"""An experiment's output folder: the checks before anything runs, and ``reproduce.json``, which
says which experiment and scale the folder holds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from runkit.paths import check_out_folder

from .jobs import Experiment, Job

MANIFEST = "reproduce.json"
SCALES = ("cpu", "cpu-epochs", "paper", "gpu", "rehearsal")   # each experiment has some of them


def check_args(out, experiment: Experiment, scale: str, jobs: int = 1) -> None:
    """Everything ``gradmatch reproduce`` checks before it lists, writes or runs anything
    (``--dry-run`` included): ``--jobs`` >= 1, ``--scale`` one of the experiment's, ``--out``
    a folder that can be written and that is new, empty, or the folder of this same experiment
    and scale (its ``reproduce.json``). ValueError, one line naming the flag and the fix."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if scale not in experiment.scales:
        raise ValueError(f"--scale {scale}: the {experiment.name} experiment has scales "
                         f"{', '.join(experiment.scales)}")
    out = check_out_folder(out)
    if not out.is_dir():
        return
    if (out / MANIFEST).exists():
        _check_same_experiment(out, read_manifest(out), experiment.name, scale)
    elif any(out.iterdir()):
        what = next((text for name, text in OTHER_FOLDERS.items() if (out / name).exists()),
                    "not a `gradmatch reproduce` folder")
        raise ValueError(f"--out {out} is not empty and holds no {MANIFEST} (it is {what}); choose "
                         "another --out (nothing is overwritten)")


def _check_same_experiment(out: Path, saved: dict, experiment: str, scale: str) -> None:
    if (saved["experiment"], saved["scale"]) != (experiment, scale):
        raise ValueError(f"--out {out} holds the {saved['experiment']} experiment at {saved['scale']} "
                         f"scale ({out / MANIFEST}); choose another --out, or rerun `gradmatch reproduce "
                         f"{saved['experiment']} --scale {saved['scale']}` there")


def write_manifest(out: Path, experiment: Experiment, scale: str, jobs: Sequence[Job]) -> None:
    """``<out>/reproduce.json``: which experiment and scale the folder holds (checked on rerun)."""
    path = out / MANIFEST
    if path.exists():
        _check_same_experiment(out, read_manifest(out), experiment.name, scale)
    out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment.name, "scale": scale, "jobs": [j.name for j in jobs]}
    path.write_text(json.dumps(record, indent=2))


#: what a folder written by another gradmatch command holds (file -> its command and results)
OTHER_FOLDERS = {"demo_config.json": "a `gradmatch demo` folder (its results are summary.json and demo.png)",
                 "config.json": "a `gradmatch train` run folder (its results are summary.json and log.jsonl)"}


def read_manifest(out: Path) -> dict:
    """``<out>/reproduce.json``, checked: FileNotFoundError / ValueError (one line saying what
    the folder is instead and what to pass) unless ``out`` is a ``gradmatch reproduce`` folder of
    a known experiment and scale."""
    out = Path(out)
    path = out / MANIFEST
    usage = "`gradmatch report DIR` reads the --out folder of `gradmatch reproduce EXPERIMENT --scale SCALE --out DIR`"
    fix = ('it must hold {"experiment": EXPERIMENT, "scale": SCALE} as `gradmatch reproduce` wrote it: '
           "restore it, or use another folder")
    if not out.exists():
        raise FileNotFoundError(f"{out} does not exist: {usage}")
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: {usage}")
    if not path.exists():
        what = next((text for name, text in OTHER_FOLDERS.items() if (out / name).exists()),
                    "not a `gradmatch reproduce` folder")
        raise FileNotFoundError(f"{out} is {what}: it has no {MANIFEST}; {usage}")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from None
    from . import EXPERIMENTS, get_experiment

    if not (isinstance(saved, dict) and isinstance(saved.get("experiment"), str)
            and isinstance(saved.get("scale"), str)):
        raise ValueError(f"{path} lacks the experiment or the scale; {fix}")
    if saved["experiment"] not in EXPERIMENTS:
        raise ValueError(f"{path} names experiment {saved['experiment']!r}, which is none of "
                         f"{', '.join(EXPERIMENTS)}; {fix}")
    scales = get_experiment(saved["experiment"]).scales
    if saved["scale"] not in scales:
        raise ValueError(f"{path} names scale {saved['scale']!r}, which the {saved['experiment']} "
                         f"experiment does not have ({', '.join(scales)}); {fix}")
    return saved
