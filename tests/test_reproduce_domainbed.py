"""``gradmatch reproduce domainbed``: DomainBed's own sweep, train script and model selection,
unmocked, driving ERM, built-in Fish and the plugin's FishFast.

Skipped when no DomainBed checkout is found (``gradmatch.domainbed.find_checkout()``) or when
real MNIST is missing at ``<repo>/../shared/data/MNIST/raw``. The paper scale is only listed
(4,860 runs). The runs here use a tiny plan (``SMOKE``: ColoredMNIST, 3 steps, the first 400
training + 200 test digits, so 200 digits per environment), far smaller than the cpu scale;
each run costs ~10 CPU-seconds, mostly imports.
"""
from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gradmatch.domainbed import DomainBedNotFound, find_checkout
from reproduction import get_experiment
from reproduction.fish import domainbed as experiment
from reproduction.jobs import format_jobs, job_states, log_path, read_failure
from reproduction.launch import launch_local, run_job
from reproduction.published import ORACLE_VALIDATION, TRAINING_DOMAIN_VALIDATION

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = (REPO / "../shared/data").resolve()
MNIST_RAW = DATA_ROOT / "MNIST" / "raw"
SMOKE = experiment.Plan(
    datasets={"ColoredMNIST": experiment.DatasetPlan(test_envs=(0, 1, 2), steps=3, checkpoint_freq=2)},
    algorithms=("ERM", "FishFast"), n_hparams=1, n_trials=1, mnist_subset=(400, 200),
    env=experiment.CPU_ENV)
INTERRUPTED = replace(SMOKE, algorithms=("ERM",), datasets={
    "ColoredMNIST": experiment.DatasetPlan(test_envs=(2,), steps=6, checkpoint_freq=1)})
TIMEOUT = 240  # seconds for any wait on runs


