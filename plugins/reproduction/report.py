"""``gradmatch report DIR``: a folder of ``gradmatch reproduce`` runs -> ``report.md`` +
``report.json`` (+ the experiment's plots), with the published numbers beside the measured ones.
"""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import List, Optional

from runkit.paths import check_out_folder

from . import get_experiment
from .folder import read_manifest
from .jobs import job_states, state_summary
from .published import published_for


def published_table(experiment: str, compare: dict) -> List[str]:
    """Markdown rows: every published number of the experiment, the measured value under the
    same (dataset, method, metric) where there is one, and whether the source was verified."""
    rows = published_for(experiment)
    if not rows:
        return ["No published number for this experiment could be verified from a primary source, so "
                "none is shown (see `reproduction/published.py`)."]
    lines = ["| dataset | method | metric | published | measured here | source | verified |",
             "|---|---|---|---|---|---|---|"]
    for p in rows:
        value = f"{p.value:.1f}" + (f" ± {p.std:.1f}" if p.std is not None else "")
        measured = compare.get(p.key)
        lines.append(f"| {p.dataset} | {p.method} | {p.metric} | {value} | "
                     f"{'-' if measured is None else f'{measured:.1f}'} | {p.source} | "
                     f"{'yes' if p.verified else 'no'} |")
    return lines


def write_report(out: Path, copy_to: Optional[Path] = None) -> Path:
    """Write ``<out>/report.md`` and ``<out>/report.json``; with ``copy_to``, also copy them and
    the figures there (for committing). Returns the markdown's path.

    Checked before anything is written: ``out`` is a ``gradmatch reproduce`` folder
    (:func:`~reproduction.folder.read_manifest`), ``copy_to`` a folder that can be written
    and not ``out`` itself."""
    out = Path(out)
    manifest = read_manifest(out)
    if copy_to is not None:
        copy_to = check_out_folder(copy_to, "--copy-to")
        if copy_to.resolve() == out.resolve():
            raise ValueError(f"--copy-to {copy_to} is the reproduce folder itself, where the report is "
                             "written anyway; pass another folder (e.g. benchmarks/results/reproduce/<experiment>)")
    experiment = get_experiment(manifest["experiment"])
    scale = manifest["scale"]
    jobs = experiment.jobs(scale, out)
    states = job_states(out, jobs)
    rep = experiment.report(out, scale)
    status = state_summary(states)
    md = [f"# {experiment.title}", "",
          f"Scale `{scale}`: {experiment.scales[scale]}.", "",
          f"Jobs: {len(jobs)} ({status}). Written by `gradmatch report` on "
          f"{datetime.date.today().isoformat()}; rerun `gradmatch reproduce {experiment.name} --scale {scale} "
          f"--out DIR` to finish or resume the rest.", "",
          rep.markdown, ""]
    md += [f"![{name}]({name})" for name in rep.figures] + [""]
    md += ["## Published numbers", ""] + published_table(experiment.name, rep.compare) + [""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    record = {"experiment": experiment.name, "scale": scale, "jobs": states, "results": rep.data,
              "published": [dict(p.__dict__, measured=rep.compare.get(p.key))
                            for p in published_for(experiment.name)]}
    (out / "report.json").write_text(json.dumps(record, indent=2, default=str))
    if copy_to is not None:
        copy_to = Path(copy_to)
        copy_to.mkdir(parents=True, exist_ok=True)
        for name in ["report.md", "report.json", *rep.figures]:
            (copy_to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / name, copy_to / name)
    return path
