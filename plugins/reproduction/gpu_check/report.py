"""The gpu-check's report: each part's steps with their status, the speed ratios, and the
science part's two reports (DomainBed's model selection, the ADIOS probes), from the folder's
``parts/*.json`` and ``science/``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from ..jobs import Report
from .settings import PARTS, SCALES


def _part(out: Path, part: str) -> Optional[dict]:
    for name in (f"{part}.json", f"{part}.partial.json"):
        path = out / "parts" / name
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return None
    return None


def report(out: Path, scale: str) -> Report:
    out = Path(out)
    settings = SCALES[scale]
    lines: List[str] = []
    if scale == "rehearsal":
        lines += ["Rehearsal: toy sizes and one or two timed steps per measurement on a shared CPU, to run "
                  "every line the GPU will run. Its ratios and accuracies exercise the code and say nothing "
                  "about speed or accuracy.", ""]
    data: Dict[str, object] = {"scale": scale, "caps_s": dict(settings.caps), "parts": {}}
    figures: List[str] = []
    compare: dict = {}
    for part in PARTS:
        record = _part(out, part)
        data["parts"][part] = record
        cap = settings.caps[part]
        if record is None:
            lines += [f"## {part} (cap {cap:g} s): not run", ""]
            continue
        partial = not (out / "parts" / f"{part}.json").exists()
        lines += [f"## {part} (cap {cap:g} s, took {record.get('seconds', 0):g} s"
                  + (", interrupted: partial record" if partial else "") + ")", "",
                  "| step | status | seconds | result |", "|---|---|---|---|"]
        for step in record["steps"]:
            lines.append(f"| {step['step']} | {step['status']} | {step.get('seconds', '-')} | "
                         f"{step.get('detail', '')} |")
        lines.append("")
    science = data["parts"].get("science")
    if science:
        db_folder, adios_folder = out / "science" / "domainbed", out / "science" / "adios"
        if (db_folder / "sweep").is_dir():
            from ..fish.domainbed.report import build_report

            rep = build_report(db_folder, settings.domainbed, scale)
            lines += ["## Science: DomainBed ColoredMNIST (DomainBed's own model selection)", "", rep.markdown, ""]
            figures += [f"science/domainbed/{f}" for f in rep.figures]
            compare.update(rep.compare)
            data["domainbed"] = rep.data
        if (adios_folder / "probes").is_dir():
            from ..adios.cpu_report import cpu_report

            rep = cpu_report(adios_folder)
            lines += ["## Science: ADIOS on PACS (frozen-feature probes)", "", rep.markdown, ""]
            figures += [f"science/adios/{f}" for f in rep.figures]
            data["adios"] = rep.data
    lines.append(f"Caps: {', '.join(f'{p} {settings.caps[p]:g} s' for p in PARTS)}; every part stops its "
                 "running step at its cap and lists the steps it did not reach.")
    return Report(markdown="\n".join(lines), data=data, figures=figures, compare=compare)
