"""``gradmatch reproduce gpu-check``: the GPU quarter-hour, rehearsed on the CPU.

The rehearsal runs every part (checks, speed, science) end to end at toy size through the same
command a GPU will run, then ``gradmatch report`` reads the folder. A capped part stops its
running step and lists the steps it did not reach. Needs the DomainBed and solo-learn checkouts,
MNIST and PACS (``../shared/data``) for the steps that use them; those steps say ``skipped``
otherwise, and the test accepts that only for them.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from test_reproduce_adios import check_cpu_scale_run

from gradmatch.cli import main
from reproduction.gpu_check import EXPERIMENT, jobs
from reproduction.gpu_check.part import NOT_RUN, STOPPED, run_part
from reproduction.gpu_check.settings import GPU, PARTS, REHEARSAL

DATA = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()


def test_the_gpu_scale_fits_ten_minutes_and_runs_the_protocol():
    """The caps of the gpu scale add up to 10 minutes; its science part is DomainBed's protocol
    on ColoredMNIST (5,001 steps, the three test environments, default hparams, all digits,
    ERM / Fish / FishFast) and ADIOS at 64 px with SimCLR, SimCLR+ADIOS and the random mask."""
    assert sum(GPU.caps.values()) <= 600 and set(GPU.caps) == set(PARTS)
    plan = GPU.domainbed.datasets["ColoredMNIST"]
    assert plan.steps == 5001 and plan.test_envs == (0, 1, 2) and GPU.domainbed.mnist_subset is None
    assert GPU.domainbed.n_hparams == 1 and GPU.domainbed.algorithms == ("ERM", "Fish", "FishFast")
    assert GPU.adios.crop == 64 and GPU.adios.arms == ("simclr", "adios", "random")
    assert set(GPU.precisions) == {"16-mixed", "bf16-mixed"} and ("gpu", "cpu") in GPU.resume
    assert set(GPU.speed) == set(REHEARSAL.speed) == {"adios_n4", "adios_n6", "fishfast", "fish_floor"}
    assert (GPU.speed["adios_n4"]["num_masks"], GPU.speed["adios_n6"]["num_masks"]) == (4, 6)


def test_parts_run_one_after_another_with_their_caps(tmp_path):
    listed = jobs("gpu", tmp_path)
    assert [j.name for j in listed] == [f"part/{p}" for p in PARTS]
    assert [j.after for j in listed] == [(), ("part/checks",), ("part/speed",)]
    for job, part in zip(listed, PARTS):
        argv = list(job.argv)
        assert argv[argv.index("--cap") + 1] == f"{GPU.caps[part]:g}" and job.done == f"parts/{part}.json"


def test_a_part_stops_at_its_cap_and_lists_what_it_did_not_reach(tmp_path):
    start = time.time()
    record = run_part("speed", "rehearsal", tmp_path, cap_s=3.0)
    assert time.time() - start < 60
    statuses = [s["status"] for s in record["steps"]]
    assert len(statuses) == 5 and STOPPED in statuses and statuses[-1] == NOT_RUN
    assert json.loads((tmp_path / "parts" / "speed.json").read_text()) == record
    assert not (tmp_path / "parts" / "speed.partial.json").exists()


@pytest.mark.slow
def test_the_rehearsal_runs_every_part_end_to_end(tmp_path, capsys):
    out = tmp_path / "gpu_check"
    main(["reproduce", "gpu-check", "--scale", "rehearsal", "--out", str(out), "--jobs", "1"])
    printed = capsys.readouterr().out
    assert "not done" not in printed, printed
    records = {p: json.loads((out / "parts" / f"{p}.json").read_text()) for p in PARTS}
    steps = {s["step"]: s for r in records.values() for s in r["steps"]}
    needs_data = {"adios_bf16-mixed", "science"}
    for name, step in steps.items():
        ok = step["status"] == "ok" or (name in needs_data and step["status"].startswith("skipped"))
        assert ok, (name, step)
    assert list(steps) == ["cuda_tests", "resume_cpu_to_cpu", "fish_bf16-mixed", "adios_bf16-mixed",
                           "amp_vs_fp32", "adios_n4", "adios_n6", "fishfast", "fish_floor", "science"]
    # checks: the CUDA tests were selected and skip without CUDA; the resumed run logged each step once
    assert steps["cuda_tests"]["tests"] > 0 and steps["cuda_tests"]["skipped"] == steps["cuda_tests"]["tests"]
    assert all(math.isfinite(v) for v in steps["fish_bf16-mixed"]["losses"])
    # speed: ratios measured in this run
    assert steps["amp_vs_fp32"]["ratios"]["bf16-mixed"] > 0
    assert steps["adios_n4"]["result"]["num_masks"] == 4 and steps["adios_n6"]["result"]["num_masks"] == 6
    assert steps["adios_n4"]["result"]["check"]["ok"]
    assert steps["fishfast"]["result"]["ratios"]["FishFast/Fish"]["of_medians"] > 0
    assert steps["fish_floor"]["result"]["steps"]["floor"]["ratio_vs_floor"] == pytest.approx(1.0)
    # science: the two experiments' own jobs, then their reports inside the gpu-check report
    report = (out / "report.md").read_text()
    for heading in ("## checks", "## speed", "## science"):
        assert heading in report
    if steps["science"]["status"] == "ok":
        science = steps["science"]["experiments"]
        assert set(science["domainbed"]["jobs"].values()) == set(science["adios"]["jobs"].values()) == {"done"}
        assert "DomainBed ColoredMNIST" in report and "ADIOS on PACS" in report
        # the ADIOS arms as the cpu scale's own test checks its arms (2 images per domain x class:
        # 1 train and 1 test each, 28 of each)
        check_cpu_scale_run(out / "science" / "adios", REHEARSAL.adios, n_train=28, n_test=28)
        data = json.loads((out / "report.json").read_text())["results"]
        assert set(data["domainbed"]["datasets"]) == {"ColoredMNIST"}
        assert {a["arm"] for a in data["adios"]["arms"]} == {
            "SimCLR", "SimCLR+ADIOS", "SimCLR+random mask", "random init (no pretraining)"}
    # gradmatch report reads the folder back, figures and all
    main(["report", str(out), "--copy-to", str(tmp_path / "copy")])
    rep = EXPERIMENT.report(out, "rehearsal")
    for figure in rep.figures:
        assert (tmp_path / "copy" / figure).stat().st_size > 0