@pytest.fixture(scope="module")
def domainbed():
    """DomainBed's modules (plugin registered), with ``$GRADMATCH_DOMAINBED_DATA`` at the real MNIST
    and the working tree's ``gradmatch`` first on the runs' ``PYTHONPATH``."""
    try:
        checkout = find_checkout()
    except DomainBedNotFound as err:
        pytest.skip(f"no DomainBed checkout: {err}")
    missing = [name for name in experiment.MNIST_FILES if not (MNIST_RAW / name).is_file()]
    if missing:
        pytest.skip(f"real MNIST not found: {MNIST_RAW} lacks {', '.join(missing)} "
                    "(uncompressed IDX files, torchvision's MNIST/raw layout)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(experiment.DATA_ENV, str(DATA_ROOT))
        patch.setenv("DOMAINBED_DIR", str(checkout))
        patch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "plugins")] + [
            p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        yield experiment.domainbed_modules()


def _quiet(_line: str) -> None:
    pass


def _steps(run_dir: Path) -> list:
    return [json.loads(line)["step"] for line in (run_dir / "results.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- job lists

def test_paper_scale_lists_domainbeds_full_sweep(domainbed, tmp_path):
    """Every run of DomainBed's default sweep (all test envs alone and in pairs, 20 hparams x 3
    trials, DomainBed's default steps) for both datasets, each as the plugin's train command."""
    data_job, *jobs = experiment.jobs("paper", tmp_path)
    assert data_job.name == experiment.DATA_JOB and "--train" not in data_job.argv  # all digits, linked

    def test_env_sets(dataset):  # DomainBed's sweep: every env alone and every pair
        return list(domainbed.sweep.all_test_env_combinations(domainbed.datasets.num_environments(dataset)))

    per_dataset = {d: len(experiment.ALGORITHMS) * len(test_env_sets(d)) * 20 * 3
                   for d in experiment.DATASETS}
    assert per_dataset == {"ColoredMNIST": 3 * 6 * 60, "RotatedMNIST": 3 * 21 * 60}
    assert len(jobs) == sum(per_dataset.values()) == 4860
    assert "4861 jobs" in format_jobs(tmp_path, [data_job] + jobs).splitlines()[-1]

    # the same runs, folders and arguments as DomainBed's `sweep launch --data_dir data
    # --output_dir sweep/<dataset>` run in the output folder
    expected = set()
    for dataset in experiment.DATASETS:
        assert domainbed.datasets.get_dataset_class(dataset).N_STEPS == 5001
        for args in domainbed.sweep.make_args_list(
                n_trials=3, dataset_names=[dataset], algorithms=list(experiment.ALGORITHMS),
                n_hparams_from=0, n_hparams=20, steps=None, data_dir="data",
                task="domain_generalization", holdout_fraction=0.2, single_test_envs=False, hparams=None):
            command = domainbed.sweep.Job(args, f"sweep/{dataset}").command_str
            assert command.startswith("python -m domainbed.scripts.train ")
            expected.add(tuple(shlex.split(command)[3:]))
    assert {job.argv[4:] for job in jobs} == expected
    assert len({job.done for job in jobs}) == len(jobs)
    for job in jobs:
        assert job.argv[:4] == (sys.executable, "-m", "reproduction.fish.domainbed.job", "train")
        assert "--steps" not in job.argv and "--checkpoint_freq" not in job.argv  # DomainBed's 5001 / 100
        output_dir = job.argv[job.argv.index("--output_dir") + 1]
        assert output_dir.startswith("sweep/") and job.done == f"{output_dir}/done"
        assert job.after == (experiment.DATA_JOB,)
    assert pickle.loads(pickle.dumps(jobs[0])) == jobs[0]  # submitit pickles (out, job)

    # the paper scale's data: symlinks to every digit
    assert run_job(tmp_path, data_job) is None
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert all((raw / name).is_symlink() and (raw / name).resolve() == (MNIST_RAW / name).resolve()
               for name in experiment.MNIST_FILES)
    recorded = json.loads((tmp_path / experiment.DATA_DONE).read_text())
    assert (recorded["train_digits"], recorded["test_digits"]) == (60000, 10000)


def test_cpu_scale_is_as_documented(domainbed, tmp_path):
    jobs = experiment.jobs("cpu", tmp_path)
    runs = jobs[1:]
    assert jobs[0].name == experiment.DATA_JOB and all(j.after == (experiment.DATA_JOB,) for j in runs)
    assert jobs[0].argv[-4:] == ("--train", "6000", "--test", "1000")
    assert len(runs) == 3 * 3 + 3 * 1
    assert sum(j.minutes for j in jobs) <= 30
    for job in runs:
        assert job.env["OMP_NUM_THREADS"] == job.env["MKL_NUM_THREADS"] == "1"
        assert "--hparams_seed 0" in shlex.join(job.argv) and "--trial_seed 0" in shlex.join(job.argv)
    with pytest.raises(ValueError, match="--scale cpu"):
        experiment.jobs("gpu", tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(experiment.DATA_ENV, str(tmp_path / "nowhere"))
        with pytest.raises(FileNotFoundError, match=f"set \\${experiment.DATA_ENV}"):
            experiment.jobs("cpu", tmp_path)


# ----------------------------------------------------------------------------- real runs

def _reference(sweep_dir: Path, domainbed) -> dict:
    """``{(selection, algorithm, test_env): acc %}`` straight from the results.jsonl files,
    scored by DomainBed's selection methods (1 hparams seed, 1 trial per cell)."""
    runs = {}
    for path in sweep_dir.glob("*/results.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        args = records[0]["args"]
        runs[(args["algorithm"], args["test_envs"][0])] = records
    methods = {selection: getattr(domainbed.model_selection, name)
               for selection, name in experiment.SELECTIONS.items() if selection != experiment.LEAVE_ONE_OUT}
    return {(selection, alg, env): 100 * method.sweep_acc(domainbed.Q(records))
            for selection, method in methods.items() for (alg, env), records in runs.items()}


def test_smoke_sweep_end_to_end_with_failure_and_partial_report(domainbed, tmp_path):
    out = tmp_path / "out"
    jobs = experiment.plan_jobs(SMOKE, out)
    assert [j.name for j in jobs][:1] == [experiment.DATA_JOB] and len(jobs) == 1 + 2 * 3

    # a run that fails inside DomainBed, after it made the run's folder (a batch size of 0,
    # which DomainBed's loaders reject), and one that finishes: the report is partial
    broken = replace(jobs[1], argv=jobs[1].argv + ("--hparams", json.dumps({"batch_size": 0})))
    states = launch_local(out, [jobs[0], broken, jobs[2]], parallel=2, echo=_quiet)
    assert states == {jobs[0].name: "done", broken.name: "failed", jobs[2].name: "done"}
    partial = experiment.build_report(out, SMOKE, "smoke")
    assert [f["job"] for f in partial.data["failed_jobs"]] == [broken.name]
    assert broken.name in partial.markdown and "Failed jobs" in partial.markdown
    assert partial.compare == {}  # no average has all three test envs
    entry = partial.data["datasets"]["ColoredMNIST"]
    assert (entry["runs_planned"], entry["runs_finished"], entry["runs_unfinished"]) == (6, 1, 1)
    assert "| - |" in partial.markdown

    # every run (the failed one retried: its incomplete folder is deleted first)
    states = launch_local(out, jobs, parallel=2, retry_failed=True, echo=_quiet)
    assert set(states.values()) == {"done"}, states
    sweep_dir = out / experiment.SWEEP_DIR / "ColoredMNIST"
    for job in jobs[1:]:
        assert _steps(out / Path(job.done).parent) == [0, 2]  # checkpoints at 0 and the last step
    with pytest.MonkeyPatch.context() as patch:  # once the data job ran, the source is not needed
        patch.setenv(experiment.DATA_ENV, str(tmp_path / "nowhere"))
        assert experiment.plan_jobs(SMOKE, out) == jobs
    report = get_experiment("domainbed").report  # the public entry point takes a scale name
    with pytest.raises(ValueError, match="--scale"):
        report(out, "smoke")
    result = experiment.build_report(out, SMOKE, "smoke")
    assert result.data["failed_jobs"] == [] and result.figures == [experiment.FIGURE]
    assert (out / experiment.FIGURE).stat().st_size > 0

    reference = _reference(sweep_dir, domainbed)
    assert len(reference) == 2 * 2 * 3
    expected_compare = {}
    for (selection, alg, env), value in reference.items():
        cell = result.data["datasets"]["ColoredMNIST"]["results"][selection][alg]["test_envs"][str(env)]
        assert cell["mean"] == pytest.approx(value, abs=1e-9) and cell["trials"] == 1
        expected_compare[("ColoredMNIST", alg, selection)] = sum(
            reference[(selection, alg, e)] for e in range(3)) / 3
    assert set(result.compare) == set(expected_compare)
    for key, value in expected_compare.items():
        assert result.compare[key] == pytest.approx(value, abs=1e-9)
        assert f"{value:.1f}" in result.markdown

    # DomainBed's own collect_results tables show the same averages
    text = (out / experiment.COLLECT_TXT).read_text()
    for selection, method in ((TRAINING_DOMAIN_VALIDATION, "training-domain validation set"),
                              (ORACLE_VALIDATION, "test-domain validation set (oracle)")):
        section = text.split(f"Dataset: ColoredMNIST, model selection method: {method}")[1]
        rows = {line.split()[0]: line.split() for line in section.splitlines()[2:4]}
        for alg in SMOKE.algorithms:
            assert rows[alg][-1] == f"{expected_compare[('ColoredMNIST', alg, selection)]:.1f}"


def test_interrupted_run_is_rerun_from_scratch(domainbed, tmp_path):
    """A run killed after its first checkpoint leaves a folder without ``done``; relaunching
    deletes it (DomainBed cannot resume) and the rerun writes each checkpoint once."""
    out = tmp_path / "out"
    subset, run = experiment.plan_jobs(INTERRUPTED, out)
    assert run_job(out, subset) is None
    run_dir = out / Path(run.done).parent
    proc = subprocess.Popen(run.command(out), cwd=out, env={**os.environ, **run.env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    results = run_dir / "results.jsonl"
    while not (results.exists() and results.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline, "the run wrote no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not run.is_done(out) and _steps(run_dir)[0] == 0
    assert job_states(out, [subset, run])[run.name] == "todo"

    states = launch_local(out, [subset, run], echo=_quiet)
    assert states[run.name] == "done"
    assert _steps(run_dir) == list(range(6))  # no record left over from the killed attempt
    assert "deleted the incomplete run" in log_path(out, run).read_text()


def test_a_run_with_a_bad_argument_fails_in_one_line_and_writes_no_folder(domainbed, tmp_path):
    """The plugin's train wrapper checks DomainBed's arguments before DomainBed makes the run's
    folder: the job's failure record carries the one error line."""
    out = tmp_path / "out"
    out.mkdir()
    run = experiment.plan_jobs(SMOKE, out)[1]
    broken = replace(run, argv=run.argv + ("--algorithm", "NoSuchAlgorithm"), after=())
    why = run_job(out, broken)
    assert why == "exit status 2"
    line = read_failure(out, broken)
    assert line.startswith("exit status 2: gradmatch: error: --algorithm NoSuchAlgorithm is not a "
                           "DomainBed algorithm: choose one of ERM,")
    assert "Traceback" not in log_path(out, broken).read_text()
    assert not (out / Path(run.done).parent).exists()
