"""One part of the gpu-check, as a job: ``python -m reproduction.gpu_check.part PART --scale S
--cap SECONDS [--repo DIR] [--mnist DIR] [--pacs DIR]`` runs the part's steps in order until its
cap, then writes ``parts/<PART>.json``: each step's status (``ok``, ``failed: ...``,
``skipped: ...``, ``stopped at the cap``, ``not run: the cap was reached``), its seconds and what
it measured. ``parts/<PART>.partial.json`` is rewritten after every step, so a part that dies
leaves what it finished; ``parts/<PART>.json`` (the job's done file) is written at the end.
Exit status 1 when a step failed, else 0."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from runkit.jsonio import write_json

from .settings import PARTS, SCALES
from .steps import CapReached, Context, steps_of

STOPPED = "stopped at the cap"
NOT_RUN = "not run: the cap was reached"


def run_part(part: str, scale_name: str, out: Path, cap_s: float, repo: Optional[Path] = None,
             mnist: Optional[str] = None, pacs: Optional[str] = None) -> dict:
    scale = SCALES[scale_name]
    start = time.time()
    ctx = Context(out=Path(out), part=part, scale=scale, deadline=start + cap_s, repo=repo, mnist=mnist, pacs=pacs)
    steps = steps_of(part, scale)
    record = {"part": part, "scale": scale_name, "cap_s": cap_s, "steps": []}
    path = Path(out) / "parts" / f"{part}.json"
    partial = path.with_suffix(".partial.json")
    for i, (name, fn) in enumerate(steps):
        ctx.steps_left = len(steps) - i
        t0 = time.time()
        if ctx.left() <= 1:
            entry = {"step": name, "status": NOT_RUN}
        else:
            print(f"[{part}] {name} ...", flush=True)
            try:
                entry = {"step": name, **fn(ctx)}
            except CapReached:
                entry = {"step": name, "status": STOPPED}
            except Exception as err:  # noqa: BLE001 -- one step's error must not stop the others
                entry = {"step": name, "status": f"failed: {type(err).__name__}: {err}"}
            entry["seconds"] = round(time.time() - t0, 1)
            print(f"[{part}] {name}: {entry['status']} ({entry['seconds']} s)"
                  + (f": {entry['detail']}" if entry.get("detail") else ""), flush=True)
        record["steps"].append(entry)
        record["seconds"] = round(time.time() - start, 1)
        write_json(partial, record, indent=1)
    write_json(path, record, indent=1)
    partial.unlink()
    return record


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduction.gpu_check.part")
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--scale", required=True, choices=sorted(SCALES))
    parser.add_argument("--cap", type=float, required=True, help="seconds")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--repo", type=Path, default=None)
    parser.add_argument("--mnist", default=None)
    parser.add_argument("--pacs", default=None)
    args = parser.parse_args(argv)
    record = run_part(args.part, args.scale, args.out.resolve(), args.cap, args.repo, args.mnist, args.pacs)
    return 1 if any(s["status"].startswith("failed") for s in record["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
